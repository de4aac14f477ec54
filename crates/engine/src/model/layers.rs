//! The decoder's building blocks, each loading its own weights (by llama.cpp's
//! tensor names) and running its own `forward` (candle-transformers' and
//! mistral.rs's shape). The graph is data: a layer's optional parts (biases,
//! Q/K norms, post-norms, experts, latent attention) are present or absent
//! as the family's table ([`crate::family`]) and the config say, and one
//! [`Layer::forward`] runs every family.

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::family::Activation;
use crate::kv::device::StepGeometry;
use crate::kv::host::{AttentionParams, SeqView};
use crate::model::config::{GateKind, ModelConfig, MoeConfig};
use crate::model::mla::LatentAttention;
use crate::model::rope::RopeTable;
use crate::model::KvStore;
use crate::weights::{Linear, WeightSource};

/// What one layer's attention needs to know about the step.
pub(crate) struct Step<'a> {
    pub layer: usize,
    pub seqs: &'a [SeqView<'a>],
    pub geometry: Option<&'a StepGeometry>,
    pub rope: &'a StepRope,
    pub params: AttentionParams,
}

pub(crate) fn missing_geometry() -> EngineError {
    EngineError::Load("a device KV pool needs the step geometry".into())
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?)
}

/// This step's RoPE: the host table, and its cos/sin on the device when the
/// KV pool lives there (`[tokens, 1, rope_dim / 2]`, the activations' dtype).
pub(crate) struct StepRope {
    pub host: RopeTable,
    pub device: Option<(Tensor, Tensor)>,
}

impl StepRope {
    /// Rotate `x` (`[tokens, heads * dim]` or `[tokens, heads, dim]`) on the device.
    pub fn apply_tensor(&self, x: &Tensor, heads: usize, dim: usize, neox: bool) -> Result<Tensor> {
        let Some((cos, sin)) = &self.device else {
            return Err(EngineError::Load("device RoPE tables missing".into()));
        };
        let n = x.elem_count() / (heads * dim);
        let x4 = x.contiguous()?.reshape((n, heads, 1, dim))?;
        let y = if neox {
            candle_nn::rotary_emb::rope(&x4, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&x4, cos, sin)?
        };
        Ok(y.reshape((n, heads * dim))?)
    }
}

/// One decoder layer: pre-norm attention and MLP, each with an optional
/// post-norm (Gemma 3), each added back to the residual stream.
pub(crate) struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    ffn: Ffn,
}

impl Layer {
    pub fn load(c: &ModelConfig, w: &mut dyn WeightSource, i: usize) -> Result<Self> {
        let family = c.arch.family();
        let name = |n: &str| format!("blk.{i}.{n}");
        let attn = match &c.mla {
            Some(_) => Attention::Latent(Box::new(LatentAttention::load(c, w, i)?)),
            None => Attention::Standard(StandardAttention::load(c, w, i)?),
        };
        let ffn = match &c.moe {
            Some(moe) if moe.is_sparse(i) => Ffn::Moe(Moe::load(moe, w, i)?),
            _ => Ffn::Dense(Mlp::load(w, i, "")?),
        };
        Ok(Layer {
            attn_norm: w.tensor(&name("attn_norm.weight"))?,
            attn,
            post_attn_norm: optional(w, &name("post_attention_norm.weight"), family.post_norms)?,
            ffn_norm: w.tensor(&name("ffn_norm.weight"))?,
            post_ffn_norm: optional(w, &name("post_ffw_norm.weight"), family.post_norms)?,
            ffn,
        })
    }

    pub fn forward(
        &self,
        x: Tensor,
        c: &ModelConfig,
        step: &Step,
        cache: &mut KvStore,
    ) -> Result<Tensor> {
        let h = rms_norm(&x, &self.attn_norm, c.rms_eps)?;
        let mut o = match &self.attn {
            Attention::Standard(a) => a.forward(c, &h, step, cache)?,
            Attention::Latent(a) => a.forward(c, &h, step, cache)?,
        };
        if let Some(pn) = &self.post_attn_norm {
            o = rms_norm(&o, pn, c.rms_eps)?;
        }
        let x = (x + o)?;
        let h = rms_norm(&x, &self.ffn_norm, c.rms_eps)?;
        let mut m = match &self.ffn {
            Ffn::Dense(mlp) => mlp.forward(&h, c.arch.family().activation)?,
            Ffn::Moe(moe) => moe.forward(&h, c)?,
        };
        if let Some(pn) = &self.post_ffn_norm {
            m = rms_norm(&m, pn, c.rms_eps)?;
        }
        Ok((x + m)?)
    }
}

/// A tensor the family has (loaded), or does not (`None`).
fn optional(w: &mut dyn WeightSource, name: &str, wanted: bool) -> Result<Option<Tensor>> {
    if wanted {
        Ok(Some(w.tensor(name)?))
    } else {
        Ok(None)
    }
}

enum Attention {
    Standard(StandardAttention),
    Latent(Box<LatentAttention>),
}

/// Multi-head / grouped-query attention with per-head K and V, optional
/// Q/K/V biases (Qwen2) and per-head Q/K RMS norms (Qwen3, Gemma 3).
struct StandardAttention {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

impl StandardAttention {
    fn load(c: &ModelConfig, w: &mut dyn WeightSource, i: usize) -> Result<Self> {
        let family = c.arch.family();
        let name = |n: &str| format!("blk.{i}.{n}");
        Ok(StandardAttention {
            wq: w.matmul(&name("attn_q.weight"))?,
            wk: w.matmul(&name("attn_k.weight"))?,
            wv: w.matmul(&name("attn_v.weight"))?,
            wo: w.matmul(&name("attn_output.weight"))?,
            bq: optional(w, &name("attn_q.bias"), family.qkv_bias)?,
            bk: optional(w, &name("attn_k.bias"), family.qkv_bias)?,
            bv: optional(w, &name("attn_v.bias"), family.qkv_bias)?,
            q_norm: optional(w, &name("attn_q_norm.weight"), family.qk_norm)?,
            k_norm: optional(w, &name("attn_k_norm.weight"), family.qk_norm)?,
        })
    }

    fn forward(
        &self,
        c: &ModelConfig,
        h: &Tensor,
        step: &Step,
        cache: &mut KvStore,
    ) -> Result<Tensor> {
        let n = h.dim(0)?;
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let bias = |x: Tensor, b: &Option<Tensor>| -> Result<Tensor> {
            Ok(match b {
                Some(b) => x.broadcast_add(b)?,
                None => x,
            })
        };
        let mut q = bias(self.wq.forward(h)?, &self.bq)?;
        let mut k = bias(self.wk.forward(h)?, &self.bk)?;
        let v = bias(self.wv.forward(h)?, &self.bv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q.reshape((n * nh, hd))?, qn, c.rms_eps)?;
            k = rms_norm(&k.reshape((n * kvh, hd))?, kn, c.rms_eps)?;
        }
        let attn = match (cache, step.geometry) {
            (KvStore::Host(cache), _) => {
                let mut q = q.flatten_all()?.to_vec1::<f32>()?;
                let mut k = k.flatten_all()?.to_vec1::<f32>()?;
                let v = v.flatten_all()?.to_vec1::<f32>()?;
                step.rope.host.apply(&mut q, nh, hd, c.rope_neox);
                step.rope.host.apply(&mut k, kvh, hd, c.rope_neox);
                cache.write(step.layer, step.seqs, &k, &v);
                let attn = cache.attend(step.layer, step.seqs, &q, step.params);
                Tensor::from_vec(attn, (n, nh * hd), h.device())?
            }
            (KvStore::Device(cache), Some(g)) => {
                let q = step.rope.apply_tensor(&q, nh, hd, c.rope_neox)?;
                let k = step.rope.apply_tensor(&k, kvh, hd, c.rope_neox)?;
                cache.write(step.layer, g, &k, Some(&v))?;
                cache.attend(step.layer, g, &q, step.params)?
            }
            (KvStore::Device(_), None) => return Err(missing_geometry()),
        };
        Ok(self.wo.forward(&attn)?)
    }
}

/// A gated MLP: `down(act(gate(x)) * up(x))`.
pub(crate) struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// Layer `i`'s MLP; `suffix` picks the shared experts' (`_shexp`).
    fn load(w: &mut dyn WeightSource, i: usize, suffix: &str) -> Result<Self> {
        let name = |part: &str| format!("blk.{i}.{part}{suffix}.weight");
        Ok(Mlp {
            gate: w.matmul(&name("ffn_gate"))?,
            up: w.matmul(&name("ffn_up"))?,
            down: w.matmul(&name("ffn_down"))?,
        })
    }

    fn forward(&self, h: &Tensor, activation: Activation) -> Result<Tensor> {
        if let (Linear::Cpu(gate), Linear::Cpu(up), Linear::Cpu(down)) =
            (&self.gate, &self.up, &self.down)
        {
            // Our kernels: no tensor round trips, one fused activation pass.
            let mut dims = h.dims().to_vec();
            let cols = dims.pop().unwrap_or(0);
            if cols == gate.cols()
                && cols == up.cols()
                && gate.rows() == up.rows()
                && down.cols() == gate.rows()
            {
                let tokens = h.elem_count() / cols.max(1);
                let xs = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut act = gate.matmul(&xs, tokens);
                let up = up.matmul(&xs, tokens);
                crate::model::activation::gated_in_place(&mut act, &up, gate.rows(), activation);
                dims.push(down.rows());
                return Ok(Tensor::from_vec(
                    down.matmul(&act, tokens),
                    dims,
                    h.device(),
                )?);
            }
        }
        let gate = self.gate.forward(h)?;
        let gate = match activation {
            Activation::GeluTanh => gate.gelu()?, // candle's gelu is the tanh form
            Activation::Silu => candle_nn::ops::silu(&gate)?,
        };
        Ok(self.down.forward(&(gate * self.up.forward(h)?)?)?)
    }
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// Mixture of experts: a router, routed experts, optional shared experts.
struct Moe {
    router: Linear,
    /// DeepSeek-V3's `e_score_correction_bias` (selection only).
    selection_bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
}

impl Moe {
    fn load(cfg: &MoeConfig, w: &mut dyn WeightSource, i: usize) -> Result<Self> {
        let name = |n: &str| format!("blk.{i}.{n}");
        let bias_name = name("exp_probs_b.bias");
        Ok(Moe {
            router: w.matmul(&name("ffn_gate_inp.weight"))?,
            selection_bias: if cfg.gate == GateKind::SigmoidNoAux && w.has(&bias_name) {
                Some(
                    w.tensor(&bias_name)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?,
                )
            } else {
                None
            },
            experts: Self::load_experts(w, i, cfg.num_experts)?,
            shared: if cfg.num_shared > 0 {
                Some(Mlp::load(w, i, "_shexp")?)
            } else {
                None
            },
        })
    }

    /// Routed experts: one tensor per expert (safetensors), or llama.cpp's
    /// stacked `ffn_{gate,up,down}_exps` split back into experts (GGUF).
    fn load_experts(w: &mut dyn WeightSource, i: usize, n: usize) -> Result<Vec<Mlp>> {
        let stacked = format!("blk.{i}.ffn_gate_exps.weight");
        if w.has(&stacked) {
            let gate = w.stacked_matmuls(&stacked, n)?;
            let up = w.stacked_matmuls(&format!("blk.{i}.ffn_up_exps.weight"), n)?;
            let down = w.stacked_matmuls(&format!("blk.{i}.ffn_down_exps.weight"), n)?;
            return Ok(gate
                .into_iter()
                .zip(up)
                .zip(down)
                .map(|((gate, up), down)| Mlp { gate, up, down })
                .collect());
        }
        (0..n)
            .map(|e| {
                let name = |part: &str| format!("blk.{i}.expert.{e}.{part}.weight");
                Ok(Mlp {
                    gate: w.matmul(&name("ffn_gate"))?,
                    up: w.matmul(&name("ffn_up"))?,
                    down: w.matmul(&name("ffn_down"))?,
                })
            })
            .collect()
    }

    /// Route each token to its experts ([`crate::model::moe::route_token`]), run each
    /// expert once on the tokens that chose it, and sum the weighted outputs
    /// (plus the shared experts, which see every token).
    fn forward(&self, h: &Tensor, c: &ModelConfig) -> Result<Tensor> {
        let cfg = c
            .moe
            .as_ref()
            .ok_or_else(|| EngineError::Load("MoE layer without an MoE config".into()))?;
        let activation = c.arch.family().activation;
        let logits = self
            .router
            .forward(h)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (t, l) in logits.iter().enumerate() {
            for (e, wgt) in crate::model::moe::route_token(l, cfg, self.selection_bias.as_deref()) {
                rows[e].push(t as u32);
                weights[e].push(wgt);
            }
        }
        let mut out = match &self.shared {
            Some(mlp) => mlp.forward(h, activation)?,
            None => h.zeros_like()?,
        };
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), h.device())?;
            let w = Tensor::new(weights[e].as_slice(), h.device())?
                .to_dtype(h.dtype())?
                .unsqueeze(1)?;
            let y = expert
                .forward(&h.index_select(&idx, 0)?, activation)?
                .broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out)
    }
}
