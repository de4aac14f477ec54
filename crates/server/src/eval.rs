//! `switchyard eval`: make unknown quality known. A labelled suite (JSONL:
//! a prompt, the expected answer and how to check it) runs through catalog
//! models with greedy decoding; each model's score becomes evidence for the
//! suite's task, with its provenance (suite name and hash, n, date, a 95%
//! Wilson interval), in an overlay file beside the catalog that the router
//! reads ([`crate::config::EvidenceOverlay`], applied by
//! [`crate::config::Catalog::load`]). Measured evidence replaces a
//! recalled card figure for that task.
//!
//! Checkers follow the usual harness conventions (lm-evaluation-harness,
//! OpenAI evals): `exact` (normalised text), `regex`, `numeric` (the last
//! number in the answer, GSM8K's rule), `choice` (the first option letter),
//! `json_field` (a field of the first JSON object), `judge` (a catalog model
//! asked whether the response matches the reference).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;
use switchyard_router::catalog::Evidence;

pub use crate::config::Separation;

/// How a case's output is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The output (or its first line), normalised, equals the answer.
    #[default]
    Exact,
    /// The answer is a regular expression the output matches.
    Regex,
    /// The last number in the output equals the answer's.
    Numeric,
    /// The first option letter the output gives (`B`, `(B)`, `Answer: B`).
    Choice,
    /// `field` (dot path) of the first JSON object in the output equals the
    /// answer.
    JsonField,
    /// A judge model says the output matches the reference answer.
    Judge,
}

/// One labelled case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    pub answer: String,
    #[serde(default)]
    pub check: Check,
    /// For `json_field`: the field's dot path.
    #[serde(default)]
    pub field: Option<String>,
}

/// A suite: its cases and what identifies it.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    /// SHA-256 of the suite file's bytes (hex).
    pub sha256: String,
    pub cases: Vec<Case>,
}

impl Suite {
    /// Reads a JSONL suite; a bad line is an error naming it.
    pub fn load(path: &Path) -> anyhow::Result<Suite> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?;
        let mut cases = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let case: Case = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
            match case.check {
                Check::Regex => {
                    regex::Regex::new(&case.answer).map_err(|e| {
                        anyhow::anyhow!("{}:{}: answer is not a regex: {e}", path.display(), n + 1)
                    })?;
                }
                Check::JsonField if case.field.is_none() => {
                    anyhow::bail!("{}:{}: json_field needs `field`", path.display(), n + 1)
                }
                Check::Numeric if parse_number(&case.answer).is_none() => {
                    anyhow::bail!("{}:{}: answer is not a number", path.display(), n + 1)
                }
                _ => {}
            }
            cases.push(case);
        }
        if cases.is_empty() {
            anyhow::bail!("{}: no cases", path.display());
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "suite".into());
        Ok(Suite {
            name,
            sha256: hex(&sha2::Sha256::digest(&bytes)),
            cases,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower case, inner whitespace collapsed, surrounding quotes and
/// punctuation dropped.
fn normalize(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    words
        .join(" ")
        .trim_matches(|c: char| c.is_ascii_punctuation() || c == '“' || c == '”')
        .to_lowercase()
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().replace(',', "").trim_end_matches('.').parse().ok()
}

/// A fixed pattern, compiled once.
macro_rules! pattern {
    ($re:literal) => {{
        static RE: std::sync::LazyLock<Option<regex::Regex>> =
            std::sync::LazyLock::new(|| regex::Regex::new($re).ok());
        RE.as_ref()
    }};
}

/// The last number in `s` (thousands separators allowed).
fn last_number(s: &str) -> Option<f64> {
    pattern!(r"-?\d[\d,]*(?:\.\d+)?")?
        .find_iter(s)
        .filter_map(|m| parse_number(m.as_str()))
        .last()
}

/// The first option letter (A–J) the output commits to.
fn first_choice(s: &str) -> Option<char> {
    let re = pattern!(
        r"(?i)(?:answer(?: is)?\s*[:\-]?\s*\(?([A-J])\)?\b)|(?:^|\s)\(?([A-J])[\).:](?:\s|$)|^\s*([A-J])\s*$"
    )?;
    let c = re.captures(s)?;
    (1..=3)
        .find_map(|i| c.get(i))
        .and_then(|m| m.as_str().chars().next())
        .map(|c| c.to_ascii_uppercase())
}

/// The value at `path` of the first JSON object in `s`.
fn json_field(s: &str, path: &str) -> Option<serde_json::Value> {
    let start = s.find('{')?;
    let mut stream =
        serde_json::Deserializer::from_str(&s[start..]).into_iter::<serde_json::Value>();
    let mut v = stream.next()?.ok()?;
    for key in path.split('.') {
        v = v.get(key)?.clone();
    }
    Some(v)
}

/// Whether `output` passes `case` (`judge` cases are decided by a model:
/// `None` here).
pub fn check(case: &Case, output: &str) -> Option<bool> {
    Some(match case.check {
        Check::Exact => {
            let want = normalize(&case.answer);
            normalize(output) == want
                || output
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .is_some_and(|l| normalize(l) == want)
        }
        Check::Regex => regex::Regex::new(&case.answer).is_ok_and(|re| re.is_match(output)),
        Check::Numeric => match (last_number(output), parse_number(&case.answer)) {
            (Some(got), Some(want)) => (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            _ => false,
        },
        Check::Choice => {
            first_choice(output)
                == case
                    .answer
                    .trim()
                    .chars()
                    .next()
                    .map(|c| c.to_ascii_uppercase())
        }
        Check::JsonField => match json_field(output, case.field.as_deref().unwrap_or_default()) {
            Some(serde_json::Value::String(s)) => normalize(&s) == normalize(&case.answer),
            Some(v) => normalize(&v.to_string()) == normalize(&case.answer),
            None => false,
        },
        Check::Judge => return None,
    })
}

/// The prompt a judge model answers `yes` or `no` to.
pub fn judge_prompt(case: &Case, output: &str) -> String {
    format!(
        "You grade answers. Question:\n{}\n\nReference answer:\n{}\n\nResponse:\n{}\n\nDoes the response give the reference answer? Reply with one word, yes or no.",
        case.prompt, case.answer, output
    )
}

/// Whether a judge's reply says yes.
pub fn judge_says_yes(reply: &str) -> bool {
    normalize(reply).starts_with("yes")
}

/// The 95% Wilson score interval of `k` successes in `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_963_984_540_054);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A suite's result for one model, as catalog evidence with provenance.
pub fn evidence(suite: &Suite, k: usize, n: usize, date: &str, command: &str) -> Evidence {
    let (lo, hi) = wilson(k, n);
    let score = if n == 0 { 0.0 } else { k as f64 / n as f64 };
    Evidence {
        score: score as f32,
        benchmark: format!("{} (switchyard eval, greedy)", suite.name),
        value: format!("{k}/{n} = {score:.3} (95% CI {lo:.3}-{hi:.3})"),
        source: format!(
            "measured locally: {command} (suite sha256 {}, n = {n}, {date})",
            &suite.sha256[..16]
        ),
        measured: Some(switchyard_router::catalog::Measurement {
            suite: suite.name.clone(),
            suite_sha256: suite.sha256.clone(),
            n,
            correct: k,
            ci95: [lo, hi],
            date: date.to_string(),
            command: command.to_string(),
        }),
    }
}

/// A generation's confidence: the mean log-probability of its tokens
/// (`None` for an empty output).
pub fn confidence(logprobs: &[f32]) -> Option<f64> {
    (!logprobs.is_empty())
        .then(|| logprobs.iter().map(|&l| l as f64).sum::<f64>() / logprobs.len() as f64)
}

/// The threshold that best separates `(confidence, right)` points, or
/// `None` unless there are both right and wrong answers.
pub fn separate(points: &[(f64, bool)]) -> Option<Separation> {
    let right = points.iter().filter(|p| p.1).count();
    let wrong = points.len() - right;
    if right == 0 || wrong == 0 {
        return None;
    }
    let mut pairs = 0.0;
    for &(cr, _) in points.iter().filter(|p| p.1) {
        for &(cw, _) in points.iter().filter(|p| !p.1) {
            pairs += if cr > cw {
                1.0
            } else if cr == cw {
                0.5
            } else {
                0.0
            };
        }
    }
    let auc = pairs / (right * wrong) as f64;
    let accuracy = |t: f64| {
        points.iter().filter(|&&(c, ok)| (c >= t) == ok).count() as f64 / points.len() as f64
    };
    // Candidates: every observed confidence, and above them all (escalate
    // everything); the highest accuracy, ties to the lower threshold.
    let mut candidates: Vec<f64> = points.iter().map(|p| p.0).collect();
    candidates.push(f64::INFINITY);
    candidates.sort_by(f64::total_cmp);
    let mut best = (candidates[0], accuracy(candidates[0]));
    for &t in &candidates[1..] {
        let a = accuracy(t);
        if a > best.1 {
            best = (t, a);
        }
    }
    Some(Separation {
        threshold: best.0.is_finite().then_some(best.0),
        accuracy: best.1,
        auc,
        n: points.len(),
    })
}

/// One model's answer to one case, as a strategy replay needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub right: bool,
    /// Mean token log-probability ([`confidence`]).
    pub confidence: Option<f64>,
    /// Measured: its tokens and time at the model's price.
    pub cost_usd: f64,
}

/// How one serving strategy did on a suite.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub strategy: String,
    pub right: usize,
    pub n: usize,
    pub cost_usd: f64,
    /// Answers escalated (cascades only).
    pub escalated: usize,
}

impl Tally {
    pub fn new(strategy: impl Into<String>) -> Tally {
        Tally {
            strategy: strategy.into(),
            ..Default::default()
        }
    }

    pub fn add(&mut self, right: bool, cost_usd: f64, escalated: usize) {
        self.right += usize::from(right);
        self.n += 1;
        self.cost_usd += cost_usd;
        self.escalated += escalated;
    }
}

/// A cascade over one case, replayed from each model's (deterministic,
/// greedy) answer: `chain` is the router's order with each model's
/// threshold. Mirrors the server ([`crate::cascade::judge`]): an answer at
/// or above its threshold, without one, or without tokens is served; the
/// chain's last is served whatever it says. Every answer read is paid for.
/// Returns (right, cost, escalations).
pub fn replay_cascade(chain: &[(&Answer, Option<f64>)]) -> (bool, f64, usize) {
    let mut cost = 0.0;
    for (k, (answer, threshold)) in chain.iter().enumerate() {
        cost += answer.cost_usd;
        let last = k + 1 == chain.len();
        let confident = match (answer.confidence, threshold) {
            (Some(c), Some(t)) => c >= *t,
            _ => true,
        };
        if last || confident {
            return (answer.right, cost, k);
        }
    }
    (false, cost, chain.len().saturating_sub(1))
}

/// Cross-fitted thresholds: for each of `folds` folds (case `i` is in fold
/// `i % folds`), the threshold [`separate`] finds on the other folds' cases,
/// so that no case is judged by a threshold tuned on it.
pub fn fold_thresholds(points: &[Option<(f64, bool)>], folds: usize) -> Vec<Option<f64>> {
    (0..folds)
        .map(|f| {
            let outside: Vec<(f64, bool)> = points
                .iter()
                .enumerate()
                .filter(|(i, _)| i % folds != f)
                .filter_map(|(_, p)| *p)
                .collect();
            separate(&outside).and_then(|s| s.threshold)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(check: Check, answer: &str) -> Case {
        Case {
            prompt: "q".into(),
            system: None,
            answer: answer.into(),
            check,
            field: Some("city.name".into()),
        }
    }

    #[test]
    fn checkers() {
        let exact = case(Check::Exact, "Paris");
        assert_eq!(check(&exact, "paris."), Some(true));
        assert_eq!(check(&exact, "Paris\nIt is the capital."), Some(true));
        assert_eq!(check(&exact, "Lyon"), Some(false));
        let num = case(Check::Numeric, "1,234");
        assert_eq!(check(&num, "48 + 1186 = 1234"), Some(true));
        assert_eq!(check(&num, "The answer is 1234.0."), Some(true));
        assert_eq!(check(&num, "1234 or maybe 1235"), Some(false));
        assert_eq!(check(&num, "no idea"), Some(false));
        let choice = case(Check::Choice, "C");
        for yes in [
            "C",
            "Answer: C",
            "The answer is (C).",
            "(C) Mercury",
            "c. Mercury",
        ] {
            assert_eq!(check(&choice, yes), Some(true), "{yes}");
        }
        for no in ["B", "Answer: B", "Clearly not", ""] {
            assert_eq!(check(&choice, no), Some(false), "{no}");
        }
        let re = case(Check::Regex, r"(?i)\bbonjour\b");
        assert_eq!(check(&re, "Bonjour, mon ami"), Some(true));
        let field = case(Check::JsonField, "Oslo");
        assert_eq!(
            check(&field, r#"Here: {"city": {"name": "Oslo"}} done"#),
            Some(true)
        );
        assert_eq!(
            check(&field, r#"{"city": {"name": "Bergen"}}"#),
            Some(false)
        );
        assert_eq!(check(&field, "not json"), Some(false));
        assert_eq!(check(&case(Check::Judge, "x"), "x"), None);
        assert!(judge_says_yes("Yes.") && !judge_says_yes("No, it is not"));
    }

    #[test]
    fn separation_finds_the_threshold() {
        let points = [
            (-0.1, true),
            (-0.2, true),
            (-0.9, false),
            (-1.5, false),
            (-0.3, false),
        ];
        let s = separate(&points).unwrap();
        assert_eq!((s.threshold, s.accuracy, s.n), (Some(-0.2), 1.0, 5));
        // Confidently wrong: escalating everything is the best rule.
        let inverse = [(-0.1, false), (-0.2, false), (-0.9, true)];
        assert_eq!(separate(&inverse).unwrap().threshold, None);
        assert!((s.auc - 1.0).abs() < 1e-12);
        let mixed = [(-0.1, false), (-0.2, true)];
        assert_eq!(separate(&mixed).unwrap().auc, 0.0);
        assert!(separate(&[(-0.1, true)]).is_none());
        assert_eq!(confidence(&[-1.0, -0.5]), Some(-0.75));
        assert_eq!(confidence(&[]), None);
    }

    #[test]
    fn wilson_interval() {
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.490).abs() < 0.002 && (hi - 0.943).abs() < 0.002,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(0, 20);
        assert!(lo == 0.0 && (hi - 0.161).abs() < 0.002, "{hi}");
    }

    fn answer(right: bool, confidence: f64, cost_usd: f64) -> Answer {
        Answer {
            right,
            confidence: Some(confidence),
            cost_usd,
        }
    }

    #[test]
    fn a_replayed_cascade_pays_for_every_answer_it_reads() {
        let (cheap, strong) = (answer(false, -0.9, 1.0), answer(true, -0.1, 10.0));
        // Unsure: escalated, both paid for, the strong answer served.
        assert_eq!(
            replay_cascade(&[(&cheap, Some(-0.5)), (&strong, None)]),
            (true, 11.0, 1)
        );
        // Sure enough: the cheap answer, right or not.
        assert_eq!(
            replay_cascade(&[(&cheap, Some(-1.0)), (&strong, None)]),
            (false, 1.0, 0)
        );
        // The last is served whatever its confidence.
        assert_eq!(replay_cascade(&[(&cheap, Some(0.0))]), (false, 1.0, 0));
    }

    #[test]
    fn fold_thresholds_never_see_their_own_cases() {
        // Fold 0 (even cases) separates at -0.2; fold 1 (odd) is inverted.
        let points = [
            Some((-0.1, true)),
            Some((-0.1, false)),
            Some((-0.9, false)),
            Some((-0.2, false)),
            Some((-0.2, true)),
            Some((-0.9, true)),
            None,
        ];
        let t = fold_thresholds(&points, 2);
        // Fold 0 is judged by fold 1's cases (no threshold beats escalating
        // all), fold 1 by fold 0's.
        assert_eq!(t, vec![None, Some(-0.2)]);
    }
}
