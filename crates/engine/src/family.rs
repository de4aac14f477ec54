//! Every per-family fact in one table: how a family is named in GGUF and in
//! `config.json`, its activation, embedding scale, biases, norms, RoPE style,
//! tensor-name quirks, default chat template and tool-call format. The config
//! parser, the forward pass, the safetensors loader and the chat layer ask
//! [`Arch::family`] instead of matching on the architecture, so adding a
//! family is one new [`Family`] entry (mistral.rs's per-architecture
//! `NormalModelLoader` facts and llama.cpp's `llm_arch` tables, as data).

use crate::text::chat::{CHATML_TEMPLATE, GEMMA_TEMPLATE};
use crate::text::tool_calls::ToolCallFormat;

/// A model family the forward pass supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
    /// Llama plus biases on Q, K and V.
    Qwen2,
    /// Llama plus per-head RMS norms on Q and K.
    Qwen3,
    /// Multi-head latent attention and shared + routed experts (DeepSeek-V2/V3).
    DeepSeek,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// What distinguishes one family from the shared decoder.
#[derive(Debug)]
pub(crate) struct Family {
    pub arch: Arch,
    /// `general.architecture` values in GGUF files.
    pub gguf_names: &'static [&'static str],
    /// `model_type` values in Hugging Face `config.json`.
    pub hf_model_types: &'static [&'static str],
    pub activation: Activation,
    /// Embeddings are multiplied by `sqrt(hidden_size)`.
    pub scaled_embeddings: bool,
    /// Q, K and V projections carry biases.
    pub qkv_bias: bool,
    /// Per-head RMS norms on Q and K.
    pub qk_norm: bool,
    /// Norms after attention and after the MLP as well as before.
    pub post_norms: bool,
    /// Some layers attend within a sliding window.
    pub sliding_window: bool,
    /// The softmax scale comes from `query_pre_attn_scalar` when the config has it.
    pub query_pre_attn_scalar: bool,
    /// DeepSeek's multi-head latent attention and its expert routing keys
    /// (in GGUF and `config.json`), and its YaRN attention multiplier.
    pub latent_attention: bool,
    /// NeoX RoPE (rotate halves) for GGUF weights; llama.cpp permutes Llama's
    /// Q/K for interleaved pairs.
    pub rope_neox_gguf: bool,
    /// NeoX RoPE for Hugging Face weights.
    pub rope_neox_hf: bool,
    /// Hugging Face checkpoints store RMS-norm weights `w` meaning `1 + w`.
    pub hf_norm_plus_one: bool,
    /// The Hugging Face name of llama.cpp's `ffn_norm`.
    pub hf_ffn_norm: &'static str,
    /// The template used when the checkpoint has none.
    pub default_template: &'static str,
    /// The tool-call format the family emits when its template does not say.
    pub tool_format: Option<ToolCallFormat>,
}

const LLAMA: Family = Family {
    arch: Arch::Llama,
    gguf_names: &["llama"],
    hf_model_types: &["llama", "mistral"],
    activation: Activation::Silu,
    scaled_embeddings: false,
    qkv_bias: false,
    qk_norm: false,
    post_norms: false,
    sliding_window: false,
    query_pre_attn_scalar: false,
    latent_attention: false,
    rope_neox_gguf: false,
    rope_neox_hf: true,
    hf_norm_plus_one: false,
    hf_ffn_norm: "post_attention_layernorm",
    default_template: CHATML_TEMPLATE,
    tool_format: Some(ToolCallFormat::Llama3Json),
};

const FAMILIES: [Family; 5] = [
    LLAMA,
    Family {
        arch: Arch::Gemma3,
        gguf_names: &["gemma3"],
        hf_model_types: &["gemma3_text"],
        activation: Activation::GeluTanh,
        scaled_embeddings: true,
        qk_norm: true,
        post_norms: true,
        sliding_window: true,
        query_pre_attn_scalar: true,
        rope_neox_gguf: true,
        hf_norm_plus_one: true,
        hf_ffn_norm: "pre_feedforward_layernorm",
        default_template: GEMMA_TEMPLATE,
        tool_format: None,
        ..LLAMA
    },
    Family {
        arch: Arch::Qwen2,
        gguf_names: &["qwen2"],
        hf_model_types: &["qwen2"],
        qkv_bias: true,
        rope_neox_gguf: true,
        tool_format: Some(ToolCallFormat::Hermes),
        ..LLAMA
    },
    Family {
        arch: Arch::Qwen3,
        gguf_names: &["qwen3", "qwen3moe"],
        hf_model_types: &["qwen3", "qwen3_moe"],
        qk_norm: true,
        rope_neox_gguf: true,
        tool_format: Some(ToolCallFormat::Hermes),
        ..LLAMA
    },
    Family {
        arch: Arch::DeepSeek,
        gguf_names: &["deepseek2"],
        hf_model_types: &["deepseek_v2", "deepseek_v3"],
        latent_attention: true,
        rope_neox_gguf: false,
        rope_neox_hf: false,
        tool_format: Some(ToolCallFormat::DeepSeek),
        ..LLAMA
    },
];

impl Arch {
    /// This family's facts.
    pub(crate) fn family(self) -> &'static Family {
        &FAMILIES[match self {
            Arch::Llama => 0,
            Arch::Gemma3 => 1,
            Arch::Qwen2 => 2,
            Arch::Qwen3 => 3,
            Arch::DeepSeek => 4,
        }]
    }

    /// The family a GGUF `general.architecture` names.
    pub(crate) fn from_gguf_name(name: &str) -> Option<Arch> {
        FAMILIES
            .iter()
            .find(|f| f.gguf_names.contains(&name))
            .map(|f| f.arch)
    }

    /// The family a `config.json` `model_type` names.
    pub(crate) fn from_hf_model_type(name: &str) -> Option<Arch> {
        FAMILIES
            .iter()
            .find(|f| f.hf_model_types.contains(&name))
            .map(|f| f.arch)
    }

    /// Every supported GGUF architecture name, for error messages.
    pub(crate) fn gguf_names() -> String {
        FAMILIES
            .iter()
            .flat_map(|f| f.gguf_names.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every supported `model_type`, for error messages.
    pub(crate) fn hf_model_types() -> String {
        FAMILIES
            .iter()
            .flat_map(|f| f.hf_model_types.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_one_entry_and_names_map_back() {
        for arch in [
            Arch::Llama,
            Arch::Gemma3,
            Arch::Qwen2,
            Arch::Qwen3,
            Arch::DeepSeek,
        ] {
            let f = arch.family();
            assert_eq!(f.arch, arch);
            assert_eq!(FAMILIES.iter().filter(|g| g.arch == arch).count(), 1);
            for name in f.gguf_names {
                assert_eq!(Arch::from_gguf_name(name), Some(arch));
            }
            for name in f.hf_model_types {
                assert_eq!(Arch::from_hf_model_type(name), Some(arch));
            }
        }
        assert_eq!(Arch::from_gguf_name("gpt2"), None);
        assert!(Arch::gguf_names().contains("qwen3moe"));
    }
}
