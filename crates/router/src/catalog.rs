//! What the router knows about each model: capabilities, cost, performance and
//! per-task quality evidence, as declared in `models.toml`.
//!
//! Quality is evidence, not opinion: every score carries its benchmark and
//! source. A task with no evidence is *unknown* and stays unknown: it is never
//! copied from a sibling model or filled with an average.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::taxonomy::Task;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Emits structured tool calls.
    pub tools: bool,
    /// Honours `response_format` (JSON mode / schema).
    pub json: bool,
    /// Longest completion the model should be asked for (0 = context-bound).
    pub max_output: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// In [0, 1]: the benchmark value as a fraction.
    pub score: f32,
    pub benchmark: String,
    /// The published figure as written at the source.
    pub value: String,
    /// Where it came from (URL or "measured locally: <command>").
    pub source: String,
    /// For a score `switchyard eval` measured: its provenance, field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measurement>,
}

/// Where a measured score came from: the suite (its name and the SHA-256 of
/// its file), how many cases and how many were right, the 95% Wilson
/// interval, the date (UTC) and the command that measures it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub suite: String,
    pub suite_sha256: String,
    pub n: usize,
    pub correct: usize,
    pub ci95: [f64; 2],
    pub date: String,
    pub command: String,
}

/// Price per million tokens: given, or derived from the machine's hourly
/// price and the model's throughput (measured live when available).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, untagged)]
pub enum Cost {
    Priced {
        input_per_mtok: f64,
        output_per_mtok: f64,
    },
    Derived {
        usd_per_hour: f64,
    },
}

impl Default for Cost {
    fn default() -> Self {
        Cost::Derived { usd_per_hour: 0.0 }
    }
}

/// Nominal throughput, used until the engine has measured its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Performance {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Where the nominal numbers come from.
    pub source: String,
}

impl Default for Performance {
    fn default() -> Self {
        Performance {
            prefill_tok_s: 20.0,
            decode_tok_s: 20.0,
            source: "default guess".into(),
        }
    }
}

/// The routing-relevant part of one `[[models]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingProfile {
    pub family: String,
    pub capabilities: Capabilities,
    pub cost: Cost,
    pub performance: Performance,
    /// Evidence per task; missing tasks are unknown.
    pub quality: BTreeMap<Task, Evidence>,
    /// Evidence from a benchmark of the task's hard end (MATH for math,
    /// GPQA for knowledge): used, as measured, for prompts classed hard when
    /// every model with evidence for the task has such a figure, so that one
    /// decision compares like with like.
    pub quality_hard: BTreeMap<Task, Evidence>,
    /// A general-capability benchmark (e.g. MMLU-Pro). Used only for a task
    /// with no evidence, and then labelled as a proxy in every record.
    pub general: Option<Evidence>,
    /// The model this one was fine-tuned from: documentation only. A
    /// fine-tune never inherits its base model's scores.
    pub fine_tuned_from: Option<String>,
    /// Per task: the mean token log-probability at or above which a
    /// `cascade` accepts this model's answer (`switchyard eval` calibrates
    /// it); a task without one is accepted unchecked.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub confidence_threshold: BTreeMap<Task, f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelProfile {
    pub id: String,
    pub context_window: usize,
    pub routing: RoutingProfile,
}

fn check(what: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} = {v} is not a number in [{lo}, {hi}]"))
    }
}

impl RoutingProfile {
    /// Numbers the router can rank on: scores in [0, 1], finite
    /// non-negative prices, positive speeds.
    pub fn validate(&self) -> Result<(), String> {
        let evidence = self
            .quality
            .iter()
            .map(|(t, e)| (format!("quality.{}", t.as_str()), e))
            .chain(
                self.quality_hard
                    .iter()
                    .map(|(t, e)| (format!("quality_hard.{}", t.as_str()), e)),
            )
            .chain(self.general.iter().map(|e| ("general".to_string(), e)));
        for (name, e) in evidence {
            check(&format!("{name}.score"), e.score as f64, 0.0, 1.0)?;
        }
        for (task, t) in &self.confidence_threshold {
            check(
                &format!("confidence_threshold.{}", task.as_str()),
                *t,
                f64::MIN,
                0.0,
            )?;
        }
        match self.cost {
            Cost::Priced {
                input_per_mtok,
                output_per_mtok,
            } => {
                check("cost.input_per_mtok", input_per_mtok, 0.0, f64::MAX)?;
                check("cost.output_per_mtok", output_per_mtok, 0.0, f64::MAX)?;
            }
            Cost::Derived { usd_per_hour } => {
                check("cost.usd_per_hour", usd_per_hour, 0.0, f64::MAX)?
            }
        }
        check(
            "performance.prefill_tok_s",
            self.performance.prefill_tok_s,
            1e-3,
            f64::MAX,
        )?;
        check(
            "performance.decode_tok_s",
            self.performance.decode_tok_s,
            1e-3,
            f64::MAX,
        )
    }
}

/// Where a candidate's quality estimate comes from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityBasis {
    /// No evidence: never assumed good.
    Unknown,
    /// A general benchmark standing in for the task, labelled as such.
    Proxy,
    /// A benchmark of this task.
    Task,
}

impl ModelProfile {
    pub fn quality(&self, task: Task) -> Option<&Evidence> {
        self.routing.quality.get(&task)
    }

    /// The best evidence this model has for `task`: the task's own, else the
    /// general proxy, else none.
    pub fn evidence_for(&self, task: Task) -> (QualityBasis, Option<&Evidence>) {
        match (self.quality(task), &self.routing.general) {
            (Some(e), _) => (QualityBasis::Task, Some(e)),
            (None, Some(g)) => (QualityBasis::Proxy, Some(g)),
            (None, None) => (QualityBasis::Unknown, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_router_cannot_rank_on_are_refused() {
        let evidence = |score: f32| Evidence {
            score,
            benchmark: "b".into(),
            value: "v".into(),
            source: "s".into(),
            measured: None,
        };
        let mut p = RoutingProfile::default();
        assert_eq!(p.validate(), Ok(()));
        p.quality.insert(Task::Math, evidence(f32::NAN));
        assert!(p.validate().unwrap_err().contains("quality.math.score"));
        p.quality.insert(Task::Math, evidence(0.5));
        p.general = Some(evidence(1.5));
        assert!(p.validate().unwrap_err().contains("general.score"));
        p.general = None;
        p.cost = Cost::Priced {
            input_per_mtok: -1.0,
            output_per_mtok: 1.0,
        };
        assert!(p.validate().unwrap_err().contains("input_per_mtok"));
        p.cost = Cost::Derived { usd_per_hour: 1.0 };
        p.performance.decode_tok_s = 0.0;
        assert!(p.validate().unwrap_err().contains("decode_tok_s"));
    }
}
