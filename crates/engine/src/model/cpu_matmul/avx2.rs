//! AVX2 tiles: `RM` weight rows × `RN` tokens per pass over the blocks, with
//! `RM · RN` independent accumulators. Each activation block is loaded once
//! for `RM` rows and each weight block unpacked once for `RN` tokens (the
//! register tiling of llama.cpp's `tinyBLAS` and of its repacked Q4_0x8
//! GEMMs); with one token (decode) four rows run side by side so that the
//! floating-point accumulation is not one dependency chain.

use std::arch::x86_64::*;

use super::{ActRow, WeightRow, BLOCK};

/// What differs between the layouts: how a block becomes `maddubs`'s
/// unsigned operand, how it meets the activations, its per-lane scales.
pub(super) trait Tiled {
    const HAS_MIN: bool;
    /// `(unsigned operand, sign source)` of block `b`.
    unsafe fn weights(row: WeightRow, b: usize) -> (__m256i, __m256i);
    /// 32 products summed to 8 i32 lanes (lane `k`: values `4k..4k+4`).
    unsafe fn product(w: (__m256i, __m256i), a: __m256i) -> __m256i;
    /// The weight scale of each lane.
    unsafe fn scales(row: WeightRow, b: usize) -> __m256;
}

#[inline(always)]
unsafe fn madd(w: __m256i, a: __m256i) -> __m256i {
    // No saturation: |pair| ≤ 2·128·127 < 2¹⁵ (activations are in ±127).
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

/// Unsigned 4-bit values, 16 bytes per block.
pub(super) struct U4;
impl Tiled for U4 {
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn weights(row: WeightRow, b: usize) -> (__m256i, __m256i) {
        let mask = _mm_set1_epi8(0x0F);
        let bytes = _mm_loadu_si128(row.quants.as_ptr().add(b * 16) as *const __m128i);
        let low = _mm_and_si128(bytes, mask);
        let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        let w = _mm256_set_m128i(high, low);
        (w, w)
    }
    #[inline(always)]
    unsafe fn product(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        madd(w.0, a)
    }
    #[inline(always)]
    unsafe fn scales(row: WeightRow, b: usize) -> __m256 {
        _mm256_set1_ps(*row.scales.get_unchecked(b))
    }
}

/// Unsigned 5-bit values, one byte each.
pub(super) struct U8;
impl Tiled for U8 {
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn weights(row: WeightRow, b: usize) -> (__m256i, __m256i) {
        let w = _mm256_loadu_si256(row.quants.as_ptr().add(b * BLOCK) as *const __m256i);
        (w, w)
    }
    #[inline(always)]
    unsafe fn product(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        madd(w.0, a)
    }
    #[inline(always)]
    unsafe fn scales(row: WeightRow, b: usize) -> __m256 {
        _mm256_set1_ps(*row.scales.get_unchecked(b))
    }
}

/// Signed bytes, one scale per 32.
pub(super) struct I8x32;
impl Tiled for I8x32 {
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn weights(row: WeightRow, b: usize) -> (__m256i, __m256i) {
        let w = _mm256_loadu_si256(row.quants.as_ptr().add(b * BLOCK) as *const __m256i);
        (_mm256_sign_epi8(w, w), w)
    }
    #[inline(always)]
    unsafe fn product(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        // Signed × signed as |w| · (a·sign(w)).
        madd(w.0, _mm256_sign_epi8(a, w.1))
    }
    #[inline(always)]
    unsafe fn scales(row: WeightRow, b: usize) -> __m256 {
        _mm256_set1_ps(*row.scales.get_unchecked(b))
    }
}

/// Signed bytes, one scale per 16: lanes 0–3 take the first, 4–7 the second.
pub(super) struct I8x16;
impl Tiled for I8x16 {
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn weights(row: WeightRow, b: usize) -> (__m256i, __m256i) {
        I8x32::weights(row, b)
    }
    #[inline(always)]
    unsafe fn product(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        I8x32::product(w, a)
    }
    #[inline(always)]
    unsafe fn scales(row: WeightRow, b: usize) -> __m256 {
        _mm256_set_m128(
            _mm_set1_ps(*row.scales.get_unchecked(2 * b + 1)),
            _mm_set1_ps(*row.scales.get_unchecked(2 * b)),
        )
    }
}

#[inline(always)]
unsafe fn hsum(acc: __m256) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quad, _mm_movehdup_ps(quad));
    _mm_cvtss_f32(one)
}

/// `out[m][n] = row m · token n` over `blocks` activation blocks.
///
/// # Safety
/// The CPU has AVX2 and FMA; every row and activation holds `blocks`
/// blocks (checked by the caller).
#[inline(always)]
unsafe fn tile<K: Tiled, const RM: usize, const RN: usize>(
    rows: &[WeightRow; RM],
    acts: &[ActRow; RN],
    blocks: usize,
) -> [[f32; RN]; RM] {
    let mut acc = [[_mm256_setzero_ps(); RN]; RM];
    let mut mins = [[0f32; RN]; RM];
    for b in 0..blocks {
        let a: [__m256i; RN] = std::array::from_fn(|n| {
            _mm256_loadu_si256(acts[n].quants.as_ptr().add(b * BLOCK) as *const __m256i)
        });
        let da: [f32; RN] = std::array::from_fn(|n| *acts[n].scales.get_unchecked(b));
        for m in 0..RM {
            let w = K::weights(rows[m], b);
            let ws = K::scales(rows[m], b);
            for n in 0..RN {
                let p = _mm256_cvtepi32_ps(K::product(w, a[n]));
                let s = _mm256_mul_ps(ws, _mm256_set1_ps(da[n]));
                acc[m][n] = _mm256_fmadd_ps(s, p, acc[m][n]);
                if K::HAS_MIN {
                    mins[m][n] += *rows[m].mins.get_unchecked(b) * *acts[n].sums.get_unchecked(b);
                }
            }
        }
    }
    std::array::from_fn(|m| std::array::from_fn(|n| hsum(acc[m][n]) + mins[m][n]))
}

/// The decode tile (four rows, one token) with its accumulators named, so
/// that they stay in registers (the generic [`tile`]'s arrays spilled to the
/// stack here, a store and a load on every accumulation's dependency chain).
#[inline(always)]
unsafe fn tile_4x1<K: Tiled>(rows: &[WeightRow; 4], act: &ActRow, blocks: usize) -> [f32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut mins = [0f32; 4];
    for b in 0..blocks {
        let a = _mm256_loadu_si256(act.quants.as_ptr().add(b * BLOCK) as *const __m256i);
        let da = _mm256_set1_ps(*act.scales.get_unchecked(b));
        macro_rules! row {
            ($m:literal, $acc:ident) => {{
                let w = K::weights(rows[$m], b);
                let p = _mm256_cvtepi32_ps(K::product(w, a));
                $acc = _mm256_fmadd_ps(_mm256_mul_ps(K::scales(rows[$m], b), da), p, $acc);
                if K::HAS_MIN {
                    mins[$m] += *rows[$m].mins.get_unchecked(b) * *act.sums.get_unchecked(b);
                }
            }};
        }
        row!(0, a0);
        row!(1, a1);
        row!(2, a2);
        row!(3, a3);
    }
    [
        hsum(a0) + mins[0],
        hsum(a1) + mins[1],
        hsum(a2) + mins[2],
        hsum(a3) + mins[3],
    ]
}

/// Rows `first..first + count` (`row(i)` gives row `first + i`; `out` holds
/// `count × tokens` results, row major) against every token, tile by tile.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows_times_tokens<'a, K: Tiled>(
    row: impl Fn(usize) -> WeightRow<'a>,
    count: usize,
    acts: &[ActRow],
    blocks: usize,
    out: &mut [f32],
) {
    let tokens = acts.len();
    macro_rules! run {
        ($rm:literal, $rn:literal, $r:expr, $t:expr) => {{
            let w: [WeightRow; $rm] = std::array::from_fn(|m| row($r + m));
            let a: [ActRow; $rn] = std::array::from_fn(|n| acts[$t + n]);
            let res = tile::<K, $rm, $rn>(&w, &a, blocks);
            for m in 0..$rm {
                for n in 0..$rn {
                    out[($r + m) * tokens + $t + n] = res[m][n];
                }
            }
        }};
    }
    let mut r = 0;
    if tokens < 4 {
        // Decode-sized batches: four rows at a time, each token in turn.
        while r + 4 <= count {
            let w: [WeightRow; 4] = std::array::from_fn(|m| row(r + m));
            for (t, act) in acts.iter().enumerate() {
                for (m, v) in tile_4x1::<K>(&w, act, blocks).into_iter().enumerate() {
                    out[(r + m) * tokens + t] = v;
                }
            }
            r += 4;
        }
    } else {
        // Prefill: two rows × four tokens.
        while r + 2 <= count {
            let mut t = 0;
            while t + 4 <= tokens {
                run!(2, 4, r, t);
                t += 4;
            }
            for t in t..tokens {
                run!(2, 1, r, t);
            }
            r += 2;
        }
    }
    for r in r..count {
        for t in 0..tokens {
            run!(1, 1, r, t);
        }
    }
}
