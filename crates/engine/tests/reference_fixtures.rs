//! Checks against fixtures recorded from llama.cpp, an independent
//! implementation (`scripts/record-fixtures` rebuilds them):
//! tokenizer ids for tricky strings on both default models, and Gemma 3's
//! greedy continuations.

mod common;

use common::*;
use serde_json::Value;
use switchyard_engine::{EngineConfig, SamplingParams};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check_tokenizer(model_key: &str, file: &str) {
    let loaded = load(file);
    let fx = fixture("tokenizer.json");
    let mut failures = Vec::new();
    for case in fx["models"][model_key].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = loaded.tokenizer.encode(text, true).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  ours {got:?}\n  llama.cpp {want:?}"));
        }
        // Decoding gives the text back (BOS aside).
        let body = if got.first() == want.first()
            && loaded
                .tokenizer
                .bos_text()
                .is_some_and(|b| !text.starts_with(&b))
            && want.len() > 1
            && loaded.tokenizer.is_control(want[0])
        {
            &got[1..]
        } else {
            &got[..]
        };
        assert_eq!(loaded.tokenizer.decode(body, false), text, "round trip");
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    check_tokenizer("smollm2", SMOLLM2);
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    check_tokenizer("gemma3", GEMMA3);
}

/// Greedy ids equal llama.cpp's, step for step. As with SmolLM2 (see
/// `llama_reference.rs`), quantized activations make tiny numeric differences
/// (summation order) visible, so the runs may part only at a near-tie, seen
/// from both sides: llama.cpp's own top-2 gap there is under 0.5 (llama.cpp's
/// `llama-simple` and its Python bindings part at a gap of 0.25 on the chat
/// prompt), and in our logits at that step llama.cpp's token is within 1.5 of
/// our best (the prefill-logit noise band of `llama_reference.rs`; measured
/// at most 1.24, on that chat prompt, 0.97 before our own Q4_1/Q5_0 paths).
/// At least two prompts must agree on all 32 steps (measured: 2 of 7, the
/// others part at llama.cpp gaps of 0.009 to 0.25). The 794-token prompt,
/// past the sliding window, may part only at a coin flip of the exact
/// computation (f32 weights): a top-2 gap under 0.1 there, between the two
/// tokens. It parts at its first step, where the exact gap is 0.043 and
/// llama.cpp's 0.18 (it parted at step 4 on a 0.015 gap before our tiled
/// K-quant kernels and fused GELU); its prefill logits are checked below.
#[test]
fn gemma3_greedy_matches_llama_cpp() {
    let e = engine(GEMMA3, EngineConfig::default());
    let loaded = load(GEMMA3);
    let cases = fixture("gemma3_greedy.json")["cases"]
        .as_array()
        .unwrap()
        .clone();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut full = 0;
    for case in &cases {
        let prompt = case["prompt"].as_str().unwrap();
        let tokens = e.tokenizer().encode(prompt, true).unwrap();
        assert_eq!(tokens, ids(&case["prompt_ids"]), "{prompt:?}: prompt ids");
        let tokens_len = tokens.len();
        let want = ids(&case["greedy_ids"]);
        let gaps: Vec<f64> = case["top2_gap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let got = generate(
            &e,
            tokens,
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(32)
            },
        );
        let diverged = got.iter().zip(&want).position(|(a, b)| a != b);
        let short: String = prompt.chars().take(40).collect();
        println!(
            "{short:?}: diverged at {diverged:?} (gap there {:?})",
            diverged.map(|i| gaps[i])
        );
        if let (true, Some(i)) = (tokens_len > 512, diverged) {
            // A coin flip of the exact computation (f32 weights, no
            // activation rounding), where either side may fall.
            let mut prefix = ids(&case["prompt_ids"]);
            prefix.extend_from_slice(&got[..i]);
            let logits = prefill_logits(&exact_gemma3(), &prefix);
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let exact_gap = logits[order[0]] - logits[order[1]];
            assert!(
                exact_gap < 0.1 && [got[i], want[i]].iter().all(|&t| order[..2].contains(&(t as usize))),
                "the long prompt may part only at a coin flip of the exact logits (gap {exact_gap}, llama.cpp's {})",
                gaps[i]
            );
        }
        match diverged {
            None => full += 1,
            Some(i) => {
                assert!(
                    gaps[i] < 0.5,
                    "{prompt:?}: step {i} differs where llama.cpp's top-2 gap is {} (not a near-tie)\n ours {:?}\n want {:?}",
                    gaps[i],
                    e.tokenizer().decode(&got, false),
                    e.tokenizer().decode(&want, false)
                );
                let mut prefix = ids(&case["prompt_ids"]);
                prefix.extend_from_slice(&got[..i]);
                let logits = prefill_logits(&loaded, &prefix);
                let best = logits.iter().cloned().fold(f32::MIN, f32::max);
                let theirs = logits[want[i] as usize];
                assert!(
                    best - theirs < 1.5,
                    "{prompt:?}: at step {i} llama.cpp's token is {} below our best (not a near-tie for us)",
                    best - theirs
                );
            }
        }
    }
    assert!(
        full >= 2,
        "only {full} of {} prompts agreed on all 32 steps",
        cases.len()
    );
}

/// Gemma 3 on its weights dequantized to f32: the exact computation that
/// ours and llama.cpp's quantized paths both approximate.
fn exact_gemma3() -> switchyard_engine::LoadedModel {
    let path = dequantized_copy(GEMMA3);
    let exact = switchyard_engine::LoadedModel::from_gguf(&path, &switchyard_engine::Device::Cpu)
        .expect("f32 copy loads");
    let _ = std::fs::remove_file(&path);
    exact
}

/// Prefill logits of llama.cpp's top-10 tokens, including a prompt longer than
/// the 512-token sliding window, agree with ours within quantization noise:
/// within 1.0 of llama.cpp's (a wrong layer or mask moves them by many
/// units), within 1.25 of the exact logits (our own forward pass on the
/// weights dequantized to f32) on every prompt, and no further from them
/// than llama.cpp's summed over the prompts (measured 1.94 against 2.84
/// over seven prompts with the AVX-512 kernels, ours the closer on four;
/// 2.65 with the AVX2 ones, the closer on five). Both quantize
/// activations to 8 bits, llama.cpp per 256 values for K-quant layers and
/// ours per 32, so the two part by up to the sum of their errors: measured
/// up to 0.92 (0.67 now, on a prompt where ours is 0.13 from exact and
/// llama.cpp 0.71). Which activations round up or down near a tie depends
/// on the order the CPU's kernels sum in, so one prompt's error is a draw:
/// on the 14-token prompt where llama.cpp is 0.62 off, ours measured 0.65
/// with the AVX-512 kernels and 1.08 with the AVX2 ones (the bound was 0.75
/// until an AVX2-only machine ran it); the sum is the stable comparison.
#[test]
fn gemma3_prefill_logits_match_llama_cpp() {
    let loaded = load(GEMMA3);
    let exact = exact_gemma3();
    let (mut ours_total, mut theirs_total) = (0f32, 0f32);
    for case in fixture("gemma3_greedy.json")["cases"].as_array().unwrap() {
        let tokens: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ours = prefill_logits(&loaded, &tokens);
        let top = case["prompt_top10_logits"].as_array().unwrap();
        let mut max_diff = 0.0f32;
        for pair in top {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            max_diff = max_diff.max((ours[id] - logit).abs());
        }
        let exact_logits = prefill_logits(&exact, &tokens);
        let (mut ours_off, mut theirs_off) = (0f32, 0f32);
        for pair in top {
            let id = pair[0].as_u64().unwrap() as usize;
            ours_off = ours_off.max((ours[id] - exact_logits[id]).abs());
            theirs_off =
                theirs_off.max((pair[1].as_f64().unwrap() as f32 - exact_logits[id]).abs());
        }
        println!(
            "{} prompt tokens: max |diff| over llama.cpp's top 10: {max_diff:.3}; from exact: ours {ours_off:.3}, llama.cpp {theirs_off:.3}",
            tokens.len()
        );
        assert!(
            max_diff < 1.0,
            "{} tokens: max |diff| {max_diff}",
            tokens.len()
        );
        assert!(
            ours_off < 1.25,
            "{} tokens: ours is {ours_off} from the exact logits",
            tokens.len()
        );
        ours_total += ours_off;
        theirs_total += theirs_off;
        let best = top[0][0].as_u64().unwrap() as usize;
        let second = top[1][1].as_f64().unwrap() as f32;
        if top[0][1].as_f64().unwrap() as f32 - second > 0.5 {
            let ours_best = (0..ours.len())
                .max_by(|&a, &b| ours[a].total_cmp(&ours[b]))
                .unwrap();
            assert_eq!(ours_best, best, "argmax");
        }
    }
    assert!(
        ours_total <= theirs_total,
        "summed over prompts, ours is {ours_total} from the exact logits, llama.cpp {theirs_total}"
    );
}
