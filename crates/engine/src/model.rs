//! Our batched, paged forward pass for Llama- and Gemma-3-architecture models.
//!
//! One call runs a whole scheduler step: the new tokens of every sequence in the
//! batch (prefill chunks and single decode tokens alike) go through the dense
//! layers as one `[tokens, hidden]` matrix; attention is the only per-sequence
//! part and runs over the paged KV cache ([`crate::kv_cache`]). Logits are
//! computed only for the rows that will be sampled.
//!
//! Weights are candle quantized tensors (`QMatMul`) loaded from GGUF; norms,
//! RoPE and attention are ours. The Gemma 3 variant adds per-head Q/K norms,
//! post-attention and post-FFN norms, GELU-tanh, scaled embeddings and
//! alternating sliding-window/global layers with their own RoPE bases.

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{EngineError, Result};
use crate::kv_cache::{AttentionParams, KvCache, SeqView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
    /// Llama plus biases on Q, K and V.
    Qwen2,
    /// Llama plus per-head RMS norms on Q and K.
    Qwen3,
}

impl Arch {
    fn has_qk_norm(self) -> bool {
        matches!(self, Arch::Gemma3 | Arch::Qwen3)
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub context_length: usize,
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers (Gemma 3).
    pub rope_theta_local: f32,
    /// Linear RoPE scaling factor (positions divided by it) on global layers.
    pub rope_linear_factor: f32,
    /// NeoX-style RoPE (rotate halves) instead of interleaved pairs.
    pub rope_neox: bool,
    pub sliding_window: Option<usize>,
    /// Every `swa_pattern`-th layer is global, the others slide (Gemma 3).
    pub swa_pattern: usize,
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| EngineError::Load("GGUF has no general.architecture".into()))?;
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(EngineError::Load(format!(
                    "unsupported GGUF architecture `{other}`"
                )))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<usize> {
            md.get(&key(k))
                .and_then(|v| {
                    v.to_u32()
                        .ok()
                        .map(|x| x as usize)
                        .or_else(|| v.to_u64().ok().map(|x| x as usize))
                })
                .ok_or_else(|| EngineError::Load(format!("GGUF metadata `{}` missing", key(k))))
        };
        let get_f = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
        let hidden_size = get_u("embedding_length")?;
        let num_heads = get_u("attention.head_count")?;
        let num_kv_heads = get_u("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get_u("attention.key_length").unwrap_or(hidden_size / num_heads);
        let vocab_size = match get_u("vocab_size") {
            Ok(v) => v,
            Err(_) => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| EngineError::Load("cannot tell the vocabulary size".into()))?,
        };
        let gemma = arch == Arch::Gemma3;
        let linear = md
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .is_some_and(|t| t == "linear");
        Ok(ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_layers: get_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
            context_length: get_u("context_length").unwrap_or(4096),
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_theta_local: 10_000.0,
            rope_linear_factor: if linear {
                get_f("rope.scaling.factor").unwrap_or(1.0)
            } else {
                1.0
            },
            // llama.cpp permutes Llama's Q/K for interleaved RoPE; the others rotate halves.
            rope_neox: arch != Arch::Llama,
            sliding_window: if gemma {
                get_u("attention.sliding_window").ok()
            } else {
                None
            },
            swa_pattern: get_u("attention.sliding_window_pattern").unwrap_or(6),
            attn_softcap: get_f("attn_logit_softcapping"),
            final_softcap: get_f("final_logit_softcapping"),
            moe: None,
        })
    }

    /// From a Hugging Face `config.json` (Llama, Qwen2, Qwen3 layouts).
    pub fn from_hf(cfg: &serde_json::Value) -> Result<Self> {
        let model_type = cfg["model_type"].as_str().unwrap_or_default();
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" | "qwen3_moe" => Arch::Qwen3,
            other => {
                return Err(EngineError::Load(format!(
                    "unsupported model_type `{other}` in config.json"
                )))
            }
        };
        let get = |k: &str| -> Result<usize> {
            cfg[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| EngineError::Load(format!("config.json: `{k}` missing")))
        };
        let hidden_size = get("hidden_size")?;
        let num_heads = get("num_attention_heads")?;
        Ok(ModelConfig {
            arch,
            vocab_size: get("vocab_size")?,
            hidden_size,
            num_layers: get("num_hidden_layers")?,
            num_heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(num_heads),
            head_dim: get("head_dim").unwrap_or(hidden_size / num_heads),
            rms_eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            context_length: get("max_position_embeddings").unwrap_or(4096),
            rope_theta: cfg["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
            rope_theta_local: 10_000.0,
            rope_linear_factor: 1.0,
            // Hugging Face checkpoints rotate halves.
            rope_neox: true,
            sliding_window: None,
            swa_pattern: 1,
            attn_softcap: None,
            final_softcap: None,
            moe: match get("num_experts") {
                Ok(n) if n > 0 => Some(MoeConfig {
                    num_experts: n,
                    top_k: get("num_experts_per_tok")?,
                    norm_topk_prob: cfg["norm_topk_prob"].as_bool().unwrap_or(false),
                    sparse_step: get("decoder_sparse_step").unwrap_or(1).max(1),
                }),
                _ => None,
            },
        })
    }

    /// Does layer `i` use the sliding window (Gemma 3: all but every 6th)?
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && !(layer + 1).is_multiple_of(self.swa_pattern.max(1))
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    ffn: Ffn,
}

/// A gated MLP: `down(act(gate(x)) * up(x))`.
struct Mlp {
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

enum Ffn {
    Dense(Mlp),
    /// Mixture of experts (Qwen3-MoE): softmax router, top-k experts per token.
    Moe {
        router: QMatMul,
        experts: Vec<Mlp>,
        top_k: usize,
        norm_topk_prob: bool,
    },
}

/// Mixture-of-experts settings from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    /// Layer `i` is sparse when `(i + 1) % sparse_step == 0`.
    pub sparse_step: usize,
}

pub struct Model {
    config: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: QMatMul,
    device: Device,
}

/// Precomputed cos/sin for the batch's positions under one RoPE base.
struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    fn new(positions: &[usize], head_dim: usize, theta: f32, linear_factor: f32) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let p = p as f32 / linear_factor;
            for &f in &inv {
                let (s, c) = (p * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        RopeTable { cos, sin, half }
    }

    /// Rotate every head of every token in `x` (`[tokens, heads * head_dim]`).
    fn apply(&self, x: &mut [f32], heads: usize, neox: bool) {
        let hd = self.half * 2;
        for (t, row) in x.chunks_mut(heads * hd).enumerate() {
            let (cos, sin) = (
                &self.cos[t * self.half..(t + 1) * self.half],
                &self.sin[t * self.half..(t + 1) * self.half],
            );
            for head in row.chunks_mut(hd) {
                for i in 0..self.half {
                    let (a, b) = if neox {
                        (i, i + self.half)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

impl Model {
    /// Load from a GGUF file (quantized weights stay quantized).
    pub fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        Self::from_weights(
            config,
            &mut crate::weights::GgufWeights {
                content,
                reader,
                device,
            },
        )
    }

    /// Build the model from any weight source, by llama.cpp's tensor names.
    pub fn from_weights(
        config: ModelConfig,
        w: &mut dyn crate::weights::WeightSource,
    ) -> Result<Self> {
        let device = w.device().clone();
        let embed = w.tensor("token_embd.weight")?;
        let output_norm = w.tensor("output_norm.weight")?;
        let lm_head = if w.has("output.weight") {
            w.matmul("output.weight")?
        } else {
            w.matmul("token_embd.weight")? // tied embeddings
        };
        let arch = config.arch;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let name = |n: &str| format!("blk.{i}.{n}");
            let opt = |w: &mut dyn crate::weights::WeightSource,
                       n: &str,
                       wanted: bool|
             -> Result<Option<Tensor>> {
                if wanted {
                    Ok(Some(w.tensor(&name(n))?))
                } else {
                    Ok(None)
                }
            };
            let gemma = arch == Arch::Gemma3;
            let qwen2 = arch == Arch::Qwen2;
            layers.push(Layer {
                attn_norm: w.tensor(&name("attn_norm.weight"))?,
                wq: w.matmul(&name("attn_q.weight"))?,
                wk: w.matmul(&name("attn_k.weight"))?,
                wv: w.matmul(&name("attn_v.weight"))?,
                wo: w.matmul(&name("attn_output.weight"))?,
                bq: opt(w, "attn_q.bias", qwen2)?,
                bk: opt(w, "attn_k.bias", qwen2)?,
                bv: opt(w, "attn_v.bias", qwen2)?,
                q_norm: opt(w, "attn_q_norm.weight", arch.has_qk_norm())?,
                k_norm: opt(w, "attn_k_norm.weight", arch.has_qk_norm())?,
                post_attn_norm: opt(w, "post_attention_norm.weight", gemma)?,
                ffn_norm: w.tensor(&name("ffn_norm.weight"))?,
                post_ffn_norm: opt(w, "post_ffw_norm.weight", gemma)?,
                ffn: match &config.moe {
                    Some(moe) if (i + 1) % moe.sparse_step == 0 => Ffn::Moe {
                        router: w.matmul(&name("ffn_gate_inp.weight"))?,
                        experts: (0..moe.num_experts)
                            .map(|e| {
                                Ok(Mlp {
                                    gate: w
                                        .matmul(&name(&format!("expert.{e}.ffn_gate.weight")))?,
                                    up: w.matmul(&name(&format!("expert.{e}.ffn_up.weight")))?,
                                    down: w
                                        .matmul(&name(&format!("expert.{e}.ffn_down.weight")))?,
                                })
                            })
                            .collect::<Result<_>>()?,
                        top_k: moe.top_k,
                        norm_topk_prob: moe.norm_topk_prob,
                    },
                    _ => Ffn::Dense(Mlp {
                        gate: w.matmul(&name("ffn_gate.weight"))?,
                        up: w.matmul(&name("ffn_up.weight"))?,
                        down: w.matmul(&name("ffn_down.weight"))?,
                    }),
                },
            });
        }
        Ok(Model {
            config,
            embed,
            layers,
            output_norm,
            lm_head,
            device,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
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
        let gate = match self.config.arch {
            Arch::Gemma3 => gate.gelu()?, // tanh approximation, as Gemma needs
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => candle_nn::ops::silu(&gate)?,
        };
        Ok(mlp.down.forward(&(gate * mlp.up.forward(h)?)?)?)
    }

    /// Route each token to its top-k experts (softmax over all experts, then
    /// optionally renormalised over the chosen ones) and sum their outputs.
    fn moe(
        &self,
        router: &QMatMul,
        experts: &[Mlp],
        top_k: usize,
        renorm: bool,
        h: &Tensor,
    ) -> Result<Tensor> {
        let probs = candle_nn::ops::softmax_last_dim(&router.forward(h)?)?.to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); experts.len()];
        for (t, p) in probs.iter().enumerate() {
            let mut idx: Vec<usize> = (0..p.len()).collect();
            idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            idx.truncate(top_k);
            let sum: f32 = idx.iter().map(|&e| p[e]).sum();
            for e in idx {
                rows[e].push(t as u32);
                weights[e].push(if renorm { p[e] / sum } else { p[e] });
            }
        }
        let mut out = h.zeros_like()?;
        for (e, expert) in experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), &self.device)?;
            let w = Tensor::new(weights[e].as_slice(), &self.device)?.unsqueeze(1)?;
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
        cache: &mut KvCache,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let n = tokens.len();
        let mut positions = vec![0usize; n];
        for s in seqs {
            for (i, t) in s.token_range.clone().enumerate() {
                positions[t] = s.start_pos + i;
            }
        }
        let rope_global =
            RopeTable::new(&positions, c.head_dim, c.rope_theta, c.rope_linear_factor);
        let rope_local = c
            .sliding_window
            .map(|_| RopeTable::new(&positions, c.head_dim, c.rope_theta_local, 1.0));

        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        if c.arch == Arch::Gemma3 {
            x = (x * (c.hidden_size as f64).sqrt())?;
        }
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("layer", li).entered();
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let bias = |x: Tensor, b: &Option<Tensor>| -> Result<Tensor> {
                Ok(match b {
                    Some(b) => x.broadcast_add(b)?,
                    None => x,
                })
            };
            let mut q = bias(layer.wq.forward(&h)?, &layer.bq)?;
            let mut k = bias(layer.wk.forward(&h)?, &layer.bk)?;
            let v = bias(layer.wv.forward(&h)?, &layer.bv)?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = self.rms_norm(&q.reshape((n * nh, hd))?, qn)?;
                k = self.rms_norm(&k.reshape((n * kvh, hd))?, kn)?;
            }
            let mut q = q.flatten_all()?.to_vec1::<f32>()?;
            let mut k = k.flatten_all()?.to_vec1::<f32>()?;
            let v = v.flatten_all()?.to_vec1::<f32>()?;
            let sliding = c.is_sliding(li);
            let rope = match (&rope_local, sliding) {
                (Some(local), true) => local,
                _ => &rope_global,
            };
            rope.apply(&mut q, nh, c.rope_neox);
            rope.apply(&mut k, kvh, c.rope_neox);
            cache.write(li, seqs, &k, &v);
            let params = AttentionParams {
                num_heads: nh,
                scale: 1.0 / (hd as f32).sqrt(),
                window: if sliding { c.sliding_window } else { None },
                softcap: c.attn_softcap,
            };
            let attn = cache.attend(li, seqs, &q, params);
            let attn = Tensor::from_vec(attn, (n, nh * hd), &self.device)?;
            let mut o = layer.wo.forward(&attn)?;
            if let Some(pn) = &layer.post_attn_norm {
                o = self.rms_norm(&o, pn)?;
            }
            x = (x + o)?;
            let h = self.rms_norm(&x, &layer.ffn_norm)?;
            let mut m = match &layer.ffn {
                Ffn::Dense(mlp) => self.mlp(mlp, &h)?,
                Ffn::Moe {
                    router,
                    experts,
                    top_k,
                    norm_topk_prob,
                } => self.moe(router, experts, *top_k, *norm_topk_prob, &h)?,
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
}
