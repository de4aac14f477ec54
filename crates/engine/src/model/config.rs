//! What a checkpoint says about its architecture, read from GGUF metadata or a
//! Hugging Face `config.json` into one [`ModelConfig`] the forward pass uses.
//! Family differences are data here (flags, optional sub-configs), not code
//! paths: Llama, Qwen2/3 (+MoE), Gemma 3 and DeepSeek-V2/V3 share one model.

use candle_core::quantized::gguf_file;

use crate::error::{EngineError, Result};
pub use crate::family::Arch;
use crate::model::rope::RopeScaling;
use crate::weights::gguf::GgufMetadata;

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// KV heads as stored in the cache (1 for MLA's latent row).
    pub num_kv_heads: usize,
    /// Width of one cached key head (`kv_lora_rank + qk_rope_head_dim` for MLA).
    pub head_dim: usize,
    /// Width of the rotated part of each head (all of it, except for MLA).
    pub rope_dim: usize,
    pub rms_eps: f64,
    pub context_length: usize,
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers (Gemma 3).
    pub rope_theta_local: f32,
    /// Context-extension scaling of the global layers' RoPE.
    pub rope_scaling: RopeScaling,
    /// NeoX-style RoPE (rotate halves) instead of interleaved pairs.
    pub rope_neox: bool,
    /// Attention softmax scale (1/sqrt(head_dim) unless the config says otherwise).
    pub attn_scale: f32,
    pub sliding_window: Option<usize>,
    /// Every `swa_pattern`-th layer is global, the others slide (Gemma 3).
    pub swa_pattern: usize,
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    pub moe: Option<MoeConfig>,
    pub mla: Option<MlaConfig>,
}

/// Mixture-of-experts settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    /// Layers before this one are dense (DeepSeek's `first_k_dense_replace`).
    pub first_dense: usize,
    /// Layer `i` (past `first_dense`) is sparse when `(i + sparse_phase) % sparse_step == 0`.
    pub sparse_step: usize,
    pub sparse_phase: usize,
    /// Always-on shared experts, fused as one MLP `num_shared * expert_width` wide.
    pub num_shared: usize,
    pub gate: GateKind,
    pub routed_scaling: f32,
    /// Expert groups and how many of them a token may use (group-limited routing).
    pub num_groups: usize,
    pub topk_groups: usize,
}

/// How router logits become expert weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// Softmax over experts, greedy top-k (Qwen3-MoE, DeepSeek-V2 `greedy`);
    /// the scaling factor applies only when weights are not renormalised.
    Softmax,
    /// DeepSeek-V2 `group_limited_greedy`: softmax, best experts within the
    /// `topk_groups` groups whose best expert scores highest.
    SoftmaxGroupLimited,
    /// DeepSeek-V3 `noaux_tc`: sigmoid scores, a per-expert correction bias for
    /// selection only, groups ranked by their top-2 sum, weights scaled always.
    SigmoidNoAux,
}

/// Multi-head latent attention dimensions (DeepSeek-V2/V3).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

impl MoeConfig {
    /// Qwen-MoE routing: softmax over experts, top-k, no shared experts;
    /// layer `i` is sparse when `(i + 1) % sparse_step == 0`.
    pub fn qwen(
        num_experts: usize,
        top_k: usize,
        norm_topk_prob: bool,
        sparse_step: usize,
    ) -> Self {
        MoeConfig {
            num_experts,
            top_k,
            norm_topk_prob,
            first_dense: 0,
            sparse_step: sparse_step.max(1),
            sparse_phase: 1,
            num_shared: 0,
            gate: GateKind::Softmax,
            routed_scaling: 1.0,
            num_groups: 1,
            topk_groups: 1,
        }
    }

    /// Checks the expert groups (they must split the experts evenly) and
    /// clamps the groups a token may use to `1..=num_groups`; shared by both
    /// config formats.
    fn with_checked_groups(mut self) -> Result<Self> {
        self.num_groups = self.num_groups.max(1);
        if !self.num_experts.is_multiple_of(self.num_groups) {
            return Err(EngineError::Load(format!(
                "{} experts do not split into {} groups",
                self.num_experts, self.num_groups
            )));
        }
        self.topk_groups = self.topk_groups.clamp(1, self.num_groups);
        Ok(self)
    }

    pub fn is_sparse(&self, layer: usize) -> bool {
        layer >= self.first_dense && (layer + self.sparse_phase).is_multiple_of(self.sparse_step)
    }
}

impl ModelConfig {
    /// The config of local weights without loading them: a GGUF file's
    /// metadata, or a checkpoint folder's `config.json`.
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        let load = |e: String| crate::error::EngineError::Load(format!("{}: {e}", path.display()));
        if path.is_dir() {
            let json = std::fs::read_to_string(path.join("config.json"))
                .map_err(|e| load(e.to_string()))?;
            Self::from_hf(&serde_json::from_str(&json).map_err(|e| load(e.to_string()))?)
        } else {
            let (_, content) = crate::weights::gguf::open(path)?;
            Self::from_gguf(&content)
        }
    }

    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = GgufMetadata::new(content);
        let arch_name = md.architecture()?;
        let arch = Arch::from_gguf_name(arch_name).ok_or_else(|| {
            EngineError::Load(format!(
                "unsupported GGUF architecture `{arch_name}` (supported: {})",
                Arch::gguf_names()
            ))
        })?;
        let family = arch.family();
        let a = md.arch(arch_name);
        let get_u = |k: &str| a.require_usize(k);
        let get_f = |k: &str| a.f32(k);
        let get_b = |k: &str| a.bool(k);
        let hidden_size = get_u("embedding_length")?;
        let num_heads = get_u("attention.head_count")?;
        let num_kv_heads = get_u("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get_u("attention.key_length").unwrap_or(hidden_size / num_heads);
        let vocab_size = match a.usize("vocab_size") {
            Some(v) => v,
            None => md
                .array_len("tokenizer.ggml.tokens")
                .ok_or_else(|| EngineError::Load("cannot tell the vocabulary size".into()))?,
        };
        let latent = family.latent_attention;
        let rope_scaling = match a.string("rope.scaling.type") {
            Some("linear") => {
                get_f("rope.scaling.factor").map_or(RopeScaling::None, RopeScaling::Linear)
            }
            Some("yarn") => {
                let factor = get_f("rope.scaling.factor").unwrap_or(1.0);
                RopeScaling::gguf_yarn(
                    factor,
                    get_u("rope.scaling.original_context_length").unwrap_or(4096),
                    get_f("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                    get_f("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                    // llama.cpp stores DeepSeek's mscale_all_dim times 0.1.
                    latent.then(|| get_f("rope.scaling.yarn_log_multiplier").unwrap_or(0.0) / 0.1),
                )
            }
            _ => RopeScaling::None,
        };
        let (mla, moe) = if latent {
            // Head lengths: `*_mla` keys where the latent is stored as one
            // KV head (llama.cpp since 2025), plain ones in older files.
            let rope = get_u("rope.dimension_count")?;
            let key_len =
                get_u("attention.key_length_mla").or_else(|_| get_u("attention.key_length"))?;
            let mla = MlaConfig {
                q_lora_rank: get_u("attention.q_lora_rank").ok().filter(|&r| r > 0),
                kv_lora_rank: get_u("attention.kv_lora_rank")?,
                qk_nope_head_dim: key_len.checked_sub(rope).ok_or_else(|| {
                    EngineError::Load(format!(
                        "GGUF: key length {key_len} < rope dimension {rope}"
                    ))
                })?,
                qk_rope_head_dim: rope,
                v_head_dim: get_u("attention.value_length_mla")
                    .or_else(|_| get_u("attention.value_length"))?,
            };
            let moe = match get_u("expert_count") {
                Ok(n) if n > 0 => {
                    let num_groups = get_u("expert_group_count").unwrap_or(1);
                    let gate = match (get_u("expert_gating_func").unwrap_or(1), num_groups.max(1)) {
                        (2, _) => GateKind::SigmoidNoAux,
                        (1, 1) => GateKind::Softmax,
                        (1, _) => GateKind::SoftmaxGroupLimited,
                        (other, _) => {
                            return Err(EngineError::Load(format!(
                            "GGUF: unsupported expert_gating_func {other} (1 softmax, 2 sigmoid)"
                        )))
                        }
                    };
                    Some(
                        MoeConfig {
                            num_experts: n,
                            top_k: get_u("expert_used_count")?,
                            norm_topk_prob: get_b("expert_weights_norm").unwrap_or(false),
                            first_dense: get_u("leading_dense_block_count").unwrap_or(0),
                            sparse_step: 1,
                            sparse_phase: 0,
                            num_shared: get_u("expert_shared_count").unwrap_or(0),
                            gate,
                            routed_scaling: get_f("expert_weights_scale").unwrap_or(1.0),
                            num_groups,
                            topk_groups: get_u("expert_group_used_count").unwrap_or(num_groups),
                        }
                        .with_checked_groups()?,
                    )
                }
                _ => None,
            };
            (Some(mla), moe)
        } else {
            // llama.cpp's qwen3moe: every layer sparse, softmax, renormalised top-k.
            let moe = match get_u("expert_count") {
                Ok(n) if n > 0 => Some(MoeConfig::qwen(n, get_u("expert_used_count")?, true, 1)),
                _ => None,
            };
            (None, moe)
        };
        let (num_kv_heads, head_dim, rope_dim, attn_scale) = match &mla {
            Some(m) => Self::latent_geometry(m, &rope_scaling),
            None => (
                num_kv_heads,
                head_dim,
                head_dim,
                1.0 / (head_dim as f32).sqrt(),
            ),
        };
        Ok(ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_layers: get_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dim,
            rms_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
            context_length: get_u("context_length").unwrap_or(4096),
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_theta_local: 10_000.0,
            rope_scaling,
            rope_neox: family.rope_neox_gguf,
            attn_scale,
            sliding_window: if family.sliding_window {
                a.usize("attention.sliding_window")
            } else {
                None
            },
            swa_pattern: get_u("attention.sliding_window_pattern").unwrap_or(6),
            attn_softcap: get_f("attn_logit_softcapping"),
            final_softcap: get_f("final_logit_softcapping"),
            moe,
            mla,
        })
    }

    /// From a Hugging Face `config.json` (Llama, Qwen2, Qwen3(-MoE), Gemma 3 text,
    /// DeepSeek-V2/V3 layouts).
    pub fn from_hf(cfg: &serde_json::Value) -> Result<Self> {
        let model_type = cfg["model_type"].as_str().unwrap_or_default();
        let arch = Arch::from_hf_model_type(model_type).ok_or_else(|| {
            EngineError::Load(format!(
                "unsupported model_type `{model_type}` in config.json (supported: {})",
                Arch::hf_model_types()
            ))
        })?;
        let family = arch.family();
        let get = |k: &str| -> Result<usize> {
            cfg[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| EngineError::Load(format!("config.json: `{k}` missing")))
        };
        let get_f = |k: &str| cfg[k].as_f64().map(|v| v as f32);
        let hidden_size = get("hidden_size")?;
        let num_heads = get("num_attention_heads")?;
        let rope_theta = get_f("rope_theta").unwrap_or(10_000.0);
        let rope_scaling = RopeScaling::from_hf(&cfg["rope_scaling"])?;
        let mla = if family.latent_attention {
            Some(MlaConfig {
                q_lora_rank: cfg["q_lora_rank"].as_u64().map(|v| v as usize),
                kv_lora_rank: get("kv_lora_rank")?,
                qk_nope_head_dim: get("qk_nope_head_dim")?,
                qk_rope_head_dim: get("qk_rope_head_dim")?,
                v_head_dim: get("v_head_dim")?,
            })
        } else {
            None
        };
        let moe = Self::moe_from_hf(cfg, arch)?;
        let (num_kv_heads, head_dim, rope_dim, attn_scale) = match &mla {
            Some(m) => Self::latent_geometry(m, &rope_scaling),
            None => {
                let head_dim = get("head_dim").unwrap_or(hidden_size / num_heads);
                let scale = match get_f("query_pre_attn_scalar") {
                    Some(s) if family.query_pre_attn_scalar => 1.0 / s.sqrt(),
                    _ => 1.0 / (head_dim as f32).sqrt(),
                };
                (
                    get("num_key_value_heads").unwrap_or(num_heads),
                    head_dim,
                    head_dim,
                    scale,
                )
            }
        };
        Ok(ModelConfig {
            arch,
            vocab_size: get("vocab_size")?,
            hidden_size,
            num_layers: get("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dim,
            rms_eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            context_length: get("max_position_embeddings").unwrap_or(4096),
            rope_theta,
            rope_theta_local: get_f("rope_local_base_freq").unwrap_or(10_000.0),
            rope_scaling,
            rope_neox: family.rope_neox_hf,
            attn_scale,
            sliding_window: if family.sliding_window {
                cfg["sliding_window"].as_u64().map(|v| v as usize)
            } else {
                None
            },
            swa_pattern: match cfg["layer_types"].as_array() {
                // Newer Gemma 3 configs list each layer; the pattern is the period of "full".
                Some(types) => types
                    .iter()
                    .position(|t| t.as_str() == Some("full_attention"))
                    .map_or(1, |i| i + 1),
                None => get("sliding_window_pattern").unwrap_or(6),
            },
            attn_softcap: get_f("attn_logit_softcapping"),
            final_softcap: get_f("final_logit_softcapping"),
            moe,
            mla,
        })
    }

    /// MLA's cache geometry (one latent KV head `kv_lora_rank + rope` wide, of
    /// which `rope` rotates) and softmax scale: scores are taken against the
    /// nope+rope query, times YaRN's mscale squared.
    fn latent_geometry(m: &MlaConfig, rope_scaling: &RopeScaling) -> (usize, usize, usize, f32) {
        let q_head_dim = (m.qk_nope_head_dim + m.qk_rope_head_dim) as f32;
        let mscale = rope_scaling.attention_mscale();
        (
            1,
            m.kv_lora_rank + m.qk_rope_head_dim,
            m.qk_rope_head_dim,
            mscale * mscale / q_head_dim.sqrt(),
        )
    }

    fn moe_from_hf(cfg: &serde_json::Value, arch: Arch) -> Result<Option<MoeConfig>> {
        let get = |k: &str| cfg[k].as_u64().map(|v| v as usize);
        let missing = |k: &str| EngineError::Load(format!("config.json: `{k}` missing"));
        if arch.family().latent_attention {
            let Some(n) = get("n_routed_experts").filter(|&n| n > 0) else {
                return Ok(None);
            };
            let gate = match (
                cfg["scoring_func"].as_str().unwrap_or("softmax"),
                cfg["topk_method"].as_str().unwrap_or("greedy"),
            ) {
                ("softmax", "greedy") => GateKind::Softmax,
                ("softmax", "group_limited_greedy") => GateKind::SoftmaxGroupLimited,
                ("sigmoid", "noaux_tc") => GateKind::SigmoidNoAux,
                (s, t) => {
                    return Err(EngineError::Load(format!(
                        "unsupported DeepSeek routing: scoring_func `{s}` with topk_method `{t}`"
                    )))
                }
            };
            let num_groups = get("n_group").unwrap_or(1);
            return Ok(Some(
                MoeConfig {
                    num_experts: n,
                    top_k: get("num_experts_per_tok")
                        .ok_or_else(|| missing("num_experts_per_tok"))?,
                    norm_topk_prob: cfg["norm_topk_prob"].as_bool().unwrap_or(false),
                    first_dense: get("first_k_dense_replace").unwrap_or(0),
                    sparse_step: get("moe_layer_freq").unwrap_or(1).max(1),
                    sparse_phase: 0,
                    num_shared: get("n_shared_experts").unwrap_or(0),
                    gate,
                    routed_scaling: cfg["routed_scaling_factor"].as_f64().unwrap_or(1.0) as f32,
                    num_groups,
                    topk_groups: get("topk_group").unwrap_or(num_groups),
                }
                .with_checked_groups()?,
            ));
        }
        match get("num_experts") {
            Some(n) if n > 0 => Ok(Some(MoeConfig::qwen(
                n,
                get("num_experts_per_tok").ok_or_else(|| missing("num_experts_per_tok"))?,
                cfg["norm_topk_prob"].as_bool().unwrap_or(false),
                get("decoder_sparse_step").unwrap_or(1),
            ))),
            _ => Ok(None),
        }
    }

    /// Does layer `i` use the sliding window (Gemma 3: all but every 6th)?
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && !(layer + 1).is_multiple_of(self.swa_pattern.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 12,
            "vocab_size": 100, "head_dim": 16
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn gemma3_text_scale_and_layer_types() {
        let mut types = vec![json!("sliding_attention"); 5];
        types.push(json!("full_attention"));
        let c = ModelConfig::from_hf(&base(json!({
            "model_type": "gemma3_text", "query_pre_attn_scalar": 64,
            "sliding_window": 512, "layer_types": types
        })))
        .unwrap();
        assert_eq!(c.attn_scale, 0.125);
        assert_eq!(c.swa_pattern, 6);
        assert!(c.is_sliding(0) && !c.is_sliding(5) && c.is_sliding(6));
    }

    #[test]
    fn deepseek_mla_cache_shape_and_moe_layers() {
        let c = ModelConfig::from_hf(&base(json!({
            "model_type": "deepseek_v3", "kv_lora_rank": 512, "qk_rope_head_dim": 64,
            "qk_nope_head_dim": 128, "v_head_dim": 128, "q_lora_rank": 1536,
            "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
            "first_k_dense_replace": 3, "scoring_func": "sigmoid", "topk_method": "noaux_tc"
        })))
        .unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.rope_dim), (1, 576, 64));
        assert!(!c.rope_neox);
        let moe = c.moe.unwrap();
        assert_eq!(moe.gate, GateKind::SigmoidNoAux);
        assert!(!moe.is_sparse(2) && moe.is_sparse(3));
        let bad = ModelConfig::from_hf(&base(json!({
            "model_type": "deepseek_v2", "kv_lora_rank": 8, "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4, "v_head_dim": 4, "n_routed_experts": 6,
            "num_experts_per_tok": 2, "n_group": 4
        })));
        assert!(bad.unwrap_err().to_string().contains("groups"));
    }
}
