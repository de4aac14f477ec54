//! Training data for the classifier and its held-out evaluation.
//!
//! Sources: RouteLLM's MMLU and GSM8K prompts (`../shared/data/routellm`,
//! passed as a path, never copied): GSM8K ⇒ math, MMLU ⇒ knowledge QA, except
//! mathematical subjects ⇒ math and logic subjects ⇒ reasoning; difficulty
//! labels from the weak model's correctness. Plus our own labeled prompts in
//! `data/seed_prompts.tsv` for the other families. A fixed hash of the prompt
//! puts 20% of everything in the held-out split.

use std::path::Path;

use serde::Deserialize;

use crate::classifier::Classifier;
use crate::taxonomy::TaskFamily;

#[derive(Deserialize)]
struct RouteLlmRow {
    source: String,
    #[serde(default)]
    subject: Option<String>,
    prompt: String,
    weak_correct: bool,
}

pub struct Dataset {
    pub family_train: Vec<(String, TaskFamily)>,
    pub family_test: Vec<(String, TaskFamily)>,
    pub difficulty_train: Vec<(String, bool)>,
    pub difficulty_test: Vec<(String, bool)>,
}

fn held_out(text: &str) -> bool {
    crate::classifier::fnv1a(text.bytes()).is_multiple_of(5)
}

fn mmlu_family(subject: &str) -> TaskFamily {
    match subject {
        "abstract_algebra"
        | "college_mathematics"
        | "elementary_mathematics"
        | "high_school_mathematics"
        | "high_school_statistics"
        | "econometrics" => TaskFamily::Math,
        "formal_logic" | "logical_fallacies" => TaskFamily::Reasoning,
        _ => TaskFamily::KnowledgeQa,
    }
}

impl Dataset {
    /// Load RouteLLM data from `routellm_dir` and the committed seed prompts.
    pub fn load(routellm_dir: &Path) -> Result<Dataset, String> {
        let mut ds = Dataset {
            family_train: vec![],
            family_test: vec![],
            difficulty_train: vec![],
            difficulty_test: vec![],
        };
        for file in ["gsm8k.jsonl", "mmlu.jsonl"] {
            let path = routellm_dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "{}: {e} (the RouteLLM data lives in ../shared/data/routellm)",
                    path.display()
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let row: RouteLlmRow = serde_json::from_str(line)
                    .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
                let family = match row.source.as_str() {
                    "gsm8k" => TaskFamily::Math,
                    _ => mmlu_family(row.subject.as_deref().unwrap_or("")),
                };
                let test = held_out(&row.prompt);
                let (fam, dif) = if test {
                    (&mut ds.family_test, &mut ds.difficulty_test)
                } else {
                    (&mut ds.family_train, &mut ds.difficulty_train)
                };
                fam.push((row.prompt.clone(), family));
                dif.push((row.prompt, !row.weak_correct));
            }
        }
        for line in include_str!("../data/seed_prompts.tsv")
            .lines()
            .filter(|l| !l.starts_with('#'))
        {
            let Some((family, text)) = line.split_once('\t') else {
                continue;
            };
            let family = TaskFamily::parse(family)
                .ok_or_else(|| format!("seed prompts: unknown family {family}"))?;
            let text = text.replace("\\n", "\n").replace("\\\\", "\\");
            if held_out(&text) {
                ds.family_test.push((text, family));
            } else {
                ds.family_train.push((text, family));
            }
        }
        Ok(ds)
    }
}

#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Held-out family accuracy, overall and macro-averaged over families.
    pub family_accuracy: f32,
    pub family_macro_accuracy: f32,
    /// Held-out difficulty: AUC of p_hard against "the weak model failed".
    pub difficulty_auc: f32,
    pub per_family: Vec<(TaskFamily, usize, f32)>,
}

pub fn evaluate(c: &Classifier, ds: &Dataset) -> Evaluation {
    let mut per: Vec<(TaskFamily, usize, usize)> =
        TaskFamily::ALL.iter().map(|&f| (f, 0, 0)).collect();
    let mut right = 0;
    for (text, want) in &ds.family_test {
        let got = c.classify(text).family;
        let Some(slot) = per.iter_mut().find(|p| p.0 == *want) else {
            continue;
        };
        slot.1 += 1;
        if got == *want {
            slot.2 += 1;
            right += 1;
        }
    }
    let per_family: Vec<(TaskFamily, usize, f32)> = per
        .iter()
        .filter(|p| p.1 > 0)
        .map(|&(f, n, r)| (f, n, r as f32 / n as f32))
        .collect();
    let macro_acc = per_family.iter().map(|p| p.2).sum::<f32>() / per_family.len().max(1) as f32;
    // AUC by ranking.
    let mut scored: Vec<(f32, bool)> = ds
        .difficulty_test
        .iter()
        .map(|(t, h)| (c.classify(t).p_hard, *h))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos) = (0.0f64, 0usize);
    for (i, (_, hard)) in scored.iter().enumerate() {
        if *hard {
            rank_sum += (i + 1) as f64;
            pos += 1;
        }
    }
    let neg = scored.len() - pos;
    let auc = if pos == 0 || neg == 0 {
        0.5
    } else {
        ((rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64) as f32
    };
    Evaluation {
        family_accuracy: right as f32 / ds.family_test.len().max(1) as f32,
        family_macro_accuracy: macro_acc,
        difficulty_auc: auc,
        per_family,
    }
}

/// Train on the training split and evaluate on the held-out split.
pub fn train_and_evaluate(routellm_dir: &Path) -> Result<(Classifier, Evaluation), String> {
    let ds = Dataset::load(routellm_dir)?;
    let mut c = Classifier::train(&ds.family_train, &ds.difficulty_train, 8);
    let e = evaluate(&c, &ds);
    c.provenance = format!(
        "switchyard router-train --data <shared>/data/routellm: {} training prompts (RouteLLM MMLU+GSM8K, Apache-2.0, plus crates/router/data/seed_prompts.tsv); held-out family accuracy {:.3} (macro {:.3}), difficulty AUC {:.3}",
        ds.family_train.len(),
        e.family_accuracy,
        e.family_macro_accuracy,
        e.difficulty_auc
    );
    Ok((c, e))
}
