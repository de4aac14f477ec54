//! Our paged, batched Llama forward against candle-transformers' own
//! `quantized_llama` on the same SmolLM2 GGUF: prefill logits and 32 greedy steps.
//!
//! Tolerances: both implementations quantize activations to Q8_1 before every
//! matmul, so a one-ulp difference in attention (different summation order)
//! can flip a rounding and move logits by ~0.5 (measured: scaling the
//! attention by 1+1e-6 in our own model moves them by 0.46). Up to 8 tokens
//! the two agree bit for bit. So: argmax equal, mean |diff| small, max |diff|
//! bounded; and the greedy prompts below have no near-ties in 32 steps.

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use common::*;
use switchyard_engine::{EngineConfig, SamplingParams};

const PROMPTS: &[&str] = &[
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
    "<|im_start|>user\nList three colors.<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 5, 8, 13,",
];

fn reference() -> ModelWeights {
    let path = model_path(SMOLLM2);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap()
}

fn reference_logits(m: &mut ModelWeights, tokens: &[u32], pos: usize) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&input, pos)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn prefill_logits_match_candle_quantized_llama() {
    let loaded = load(SMOLLM2);
    for prompt in PROMPTS {
        let tokens = loaded.tokenizer.encode(prompt, true).unwrap();
        let ours = [prefill_logits(&loaded, &tokens)];
        let theirs = reference_logits(&mut reference(), &tokens, 0);
        let diffs: Vec<f32> = ours[0]
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max_diff = diffs.iter().cloned().fold(0.0, f32::max);
        let mean_diff = diffs.iter().sum::<f32>() / diffs.len() as f32;
        println!(
            "{prompt:?}: {} tokens, max |diff| {max_diff:.4}, mean {mean_diff:.4}",
            tokens.len()
        );
        assert!(
            max_diff < 1.5 && mean_diff < 0.25,
            "{prompt:?}: max |diff| {max_diff}, mean {mean_diff}"
        );
        if tokens.len() <= 8 {
            assert_eq!(max_diff, 0.0, "short prompts agree exactly");
        }
        assert_eq!(argmax(&ours[0]), argmax(&theirs), "{prompt:?}");
    }
}

/// Greedy decoding through the engine (paged cache, scheduler, sampler)
/// equals the reference's greedy loop. A divergence is only accepted at a
/// near-tie of the reference (top-2 gap under 1.0, the noise measured above),
/// and most prompts must agree on all 32 steps.
#[test]
fn greedy_tokens_match_candle_quantized_llama_for_32_steps() {
    let engine = engine(SMOLLM2, EngineConfig::default());
    let mut full_matches = 0;
    for prompt in PROMPTS {
        let tokens = engine.tokenizer().encode(prompt, true).unwrap();
        let mut reference = reference();
        let (mut want, mut gaps) = (Vec::new(), Vec::new());
        let mut logits = reference_logits(&mut reference, &tokens, 0);
        for step in 0..32 {
            let next = argmax(&logits) as u32;
            let mut sorted = logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            gaps.push(sorted[0] - sorted[1]);
            want.push(next);
            logits = reference_logits(&mut reference, &[next], tokens.len() + step);
        }
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(32)
        };
        let got = generate(&engine, tokens, params);
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => full_matches += 1,
            Some(i) => assert!(
                gaps[i] < 1.0,
                "{prompt:?}: diverged at step {i} where the reference's top-2 gap is {} (not a near-tie)\n ours {got:?}\n want {want:?}",
                gaps[i]
            ),
        }
    }
    assert!(
        full_matches >= 3,
        "only {full_matches} prompts agreed on all 32 steps"
    );
}
