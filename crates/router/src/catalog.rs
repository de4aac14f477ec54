//! What the router knows about each model: capabilities, cost, performance and
//! per-task quality evidence, as declared in `models.toml`.
//!
//! Quality is evidence, not opinion: every score carries its benchmark and
//! source. A task with no evidence is *unknown* and stays unknown: it is never
//! copied from a sibling model or filled with an average.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::taxonomy::TaskFamily;

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
#[serde(default)]
pub struct RoutingProfile {
    pub family: String,
    pub capabilities: Capabilities,
    pub cost: Cost,
    pub performance: Performance,
    /// Evidence per task family; missing families are unknown.
    pub quality: BTreeMap<TaskFamily, Evidence>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelProfile {
    pub id: String,
    pub context_window: usize,
    pub routing: RoutingProfile,
}

impl ModelProfile {
    pub fn quality(&self, task: TaskFamily) -> Option<&Evidence> {
        self.routing.quality.get(&task)
    }
}
