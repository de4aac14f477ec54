//! Safetensors checkpoints of the Qwen2, Qwen3, Qwen3-MoE, Gemma 3 and
//! DeepSeek-V2/V3 families (and Llama in Hugging Face layout, with Llama 3 RoPE), written by the test with random weights and real
//! config keys, loaded through the same path users use
//! (`LoadedModel::load` on a folder), checked against candle-transformers' own
//! implementation of each family on the same weights.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::prefill_logits;
use switchyard_engine::{Engine, EngineConfig, LoadedModel, SamplingParams};
use switchyard_testkit::{write_random_checkpoint, MlaLayout};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn write_checkpoint(model_type: &str, tied: bool) -> (PathBuf, serde_json::Value) {
    let dir = tmp_dir(model_type);
    let config = write_random_checkpoint(&dir, model_type, tied).unwrap();
    (dir, config)
}

/// Logits of the last position from candle-transformers' model of the family.
fn reference_logits(
    model_type: &str,
    dir: &Path,
    config: &serde_json::Value,
    tokens: &[u32],
) -> Vec<f32> {
    let dev = Device::Cpu;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
            .unwrap()
    };
    let input = Tensor::new(tokens, &dev).unwrap().unsqueeze(0).unwrap();
    let out = match model_type {
        "qwen2" => {
            use candle_transformers::models::qwen2;
            let cfg: qwen2::Config = serde_json::from_value(config.clone()).unwrap();
            qwen2::ModelForCausalLM::new(&cfg, vb)
                .unwrap()
                .forward(&input, 0)
                .unwrap()
        }
        "qwen3" => {
            use candle_transformers::models::qwen3;
            let cfg: qwen3::Config = serde_json::from_value(config.clone()).unwrap();
            qwen3::ModelForCausalLM::new(&cfg, vb)
                .unwrap()
                .forward(&input, 0)
                .unwrap()
        }
        "qwen3_moe" => {
            use candle_transformers::models::qwen3_moe;
            let cfg: qwen3_moe::Config = serde_json::from_value(config.clone()).unwrap();
            qwen3_moe::ModelForCausalLM::new(&cfg, vb)
                .unwrap()
                .forward(&input, 0)
                .unwrap()
        }
        "deepseek_v2" => {
            use candle_transformers::models::deepseek2;
            let cfg: deepseek2::DeepSeekV2Config = serde_json::from_value(config.clone()).unwrap();
            let out = deepseek2::DeepSeekV2::new(&cfg, vb)
                .unwrap()
                .forward(&input, 0)
                .unwrap();
            return out.flatten_all().unwrap().to_vec1().unwrap();
        }
        "gemma3_text" => {
            use candle_transformers::models::gemma3;
            let cfg: gemma3::Config = serde_json::from_value(config.clone()).unwrap();
            gemma3::Model::new(false, &cfg, vb)
                .unwrap()
                .forward(&input, 0)
                .unwrap()
        }
        "llama3" => {
            use candle_transformers::models::llama;
            let cfg: llama::LlamaConfig = serde_json::from_value(config.clone()).unwrap();
            let cfg = cfg.into_config(false);
            let mut cache = llama::Cache::new(false, DType::F32, &cfg, &dev).unwrap();
            llama::Llama::load(vb, &cfg)
                .unwrap()
                .forward(&input, 0, &mut cache)
                .unwrap()
        }
        // No independent implementation of DeepSeek-V3's gate exists in
        // candle-transformers: the reference is our own full-prompt prefill,
        // which checks the cache paths (chunked, batched, decode) against it.
        "deepseek_v3" => {
            let loaded = LoadedModel::load(dir, &Device::Cpu).unwrap();
            return prefill_logits(&loaded, tokens);
        }
        other => panic!("no reference for {other}"),
    };
    out.flatten_all().unwrap().to_vec1().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32
}

fn check_family(model_type: &str, tied: bool) {
    let (dir, config) = write_checkpoint(model_type, tied);
    let loaded = LoadedModel::load(&dir, &Device::Cpu).expect("the folder loads");
    let prompts: Vec<Vec<u32>> = vec![
        (0..7).map(|i| (i * 37 % 250) as u32).collect(),
        (0..23).map(|i| (i * 11 % 250 + 3) as u32).collect(),
        vec![257, 117, 115, 101, 114, 10, 72, 105, 258, 10],
    ];
    for tokens in &prompts {
        let ours = prefill_logits(&loaded, tokens);
        let theirs = reference_logits(model_type, &dir, &config, tokens);
        let max_diff = common::max_abs_diff(&ours, &theirs);
        assert!(
            max_diff < 1e-3,
            "{model_type}: {} tokens, max |diff| {max_diff}",
            tokens.len()
        );
        assert_eq!(argmax(&ours), argmax(&theirs));
    }
    // Greedy through the engine equals the reference's greedy loop, alone and batched.
    let engine = Engine::start(
        model_type,
        loaded,
        EngineConfig {
            max_num_batched_tokens: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(8)
    };
    let mut wants = Vec::new();
    for tokens in &prompts {
        let mut ctx = tokens.clone();
        for _ in 0..8 {
            let next = argmax(&reference_logits(model_type, &dir, &config, &ctx));
            ctx.push(next);
        }
        wants.push(ctx[tokens.len()..].to_vec());
    }
    for (tokens, want) in prompts.iter().zip(&wants) {
        assert_eq!(
            &common::generate(&engine, tokens.clone(), params.clone()),
            want,
            "{model_type} alone"
        );
    }
    let mut streams: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(p.clone(), params.clone()).unwrap())
        .collect();
    for (s, want) in streams.iter_mut().zip(&wants) {
        let mut got = Vec::new();
        while let Some(ev) = s.blocking_next() {
            match ev {
                switchyard_engine::Event::Delta { tokens, .. } => got.extend(tokens),
                switchyard_engine::Event::Finished { .. } => break,
                switchyard_engine::Event::Error { message } => panic!("{message}"),
            }
        }
        assert_eq!(&got, want, "{model_type} batched");
    }
    // The tokenizer and chat template came from the folder too.
    assert_eq!(
        engine.tokenizer().encode("Hi", false).unwrap(),
        vec![72, 105]
    );
    assert!(engine.tokenizer().eog_tokens().contains(&258));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qwen2_safetensors_matches_candle_transformers() {
    check_family("qwen2", false);
}

#[test]
fn qwen3_safetensors_matches_candle_transformers() {
    check_family("qwen3", true);
}

#[test]
fn qwen3_moe_safetensors_matches_candle_transformers() {
    check_family("qwen3_moe", false);
}

/// MLA (low-rank queries, YaRN RoPE with both mscales), a dense first layer,
/// shared + routed experts with a scaled softmax gate.
#[test]
fn deepseek_v2_safetensors_matches_candle_transformers() {
    check_family("deepseek_v2", false);
}

/// Full-rank queries, sigmoid `noaux_tc` gate with correction bias and expert groups.
#[test]
fn deepseek_v3_safetensors_cache_paths_match_full_prefill() {
    check_family("deepseek_v3", true);
}

/// Norms stored as offsets from one, query_pre_attn_scalar, local/global RoPE
/// bases, final soft-capping.
#[test]
fn gemma3_safetensors_matches_candle_transformers() {
    check_family("gemma3_text", true);
}

/// Llama 3.1 RoPE scaling (low/high frequency bands).
#[test]
fn llama3_rope_scaling_matches_candle_transformers() {
    check_family("llama3", false);
}

/// Two loads of the same weights give the same prefill logits (within `tol`)
/// on a short prompt and on one of `long` tokens.
fn assert_same_logits(a: &LoadedModel, b: &LoadedModel, long: usize, tol: f32, what: &str) {
    for tokens in [
        vec![5u32, 77, 200, 13],
        (0..long).map(|i| (i * 7 % 250) as u32).collect(),
    ] {
        let max_diff =
            common::max_abs_diff(&prefill_logits(a, &tokens), &prefill_logits(b, &tokens));
        assert!(
            max_diff < tol,
            "{what}, {} tokens: max |diff| {max_diff}",
            tokens.len()
        );
    }
}

/// The same random Llama as a safetensors folder and as an f32 GGUF (Q/K
/// permuted as llama.cpp's converter does) gives the same logits.
#[test]
fn llama_gguf_and_safetensors_agree() {
    let (dir, _) = write_checkpoint("llama", false);
    let gguf = dir.join("model-f32.gguf");
    switchyard_testkit::convert_to_gguf(&dir, "llama", &gguf, GgmlDType::F32, MlaLayout::Split)
        .unwrap();
    let from_st = LoadedModel::load(&dir, &Device::Cpu).unwrap();
    let from_gguf = LoadedModel::load(&gguf, &Device::Cpu).unwrap();
    assert_same_logits(&from_st, &from_gguf, 40, 1e-3, "llama f32");
    assert_eq!(
        from_st.tokenizer.encode("Hi there", false).unwrap(),
        from_gguf.tokenizer.encode("Hi there", false).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Qwen3-MoE as llama.cpp writes it (`qwen3moe`, experts stacked in one
/// `ffn_*_exps` tensor per layer) loads expert by expert and matches the
/// safetensors folder: exactly in f32, within quantization error in Q8_0.
#[test]
fn qwen3_moe_gguf_with_stacked_experts_matches_safetensors() {
    let dir = tmp_dir("qwen3_moe-gguf");
    write_random_checkpoint(&dir, "qwen3_moe", false).unwrap();
    let from_st = LoadedModel::load(&dir, &Device::Cpu).unwrap();
    for (dtype, tol) in [(GgmlDType::F32, 1e-3), (GgmlDType::Q8_0, 0.15)] {
        let gguf = dir.join(format!("model-{dtype:?}.gguf"));
        switchyard_testkit::convert_to_gguf(&dir, "qwen3_moe", &gguf, dtype, MlaLayout::Split)
            .unwrap();
        let from_gguf = LoadedModel::load(&gguf, &Device::Cpu).unwrap();
        assert_eq!(from_gguf.model.config().moe, from_st.model.config().moe);
        assert_same_logits(&from_st, &from_gguf, 30, tol, &format!("{dtype:?}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// DeepSeek as llama.cpp writes it (`deepseek2`): MLA in both of llama.cpp's
/// layouts (split `attn_k_b`/`attn_v_b` with the latent as one KV head, and
/// the older fused `attn_kv_b`), stacked routed experts, shared experts, the
/// gate and YaRN from `deepseek2.*` keys. Matches the safetensors folder
/// (itself checked against candle-transformers above): exactly in f32,
/// within quantization error in Q8_0.
#[test]
fn deepseek_gguf_in_both_mla_layouts_matches_safetensors() {
    for family in ["deepseek_v2", "deepseek_v3"] {
        let dir = tmp_dir(&format!("{family}-gguf"));
        let mut config = write_random_checkpoint(&dir, family, false).unwrap();
        // GGUF (llama.cpp) assumes YaRN's mscale equals mscale_all_dim, as in
        // every released DeepSeek config; the random V2 checkpoint differs.
        if config["rope_scaling"].is_object() {
            config["rope_scaling"]["mscale"] = config["rope_scaling"]["mscale_all_dim"].clone();
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        }
        let from_st = LoadedModel::load(&dir, &Device::Cpu).unwrap();
        for (layout, dtype, tol) in [
            (MlaLayout::Split, GgmlDType::F32, 1e-3),
            (MlaLayout::Fused, GgmlDType::F32, 1e-3),
            (MlaLayout::Split, GgmlDType::Q8_0, 0.15),
        ] {
            let gguf = dir.join(format!("model-{layout:?}-{dtype:?}.gguf"));
            switchyard_testkit::convert_to_gguf(&dir, family, &gguf, dtype, layout).unwrap();
            let from_gguf = LoadedModel::load(&gguf, &Device::Cpu).unwrap();
            let (a, b) = (from_st.model.config(), from_gguf.model.config());
            assert_eq!(a.mla, b.mla, "{family} {layout:?}");
            assert_eq!(a.moe, b.moe, "{family} {layout:?}");
            // (to 4 decimals: the GGUF stores 0.1 * mscale_all_dim)
            assert_eq!(
                format!("{:.4?}", a.rope_scaling),
                format!("{:.4?}", b.rope_scaling),
                "{family} {layout:?}"
            );
            assert_eq!(
                (a.num_kv_heads, a.head_dim, a.rope_dim, a.rope_neox),
                (b.num_kv_heads, b.head_dim, b.rope_dim, b.rope_neox)
            );
            assert!((a.attn_scale - b.attn_scale).abs() < 1e-6);
            let what = format!("{family} {layout:?} {dtype:?}");
            assert_same_logits(&from_st, &from_gguf, 150, tol, &what);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
