//! The committed classifier against the held-out split of its training data
//! (RouteLLM prompts from ../shared plus our seed prompts), and a check that
//! the committed weights are what the committed command produces.

use std::path::PathBuf;

use switchyard_router::training::{evaluate, train_and_evaluate, Dataset};
use switchyard_router::{Classifier, TaskFamily};

fn routellm_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routellm");
    assert!(
        dir.join("mmlu.jsonl").exists(),
        "the RouteLLM data is missing: expected {} (../shared beside the checkout, as CI has it)",
        dir.display()
    );
    dir
}

#[test]
fn held_out_accuracy_is_above_the_floor() {
    let c = Classifier::embedded().expect("committed weights load");
    let ds = Dataset::load(&routellm_dir()).unwrap();
    let e = evaluate(&c, &ds);
    println!("{e:?}");
    assert!(
        e.family_accuracy >= 0.90,
        "family accuracy {}",
        e.family_accuracy
    );
    assert!(
        e.family_macro_accuracy >= 0.85,
        "macro accuracy {}",
        e.family_macro_accuracy
    );
    assert!(
        e.difficulty_auc >= 0.62,
        "difficulty AUC {}",
        e.difficulty_auc
    );
}

#[test]
fn committed_weights_come_from_the_committed_command() {
    let committed = evaluate(
        &Classifier::embedded().unwrap(),
        &Dataset::load(&routellm_dir()).unwrap(),
    );
    let (_, retrained) = train_and_evaluate(&routellm_dir()).unwrap();
    assert!((committed.family_accuracy - retrained.family_accuracy).abs() < 0.01);
    assert!((committed.difficulty_auc - retrained.difficulty_auc).abs() < 0.01);
}

#[test]
fn obvious_prompts() {
    let c = Classifier::embedded().unwrap();
    let cases = [
        ("Translate to German: where is the library?", TaskFamily::Translation),
        ("What is the capital of Australia?", TaskFamily::KnowledgeQa),
        ("Hello! How are you doing today?", TaskFamily::Chat),
        ("Write a Rust function to parse a CSV file.", TaskFamily::Code),
        ("Natalia sold 48 clips in April and half as many in May. How many clips did she sell altogether?", TaskFamily::Math),
        ("Write a short poem about the sea at night.", TaskFamily::CreativeWriting),
    ];
    for (text, want) in cases {
        let got = c.classify(text);
        assert_eq!(got.family, want, "{text}: {got:?}");
        assert!(got.family_confidence > 0.0 && got.family_confidence <= 1.0);
    }
}
