//! Request classification: task family and difficulty, with confidences.
//!
//! A small learned model over cheap text features, first-party and in
//! process (no remote API, no LLM call): hashed word unigrams and bigrams plus
//! a few shape features (digits, code symbols, length), fed to a multinomial
//! logistic regression for the family and a binary one for difficulty
//! (P(a mid-size model gets it wrong), learned from RouteLLM's per-model
//! correctness). Weights are trained by `switchyard router-train` and
//! committed in `data/classifier.json`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::taxonomy::{Difficulty, TaskFamily};

/// Feature space size (hashed).
pub const DIM: usize = 1 << 12;
const SHAPE_FEATURES: usize = 6;

/// FNV-1a: a fixed, portable hash (features, data splits, request hashes).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Sparse features: (index, value), L2-normalised.
pub fn features(text: &str) -> Vec<(usize, f32)> {
    let mut counts: HashMap<usize, f32> = HashMap::new();
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let hash = |s: &[&str]| -> usize {
        // The words, each followed by a separator byte.
        let h = fnv1a(
            s.iter()
                .flat_map(|w| w.bytes().chain(std::iter::once(0xff))),
        );
        SHAPE_FEATURES + (h % (DIM - SHAPE_FEATURES) as u64) as usize
    };
    // Long prompts: the head and tail carry the instruction; cap the work.
    let take: Vec<&str> = if words.len() > 512 {
        words[..384]
            .iter()
            .chain(&words[words.len() - 128..])
            .copied()
            .collect()
    } else {
        words
    };
    for (i, w) in take.iter().enumerate() {
        let w = if w.chars().all(|c| c.is_ascii_digit()) {
            "<num>"
        } else {
            w
        };
        *counts.entry(hash(&[w])).or_default() += 1.0;
        if i + 1 < take.len() {
            *counts.entry(hash(&[w, take[i + 1]])).or_default() += 0.7;
        }
    }
    let mut out: Vec<(usize, f32)> = counts
        .into_iter()
        .map(|(k, c)| (k, (1.0 + c).ln()))
        .collect();
    let n = text.chars().count().max(1) as f32;
    let digits = text.chars().filter(|c| c.is_ascii_digit()).count() as f32 / n;
    let code = text
        .chars()
        .filter(|c| "{}()[];=<>_`#".contains(*c))
        .count() as f32
        / n;
    let shape = [
        (0, digits * 5.0),
        (1, code * 5.0),
        (2, (n.ln() / 8.0).min(1.5)),
        (3, if text.contains("```") { 1.0 } else { 0.0 }),
        (
            4,
            if text.trim_end().ends_with('?') {
                1.0
            } else {
                0.0
            },
        ),
        (5, 1.0), // bias
    ];
    out.extend(shape);
    let norm = out.iter().map(|(_, v)| v * v).sum::<f32>().sqrt().max(1e-6);
    for (_, v) in &mut out {
        *v /= norm;
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Classifier {
    pub dim: usize,
    pub families: Vec<TaskFamily>,
    /// `[families][dim]`, row-major.
    pub family_weights: Vec<f32>,
    pub difficulty_weights: Vec<f32>,
    /// How the weights were made (command, data, held-out accuracy).
    pub provenance: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub family: TaskFamily,
    pub family_confidence: f32,
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
            || self.families.is_empty()
            || self.family_weights.len() != self.families.len() * DIM
            || self.difficulty_weights.len() != DIM
        {
            return Err(format!(
                "classifier weights do not fit this build (dim {} vs {DIM}, {} families, {} family weights); rerun `switchyard router-train`",
                self.dim,
                self.families.len(),
                self.family_weights.len()
            ));
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut c = self.clone();
        let round = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x = (*x * 1e4).round() / 1e4);
        round(&mut c.family_weights);
        round(&mut c.difficulty_weights);
        std::fs::write(path, serde_json::to_string(&c)? + "\n")
    }

    fn family_probs(&self, f: &[(usize, f32)]) -> Vec<f32> {
        let mut z = vec![0.0f32; self.families.len()];
        for (k, zk) in z.iter_mut().enumerate() {
            let row = &self.family_weights[k * self.dim..(k + 1) * self.dim];
            *zk = f.iter().map(|&(i, v)| row[i] * v).sum();
        }
        softmax(&mut z);
        z
    }

    fn p_hard(&self, f: &[(usize, f32)]) -> f32 {
        sigmoid(f.iter().map(|&(i, v)| self.difficulty_weights[i] * v).sum())
    }

    pub fn classify(&self, text: &str) -> Classification {
        let f = features(text);
        let probs = self.family_probs(&f);
        let (best, &conf) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        let p_hard = self.p_hard(&f);
        let difficulty = Difficulty::from_p_hard(p_hard);
        // Confidence of the difficulty bucket: distance from the bucket's edges.
        let difficulty_confidence = match difficulty {
            Difficulty::Easy => 1.0 - p_hard / Difficulty::EASY_BELOW,
            Difficulty::Hard => (p_hard - Difficulty::HARD_ABOVE) / (1.0 - Difficulty::HARD_ABOVE),
            Difficulty::Medium => 0.5,
        }
        .clamp(0.0, 1.0);
        Classification {
            family: self.families.get(best).copied().unwrap_or(TaskFamily::Chat),
            family_confidence: conf,
            difficulty,
            difficulty_confidence,
            p_hard,
        }
    }

    /// Train both heads with SGD on class-balanced logistic losses.
    pub fn train(
        family_data: &[(String, TaskFamily)],
        difficulty_data: &[(String, bool)],
        epochs: usize,
    ) -> Self {
        let families = TaskFamily::ALL.to_vec();
        let k = families.len();
        let mut wf = vec![0.0f32; k * DIM];
        let mut wd = vec![0.0f32; DIM];
        let fam_x: Vec<(Vec<(usize, f32)>, usize)> = family_data
            .iter()
            .map(|(t, f)| {
                (
                    features(t),
                    families.iter().position(|x| x == f).unwrap_or(0),
                )
            })
            .collect();
        let mut counts = vec![0usize; k];
        for (_, y) in &fam_x {
            counts[*y] += 1;
        }
        let class_w: Vec<f32> = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0.0
                } else {
                    (fam_x.len() as f32 / (k as f32 * c as f32)).sqrt()
                }
            })
            .collect();
        let dif_x: Vec<(Vec<(usize, f32)>, f32)> = difficulty_data
            .iter()
            .map(|(t, h)| (features(t), if *h { 1.0 } else { 0.0 }))
            .collect();
        let lambda = 1e-5f32;
        let mut order: Vec<usize> = (0..fam_x.len().max(dif_x.len())).collect();
        let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
        for epoch in 0..epochs {
            // Deterministic shuffle (xorshift), so training is reproducible.
            for i in (1..order.len()).rev() {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                order.swap(i, (rng_state % (i as u64 + 1)) as usize);
            }
            let lr = 0.5 / (1.0 + epoch as f32);
            for &i in &order {
                if let Some((x, y)) = fam_x.get(i) {
                    let mut z = vec![0.0f32; k];
                    for (c, zc) in z.iter_mut().enumerate() {
                        *zc = x.iter().map(|&(j, v)| wf[c * DIM + j] * v).sum();
                    }
                    softmax(&mut z);
                    for (c, &p) in z.iter().enumerate() {
                        let g = (p - if c == *y { 1.0 } else { 0.0 }) * class_w[*y];
                        for &(j, v) in x {
                            let w = &mut wf[c * DIM + j];
                            *w -= lr * (g * v + lambda * *w);
                        }
                    }
                }
                if let Some((x, y)) = dif_x.get(i) {
                    let p = sigmoid(x.iter().map(|&(j, v)| wd[j] * v).sum());
                    let g = p - y;
                    for &(j, v) in x {
                        wd[j] -= lr * 0.5 * (g * v + lambda * wd[j]);
                    }
                }
            }
        }
        Classifier {
            dim: DIM,
            families,
            family_weights: wf,
            difficulty_weights: wd,
            provenance: String::new(),
        }
    }
}
