//! The committed classifier on data it never trained on: the held-out
//! realistic prompts (written apart from the training set) and RouteLLM's
//! held-out split (../shared); and a check that the committed weights are
//! what the committed command produces.

use std::path::PathBuf;

use switchyard_router::classifier::Turn;
use switchyard_router::training::{evaluate, train_and_evaluate, Dataset};
use switchyard_router::{Classifier, Difficulty, Task};

fn routellm_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routellm");
    assert!(
        dir.join("mmlu.jsonl").exists(),
        "the RouteLLM data is missing: expected {} (../shared beside the checkout, as CI has it)",
        dir.display()
    );
    dir
}

fn prompts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/realistic")
}

#[test]
fn held_out_figures_are_above_the_floors() {
    let c = Classifier::embedded().expect("committed weights load");
    let ds = Dataset::load(&routellm_dir(), &prompts_dir()).unwrap();
    let e = evaluate(&c, &ds);
    println!("{e:#?}");
    let h = &e.heldout;
    assert_eq!(h.n, 660);
    // Floors a little under the committed figures (benches/README.md), so a
    // regression fails and a retrain's noise does not.
    assert!(h.task_accuracy >= 0.85, "task accuracy {}", h.task_accuracy);
    assert!(
        h.hard_seen_as_medium_or_hard >= 0.70,
        "hard seen as medium/hard {}",
        h.hard_seen_as_medium_or_hard
    );
    assert!(
        h.easy_seen_as_easy >= 0.80,
        "easy seen as easy {}",
        h.easy_seen_as_easy
    );
    assert!(e.mmlu.apgr >= 0.58, "MMLU APGR {}", e.mmlu.apgr);
    assert!(e.gsm8k.apgr >= 0.53, "GSM8K APGR {}", e.gsm8k.apgr);
}

#[test]
fn committed_weights_come_from_the_committed_command() {
    let ds = Dataset::load(&routellm_dir(), &prompts_dir()).unwrap();
    let committed = evaluate(&Classifier::embedded().unwrap(), &ds);
    let (_, retrained) = train_and_evaluate(&routellm_dir(), &prompts_dir()).unwrap();
    let close = |a: f32, b: f32| (a - b).abs() < 0.01;
    assert!(close(
        committed.heldout.task_accuracy,
        retrained.heldout.task_accuracy
    ));
    assert!(close(committed.mmlu.apgr, retrained.mmlu.apgr));
    assert!(close(
        committed.heldout.easy_seen_as_easy,
        retrained.heldout.easy_seen_as_easy
    ));
}

#[test]
fn obvious_requests() {
    let c = Classifier::embedded().unwrap();
    let cases = [
        ("Translate to German: where is the library?", Task::Translation),
        ("What is the capital of Australia?", Task::KnowledgeQa),
        ("Hello! How are you doing today?", Task::Chat),
        ("Write a Rust function to parse a CSV file.", Task::Code),
        (
            "Natalia sold 48 clips in April and half as many in May. How many clips did she sell altogether?",
            Task::Math,
        ),
        ("Write a short poem about the sea at night.", Task::CreativeWriting),
        (
            "Compare RAG and fine-tuning for a support bot.",
            Task::Analysis,
        ),
    ];
    for (text, want) in cases {
        let got = c.classify(text);
        assert_eq!(got.task, want, "{text}: {got:?}");
        assert!(got.task_confidence > 0.0 && got.task_confidence <= 1.0);
        assert!((0.0..=1.0).contains(&got.p_hard));
    }
}

#[test]
fn the_conversation_gives_the_final_turn_its_meaning() {
    let c = Classifier::embedded().unwrap();
    let turns = [
        Turn {
            role: "user",
            content: "Write a Python function that returns the n-th Fibonacci number.",
        },
        Turn {
            role: "assistant",
            content: "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        },
        Turn {
            role: "user",
            content: "now make it handle negative inputs",
        },
    ];
    assert_eq!(c.classify_chat(&turns).task, Task::Code);
}

#[test]
fn a_hard_request_is_not_easy() {
    let c = Classifier::embedded().unwrap();
    let hard = c.classify(
        "Prove that every group of order p^2, for p prime, is abelian. Give a rigorous proof using the class equation.",
    );
    assert_ne!(hard.difficulty, Difficulty::Easy, "{hard:?}");
    let easy = c.classify("hi there!");
    assert_eq!(easy.difficulty, Difficulty::Easy, "{easy:?}");
}
