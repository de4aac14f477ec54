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
    /// 32 products summed to 8 i32 lanes (lane `k`: values `4k..4k+4`);
    /// by default the weights are unsigned.
    #[inline(always)]
    unsafe fn product<const VNNI: bool>(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        madd::<VNNI>(w.0, a)
    }
    /// The weight scale of each lane, from f16 (`HALF`) or f32 factors; by
    /// default one scale per block.
    #[inline(always)]
    unsafe fn scales<const HALF: bool>(row: WeightRow, b: usize) -> __m256 {
        broadcast::<HALF>(row.scales, b)
    }
}

/// Factor `i` of `bytes` (f16 or f32, little-endian) in every lane.
#[inline(always)]
unsafe fn broadcast<const HALF: bool>(bytes: &[u8], i: usize) -> __m256 {
    if HALF {
        let bits = (bytes.as_ptr() as *const i16).add(i).read_unaligned();
        _mm256_cvtph_ps(_mm_set1_epi16(bits))
    } else {
        _mm256_set1_ps((bytes.as_ptr() as *const f32).add(i).read_unaligned())
    }
}

/// Factor `i` of `bytes` as a scalar.
#[inline(always)]
unsafe fn factor<const HALF: bool>(bytes: &[u8], i: usize) -> f32 {
    if HALF {
        let bits = (bytes.as_ptr() as *const u16).add(i).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    } else {
        (bytes.as_ptr() as *const f32).add(i).read_unaligned()
    }
}

/// Unsigned × signed bytes, 32 pairs summed to 8 i32 lanes: one VNNI
/// `vpdpbusd` where the CPU has it, else `maddubs` + `madd` (no saturation:
/// |pair| ≤ 2·128·127 < 2¹⁵, activations being in ±127).
#[inline(always)]
unsafe fn madd<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
    }
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
    unsafe fn product<const VNNI: bool>(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        // Signed × signed as |w| · (a·sign(w)).
        madd::<VNNI>(w.0, _mm256_sign_epi8(a, w.1))
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
    unsafe fn product<const VNNI: bool>(w: (__m256i, __m256i), a: __m256i) -> __m256i {
        I8x32::product::<VNNI>(w, a)
    }
    #[inline(always)]
    unsafe fn scales<const HALF: bool>(row: WeightRow, b: usize) -> __m256 {
        _mm256_set_m128(
            _mm_set1_ps(factor::<HALF>(row.scales, 2 * b + 1)),
            _mm_set1_ps(factor::<HALF>(row.scales, 2 * b)),
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
/// The CPU has AVX2, FMA and F16C; every row and activation holds `blocks`
/// blocks (checked by the caller).
#[inline(always)]
unsafe fn tile<K: Tiled, const VNNI: bool, const HALF: bool, const RM: usize, const RN: usize>(
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
            let ws = K::scales::<HALF>(rows[m], b);
            for n in 0..RN {
                let p = _mm256_cvtepi32_ps(K::product::<VNNI>(w, a[n]));
                let s = _mm256_mul_ps(ws, _mm256_set1_ps(da[n]));
                acc[m][n] = _mm256_fmadd_ps(s, p, acc[m][n]);
                if K::HAS_MIN {
                    mins[m][n] += factor::<HALF>(rows[m].mins, b) * *acts[n].sums.get_unchecked(b);
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
unsafe fn tile_4x1<K: Tiled, const VNNI: bool, const HALF: bool>(
    rows: &[WeightRow; 4],
    act: &ActRow,
    blocks: usize,
) -> [f32; 4] {
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
                let p = _mm256_cvtepi32_ps(K::product::<VNNI>(w, a));
                $acc = _mm256_fmadd_ps(_mm256_mul_ps(K::scales::<HALF>(rows[$m], b), da), p, $acc);
                if K::HAS_MIN {
                    mins[$m] += factor::<HALF>(rows[$m].mins, b) * *act.sums.get_unchecked(b);
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

/// Rows `first..first + count` (`row(i)` gives row `first + i`) against
/// every token, tile by tile; `put(i, t, v)` takes row `i`'s result for
/// token `t`.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_times_tokens<'a, K: Tiled, const HALF: bool>(
    row: impl Fn(usize) -> WeightRow<'a>,
    count: usize,
    acts: &[ActRow],
    blocks: usize,
    put: impl FnMut(usize, usize, f32),
) {
    rows_times_tokens_with::<K, false, HALF>(row, count, acts, blocks, put)
}

/// [`rows_times_tokens`] with AVX-512 VNNI's `vpdpbusd` on 256-bit vectors.
///
/// # Safety
/// As [`tile`], and the CPU has AVX-512 VNNI and VL.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub(super) unsafe fn rows_times_tokens_vnni<'a, K: Tiled, const HALF: bool>(
    row: impl Fn(usize) -> WeightRow<'a>,
    count: usize,
    acts: &[ActRow],
    blocks: usize,
    put: impl FnMut(usize, usize, f32),
) {
    rows_times_tokens_with::<K, true, HALF>(row, count, acts, blocks, put)
}

#[inline(always)]
unsafe fn rows_times_tokens_with<'a, K: Tiled, const VNNI: bool, const HALF: bool>(
    row: impl Fn(usize) -> WeightRow<'a>,
    count: usize,
    acts: &[ActRow],
    blocks: usize,
    mut put: impl FnMut(usize, usize, f32),
) {
    let tokens = acts.len();
    macro_rules! run {
        ($rm:literal, $rn:literal, $r:expr, $t:expr) => {{
            let w: [WeightRow; $rm] = std::array::from_fn(|m| row($r + m));
            let a: [ActRow; $rn] = std::array::from_fn(|n| acts[$t + n]);
            let res = tile::<K, VNNI, HALF, $rm, $rn>(&w, &a, blocks);
            for m in 0..$rm {
                for n in 0..$rn {
                    put($r + m, $t + n, res[m][n]);
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
                for (m, v) in tile_4x1::<K, VNNI, HALF>(&w, act, blocks)
                    .into_iter()
                    .enumerate()
                {
                    put(r + m, t, v);
                }
            }
            r += 4;
        }
    } else {
        // Prefill: two rows × four tokens, over blocks of 32 tokens whose
        // activations (32 × cols bytes) stay in L1 while this task's rows
        // pass over them; sweeping every token per row pair streamed the
        // whole batch's activations from L2 once per two rows.
        const TOKEN_BLOCK: usize = 32;
        let pairs = count / 2 * 2;
        for t0 in (0..tokens).step_by(TOKEN_BLOCK) {
            let t_end = (t0 + TOKEN_BLOCK).min(tokens);
            for r in (0..pairs).step_by(2) {
                let mut t = t0;
                while t + 4 <= t_end {
                    run!(2, 4, r, t);
                    t += 4;
                }
                for t in t..t_end {
                    run!(2, 1, r, t);
                }
            }
        }
        r = pairs;
    }
    for r in r..count {
        for t in 0..tokens {
            run!(1, 1, r, t);
        }
    }
}

/// [`super::quantize_block`] on 32 values at once, with the same results for
/// finite input: the same `amax`, `x · (1/d)` products and
/// half-away-from-zero rounding (truncate, then step away from zero where
/// the dropped part is ≥ ½).
///
/// # Safety
/// The CPU has AVX2 and FMA; `xs` and `qs` hold at least 32 values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, [i32; 2]) {
    debug_assert!(xs.len() >= BLOCK && qs.len() >= BLOCK);
    let sign = _mm256_set1_ps(-0.0);
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
    let abs = |x: __m256| _mm256_andnot_ps(sign, x);
    let m = _mm256_max_ps(
        _mm256_max_ps(abs(v[0]), abs(v[1])),
        _mm256_max_ps(abs(v[2]), abs(v[3])),
    );
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let d = amax / 127.0;
    let inv = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        // Finite values already lie in ±127; the clamp keeps non-finite
        // activations (NaN → −127) from packing to −128, which the
        // kernels' `maddubs` bound (|a| ≤ 127) rules out.
        let y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[i], inv), lo), hi);
        let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let away = _mm256_cmp_ps(abs(_mm256_sub_ps(y, t)), half, _CMP_GE_OQ);
        let step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(y, sign), one));
        _mm256_cvtps_epi32(_mm256_add_ps(t, step))
    });
    let hsum = |v: __m256i| {
        let t4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let t2 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b00_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32(t2, 0b00_00_00_01)))
    };
    let sums = [
        hsum(_mm256_add_epi32(q[0], q[1])),
        hsum(_mm256_add_epi32(q[2], q[3])),
    ];
    // i32 → i16 → i8 packs work per 128-bit lane; one permute restores order.
    let words01 = _mm256_packs_epi32(q[0], q[1]);
    let words23 = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(words01, words23);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
    (d, sums)
}
