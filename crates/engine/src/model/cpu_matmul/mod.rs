//! CPU matmul for GGUF's quantized matrices (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K). The forward pass runs all of them here where the CPU
//! has AVX-512 VNNI (our 16-row tiles beat candle's repacked K-quant tiles);
//! elsewhere K-quant matrices stay on candle's kernels (see `weights::ours`)
//! and use this module's layouts for their embedding tables (exact row
//! lookups).
//!
//! Follows llama.cpp's `ggml_vec_dot_*_q8_*` family: activations are
//! quantized per 32 values to 8 bits (`d = amax / 127`, `q = round(x / d)`,
//! `d` rounded through f16 as candle's `BlockQ8_1` stores it) with their
//! integer sums, each weight block is dotted as integers and scaled once. At
//! load every GGUF block type becomes one of three layouts ([`convert`]),
//! each a weight `scale · q + min` with f32 scale and min per 32 (or 16)
//! values, so three kernels cover eight types:
//! - `U4`: unsigned 4-bit `q`, two per byte (Q4_0, Q4_1, Q4_K);
//! - `U8`: unsigned 5-bit `q`, one per byte (Q5_1, Q5_K);
//! - `I8`: signed 8-bit `q`, no min (Q8_0, Q5_0, Q6_K with 16-value scales).
//!
//! K-quants' two-level scales are multiplied out at load (exactly, in f32),
//! which costs memory (Q4_K 4.5 → 6 bits per weight, Q6_K 6.6 → 10) and buys
//! one kernel shape for all of them.
//!
//! Two arrangements of those layouts, picked at load from the CPU's
//! features (a portable binary, no `-C target-cpu`):
//! - 16-row tiles for AVX-512 VNNI ([`avx512`], llama.cpp's repacked
//!   `*_8x8` GEMMs): the vector lanes are 16 output rows, so a block costs
//!   one conversion and one multiply-add per 16 rows and no horizontal sums;
//! - row-major for AVX2 ([`avx2`], register tiles of four rows × one token
//!   at decode and two rows × four tokens in prefill, 256-bit VNNI where
//!   present) and a scalar loop that does the same integer sums.
//!
//! Rows of the output are split across the step's thread pool
//! ([`crate::parallel`]), and every weight row is read once per batch, not
//! once per token.

mod convert;

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::error::{EngineError, Result};
use crate::host_memory::vec_with_huge_pages;

/// Values per activation block (and per weight block, but Q6_K's 16).
const BLOCK: usize = 32;

/// Weight rows per tile of the tiled layout.
const TILE_ROWS: usize = 16;

/// A quantized matrix (`rows` × `cols`, one output per row) in one of our
/// layouts.
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    layout: Layout,
}

/// The values of a matrix, row after row: `quants` (nibble pairs or bytes,
/// signed ones stored as their bit patterns), a scale per 32 values (per 16
/// for `I8x16`) and, for the unsigned kinds, a min per 32. Scales and mins
/// (the "factors") are stored as f16 when every one of them is exactly an
/// f16 — always for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, whose files hold f16 —
/// and as f32 otherwise (K-quants' products); little-endian bytes either way.
/// f16 factors make SmolLM2's Q4_1 rows 20 bytes per 32 weights, as in the
/// file, instead of 24: decode reads every weight once per token.
pub(crate) struct Layout {
    kind: Kind,
    half: bool,
    /// Rows interleaved in 16-row tiles for the AVX-512 kernels
    /// ([`avx512`]): per tile and block, the quants as eight
    /// `[16 rows][4 values]` groups (U4: groups `2p` and `2p + 1` in the low
    /// and high nibbles of 64-byte run `p`; signed kinds offset by 128), then
    /// each scale set and the mins as 16 consecutive factors. Otherwise
    /// row-major, block after block.
    tiled: bool,
    quants: Vec<u8>,
    scales: Vec<u8>,
    mins: Vec<u8>,
}

impl Layout {
    /// `scales` and `mins` (empty for the signed kinds) in the narrowest
    /// exact width.
    fn new(kind: Kind, tiled: bool, quants: Vec<u8>, scales: &[f32], mins: &[f32]) -> Self {
        let exact = |v: &f32| f16::from_f32(*v).to_f32() == *v;
        let half = scales.iter().chain(mins).all(exact);
        let encode = |values: &[f32]| -> Vec<u8> {
            let width = if half { 2 } else { 4 };
            let mut out = vec_with_huge_pages(values.len() * width);
            for v in values {
                if half {
                    out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
                } else {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            out
        };
        Layout {
            kind,
            half,
            tiled,
            quants,
            scales: encode(scales),
            mins: encode(mins),
        }
    }
}

/// Factor `i` of a run of little-endian f16 (`half`) or f32 values.
#[inline(always)]
fn factor(bytes: &[u8], i: usize, half: bool) -> f32 {
    if half {
        f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
    } else {
        f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unsigned 4-bit, value `j` of a block in the low nibble of byte `j`,
    /// `j + 16` in the high one (Q4_0, Q4_1, Q4_K).
    U4,
    /// Unsigned 5-bit, one per byte (Q5_1, Q5_K).
    U8,
    /// Signed bytes, no min, a scale per 32 (Q8_0, Q5_0).
    I8x32,
    /// Signed bytes, no min, a scale per 16 (Q6_K).
    I8x16,
}

impl Kind {
    /// Bytes of quants per 32 values.
    fn quant_bytes(self) -> usize {
        if self == Kind::U4 {
            16
        } else {
            32
        }
    }
    /// Scales per 32 values.
    fn scales_per_block(self) -> usize {
        if self == Kind::I8x16 {
            2
        } else {
            1
        }
    }
    fn has_min(self) -> bool {
        matches!(self, Kind::U4 | Kind::U8)
    }
}

/// One weight row's slices of a [`Layout`] (factors as their bytes).
#[derive(Clone, Copy)]
struct WeightRow<'a> {
    quants: &'a [u8],
    scales: &'a [u8],
    mins: &'a [u8],
}

/// Activations of a batch as 8-bit blocks: value `d · q`, with
/// `sum = d · Σq` for the layouts with a min and the integer `Σq` of each
/// half block (16 values) for the tiled signed layouts.
struct Q8Rows {
    quants: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
    qsums: Vec<i32>,
}

/// One token's activations.
#[derive(Clone, Copy)]
struct ActRow<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
    qsums: &'a [i32],
}

impl QuantMatrix {
    /// Whether [`QuantMatrix::from_gguf`] takes this type.
    pub fn supports(dtype: GgmlDType) -> bool {
        use GgmlDType::*;
        matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K)
    }

    /// From the raw bytes of a GGUF tensor of shape `rows` × `cols`, laid
    /// out for the kernel this CPU runs.
    pub fn from_gguf(dtype: GgmlDType, data: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_gguf_with(dtype, data, rows, cols, Kernel::detect())
    }

    fn from_gguf_with(
        dtype: GgmlDType,
        data: &[u8],
        rows: usize,
        cols: usize,
        kernel: Kernel,
    ) -> Result<Self> {
        use GgmlDType::*;
        let tiled = kernel.tiles() && rows.is_multiple_of(TILE_ROWS);
        let layout = match dtype {
            Q4_0 => convert::q4_0(data, rows, cols, tiled)?,
            Q4_1 => convert::q4_1(data, rows, cols, tiled)?,
            Q5_0 => convert::q5_0(data, rows, cols, tiled)?,
            Q5_1 => convert::q5_1(data, rows, cols, tiled)?,
            Q8_0 => convert::q8_0(data, rows, cols, tiled)?,
            Q4K => convert::q4_k(data, rows, cols, tiled)?,
            Q5K => convert::q5_k(data, rows, cols, tiled)?,
            Q6K => convert::q6_k(data, rows, cols, tiled)?,
            other => {
                return Err(EngineError::Load(format!(
                    "no CPU kernel for {other:?} matrices"
                )))
            }
        };
        Ok(QuantMatrix {
            rows,
            cols,
            dtype,
            layout,
        })
    }

    /// Whether a matrix of `rows` rows gets the 16-row tiled layout (and
    /// the AVX-512 kernels) on this CPU.
    pub fn tiled_here(rows: usize) -> bool {
        Kernel::detect().tiles() && rows.is_multiple_of(TILE_ROWS)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The GGUF type it was loaded from.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Row `r` of a row-major layout.
    fn row(&self, r: usize) -> WeightRow<'_> {
        let l = &self.layout;
        debug_assert!(!l.tiled);
        let blocks = self.cols / BLOCK;
        let (q, s) = (l.kind.quant_bytes(), l.kind.scales_per_block());
        let f = if l.half { 2 } else { 4 };
        WeightRow {
            quants: &l.quants[r * blocks * q..(r + 1) * blocks * q],
            scales: &l.scales[r * blocks * s * f..(r + 1) * blocks * s * f],
            mins: if l.kind.has_min() {
                &l.mins[r * blocks * f..(r + 1) * blocks * f]
            } else {
                &[]
            },
        }
    }

    /// Row `r`'s values, as `scale · q + min` (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        if self.layout.tiled {
            return self.dequantize_tiled_row(r, out);
        }
        let w = self.row(r);
        let half = self.layout.half;
        let scale = |i| factor(w.scales, i, half);
        let min = |i| factor(w.mins, i, half);
        match self.layout.kind {
            Kind::U4 => {
                for (b, bytes) in w.quants.chunks_exact(16).enumerate() {
                    let (s, m) = (scale(b), min(b));
                    out.extend(bytes.iter().map(|&q| s * (q & 0x0F) as f32 + m));
                    out.extend(bytes.iter().map(|&q| s * (q >> 4) as f32 + m));
                }
            }
            Kind::U8 => {
                for (i, &q) in w.quants.iter().enumerate() {
                    out.push(scale(i / BLOCK) * q as f32 + min(i / BLOCK));
                }
            }
            Kind::I8x32 | Kind::I8x16 => {
                let per_scale = BLOCK / self.layout.kind.scales_per_block();
                for (i, &q) in w.quants.iter().enumerate() {
                    out.push(scale(i / per_scale) * q as i8 as f32);
                }
            }
        }
    }

    /// [`QuantMatrix::dequantize_row`] from 16-row tiles.
    fn dequantize_tiled_row(&self, r: usize, out: &mut Vec<f32>) {
        let l = &self.layout;
        let (blocks, t, lane) = (self.cols / BLOCK, r / TILE_ROWS, r % TILE_ROWS);
        let sets = l.kind.scales_per_block();
        let per_set = BLOCK / sets;
        for b in 0..blocks {
            let block = t * blocks + b;
            let q = &l.quants[block * l.kind.quant_bytes() * TILE_ROWS..];
            let scale = |j: usize| {
                factor(
                    &l.scales,
                    (block * sets + j / per_set) * TILE_ROWS + lane,
                    l.half,
                )
            };
            let min = if l.kind.has_min() {
                factor(&l.mins, block * TILE_ROWS + lane, l.half)
            } else {
                0.0
            };
            out.extend((0..BLOCK).map(|j| {
                let v = match l.kind {
                    // Value `j` is in group `j / 4`; groups `2p`, `2p + 1`
                    // share run `p`'s bytes (low, high nibble).
                    Kind::U4 => {
                        let (g, k) = (j / 4, j % 4);
                        let byte = q[((g / 2) * TILE_ROWS + lane) * 4 + k];
                        (if g % 2 == 0 { byte & 0x0F } else { byte >> 4 }) as f32
                    }
                    Kind::U8 => q[((j / 4) * TILE_ROWS + lane) * 4 + j % 4] as f32,
                    Kind::I8x32 | Kind::I8x16 => {
                        (q[((j / 4) * TILE_ROWS + lane) * 4 + j % 4] ^ 0x80) as i8 as f32
                    }
                };
                scale(j) * v + min
            }));
        }
    }

    /// `x · Wᵀ` for `x` holding `tokens` rows of `cols` values; the result
    /// holds `tokens` rows of `rows` values.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        self.matmul_with(x, tokens, Kernel::detect())
    }

    fn matmul_with(&self, x: &[f32], tokens: usize, kernel: Kernel) -> Vec<f32> {
        debug_assert_eq!(x.len(), tokens * self.cols);
        let act = Q8Rows::quantize(x, tokens, self.cols);
        let blocks = self.cols / BLOCK;
        let acts: Vec<ActRow> = (0..tokens)
            .map(|t| ActRow {
                quants: &act.quants[t * self.cols..(t + 1) * self.cols],
                scales: &act.scales[t * blocks..(t + 1) * blocks],
                sums: &act.sums[t * blocks..(t + 1) * blocks],
                qsums: &act.qsums[2 * t * blocks..2 * (t + 1) * blocks],
            })
            .collect();
        let mut out = vec![0f32; tokens * self.rows];
        if self.layout.tiled {
            self.tiles_times_tokens(&acts, &mut out);
            return out;
        }
        // Each task owns a run of weight rows and writes their results
        // straight into the token-major output.
        let rows = self.rows;
        let sink = crate::parallel::SharedOut::new(&mut out);
        crate::parallel::for_ranges(rows, |range| {
            let first = range.start;
            let row = |i: usize| self.row(first + i);
            // SAFETY: runs of rows are disjoint, so no two tasks write one
            // index, and `i < range.len()`, `t < tokens` stay in bounds.
            let put = |i: usize, t: usize, v: f32| unsafe { sink.write(t * rows + first + i, v) };
            let layout = (self.layout.kind, self.layout.half);
            kernel.rows_times_tokens(layout, row, range.len(), &acts, blocks, put);
        });
        out
    }

    /// The tiled layout's matmul: tiles split across the step's pool, each
    /// writing its 16 rows' results per token into the token-major `out`.
    #[cfg(target_arch = "x86_64")]
    fn tiles_times_tokens(&self, acts: &[ActRow], out: &mut [f32]) {
        use avx512::Tiles;
        let l = &self.layout;
        let blocks = self.cols / BLOCK;
        // The kernels read activations unchecked; tiles are whole by
        // construction (`interleave`).
        assert!(acts.iter().all(|a| {
            a.quants.len() >= blocks * BLOCK
                && a.scales.len() >= blocks
                && a.sums.len() >= blocks
                && a.qsums.len() >= 2 * blocks
        }));
        // The kernels read the layout unchecked: it holds every tile.
        let (tiles, width) = (self.rows / TILE_ROWS, if l.half { 2 } else { 4 });
        let sets = l.kind.scales_per_block();
        assert!(
            l.quants.len() >= tiles * blocks * l.kind.quant_bytes() * TILE_ROWS
                && l.scales.len() >= tiles * blocks * sets * TILE_ROWS * width
                && (!l.kind.has_min() || l.mins.len() >= tiles * blocks * TILE_ROWS * width)
        );
        let m = Tiles {
            quants: &l.quants,
            scales: &l.scales,
            mins: &l.mins,
            blocks,
        };
        let rows = self.rows;
        let sink = crate::parallel::SharedOut::new(out);
        crate::parallel::for_ranges(rows / TILE_ROWS, |tiles| {
            // SAFETY: tasks own disjoint tiles, so no two write one index;
            // `t < rows / 16` and `n < tokens` keep every index in bounds.
            let put = |t: usize, n: usize, v: &[f32; TILE_ROWS]| unsafe {
                sink.write_run(n * rows + t * TILE_ROWS, v)
            };
            macro_rules! run {
                ($k:ident, $half:literal) => {
                    avx512::tiles_times_tokens::<avx512::$k, $half>(m, tiles, acts, put)
                };
            }
            // SAFETY: a tiled layout is built only where `detect` saw the
            // kernels' CPU features; the activations were checked above.
            unsafe {
                match (l.kind, l.half) {
                    (Kind::U4, true) => run!(U4, true),
                    (Kind::U4, false) => run!(U4, false),
                    (Kind::U8, true) => run!(U8, true),
                    (Kind::U8, false) => run!(U8, false),
                    (Kind::I8x32, true) => run!(I8x32, true),
                    (Kind::I8x32, false) => run!(I8x32, false),
                    (Kind::I8x16, true) => run!(I8x16, true),
                    (Kind::I8x16, false) => run!(I8x16, false),
                }
            }
        });
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn tiles_times_tokens(&self, _: &[ActRow], _: &mut [f32]) {
        unreachable!("tiled layouts are built only for x86-64's AVX-512 kernels")
    }
}

impl Q8Rows {
    /// Per 32 values: `d = amax / 127`, `q = round(x / d)` (half away from
    /// zero), `d` kept as f16 (candle's `BlockQ8_1::from_float`); the sum
    /// `d · Σq` is exact.
    fn quantize(x: &[f32], tokens: usize, cols: usize) -> Self {
        Self::quantize_with(x, tokens, cols, Kernel::detect())
    }

    fn quantize_with(x: &[f32], tokens: usize, cols: usize, kernel: Kernel) -> Self {
        let blocks = tokens * cols / BLOCK;
        let mut r = Q8Rows {
            quants: vec![0; tokens * cols],
            scales: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
            qsums: Vec::with_capacity(2 * blocks),
        };
        for (xs, qs) in x.chunks_exact(BLOCK).zip(r.quants.chunks_exact_mut(BLOCK)) {
            let (d, [low, high]) = match kernel {
                Kernel::Scalar => quantize_block(xs, qs),
                // SAFETY: `detect` chose AVX2 only where the CPU has it; both
                // blocks hold 32 values.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 | Kernel::Avx512Vnni | Kernel::Avx512Tiles => unsafe {
                    avx2::quantize_block(xs, qs)
                },
            };
            let d = f16::from_f32(d).to_f32();
            r.scales.push(d);
            r.sums.push((low + high) as f32 * d);
            r.qsums.extend([low, high]);
        }
        r
    }
}

/// One block: returns `d` (before f16 rounding) and `Σq` of each half.
fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, [i32; 2]) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sums = [0i32; 2];
    for (i, (q, &v)) in qs.iter_mut().zip(xs).enumerate() {
        *q = (v * inv).round() as i8;
        sums[i / 16] += *q as i32;
    }
    (d, sums)
}

/// The implementation, picked from the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 with AVX-512 VNNI's byte dot product on 256-bit vectors.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX-512 VNNI on 16-row tiles ([`avx512`]) for matrices whose rows
    /// come in sixteens; others as `Avx512Vnni`.
    #[cfg(target_arch = "x86_64")]
    Avx512Tiles,
}

impl Kernel {
    fn detect() -> Self {
        // std caches the CPUID answer; this is a load and a branch per call.
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    return Kernel::Avx512Tiles;
                }
                return Kernel::Avx512Vnni;
            }
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// Whether matrices get the 16-row tiled layout under this kernel.
    fn tiles(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self == Kernel::Avx512Tiles;
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// `put(i, t, row(i) · acts[t])` for `i < count` and every token. Every
    /// row and activation must hold `blocks` blocks (the SIMD kernels read
    /// them unchecked): rows do by construction ([`QuantMatrix::row`]),
    /// activations are checked here.
    fn rows_times_tokens<'a>(
        self,
        (kind, half): (Kind, bool),
        row: impl Fn(usize) -> WeightRow<'a>,
        count: usize,
        acts: &[ActRow],
        blocks: usize,
        mut put: impl FnMut(usize, usize, f32),
    ) {
        #[cfg(target_arch = "x86_64")]
        macro_rules! dispatch {
            ($run:ident) => {{
                use avx2::{$run as run, I8x16, I8x32, U4, U8};
                match (kind, half) {
                    (Kind::U4, true) => run::<U4, true>(row, count, acts, blocks, put),
                    (Kind::U4, false) => run::<U4, false>(row, count, acts, blocks, put),
                    (Kind::U8, true) => run::<U8, true>(row, count, acts, blocks, put),
                    (Kind::U8, false) => run::<U8, false>(row, count, acts, blocks, put),
                    (Kind::I8x32, true) => run::<I8x32, true>(row, count, acts, blocks, put),
                    (Kind::I8x32, false) => run::<I8x32, false>(row, count, acts, blocks, put),
                    (Kind::I8x16, true) => run::<I8x16, true>(row, count, acts, blocks, put),
                    (Kind::I8x16, false) => run::<I8x16, false>(row, count, acts, blocks, put),
                }
            }};
        }
        assert!(acts.iter().all(|a| {
            a.quants.len() >= blocks * BLOCK && a.scales.len() >= blocks && a.sums.len() >= blocks
        }));
        match self {
            Kernel::Scalar => {
                for i in 0..count {
                    let w = row(i);
                    for (t, a) in acts.iter().enumerate() {
                        put(i, t, dot_scalar(kind, half, &w, a));
                    }
                }
            }
            // SAFETY: `detect` chose this kernel only where the CPU has AVX2,
            // FMA and F16C; every row and activation holds `blocks` blocks.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { dispatch!(rows_times_tokens) },
            // SAFETY: as above, and `detect` saw AVX-512 VNNI and VL.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni | Kernel::Avx512Tiles => unsafe {
                dispatch!(rows_times_tokens_vnni)
            },
        }
    }
}

/// `Σ_blocks s_w·d_a·Σ(q_w·q_a) + m_w·sum_a`: the same integer sums as the
/// SIMD kernels, one block at a time.
fn dot_scalar(kind: Kind, half: bool, w: &WeightRow, a: &ActRow) -> f32 {
    let scale = |i| factor(w.scales, i, half);
    let mut acc = 0f32;
    for b in 0..a.scales.len() {
        let q = &a.quants[b * BLOCK..(b + 1) * BLOCK];
        let min = if kind.has_min() {
            factor(w.mins, b, half) * a.sums[b]
        } else {
            0.0
        };
        let sumi = |ws: &mut dyn Iterator<Item = i32>, acts: &[i8]| -> i32 {
            ws.zip(acts).map(|(w, &a)| w * a as i32).sum()
        };
        let dot = match kind {
            Kind::U4 => {
                let nib = &w.quants[b * 16..(b + 1) * 16];
                let mut values = nib
                    .iter()
                    .map(|&n| (n & 0x0F) as i32)
                    .chain(nib.iter().map(|&n| (n >> 4) as i32));
                sumi(&mut values, q) as f32 * scale(b)
            }
            Kind::U8 => {
                let mut values = w.quants[b * BLOCK..(b + 1) * BLOCK]
                    .iter()
                    .map(|&v| v as i32);
                sumi(&mut values, q) as f32 * scale(b)
            }
            Kind::I8x32 => {
                let mut values = w.quants[b * BLOCK..(b + 1) * BLOCK]
                    .iter()
                    .map(|&v| v as i8 as i32);
                sumi(&mut values, q) as f32 * scale(b)
            }
            Kind::I8x16 => (0..2)
                .map(|h| {
                    let range = b * BLOCK + 16 * h..b * BLOCK + 16 * h + 16;
                    let mut values = w.quants[range].iter().map(|&v| v as i8 as i32);
                    sumi(&mut values, &q[16 * h..16 * h + 16]) as f32 * scale(2 * b + h)
                })
                .sum(),
        };
        acc += dot * a.scales[b] + min;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};
    use proptest::strategy::Strategy;

    const TYPES: [GgmlDType; 8] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

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
        #[cfg(target_arch = "x86_64")]
        {
            if Kernel::detect() != Kernel::Scalar {
                k.push(Kernel::Avx2);
            }
            if matches!(Kernel::detect(), Kernel::Avx512Vnni | Kernel::Avx512Tiles) {
                k.push(Kernel::Avx512Vnni);
            }
            if Kernel::detect() == Kernel::Avx512Tiles {
                k.push(Kernel::Avx512Tiles);
            }
        }
        k
    }

    /// candle quantizes `w`; returns candle's tensor and ours from its bytes.
    fn both(w: Vec<f32>, dtype: GgmlDType, rows: usize, cols: usize) -> (QTensor, QuantMatrix) {
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours = QuantMatrix::from_gguf(dtype, &q.data().unwrap(), rows, cols).unwrap();
        (q, ours)
    }

    /// Every layout, row-major and tiled, holds exactly the values candle
    /// dequantizes.
    #[test]
    fn conversions_keep_every_value() {
        let (rows, cols) = (32, 512);
        for (dtype, kernel) in TYPES
            .into_iter()
            .flat_map(|d| kernels().into_iter().map(move |k| (d, k)))
        {
            let (q, _) = both(random(rows * cols, 7, 0.8), dtype, rows, cols);
            let ours =
                QuantMatrix::from_gguf_with(dtype, &q.data().unwrap(), rows, cols, kernel).unwrap();
            let want = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut got = Vec::new();
            for r in 0..rows {
                ours.dequantize_row(r, &mut got);
            }
            assert_eq!(got, want, "{dtype:?} {kernel:?}");
            // The file's f16 factors stay f16 (K-quants' products rarely fit).
            let from_f16 = !matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K);
            if from_f16 {
                assert!(
                    ours.layout.half,
                    "{dtype:?} factors should be stored as f16"
                );
            }
        }
    }

    /// Every kernel's `x · Wᵀ` equals candle's dequantized weights times our
    /// quantized activations (summed in f64), up to f32 summation order.
    fn assert_matches_reference(
        dtype: GgmlDType,
        w: Vec<f32>,
        x: Vec<f32>,
        rows: usize,
        cols: usize,
        tokens: usize,
    ) {
        let (q, _) = both(w, dtype, rows, cols);
        let dense = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let act = Q8Rows::quantize(&x, tokens, cols);
        let xq: Vec<f64> = act
            .quants
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f64 * act.scales[i / BLOCK] as f64)
            .collect();
        let bytes = q.data().unwrap();
        for kernel in kernels() {
            let ours = QuantMatrix::from_gguf_with(dtype, &bytes, rows, cols, kernel).unwrap();
            let got = ours.matmul_with(&x, tokens, kernel);
            assert_eq!(got.len(), tokens * rows);
            for t in 0..tokens {
                for r in 0..rows {
                    let (w, a) = (
                        &dense[r * cols..(r + 1) * cols],
                        &xq[t * cols..(t + 1) * cols],
                    );
                    let want: f64 = w.iter().zip(a).map(|(&w, a)| w as f64 * a).sum();
                    let size: f64 = w.iter().zip(a).map(|(&w, a)| (w as f64 * a).abs()).sum();
                    let g = got[t * rows + r] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * size + 1e-6,
                        "{dtype:?} {kernel:?} {rows}x{cols}x{tokens} [{t},{r}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_type_matches_the_reference() {
        for dtype in TYPES {
            for (rows, cols, tokens) in [
                (8, 256, 1),
                (96, 768, 1),
                (32, 256, 2),
                (16, 512, 3),
                (48, 512, 7),
                (37, 1536, 5),
                (1536, 512, 4),
                (600, 1536, 16),
            ] {
                let (w, x) = (random(rows * cols, 1, 0.3), random(tokens * cols, 2, 1.0));
                assert_matches_reference(dtype, w, x, rows, cols, tokens);
            }
        }
    }

    /// Against the unquantized activations: ours and candle's quantized
    /// matmuls both stay within the activation rounding's bound
    /// (`|x − q·d| ≤ 0.57·d` per value, `d` rounded through f16), and ours,
    /// whose activation sums are exact where candle rounds them to f16, is
    /// on average no further from the exact product than candle's.
    #[test]
    fn agrees_with_candle_within_activation_rounding() {
        use candle_core::quantized::QMatMul;
        use candle_core::Module;
        let (rows, cols, tokens) = (64, 768, 3);
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let (w, x) = (random(rows * cols, 3, 0.3), random(tokens * cols, 4, 1.0));
            let (q, ours) = both(w, dtype, rows, cols);
            let dense = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let xt = Tensor::from_vec(x.clone(), (tokens, cols), &Device::Cpu).unwrap();
            let theirs = QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = ours.matmul(&x, tokens);
            let (mut err_ours, mut err_theirs) = (0f64, 0f64);
            for t in 0..tokens {
                let xs = &x[t * cols..(t + 1) * cols];
                for r in 0..rows {
                    let w = &dense[r * cols..(r + 1) * cols];
                    let exact: f64 = w.iter().zip(xs).map(|(&w, &x)| w as f64 * x as f64).sum();
                    let bound: f64 = xs
                        .chunks(BLOCK)
                        .zip(w.chunks(BLOCK))
                        .map(|(xb, wb)| {
                            let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                            0.57 * d * wb.iter().map(|w| w.abs() as f64).sum::<f64>()
                        })
                        .sum::<f64>()
                        + 1e-4;
                    let (g, c) = (got[t * rows + r] as f64, theirs[t * rows + r] as f64);
                    assert!(
                        (g - exact).abs() <= bound,
                        "{dtype:?} ours {g} vs {exact} ± {bound}"
                    );
                    assert!(
                        (c - exact).abs() <= bound,
                        "{dtype:?} candle {c} vs {exact} ± {bound}"
                    );
                    err_ours += (g - exact).abs();
                    err_theirs += (c - exact).abs();
                }
            }
            assert!(
                err_ours <= err_theirs * 1.05,
                "{dtype:?}: {err_ours} vs candle {err_theirs}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any type, shape, batch and value range (all-zero blocks, outliers).
        #[test]
        fn every_type_matches_the_reference_on_any_shape(
            type_index in 0usize..8,
            rows in proptest::prop_oneof![1usize..24, (1usize..4).prop_map(|t| 16 * t)],
            super_blocks in 1usize..4,
            tokens in 1usize..6,
            seed in 0u64..1000,
            zero_block in proptest::prelude::any::<bool>(),
            outlier in 0f32..50.0,
        ) {
            let cols = super_blocks * 256;
            let mut x = random(tokens * cols, seed + 1, 2.0);
            if zero_block {
                x[..BLOCK].iter_mut().for_each(|v| *v = 0.0);
            }
            x[cols - 1] = outlier;
            let w = random(rows * cols, seed, 0.5);
            assert_matches_reference(TYPES[type_index], w, x, rows, cols, tokens);
        }
    }

    proptest::proptest! {
        /// The SIMD activation quantizer equals the scalar one, ties (`x / d`
        /// exactly half-way) rounded away from zero included.
        #[test]
        fn activation_quantizers_agree(seed in 0u64..10_000, ties in proptest::prelude::any::<bool>()) {
            let mut x = random(4 * BLOCK, seed, 3.0);
            if ties {
                // amax 127 makes d = 1: every k + 0.5 is a tie.
                x[0] = 127.0;
                for (i, v) in x.iter_mut().enumerate().skip(1).take(40) {
                    *v = (i as f32 - 20.0) + 0.5;
                }
            }
            x[3 * BLOCK..].iter_mut().for_each(|v| *v = 0.0);
            let want = Q8Rows::quantize_with(&x, 1, 4 * BLOCK, Kernel::Scalar);
            for kernel in kernels() {
                let got = Q8Rows::quantize_with(&x, 1, 4 * BLOCK, kernel);
                proptest::prop_assert_eq!(&got.quants, &want.quants);
                proptest::prop_assert_eq!(&got.scales, &want.scales);
                proptest::prop_assert_eq!(&got.sums, &want.sums);
            }
        }
    }

    #[test]
    fn rejects_partial_blocks() {
        assert!(QuantMatrix::from_gguf(GgmlDType::Q4_1, &[0; 19], 1, 32).is_err());
        assert!(QuantMatrix::from_gguf(GgmlDType::Q4_1, &[0; 20], 1, 16).is_err());
        assert!(QuantMatrix::from_gguf(GgmlDType::Q6K, &[0; 210], 1, 128).is_err());
        assert!(QuantMatrix::from_gguf(GgmlDType::Q2K, &[0; 84], 1, 256).is_err());
    }
}
