//! Our paged, batched Llama forward against candle-transformers' own
//! `quantized_llama` on the same SmolLM2 GGUF: prefill logits and 32 greedy steps.
//!
//! Both quantize activations to 8 bits before every matmul, so a one-ulp
//! difference anywhere (summation order: our Q4_1 kernel is not candle's) can
//! flip a rounding and move logits by ~0.5. Prefill logits are therefore
//! judged against the exact computation: candle-transformers on the same
//! weights dequantized to f32 (no activation quantization). Ours must be as
//! close to it as candle's own quantized path is, with the same argmax. The
//! greedy prompts below have no near-ties in 32 steps, so there the tokens
//! must equal candle's quantized run exactly.

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

/// The same weights dequantized into an f32 GGUF: candle-transformers then
/// runs plain f32 matmuls (the exact result the quantized paths approximate).
fn exact_reference() -> ModelWeights {
    let path = dequantized_copy(SMOLLM2);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let _ = std::fs::remove_file(&path);
    model
}

/// Mean and max |a - b|.
fn error(a: &[f32], b: &[f32]) -> (f32, f32) {
    let diffs: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    (
        diffs.iter().sum::<f32>() / diffs.len() as f32,
        diffs.iter().cloned().fold(0.0, f32::max),
    )
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

/// Quantized inference is noisy against exact f32 logits, and how noisy
/// depends on the prompt: one ulp of summation order moves which activations
/// round up, and prompts whose first tokens carry SmolLM2's outlier
/// activations swing most (candle's own quantized path has a mean error of
/// 0.42 on "The quick brown fox" and 0.09 on the Fibonacci prompt). So each
/// prompt must keep the exact model's top token and a bounded worst error,
/// and across prompts ours must be about as accurate as candle's.
#[test]
fn prefill_logits_match_candle_quantized_llama() {
    let loaded = load(SMOLLM2);
    let mut quantized = reference();
    let mut exact = exact_reference();
    let (mut ours_total, mut candle_total) = (0.0, 0.0);
    for prompt in PROMPTS {
        let tokens = loaded.tokenizer.encode(prompt, true).unwrap();
        let ours = prefill_logits(&loaded, &tokens);
        let truth = reference_logits(&mut exact, &tokens, 0);
        let candle = reference_logits(&mut quantized, &tokens, 0);
        let (ours_mean, ours_max) = error(&ours, &truth);
        let (candle_mean, candle_max) = error(&candle, &truth);
        println!(
            "{prompt:?}: {} tokens; vs exact f32: ours mean {ours_mean:.4} max {ours_max:.4}, \
             candle quantized mean {candle_mean:.4} max {candle_max:.4}",
            tokens.len()
        );
        assert!(
            ours_max < 2.0 && ours_mean < 0.6,
            "{prompt:?}: max |diff| {ours_max}, mean {ours_mean} against exact f32"
        );
        assert_eq!(argmax(&ours), argmax(&truth), "{prompt:?}");
        assert_eq!(argmax(&candle), argmax(&truth), "{prompt:?}");
        ours_total += ours_mean;
        candle_total += candle_mean;
    }
    assert!(
        ours_total <= 1.5 * candle_total + 0.05,
        "ours is less accurate ({ours_total}) than candle's quantized path ({candle_total}), summed over prompts"
    );
}

/// Greedy decoding through the engine (paged cache, scheduler, sampler)
/// equals the reference's greedy loop until a near-tie. Our kernels round
/// differently from candle's (exact activation sums, their own summation
/// order; as accurate overall, see above), so trajectories may split where
/// the reference's top two tokens are within 1.0 (the noise measured above)
/// and nowhere else; and together the prompts must agree on at least half of
/// their steps before splitting.
#[test]
fn greedy_tokens_match_candle_quantized_llama_for_32_steps() {
    let engine = engine(SMOLLM2, EngineConfig::default());
    let mut agreed_steps = 0;
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
        let diverged = got.iter().zip(&want).position(|(a, b)| a != b);
        println!("{prompt:?}: first divergence {diverged:?}");
        agreed_steps += diverged.unwrap_or(32);
        match diverged {
            None => {}
            Some(i) => assert!(
                gaps[i] < 1.0,
                "{prompt:?}: diverged at step {i} where the reference's top-2 gap is {} (not a near-tie)\n ours {got:?}\n want {want:?}",
                gaps[i]
            ),
        }
    }
    let total = 32 * PROMPTS.len();
    assert!(
        2 * agreed_steps >= total,
        "only {agreed_steps} of {total} steps agreed before the first split"
    );
}
