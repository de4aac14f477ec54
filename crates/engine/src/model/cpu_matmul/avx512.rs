//! AVX-512 VNNI kernels over 16-row tiles: the layout of llama.cpp's
//! repacked `*_8x8` GEMMs and of candle's x86 repacked K-quant tiles, for
//! our layouts. In a tile, each block's 32 values of 16 weight rows lie as
//! eight groups of `[16 rows][4 values]` (64 bytes, one `zmm`), so one
//! `vpdpbusd` against four activation bytes broadcast to every lane adds
//! four products to each of the 16 rows' sums. The lanes are the output
//! rows: no horizontal sums, one conversion and one fused multiply-add per
//! block for 16 rows, and the 16 results are stored as they are (the
//! token-major output's rows are contiguous in a tile).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so signed weights are
//! stored offset by 128 (as unsigned) and `128 · Σq_a` is taken back per
//! block (or per 16 values for `I8x16`) in integers, exactly.

use std::arch::x86_64::*;

use super::{ActRow, BLOCK, TILE_ROWS};

/// One tiled matrix's arrays (see [`super::Layout`]'s tiled form).
#[derive(Clone, Copy)]
pub(super) struct Tiles<'a> {
    pub quants: &'a [u8],
    pub scales: &'a [u8],
    pub mins: &'a [u8],
    pub blocks: usize,
}

/// What differs between the kinds.
pub(super) trait Groups {
    const HAS_MIN: bool;
    /// Weights stored as `q + 128`.
    const SIGNED: bool;
    /// Scales per block (2: one per 16 values, groups 0–3 and 4–7).
    const SCALES: usize;
    /// Quant bytes per block of a tile.
    const BYTES: usize;
    /// The eight groups of block `b` (unsigned bytes).
    unsafe fn groups(quants: *const u8) -> [__m512i; 8];
}

pub(super) struct U4;
impl Groups for U4 {
    const HAS_MIN: bool = true;
    const SIGNED: bool = false;
    const SCALES: usize = 1;
    const BYTES: usize = 256;
    #[inline(always)]
    unsafe fn groups(quants: *const u8) -> [__m512i; 8] {
        // Vector `p` holds groups `2p` (low nibbles) and `2p + 1` (high).
        let mask = _mm512_set1_epi8(0x0F);
        let v: [__m512i; 4] =
            std::array::from_fn(|p| _mm512_loadu_si512(quants.add(64 * p) as *const _));
        std::array::from_fn(|g| {
            let v = v[g / 2];
            if g % 2 == 0 {
                _mm512_and_si512(v, mask)
            } else {
                _mm512_and_si512(_mm512_srli_epi16(v, 4), mask)
            }
        })
    }
}

#[inline(always)]
unsafe fn bytes8(quants: *const u8) -> [__m512i; 8] {
    std::array::from_fn(|g| _mm512_loadu_si512(quants.add(64 * g) as *const _))
}

pub(super) struct U8;
impl Groups for U8 {
    const HAS_MIN: bool = true;
    const SIGNED: bool = false;
    const SCALES: usize = 1;
    const BYTES: usize = 512;
    #[inline(always)]
    unsafe fn groups(quants: *const u8) -> [__m512i; 8] {
        bytes8(quants)
    }
}

pub(super) struct I8x32;
impl Groups for I8x32 {
    const HAS_MIN: bool = false;
    const SIGNED: bool = true;
    const SCALES: usize = 1;
    const BYTES: usize = 512;
    #[inline(always)]
    unsafe fn groups(quants: *const u8) -> [__m512i; 8] {
        bytes8(quants)
    }
}

pub(super) struct I8x16;
impl Groups for I8x16 {
    const HAS_MIN: bool = false;
    const SIGNED: bool = true;
    const SCALES: usize = 2;
    const BYTES: usize = 512;
    #[inline(always)]
    unsafe fn groups(quants: *const u8) -> [__m512i; 8] {
        bytes8(quants)
    }
}

/// 16 factors (f16 or f32, little-endian) from `bytes` at factor index `i`.
#[inline(always)]
unsafe fn factors16<const HALF: bool>(bytes: &[u8], i: usize) -> __m512 {
    if HALF {
        _mm512_cvtph_ps(_mm256_loadu_si256(bytes.as_ptr().add(2 * i) as *const _))
    } else {
        _mm512_loadu_ps(bytes.as_ptr().add(4 * i) as *const f32)
    }
}

/// Tile `t` against `MT` tokens: 16 rows' results per token. `ACC`
/// independent integer sums per token (2 or 4) keep `vpdpbusd`'s latency
/// off the critical path when there are few tokens; sums `0..ACC/2` cover
/// groups 0–3 and the rest groups 4–7 (the halves of `I8x16`).
#[inline(always)]
unsafe fn tile<K: Groups, const HALF: bool, const MT: usize, const ACC: usize>(
    m: Tiles,
    t: usize,
    acts: &[ActRow; MT],
) -> [__m512; MT] {
    let mut acc = [_mm512_setzero_ps(); MT];
    for b in 0..m.blocks {
        let block = t * m.blocks + b;
        let w = K::groups(m.quants.as_ptr().add(block * K::BYTES));
        let mut isum = [[_mm512_setzero_si512(); ACC]; MT];
        for (g, &wg) in w.iter().enumerate() {
            for n in 0..MT {
                let a =
                    (acts[n].quants.as_ptr().add(b * BLOCK + 4 * g) as *const i32).read_unaligned();
                let s = &mut isum[n][g * ACC / 8];
                *s = _mm512_dpbusd_epi32(*s, wg, _mm512_set1_epi32(a));
            }
        }
        let scale: [__m512; 2] = std::array::from_fn(|h| {
            factors16::<HALF>(m.scales, (block * K::SCALES + h.min(K::SCALES - 1)) * 16)
        });
        let min = if K::HAS_MIN {
            factors16::<HALF>(m.mins, block * 16)
        } else {
            _mm512_setzero_ps()
        };
        for n in 0..MT {
            let da = _mm512_set1_ps(*acts[n].scales.get_unchecked(b));
            let half = |h: usize| {
                let mut s = isum[n][h * ACC / 2];
                for k in 1..ACC / 2 {
                    s = _mm512_add_epi32(s, isum[n][h * ACC / 2 + k]);
                }
                s
            };
            if K::SCALES == 2 {
                for (h, &sc) in scale.iter().enumerate() {
                    let mut s = half(h);
                    if K::SIGNED {
                        let q = *acts[n].qsums.get_unchecked(2 * b + h);
                        s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * q));
                    }
                    acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sc, da), acc[n]);
                }
            } else {
                let mut s = _mm512_add_epi32(half(0), half(1));
                if K::SIGNED {
                    let q = *acts[n].qsums.get_unchecked(2 * b)
                        + *acts[n].qsums.get_unchecked(2 * b + 1);
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * q));
                }
                acc[n] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale[0], da), acc[n]);
            }
            if K::HAS_MIN {
                let sum = _mm512_set1_ps(*acts[n].sums.get_unchecked(b));
                acc[n] = _mm512_fmadd_ps(min, sum, acc[n]);
            }
        }
    }
    acc
}

/// Tiles `tiles` against every token; `put(t, token, values)` takes tile
/// `t`'s 16 results for a token.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C; `m` holds
/// every tile in `tiles` and every activation `m.blocks` blocks (checked by
/// the caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn tiles_times_tokens<K: Groups, const HALF: bool>(
    m: Tiles,
    tiles: std::ops::Range<usize>,
    acts: &[ActRow],
    mut put: impl FnMut(usize, usize, &[f32; TILE_ROWS]),
) {
    macro_rules! run {
        ($mt:literal, $acc:literal, $t:expr, $n:expr) => {{
            let a: [ActRow; $mt] = std::array::from_fn(|i| acts[$n + i]);
            let res = tile::<K, HALF, $mt, $acc>(m, $t, &a);
            for (i, v) in res.iter().enumerate() {
                let mut out = [0f32; TILE_ROWS];
                _mm512_storeu_ps(out.as_mut_ptr(), *v);
                put($t, $n + i, &out);
            }
        }};
    }
    let tokens = acts.len();
    for t in tiles {
        let mut n = 0;
        while n + 4 <= tokens {
            run!(4, 2, t, n);
            n += 4;
        }
        match tokens - n {
            3 => run!(3, 2, t, n),
            2 => run!(2, 4, t, n),
            1 => run!(1, 4, t, n),
            _ => {}
        }
    }
}
