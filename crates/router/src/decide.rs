//! Picking a model: hard filters, then scores on quality, cost and latency
//! under the caller's objective. Shaped like TGI's router and OpenRouter's
//! provider routing: every candidate stays in the record, excluded ones with
//! their reason, scored ones with each axis.
//!
//! Latency comes from live engine state (queue depth, running batch, free KV
//! blocks, measured prefill/decode rates) through [`LiveLoad`], which only an
//! in-process router can see.

use serde::{Deserialize, Serialize};

use crate::catalog::{Cost, ModelProfile};
use crate::classifier::Classification;
use crate::taxonomy::Difficulty;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    Quality,
    Cost,
    Latency,
    #[default]
    Balanced,
}

impl Objective {
    pub fn parse(s: &str) -> Option<Objective> {
        match s {
            "quality" => Some(Objective::Quality),
            "cost" => Some(Objective::Cost),
            "latency" => Some(Objective::Latency),
            "balanced" => Some(Objective::Balanced),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Quality => "quality",
            Objective::Cost => "cost",
            Objective::Latency => "latency",
            Objective::Balanced => "balanced",
        }
    }

    /// Weights of (quality, cost, latency).
    fn weights(self) -> (f64, f64, f64) {
        match self {
            Objective::Quality => (1.0, 0.05, 0.05),
            Objective::Cost => (0.05, 1.0, 0.05),
            Objective::Latency => (0.05, 0.05, 1.0),
            Objective::Balanced => (0.5, 0.25, 0.25),
        }
    }
}

/// The caller's routing options (`"routing": {...}` in the request body).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingOptions {
    pub objective: Option<Objective>,
    /// Allowlist: only these models may serve.
    pub models: Option<Vec<String>>,
    pub exclude: Vec<String>,
    pub min_quality: Option<f32>,
    pub max_cost_usd: Option<f64>,
    pub max_ttft_ms: Option<f64>,
}

/// A model's live state, as its engine reports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LoadSnapshot {
    pub healthy: bool,
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_free: usize,
    pub block_size: usize,
    /// Measured, tokens/s; 0 when not measured yet.
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// The narrow view the router has of a serving engine.
pub trait LiveLoad {
    fn load(&self, model: &str) -> Option<LoadSnapshot>;
    /// Waiting requests beyond which a model counts as saturated.
    fn max_waiting(&self) -> usize;
}

/// Everything about one request that routing needs.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    pub classification: Classification,
    /// Prompt tokens per model (tokenizers differ), or one estimate for all.
    pub prompt_tokens: Vec<(String, usize)>,
    pub max_tokens: Option<usize>,
    pub needs_tools: bool,
    pub needs_json: bool,
    pub options: RoutingOptions,
    pub default_objective: Objective,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AxisScores {
    pub quality: f64,
    pub cost: f64,
    pub latency: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub model: String,
    /// Why it cannot serve this request; `None` for scored candidates.
    pub excluded: Option<String>,
    /// Difficulty-adjusted expected quality; `None` = unknown.
    pub quality: Option<f64>,
    pub quality_evidence: Option<String>,
    pub predicted_cost_usd: f64,
    pub cost_basis: String,
    pub predicted_ttft_ms: f64,
    pub predicted_total_ms: f64,
    pub scores: Option<AxisScores>,
    pub total: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// The request named a concrete model: recorded, not scored.
    pub pinned: bool,
    pub objective: Objective,
    pub options: RoutingOptions,
    pub classification: Classification,
    pub candidates: Vec<Candidate>,
    /// Scored candidates, best first: the winner, then the fallbacks.
    pub order: Vec<String>,
    pub why: String,
}

/// Output tokens assumed when the caller sets no `max_tokens`.
const DEFAULT_OUTPUT_TOKENS: usize = 256;

fn difficulty_exponent(d: Difficulty) -> f64 {
    match d {
        Difficulty::Easy => 1.0,
        Difficulty::Medium => 1.5,
        Difficulty::Hard => 2.0,
    }
}

pub fn decide(models: &[ModelProfile], req: &RouteRequest, live: &dyn LiveLoad) -> Decision {
    let objective = req.options.objective.unwrap_or(req.default_objective);
    let task = req.classification.family;
    let out_tokens = req.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS);
    let mut candidates = Vec::with_capacity(models.len());
    for m in models {
        let prompt = req
            .prompt_tokens
            .iter()
            .find(|(id, _)| id == &m.id)
            .or(req.prompt_tokens.first())
            .map_or(0, |p| p.1);
        let load = live.load(&m.id);
        let perf = &m.routing.performance;
        let (prefill_rate, decode_rate, waiting, running) = match &load {
            Some(l) => (
                if l.prefill_tok_s > 0.0 {
                    l.prefill_tok_s
                } else {
                    perf.prefill_tok_s
                },
                if l.decode_tok_s > 0.0 {
                    l.decode_tok_s
                } else {
                    perf.decode_tok_s
                },
                l.waiting,
                l.running,
            ),
            None => (perf.prefill_tok_s, perf.decode_tok_s, 0, 0),
        };
        let prefill_rate = prefill_rate.max(1e-3);
        let decode_rate = decode_rate.max(1e-3);
        // Queued prompts are prefilled first; the decode batch shares the rate.
        let per_seq_decode = decode_rate / (running + 1) as f64;
        // KV pressure: when the free blocks cannot hold this request, it waits
        // until running sequences generate (and finish) that many tokens.
        let kv_wait_ms = match &load {
            Some(l) if l.block_size > 0 && running > 0 => {
                let free_tokens = l.kv_blocks_free * l.block_size;
                let deficit = (prompt + out_tokens).saturating_sub(free_tokens);
                1000.0 * deficit as f64 / decode_rate
            }
            _ => 0.0,
        };
        let ttft_ms = kv_wait_ms + 1000.0 * ((waiting + 1) * prompt) as f64 / prefill_rate;
        let total_ms = ttft_ms + 1000.0 * out_tokens as f64 / per_seq_decode;
        let (cost_usd, cost_basis) = match m.routing.cost {
            Cost::Priced {
                input_per_mtok,
                output_per_mtok,
            } => (
                (prompt as f64 * input_per_mtok + out_tokens as f64 * output_per_mtok) / 1e6,
                format!("priced ${input_per_mtok}/M in, ${output_per_mtok}/M out"),
            ),
            Cost::Derived { usd_per_hour } => {
                let seconds = prompt as f64 / prefill_rate + out_tokens as f64 / decode_rate;
                (
                    usd_per_hour * seconds / 3600.0,
                    format!("derived: ${usd_per_hour}/h × compute time at {prefill_rate:.0} prefill / {decode_rate:.0} decode tok/s"),
                )
            }
        };
        let evidence = m.quality(task);
        let quality = evidence.map(|e| {
            (e.score.clamp(0.0, 1.0) as f64)
                .powf(difficulty_exponent(req.classification.difficulty))
        });
        let mut c = Candidate {
            model: m.id.clone(),
            excluded: None,
            quality,
            quality_evidence: evidence
                .map(|e| format!("{} = {} ({})", e.benchmark, e.value, e.source)),
            predicted_cost_usd: cost_usd,
            cost_basis,
            predicted_ttft_ms: ttft_ms,
            predicted_total_ms: total_ms,
            scores: None,
            total: None,
        };
        c.excluded = exclusion(m, req, &load, live, prompt, out_tokens, &c);
        candidates.push(c);
    }
    // Normalise cost and latency against the best eligible candidate.
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].excluded.is_none())
        .collect();
    let min_cost = eligible
        .iter()
        .map(|&i| candidates[i].predicted_cost_usd)
        .fold(f64::INFINITY, f64::min);
    let min_lat = eligible
        .iter()
        .map(|&i| candidates[i].predicted_total_ms)
        .fold(f64::INFINITY, f64::min);
    let (wq, wc, wl) = objective.weights();
    for &i in &eligible {
        let c = &mut candidates[i];
        let cost = if c.predicted_cost_usd <= 0.0 {
            1.0
        } else {
            min_cost / c.predicted_cost_usd
        };
        let latency = if c.predicted_total_ms <= 0.0 {
            1.0
        } else {
            min_lat / c.predicted_total_ms
        };
        // Unknown quality scores zero: never assumed good.
        let quality = c.quality.unwrap_or(0.0);
        c.scores = Some(AxisScores {
            quality,
            cost,
            latency,
        });
        c.total = Some(wq * quality + wc * cost + wl * latency);
    }
    // Under the quality objective, evidence comes first: a model with known
    // quality outranks one whose quality is unknown, whatever their totals.
    let mut order: Vec<usize> = eligible.clone();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        let known = |c: &Candidate| objective == Objective::Quality && c.quality.is_some();
        known(cb)
            .cmp(&known(ca))
            .then(
                cb.total
                    .partial_cmp(&ca.total)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(ca.model.cmp(&cb.model))
    });
    let why = match order.first() {
        None => "no model can serve this request: every candidate was excluded".to_string(),
        Some(&w) => {
            let c = &candidates[w];
            let q = c.quality.map_or("unknown quality".to_string(), |q| {
                format!("expected quality {q:.2}")
            });
            format!(
                "{} wins on {} for {} {} prompt: {q}, ~${:.6}, ~{:.0} ms to first token ({} of {} models eligible)",
                c.model,
                objective.as_str(),
                match req.classification.difficulty {
                    Difficulty::Easy => "an easy",
                    Difficulty::Medium => "a medium",
                    Difficulty::Hard => "a hard",
                },
                task.as_str(),
                c.predicted_cost_usd,
                c.predicted_ttft_ms,
                eligible.len(),
                candidates.len()
            )
        }
    };
    Decision {
        pinned: false,
        objective,
        options: req.options.clone(),
        classification: req.classification.clone(),
        order: order.iter().map(|&i| candidates[i].model.clone()).collect(),
        candidates,
        why,
    }
}

/// The record for a request that named its model: no scoring, no fallback.
pub fn pinned(
    model: &str,
    classification: Classification,
    options: RoutingOptions,
    objective: Objective,
) -> Decision {
    Decision {
        pinned: true,
        objective,
        options,
        classification,
        candidates: Vec::new(),
        order: vec![model.to_string()],
        why: format!("{model} was named by the request (pinned; no scoring)"),
    }
}

fn exclusion(
    m: &ModelProfile,
    req: &RouteRequest,
    load: &Option<LoadSnapshot>,
    live: &dyn LiveLoad,
    prompt: usize,
    out_tokens: usize,
    c: &Candidate,
) -> Option<String> {
    let o = &req.options;
    if let Some(allow) = &o.models {
        if !allow.contains(&m.id) {
            return Some("not in the request's allowlist (routing.models)".into());
        }
    }
    if o.exclude.contains(&m.id) {
        return Some("excluded by the request (routing.exclude)".into());
    }
    if prompt + out_tokens > m.context_window {
        return Some(format!(
            "context window {} < {prompt} prompt + {out_tokens} output tokens",
            m.context_window
        ));
    }
    let caps = &m.routing.capabilities;
    if let Some(asked) = req
        .max_tokens
        .filter(|&t| caps.max_output > 0 && t > caps.max_output)
    {
        return Some(format!(
            "max_tokens {asked} > its max_output {}",
            caps.max_output
        ));
    }
    if req.needs_tools && !caps.tools {
        return Some("does not support tools".into());
    }
    if req.needs_json && !caps.json {
        return Some("does not support response_format".into());
    }
    match load {
        None => return Some("not loaded".into()),
        Some(l) if !l.healthy => return Some("unhealthy".into()),
        Some(l) if l.waiting >= live.max_waiting() => {
            return Some(format!("saturated ({} waiting)", l.waiting))
        }
        _ => {}
    }
    if let Some(floor) = o.min_quality {
        match c.quality {
            None => {
                return Some(format!(
                    "quality unknown for {} (min_quality {floor})",
                    req.classification.family.as_str()
                ))
            }
            Some(q) if q < floor as f64 => {
                return Some(format!("expected quality {q:.3} < min_quality {floor}"))
            }
            _ => {}
        }
    }
    if let Some(max) = o.max_cost_usd {
        if c.predicted_cost_usd > max {
            return Some(format!(
                "predicted cost ${:.6} > max_cost_usd {max}",
                c.predicted_cost_usd
            ));
        }
    }
    if let Some(max) = o.max_ttft_ms {
        if c.predicted_ttft_ms > max {
            return Some(format!(
                "predicted TTFT {:.0} ms > max_ttft_ms {max}",
                c.predicted_ttft_ms
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Evidence, Performance, RoutingProfile};
    use crate::taxonomy::TaskFamily;

    struct Idle;
    impl LiveLoad for Idle {
        fn load(&self, _: &str) -> Option<LoadSnapshot> {
            Some(LoadSnapshot {
                healthy: true,
                kv_blocks_free: 100,
                block_size: 16,
                ..Default::default()
            })
        }
        fn max_waiting(&self) -> usize {
            8
        }
    }

    fn model(id: &str, ctx: usize, q: Option<f32>, usd_per_hour: f64, rate: f64) -> ModelProfile {
        let mut routing = RoutingProfile {
            cost: Cost::Derived { usd_per_hour },
            performance: Performance {
                prefill_tok_s: rate * 5.0,
                decode_tok_s: rate,
                source: "test".into(),
            },
            ..Default::default()
        };
        if let Some(score) = q {
            routing.quality.insert(
                TaskFamily::KnowledgeQa,
                Evidence {
                    score,
                    benchmark: "MMLU".into(),
                    value: format!("{}", score * 100.0),
                    source: "test".into(),
                },
            );
        }
        ModelProfile {
            id: id.into(),
            context_window: ctx,
            routing,
        }
    }

    fn request(options: RoutingOptions) -> RouteRequest {
        RouteRequest {
            classification: Classification {
                family: TaskFamily::KnowledgeQa,
                family_confidence: 0.9,
                difficulty: Difficulty::Easy,
                difficulty_confidence: 0.8,
                p_hard: 0.1,
            },
            prompt_tokens: vec![("*".into(), 100)],
            max_tokens: Some(50),
            needs_tools: false,
            needs_json: false,
            options,
            default_objective: Objective::Balanced,
        }
    }

    #[test]
    fn objectives_pick_different_models() {
        let models = [
            model("big", 8192, Some(0.8), 10.0, 10.0),
            model("cheap", 8192, Some(0.3), 0.1, 20.0),
            model("fast", 8192, Some(0.4), 50.0, 200.0),
        ];
        let pick = |o| {
            decide(
                &models,
                &request(RoutingOptions {
                    objective: Some(o),
                    ..Default::default()
                }),
                &Idle,
            )
            .order[0]
                .clone()
        };
        assert_eq!(pick(Objective::Quality), "big");
        assert_eq!(pick(Objective::Cost), "cheap");
        assert_eq!(pick(Objective::Latency), "fast");
    }

    #[test]
    fn max_output_excludes_longer_requests() {
        let mut short = model("short", 8192, Some(0.9), 1.0, 10.0);
        short.routing.capabilities.max_output = 40;
        let models = [short, model("long", 8192, Some(0.3), 1.0, 10.0)];
        let d = decide(&models, &request(RoutingOptions::default()), &Idle);
        let why = d.candidates[0].excluded.as_deref().unwrap();
        assert!(why.contains("max_tokens 50 > its max_output 40"), "{why}");
        assert_eq!(d.order, vec!["long"]);
        let mut within = request(RoutingOptions::default());
        within.max_tokens = Some(40);
        assert_eq!(decide(&models, &within, &Idle).order.len(), 2);
    }

    #[test]
    fn filters_record_reasons_and_unknown_stays_unknown() {
        let models = [
            model("small-ctx", 120, Some(0.9), 1.0, 10.0),
            model("mystery", 8192, None, 1.0, 10.0),
        ];
        let d = decide(&models, &request(RoutingOptions::default()), &Idle);
        assert!(d.candidates[0]
            .excluded
            .as_deref()
            .unwrap()
            .contains("context window 120"));
        assert_eq!(d.candidates[1].quality, None);
        assert_eq!(d.order, vec!["mystery"]);
        let d = decide(
            &models,
            &request(RoutingOptions {
                min_quality: Some(0.1),
                ..Default::default()
            }),
            &Idle,
        );
        assert!(d.candidates[1]
            .excluded
            .as_deref()
            .unwrap()
            .contains("quality unknown"));
        assert!(d.order.is_empty());
        let d = decide(
            &[
                model("a", 8192, Some(0.5), 1.0, 10.0),
                model("b", 8192, Some(0.6), 1.0, 10.0),
            ],
            &request(RoutingOptions {
                exclude: vec!["b".into()],
                ..Default::default()
            }),
            &Idle,
        );
        assert_eq!(d.order, vec!["a"]);
        let d = decide(
            &[
                model("a", 8192, Some(0.5), 1.0, 10.0),
                model("b", 8192, Some(0.6), 1.0, 10.0),
            ],
            &request(RoutingOptions {
                models: Some(vec!["a".into()]),
                ..Default::default()
            }),
            &Idle,
        );
        assert_eq!(d.order, vec!["a"]);
    }

    #[test]
    fn live_queue_depth_moves_latency() {
        struct Busy;
        impl LiveLoad for Busy {
            fn load(&self, m: &str) -> Option<LoadSnapshot> {
                let waiting = if m == "busy" { 6 } else { 0 };
                Some(LoadSnapshot {
                    healthy: true,
                    waiting,
                    kv_blocks_free: 100,
                    block_size: 16,
                    ..Default::default()
                })
            }
            fn max_waiting(&self) -> usize {
                8
            }
        }
        let models = [
            model("busy", 8192, Some(0.5), 1.0, 100.0),
            model("idle", 8192, Some(0.5), 1.0, 50.0),
        ];
        let r = request(RoutingOptions {
            objective: Some(Objective::Latency),
            ..Default::default()
        });
        assert_eq!(decide(&models, &r, &Idle).order[0], "busy");
        assert_eq!(decide(&models, &r, &Busy).order[0], "idle");
        let r = request(RoutingOptions {
            max_ttft_ms: Some(300.0),
            ..Default::default()
        });
        let d = decide(&models, &r, &Busy);
        assert!(d.candidates[0]
            .excluded
            .as_deref()
            .unwrap()
            .contains("TTFT"));
    }

    #[test]
    fn kv_pressure_moves_latency() {
        struct Full;
        impl LiveLoad for Full {
            fn load(&self, m: &str) -> Option<LoadSnapshot> {
                let free = if m == "full" { 1 } else { 100 };
                Some(LoadSnapshot {
                    healthy: true,
                    running: 2,
                    kv_blocks_free: free,
                    block_size: 16,
                    ..Default::default()
                })
            }
            fn max_waiting(&self) -> usize {
                8
            }
        }
        let models = [
            model("full", 8192, Some(0.5), 1.0, 100.0),
            model("roomy", 8192, Some(0.5), 1.0, 80.0),
        ];
        let r = request(RoutingOptions {
            objective: Some(Objective::Latency),
            ..Default::default()
        });
        let d = decide(&models, &r, &Full);
        assert_eq!(d.order[0], "roomy");
        assert!(d.candidates[0].predicted_ttft_ms > d.candidates[1].predicted_ttft_ms);
    }
}
