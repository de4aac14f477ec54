//! switchyard's test kit (a dev-only crate, not in the release binary): small
//! random-weight Hugging Face checkpoints (every family in [`FAMILIES`]) with
//! real config keys, bf16 safetensors and a byte-level BPE `tokenizer.json`,
//! and their GGUF conversion the way llama.cpp's converter writes them.
//! Deterministic: the same call writes the same bytes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use switchyard_engine::internals::{gpt2_byte_to_unicode, hf_tensor_name};
use switchyard_engine::{Arch, EngineError, Result};

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;
pub const FFN: usize = 96;
pub const LAYERS: usize = 2;
pub const VOCAB: usize = 300;
/// Qwen3-MoE: experts, experts per token, expert width.
pub const EXPERTS: usize = 4;
pub const EXPERTS_PER_TOKEN: usize = 2;
pub const EXPERT_FFN: usize = 32;

/// A byte-level BPE tokenizer.json over the 256 byte symbols (ids 0-255) plus
/// `<|endoftext|>` (256), `<|im_start|>` (257) and `<|im_end|>` (258).
fn write_tokenizer(dir: &Path) -> Result<()> {
    let mut vocab = serde_json::Map::new();
    for (b, c) in gpt2_byte_to_unicode().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tokenizer = json!({
        "version": "1.0",
        "added_tokens": [special(256, "<|endoftext|>"), special(257, "<|im_start|>"), special(258, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"eos_token": "<|im_end|>", "add_bos_token": false}).to_string(),
    )?;
    Ok(())
}

/// DeepSeek (MLA) test dimensions.
pub const Q_LORA_RANK: usize = 24;
pub const KV_LORA_RANK: usize = 32;
pub const QK_NOPE_DIM: usize = 16;
pub const QK_ROPE_DIM: usize = 8;
pub const V_HEAD_DIM: usize = 12;

/// The families [`write_random_checkpoint`] can write.
pub const FAMILIES: &[&str] = &[
    "llama",
    "llama3",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma3_text",
    "deepseek_v2",
    "deepseek_v3",
];

/// Write a random checkpoint of `family` (one of [`FAMILIES`]; `llama3` is a
/// Llama with Llama 3.1 RoPE scaling) into `dir`; returns its `config.json`.
pub fn write_random_checkpoint(dir: &Path, family: &str, tied: bool) -> Result<serde_json::Value> {
    if !FAMILIES.contains(&family) {
        return Err(EngineError::Load(format!(
            "no random checkpoint for `{family}`"
        )));
    }
    std::fs::create_dir_all(dir)?;
    let dev = Device::Cpu;
    let mut seed = 0u64;
    let mut rand = |shape: &[usize], scale: f32, offset: f32| -> Result<Tensor> {
        seed += 1;
        let n: usize = shape.iter().product();
        // A fixed LCG keeps the checkpoint identical across runs.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                offset + ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let deepseek = family.starts_with("deepseek");
    let gemma = family == "gemma3_text";
    let moe = family == "qwen3_moe" || deepseek;
    // Gemma stores norm weights as offsets from one.
    let norm_offset = if gemma { 0.0 } else { 1.0 };
    let tied = tied || gemma;
    // Gemma 3 270M has a single KV head; keep that shape.
    let kv_heads = if gemma { 1 } else { KV_HEADS };
    // (name, shape, scale, offset), names relative to the checkpoint root.
    let mut spec: Vec<(String, Vec<usize>, f32, f32)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![VOCAB, HIDDEN],
            0.5,
            0.0,
        ),
        ("model.norm.weight".into(), vec![HIDDEN], 0.1, norm_offset),
    ];
    if !tied {
        spec.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN], 0.2, 0.0));
    }
    for l in 0..LAYERS {
        let mut layer: Vec<(String, Vec<usize>, f32, f32)> = Vec::new();
        let mut push = |name: &str, shape: Vec<usize>, scale: f32, offset: f32| {
            layer.push((name.to_string(), shape, scale, offset));
        };
        push("input_layernorm.weight", vec![HIDDEN], 0.1, norm_offset);
        push(
            "post_attention_layernorm.weight",
            vec![HIDDEN],
            0.1,
            norm_offset,
        );
        if gemma {
            push("pre_feedforward_layernorm.weight", vec![HIDDEN], 0.1, 0.0);
            push("post_feedforward_layernorm.weight", vec![HIDDEN], 0.1, 0.0);
        }
        if deepseek {
            let q_dim = HEADS * (QK_NOPE_DIM + QK_ROPE_DIM);
            if family == "deepseek_v2" {
                push(
                    "self_attn.q_a_proj.weight",
                    vec![Q_LORA_RANK, HIDDEN],
                    0.2,
                    0.0,
                );
                push(
                    "self_attn.q_a_layernorm.weight",
                    vec![Q_LORA_RANK],
                    0.1,
                    1.0,
                );
                push(
                    "self_attn.q_b_proj.weight",
                    vec![q_dim, Q_LORA_RANK],
                    0.2,
                    0.0,
                );
            } else {
                push("self_attn.q_proj.weight", vec![q_dim, HIDDEN], 0.2, 0.0);
            }
            let kv_a = vec![KV_LORA_RANK + QK_ROPE_DIM, HIDDEN];
            push("self_attn.kv_a_proj_with_mqa.weight", kv_a, 0.2, 0.0);
            push(
                "self_attn.kv_a_layernorm.weight",
                vec![KV_LORA_RANK],
                0.1,
                1.0,
            );
            let kv_b = vec![HEADS * (QK_NOPE_DIM + V_HEAD_DIM), KV_LORA_RANK];
            push("self_attn.kv_b_proj.weight", kv_b, 0.2, 0.0);
            push(
                "self_attn.o_proj.weight",
                vec![HIDDEN, HEADS * V_HEAD_DIM],
                0.2,
                0.0,
            );
        } else {
            push(
                "self_attn.q_proj.weight",
                vec![HEADS * HEAD_DIM, HIDDEN],
                0.2,
                0.0,
            );
            push(
                "self_attn.k_proj.weight",
                vec![kv_heads * HEAD_DIM, HIDDEN],
                0.2,
                0.0,
            );
            push(
                "self_attn.v_proj.weight",
                vec![kv_heads * HEAD_DIM, HIDDEN],
                0.2,
                0.0,
            );
            push(
                "self_attn.o_proj.weight",
                vec![HIDDEN, HEADS * HEAD_DIM],
                0.2,
                0.0,
            );
        }
        if family == "qwen2" {
            push("self_attn.q_proj.bias", vec![HEADS * HEAD_DIM], 0.1, 0.0);
            push("self_attn.k_proj.bias", vec![KV_HEADS * HEAD_DIM], 0.1, 0.0);
            push("self_attn.v_proj.bias", vec![KV_HEADS * HEAD_DIM], 0.1, 0.0);
        }
        if family.starts_with("qwen3") || gemma {
            push("self_attn.q_norm.weight", vec![HEAD_DIM], 0.1, norm_offset);
            push("self_attn.k_norm.weight", vec![HEAD_DIM], 0.1, norm_offset);
        }
        // DeepSeek's first layer stays dense (first_k_dense_replace = 1).
        let sparse = moe && !(deepseek && l == 0);
        let mut mlp = |prefix: &str, width: usize| {
            push(
                &format!("{prefix}.gate_proj.weight"),
                vec![width, HIDDEN],
                0.2,
                0.0,
            );
            push(
                &format!("{prefix}.up_proj.weight"),
                vec![width, HIDDEN],
                0.2,
                0.0,
            );
            push(
                &format!("{prefix}.down_proj.weight"),
                vec![HIDDEN, width],
                0.2,
                0.0,
            );
        };
        if sparse {
            for e in 0..EXPERTS {
                mlp(&format!("mlp.experts.{e}"), EXPERT_FFN);
            }
            if deepseek {
                mlp("mlp.shared_experts", EXPERT_FFN);
            }
        } else {
            mlp("mlp", FFN);
        }
        if sparse {
            push("mlp.gate.weight", vec![EXPERTS, HIDDEN], 0.5, 0.0);
            if family == "deepseek_v3" {
                push("mlp.gate.e_score_correction_bias", vec![EXPERTS], 0.05, 0.0);
            }
        }
        spec.extend(
            layer
                .into_iter()
                .map(|(n, sh, sc, o)| (format!("model.layers.{l}.{n}"), sh, sc, o)),
        );
    }
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (name, shape, scale, offset) in spec {
        // bf16 on disk, as real checkpoints are.
        t.insert(name, rand(&shape, scale, offset)?.to_dtype(DType::BF16)?);
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    let config = checkpoint_config(family, tied);
    std::fs::write(dir.join("config.json"), config.to_string())?;
    write_tokenizer(dir)?;
    Ok(config)
}

/// The `config.json` of a random checkpoint, with the keys real ones carry.
fn checkpoint_config(family: &str, tied: bool) -> serde_json::Value {
    let model_type = if family == "llama3" { "llama" } else { family };
    let architecture = match family {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "qwen3_moe" => "Qwen3MoeForCausalLM",
        "gemma3_text" => "Gemma3ForCausalLM",
        "deepseek_v2" => "DeepseekV2ForCausalLM",
        "deepseek_v3" => "DeepseekV3ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut config = json!({
        "model_type": model_type,
        "architectures": [architecture],
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "sliding_window": 4096,
        "max_window_layers": LAYERS,
        "use_sliding_window": false,
        "attention_bias": false,
        "eos_token_id": 258,
        "bos_token_id": 256,
        "num_experts": if family == "qwen3_moe" { EXPERTS } else { 0 },
        "num_experts_per_tok": EXPERTS_PER_TOKEN,
        "moe_intermediate_size": EXPERT_FFN,
        "norm_topk_prob": true,
        "decoder_sparse_step": 1
    });
    let extra = match family {
        "llama3" => json!({
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        }),
        "gemma3_text" => json!({
            "num_key_value_heads": 1,
            "hidden_activation": "gelu_pytorch_tanh",
            // candle-transformers' gemma3 (the test reference) scales by head_dim.
            "query_pre_attn_scalar": HEAD_DIM,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "sliding_window": 512,
            "sliding_window_pattern": 2,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": null,
            "rope_scaling": null
        }),
        "deepseek_v2" => json!({
            "q_lora_rank": Q_LORA_RANK,
            "kv_lora_rank": KV_LORA_RANK,
            "qk_nope_head_dim": QK_NOPE_DIM,
            "qk_rope_head_dim": QK_ROPE_DIM,
            "v_head_dim": V_HEAD_DIM,
            "n_routed_experts": EXPERTS,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "routed_scaling_factor": 1.5,
            "norm_topk_prob": false,
            "scoring_func": "softmax",
            "topk_method": "greedy",
            "n_group": 1,
            "topk_group": 1,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                             "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}
        }),
        "deepseek_v3" => json!({
            "q_lora_rank": null,
            "kv_lora_rank": KV_LORA_RANK,
            "qk_nope_head_dim": QK_NOPE_DIM,
            "qk_rope_head_dim": QK_ROPE_DIM,
            "v_head_dim": V_HEAD_DIM,
            "n_routed_experts": EXPERTS,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": true,
            "scoring_func": "sigmoid",
            "topk_method": "noaux_tc",
            "n_group": 2,
            "topk_group": 1,
            "rope_scaling": null
        }),
        _ => json!({}),
    };
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    config
}

/// How a DeepSeek GGUF stores MLA's `kv_b_proj`: split into `attn_k_b`
/// (transposed) and `attn_v_b` with the latent as one KV head (llama.cpp since
/// 2025), or as one `attn_kv_b` matrix (older files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlaLayout {
    Split,
    Fused,
}

/// Convert a `llama`, `qwen3_moe` or `deepseek_v2`/`deepseek_v3` checkpoint
/// written by [`write_random_checkpoint`] into a GGUF file the way llama.cpp's
/// converter does: llama.cpp tensor names, Llama's Q and K rows permuted for
/// interleaved RoPE, MoE experts stacked into one `ffn_*_exps` tensor per
/// layer, DeepSeek's hyperparameters under `deepseek2.*` (MLA as `mla`
/// says), the vocabulary as `gpt2` BPE. Matrices are stored as `dtype` (F32,
/// Q8_0...) where their rows split into whole blocks, else F32.
pub fn convert_to_gguf(
    dir: &Path,
    family: &str,
    out: &Path,
    dtype: candle_core::quantized::GgmlDType,
    mla: MlaLayout,
) -> Result<()> {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let arch = match family {
        "llama" => "llama",
        "qwen3_moe" => "qwen3moe",
        "deepseek_v2" | "deepseek_v3" => "deepseek2",
        other => {
            return Err(EngineError::Load(format!(
                "no GGUF conversion for `{other}`"
            )))
        }
    };
    let (moe, deepseek) = (arch != "llama", arch == "deepseek2");
    let family_arch = match arch {
        "llama" => Arch::Llama,
        "qwen3moe" => Arch::Qwen3,
        _ => Arch::DeepSeek,
    };
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)
            .map_err(|e| EngineError::Load(e.to_string()))?;
    let dev = Device::Cpu;
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &dev)?;
    let get = |name: &str| -> Result<Tensor> {
        st.get(name)
            .ok_or_else(|| EngineError::Load(format!("missing {name}")))?
            .to_dtype(DType::F32)
            .map_err(Into::into)
    };
    // HF rotates halves; GGUF Llama rotates adjacent pairs: reorder each head's rows.
    let permute = |w: Tensor, heads: usize| -> Result<Tensor> {
        let (rows, cols) = w.dims2()?;
        Ok(w.reshape((heads, 2, rows / heads / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?)
    };
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            get("model.embed_tokens.weight")?,
        ),
        ("output_norm.weight".into(), get("model.norm.weight")?),
    ];
    if st.contains_key("lm_head.weight") {
        tensors.push(("output.weight".into(), get("lm_head.weight")?));
    }
    for l in 0..LAYERS {
        let hf = |n: &str| format!("model.layers.{l}.{n}");
        let gg = |n: &str| format!("blk.{l}.{n}");
        // llama.cpp names of tensors copied as they are (the loader's map gives the HF names).
        let mut copies: Vec<&str> =
            vec!["attn_norm.weight", "ffn_norm.weight", "attn_output.weight"];
        if deepseek {
            copies.extend(["attn_kv_a_mqa.weight", "attn_kv_a_norm.weight"]);
            if st.contains_key(&hf("self_attn.q_a_proj.weight")) {
                copies.extend(["attn_q_a.weight", "attn_q_a_norm.weight", "attn_q_b.weight"]);
            } else {
                copies.push("attn_q.weight");
            }
            let kv_b = get(&hf("self_attn.kv_b_proj.weight"))?;
            match mla {
                MlaLayout::Fused => tensors.push((gg("attn_kv_b.weight"), kv_b)),
                MlaLayout::Split => {
                    let kv_b = kv_b.reshape((HEADS, QK_NOPE_DIM + V_HEAD_DIM, KV_LORA_RANK))?;
                    let k_b = kv_b.narrow(1, 0, QK_NOPE_DIM)?.transpose(1, 2)?;
                    let v_b = kv_b.narrow(1, QK_NOPE_DIM, V_HEAD_DIM)?;
                    tensors.push((gg("attn_k_b.weight"), k_b.contiguous()?));
                    tensors.push((gg("attn_v_b.weight"), v_b.contiguous()?));
                }
            }
        } else {
            // qwen3moe keeps NeoX RoPE in llama.cpp; Llama's Q/K are permuted.
            let (q, k) = (
                get(&hf("self_attn.q_proj.weight"))?,
                get(&hf("self_attn.k_proj.weight"))?,
            );
            let (q, k) = if moe {
                (q, k)
            } else {
                (permute(q, HEADS)?, permute(k, KV_HEADS)?)
            };
            tensors.push((gg("attn_q.weight"), q));
            tensors.push((gg("attn_k.weight"), k));
            copies.push("attn_v.weight");
            if moe {
                copies.extend(["attn_q_norm.weight", "attn_k_norm.weight"]);
            }
        }
        let sparse = st.contains_key(&hf("mlp.gate.weight"));
        if sparse {
            copies.push("ffn_gate_inp.weight");
            if st.contains_key(&hf("mlp.gate.e_score_correction_bias")) {
                copies.push("exp_probs_b.bias");
            }
            if st.contains_key(&hf("mlp.shared_experts.gate_proj.weight")) {
                copies.extend([
                    "ffn_gate_shexp.weight",
                    "ffn_up_shexp.weight",
                    "ffn_down_shexp.weight",
                ]);
            }
            for part in ["gate", "up", "down"] {
                let experts = (0..EXPERTS)
                    .map(|e| {
                        let name = gg(&format!("expert.{e}.ffn_{part}.weight"));
                        get(&hf_tensor_name(family_arch, &name))
                    })
                    .collect::<Result<Vec<_>>>()?;
                tensors.push((
                    gg(&format!("ffn_{part}_exps.weight")),
                    Tensor::stack(&experts, 0)?,
                ));
            }
        } else {
            copies.extend(["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]);
        }
        for gguf in copies {
            let name = gg(gguf);
            tensors.push((name.clone(), get(&hf_tensor_name(family_arch, &name))?));
        }
    }
    // Norms and embeddings stay f32, as llama.cpp keeps 1-D tensors.
    let qtensors = tensors
        .iter()
        .map(|(n, t)| {
            let whole_blocks = t.dims().last().is_some_and(|c| c % dtype.block_size() == 0);
            let ty = if t.rank() >= 2 && n != "token_embd.weight" && whole_blocks {
                dtype
            } else {
                GgmlDType::F32
            };
            Ok((n.clone(), QTensor::quantize(t, ty)?))
        })
        .collect::<Result<Vec<_>>>()?;
    // The vocabulary: the 256 byte symbols, then the three specials.
    let tk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json"))?)
            .map_err(|e| EngineError::Load(e.to_string()))?;
    let mut tokens = vec![String::new(); VOCAB];
    let mut types = vec![Value::I32(1); VOCAB];
    if let Some(v) = tk["model"]["vocab"].as_object() {
        for (t, id) in v {
            tokens[id.as_u64().unwrap_or(0) as usize] = t.clone();
        }
    }
    for a in tk["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"].as_u64().unwrap_or(0) as usize;
        tokens[id] = a["content"].as_str().unwrap_or_default().to_string();
        types[id] = Value::I32(3);
    }
    for (i, t) in tokens.iter_mut().enumerate().skip(259) {
        *t = format!("<unused{i}>");
    }
    let u = |v: usize| Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("block_count"), u(LAYERS)),
        (key("context_length"), u(512)),
        (key("embedding_length"), u(HIDDEN)),
        (key("feed_forward_length"), u(FFN)),
        (key("attention.head_count"), u(HEADS)),
        (key("rope.freq_base"), Value::F32(10000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (key("vocab_size"), u(VOCAB)),
    ];
    if !deepseek {
        metadata.extend([
            (key("attention.head_count_kv"), u(KV_HEADS)),
            (key("attention.key_length"), u(HEAD_DIM)),
            (key("attention.value_length"), u(HEAD_DIM)),
        ]);
    }
    if moe {
        metadata.push((key("expert_count"), u(EXPERTS)));
        metadata.push((key("expert_used_count"), u(EXPERTS_PER_TOKEN)));
        metadata.push((key("expert_feed_forward_length"), u(EXPERT_FFN)));
    }
    if deepseek {
        metadata.extend(deepseek2_metadata(&config, mla));
    }
    let tokenizer_md: Vec<(&str, Value)> = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.eos_token_id", u(258)),
        ("tokenizer.ggml.bos_token_id", u(256)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    metadata.extend(tokenizer_md.into_iter().map(|(k, v)| (k.to_string(), v)));
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out)?;
    candle_core::quantized::gguf_file::write(&mut f, &md, &ts)?;
    Ok(())
}

/// `deepseek2.*` keys as llama.cpp's `DeepseekV2Model` writes them from a
/// `config.json`: MLA ranks and head lengths, MoE layout and gate, YaRN with
/// `0.1 * mscale_all_dim` as the log multiplier.
fn deepseek2_metadata(
    c: &serde_json::Value,
    mla: MlaLayout,
) -> Vec<(String, candle_core::quantized::gguf_file::Value)> {
    use candle_core::quantized::gguf_file::Value;
    let n = |k: &str| c[k].as_u64().unwrap_or(0) as u32;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) as f32;
    let (kv_lora, rope, nope, v) = (
        n("kv_lora_rank"),
        n("qk_rope_head_dim"),
        n("qk_nope_head_dim"),
        n("v_head_dim"),
    );
    let mut md = vec![
        ("attention.kv_lora_rank", Value::U32(kv_lora)),
        ("rope.dimension_count", Value::U32(rope)),
        (
            "leading_dense_block_count",
            Value::U32(n("first_k_dense_replace")),
        ),
        ("expert_shared_count", Value::U32(n("n_shared_experts"))),
        ("expert_group_count", Value::U32(n("n_group"))),
        ("expert_group_used_count", Value::U32(n("topk_group"))),
        (
            "expert_weights_scale",
            Value::F32(f(&c["routed_scaling_factor"])),
        ),
        (
            "expert_weights_norm",
            Value::Bool(c["norm_topk_prob"].as_bool().unwrap_or(false)),
        ),
        (
            "expert_gating_func",
            Value::U32(if c["scoring_func"] == "sigmoid" { 2 } else { 1 }),
        ),
    ];
    if n("q_lora_rank") > 0 {
        md.push(("attention.q_lora_rank", Value::U32(n("q_lora_rank"))));
    }
    match mla {
        MlaLayout::Split => md.extend([
            ("attention.head_count_kv", Value::U32(1)),
            ("attention.key_length", Value::U32(kv_lora + rope)),
            ("attention.value_length", Value::U32(kv_lora)),
            ("attention.key_length_mla", Value::U32(nope + rope)),
            ("attention.value_length_mla", Value::U32(v)),
        ]),
        MlaLayout::Fused => md.extend([
            (
                "attention.head_count_kv",
                Value::U32(n("num_attention_heads")),
            ),
            ("attention.key_length", Value::U32(nope + rope)),
            ("attention.value_length", Value::U32(v)),
        ]),
    }
    let scaling = &c["rope_scaling"];
    if scaling["type"] == "yarn" {
        md.extend([
            ("rope.scaling.type", Value::String("yarn".into())),
            ("rope.scaling.factor", Value::F32(f(&scaling["factor"]))),
            (
                "rope.scaling.original_context_length",
                Value::U32(
                    scaling["original_max_position_embeddings"]
                        .as_u64()
                        .unwrap_or(0) as u32,
                ),
            ),
            (
                "rope.scaling.yarn_log_multiplier",
                Value::F32(0.1 * f(&scaling["mscale_all_dim"])),
            ),
        ]);
    }
    md.into_iter()
        .map(|(k, v)| (format!("deepseek2.{k}"), v))
        .collect()
}
