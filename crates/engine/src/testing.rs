//! Small random-weight Hugging Face checkpoints (Llama, Qwen2, Qwen3 layouts)
//! for tests and demos: real config keys, bf16 safetensors, a byte-level BPE
//! `tokenizer.json`. Deterministic: the same call writes the same bytes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::error::Result;

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
    for (b, c) in crate::tokenizer::gpt2_byte_to_unicode()
        .into_iter()
        .enumerate()
    {
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

/// Write a random checkpoint of `model_type` (`llama`, `qwen2`, `qwen3`, `qwen3_moe`) into
/// `dir`; returns its `config.json`.
pub fn write_random_checkpoint(
    dir: &Path,
    model_type: &str,
    tied: bool,
) -> Result<serde_json::Value> {
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
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        rand(&[VOCAB, HIDDEN], 0.5, 0.0)?,
    );
    t.insert("model.norm.weight".into(), rand(&[HIDDEN], 0.1, 1.0)?);
    if !tied {
        t.insert("lm_head.weight".into(), rand(&[VOCAB, HIDDEN], 0.2, 0.0)?);
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let mut shapes: Vec<(&str, Vec<usize>, f32, f32)> = vec![
            (
                "self_attn.q_proj.weight",
                vec![HEADS * HEAD_DIM, HIDDEN],
                0.2,
                0.0,
            ),
            (
                "self_attn.k_proj.weight",
                vec![KV_HEADS * HEAD_DIM, HIDDEN],
                0.2,
                0.0,
            ),
            (
                "self_attn.v_proj.weight",
                vec![KV_HEADS * HEAD_DIM, HIDDEN],
                0.2,
                0.0,
            ),
            (
                "self_attn.o_proj.weight",
                vec![HIDDEN, HEADS * HEAD_DIM],
                0.2,
                0.0,
            ),
            ("input_layernorm.weight", vec![HIDDEN], 0.1, 1.0),
            ("post_attention_layernorm.weight", vec![HIDDEN], 0.1, 1.0),
        ];
        if model_type == "qwen2" {
            shapes.push(("self_attn.q_proj.bias", vec![HEADS * HEAD_DIM], 0.1, 0.0));
            shapes.push(("self_attn.k_proj.bias", vec![KV_HEADS * HEAD_DIM], 0.1, 0.0));
            shapes.push(("self_attn.v_proj.bias", vec![KV_HEADS * HEAD_DIM], 0.1, 0.0));
        }
        if model_type.starts_with("qwen3") {
            shapes.push(("self_attn.q_norm.weight", vec![HEAD_DIM], 0.1, 1.0));
            shapes.push(("self_attn.k_norm.weight", vec![HEAD_DIM], 0.1, 1.0));
        }
        let mut names: Vec<(String, Vec<usize>, f32, f32)> = shapes
            .into_iter()
            .map(|(n, sh, sc, o)| (n.to_string(), sh, sc, o))
            .collect();
        if model_type == "qwen3_moe" {
            names.push(("mlp.gate.weight".into(), vec![EXPERTS, HIDDEN], 0.5, 0.0));
            for e in 0..EXPERTS {
                names.push((
                    format!("mlp.experts.{e}.gate_proj.weight"),
                    vec![EXPERT_FFN, HIDDEN],
                    0.2,
                    0.0,
                ));
                names.push((
                    format!("mlp.experts.{e}.up_proj.weight"),
                    vec![EXPERT_FFN, HIDDEN],
                    0.2,
                    0.0,
                ));
                names.push((
                    format!("mlp.experts.{e}.down_proj.weight"),
                    vec![HIDDEN, EXPERT_FFN],
                    0.2,
                    0.0,
                ));
            }
        } else {
            names.push(("mlp.gate_proj.weight".into(), vec![FFN, HIDDEN], 0.2, 0.0));
            names.push(("mlp.up_proj.weight".into(), vec![FFN, HIDDEN], 0.2, 0.0));
            names.push(("mlp.down_proj.weight".into(), vec![HIDDEN, FFN], 0.2, 0.0));
        }
        for (name, shape, scale, offset) in names {
            t.insert(format!("{p}.{name}"), rand(&shape, scale, offset)?);
        }
    }
    // bf16 on disk, as real checkpoints are.
    let t = t
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::BF16)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    let architecture = match model_type {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "qwen3_moe" => "Qwen3MoeForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let config = json!({
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
        "num_experts": if model_type == "qwen3_moe" { EXPERTS } else { 0 },
        "num_experts_per_tok": EXPERTS_PER_TOKEN,
        "moe_intermediate_size": EXPERT_FFN,
        "norm_topk_prob": true,
        "decoder_sparse_step": 1
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    write_tokenizer(dir)?;
    Ok(config)
}

/// Convert a Llama checkpoint written by [`write_random_checkpoint`] into an
/// f32 GGUF file the way llama.cpp's converter does: llama.cpp tensor names,
/// Q and K rows permuted for interleaved RoPE, the vocabulary as `gpt2` BPE.
pub fn convert_llama_to_gguf(dir: &Path, out: &Path) -> Result<()> {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let dev = Device::Cpu;
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &dev)?;
    let get = |name: &str| -> Result<Tensor> {
        st.get(name)
            .ok_or_else(|| crate::error::EngineError::Load(format!("missing {name}")))?
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
        tensors.push((gg("attn_norm.weight"), get(&hf("input_layernorm.weight"))?));
        tensors.push((
            gg("ffn_norm.weight"),
            get(&hf("post_attention_layernorm.weight"))?,
        ));
        tensors.push((
            gg("attn_q.weight"),
            permute(get(&hf("self_attn.q_proj.weight"))?, HEADS)?,
        ));
        tensors.push((
            gg("attn_k.weight"),
            permute(get(&hf("self_attn.k_proj.weight"))?, KV_HEADS)?,
        ));
        tensors.push((gg("attn_v.weight"), get(&hf("self_attn.v_proj.weight"))?));
        tensors.push((
            gg("attn_output.weight"),
            get(&hf("self_attn.o_proj.weight"))?,
        ));
        tensors.push((gg("ffn_gate.weight"), get(&hf("mlp.gate_proj.weight"))?));
        tensors.push((gg("ffn_up.weight"), get(&hf("mlp.up_proj.weight"))?));
        tensors.push((gg("ffn_down.weight"), get(&hf("mlp.down_proj.weight"))?));
    }
    let qtensors = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), QTensor::quantize(t, GgmlDType::F32)?)))
        .collect::<Result<Vec<_>>>()?;
    // The vocabulary: the 256 byte symbols, then the three specials.
    let tk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json"))?)
            .map_err(|e| crate::error::EngineError::Load(e.to_string()))?;
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
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u(LAYERS)),
        ("llama.context_length", u(512)),
        ("llama.embedding_length", u(HIDDEN)),
        ("llama.feed_forward_length", u(FFN)),
        ("llama.attention.head_count", u(HEADS)),
        ("llama.attention.head_count_kv", u(KV_HEADS)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
        ("llama.vocab_size", u(VOCAB)),
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
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out)?;
    candle_core::quantized::gguf_file::write(&mut f, &md, &ts)?;
    Ok(())
}
