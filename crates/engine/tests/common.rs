//! Helpers shared by the engine's integration tests: the fetched models.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use switchyard_engine::internals::SeqView;
use switchyard_engine::{Device, Engine, EngineConfig, Event, LoadedModel, SamplingParams};

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// Path of a default model; panics with the fix when it was not fetched.
pub fn model_path(file: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let p = root.join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models first",
        p.display()
    );
    p
}

pub fn load(file: &str) -> LoadedModel {
    LoadedModel::from_gguf(&model_path(file), &Device::Cpu).expect("model loads")
}

pub fn engine(file: &str, cfg: EngineConfig) -> Arc<Engine> {
    Arc::new(Engine::start(file, load(file), cfg).expect("engine starts"))
}

/// Output tokens of one choice, run to completion.
pub fn generate(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> Vec<u32> {
    let mut stream = engine.submit(prompt, params).expect("submit");
    let mut out = Vec::new();
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Delta { tokens, .. } => out.extend(tokens),
            Event::Finished { .. } => break,
            Event::Error { message } => panic!("engine error: {message}"),
        }
    }
    out
}

/// Last-position logits of one whole-prompt prefill through our model, with a
/// fresh cache whose block table is deliberately out of order.
pub fn prefill_logits(loaded: &LoadedModel, tokens: &[u32]) -> Vec<f32> {
    let blocks = tokens.len().div_ceil(16);
    let mut cache = loaded
        .model
        .new_kv_store(blocks, 16, switchyard_engine::KvBackend::Auto)
        .expect("kv store");
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let seqs = [SeqView {
        token_range: 0..tokens.len(),
        start_pos: 0,
        block_table: &table,
    }];
    loaded
        .model
        .forward(tokens, &seqs, &[tokens.len() - 1], &mut cache)
        .expect("forward")
        .remove(0)
}

/// The model's weights dequantized into an f32 GGUF in the temp directory
/// (the caller removes it): a model loaded from it runs plain f32 matmuls,
/// the exact result that every quantized path approximates.
pub fn dequantized_copy(file: &str) -> PathBuf {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let mut source = std::fs::File::open(model_path(file)).unwrap();
    let content = gguf_file::Content::read(&mut source).unwrap();
    let tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content
                .tensor(&mut source, name, &candle_core::Device::Cpu)
                .unwrap();
            let f32 = t.dequantize(&candle_core::Device::Cpu).unwrap();
            (
                name.clone(),
                QTensor::quantize(&f32, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    // One file per call: tests of one process run in parallel, and
    // rewriting a file another test has mapped would fault it (SIGBUS).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!(
        "switchyard-f32-{}-{call}-{file}",
        std::process::id()
    ));
    let md: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(&out).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
    out
}

/// Largest elementwise |a - b|.
#[allow(dead_code)] // not every test binary uses it
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
