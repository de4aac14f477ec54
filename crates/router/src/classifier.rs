//! Request classification: task and difficulty, with confidences.
//!
//! A small learned model over cheap text features, first-party and in
//! process (no remote API, no LLM call), in the spirit of RouteLLM's
//! BERT/causal-LM classifiers but sized for a sub-millisecond budget:
//!
//! - the final user turn: hashed word unigrams and bigrams, its first and last
//!   words again as the *instruction* (a pasted document should not drown the
//!   request around it), and character trigrams (languages without spaces,
//!   code punctuation);
//! - the system prompt and the previous turn as separate namespaces (an app's
//!   instructions, a conversation's subject);
//! - shape and difficulty cues: digits, code symbols, length, lists, turns,
//!   non-Latin script, constraint and proof/design markers, requested length.
//!
//! Two heads: a multinomial logistic regression for the task and a binary one
//! for `p_hard`, the probability that a mid-size model fails the prompt
//! (learned from RouteLLM's per-model correctness and our labelled realistic
//! prompts). Trained by `switchyard router-train`, committed in
//! `data/classifier.json` with the difficulty buckets chosen on a validation
//! split.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::taxonomy::{Difficulty, Task};

/// Feature space size (hashed).
pub const DIM: usize = 1 << 14;
/// Dense shape features at the start of the vector.
const SHAPE_FEATURES: usize = 17;
/// The shape feature set for a multiple-choice exam question.
const MULTIPLE_CHOICE_FEATURE: usize = 16;
/// Words of a long turn that are read: the head and the tail.
const HEAD_WORDS: usize = 384;
const TAIL_WORDS: usize = 128;
/// Words at each end of the final turn that count as the instruction.
const INSTRUCTION_WORDS: usize = 40;
/// Characters at each end of the final turn read as trigrams.
const TRIGRAM_CHARS: usize = 400;
/// Weights of a character trigram and of a cross-lingual cue, against 1 for
/// a word (chosen on the validation split).
const TRIGRAM_WEIGHT: f32 = 0.8;
const CUE_WEIGHT: f32 = 2.0;

/// FNV-1a: a fixed, portable hash (features, data splits, request hashes).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Words that mark constraints, proofs and design work: difficulty cues.
const DEMANDING: &[&str] = &[
    "must",
    "should",
    "without",
    "ensure",
    "require",
    "requirements",
    "constraint",
    "constraints",
    "exactly",
    "guarantee",
    "prove",
    "proof",
    "rigorous",
    "design",
    "tradeoffs",
    "trade",
    "optimal",
    "complexity",
    "concurrent",
    "lock",
    "distributed",
    "scalable",
    "edge",
    "invariant",
    "formal",
    "derive",
];

/// Cross-lingual cue stems (`data/cues.tsv`): a stem in any language fires
/// its canonical English cue, so what the classifier learns from English
/// requests carries over to the same request in another language.
struct Cues {
    /// Canonical cue names, indexed by id.
    names: Vec<String>,
    /// Stems that match at the start of a word, keyed by their first three
    /// characters (or the whole stem when shorter).
    by_prefix: HashMap<String, Vec<(String, usize)>>,
    /// Stems in scripts written without spaces, and multi-word stems:
    /// matched anywhere as substrings.
    anywhere: Vec<(String, usize)>,
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xf900..=0xfaff)
}

/// Between words: anything but letters, digits and combining marks (the
/// vowel signs of Devanagari, Arabic diacritics), so "„übersetze", "—translate"
/// and a word before "،" or "।" all start or end where they should.
fn is_word_break(c: char) -> bool {
    let mark = matches!(c as u32, 0x0300..=0x036f | 0x0610..=0x061a | 0x064b..=0x065f | 0x0900..=0x0963 | 0x0966..=0x097f);
    !(c.is_alphanumeric() || mark)
}

fn prefix_key(s: &str) -> String {
    s.chars().take(3).collect()
}

impl Cues {
    fn parse(tsv: &str) -> Cues {
        let mut cues = Cues {
            names: Vec::new(),
            by_prefix: HashMap::new(),
            anywhere: Vec::new(),
        };
        for line in tsv.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, stem)) = line.split_once('\t') else {
                continue;
            };
            let stem = stem.trim().to_lowercase();
            if stem.is_empty() {
                continue;
            }
            let id = match cues.names.iter().position(|n| n == name) {
                Some(id) => id,
                None => {
                    cues.names.push(name.to_string());
                    cues.names.len() - 1
                }
            };
            if stem.chars().any(is_cjk) || stem.contains([' ', '-']) {
                cues.anywhere.push((stem, id));
            } else {
                cues.by_prefix
                    .entry(prefix_key(&stem))
                    .or_default()
                    .push((stem, id));
            }
        }
        cues
    }

    fn embedded() -> &'static Cues {
        static CUES: std::sync::OnceLock<Cues> = std::sync::OnceLock::new();
        CUES.get_or_init(|| Cues::parse(include_str!("../data/cues.tsv")))
    }

    /// The canonical cues found in `lower` (lowercased text), with repeats.
    fn find(&self, lower: &str, mut hit: impl FnMut(&str)) {
        for word in lower.split(is_word_break) {
            if word.is_empty() {
                continue;
            }
            // A stem shorter than three characters is keyed by itself.
            // The word's first one, two and three characters, as slices.
            let ends = word
                .char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .chain([word.len()]);
            for end in ends.take(3) {
                if let Some(stems) = self.by_prefix.get(&word[..end]) {
                    for (stem, id) in stems {
                        if word.starts_with(stem.as_str()) {
                            hit(&self.names[*id]);
                        }
                    }
                }
            }
        }
        let has_cjk = lower.chars().any(is_cjk);
        for (stem, id) in &self.anywhere {
            if (has_cjk || !stem.chars().any(is_cjk)) && lower.contains(stem.as_str()) {
                hit(&self.names[*id]);
            }
        }
    }
}

/// One chat turn as the classifier reads it.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

fn words(text: &str) -> Vec<String> {
    words_of_lowercase(&text.to_lowercase())
}

/// [`words`] of a text already lowercased.
fn words_of_lowercase(lower: &str) -> Vec<String> {
    let all: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let take: Vec<&str> = if all.len() > HEAD_WORDS + TAIL_WORDS {
        all[..HEAD_WORDS]
            .iter()
            .chain(&all[all.len() - TAIL_WORDS..])
            .copied()
            .collect()
    } else {
        all
    };
    take.into_iter()
        .map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                "<num>".to_string()
            } else {
                // Long runs (CJK sentences, identifiers) are read by the trigrams.
                w.chars().take(24).collect()
            }
        })
        .collect()
}

struct Sparse(HashMap<usize, f32>);

impl Sparse {
    fn add(&mut self, namespace: u8, parts: &[&str], weight: f32) {
        let h = fnv1a(
            std::iter::once(namespace).chain(
                parts
                    .iter()
                    .flat_map(|w| w.bytes().chain(std::iter::once(0xff))),
            ),
        );
        let slot = SHAPE_FEATURES + (h % (DIM - SHAPE_FEATURES) as u64) as usize;
        *self.0.entry(slot).or_default() += weight;
    }
}

fn edge_chars(text: &str, n: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 2 * n {
        return text.to_lowercase();
    }
    let head: String = chars[..n].iter().collect();
    let tail: String = chars[chars.len() - n..].iter().collect();
    format!("{head} \u{2026} {tail}").to_lowercase()
}

/// Sparse features of a conversation: (index, value); the hashed text part
/// has unit norm, the shape part keeps its own scale.
pub fn features_of(turns: &[Turn<'_>]) -> Vec<(usize, f32)> {
    let last_user = turns.iter().rposition(|t| t.role == "user");
    let user = last_user.map_or("", |i| turns[i].content);
    let system: Vec<&str> = turns
        .iter()
        .filter(|t| t.role == "system" || t.role == "developer")
        .map(|t| t.content)
        .collect();
    let previous = last_user
        .and_then(|i| turns[..i].iter().rev().find(|t| t.role != "system"))
        .map(|t| t.content);
    let mut sparse = Sparse(HashMap::new());
    let user_lower = user.to_lowercase();
    let w = words_of_lowercase(&user_lower);
    for (i, word) in w.iter().enumerate() {
        sparse.add(b'u', &[word], 1.0);
        if let Some(next) = w.get(i + 1) {
            sparse.add(b'u', &[word, next], 0.7);
        }
    }
    let n = w.len();
    for (i, word) in w.iter().enumerate() {
        if i < INSTRUCTION_WORDS || i + INSTRUCTION_WORDS >= n {
            sparse.add(b'i', &[word], 0.8);
        }
    }
    // A multiple-choice exam question is its own kind of input: its words
    // again in their own namespace, so what makes one hard is learned apart
    // from what makes a request hard.
    if is_multiple_choice(user) {
        for word in &w {
            sparse.add(b'e', &[word], 1.0);
        }
    }
    let edges_text = edge_chars(user, TRIGRAM_CHARS);
    let cues = Cues::embedded();
    cues.find(&edges_text, |cue| sparse.add(b'x', &[cue], CUE_WEIGHT));
    let edges: Vec<char> = edges_text.chars().collect();
    for tri in edges.windows(3) {
        let s: String = tri.iter().collect();
        sparse.add(b'c', &[&s], TRIGRAM_WEIGHT);
    }
    for s in &system {
        for word in words(s).iter().take(200) {
            sparse.add(b's', &[word], 0.6);
        }
        cues.find(&edge_chars(s, TRIGRAM_CHARS), |cue| {
            sparse.add(b'y', &[cue], 0.6)
        });
    }
    if let Some(p) = previous {
        for word in words(p).iter().rev().take(200) {
            sparse.add(b'h', &[word], 0.4);
        }
    }
    let mut out: Vec<(usize, f32)> = sparse
        .0
        .into_iter()
        .map(|(k, c)| (k, (1.0 + c).ln()))
        .collect();
    // A fixed order (the map's is random per process), so sums, and so the
    // trained weights, are the same on every run.
    out.sort_unstable_by_key(|&(k, _)| k);
    let norm = out.iter().map(|(_, v)| v * v).sum::<f32>().sqrt().max(1e-6);
    for (_, v) in &mut out {
        *v /= norm;
    }
    out.extend(shape(
        user,
        &user_lower,
        &w,
        !system.is_empty(),
        turns.len(),
    ));
    out
}

/// Lettered options ("A. …", "B) …", "(C) …") on their own lines.
fn is_multiple_choice(text: &str) -> bool {
    let options = text
        .lines()
        .filter(|l| {
            let t = l.trim_start().trim_start_matches('(');
            let mut chars = t.chars();
            matches!(
                (chars.next(), chars.next()),
                (Some('A'..='E'), Some('.' | ')' | ':'))
            )
        })
        .count();
    options >= 3
}

/// Features of a single user message.
pub fn features(text: &str) -> Vec<(usize, f32)> {
    features_of(&[Turn {
        role: "user",
        content: text,
    }])
}

fn shape(
    text: &str,
    lower: &str,
    words: &[String],
    has_system: bool,
    turns: usize,
) -> [(usize, f32); SHAPE_FEATURES] {
    let chars = text.chars().count().max(1) as f32;
    let ratio = |pred: fn(char) -> bool| text.chars().filter(|&c| pred(c)).count() as f32 / chars;
    let lines: Vec<&str> = text.lines().collect();
    let listed = lines
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- ")
                || t.starts_with("* ")
                || t.starts_with("• ")
                || t.split_once(['.', ')']).is_some_and(|(n, _)| {
                    !n.is_empty() && n.len() <= 2 && n.chars().all(|c| c.is_ascii_digit())
                })
        })
        .count();
    let demanding = words
        .iter()
        .filter(|w| DEMANDING.contains(&w.as_str()))
        .count();
    let asks_length = [
        "words",
        "detailed",
        "comprehensive",
        "in depth",
        "step by step",
        "thorough",
    ]
    .iter()
    .any(|k| lower.contains(k));
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        (0, ratio(|c| c.is_ascii_digit()) * 5.0),
        (1, ratio(|c| "{}()[];=<>_`#\\|$".contains(c)) * 5.0),
        (2, (chars.ln() / 8.0).min(1.5)),
        (3, flag(text.contains("```"))),
        (4, flag(text.trim_end().ends_with('?'))),
        (5, 1.0), // bias
        (6, flag(has_system)),
        (7, ((1 + turns) as f32).ln() / 2.0),
        (8, ((1 + lines.len()) as f32).ln() / 5.0),
        (9, ((1 + listed) as f32).ln() / 3.0),
        (10, ratio(|c| !c.is_ascii())),
        (
            11,
            ratio(|c| matches!(c as u32, 0x3040..=0x30ff | 0x4e00..=0x9fff | 0xac00..=0xd7af)),
        ),
        (12, ((1 + demanding) as f32).ln() / 2.0),
        (13, flag(asks_length)),
        (14, ((1 + text.matches('?').count()) as f32).ln() / 2.0),
        (15, flag(chars > 1500.0)),
        (MULTIPLE_CHOICE_FEATURE, flag(is_multiple_choice(text))),
    ]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Classifier {
    pub dim: usize,
    pub tasks: Vec<Task>,
    /// `[tasks][dim]`, row-major.
    pub task_weights: Vec<f32>,
    pub difficulty_weights: Vec<f32>,
    /// The difficulty head for multiple-choice exam questions (lettered
    /// options), trained on RouteLLM's MMLU alone: what makes an exam
    /// question hard is not what makes a request hard.
    #[serde(default)]
    pub exam_difficulty_weights: Vec<f32>,
    /// `p_hard` below this is easy, above `hard_above` hard (chosen on the
    /// validation split by `router-train`).
    pub easy_below: f32,
    pub hard_above: f32,
    /// How the weights were made (command, data, held-out figures).
    pub provenance: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub task: Task,
    pub task_confidence: f32,
    pub difficulty: Difficulty,
    pub difficulty_confidence: f32,
    /// Probability that a mid-size model fails this prompt.
    pub p_hard: f32,
}

fn softmax(z: &mut [f32]) {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in z.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in z.iter_mut() {
        *x /= s;
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Training examples: features and a label.
pub struct Examples<L> {
    pub x: Vec<Vec<(usize, f32)>>,
    pub y: Vec<L>,
    /// Per-example weight (source mix, class balance).
    pub weight: Vec<f32>,
}

impl<L> Default for Examples<L> {
    fn default() -> Self {
        Examples {
            x: Vec::new(),
            y: Vec::new(),
            weight: Vec::new(),
        }
    }
}

impl<L> Examples<L> {
    pub fn push(&mut self, x: Vec<(usize, f32)>, y: L, weight: f32) {
        self.x.push(x);
        self.y.push(y);
        self.weight.push(weight);
    }
}

/// AdaGrad step on one sparse example's gradient.
fn adagrad(
    w: &mut [f32],
    g2: &mut [f32],
    base: usize,
    x: &[(usize, f32)],
    g: f32,
    lr: f32,
    l2: f32,
) {
    for &(j, v) in x {
        let k = base + j;
        let grad = g * v + l2 * w[k];
        g2[k] += grad * grad;
        w[k] -= lr * grad / (g2[k].sqrt() + 1e-6);
    }
}

/// A binary logistic head on soft labels.
fn train_binary(ex: &Examples<f32>, epochs: usize, seed: u64) -> Vec<f32> {
    let (lr, l2) = (0.1f32, 1e-4f32);
    let mut w = vec![0.0f32; DIM];
    let mut g2 = vec![0.0f32; DIM];
    for epoch in 0..epochs {
        for &i in &shuffled(ex.x.len(), seed ^ epoch as u64) {
            let x = &ex.x[i];
            let p = sigmoid(x.iter().map(|&(j, v)| w[j] * v).sum());
            adagrad(&mut w, &mut g2, 0, x, (p - ex.y[i]) * ex.weight[i], lr, l2);
        }
    }
    w
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    order
}

impl Classifier {
    /// The committed weights.
    pub fn embedded() -> Result<Self, String> {
        let c: Classifier = serde_json::from_str(include_str!("../data/classifier.json"))
            .map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Weights of the right shapes for this build's feature space.
    pub fn validate(&self) -> Result<(), String> {
        if self.dim != DIM
            || self.tasks.is_empty()
            || self.task_weights.len() != self.tasks.len() * DIM
            || self.difficulty_weights.len() != DIM
            || !(self.exam_difficulty_weights.is_empty()
                || self.exam_difficulty_weights.len() == DIM)
        {
            return Err(format!(
                "classifier weights do not fit this build (dim {} vs {DIM}, {} tasks, {} task weights); rerun `switchyard router-train`",
                self.dim,
                self.tasks.len(),
                self.task_weights.len()
            ));
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut c = self.clone();
        let round = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x = (*x * 1e3).round() / 1e3);
        round(&mut c.task_weights);
        round(&mut c.difficulty_weights);
        round(&mut c.exam_difficulty_weights);
        std::fs::write(path, serde_json::to_string(&c)? + "\n")
    }

    fn task_probs(&self, f: &[(usize, f32)]) -> Vec<f32> {
        let mut z = vec![0.0f32; self.tasks.len()];
        for (k, zk) in z.iter_mut().enumerate() {
            let row = &self.task_weights[k * self.dim..(k + 1) * self.dim];
            *zk = f.iter().map(|&(i, v)| row[i] * v).sum();
        }
        softmax(&mut z);
        z
    }

    fn p_hard_of(&self, f: &[(usize, f32)]) -> f32 {
        let exam = f
            .iter()
            .any(|&(i, v)| i == MULTIPLE_CHOICE_FEATURE && v > 0.0);
        let w = if exam && !self.exam_difficulty_weights.is_empty() {
            &self.exam_difficulty_weights
        } else {
            &self.difficulty_weights
        };
        sigmoid(f.iter().map(|&(i, v)| w[i] * v).sum())
    }

    pub fn difficulty_of(&self, p_hard: f32) -> Difficulty {
        if p_hard < self.easy_below {
            Difficulty::Easy
        } else if p_hard > self.hard_above {
            Difficulty::Hard
        } else {
            Difficulty::Medium
        }
    }

    /// Classify a single user message.
    pub fn classify(&self, text: &str) -> Classification {
        self.classify_features(&features(text))
    }

    /// Classify a conversation: the final user turn, read with its system
    /// prompt and the turn before it.
    pub fn classify_chat(&self, turns: &[Turn<'_>]) -> Classification {
        self.classify_features(&features_of(turns))
    }

    fn classify_features(&self, f: &[(usize, f32)]) -> Classification {
        let probs = self.task_probs(f);
        let (best, &conf) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        let p_hard = self.p_hard_of(f);
        let difficulty = self.difficulty_of(p_hard);
        // Confidence of the difficulty bucket: distance from the bucket's edges.
        let difficulty_confidence = match difficulty {
            Difficulty::Easy => 1.0 - p_hard / self.easy_below.max(1e-6),
            Difficulty::Hard => (p_hard - self.hard_above) / (1.0 - self.hard_above).max(1e-6),
            Difficulty::Medium => 0.5,
        }
        .clamp(0.0, 1.0);
        Classification {
            task: self.tasks.get(best).copied().unwrap_or(Task::Chat),
            task_confidence: conf,
            difficulty,
            difficulty_confidence,
            p_hard,
        }
    }

    /// Train the heads (AdaGrad on weighted logistic losses, deterministic).
    /// `difficulty` labels are soft: the probability the prompt is hard;
    /// `exam` trains the difficulty of multiple-choice exam questions.
    pub fn train(
        task: &Examples<Task>,
        difficulty: &Examples<f32>,
        exam: &Examples<f32>,
        epochs: usize,
    ) -> Self {
        let tasks = Task::ALL.to_vec();
        let k = tasks.len();
        let mut wt = vec![0.0f32; k * DIM];
        let mut gt = vec![0.0f32; k * DIM];
        let labels: Vec<usize> = task
            .y
            .iter()
            .map(|t| tasks.iter().position(|x| x == t).unwrap_or(0))
            .collect();
        let (lr, l2) = (0.2f32, 1e-4f32);
        let mut z = vec![0.0f32; k];
        for epoch in 0..epochs {
            for &i in &shuffled(task.x.len(), 0x2545_F491_4F6C_DD1D ^ epoch as u64) {
                let x = &task.x[i];
                for (c, zc) in z.iter_mut().enumerate() {
                    *zc = x.iter().map(|&(j, v)| wt[c * DIM + j] * v).sum();
                }
                softmax(&mut z);
                for (c, &p) in z.iter().enumerate() {
                    let g = (p - if c == labels[i] { 1.0 } else { 0.0 }) * task.weight[i];
                    adagrad(&mut wt, &mut gt, c * DIM, x, g, lr, l2);
                }
            }
        }
        Classifier {
            dim: DIM,
            tasks,
            task_weights: wt,
            difficulty_weights: train_binary(difficulty, epochs, 0x9E37_79B9_7F4A_7C15),
            exam_difficulty_weights: train_binary(exam, epochs, 0xD1B5_4A32_D192_ED03),
            easy_below: 0.3,
            hard_above: 0.6,
            provenance: String::new(),
        }
    }
}
