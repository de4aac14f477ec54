//! The KV pool and paged attention on a candle device (CUDA in production),
//! in vLLM's PagedAttention layout: per layer, K and V are
//! `[num_blocks * block_size, kv_heads, head_dim]` tensors; a step's new rows
//! are written by slot and each new token attends over its sequence's blocks.
//!
//! Two implementations of the same contract:
//! - the portable **reference path** (any device): a `scatter_set` by slot for
//!   writes, and per sequence a gather of its slots + dense candle attention
//!   with a causal/window mask. It is what the kernels are tested against, and
//!   what the CPU tests run (against [`crate::kv::host`], the CPU fast path).
//! - our **CUDA kernels** (`kernels/paged_attention.cu`, feature `cuda`):
//!   `reshape_and_cache` and a varlen `paged_attention` over block tables.
//!   `kv_backend = "reference"` (`[engine]`, [`crate::KvBackend`]) forces the reference path on a GPU.
//!
//! A step's geometry ([`StepGeometry`]) is uploaded once and shared by every layer.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::kv::host::{slot_of, AttentionParams, KvLayout, SeqView, ValueStorage};

#[cfg(feature = "cuda")]
mod cuda;

pub struct DeviceKvCache {
    layout: KvLayout,
    dtype: DType,
    device: Device,
    k: Vec<Tensor>,
    /// Empty when values are a key prefix (MLA).
    v: Vec<Tensor>,
    /// The reference path even where kernels exist ([`crate::KvBackend::Reference`]).
    reference_only: bool,
}

/// Where a step's tokens go and what they attend to, on the device and on the host.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct StepGeometry {
    /// Slot of each new token (`u32 [tokens]`).
    slots: Tensor,
    /// Sequence index of each new token (`u32 [tokens]`).
    token_seq: Tensor,
    /// Position of each new token (`u32 [tokens]`).
    token_pos: Tensor,
    /// Block tables padded to the longest (`u32 [seqs, max_blocks]`).
    block_tables: Tensor,
    max_blocks: usize,
    /// Host copy per sequence: its rows in the batch, first position, and the
    /// slots of every position it can attend to (the reference path's gather).
    host: Vec<(std::ops::Range<usize>, usize, Vec<u32>)>,
    num_tokens: usize,
}

impl StepGeometry {
    pub fn new(seqs: &[SeqView], block_size: usize, device: &Device) -> Result<Self> {
        let num_tokens = seqs.iter().map(|s| s.token_range.end).max().unwrap_or(0);
        let mut slots = vec![0u32; num_tokens];
        let mut token_seq = vec![0u32; num_tokens];
        let mut token_pos = vec![0u32; num_tokens];
        let max_blocks = seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0u32; seqs.len() * max_blocks];
        let mut host = Vec::with_capacity(seqs.len());
        let slot = |table: &[u32], p: usize| slot_of(table, p, block_size) as u32;
        for (si, s) in seqs.iter().enumerate() {
            for (i, t) in s.token_range.clone().enumerate() {
                slots[t] = slot(s.block_table, s.start_pos + i);
                token_seq[t] = si as u32;
                token_pos[t] = (s.start_pos + i) as u32;
            }
            tables[si * max_blocks..si * max_blocks + s.block_table.len()]
                .copy_from_slice(s.block_table);
            let context = s.start_pos + s.token_range.len();
            let ctx_slots = (0..context).map(|p| slot(s.block_table, p)).collect();
            host.push((s.token_range.clone(), s.start_pos, ctx_slots));
        }
        Ok(StepGeometry {
            slots: Tensor::from_vec(slots, num_tokens, device)?,
            token_seq: Tensor::from_vec(token_seq, num_tokens, device)?,
            token_pos: Tensor::from_vec(token_pos, num_tokens, device)?,
            block_tables: Tensor::from_vec(tables, (seqs.len(), max_blocks), device)?,
            max_blocks,
            host,
            num_tokens,
        })
    }

    /// Positions of the batch's tokens (`u32 [tokens]`, on the device).
    pub fn positions(&self) -> &Tensor {
        &self.token_pos
    }
}

impl DeviceKvCache {
    pub fn new(layout: KvLayout, dtype: DType, device: &Device) -> Result<Self> {
        let rows = layout.num_blocks * layout.block_size;
        let shape = (rows, layout.num_kv_heads, layout.head_dim);
        let k = (0..layout.num_layers)
            .map(|_| Tensor::zeros(shape, dtype, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = match layout.values {
            ValueStorage::Separate => (0..layout.num_layers)
                .map(|_| Tensor::zeros(shape, dtype, device))
                .collect::<candle_core::Result<Vec<_>>>()?,
            ValueStorage::KeyPrefix(_) => Vec::new(),
        };
        Ok(DeviceKvCache {
            layout,
            dtype,
            device: device.clone(),
            k,
            v,
            reference_only: false,
        })
    }

    /// Read and write through candle's ops even where kernels exist.
    pub fn with_reference_path(mut self) -> Self {
        self.reference_only = true;
        self
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn use_kernels(&self) -> bool {
        cfg!(feature = "cuda") && self.device.is_cuda() && !self.reference_only
    }

    /// Copy whole blocks (copy-on-write for forked sequences), every layer.
    pub fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        let bs = self.layout.block_size;
        for &(src, dst) in copies {
            for t in self.k.iter().chain(self.v.iter()) {
                let block = t.narrow(0, src as usize * bs, bs)?.copy()?;
                t.slice_set(&block, 0, dst as usize * bs)?;
            }
        }
        Ok(())
    }

    /// Write the step's new rows (`k`, `v`: `[tokens, kv_heads * head_dim]`;
    /// `v` is None when values are a key prefix).
    pub fn write(
        &self,
        layer: usize,
        g: &StepGeometry,
        k: &Tensor,
        v: Option<&Tensor>,
    ) -> Result<()> {
        let (kvh, hd) = (self.layout.num_kv_heads, self.layout.head_dim);
        let k = k
            .to_dtype(self.dtype)?
            .reshape((g.num_tokens, kvh, hd))?
            .contiguous()?;
        let v = match (v, self.v.get(layer)) {
            (Some(v), Some(_)) => Some(
                v.to_dtype(self.dtype)?
                    .reshape((g.num_tokens, kvh, hd))?
                    .contiguous()?,
            ),
            _ => None,
        };
        #[cfg(feature = "cuda")]
        if self.use_kernels() {
            return cuda::reshape_and_cache(
                &k,
                v.as_ref(),
                &self.k[layer],
                self.v.get(layer),
                &g.slots,
            );
        }
        self.write_reference(layer, g, &k, v.as_ref())
    }

    /// Scatter `[tokens, kv_heads, head_dim]` rows (cache dtype) to their slots.
    fn write_reference(
        &self,
        layer: usize,
        g: &StepGeometry,
        k: &Tensor,
        v: Option<&Tensor>,
    ) -> Result<()> {
        let (kvh, hd) = (self.layout.num_kv_heads, self.layout.head_dim);
        let index = g
            .slots
            .reshape((g.num_tokens, 1, 1))?
            .broadcast_as((g.num_tokens, kvh, hd))?
            .contiguous()?;
        self.k[layer].scatter_set(&index, k, 0)?;
        if let (Some(v), Some(cache)) = (v, self.v.get(layer)) {
            cache.scatter_set(&index, v, 0)?;
        }
        Ok(())
    }

    /// Attention of every new token (`q`: `[tokens, heads * head_dim]`) over
    /// its sequence's cached rows; returns `[tokens, heads * value_dim]` in
    /// `q`'s dtype.
    pub fn attend(
        &self,
        layer: usize,
        g: &StepGeometry,
        q: &Tensor,
        p: AttentionParams,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.use_kernels() {
            let out = cuda::paged_attention(
                &q.to_dtype(self.dtype)?.contiguous()?,
                &self.k[layer],
                self.v.get(layer),
                g,
                &self.layout,
                p,
            )?;
            return Ok(out.to_dtype(q.dtype())?);
        }
        self.attend_reference(layer, g, q, p)
    }

    /// Gather each sequence's rows and run dense masked attention (f32).
    fn attend_reference(
        &self,
        layer: usize,
        g: &StepGeometry,
        q: &Tensor,
        p: AttentionParams,
    ) -> Result<Tensor> {
        let (kvh, hd, vd) = (
            self.layout.num_kv_heads,
            self.layout.head_dim,
            self.layout.value_dim(),
        );
        let heads = p.num_heads;
        let group = heads / kvh;
        let head_map: Vec<u32> = (0..heads).map(|h| (h / group) as u32).collect();
        let head_map = Tensor::new(head_map.as_slice(), &self.device)?;
        let mut outs = Vec::with_capacity(g.host.len());
        for (range, start, ctx_slots) in &g.host {
            let t = range.len();
            let ctx = ctx_slots.len();
            let idx = Tensor::new(ctx_slots.as_slice(), &self.device)?;
            // [ctx, kvh, hd] → [heads, ctx, hd]
            let kc = self.k[layer].index_select(&idx, 0)?.to_dtype(DType::F32)?;
            let vc = match self.v.get(layer) {
                Some(v) => v.index_select(&idx, 0)?.to_dtype(DType::F32)?,
                None => kc.narrow(2, 0, vd)?.contiguous()?,
            };
            let kh = kc
                .index_select(&head_map, 1)?
                .transpose(0, 1)?
                .contiguous()?;
            let vh = vc
                .index_select(&head_map, 1)?
                .transpose(0, 1)?
                .contiguous()?;
            let qh = q
                .narrow(0, range.start, t)?
                .to_dtype(DType::F32)?
                .reshape((t, heads, hd))?
                .transpose(0, 1)?
                .contiguous()?;
            let mut scores = (qh.matmul(&kh.t()?)? * p.scale as f64)?;
            if let Some(cap) = p.softcap {
                scores = ((scores / cap as f64)?.tanh()? * cap as f64)?;
            }
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| {
                    let pos = start + i;
                    let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    (0..ctx).map(move |j| {
                        if j >= lo && j <= pos {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (1, t, ctx), &self.device)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
            let out = probs
                .matmul(&vh)?
                .transpose(0, 1)?
                .reshape((t, heads * vd))?;
            outs.push(out);
        }
        Ok(Tensor::cat(&outs, 0)?.to_dtype(q.dtype())?)
    }
}

/// A batch of sequences `i` with `tables[i]`, each adding `len` tokens from
/// position `start` (`step[i] = (start, len)`); returns the views and the token count.
fn batch_views<'a>(tables: &'a [Vec<u32>], step: &[(usize, usize)]) -> (Vec<SeqView<'a>>, usize) {
    let mut seqs = Vec::with_capacity(step.len());
    let mut at = 0;
    for (table, &(start, len)) in tables.iter().zip(step) {
        seqs.push(SeqView {
            token_range: at..at + len,
            start_pos: start,
            block_table: table,
        });
        at += len;
    }
    (seqs, at)
}

/// One case of [`self_check`]: the worst errors of the device path (kernels on
/// CUDA) against the reference path on random inputs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelCheck {
    pub case: String,
    pub dtype: String,
    /// max |kernel - reference| / (max |reference| + 1e-6), attention output.
    pub attention_rel_err: f32,
    /// Rows written by the slot-write kernel that differ from the reference.
    pub cache_rows_wrong: usize,
    /// Outputs that are not finite (unwritten or broken).
    pub non_finite: usize,
    pub pass: bool,
}

/// Check the device path against the reference path on random inputs:
/// a mixed batch (prefill chunk after history, decodes) for MHA, GQA, a
/// sliding window with soft-capping, and MLA's key-prefix values, in f32,
/// f16 and bf16. `benches/gpu_proof.sh` runs it on a GPU (`switchyard kernel-check`).
pub fn self_check(device: &Device) -> Result<Vec<KernelCheck>> {
    let mut report = Vec::new();
    // (name, query heads, KV heads, head width, values, window, soft-cap)
    type Case = (&'static str, usize, usize, usize, ValueStorage);
    let cases: [(Case, Option<usize>, Option<f32>); 4] = [
        (("mha", 8, 8, 128, ValueStorage::Separate), None, None),
        (("gqa", 32, 8, 128, ValueStorage::Separate), None, None),
        (
            ("window+softcap", 8, 1, 256, ValueStorage::Separate),
            Some(37),
            Some(50.0),
        ),
        (
            ("mla", 16, 1, 576, ValueStorage::KeyPrefix(512)),
            None,
            None,
        ),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    };
    for ((name, heads, kvh, hd, values), window, softcap) in cases {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let bs = 16;
            let layout = KvLayout {
                num_layers: 1,
                num_blocks: 64,
                block_size: bs,
                num_kv_heads: kvh,
                head_dim: hd,
                values,
            };
            let cache = DeviceKvCache::new(layout, dtype, device)?;
            let reference = DeviceKvCache::new(layout, dtype, device)?;
            // Sequence tables use disjoint, shuffled blocks.
            let tables: Vec<Vec<u32>> = (0..4u32)
                .map(|s| (0..12u32).map(|b| (b * 4 + s) * 7 % 48).collect())
                .collect();
            let steps: [[(usize, usize); 4]; 2] = [
                [(0, 150), (0, 40), (0, 97), (0, 1)],
                [(150, 33), (40, 1), (97, 1), (1, 1)],
            ];
            let row = kvh * hd;
            let mut check = KernelCheck {
                case: name.into(),
                dtype: format!("{dtype:?}"),
                attention_rel_err: 0.0,
                cache_rows_wrong: 0,
                non_finite: 0,
                pass: true,
            };
            for step in steps {
                let (seqs, at) = batch_views(&tables, &step);
                let g = StepGeometry::new(&seqs, bs, device)?;
                let k = Tensor::from_vec(rnd(at * row), (at, row), device)?;
                let v = Tensor::from_vec(rnd(at * row), (at, row), device)?;
                let q = Tensor::from_vec(rnd(at * heads * hd), (at, heads * hd), device)?;
                let separate = values == ValueStorage::Separate;
                cache.write(0, &g, &k, separate.then_some(&v))?;
                // The reference cache is written by scatter, whatever the device.
                let rows = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.to_dtype(dtype)?.reshape((at, kvh, hd))?.contiguous()?)
                };
                let vr = if separate { Some(rows(&v)?) } else { None };
                reference.write_reference(0, &g, &rows(&k)?, vr.as_ref())?;
                let diff = (cache.k[0].to_dtype(DType::F32)?
                    - reference.k[0].to_dtype(DType::F32)?)?
                .abs()?
                .max_keepdim(2)?
                .max_keepdim(1)?
                .flatten_all()?
                .to_vec1::<f32>()?;
                check.cache_rows_wrong += diff.iter().filter(|d| **d != 0.0).count();
                let p = AttentionParams {
                    num_heads: heads,
                    scale: 1.0 / (hd as f32).sqrt(),
                    window,
                    softcap,
                };
                let got = cache
                    .attend(0, &g, &q.to_dtype(dtype)?, p)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let want = reference
                    .attend_reference(0, &g, &q.to_dtype(dtype)?, p)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                check.non_finite += got.iter().filter(|x| !x.is_finite()).count();
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) + 1e-6;
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                check.attention_rel_err = check.attention_rel_err.max(err / scale);
            }
            // bf16 keeps 8 bits of mantissa: outputs rounded once differ by ≤ 2^-8 relative.
            let bound = match dtype {
                DType::F32 => 1e-4,
                DType::F16 => 2e-3,
                _ => 1.6e-2,
            };
            check.pass = check.attention_rel_err <= bound
                && check.cache_rows_wrong == 0
                && check.non_finite == 0;
            report.push(check);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::host::KvCache;

    fn rnd(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + salt) * 7919 % 211) as f32 / 105.0) - 1.0)
            .collect()
    }

    /// The reference path equals the CPU paged attention of `kv_cache` for a
    /// mixed batch (a prefill chunk after cached tokens, decodes, GQA, window,
    /// soft-cap, and MLA's key-prefix values), in f32 and within bf16 error in bf16.
    #[test]
    fn reference_matches_cpu_paged_attention() {
        for (values, kvh, window, softcap) in [
            (ValueStorage::Separate, 2, None, None),
            (ValueStorage::Separate, 1, Some(3), Some(5.0)),
            (ValueStorage::KeyPrefix(6), 1, None, None),
        ] {
            let layout = KvLayout {
                num_layers: 1,
                num_blocks: 12,
                block_size: 4,
                num_kv_heads: kvh,
                head_dim: 8,
                values,
            };
            let heads = 4;
            let row = kvh * 8;
            let tables: [Vec<u32>; 3] = [vec![7, 1, 3], vec![0, 9], vec![4, 11, 2]];
            // Step 1 fills history; step 2 is the mixed batch under test.
            let step1 = [(0usize, 5usize), (0, 6), (0, 9)];
            let step2 = [(5usize, 4usize), (6, 1), (9, 1)];
            for dtype in [DType::F32, DType::BF16] {
                let mut cpu = KvCache::new(layout);
                let dev = DeviceKvCache::new(layout, dtype, &Device::Cpu).unwrap();
                for (step, salt) in [(&step1, 0usize), (&step2, 1000)] {
                    let (seqs, at) = batch_views(&tables, step);
                    let k = rnd(at * row, salt + 1);
                    let v = rnd(at * row, salt + 2);
                    let q = rnd(at * heads * 8, salt + 3);
                    let separate = values == ValueStorage::Separate;
                    cpu.write(0, &seqs, &k, &v);
                    let g = StepGeometry::new(&seqs, 4, &Device::Cpu).unwrap();
                    let kt = Tensor::from_vec(k.clone(), (at, row), &Device::Cpu).unwrap();
                    let vt = Tensor::from_vec(v.clone(), (at, row), &Device::Cpu).unwrap();
                    dev.write(0, &g, &kt, separate.then_some(&vt)).unwrap();
                    let p = AttentionParams {
                        num_heads: heads,
                        scale: 0.4,
                        window,
                        softcap,
                    };
                    let want = cpu.attend(0, &seqs, &q, p);
                    let qt = Tensor::from_vec(q, (at, heads * 8), &Device::Cpu).unwrap();
                    let got = dev.attend(0, &g, &qt, p).unwrap();
                    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(got.len(), want.len());
                    let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "{values:?} {dtype:?} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// On the CPU the self-check compares the reference with itself: it must
    /// run and pass (on a GPU it compares the kernels).
    #[test]
    fn self_check_runs() {
        let report = self_check(&Device::Cpu).unwrap();
        assert_eq!(report.len(), 12);
        assert!(report.iter().all(|c| c.pass), "{report:?}");
    }

    #[test]
    fn copy_blocks_copies_every_layer() {
        let layout = KvLayout {
            num_layers: 2,
            num_blocks: 3,
            block_size: 2,
            num_kv_heads: 1,
            head_dim: 2,
            values: ValueStorage::Separate,
        };
        let mut dev = DeviceKvCache::new(layout, DType::F32, &Device::Cpu).unwrap();
        let table = [1u32];
        let seqs = [SeqView {
            token_range: 0..2,
            start_pos: 0,
            block_table: &table,
        }];
        let g = StepGeometry::new(&seqs, 2, &Device::Cpu).unwrap();
        let k = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        for layer in 0..2 {
            dev.write(layer, &g, &k, Some(&k)).unwrap();
        }
        dev.copy_blocks(&[(1, 2)]).unwrap();
        for t in dev.k.iter().chain(dev.v.iter()) {
            let rows = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(&rows[4..8], &[1., 2., 3., 4.]);
        }
    }
}
