//! `switchyard route` (the dry run) on the default catalog: objectives, scope,
//! context-window exclusion and unknown quality, without running a model.

use std::io::Write;
use std::process::Command;

use serde_json::{json, Value};

fn preview(requests: &[Value]) -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf").exists(),
        "the default models are missing: run scripts/fetch-models"
    );
    let mut input = tempfile_path();
    {
        let mut f = std::fs::File::create(&input).unwrap();
        for r in requests {
            writeln!(f, "{r}").unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(&root)
        .args(["route", "--config", "models.toml", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&mut input);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "switchyard-route-{}-{:?}.jsonl",
        std::process::id(),
        std::thread::current().id()
    ))
}

fn chat(model: &str, text: &str, extra: Value) -> Value {
    let mut v =
        json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 64});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn winner(record: &Value) -> String {
    record["decision"]["order"][0]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

fn candidate<'a>(record: &'a Value, model: &str) -> &'a Value {
    record["decision"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == model)
        .unwrap()
}

const KNOWLEDGE: &str = "What is the capital of Australia?";

#[test]
fn objectives_pick_different_models_on_the_same_prompt() {
    let out = preview(&[
        chat("auto:quality", KNOWLEDGE, json!({})),
        chat("auto:cost", KNOWLEDGE, json!({})),
        chat("auto:latency", KNOWLEDGE, json!({})),
    ]);
    assert_eq!(
        out[0]["decision"]["classification"]["family"],
        "knowledge_qa"
    );
    // SmolLM2 has the better knowledge evidence (MMLU 29.3 vs TriviaQA 15.4);
    // Gemma 3 270M is the faster, so the cheaper, at the same $/hour.
    assert_eq!(winner(&out[0]), "smollm2-135m-instruct");
    assert_eq!(winner(&out[1]), "gemma-3-270m");
    assert_eq!(winner(&out[2]), "gemma-3-270m");
    for r in &out {
        for c in r["decision"]["candidates"].as_array().unwrap() {
            assert!(
                c["scores"].is_object()
                    && c["total"].is_number()
                    && c["predicted_cost_usd"].is_number()
            );
        }
    }
}

#[test]
fn scope_exclude_context_window_and_unknown_quality() {
    let out = preview(&[
        chat(
            "auto:quality",
            KNOWLEDGE,
            json!({"routing": {"models": ["gemma-3-270m"]}}),
        ),
        chat(
            "auto:quality",
            KNOWLEDGE,
            json!({"routing": {"exclude": ["smollm2-135m-instruct"]}}),
        ),
        chat("auto", KNOWLEDGE, json!({"max_tokens": 9000})),
        chat(
            "auto",
            "Natalia sold 48 clips in April and half as many in May. How many did she sell?",
            json!({}),
        ),
        chat("auto", KNOWLEDGE, json!({"routing": {"min_quality": 0.2}})),
        chat(
            "auto",
            &"lorem ipsum ".repeat(3000),
            json!({"max_tokens": 100}),
        ),
    ]);
    assert_eq!(winner(&out[0]), "gemma-3-270m");
    assert!(candidate(&out[0], "smollm2-135m-instruct")["excluded"]
        .as_str()
        .unwrap()
        .contains("allowlist"));
    assert_eq!(winner(&out[1]), "gemma-3-270m");
    // 9000 output tokens: past SmolLM2's window and past Gemma's max_output.
    let small = candidate(&out[2], "smollm2-135m-instruct")["excluded"]
        .as_str()
        .unwrap();
    assert!(small.contains("context window 8192"), "{small}");
    let gemma = candidate(&out[2], "gemma-3-270m")["excluded"]
        .as_str()
        .unwrap();
    assert!(gemma.contains("max_output 4096"), "{gemma}");
    assert_eq!(winner(&out[2]), "none");
    // A ~9k-token prompt only fits Gemma's window.
    let small = candidate(&out[5], "smollm2-135m-instruct")["excluded"]
        .as_str()
        .unwrap();
    assert!(small.contains("context window 8192"), "{small}");
    assert_eq!(winner(&out[5]), "gemma-3-270m");
    // Gemma 3 270M has no math evidence: unknown, not zero, not borrowed.
    let g = candidate(&out[3], "gemma-3-270m");
    assert!(
        g["quality"].is_null() && g["quality_evidence"].is_null(),
        "{g}"
    );
    assert!(candidate(&out[3], "smollm2-135m-instruct")["quality"].is_number());
    // A quality floor drops the model whose knowledge evidence is below it.
    assert!(candidate(&out[4], "gemma-3-270m")["excluded"]
        .as_str()
        .unwrap()
        .contains("min_quality"));
    assert_eq!(winner(&out[4]), "smollm2-135m-instruct");
}
