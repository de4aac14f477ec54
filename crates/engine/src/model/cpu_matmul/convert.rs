//! GGUF blocks → our three layouts, at load. Every conversion keeps the
//! values exactly: a weight is `scale · q + min` with `q` the file's integer,
//! `scale` and `min` computed in f32 as ggml's own dequantization computes
//! them (`d · sc` and `−dmin · m` for K-quants) and stored in the narrowest
//! exact width ([`Layout::new`]), so `dequantize_row` equals candle's
//! dequantization bit for bit (tested).
//!
//! Block formats: ggml's `ggml-common.h` (`block_q4_0` … `block_q6_K`).

use half::f16;

use super::{Kind, Layout, BLOCK, TILE_ROWS};
use crate::error::{EngineError, Result};
use crate::host_memory::{vec_with_huge_pages, zeroed_with_huge_pages};

/// Values per K-quant super-block.
const QK_K: usize = 256;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Pack 32 values (each `< 16`) into our nibble order: value `j` in the low
/// nibble of byte `j`, value `j + 16` in the high one.
fn pack_nibbles(values: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| values[j] | (values[j + 16] << 4))
}

/// Checks the byte count and returns the number of `block_bytes` blocks.
fn whole_blocks(
    name: &str,
    data: &[u8],
    rows: usize,
    cols: usize,
    per_block: usize,
    block_bytes: usize,
) -> Result<usize> {
    let blocks = rows * cols / per_block;
    if !cols.is_multiple_of(per_block) || data.len() != blocks * block_bytes {
        return Err(EngineError::Load(format!(
            "{name} tensor {rows}x{cols}: {} bytes do not form whole blocks",
            data.len()
        )));
    }
    Ok(blocks)
}

/// One layout being filled block by block, in the file's (row-major)
/// order: quants straight into their final place, row-major or in 16-row
/// tiles (one pass at load, no re-laying afterwards), and f32 factors that
/// [`Layout::new`] narrows where exact.
pub(super) struct Builder {
    kind: Kind,
    tiled: bool,
    blocks_per_row: usize,
    /// Blocks pushed so far.
    next: usize,
    /// The row being pushed and its blocks pushed so far (tiled only).
    row: usize,
    next_in_row: usize,
    quants: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

impl Builder {
    /// Room for a `rows` × `cols` matrix; `tiled` needs `rows` in sixteens.
    pub(super) fn new(kind: Kind, rows: usize, cols: usize, tiled: bool) -> Self {
        debug_assert!(!tiled || rows.is_multiple_of(TILE_ROWS));
        let blocks = rows * cols / BLOCK;
        let (scales, mins) = (
            blocks * kind.scales_per_block(),
            if kind.has_min() { blocks } else { 0 },
        );
        let quants = blocks * kind.quant_bytes();
        Builder {
            kind,
            tiled,
            blocks_per_row: cols / BLOCK,
            next: 0,
            row: 0,
            next_in_row: 0,
            quants: if tiled {
                zeroed_with_huge_pages(quants)
            } else {
                vec_with_huge_pages(quants)
            },
            scales: if tiled {
                vec![0.0; scales]
            } else {
                Vec::with_capacity(scales)
            },
            mins: if tiled {
                vec![0.0; mins]
            } else {
                Vec::with_capacity(mins)
            },
        }
    }

    /// The next block: its quants in the row-major form (16 bytes of nibble
    /// pairs for `U4`, else 32 bytes, signed ones as their bit patterns),
    /// its scales (one, or two for `I8x16`) and its min (ignored by the
    /// kinds without one).
    fn push(&mut self, quants: &[u8], scales: &[f32], min: f32) {
        let kind = self.kind;
        debug_assert_eq!(quants.len(), kind.quant_bytes());
        debug_assert_eq!(scales.len(), kind.scales_per_block());
        if !self.tiled {
            self.quants.extend_from_slice(quants);
            self.scales.extend_from_slice(scales);
            if kind.has_min() {
                self.mins.push(min);
            }
            self.next += 1;
            return;
        }
        // Row `next / blocks_per_row`, kept as a counter (a division per
        // block was a third of a load).
        if self.next_in_row == self.blocks_per_row {
            self.next_in_row = 0;
            self.row += 1;
        }
        let (lane, block) = (
            self.row % TILE_ROWS,
            (self.row / TILE_ROWS) * self.blocks_per_row + self.next_in_row,
        );
        self.next_in_row += 1;
        let tile_block = kind.quant_bytes() * TILE_ROWS;
        let out = &mut self.quants[block * tile_block..(block + 1) * tile_block];
        let mut words = [0u32; 8];
        for (w, q) in words.iter_mut().zip(quants.chunks_exact(4)) {
            *w = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
        }
        // Four bytes per run (`U4`) or group: see `Layout`'s `tiled`.
        for k in 0..kind.quant_bytes() / 4 {
            let value = match kind {
                // Run `k` holds values `8k..8k + 4` in its low nibbles and
                // `8k + 4..8k + 8` in its high ones; values 0–15 are the low
                // nibbles of the row block's bytes, 16–31 the high ones.
                Kind::U4 => {
                    let (lo, hi) = (words[2 * (k % 2)], words[2 * (k % 2) + 1]);
                    if k < 2 {
                        (lo & 0x0F0F_0F0F) | ((hi & 0x0F0F_0F0F) << 4)
                    } else {
                        ((lo >> 4) & 0x0F0F_0F0F) | (hi & 0xF0F0_F0F0)
                    }
                }
                Kind::U8 => words[k],
                Kind::I8x32 | Kind::I8x16 => words[k] ^ 0x8080_8080,
            };
            let at = (k * TILE_ROWS + lane) * 4;
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        for (s, &v) in scales.iter().enumerate() {
            self.scales[(block * scales.len() + s) * TILE_ROWS + lane] = v;
        }
        if kind.has_min() {
            self.mins[block * TILE_ROWS + lane] = min;
        }
        self.next += 1;
    }

    fn done(self) -> Layout {
        debug_assert_eq!(self.next * self.kind.quant_bytes(), self.quants.len());
        Layout::new(self.kind, self.tiled, self.quants, &self.scales, &self.mins)
    }
}

/// `block_q4_0`: f16 `d`, 16 bytes; value `d · (q − 8)`.
pub(super) fn q4_0(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q4_0", data, rows, cols, BLOCK, 18)?;
    let mut out = Builder::new(Kind::U4, rows, cols, tiled);
    for b in data.chunks_exact(18) {
        let d = f16_at(b, 0);
        // The file's nibble order is ours; only the offset moves into `min`.
        out.push(&b[2..18], &[d], -8.0 * d);
    }
    Ok(out.done())
}

/// `block_q4_1`: f16 `d`, f16 `m`, 16 bytes; value `d · q + m`.
pub(super) fn q4_1(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q4_1", data, rows, cols, BLOCK, 20)?;
    let mut out = Builder::new(Kind::U4, rows, cols, tiled);
    for b in data.chunks_exact(20) {
        out.push(&b[4..20], &[f16_at(b, 0)], f16_at(b, 2));
    }
    Ok(out.done())
}

/// `block_q5_0`: f16 `d`, 32 high bits, 16 bytes of low nibbles; value
/// `d · (q − 16)`, kept as the signed byte `q − 16`.
pub(super) fn q5_0(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q5_0", data, rows, cols, BLOCK, 22)?;
    let mut out = Builder::new(Kind::I8x32, rows, cols, tiled);
    for b in data.chunks_exact(22) {
        let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let low = &b[6..22];
        let value =
            |j: usize, nibble: u8| ((nibble | ((((high >> j) & 1) as u8) << 4)) as i8 - 16) as u8;
        let q: [u8; 32] = std::array::from_fn(|j| {
            if j < 16 {
                value(j, low[j] & 0x0F)
            } else {
                value(j, low[j - 16] >> 4)
            }
        });
        out.push(&q, &[f16_at(b, 0)], 0.0);
    }
    Ok(out.done())
}

/// `block_q5_1`: f16 `d`, f16 `m`, 32 high bits, 16 bytes; value `d · q + m`.
pub(super) fn q5_1(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q5_1", data, rows, cols, BLOCK, 24)?;
    let mut out = Builder::new(Kind::U8, rows, cols, tiled);
    for b in data.chunks_exact(24) {
        let high = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let low = &b[8..24];
        let mut q = [0u8; 32];
        for j in 0..16 {
            q[j] = (low[j] & 0x0F) | ((((high >> j) & 1) as u8) << 4);
            q[j + 16] = (low[j] >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
        }
        out.push(&q, &[f16_at(b, 0)], f16_at(b, 2));
    }
    Ok(out.done())
}

/// `block_q8_0`: f16 `d`, 32 signed bytes; value `d · q`.
pub(super) fn q8_0(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q8_0", data, rows, cols, BLOCK, 34)?;
    let mut out = Builder::new(Kind::I8x32, rows, cols, tiled);
    for b in data.chunks_exact(34) {
        out.push(&b[2..34], &[f16_at(b, 0)], 0.0);
    }
    Ok(out.done())
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block
/// (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and
/// mins, 128 bytes; sub-block `j` (32 values) is `d·sc_j · q − dmin·m_j`.
pub(super) fn q4_k(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q4_K", data, rows, cols, QK_K, 144)?;
    let mut out = Builder::new(Kind::U4, rows, cols, tiled);
    for b in data.chunks_exact(144) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for chunk in 0..4 {
            let q = &qs[32 * chunk..32 * chunk + 32];
            for (half, shift) in [(0, 0), (1, 4)] {
                let j = 2 * chunk + half;
                let (sc, m) = scale_min_k4(j, scales);
                let values: [u8; 32] = std::array::from_fn(|l| (q[l] >> shift) & 0x0F);
                out.push(&pack_nibbles(&values), &[d * sc as f32], -(dmin * m as f32));
            }
        }
    }
    Ok(out.done())
}

/// `block_q5_K`: f16 `d`, f16 `dmin`, 12 bytes of scales, 32 bytes of high
/// bits, 128 bytes of low nibbles; sub-block `j` is `d·sc_j · q − dmin·m_j`.
pub(super) fn q5_k(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q5_K", data, rows, cols, QK_K, 176)?;
    let mut out = Builder::new(Kind::U8, rows, cols, tiled);
    for b in data.chunks_exact(176) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
        for chunk in 0..4 {
            let ql = &qs[32 * chunk..32 * chunk + 32];
            for (half, shift) in [(0, 0), (1, 4)] {
                let j = 2 * chunk + half;
                let bit = 1u8 << j;
                let (sc, m) = scale_min_k4(j, scales);
                let values: [u8; 32] = std::array::from_fn(|l| {
                    ((ql[l] >> shift) & 0x0F) | if qh[l] & bit != 0 { 16 } else { 0 }
                });
                out.push(&values, &[d * sc as f32], -(dmin * m as f32));
            }
        }
    }
    Ok(out.done())
}

/// `block_q6_K`: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs,
/// 16 signed 8-bit scales, f16 `d`; each 16 values are `d·sc · (q − 32)`,
/// kept as the signed byte `q − 32` with scale `d·sc`.
pub(super) fn q6_k(data: &[u8], rows: usize, cols: usize, tiled: bool) -> Result<Layout> {
    whole_blocks("Q6_K", data, rows, cols, QK_K, 210)?;
    let mut out = Builder::new(Kind::I8x16, rows, cols, tiled);
    for b in data.chunks_exact(210) {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        let mut values = [0i8; QK_K];
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            let y = &mut values[128 * half..128 * half + 128];
            for l in 0..32 {
                let q = |low: u8, shift: u32| (low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32;
                y[l] = q(ql[l] & 0x0F, 0);
                y[l + 32] = q(ql[l + 32] & 0x0F, 2);
                y[l + 64] = q(ql[l] >> 4, 4);
                y[l + 96] = q(ql[l + 32] >> 4, 6);
            }
        }
        for (values, sc) in values.chunks_exact(BLOCK).zip(sc.chunks_exact(2)) {
            let bytes: [u8; 32] = std::array::from_fn(|j| values[j] as u8);
            let scales = [d * (sc[0] as i8) as f32, d * (sc[1] as i8) as f32];
            out.push(&bytes, &scales, 0.0);
        }
    }
    Ok(out.done())
}
