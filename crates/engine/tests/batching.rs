//! Engine-level behaviour on the real SmolLM2 model: batch invariance (alone vs
//! batched, chunked prefill on and off, after preemption), prefix reuse,
//! n>1 forks with copy-on-write, seeded sampling, stop strings, cancellation.
//!
//! SmolLM2's Q4_1 matmuls take the same per-row kernel at any batch size, so
//! greedy outputs must be identical token for token.

mod common;

use std::collections::HashMap;

use common::*;
use switchyard_engine::{Engine, EngineConfig, Event, FinishReason, GrammarSpec, SamplingParams};

fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let texts = [
        "Hi",
        "The capital of France is",
        "Write a haiku about the sea.",
        "def add(a, b):\n    return",
        "List the planets of the solar system in order from the sun, starting with Mercury and ending with Neptune, and say one fact about each.",
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30",
        "Translate to French: good morning, my friend.",
        "Once upon a time, in a kingdom far away, there lived a princess who loved to read books about dragons, knights and distant lands beyond the mountains.",
    ];
    texts
        .iter()
        .map(|t| engine.tokenizer().encode(t, true).unwrap())
        .collect()
}

/// The engine publishes stats after each step: poll until every block is free.
fn wait_all_blocks_free(e: &Engine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = e.stats();
        if st.running == 0 && st.waiting == 0 && st.kv_blocks_free == st.kv_blocks_total {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks not freed: {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

/// Submit everything at once, then collect each request's tokens.
fn run_batched(engine: &Engine, prompts: &[Vec<u32>], params: &SamplingParams) -> Vec<Vec<u32>> {
    let requests: Vec<_> = prompts
        .iter()
        .map(|p| (p.clone(), params.clone()))
        .collect();
    run_together(engine, &requests)
}

/// Submit requests with their own parameters at once; each one's tokens.
fn run_together(engine: &Engine, requests: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    let mut streams: Vec<_> = requests
        .iter()
        .map(|(p, params)| engine.submit(p.clone(), params.clone()).unwrap())
        .collect();
    streams
        .iter_mut()
        .map(|s| {
            let mut out = Vec::new();
            while let Some(ev) = s.blocking_next() {
                match ev {
                    Event::Delta { tokens, .. } => out.extend(tokens),
                    Event::Finished { .. } => break,
                    Event::Error { message } => panic!("{message}"),
                }
            }
            out
        })
        .collect()
}

#[test]
fn batch_invariance_chunking_and_preemption() {
    let alone_engine = engine(
        SMOLLM2,
        EngineConfig {
            prefix_caching: false,
            ..Default::default()
        },
    );
    let ps = prompts(&alone_engine);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| generate(&alone_engine, p.clone(), greedy(12)))
        .collect();
    drop(alone_engine);

    let variants = [
        (
            "batched, chunked prefill",
            EngineConfig {
                max_num_batched_tokens: 24,
                prefix_caching: false,
                ..Default::default()
            },
        ),
        (
            "batched, no chunking",
            EngineConfig {
                chunked_prefill: false,
                prefix_caching: false,
                ..Default::default()
            },
        ),
        (
            "batched, preempting",
            EngineConfig {
                num_blocks: Some(9),
                max_num_batched_tokens: 64,
                ..Default::default()
            },
        ),
    ];
    for (name, cfg) in variants {
        let e = engine(SMOLLM2, cfg);
        let batched = run_batched(&e, &ps, &greedy(12));
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a, b, "{name}: prompt {i} differs");
        }
        if name.contains("preempting") {
            assert!(
                e.stats().preemptions > 0,
                "the small pool should have forced preemption"
            );
        }
        wait_all_blocks_free(&e);
    }
}

#[test]
fn prefix_reuse_computes_fewer_tokens_with_same_output() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let ps = prompts(&e);
    let prompt = [ps[7].clone(), ps[4].clone()].concat();
    assert!(prompt.len() > 48);
    let first = generate(&e, prompt.clone(), greedy(8));
    let computed_first = e.stats().prompt_tokens_computed;
    let mut stream = e.submit(prompt.clone(), greedy(8)).unwrap();
    let (mut second, mut cached) = (Vec::new(), 0);
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Delta { tokens, .. } => second.extend(tokens),
            Event::Finished { usage, .. } => {
                cached = usage.cached_tokens;
                break;
            }
            Event::Error { message } => panic!("{message}"),
        }
    }
    let computed_second = e.stats().prompt_tokens_computed - computed_first;
    assert_eq!(first, second);
    assert_eq!(cached, (prompt.len() - 1) / 16 * 16);
    assert_eq!(computed_second, (prompt.len() - cached) as u64);
    assert!(computed_second < computed_first);
}

/// Cached tokens of one greedy run.
fn cached_tokens(e: &Engine, prompt: Vec<u32>, params: SamplingParams) -> usize {
    let mut stream = e.submit(prompt, params).unwrap();
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Finished { usage, .. } => return usage.cached_tokens,
            Event::Error { message } => panic!("{message}"),
            Event::Delta { .. } => {}
        }
    }
    panic!("stream ended without finishing")
}

#[test]
fn cache_salt_isolates_prefix_reuse() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let ps = prompts(&e);
    let prompt = [ps[7].clone(), ps[4].clone()].concat();
    let salted = |salt: &str| SamplingParams {
        cache_salt: Some(salt.into()),
        ..greedy(2)
    };
    let reusable = (prompt.len() - 1) / 16 * 16;
    assert_eq!(cached_tokens(&e, prompt.clone(), greedy(2)), 0);
    // Another tenant's salt sees none of the unsalted blocks, nor another salt's.
    assert_eq!(cached_tokens(&e, prompt.clone(), salted("tenant-a")), 0);
    assert_eq!(cached_tokens(&e, prompt.clone(), salted("tenant-b")), 0);
    // The same salt (and no salt) reuse their own.
    assert_eq!(
        cached_tokens(&e, prompt.clone(), salted("tenant-a")),
        reusable
    );
    assert_eq!(cached_tokens(&e, prompt.clone(), greedy(2)), reusable);
}

#[test]
fn max_model_len_caps_the_context_window() {
    let e = engine(
        SMOLLM2,
        EngineConfig {
            max_model_len: Some(64),
            ..Default::default()
        },
    );
    assert_eq!(e.context_length(), 64);
    let err = e.submit(vec![1; 60], greedy(8)).err().expect("refused");
    assert!(err.to_string().contains("64"), "{err}");
    assert_eq!(generate(&e, vec![1; 56], greedy(8)).len(), 8);
}

#[test]
fn constrained_and_unconstrained_sequences_batch_like_alone() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let ps = prompts(&e);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "planet": {"enum": ["Mercury", "Venus", "Earth", "Mars"]},
            "moons": {"type": "integer", "minimum": 0, "maximum": 99},
            "note": {"type": "string", "maxLength": 12}
        },
        "required": ["planet", "moons", "note"],
        "additionalProperties": false
    });
    let grammar = e
        .compile_grammar(&GrammarSpec::JsonSchema(schema.clone()))
        .expect("schema compiles");
    let constrained = SamplingParams {
        grammar: Some(grammar),
        ..greedy(48)
    };
    let free = greedy(24);
    let alone_constrained = generate(&e, ps[4].clone(), constrained.clone());
    let alone_free = generate(&e, ps[2].clone(), free.clone());
    let together = run_together(
        &e,
        &[
            (ps[4].clone(), constrained.clone()),
            (ps[2].clone(), free.clone()),
            (ps[4].clone(), constrained.clone()),
        ],
    );
    assert_eq!(together[0], alone_constrained);
    assert_eq!(together[1], alone_free);
    assert_eq!(together[2], alone_constrained);
    // The constrained output is complete JSON with the schema's shape (the
    // independent JSON-schema check runs in the end-to-end property test).
    let text = e.tokenizer().decode(&alone_constrained, true);
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let fields = value.as_object().expect("an object");
    assert_eq!(fields.len(), 3, "{text}");
    assert!(["Mercury", "Venus", "Earth", "Mars"].contains(&value["planet"].as_str().unwrap()));
    assert!((0..=99).contains(&value["moons"].as_i64().unwrap()));
    assert!(value["note"].as_str().unwrap().chars().count() <= 12);
    // An unsupported or invalid grammar is refused with the reason.
    let err = e
        .compile_grammar(&GrammarSpec::JsonSchema(
            serde_json::json!({"type": "wizard"}),
        ))
        .expect_err("invalid schema");
    assert!(err.to_string().contains("wizard"), "{err}");
    wait_all_blocks_free(&e);
}

#[test]
fn n_choices_share_the_prompt_and_match_single_runs() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let prompt = prompts(&e)[2].clone();
    let single = generate(&e, prompt.clone(), greedy(10));
    // Greedy n=3: forks share blocks, copy-on-write keeps them apart; all equal the single run.
    let mut stream = e
        .submit(prompt.clone(), SamplingParams { n: 3, ..greedy(10) })
        .unwrap();
    let mut outs: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut finished = 0;
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Delta { choice, tokens, .. } => outs.entry(choice).or_default().extend(tokens),
            Event::Finished { .. } => {
                finished += 1;
                if finished == 3 {
                    break;
                }
            }
            Event::Error { message } => panic!("{message}"),
        }
    }
    assert_eq!(outs.len(), 3);
    for c in 0..3 {
        assert_eq!(outs[&c], single, "choice {c}");
    }
    wait_all_blocks_free(&e);
}

#[test]
fn same_seed_same_sample_batched_or_not() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let ps = prompts(&e);
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(42),
        ignore_eos: true,
        max_tokens: 10,
        ..Default::default()
    };
    let alone = generate(&e, ps[1].clone(), params.clone());
    let batched = run_batched(&e, &ps[..4], &params);
    assert_eq!(alone, batched[1]);
    let other_seed = generate(
        &e,
        ps[1].clone(),
        SamplingParams {
            seed: Some(7),
            ..params
        },
    );
    assert_ne!(alone, other_seed);
}

#[test]
fn stop_strings_end_output_before_the_match() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let prompt = e.tokenizer().encode("1 2 3 4 5 6", true).unwrap();
    let full: String = {
        let toks = generate(&e, prompt.clone(), greedy(12));
        e.tokenizer().decode(&toks, true)
    };
    // Stop at the second occurrence-free piece of the continuation.
    let stop = full.trim_start().split(' ').nth(2).unwrap().to_string();
    let mut stream = e
        .submit(
            prompt,
            SamplingParams {
                stop: vec![stop.clone()],
                ..greedy(12)
            },
        )
        .unwrap();
    let mut text = String::new();
    let mut reason = None;
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Delta { text: t, .. } => text.push_str(&t),
            Event::Finished { reason: r, .. } => {
                reason = Some(r);
                break;
            }
            Event::Error { message } => panic!("{message}"),
        }
    }
    assert_eq!(reason, Some(FinishReason::Stop));
    assert_eq!(
        text,
        full[..full.find(&stop).unwrap()],
        "full: {full:?}, stop {stop:?}"
    );
}

#[test]
fn dropping_a_stream_cancels_and_frees_blocks() {
    let e = engine(SMOLLM2, EngineConfig::default());
    let prompt = prompts(&e)[4].clone();
    let mut s = e.submit(prompt, greedy(200)).unwrap();
    // Wait for the first token, then walk away.
    assert!(matches!(s.blocking_next(), Some(Event::Delta { .. })));
    drop(s);
    wait_all_blocks_free(&e);
    // A too-long request is refused with the numbers.
    let err = e
        .submit(vec![1; 10], greedy(1_000_000))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("8192") && err.contains("1000010"), "{err}");
}
