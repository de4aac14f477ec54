//! Training data for the classifier, and its evaluation.
//!
//! Three sources, three roles:
//! - **Realistic prompts** (`data/realistic/dev-*.jsonl`): hand-written,
//!   hand-labelled requests of every task and difficulty (system prompts,
//!   multi-turn sessions, pasted documents and code, a dozen languages). A
//!   fixed hash of each prompt puts 20% in a *validation* split, used to pick
//!   the difficulty buckets and to compare designs; the rest trains.
//! - **The held-out set** (`data/realistic/heldout.jsonl`): written by a
//!   different author, never trained or tuned on; only reported.
//! - **RouteLLM's MMLU and GSM8K** (`../shared/data/routellm`, passed as a
//!   path, never copied): the difficulty signal (did the mid-size model
//!   fail?) and, down-weighted, more math and knowledge questions. A fixed
//!   hash puts 20% in its held-out split, where `p_hard` is scored as a
//!   strong-model router with RouteLLM's metrics (APGR, CPT(50%)).

use std::path::Path;

use serde::Deserialize;

use crate::classifier::{features_of, Classifier, Examples, Turn};
use crate::taxonomy::{Difficulty, Task};

/// Weight of a RouteLLM prompt in the task head (they are exam questions,
/// and there are many of them).
const ROUTELLM_TASK_WEIGHT: f32 = 0.05;
/// Weight of a realistic prompt in the difficulty head, against 1 for a
/// RouteLLM prompt.
const REALISTIC_DIFFICULTY_WEIGHT: f32 = 1.5;
const EPOCHS: usize = 12;

#[derive(Deserialize)]
struct RouteLlmRow {
    source: String,
    #[serde(default)]
    subject: Option<String>,
    prompt: String,
    weak_correct: bool,
    strong_correct: bool,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct RealisticRow {
    task: String,
    difficulty: Difficulty,
    #[serde(default)]
    lang: String,
    messages: Vec<Message>,
}

/// One labelled realistic prompt.
pub struct Labelled {
    pub turns: Vec<(String, String)>,
    pub task: Task,
    pub difficulty: Difficulty,
    pub lang: String,
}

impl Labelled {
    pub fn turns(&self) -> Vec<Turn<'_>> {
        self.turns
            .iter()
            .map(|(role, content)| Turn { role, content })
            .collect()
    }
}

/// One RouteLLM prompt with both models' correctness.
pub struct Graded {
    pub source: String,
    pub prompt: String,
    pub task: Task,
    pub weak_correct: bool,
    pub strong_correct: bool,
}

pub struct Dataset {
    pub train: Vec<Labelled>,
    pub validation: Vec<Labelled>,
    pub heldout: Vec<Labelled>,
    pub routellm_train: Vec<Graded>,
    /// Compares designs; never trained on.
    pub routellm_validation: Vec<Graded>,
    /// Only reported.
    pub routellm_test: Vec<Graded>,
}

fn in_fifth(text: &str) -> bool {
    crate::classifier::fnv1a(text.bytes()).is_multiple_of(5)
}

fn mmlu_task(subject: &str) -> Task {
    match subject {
        "abstract_algebra"
        | "college_mathematics"
        | "elementary_mathematics"
        | "high_school_mathematics"
        | "high_school_statistics"
        | "econometrics" => Task::Math,
        "formal_logic" | "logical_fallacies" => Task::Reasoning,
        _ => Task::KnowledgeQa,
    }
}

fn read_realistic(path: &Path) -> Result<Vec<Labelled>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: RealisticRow =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let task = Task::parse(&row.task)
            .ok_or_else(|| format!("{}:{}: unknown task {}", path.display(), n + 1, row.task))?;
        out.push(Labelled {
            turns: row
                .messages
                .into_iter()
                .map(|m| (m.role, m.content))
                .collect(),
            task,
            difficulty: row.difficulty,
            lang: row.lang,
        });
    }
    Ok(out)
}

impl Dataset {
    /// RouteLLM data from `routellm_dir`; realistic prompts from `prompts_dir`
    /// (`crates/router/data/realistic`).
    pub fn load(routellm_dir: &Path, prompts_dir: &Path) -> Result<Dataset, String> {
        let mut ds = Dataset {
            train: vec![],
            validation: vec![],
            heldout: vec![],
            routellm_train: vec![],
            routellm_validation: vec![],
            routellm_test: vec![],
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
                let task = match row.source.as_str() {
                    "gsm8k" => Task::Math,
                    _ => mmlu_task(row.subject.as_deref().unwrap_or("")),
                };
                let graded = Graded {
                    task,
                    weak_correct: row.weak_correct,
                    strong_correct: row.strong_correct,
                    source: row.source,
                    prompt: row.prompt,
                };
                if in_fifth(&graded.prompt) {
                    ds.routellm_test.push(graded);
                } else if in_fifth(&format!("validation {}", graded.prompt)) {
                    ds.routellm_validation.push(graded);
                } else {
                    ds.routellm_train.push(graded);
                }
            }
        }
        let mut files: Vec<_> = std::fs::read_dir(prompts_dir)
            .map_err(|e| format!("{}: {e}", prompts_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let rows = read_realistic(&path)?;
            if name.as_deref() == Some("heldout.jsonl") {
                ds.heldout.extend(rows);
                continue;
            }
            for row in rows {
                let key: String = row.turns.iter().map(|(_, c)| c.as_str()).collect();
                if in_fifth(&key) {
                    ds.validation.push(row);
                } else {
                    ds.train.push(row);
                }
            }
        }
        if ds.heldout.is_empty() || ds.train.is_empty() {
            return Err(format!(
                "{}: expected dev-*.jsonl and heldout.jsonl",
                prompts_dir.display()
            ));
        }
        Ok(ds)
    }
}

/// Classifier figures on one labelled realistic set.
#[derive(Debug, Clone, Default)]
pub struct RealisticScore {
    pub n: usize,
    pub task_accuracy: f32,
    /// Mean of the per-task accuracies.
    pub task_macro_accuracy: f32,
    pub per_task: Vec<(Task, usize, f32)>,
    /// Of prompts labelled hard: the share classed medium or hard.
    pub hard_seen_as_medium_or_hard: f32,
    /// Of prompts labelled easy: the share classed easy.
    pub easy_seen_as_easy: f32,
    /// Task accuracy on prompts not in English.
    pub non_english_task_accuracy: f32,
}

/// RouteLLM's router metrics for `p_hard` as the strong-model score.
#[derive(Debug, Clone, Default)]
pub struct RouterScore {
    pub n: usize,
    /// Average performance gap recovered over all strong-call shares.
    pub apgr: f32,
    /// Share of strong calls needed to recover half the gap.
    pub cpt50: f32,
    /// AUC of `p_hard` against "the mid-size model failed".
    pub auc: f32,
}

#[derive(Debug, Clone)]
pub struct Evaluation {
    pub validation: RealisticScore,
    pub routellm_validation: (RouterScore, RouterScore),
    pub heldout: RealisticScore,
    pub mmlu: RouterScore,
    pub gsm8k: RouterScore,
}

pub fn score_realistic(c: &Classifier, rows: &[Labelled]) -> RealisticScore {
    let mut per: Vec<(Task, usize, usize)> = Task::ALL.iter().map(|&t| (t, 0, 0)).collect();
    let (mut right, mut hard, mut hard_ok, mut easy, mut easy_ok) = (0, 0, 0, 0, 0);
    let (mut foreign, mut foreign_ok) = (0, 0);
    for row in rows {
        let got = c.classify_chat(&row.turns());
        let ok = got.task == row.task;
        if let Some(slot) = per.iter_mut().find(|p| p.0 == row.task) {
            slot.1 += 1;
            slot.2 += ok as usize;
        }
        right += ok as usize;
        if !row.lang.is_empty() && row.lang != "en" {
            foreign += 1;
            foreign_ok += ok as usize;
        }
        match row.difficulty {
            Difficulty::Hard => {
                hard += 1;
                hard_ok += (got.difficulty != Difficulty::Easy) as usize;
            }
            Difficulty::Easy => {
                easy += 1;
                easy_ok += (got.difficulty == Difficulty::Easy) as usize;
            }
            Difficulty::Medium => {}
        }
    }
    let frac = |a: usize, b: usize| a as f32 / b.max(1) as f32;
    let per_task: Vec<(Task, usize, f32)> = per
        .iter()
        .filter(|p| p.1 > 0)
        .map(|&(t, n, r)| (t, n, frac(r, n)))
        .collect();
    RealisticScore {
        n: rows.len(),
        task_accuracy: frac(right, rows.len()),
        task_macro_accuracy: per_task.iter().map(|p| p.2).sum::<f32>()
            / per_task.len().max(1) as f32,
        per_task,
        hard_seen_as_medium_or_hard: frac(hard_ok, hard),
        easy_seen_as_easy: frac(easy_ok, easy),
        non_english_task_accuracy: frac(foreign_ok, foreign),
    }
}

/// APGR and CPT(50%) as RouteLLM defines them: send the prompts with the
/// highest score to the strong model, sweep the share sent, and measure the
/// performance gap recovered, (accuracy − weak) / (strong − weak).
pub fn router_metrics(scored: &[(f32, bool, bool)]) -> RouterScore {
    let n = scored.len();
    if n == 0 {
        return RouterScore::default();
    }
    let mut rows = scored.to_vec();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let weak: usize = rows.iter().filter(|r| r.1).count();
    let strong: usize = rows.iter().filter(|r| r.2).count();
    let gap = strong as f64 - weak as f64;
    let (mut correct, mut area, mut cpt50) = (weak as f64, 0.0f64, None);
    let mut previous = 0.0f64;
    for (k, r) in rows.iter().enumerate() {
        // Route the (k+1)-th hardest prompt to the strong model.
        correct += r.2 as u8 as f64 - r.1 as u8 as f64;
        let pgr = if gap.abs() < f64::EPSILON {
            0.0
        } else {
            (correct - weak as f64) / gap
        };
        area += (previous + pgr) / 2.0;
        previous = pgr;
        if cpt50.is_none() && pgr >= 0.5 {
            cpt50 = Some((k + 1) as f64 / n as f64);
        }
    }
    // AUC of the score against "the weak model failed", by ranks.
    let mut asc = rows.clone();
    asc.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos) = (0.0f64, 0usize);
    for (i, r) in asc.iter().enumerate() {
        if !r.1 {
            rank_sum += (i + 1) as f64;
            pos += 1;
        }
    }
    let neg = n - pos;
    let auc = if pos == 0 || neg == 0 {
        0.5
    } else {
        (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64
    };
    RouterScore {
        n,
        apgr: (area / n as f64) as f32,
        cpt50: cpt50.unwrap_or(1.0) as f32,
        auc: auc as f32,
    }
}

fn score_routellm(c: &Classifier, rows: &[Graded], source: &str) -> RouterScore {
    let scored: Vec<(f32, bool, bool)> = rows
        .iter()
        .filter(|r| r.source == source)
        .map(|r| {
            (
                c.classify(&r.prompt).p_hard,
                r.weak_correct,
                r.strong_correct,
            )
        })
        .collect();
    router_metrics(&scored)
}

pub fn evaluate(c: &Classifier, ds: &Dataset) -> Evaluation {
    Evaluation {
        validation: score_realistic(c, &ds.validation),
        routellm_validation: (
            score_routellm(c, &ds.routellm_validation, "mmlu"),
            score_routellm(c, &ds.routellm_validation, "gsm8k"),
        ),
        heldout: score_realistic(c, &ds.heldout),
        mmlu: score_routellm(c, &ds.routellm_test, "mmlu"),
        gsm8k: score_routellm(c, &ds.routellm_test, "gsm8k"),
    }
}

fn soft_label(d: Difficulty) -> f32 {
    match d {
        Difficulty::Easy => 0.0,
        Difficulty::Medium => 0.5,
        Difficulty::Hard => 1.0,
    }
}

/// A RouteLLM prompt is hard when the mid-size model fails it and the
/// strong model does not: the failures a stronger model would fix, which is
/// what routing to it buys. (Prompts both fail are as useless to route.)
fn hard_label(row: &Graded) -> f32 {
    if !row.weak_correct && row.strong_correct {
        1.0
    } else {
        0.0
    }
}

/// The examples for both heads, with class-balanced task weights.
fn examples(ds: &Dataset) -> (Examples<Task>, Examples<f32>, Examples<f32>) {
    let mut task = Examples::default();
    let mut difficulty = Examples::default();
    let mut exam = Examples::default();
    for row in &ds.train {
        let x = features_of(&row.turns());
        task.push(x.clone(), row.task, 1.0);
        difficulty.push(x, soft_label(row.difficulty), REALISTIC_DIFFICULTY_WEIGHT);
    }
    for row in &ds.routellm_train {
        let x = crate::classifier::features(&row.prompt);
        task.push(x.clone(), row.task, ROUTELLM_TASK_WEIGHT);
        if row.source == "mmlu" {
            exam.push(x.clone(), hard_label(row), 1.0);
        }
        difficulty.push(x, hard_label(row), 1.0);
    }
    // Balance the tasks: each task's total weight counts the same.
    let mut totals = vec![0.0f32; Task::ALL.len()];
    for (y, w) in task.y.iter().zip(&task.weight) {
        totals[*y as usize] += w;
    }
    let mean =
        totals.iter().sum::<f32>() / totals.iter().filter(|t| **t > 0.0).count().max(1) as f32;
    for (y, w) in task.y.iter().zip(task.weight.iter_mut()) {
        *w *= (mean / totals[*y as usize]).sqrt();
    }
    (task, difficulty, exam)
}

/// The difficulty buckets that best agree with the validation labels:
/// maximise the smaller of "easy seen as easy" and "hard seen as medium or
/// hard", then put the hard line where medium and hard separate best.
fn choose_buckets(c: &mut Classifier, rows: &[Labelled]) {
    let scored: Vec<(f32, Difficulty)> = rows
        .iter()
        .map(|r| (c.classify_chat(&r.turns()).p_hard, r.difficulty))
        .collect();
    let share = |pred: &dyn Fn(&(f32, Difficulty)) -> bool, of: Difficulty| {
        let all: Vec<_> = scored.iter().filter(|s| s.1 == of).collect();
        all.iter().filter(|s| pred(s)).count() as f32 / all.len().max(1) as f32
    };
    let grid: Vec<f32> = (1..100).map(|i| i as f32 / 100.0).collect();
    let mut best = (f32::NEG_INFINITY, 0.3);
    for &t in &grid {
        let easy = share(&|s| s.0 < t, Difficulty::Easy);
        let hard = share(&|s| s.0 >= t, Difficulty::Hard);
        let score = easy.min(hard) + 0.01 * (easy + hard);
        if score > best.0 {
            best = (score, t);
        }
    }
    c.easy_below = best.1;
    let mut best_hard = (f32::NEG_INFINITY, c.easy_below);
    for &t in grid.iter().filter(|&&t| t >= c.easy_below) {
        let hard = share(&|s| s.0 > t, Difficulty::Hard);
        let medium = share(&|s| s.0 <= t && s.0 >= c.easy_below, Difficulty::Medium);
        let score = hard + medium;
        if score > best_hard.0 {
            best_hard = (score, t);
        }
    }
    c.hard_above = best_hard.1;
}

/// Train on the training splits, choose the buckets on validation, and
/// evaluate on everything held out.
pub fn train_and_evaluate(
    routellm_dir: &Path,
    prompts_dir: &Path,
) -> Result<(Classifier, Evaluation), String> {
    let ds = Dataset::load(routellm_dir, prompts_dir)?;
    let (task, difficulty, exam) = examples(&ds);
    let mut c = Classifier::train(&task, &difficulty, &exam, EPOCHS);
    choose_buckets(&mut c, &ds.validation);
    let e = evaluate(&c, &ds);
    c.provenance = format!(
        "switchyard router-train --data <shared>/data/routellm --prompts crates/router/data/realistic: {} realistic + {} RouteLLM training prompts; held-out realistic task accuracy {:.3}, hard seen as medium/hard {:.3}, easy seen as easy {:.3}; RouteLLM held-out APGR MMLU {:.3} GSM8K {:.3}",
        ds.train.len(),
        ds.routellm_train.len(),
        e.heldout.task_accuracy,
        e.heldout.hard_seen_as_medium_or_hard,
        e.heldout.easy_seen_as_easy,
        e.mmlu.apgr,
        e.gsm8k.apgr,
    );
    Ok((c, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_metrics_of_perfect_random_and_inverted_routers() {
        // Weak right on 0..50, strong right on everything.
        let rows: Vec<(f32, bool, bool)> = (0..100).map(|i| (0.0, i < 50, true)).collect();
        let perfect: Vec<_> = rows
            .iter()
            .map(|r| (if r.1 { 0.0 } else { 1.0 }, r.1, r.2))
            .collect();
        let inverted: Vec<_> = rows
            .iter()
            .map(|r| (if r.1 { 1.0 } else { 0.0 }, r.1, r.2))
            .collect();
        let p = router_metrics(&perfect);
        assert!(p.apgr > 0.74 && p.cpt50 <= 0.26 && p.auc > 0.99, "{p:?}");
        let w = router_metrics(&inverted);
        assert!(w.apgr < 0.26 && w.cpt50 >= 0.74 && w.auc < 0.01, "{w:?}");
        // Interleaved labels with a constant score: about half the gap on average.
        let alternating: Vec<_> = (0..100).map(|i| (0.5, i % 2 == 0, true)).collect();
        let r = router_metrics(&alternating);
        assert!((r.apgr - 0.5).abs() < 0.02, "{r:?}");
    }
}
