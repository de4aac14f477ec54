//! Our batched, paged forward pass for every supported family (Llama, Qwen2/3
//! and Qwen3-MoE, Gemma 3, DeepSeek-V2/V3).
//!
//! One call runs a whole scheduler step: the new tokens of every sequence in the
//! batch (prefill chunks and single decode tokens alike) go through the dense
//! layers as one `[tokens, hidden]` matrix; attention is the only per-sequence
//! part and runs over the paged KV cache ([`crate::kv::host`]). Logits are
//! computed only for the rows that will be sampled.
//!
//! Weights are [`Linear`] matrices (candle's quantized or dense matmuls, or
//! our CPU Q4_1 kernel); norms, RoPE and attention are ours. Family extras are data in
//! [`ModelConfig`]: Gemma 3's per-head Q/K norms, post-norms, GELU-tanh, scaled
//! embeddings and sliding/global layers; Qwen's biases and QK-norms; experts
//! ([`crate::model::moe`]); and DeepSeek's multi-head latent attention, run in its
//! "absorbed" form (the DeepSeek-V2 paper, §2.1; vLLM's MLA backend): the cache
//! holds one latent row `[c_kv, k_pe]` per token, queries are projected into
//! the latent space with `W_UK`, and attention outputs leave it through `W_UV`.

pub(crate) mod config;
pub(crate) mod cpu_matmul;
pub(crate) mod moe;
pub(crate) mod rope;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::family::Activation;
use crate::kv::device::{DeviceKvCache, StepGeometry};
use crate::kv::host::{AttentionParams, KvCache, KvLayout, SeqView, ValueStorage};
pub use crate::model::config::{Arch, GateKind, MlaConfig, ModelConfig};
use crate::model::rope::{RopeScaling, RopeTable};
use crate::weights::{Linear, WeightSource};

struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    ffn: Ffn,
}

enum Attention {
    /// Multi-head / grouped-query attention with per-head K and V.
    Standard {
        wq: Linear,
        wk: Linear,
        wv: Linear,
        wo: Linear,
        bq: Option<Tensor>,
        bk: Option<Tensor>,
        bv: Option<Tensor>,
        q_norm: Option<Tensor>,
        k_norm: Option<Tensor>,
    },
    Latent(Box<LatentAttention>),
}

/// DeepSeek's multi-head latent attention, absorbed.
struct LatentAttention {
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

/// A gated MLP: `down(act(gate(x)) * up(x))`.
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

enum Ffn {
    Dense(Mlp),
    /// Mixture of experts: a router, routed experts, optional shared experts.
    Moe {
        router: Linear,
        /// DeepSeek-V3's `e_score_correction_bias` (selection only).
        selection_bias: Option<Vec<f32>>,
        experts: Vec<Mlp>,
        shared: Option<Mlp>,
    },
}

/// What one layer's attention needs to know about the step.
struct Step<'a> {
    layer: usize,
    seqs: &'a [SeqView<'a>],
    geometry: Option<&'a StepGeometry>,
    rope: &'a StepRope,
    params: AttentionParams,
}

fn missing_geometry() -> EngineError {
    EngineError::Load("a device KV pool needs the step geometry".into())
}

/// RoPE frequencies of one kind of layer and their cos/sin multiplier.
struct RopeFreqs {
    inv_freq: Vec<f32>,
    scale: f32,
}

/// Where a model's KV pool lives and how attention reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvBackend {
    /// Host buffers and the rayon attention on the CPU; device tensors and
    /// our kernels on a GPU.
    #[default]
    Auto,
    /// Device tensors on any device, attention by candle's ops: the portable
    /// reference path (on a GPU: no custom kernels).
    Reference,
}

/// A model's KV pool: host memory with the CPU attention of [`crate::kv::host`],
/// or device tensors with [`crate::kv::device`] (CUDA kernels or the
/// portable reference path).
pub enum KvStore {
    Host(KvCache),
    Device(DeviceKvCache),
}

impl KvStore {
    /// Copy whole blocks (copy-on-write for forked sequences).
    pub fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        match self {
            KvStore::Host(c) => c.copy_blocks(copies),
            KvStore::Device(c) => c.copy_blocks(copies)?,
        }
        Ok(())
    }
}

/// This step's RoPE: the host table, and its cos/sin on the device when the
/// KV pool lives there (`[tokens, 1, rope_dim / 2]`, the activations' dtype).
struct StepRope {
    host: RopeTable,
    device: Option<(Tensor, Tensor)>,
}

impl StepRope {
    /// Rotate `x` (`[tokens, heads * dim]` or `[tokens, heads, dim]`) on the device.
    fn apply_tensor(&self, x: &Tensor, heads: usize, dim: usize, neox: bool) -> Result<Tensor> {
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

pub struct Model {
    config: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: Linear,
    rope_global: RopeFreqs,
    rope_local: Option<RopeFreqs>,
    device: Device,
}

impl Model {
    /// Load from a GGUF file (quantized weights stay quantized).
    pub fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        let total = content
            .tensor_infos
            .values()
            .map(crate::weights::gguf_tensor_bytes)
            .sum();
        Self::from_weights(
            config,
            &mut crate::weights::GgufWeights {
                content,
                reader,
                device,
                progress: crate::weights::LoadProgress::new(total),
            },
        )
    }

    /// Build the model from any weight source, by llama.cpp's tensor names.
    pub fn from_weights(config: ModelConfig, w: &mut dyn WeightSource) -> Result<Self> {
        let device = w.device().clone();
        let embed = w.tensor("token_embd.weight")?;
        let output_norm = w.tensor("output_norm.weight")?;
        let lm_head = if w.has("output.weight") {
            w.matmul("output.weight")?
        } else {
            w.matmul("token_embd.weight")? // tied embeddings
        };
        let (mut inv_freq, scale) = config
            .rope_scaling
            .inv_freq(config.rope_dim, config.rope_theta);
        // llama.cpp stores Llama 3's frequency divisors as a tensor.
        if w.has("rope_freqs.weight") {
            let factors = w
                .tensor("rope_freqs.weight")?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            if factors.len() != inv_freq.len() {
                return Err(EngineError::Load(format!(
                    "rope_freqs has {} entries, expected {}",
                    factors.len(),
                    inv_freq.len()
                )));
            }
            inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        let rope_global = RopeFreqs { inv_freq, scale };
        let rope_local = config.sliding_window.map(|_| {
            let (inv_freq, scale) =
                RopeScaling::None.inv_freq(config.rope_dim, config.rope_theta_local);
            RopeFreqs { inv_freq, scale }
        });
        let layers = (0..config.num_layers)
            .map(|i| Self::load_layer(&config, w, i))
            .collect::<Result<_>>()?;
        Ok(Model {
            config,
            embed,
            layers,
            output_norm,
            lm_head,
            rope_global,
            rope_local,
            device,
        })
    }

    fn load_layer(c: &ModelConfig, w: &mut dyn WeightSource, i: usize) -> Result<Layer> {
        let name = |n: &str| format!("blk.{i}.{n}");
        let opt = |w: &mut dyn WeightSource, n: &str, wanted: bool| -> Result<Option<Tensor>> {
            if wanted {
                Ok(Some(w.tensor(&name(n))?))
            } else {
                Ok(None)
            }
        };
        let family = c.arch.family();
        let attn = match &c.mla {
            Some(mla) => Attention::Latent(Box::new(Self::load_latent(c, mla, w, i)?)),
            None => Attention::Standard {
                wq: w.matmul(&name("attn_q.weight"))?,
                wk: w.matmul(&name("attn_k.weight"))?,
                wv: w.matmul(&name("attn_v.weight"))?,
                wo: w.matmul(&name("attn_output.weight"))?,
                bq: opt(w, "attn_q.bias", family.qkv_bias)?,
                bk: opt(w, "attn_k.bias", family.qkv_bias)?,
                bv: opt(w, "attn_v.bias", family.qkv_bias)?,
                q_norm: opt(w, "attn_q_norm.weight", family.qk_norm)?,
                k_norm: opt(w, "attn_k_norm.weight", family.qk_norm)?,
            },
        };
        let mlp = |w: &mut dyn WeightSource, suffix: &str| -> Result<Mlp> {
            Ok(Mlp {
                gate: w.matmul(&name(&format!("ffn_gate{suffix}.weight")))?,
                up: w.matmul(&name(&format!("ffn_up{suffix}.weight")))?,
                down: w.matmul(&name(&format!("ffn_down{suffix}.weight")))?,
            })
        };
        let ffn = match &c.moe {
            Some(moe) if moe.is_sparse(i) => Ffn::Moe {
                router: w.matmul(&name("ffn_gate_inp.weight"))?,
                selection_bias: if moe.gate == GateKind::SigmoidNoAux
                    && w.has(&name("exp_probs_b.bias"))
                {
                    Some(
                        w.tensor(&name("exp_probs_b.bias"))?
                            .to_dtype(DType::F32)?
                            .to_vec1::<f32>()?,
                    )
                } else {
                    None
                },
                experts: Self::load_experts(w, i, moe.num_experts)?,
                shared: if moe.num_shared > 0 {
                    Some(mlp(w, "_shexp")?)
                } else {
                    None
                },
            },
            _ => Ffn::Dense(mlp(w, "")?),
        };
        Ok(Layer {
            attn_norm: w.tensor(&name("attn_norm.weight"))?,
            attn,
            post_attn_norm: opt(w, "post_attention_norm.weight", family.post_norms)?,
            ffn_norm: w.tensor(&name("ffn_norm.weight"))?,
            post_ffn_norm: opt(w, "post_ffw_norm.weight", family.post_norms)?,
            ffn,
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

    fn load_latent(
        c: &ModelConfig,
        mla: &MlaConfig,
        w: &mut dyn WeightSource,
        i: usize,
    ) -> Result<LatentAttention> {
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

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The paged cache this model needs for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_layout(&self, num_blocks: usize, block_size: usize) -> KvLayout {
        let c = &self.config;
        KvLayout {
            num_layers: c.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            values: match &c.mla {
                Some(m) => ValueStorage::KeyPrefix(m.kv_lora_rank),
                None => ValueStorage::Separate,
            },
        }
    }

    /// A KV pool for this model on its device: host memory on the CPU, device
    /// tensors elsewhere; [`KvBackend::Reference`] puts it in tensors read by
    /// candle's ops on any device.
    pub fn new_kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
        backend: KvBackend,
    ) -> Result<KvStore> {
        Ok(match (&self.device, backend) {
            (Device::Cpu, KvBackend::Auto) => {
                KvStore::Host(KvCache::new(self.kv_layout(num_blocks, block_size)))
            }
            (Device::Cpu, KvBackend::Reference) => {
                self.new_device_kv_store(num_blocks, block_size, DType::F32)?
            }
            // The pool keeps the activations' precision: bf16 for safetensors
            // weights on a GPU, f32 for GGUF (whose matmuls run in f32).
            (_, backend) => {
                match self.new_device_kv_store(num_blocks, block_size, self.embed.dtype())? {
                    KvStore::Device(c) if backend == KvBackend::Reference => {
                        KvStore::Device(c.with_reference_path())
                    }
                    store => store,
                }
            }
        })
    }

    /// A KV pool of device tensors in `dtype` (on the CPU: the reference path).
    pub fn new_device_kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<KvStore> {
        let layout = self.kv_layout(num_blocks, block_size);
        Ok(KvStore::Device(DeviceKvCache::new(
            layout,
            dtype,
            &self.device,
        )?))
    }

    /// Serve a shorter context window than the model supports.
    pub fn cap_context_length(&mut self, cap: usize) {
        self.config.context_length = self.config.context_length.min(cap.max(1));
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, w, self.config.rms_eps as f32)?)
    }

    fn mlp(&self, mlp: &Mlp, h: &Tensor) -> Result<Tensor> {
        let gate = mlp.gate.forward(h)?;
        let gate = match self.config.arch.family().activation {
            Activation::GeluTanh => gate.gelu()?, // candle's gelu is the tanh form
            Activation::Silu => candle_nn::ops::silu(&gate)?,
        };
        Ok(mlp.down.forward(&(gate * mlp.up.forward(h)?)?)?)
    }

    /// Route each token to its experts ([`crate::model::moe::route_token`]), run each
    /// expert once on the tokens that chose it, and sum the weighted outputs
    /// (plus the shared experts, which see every token).
    fn moe(
        &self,
        router: &Linear,
        selection_bias: Option<&[f32]>,
        experts: &[Mlp],
        shared: Option<&Mlp>,
        h: &Tensor,
    ) -> Result<Tensor> {
        let cfg = self
            .config
            .moe
            .as_ref()
            .ok_or_else(|| EngineError::Load("MoE layer without an MoE config".into()))?;
        let logits = router.forward(h)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); experts.len()];
        for (t, l) in logits.iter().enumerate() {
            for (e, wgt) in crate::model::moe::route_token(l, cfg, selection_bias) {
                rows[e].push(t as u32);
                weights[e].push(wgt);
            }
        }
        let mut out = match shared {
            Some(mlp) => self.mlp(mlp, h)?,
            None => h.zeros_like()?,
        };
        for (e, expert) in experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), &self.device)?;
            let w = Tensor::new(weights[e].as_slice(), &self.device)?
                .to_dtype(h.dtype())?
                .unsqueeze(1)?;
            let y = self
                .mlp(expert, &h.index_select(&idx, 0)?)?
                .broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out)
    }

    /// Run one step. `tokens` holds every sequence's new tokens back to back and
    /// `seqs` says whose they are; returns logits (`vocab` floats) for each batch
    /// row listed in `logits_rows`, in that order.
    pub fn forward(
        &self,
        tokens: &[u32],
        seqs: &[SeqView],
        logits_rows: &[usize],
        cache: &mut KvStore,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let mut positions = vec![0usize; tokens.len()];
        for s in seqs {
            for (i, t) in s.token_range.clone().enumerate() {
                positions[t] = s.start_pos + i;
            }
        }
        let geometry = match cache {
            KvStore::Device(d) => Some(StepGeometry::new(
                seqs,
                d.layout().block_size,
                &self.device,
            )?),
            KvStore::Host(_) => None,
        };
        let act_dtype = self.embed.dtype();
        let table = |f: &RopeFreqs| -> Result<StepRope> {
            let host = RopeTable::new(&positions, &f.inv_freq, f.scale);
            let device = match geometry {
                Some(_) => Some(host.tensors(&self.device, act_dtype)?),
                None => None,
            };
            Ok(StepRope { host, device })
        };
        let rope_global = table(&self.rope_global)?;
        let rope_local = self.rope_local.as_ref().map(table).transpose()?;

        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        if c.arch.family().scaled_embeddings {
            x = (x * (c.hidden_size as f64).sqrt())?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("layer", li).entered();
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let sliding = c.is_sliding(li);
            let rope = match (&rope_local, sliding) {
                (Some(local), true) => local,
                _ => &rope_global,
            };
            let params = AttentionParams {
                num_heads: c.num_heads,
                scale: c.attn_scale,
                window: if sliding { c.sliding_window } else { None },
                softcap: c.attn_softcap,
            };
            let step = Step {
                layer: li,
                seqs,
                geometry: geometry.as_ref(),
                rope,
                params,
            };
            let mut o = match &layer.attn {
                Attention::Standard { .. } => {
                    self.standard_attention(&layer.attn, &h, &step, cache)?
                }
                Attention::Latent(mla) => self.latent_attention(mla, &h, &step, cache)?,
            };
            if let Some(pn) = &layer.post_attn_norm {
                o = self.rms_norm(&o, pn)?;
            }
            x = (x + o)?;
            let h = self.rms_norm(&x, &layer.ffn_norm)?;
            let mut m = match &layer.ffn {
                Ffn::Dense(mlp) => self.mlp(mlp, &h)?,
                Ffn::Moe {
                    router,
                    selection_bias,
                    experts,
                    shared,
                } => self.moe(
                    router,
                    selection_bias.as_deref(),
                    experts,
                    shared.as_ref(),
                    &h,
                )?,
            };
            if let Some(pn) = &layer.post_ffn_norm {
                m = self.rms_norm(&m, pn)?;
            }
            x = (x + m)?;
        }
        if logits_rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<u32> = logits_rows.iter().map(|&r| r as u32).collect();
        let x = x.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let x = self.rms_norm(&x, &self.output_norm)?;
        let mut logits = self.lm_head.forward(&x)?;
        if let Some(cap) = c.final_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    fn standard_attention(
        &self,
        attn: &Attention,
        h: &Tensor,
        step: &Step,
        cache: &mut KvStore,
    ) -> Result<Tensor> {
        let Attention::Standard {
            wq,
            wk,
            wv,
            wo,
            bq,
            bk,
            bv,
            q_norm,
            k_norm,
        } = attn
        else {
            return Err(EngineError::Load("not a standard attention layer".into()));
        };
        let c = &self.config;
        let n = h.dim(0)?;
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let bias = |x: Tensor, b: &Option<Tensor>| -> Result<Tensor> {
            Ok(match b {
                Some(b) => x.broadcast_add(b)?,
                None => x,
            })
        };
        let mut q = bias(wq.forward(h)?, bq)?;
        let mut k = bias(wk.forward(h)?, bk)?;
        let v = bias(wv.forward(h)?, bv)?;
        if let (Some(qn), Some(kn)) = (q_norm, k_norm) {
            q = self.rms_norm(&q.reshape((n * nh, hd))?, qn)?;
            k = self.rms_norm(&k.reshape((n * kvh, hd))?, kn)?;
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
                Tensor::from_vec(attn, (n, nh * hd), &self.device)?
            }
            (KvStore::Device(cache), Some(g)) => {
                let q = step.rope.apply_tensor(&q, nh, hd, c.rope_neox)?;
                let k = step.rope.apply_tensor(&k, kvh, hd, c.rope_neox)?;
                cache.write(step.layer, g, &k, Some(&v))?;
                cache.attend(step.layer, g, &q, step.params)?
            }
            (KvStore::Device(_), None) => return Err(missing_geometry()),
        };
        Ok(wo.forward(&attn)?)
    }

    /// Absorbed MLA: score `q_nope·W_UK·c_kv + q_pe·k_pe` against the cached
    /// latent rows, average `c_kv` by those weights, then apply `W_UV` and `W_O`.
    fn latent_attention(
        &self,
        mla: &LatentAttention,
        h: &Tensor,
        step: &Step,
        cache: &mut KvStore,
    ) -> Result<Tensor> {
        let c = &self.config;
        let dims = c
            .mla
            .as_ref()
            .ok_or_else(|| EngineError::Load("latent attention without an MLA config".into()))?;
        let n = h.dim(0)?;
        let nh = c.num_heads;
        let (nope, rope_dim, rank) = (
            dims.qk_nope_head_dim,
            dims.qk_rope_head_dim,
            dims.kv_lora_rank,
        );
        let q = match &mla.q {
            QueryProjection::Full(wq) => wq.forward(h)?,
            QueryProjection::LowRank { a, norm, b } => {
                b.forward(&self.rms_norm(&a.forward(h)?, norm)?)?
            }
        };
        let q = q.reshape((n, nh, nope + rope_dim))?;
        // [heads, n, nope] × [heads, nope, rank] → [n, heads, rank]
        let q_latent = q
            .narrow(2, 0, nope)?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&mla.w_uk)?
            .transpose(0, 1)?;
        let q_pe = q.narrow(2, nope, rope_dim)?;
        let kv = mla.kv_a.forward(h)?;
        let c_kv = self.rms_norm(&kv.narrow(1, 0, rank)?.contiguous()?, &mla.kv_a_norm)?;
        let k_pe = kv.narrow(1, rank, rope_dim)?;
        let (q_pe, k_pe) = match step.geometry {
            None => {
                let mut q_pe = q_pe.flatten_all()?.to_vec1::<f32>()?;
                let mut k_pe = k_pe.flatten_all()?.to_vec1::<f32>()?;
                step.rope.host.apply(&mut q_pe, nh, rope_dim, c.rope_neox);
                step.rope.host.apply(&mut k_pe, 1, rope_dim, c.rope_neox);
                (
                    Tensor::from_vec(q_pe, (n, nh, rope_dim), &self.device)?,
                    Tensor::from_vec(k_pe, (n, rope_dim), &self.device)?,
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
                Tensor::from_vec(out, (n, nh * rank), &self.device)?
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
            .matmul(&mla.w_uv_t)?
            .transpose(0, 1)?
            .reshape((n, nh * dims.v_head_dim))?;
        Ok(mla.wo.forward(&out)?)
    }
}
