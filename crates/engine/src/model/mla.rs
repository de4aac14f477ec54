//! DeepSeek's multi-head latent attention, run in its "absorbed" form (the
//! DeepSeek-V2 paper, §2.1; vLLM's MLA backend): the cache holds one latent
//! row `[c_kv, k_pe]` per token, queries are projected into the latent space
//! with `W_UK`, and attention outputs leave it through `W_UV`.

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::layers::{missing_geometry, rms_norm, Step};
use crate::model::KvStore;
use crate::weights::{Linear, WeightSource};

/// DeepSeek's multi-head latent attention, absorbed.
pub(crate) struct LatentAttention {
    q: QueryProjection,
    /// hidden → `[c_kv (kv_lora_rank), k_pe (rope)]`.
    kv_a: Linear,
    kv_a_norm: Tensor,
    /// `[heads, qk_nope, kv_lora_rank]`: takes `q_nope` into the latent space.
    w_uk: Tensor,
    /// `[heads, kv_lora_rank, v_head_dim]`: takes the latent output back out.
    w_uv_t: Tensor,
    wo: Linear,
}

enum QueryProjection {
    Full(Linear),
    /// `q_b(norm(q_a(x)))` (DeepSeek-V2/V3 with `q_lora_rank`).
    LowRank {
        a: Linear,
        norm: Tensor,
        b: Linear,
    },
}

fn no_mla() -> EngineError {
    EngineError::Load("latent attention without an MLA config".into())
}

impl LatentAttention {
    pub fn load(c: &ModelConfig, w: &mut dyn WeightSource, i: usize) -> Result<Self> {
        let mla = c.mla.as_ref().ok_or_else(no_mla)?;
        let name = |n: &str| format!("blk.{i}.{n}");
        let q = match mla.q_lora_rank {
            Some(_) => QueryProjection::LowRank {
                a: w.matmul(&name("attn_q_a.weight"))?,
                norm: w.tensor(&name("attn_q_a_norm.weight"))?,
                b: w.matmul(&name("attn_q_b.weight"))?,
            },
            None => QueryProjection::Full(w.matmul(&name("attn_q.weight"))?),
        };
        let (h, nope, v) = (c.num_heads, mla.qk_nope_head_dim, mla.v_head_dim);
        let (w_uk, w_uv_t) = if w.has(&name("attn_kv_b.weight")) {
            // kv_b: [heads * (nope + v), kv_lora] → W_UK [heads, nope, kv_lora], W_UVᵀ [heads, kv_lora, v].
            let kv_b = w.tensor(&name("attn_kv_b.weight"))?;
            let kv_b = kv_b.reshape((h, nope + v, mla.kv_lora_rank))?;
            (
                kv_b.narrow(1, 0, nope)?,
                kv_b.narrow(1, nope, v)?.transpose(1, 2)?,
            )
        } else {
            // llama.cpp's split: k_b [heads, kv_lora, nope] (W_UKᵀ), v_b [heads, v, kv_lora] (W_UV).
            let k_b = w.tensor(&name("attn_k_b.weight"))?;
            let v_b = w.tensor(&name("attn_v_b.weight"))?;
            (k_b.transpose(1, 2)?, v_b.transpose(1, 2)?)
        };
        Ok(LatentAttention {
            q,
            kv_a: w.matmul(&name("attn_kv_a_mqa.weight"))?,
            kv_a_norm: w.tensor(&name("attn_kv_a_norm.weight"))?,
            w_uk: w_uk.contiguous()?,
            w_uv_t: w_uv_t.contiguous()?,
            wo: w.matmul(&name("attn_output.weight"))?,
        })
    }

    /// Score `q_nope·W_UK·c_kv + q_pe·k_pe` against the cached latent rows,
    /// average `c_kv` by those weights, then apply `W_UV` and `W_O`.
    pub fn forward(
        &self,
        c: &ModelConfig,
        h: &Tensor,
        step: &Step,
        cache: &mut KvStore,
    ) -> Result<Tensor> {
        let dims = c.mla.as_ref().ok_or_else(no_mla)?;
        let device = h.device();
        let n = h.dim(0)?;
        let nh = c.num_heads;
        let (nope, rope_dim, rank) = (
            dims.qk_nope_head_dim,
            dims.qk_rope_head_dim,
            dims.kv_lora_rank,
        );
        let q = match &self.q {
            QueryProjection::Full(wq) => wq.forward(h)?,
            QueryProjection::LowRank { a, norm, b } => {
                b.forward(&rms_norm(&a.forward(h)?, norm, c.rms_eps)?)?
            }
        };
        let q = q.reshape((n, nh, nope + rope_dim))?;
        // [heads, n, nope] × [heads, nope, rank] → [n, heads, rank]
        let q_latent = q
            .narrow(2, 0, nope)?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&self.w_uk)?
            .transpose(0, 1)?;
        let q_pe = q.narrow(2, nope, rope_dim)?;
        let kv = self.kv_a.forward(h)?;
        let c_kv = rms_norm(
            &kv.narrow(1, 0, rank)?.contiguous()?,
            &self.kv_a_norm,
            c.rms_eps,
        )?;
        let k_pe = kv.narrow(1, rank, rope_dim)?;
        let (q_pe, k_pe) = match step.geometry {
            None => {
                let mut q_pe = q_pe.flatten_all()?.to_vec1::<f32>()?;
                let mut k_pe = k_pe.flatten_all()?.to_vec1::<f32>()?;
                step.rope.host.apply(&mut q_pe, nh, rope_dim, c.rope_neox);
                step.rope.host.apply(&mut k_pe, 1, rope_dim, c.rope_neox);
                (
                    Tensor::from_vec(q_pe, (n, nh, rope_dim), device)?,
                    Tensor::from_vec(k_pe, (n, rope_dim), device)?,
                )
            }
            Some(_) => (
                step.rope
                    .apply_tensor(&q_pe, nh, rope_dim, c.rope_neox)?
                    .reshape((n, nh, rope_dim))?,
                step.rope.apply_tensor(&k_pe, 1, rope_dim, c.rope_neox)?,
            ),
        };
        let q_full = Tensor::cat(&[q_latent, q_pe], 2)?.reshape((n, nh * (rank + rope_dim)))?;
        let latent = Tensor::cat(&[c_kv, k_pe], 1)?;
        let out = match (cache, step.geometry) {
            (KvStore::Host(cache), _) => {
                let q_full = q_full.flatten_all()?.to_vec1::<f32>()?;
                let latent = latent.flatten_all()?.to_vec1::<f32>()?;
                cache.write(step.layer, step.seqs, &latent, &[]);
                let out = cache.attend(step.layer, step.seqs, &q_full, step.params);
                Tensor::from_vec(out, (n, nh * rank), device)?
            }
            (KvStore::Device(cache), Some(g)) => {
                cache.write(step.layer, g, &latent, None)?;
                cache.attend(step.layer, g, &q_full, step.params)?
            }
            (KvStore::Device(_), None) => return Err(missing_geometry()),
        };
        // [n, heads * rank] → [heads, n, rank] × [heads, rank, v] → [n, heads * v]
        let out = out
            .reshape((n, nh, rank))?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&self.w_uv_t)?
            .transpose(0, 1)?
            .reshape((n, nh * dims.v_head_dim))?;
        Ok(self.wo.forward(&out)?)
    }
}
