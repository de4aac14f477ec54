//! CPU matmul for GGUF's Q4_1, the quant type of SmolLM2 and many Llama-class
//! files that candle runs in scalar code. Follows llama.cpp's
//! `ggml_vec_dot_q4_1_q8_1`: activations are quantized per 32 values to 8 bits
//! (candle's own `BlockQ8_1` rounding, f16 scale and sum included), each
//! weight block is dotted as integers and scaled once. AVX2+FMA is chosen at
//! run time (a portable binary, no `-C target-cpu`); elsewhere a scalar loop
//! does the same arithmetic. Rows of the output are split across rayon's pool,
//! and every weight row is read once per batch, not once per token.

use half::f16;
use rayon::prelude::*;

use crate::host_memory::vec_with_huge_pages;

use crate::error::{EngineError, Result};

/// Values per quantization block (Q4_1 and the Q8_1 activations).
const BLOCK: usize = 32;
/// Bytes of one GGUF Q4_1 block: f16 scale, f16 min, 16 bytes of nibbles.
const Q4_1_BLOCK_BYTES: usize = 20;

/// A Q4_1 matrix (`rows` × `cols`, one output per row), unpacked from GGUF
/// blocks into separate scale, min and nibble arrays.
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    /// Per block: element `j` in the low nibble of byte `j`, `j + 16` in the high one.
    nibbles: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

/// Activations of a batch as Q8_1 blocks: `d · q` with `sum = d · Σq` (both
/// rounded through f16, as candle's `BlockQ8_1` stores them).
struct Q8_1Rows {
    quants: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl Q4_1Matrix {
    /// From the raw bytes of a GGUF Q4_1 tensor of shape `rows` × `cols`.
    pub fn from_gguf_bytes(data: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let blocks = rows * cols / BLOCK;
        if !cols.is_multiple_of(BLOCK) || data.len() != blocks * Q4_1_BLOCK_BYTES {
            return Err(EngineError::Load(format!(
                "Q4_1 tensor {rows}x{cols}: {} bytes do not form whole blocks",
                data.len()
            )));
        }
        let mut m = Q4_1Matrix {
            rows,
            cols,
            nibbles: vec_with_huge_pages(blocks * BLOCK / 2),
            scales: vec_with_huge_pages(blocks),
            mins: vec_with_huge_pages(blocks),
        };
        for block in data.chunks_exact(Q4_1_BLOCK_BYTES) {
            m.scales
                .push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            m.mins
                .push(f16::from_le_bytes([block[2], block[3]]).to_f32());
            m.nibbles.extend_from_slice(&block[4..]);
        }
        Ok(m)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x · Wᵀ` for `x` holding `tokens` rows of `cols` values; the result
    /// holds `tokens` rows of `rows` values.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        self.matmul_with(x, tokens, Kernel::detect())
    }

    fn matmul_with(&self, x: &[f32], tokens: usize, kernel: Kernel) -> Vec<f32> {
        debug_assert_eq!(x.len(), tokens * self.cols);
        let act = Q8_1Rows::quantize(x, tokens, self.cols);
        let blocks_per_row = self.cols / BLOCK;
        // Output computed row-major by weight row (each task owns whole rows),
        // then transposed to token-major.
        let mut by_row = vec![0f32; self.rows * tokens];
        let chunk_rows = (self.rows / (rayon::current_num_threads() * 4)).clamp(8, 256);
        by_row
            .par_chunks_mut(chunk_rows * tokens)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (i, out_row) in out.chunks_mut(tokens).enumerate() {
                    let r = chunk * chunk_rows + i;
                    let blocks = r * blocks_per_row..(r + 1) * blocks_per_row;
                    let w = RowRef {
                        nibbles: &self.nibbles[blocks.start * 16..blocks.end * 16],
                        scales: &self.scales[blocks.clone()],
                        mins: &self.mins[blocks],
                    };
                    for (t, o) in out_row.iter_mut().enumerate() {
                        let a = blocks_per_row * t..blocks_per_row * (t + 1);
                        let a = RowRef8 {
                            quants: &act.quants[a.start * BLOCK..a.end * BLOCK],
                            scales: &act.scales[a.clone()],
                            sums: &act.sums[a],
                        };
                        *o = kernel.dot(&w, &a);
                    }
                }
            });
        if tokens == 1 {
            return by_row;
        }
        let mut out = vec![0f32; tokens * self.rows];
        for (r, row) in by_row.chunks_exact(tokens).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
        out
    }
}

impl Q8_1Rows {
    /// candle's `BlockQ8_1::from_float` per row: `d = amax / 127`,
    /// `q = round(x / d)`, `d` and `sum` kept as f16.
    fn quantize(x: &[f32], tokens: usize, cols: usize) -> Self {
        let blocks = tokens * cols / BLOCK;
        let mut r = Q8_1Rows {
            quants: vec![0; tokens * cols],
            scales: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
        };
        for (xs, qs) in x.chunks_exact(BLOCK).zip(r.quants.chunks_exact_mut(BLOCK)) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (v * inv).round() as i8;
                sum += *q as i32;
            }
            let d16 = f16::from_f32(d);
            r.scales.push(d16.to_f32());
            r.sums.push((f16::from_f32(sum as f32) * d16).to_f32());
        }
        r
    }
}

struct RowRef<'a> {
    nibbles: &'a [u8],
    scales: &'a [f32],
    mins: &'a [f32],
}

struct RowRef8<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// The dot-product implementation, picked from the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        // std caches the CPUID answer; this is a load and a branch per call.
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    fn dot(self, w: &RowRef, a: &RowRef8) -> f32 {
        match self {
            Kernel::Scalar => dot_scalar(w, a),
            // SAFETY: `detect` chose this kernel only where the CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { dot_avx2(w, a) },
        }
    }
}

/// `Σ_blocks d_w·d_a·Σ(q_w·q_a) + m_w·sum_a` (candle's `vec_dot_unopt` for Q4_1).
fn dot_scalar(w: &RowRef, a: &RowRef8) -> f32 {
    let mut acc = 0f32;
    for b in 0..w.scales.len() {
        let nib = &w.nibbles[b * 16..(b + 1) * 16];
        let q = &a.quants[b * BLOCK..(b + 1) * BLOCK];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (nib[j] & 0x0F) as i32 * q[j] as i32 + (nib[j] >> 4) as i32 * q[j + 16] as i32;
        }
        acc += sumi as f32 * w.scales[b] * a.scales[b] + w.mins[b] * a.sums[b];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &RowRef, a: &RowRef8) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.scales.len();
    debug_assert!(w.nibbles.len() >= blocks * 16 && a.quants.len() >= blocks * BLOCK);
    let low_mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = 0f32;
    for b in 0..blocks {
        // SAFETY: block `b` of both rows is in bounds (checked above); loads are unaligned.
        let packed = _mm_loadu_si128(w.nibbles.as_ptr().add(b * 16) as *const __m128i);
        let low = _mm_and_si128(packed, low_mask);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
        let weights = _mm256_set_m128i(high, low);
        let acts = _mm256_loadu_si256(a.quants.as_ptr().add(b * BLOCK) as *const __m256i);
        // u8 (0..15) × i8 pairs summed to i16 (no saturation: |pair| ≤ 2·15·128), then to i32.
        let pairs = _mm256_maddubs_epi16(weights, acts);
        let sums = _mm256_madd_epi16(pairs, ones);
        let scale = _mm256_set1_ps(w.scales[b] * a.scales[b]);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc);
        acc_min += w.mins[b] * a.sums[b];
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quad, _mm_movehdup_ps(quad));
    _mm_cvtss_f32(one) + acc_min
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    /// The kernels this CPU can run.
    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Scalar];
        if Kernel::detect() != Kernel::Scalar {
            k.push(Kernel::detect());
        }
        k
    }

    /// Every kernel's `x · Wᵀ` equals candle's Q4_1 matmul on the same blocks
    /// up to summation order.
    fn assert_matches_candle(w: Vec<f32>, x: Vec<f32>, rows: usize, cols: usize, tokens: usize) {
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let ours = Q4_1Matrix::from_gguf_bytes(&q.data().unwrap(), rows, cols).unwrap();
        let xt = Tensor::from_vec(x.clone(), (tokens, cols), &Device::Cpu).unwrap();
        let want = QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for kernel in kernels() {
            let got = ours.matmul_with(&x, tokens, kernel);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{kernel:?} {rows}x{cols}x{tokens}: {g} vs candle {w}"
                );
            }
        }
    }

    #[test]
    fn q4_1_matches_candle() {
        for (rows, cols, tokens) in [(8, 32, 1), (96, 576, 1), (192, 576, 3), (37, 1536, 17)] {
            let (w, x) = (random(rows * cols, 1, 0.3), random(tokens * cols, 2, 1.0));
            assert_matches_candle(w, x, rows, cols, tokens);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any shape, batch and value range (all-zero blocks, outliers).
        #[test]
        fn q4_1_matches_candle_on_any_shape(
            rows in 1usize..40,
            col_blocks in 1usize..9,
            tokens in 1usize..7,
            seed in 0u64..1000,
            zero_block in proptest::prelude::any::<bool>(),
            outlier in 0f32..50.0,
        ) {
            let cols = col_blocks * BLOCK;
            let mut x = random(tokens * cols, seed + 1, 2.0);
            if zero_block {
                x[..BLOCK].iter_mut().for_each(|v| *v = 0.0);
            }
            x[cols - 1] = outlier;
            assert_matches_candle(random(rows * cols, seed, 0.5), x, rows, cols, tokens);
        }
    }

    #[test]
    fn rejects_partial_blocks() {
        assert!(Q4_1Matrix::from_gguf_bytes(&[0; 19], 1, 32).is_err());
        assert!(Q4_1Matrix::from_gguf_bytes(&[0; 20], 1, 16).is_err());
    }
}
