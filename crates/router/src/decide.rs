//! Picking a model: hard filters, then the caller's objective over quality,
//! cost and latency. Shaped like TGI's router and OpenRouter's provider
//! routing: every candidate stays in the record, excluded ones with their
//! reason, eligible ones with each axis.
//!
//! The objectives keep the promises in the product's own words
//! (`../shared/ROUTING.md`), with the numbers in [`Policy`]:
//!
//! | objective | rule |
//! |---|---|
//! | `quality` | the highest expected quality among eligible models; cost, then latency, only break near-ties (within [`Policy::quality_tolerance`]) |
//! | `cost` | the cheapest predicted cost among eligible models that meet the quality floor |
//! | `latency` | the shortest predicted total time among eligible models that meet the quality floor |
//! | `balanced` | the highest utility: `quality − (1 − p_hard)·(cost_per_decade·log10(cost / cheapest) + latency_per_decade·log10(time / fastest))` |
//! | `cascade` | the cheapest eligible model first; the server escalates to the next in [`Decision::order`] when the answer's confidence is below the model's threshold. A more expensive model enters the chain only if it is not known to be worse than every model before it |
//!
//! The quality floor is the caller's `min_quality`, or else
//! [`Policy::default_floor`] × the best eligible expected quality for this
//! task and difficulty. Caps (`max_cost_usd`, `max_ttft_ms`, `min_quality`)
//! and capabilities are filters, applied before any scoring.
//!
//! Quality has a basis ([`QualityBasis`]): the task's own benchmark, a general
//! benchmark labelled as a proxy, or unknown. A stronger basis always ranks
//! first: unknown quality never wins on quality against known quality, and
//! only candidates on the strongest basis present can meet a default floor.
//!
//! Latency comes from live engine state (queue depth, running batch, free KV
//! blocks, measured prefill/decode rates) through [`LiveLoad`], which only an
//! in-process router can see.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::catalog::{Cost, ModelProfile, QualityBasis};
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
    /// Serve on the cheapest, escalate on low confidence (the server runs
    /// the chain; see the module docs).
    Cascade,
}

impl Objective {
    pub fn parse(s: &str) -> Option<Objective> {
        match s {
            "quality" => Some(Objective::Quality),
            "cost" => Some(Objective::Cost),
            "latency" => Some(Objective::Latency),
            "balanced" => Some(Objective::Balanced),
            "cascade" => Some(Objective::Cascade),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Quality => "quality",
            Objective::Cost => "cost",
            Objective::Latency => "latency",
            Objective::Balanced => "balanced",
            Objective::Cascade => "cascade",
        }
    }
}

/// The trade-offs of the `balanced` objective: how much expected quality
/// (on the 0..1 benchmark scale) a tenfold price or time is worth.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BalancedWeights {
    pub quality: f64,
    pub cost_per_decade: f64,
    pub latency_per_decade: f64,
}

impl Default for BalancedWeights {
    fn default() -> Self {
        BalancedWeights {
            quality: 1.0,
            cost_per_decade: 0.12,
            latency_per_decade: 0.04,
        }
    }
}

/// The numbers behind the objectives; `[router.policy]` in `models.toml`,
/// recorded in every decision.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Under `quality`: candidates within this much expected quality of the
    /// best are a near-tie, which the cheaper (then faster) one wins.
    pub quality_tolerance: f64,
    /// Under `cost` and `latency` without `min_quality`: the floor as a
    /// fraction of the best eligible expected quality.
    pub default_floor: f64,
    pub balanced: BalancedWeights,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            quality_tolerance: 0.01,
            default_floor: 0.85,
            balanced: BalancedWeights::default(),
        }
    }
}

impl Policy {
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f64, lo: f64, hi: f64| v.is_finite() && (lo..=hi).contains(&v);
        let b = &self.balanced;
        if !ok(self.quality_tolerance, 0.0, 1.0) {
            return Err(format!(
                "quality_tolerance {} is not in [0, 1]",
                self.quality_tolerance
            ));
        }
        if !ok(self.default_floor, 0.0, 1.0) {
            return Err(format!(
                "default_floor {} is not in [0, 1]",
                self.default_floor
            ));
        }
        if !(ok(b.quality, 0.0, f64::MAX)
            && ok(b.cost_per_decade, 0.0, f64::MAX)
            && ok(b.latency_per_decade, 0.0, f64::MAX))
        {
            return Err("balanced weights must be finite and non-negative".into());
        }
        Ok(())
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
    /// Shorthand for `objective: "cascade"`.
    pub cascade: bool,
    /// Under `cascade`: accept an answer whose mean token log-probability is
    /// at least this, instead of each model's calibrated threshold.
    pub min_confidence: Option<f64>,
}

/// A model's live state, as its engine reports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LoadSnapshot {
    pub healthy: bool,
    /// Set for a model that is not loaded but can be: the predicted load
    /// time in ms, and how it was predicted. Its time to first token and
    /// its cost include the load.
    pub cold_start: Option<ColdStart>,
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_free: usize,
    pub block_size: usize,
    /// Measured, tokens/s; 0 when not measured yet.
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// A load the request would wait for.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColdStart {
    pub predicted_ms: f64,
    /// "measured: N MB/s on this machine", or "assumed: N MB/s" before any load.
    pub basis: String,
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
    pub policy: Policy,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub model: String,
    /// Why it cannot serve this request; `None` for eligible candidates.
    pub excluded: Option<String>,
    /// Difficulty-adjusted expected quality; `None` = unknown.
    pub quality: Option<f64>,
    pub quality_basis: QualityBasis,
    /// The benchmark behind `quality`: "<benchmark> = <value> (<source>)".
    pub quality_evidence: Option<String>,
    /// Set when `quality` is a general benchmark standing in for the task:
    /// "<benchmark>, general".
    pub proxy: Option<String>,
    pub predicted_cost_usd: f64,
    pub cost_basis: String,
    pub predicted_ttft_ms: f64,
    pub predicted_total_ms: f64,
    /// The model is not loaded: the load it would wait for (included in
    /// `predicted_ttft_ms` and, for hourly-priced models, in the cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// Under `cost`/`latency`: whether it meets the quality floor.
    pub meets_floor: Option<bool>,
    /// Under `balanced`: its utility (see [`BalancedWeights`]).
    pub utility: Option<f64>,
    /// Under `cascade`: why this eligible model is not in the escalation
    /// chain (it costs more than one before it and is expected to be no better).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_in_chain: Option<String>,
    /// The catalog's confidence threshold for this task (what a cascade
    /// accepts this model's answers at), if calibrated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence_threshold: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// The request named a concrete model: recorded, not scored.
    pub pinned: bool,
    pub objective: Objective,
    pub options: RoutingOptions,
    pub classification: Classification,
    /// What the request needed of its model (tool calls, structured output),
    /// kept so a replay of the record (`switchyard preview --from-audit`)
    /// excludes the models the live decision excluded.
    pub needs_tools: bool,
    pub needs_json: bool,
    /// The objective's rule with its numbers, as applied.
    pub rule: String,
    /// Which benchmarks expected quality comes from for this request.
    pub quality_scale: Option<String>,
    pub policy: Option<Policy>,
    /// The quality floor applied under `cost`/`latency`, and where it came from.
    pub floor: Option<f64>,
    pub floor_basis: Option<String>,
    pub candidates: Vec<Candidate>,
    /// Eligible candidates, best first: the winner, then the fallbacks.
    pub order: Vec<String>,
    /// The constraint that kept a model that would otherwise have won from
    /// winning (a cap, a capability, the floor); `None` when nothing did.
    pub binding: Option<String>,
    /// What separated the winner from a near-equal runner-up, if anything.
    pub tie_break: Option<String>,
    pub why: String,
}

/// Output tokens assumed when the caller sets no `max_tokens`.
pub const DEFAULT_OUTPUT_TOKENS: usize = 256;
/// Added to every cost before taking ratios, so free local models compare.
const COST_EPSILON_USD: f64 = 1e-7;
/// Relative difference under which two costs or times are a tie.
const RELATIVE_TIE: f64 = 0.01;

fn difficulty_exponent(d: Difficulty) -> f64 {
    match d {
        Difficulty::Easy => 1.0,
        Difficulty::Medium => 1.5,
        Difficulty::Hard => 2.0,
    }
}

/// Predicted cost, time to first token and total time of one request on one model.
fn predict(
    m: &ModelProfile,
    load: &Option<LoadSnapshot>,
    prompt: usize,
    out_tokens: usize,
) -> (f64, String, f64, f64) {
    let perf = &m.routing.performance;
    let measured = |live: f64, nominal: f64| if live > 0.0 { live } else { nominal };
    let (prefill_rate, decode_rate, waiting, running) = match load {
        Some(l) => (
            measured(l.prefill_tok_s, perf.prefill_tok_s),
            measured(l.decode_tok_s, perf.decode_tok_s),
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
    let kv_wait_ms = match load {
        Some(l) if l.block_size > 0 && running > 0 => {
            let free_tokens = l.kv_blocks_free * l.block_size;
            let deficit = (prompt + out_tokens).saturating_sub(free_tokens);
            1000.0 * deficit as f64 / decode_rate
        }
        _ => 0.0,
    };
    let load_ms = load
        .as_ref()
        .and_then(|l| l.cold_start.as_ref())
        .map_or(0.0, |c| c.predicted_ms.max(0.0));
    let ttft_ms = load_ms + kv_wait_ms + 1000.0 * ((waiting + 1) * prompt) as f64 / prefill_rate;
    let total_ms = ttft_ms + 1000.0 * out_tokens as f64 / per_seq_decode;
    let (cost, basis) = match m.routing.cost {
        Cost::Priced {
            input_per_mtok,
            output_per_mtok,
        } => (
            (prompt as f64 * input_per_mtok + out_tokens as f64 * output_per_mtok) / 1e6,
            format!("priced ${input_per_mtok}/M in, ${output_per_mtok}/M out"),
        ),
        Cost::Derived { usd_per_hour } => {
            let seconds =
                load_ms / 1000.0 + prompt as f64 / prefill_rate + out_tokens as f64 / decode_rate;
            (
                usd_per_hour * seconds / 3600.0,
                format!(
                    "derived: ${usd_per_hour}/h × compute time at {prefill_rate:.0} prefill / {decode_rate:.0} decode tok/s{}",
                    if load_ms > 0.0 { " plus the load" } else { "" }
                ),
            )
        }
    };
    (cost, basis, ttft_ms, total_ms)
}

fn candidate(
    m: &ModelProfile,
    req: &RouteRequest,
    live: &dyn LiveLoad,
    out_tokens: usize,
    hard_scale: bool,
) -> Candidate {
    let prompt = req
        .prompt_tokens
        .iter()
        .find(|(id, _)| id == &m.id)
        .or(req.prompt_tokens.first())
        .map_or(0, |p| p.1);
    let load = live.load(&m.id);
    let (cost, cost_basis, ttft_ms, total_ms) = predict(m, &load, prompt, out_tokens);
    let task = req.classification.task;
    let (basis, evidence, exponent) = match m.routing.quality_hard.get(&task) {
        Some(hard) if hard_scale => (QualityBasis::Task, Some(hard), 1.0),
        _ => {
            let (basis, evidence) = m.evidence_for(task);
            (
                basis,
                evidence,
                difficulty_exponent(req.classification.difficulty),
            )
        }
    };
    let quality = evidence.map(|e| (e.score.clamp(0.0, 1.0) as f64).powf(exponent));
    let mut c = Candidate {
        model: m.id.clone(),
        excluded: None,
        quality,
        quality_basis: basis,
        quality_evidence: evidence.map(|e| format!("{} = {} ({})", e.benchmark, e.value, e.source)),
        proxy: evidence
            .filter(|_| basis == QualityBasis::Proxy)
            .map(|e| format!("{}, general", e.benchmark)),
        predicted_cost_usd: cost,
        cost_basis,
        predicted_ttft_ms: ttft_ms,
        predicted_total_ms: total_ms,
        cold_start: load.as_ref().and_then(|l| l.cold_start.clone()),
        meets_floor: None,
        utility: None,
        not_in_chain: None,
        confidence_threshold: m
            .routing
            .confidence_threshold
            .get(&req.classification.task)
            .copied(),
    };
    c.excluded = exclusion(m, req, &load, live, prompt, out_tokens, &c);
    c
}

/// `a` before `b` when it has the stronger basis, then the higher quality.
fn by_quality(a: &Candidate, b: &Candidate) -> Ordering {
    b.quality_basis.cmp(&a.quality_basis).then(
        b.quality
            .unwrap_or(0.0)
            .total_cmp(&a.quality.unwrap_or(0.0)),
    )
}

fn by_cost(a: &Candidate, b: &Candidate) -> Ordering {
    a.predicted_cost_usd.total_cmp(&b.predicted_cost_usd)
}

fn by_time(a: &Candidate, b: &Candidate) -> Ordering {
    a.predicted_total_ms.total_cmp(&b.predicted_total_ms)
}

/// What `cost` minimises (predicted cost) and `latency` (predicted total time).
fn axis(objective: Objective, c: &Candidate) -> f64 {
    match objective {
        Objective::Cost | Objective::Cascade => c.predicted_cost_usd,
        _ => c.predicted_total_ms,
    }
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= RELATIVE_TIE * a.abs().max(b.abs())
}

fn quality_text(c: &Candidate) -> String {
    match (c.quality, &c.proxy) {
        (None, _) => "unknown quality".into(),
        (Some(q), None) => format!("expected quality {q:.3}"),
        (Some(q), Some(p)) => format!("expected quality {q:.3} (proxy: {p})"),
    }
}

pub fn decide(models: &[ModelProfile], req: &RouteRequest, live: &dyn LiveLoad) -> Decision {
    let objective = req.options.objective.unwrap_or(req.default_objective);
    let policy = req.policy;
    let task = req.classification.task;
    let out_tokens = req.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS);
    // Hard prompts are scored on the task's hard-end benchmark when every
    // model with evidence for the task has one; otherwise on the task's
    // benchmark, discounted for difficulty.
    let with_evidence: Vec<&ModelProfile> = models
        .iter()
        .filter(|m| m.quality(task).is_some())
        .collect();
    let hard_scale = req.classification.difficulty == Difficulty::Hard
        && !with_evidence.is_empty()
        && with_evidence
            .iter()
            .all(|m| m.routing.quality_hard.contains_key(&task));
    let quality_scale = if hard_scale {
        format!("{} benchmarks of hard prompts, as measured", task.as_str())
    } else {
        format!(
            "{} benchmarks, raised to the power {} for a {} prompt",
            task.as_str(),
            difficulty_exponent(req.classification.difficulty),
            req.classification.difficulty.as_str()
        )
    };
    let mut candidates: Vec<Candidate> = models
        .iter()
        .map(|m| candidate(m, req, live, out_tokens, hard_scale))
        .collect();
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].excluded.is_none())
        .collect();
    let Ranking {
        order,
        floor,
        floor_basis,
        rule,
    } = rank(&mut candidates, &eligible, objective, req);
    let binding = order
        .first()
        .and_then(|&w| binding_constraint(&candidates, &eligible, w, objective, req, floor));
    let tie_break = match (order.first(), order.get(1)) {
        (Some(&w), Some(&r)) => tie_break(objective, &policy, &candidates[w], &candidates[r]),
        _ => None,
    };
    let why = match order.first() {
        None if candidates.is_empty() => {
            "no model can serve this request: none is configured".to_string()
        }
        None => "no model can serve this request: every candidate was excluded".to_string(),
        Some(&w) => {
            let c = &candidates[w];
            format!(
                "{} {} on {} for {} {} prompt: {}{}, ~${:.6}, ~{:.0} ms to first token{}, ~{:.0} ms in all ({} of {} models eligible){}{}",
                c.model,
                if objective == Objective::Cascade {
                    "answers first"
                } else {
                    "wins"
                },
                objective.as_str(),
                match req.classification.difficulty {
                    Difficulty::Easy => "an easy",
                    Difficulty::Medium => "a medium",
                    Difficulty::Hard => "a hard",
                },
                task.as_str(),
                quality_text(c),
                c.utility
                    .map_or(String::new(), |u| format!(", utility {u:.3}")),
                c.predicted_cost_usd,
                c.predicted_ttft_ms,
                c.cold_start.as_ref().map_or(String::new(), |cs| format!(
                    " (cold start, predicted {:.1} s: {})",
                    cs.predicted_ms / 1000.0,
                    cs.basis
                )),
                c.predicted_total_ms,
                eligible.len(),
                candidates.len(),
                binding.as_ref().map_or(String::new(), |b| format!("; bound by {b}")),
                tie_break.as_ref().map_or(String::new(), |t| format!("; {t}")),
            ) + &cascade_chain(objective, &candidates, &order)
        }
    };
    Decision {
        pinned: false,
        objective,
        options: req.options.clone(),
        classification: req.classification.clone(),
        needs_tools: req.needs_tools,
        needs_json: req.needs_json,
        rule,
        quality_scale: Some(quality_scale),
        policy: Some(policy),
        floor,
        floor_basis,
        order: order.iter().map(|&i| candidates[i].model.clone()).collect(),
        candidates,
        binding,
        tie_break,
        why,
    }
}

/// How the objective ordered the eligible candidates.
struct Ranking {
    order: Vec<usize>,
    floor: Option<f64>,
    floor_basis: Option<String>,
    rule: String,
}

/// Order `eligible` (indices into `candidates`) by the objective; sets each
/// candidate's `meets_floor` or `utility`.
fn rank(
    candidates: &mut [Candidate],
    eligible: &[usize],
    objective: Objective,
    req: &RouteRequest,
) -> Ranking {
    let policy = req.policy;
    let task = req.classification.task;
    // The strongest quality basis among eligible models, and its best quality.
    let basis = eligible
        .iter()
        .map(|&i| candidates[i].quality_basis)
        .max()
        .unwrap_or(QualityBasis::Unknown);
    let best_quality = eligible
        .iter()
        .filter(|&&i| candidates[i].quality_basis == basis)
        .filter_map(|&i| candidates[i].quality)
        .fold(None, |m: Option<f64>, q| Some(m.map_or(q, |m| m.max(q))));
    let mut order = eligible.to_vec();
    let (mut floor, mut floor_basis, mut rule);
    floor = None;
    floor_basis = None;
    match objective {
        Objective::Quality => {
            let tol = policy.quality_tolerance;
            rule = format!(
                "maximise expected quality; within {tol} of the best, the cheaper then the faster wins"
            );
            order.sort_by(|&a, &b| {
                let (ca, cb) = (&candidates[a], &candidates[b]);
                by_quality(ca, cb)
                    .then(by_cost(ca, cb))
                    .then(by_time(ca, cb))
            });
            // The near-tie: same basis as the best, within the tolerance.
            if let (Some(&top), Some(best)) = (order.first(), best_quality) {
                let top_basis = candidates[top].quality_basis;
                let tied = order
                    .iter()
                    .take_while(|&&i| {
                        candidates[i].quality_basis == top_basis
                            && candidates[i].quality.is_some_and(|q| q >= best - tol)
                    })
                    .count();
                order[..tied].sort_by(|&a, &b| {
                    let (ca, cb) = (&candidates[a], &candidates[b]);
                    by_cost(ca, cb)
                        .then(by_time(ca, cb))
                        .then(by_quality(ca, cb))
                });
            } else {
                // Nobody has evidence: nothing to maximise; the cheapest wins.
                rule = format!(
                    "no eligible model has quality evidence for {}: the cheaper, then the faster",
                    task.as_str()
                );
                order.sort_by(|&a, &b| {
                    by_cost(&candidates[a], &candidates[b])
                        .then(by_time(&candidates[a], &candidates[b]))
                });
            }
        }
        Objective::Cost | Objective::Latency => {
            let (value, source) = match (req.options.min_quality, best_quality) {
                (Some(f), _) => (Some(f as f64), "min_quality (the request's)".to_string()),
                (None, Some(best)) => (
                    Some(policy.default_floor * best),
                    format!(
                        "default: {} × the best eligible expected quality {best:.3}",
                        policy.default_floor
                    ),
                ),
                (None, None) => (
                    None,
                    format!(
                        "none: no eligible model has quality evidence for {}",
                        task.as_str()
                    ),
                ),
            };
            floor = value;
            floor_basis = Some(source);
            for &i in eligible {
                let c = &mut candidates[i];
                c.meets_floor = Some(match value {
                    None => true,
                    // An explicit floor was already applied as a filter.
                    Some(_) if req.options.min_quality.is_some() => true,
                    Some(f) => c.quality_basis == basis && c.quality.is_some_and(|q| q >= f),
                });
            }
            let primary: fn(&Candidate, &Candidate) -> Ordering = if objective == Objective::Cost {
                by_cost
            } else {
                by_time
            };
            let secondary: fn(&Candidate, &Candidate) -> Ordering = if objective == Objective::Cost
            {
                by_time
            } else {
                by_cost
            };
            rule = format!(
                "minimise predicted {} among eligible models meeting the quality floor",
                if objective == Objective::Cost {
                    "cost"
                } else {
                    "total time"
                }
            );
            order.sort_by(|&a, &b| {
                let (ca, cb) = (&candidates[a], &candidates[b]);
                cb.meets_floor
                    .cmp(&ca.meets_floor)
                    .then(primary(ca, cb))
                    .then(secondary(ca, cb))
                    .then(by_quality(ca, cb))
            });
            // Within 1% of the best on the objective's axis, the other axis decides.
            let key = |c: &Candidate| axis(objective, c);
            if let Some(&first) = order.first() {
                let best = key(&candidates[first]);
                let meets = candidates[first].meets_floor;
                let band = order
                    .iter()
                    .take_while(|&&i| {
                        candidates[i].meets_floor == meets && near(key(&candidates[i]), best)
                    })
                    .count();
                order[..band].sort_by(|&a, &b| {
                    let (ca, cb) = (&candidates[a], &candidates[b]);
                    secondary(ca, cb).then(primary(ca, cb))
                });
            }
            // Below the floor is not a fallback while some model meets it.
            if order
                .first()
                .is_some_and(|&i| candidates[i].meets_floor == Some(true))
            {
                order.retain(|&i| candidates[i].meets_floor == Some(true));
            }
        }
        Objective::Cascade => {
            rule = "cascade: the cheapest eligible model first (then the faster); each next one costs more and is not expected to be worse than every one before it; an answer below the model's confidence threshold escalates to the next; a model without a threshold answers only as the chain's last".to_string();
            order.sort_by(|&a, &b| {
                let (ca, cb) = (&candidates[a], &candidates[b]);
                by_cost(ca, cb)
                    .then(by_time(ca, cb))
                    .then(by_quality(ca, cb))
            });
            // An answer nobody can judge cannot be accepted as good enough:
            // below the chain's last (the most expensive), only models with
            // a threshold (or under the request's `min_confidence`) answer.
            if req.options.min_confidence.is_none() {
                let last = order.last().copied();
                order.retain(|&i| {
                    let c = &mut candidates[i];
                    let keep = Some(i) == last || c.confidence_threshold.is_some();
                    if !keep {
                        c.not_in_chain = Some(format!(
                            "not in the cascade: no confidence threshold for {} (switchyard eval calibrates one), so its answer could not be judged",
                            task.as_str()
                        ));
                    }
                    keep
                });
            }
            // Escalating to a model expected to be no better than one that
            // already answered only adds cost: such a model leaves the chain.
            let mut chain: Vec<usize> = Vec::with_capacity(order.len());
            for &i in &order {
                let c = &candidates[i];
                let better_before = chain.iter().map(|&j| &candidates[j]).find(|p| {
                    p.quality_basis == c.quality_basis
                        && matches!((p.quality, c.quality), (Some(pq), Some(cq)) if pq >= cq)
                });
                match better_before {
                    Some(p) => {
                        let why = format!(
                            "not in the cascade: costs at least as much as {} and is expected to be no better ({} ≤ {})",
                            p.model,
                            quality_text(c),
                            quality_text(p)
                        );
                        candidates[i].not_in_chain = Some(why);
                    }
                    None => chain.push(i),
                }
            }
            order = chain;
        }
        Objective::Balanced => {
            let w = policy.balanced;
            // The likelier a mid-size model fails, the more quality counts
            // against price and time (RouteLLM's reading of p_hard).
            let p_hard = req.classification.p_hard as f64;
            let ease = if p_hard.is_finite() {
                (1.0 - p_hard).clamp(0.0, 1.0)
            } else {
                0.5
            };
            let (cost_w, time_w) = (w.cost_per_decade * ease, w.latency_per_decade * ease);
            rule = format!(
                "maximise {} × quality − {cost_w:.3} × log10(cost / cheapest) − {time_w:.3} × log10(time / fastest) (the weights {} and {} × (1 − p_hard))",
                w.quality, w.cost_per_decade, w.latency_per_decade
            );
            let cheapest = eligible
                .iter()
                .map(|&i| candidates[i].predicted_cost_usd)
                .fold(f64::INFINITY, f64::min);
            let fastest = eligible
                .iter()
                .map(|&i| candidates[i].predicted_total_ms)
                .fold(f64::INFINITY, f64::min);
            for &i in eligible {
                let c = &mut candidates[i];
                let cost_decades = ((c.predicted_cost_usd + COST_EPSILON_USD)
                    / (cheapest + COST_EPSILON_USD))
                    .log10();
                let time_decades = (c.predicted_total_ms.max(1e-3) / fastest.max(1e-3)).log10();
                // Unknown quality counts as zero here; the basis ranks first anyway.
                c.utility = Some(
                    w.quality * c.quality.unwrap_or(0.0)
                        - cost_w * cost_decades
                        - time_w * time_decades,
                );
            }
            order.sort_by(|&a, &b| {
                let (ca, cb) = (&candidates[a], &candidates[b]);
                cb.quality_basis
                    .cmp(&ca.quality_basis)
                    .then(
                        cb.utility
                            .unwrap_or(0.0)
                            .total_cmp(&ca.utility.unwrap_or(0.0)),
                    )
                    .then(by_cost(ca, cb))
            });
        }
    }
    Ranking {
        order,
        floor,
        floor_basis,
        rule,
    }
}

/// Under `cascade`, the escalation chain for the decision's `why`.
fn cascade_chain(objective: Objective, candidates: &[Candidate], order: &[usize]) -> String {
    if objective != Objective::Cascade {
        return String::new();
    }
    match order {
        [_] => "; no escalation: the only model in the chain".to_string(),
        _ => format!(
            "; escalation chain {}",
            order
                .iter()
                .map(|&i| candidates[i].model.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        ),
    }
}

/// The constraints that kept a model that would otherwise have won from
/// winning: the quality floor (an eligible model below it that is cheaper or
/// faster), and each exclusion whose model would win were it eligible.
fn binding_constraint(
    candidates: &[Candidate],
    eligible: &[usize],
    winner: usize,
    objective: Objective,
    req: &RouteRequest,
    floor: Option<f64>,
) -> Option<String> {
    let w = &candidates[winner];
    let mut reasons = Vec::new();
    if let Some(f) = floor {
        let key = |c: &Candidate| axis(objective, c);
        let below: Vec<String> = eligible
            .iter()
            .map(|&i| &candidates[i])
            .filter(|c| c.meets_floor == Some(false) && key(c) < key(w) && !near(key(c), key(w)))
            .map(|c| format!("{} ({})", c.model, quality_text(c)))
            .collect();
        if !below.is_empty() {
            reasons.push(format!(
                "the quality floor {f:.3}: {} below it",
                below.join(", ")
            ));
        }
    }
    for (i, c) in candidates.iter().enumerate() {
        let Some(why) = &c.excluded else { continue };
        let mut alt: Vec<Candidate> = candidates.to_vec();
        let mut with = eligible.to_vec();
        with.push(i);
        if rank(&mut alt, &with, objective, req).order.first() == Some(&i) {
            reasons.push(format!("{}'s exclusion ({why})", c.model));
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Why the winner and the runner-up were not a coin toss, when they were close.
fn tie_break(
    objective: Objective,
    policy: &Policy,
    w: &Candidate,
    r: &Candidate,
) -> Option<String> {
    match objective {
        Objective::Quality => {
            let (qw, qr) = (w.quality?, r.quality?);
            (w.quality_basis == r.quality_basis && (qw - qr).abs() <= policy.quality_tolerance)
                .then(|| {
                    let decided = if w.predicted_cost_usd >= r.predicted_cost_usd {
                        format!(
                            "the cost is the same, the faster wins (~{:.0} vs ~{:.0} ms)",
                            w.predicted_total_ms, r.predicted_total_ms
                        )
                    } else {
                        format!(
                            "the cheaper wins (${:.6} vs ${:.6})",
                            w.predicted_cost_usd, r.predicted_cost_usd
                        )
                    };
                    format!(
                        "tie-break: {} ({qw:.3}) and {} ({qr:.3}) are within {} in quality; {decided}",
                        w.model, r.model, policy.quality_tolerance
                    )
                })
        }
        Objective::Cascade => near(w.predicted_cost_usd, r.predicted_cost_usd).then(|| {
            format!(
                "tie-break: {} and {} cost the same within {}%; the faster answers first",
                w.model,
                r.model,
                RELATIVE_TIE * 100.0
            )
        }),
        Objective::Cost => (w.meets_floor == r.meets_floor
            && near(w.predicted_cost_usd, r.predicted_cost_usd))
        .then(|| {
            format!(
                "tie-break: {} and {} cost the same within {}%; the faster wins",
                w.model,
                r.model,
                RELATIVE_TIE * 100.0
            )
        }),
        Objective::Latency => (w.meets_floor == r.meets_floor
            && near(w.predicted_total_ms, r.predicted_total_ms))
        .then(|| {
            format!(
                "tie-break: {} and {} take the same time within {}%; the cheaper wins",
                w.model,
                r.model,
                RELATIVE_TIE * 100.0
            )
        }),
        Objective::Balanced => {
            let (uw, ur) = (w.utility?, r.utility?);
            (w.quality_basis == r.quality_basis && (uw - ur).abs() < 1e-3).then(|| {
                format!(
                    "near tie: {} ({uw:.4}) and {} ({ur:.4}) differ by under 0.001 in utility",
                    w.model, r.model
                )
            })
        }
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
        needs_tools: false,
        needs_json: false,
        rule: "pinned: the request named its model".into(),
        quality_scale: None,
        policy: None,
        floor: None,
        floor_basis: None,
        candidates: Vec::new(),
        order: vec![model.to_string()],
        binding: None,
        tie_break: None,
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
                    req.classification.task.as_str()
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
    use crate::taxonomy::Task;

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
                Task::KnowledgeQa,
                Evidence {
                    score,
                    benchmark: "MMLU".into(),
                    value: format!("{}", score * 100.0),
                    source: "test".into(),
                    measured: None,
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
                task: Task::KnowledgeQa,
                task_confidence: 0.9,
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
            policy: Policy::default(),
        }
    }

    fn cascade(models: &[ModelProfile], min_confidence: Option<f64>) -> Decision {
        decide(
            models,
            &request(RoutingOptions {
                objective: Some(Objective::Cascade),
                min_confidence,
                ..Default::default()
            }),
            &Idle,
        )
    }

    #[test]
    fn cascade_climbs_in_cost_and_skips_models_no_better() {
        let models = [
            model("big", 8192, Some(0.8), 10.0, 10.0),
            model("cheap", 8192, Some(0.3), 0.1, 20.0),
            model("mid-but-worse", 8192, Some(0.2), 1.0, 20.0),
            model("unknown", 8192, None, 5.0, 20.0),
            model("uncalibrated", 8192, Some(0.5), 7.0, 20.0),
        ];
        let mut models = models;
        for m in models.iter_mut().filter(|m| m.id != "uncalibrated") {
            m.routing
                .confidence_threshold
                .insert(Task::KnowledgeQa, -0.5);
        }
        let d = cascade(&models, None);
        assert_eq!(d.order, ["cheap", "unknown", "big"]);
        let skipped = d
            .candidates
            .iter()
            .find(|c| c.model == "mid-but-worse")
            .unwrap();
        assert!(
            skipped
                .not_in_chain
                .as_deref()
                .is_some_and(|w| w.contains("cheap")),
            "{skipped:?}"
        );
        assert!(
            d.why.contains("escalation chain cheap → unknown → big"),
            "{}",
            d.why
        );
        let uncalibrated = d.candidates.iter().find(|c| c.model == "uncalibrated");
        assert!(uncalibrated
            .and_then(|c| c.not_in_chain.as_deref())
            .is_some_and(|w| w.contains("no confidence threshold")));
        // The request's own threshold judges every model.
        let d = cascade(&models, Some(-1.0));
        assert_eq!(d.order, ["cheap", "unknown", "uncalibrated", "big"]);
        // Without thresholds only the chain's last answers.
        for m in models.iter_mut() {
            m.routing.confidence_threshold.clear();
        }
        let d = cascade(&models, None);
        assert_eq!(d.order, ["big"]);
        assert!(d.why.contains("no escalation"), "{}", d.why);
        // An unjudgeable model leaves before it can push a judgeable, cheaper
        // one out: A (0.8, no threshold), B (0.75, threshold), C (0.9).
        let mut models = [
            model("a", 8192, Some(0.8), 0.1, 20.0),
            model("b", 8192, Some(0.75), 0.5, 20.0),
            model("c", 8192, Some(0.9), 5.0, 20.0),
        ];
        models[1]
            .routing
            .confidence_threshold
            .insert(Task::KnowledgeQa, -0.5);
        let d = cascade(&models, None);
        assert_eq!(d.order, ["b", "c"]);
    }

    #[test]
    fn objectives_pick_different_models() {
        let models = [
            model("big", 8192, Some(0.8), 10.0, 10.0),
            model("cheap", 8192, Some(0.3), 0.1, 20.0),
            model("fast", 8192, Some(0.4), 50.0, 200.0),
        ];
        let pick = |o, min_quality| {
            decide(
                &models,
                &request(RoutingOptions {
                    objective: Some(o),
                    min_quality,
                    ..Default::default()
                }),
                &Idle,
            )
            .order[0]
                .clone()
        };
        assert_eq!(pick(Objective::Quality, None), "big");
        // The default floor (0.85 × 0.8) rules out the cheap and the fast model.
        assert_eq!(pick(Objective::Cost, None), "big");
        assert_eq!(pick(Objective::Latency, None), "big");
        assert_eq!(pick(Objective::Cost, Some(0.3)), "cheap");
        assert_eq!(pick(Objective::Latency, Some(0.3)), "fast");
        let d = decide(
            &models,
            &request(RoutingOptions {
                objective: Some(Objective::Cost),
                ..Default::default()
            }),
            &Idle,
        );
        let binding = d.binding.unwrap();
        assert!(
            binding.contains("quality floor 0.680") && binding.contains("cheap"),
            "{binding}"
        );
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
    fn a_cold_start_counts_in_time_to_first_token_and_is_recorded() {
        struct Cold;
        impl LiveLoad for Cold {
            fn load(&self, m: &str) -> Option<LoadSnapshot> {
                Some(LoadSnapshot {
                    healthy: true,
                    kv_blocks_free: 100,
                    block_size: 16,
                    cold_start: (m == "cold").then(|| ColdStart {
                        predicted_ms: 2000.0,
                        basis: "measured: 100 MB/s on this machine".into(),
                    }),
                    ..Default::default()
                })
            }
            fn max_waiting(&self) -> usize {
                8
            }
        }
        // The same model twice, one loaded and one not: latency picks the
        // loaded one; a TTFT cap excludes the cold one.
        let models = [
            model("cold", 8192, Some(0.5), 1.0, 100.0),
            model("warm", 8192, Some(0.5), 1.0, 100.0),
        ];
        let r = request(RoutingOptions {
            objective: Some(Objective::Latency),
            ..Default::default()
        });
        let warm = decide(&models, &r, &Idle);
        let d = decide(&models, &r, &Cold);
        assert_eq!(d.order[0], "warm");
        let gap = d.candidates[0].predicted_ttft_ms - warm.candidates[0].predicted_ttft_ms;
        assert!((gap - 2000.0).abs() < 1e-6, "{gap}");
        assert!(d.candidates[0].cold_start.is_some() && d.candidates[1].cold_start.is_none());
        // Quality still wins when the cold model is better, and says so.
        let models = [
            model("cold", 8192, Some(0.9), 1.0, 100.0),
            model("warm", 8192, Some(0.5), 1.0, 100.0),
        ];
        let d = decide(
            &models,
            &request(RoutingOptions {
                objective: Some(Objective::Quality),
                ..Default::default()
            }),
            &Cold,
        );
        assert_eq!(d.order[0], "cold");
        assert!(d.why.contains("cold start, predicted 2.0 s"), "{}", d.why);
        let d = decide(
            &models,
            &request(RoutingOptions {
                max_ttft_ms: Some(1500.0),
                ..Default::default()
            }),
            &Cold,
        );
        assert_eq!(d.order, vec!["warm"]);
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

    #[test]
    fn quality_near_ties_go_to_the_cheaper_and_are_recorded() {
        let models = [
            model("a-pricey", 8192, Some(0.958), 10.0, 10.0),
            model("b-cheaper", 8192, Some(0.951), 5.0, 10.0),
            model("c-small", 8192, Some(0.80), 0.1, 10.0),
        ];
        let d = decide(
            &models,
            &request(RoutingOptions {
                objective: Some(Objective::Quality),
                ..Default::default()
            }),
            &Idle,
        );
        assert_eq!(d.order, vec!["b-cheaper", "a-pricey", "c-small"]);
        let t = d.tie_break.unwrap();
        assert!(t.contains("within 0.01") && t.contains("cheaper"), "{t}");
        assert_eq!(d.binding, None);
    }

    #[test]
    fn a_proxy_is_labelled_and_a_fine_tune_inherits_nothing() {
        let general = |score: f32| Evidence {
            score,
            benchmark: "MMLU-Pro".into(),
            value: format!("{}", score * 100.0),
            source: "test".into(),
            measured: None,
        };
        let mut base = model("base", 8192, None, 1.0, 10.0);
        base.routing.general = Some(general(0.7));
        let mut tuned = model("tuned", 8192, None, 1.0, 10.0);
        tuned.routing.fine_tuned_from = Some("base".into());
        let d = decide(
            &[base, tuned],
            &request(RoutingOptions {
                objective: Some(Objective::Quality),
                ..Default::default()
            }),
            &Idle,
        );
        assert_eq!(d.candidates[0].quality_basis, QualityBasis::Proxy);
        assert_eq!(d.candidates[0].proxy.as_deref(), Some("MMLU-Pro, general"));
        assert!(d.why.contains("proxy: MMLU-Pro, general"), "{}", d.why);
        assert_eq!(d.candidates[1].quality, None);
        assert_eq!(d.candidates[1].quality_basis, QualityBasis::Unknown);
        assert_eq!(d.order, vec!["base", "tuned"]);
    }

    #[test]
    fn a_cap_that_removes_the_best_model_is_the_binding_constraint() {
        let models = [
            model("best", 8192, Some(0.9), 100.0, 10.0),
            model("good", 8192, Some(0.8), 1.0, 10.0),
        ];
        let d = decide(
            &models,
            &request(RoutingOptions {
                objective: Some(Objective::Quality),
                max_cost_usd: Some(0.01),
                ..Default::default()
            }),
            &Idle,
        );
        assert_eq!(d.order, vec!["good"]);
        let b = d.binding.unwrap();
        assert!(b.contains("best") && b.contains("max_cost_usd"), "{b}");
    }

    #[test]
    fn hard_prompts_use_the_hard_benchmark_only_when_every_model_has_one() {
        let hard_evidence = |score: f32| Evidence {
            score,
            benchmark: "MATH".into(),
            value: format!("{}", score * 100.0),
            source: "test".into(),
            measured: None,
        };
        // On the easy benchmark "small" looks as good; on the hard one it is not.
        let mut small = model("small", 8192, Some(0.90), 0.1, 10.0);
        small
            .routing
            .quality_hard
            .insert(Task::KnowledgeQa, hard_evidence(0.50));
        let mut large = model("large", 8192, Some(0.91), 10.0, 10.0);
        large
            .routing
            .quality_hard
            .insert(Task::KnowledgeQa, hard_evidence(0.80));
        let mut req = request(RoutingOptions {
            objective: Some(Objective::Quality),
            ..Default::default()
        });
        req.classification.difficulty = Difficulty::Hard;
        let d = decide(&[small.clone(), large.clone()], &req, &Idle);
        assert_eq!(d.order[0], "large");
        assert_eq!(d.candidates[1].quality, Some(0.8f32 as f64));
        assert!(d.quality_scale.unwrap().contains("hard prompts"));
        // One model without a hard figure: both fall back to the task benchmark.
        let plain = model("plain", 8192, Some(0.5), 1.0, 10.0);
        let d = decide(&[small, large, plain], &req, &Idle);
        assert_eq!(d.candidates[1].quality, Some((0.91f32 as f64).powi(2)));
        assert!(d.quality_scale.unwrap().contains("power 2"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        struct Spec {
            task_score: Option<f32>,
            general: Option<f32>,
            priced: Option<(f64, f64)>,
            usd_per_hour: f64,
            decode: f64,
            ctx: usize,
            tools: bool,
            healthy: bool,
            waiting: usize,
            running: usize,
            hard_score: Option<f32>,
            threshold: Option<f64>,
        }

        fn spec() -> impl Strategy<Value = Spec> {
            (
                proptest::option::weighted(0.7, 0.05f32..1.0),
                proptest::option::weighted(0.4, 0.05f32..1.0),
                proptest::option::weighted(0.5, (0.01f64..5.0, 0.01f64..15.0)),
                0.0f64..20.0,
                1.0f64..300.0,
                prop_oneof![Just(100usize), Just(8192usize)],
                proptest::bool::weighted(0.8),
                proptest::bool::weighted(0.9),
                0usize..10,
                (
                    0usize..4,
                    proptest::option::weighted(0.5, 0.05f32..1.0),
                    proptest::option::weighted(0.6, -3.0f64..0.0),
                ),
            )
                .prop_map(
                    |(
                        task_score,
                        general,
                        priced,
                        usd_per_hour,
                        decode,
                        ctx,
                        tools,
                        healthy,
                        waiting,
                        (running, hard_score, threshold),
                    )| Spec {
                        task_score,
                        general,
                        priced,
                        usd_per_hour,
                        decode,
                        ctx,
                        tools,
                        healthy,
                        waiting,
                        running,
                        hard_score,
                        threshold,
                    },
                )
        }

        struct Table(Vec<(String, Spec)>);
        impl LiveLoad for Table {
            fn load(&self, m: &str) -> Option<LoadSnapshot> {
                let (_, s) = self.0.iter().find(|(id, _)| id == m)?;
                Some(LoadSnapshot {
                    healthy: s.healthy,
                    waiting: s.waiting,
                    running: s.running,
                    kv_blocks_free: 100,
                    block_size: 16,
                    ..Default::default()
                })
            }
            fn max_waiting(&self) -> usize {
                8
            }
        }

        fn profiles(specs: &[Spec]) -> (Vec<ModelProfile>, Table) {
            let mut out = Vec::new();
            let mut table = Vec::new();
            for (i, s) in specs.iter().enumerate() {
                let id = format!("m{i}");
                let mut m = model(&id, s.ctx, s.task_score, s.usd_per_hour, s.decode);
                if let Some((input, output)) = s.priced {
                    m.routing.cost = Cost::Priced {
                        input_per_mtok: input,
                        output_per_mtok: output,
                    };
                }
                m.routing.general = s.general.map(|score| Evidence {
                    score,
                    benchmark: "MMLU-Pro".into(),
                    value: String::new(),
                    source: "test".into(),
                    measured: None,
                });
                m.routing.capabilities.tools = s.tools;
                if let Some(t) = s.threshold {
                    m.routing.confidence_threshold.insert(Task::KnowledgeQa, t);
                }
                if let Some(score) = s.hard_score {
                    m.routing.quality_hard.insert(
                        Task::KnowledgeQa,
                        Evidence {
                            score,
                            benchmark: "GPQA".into(),
                            value: String::new(),
                            source: "test".into(),
                            measured: None,
                        },
                    );
                }
                out.push(m);
                table.push((id, s.clone()));
            }
            (out, Table(table))
        }

        fn objective() -> impl Strategy<Value = Objective> {
            prop_oneof![
                Just(Objective::Quality),
                Just(Objective::Cost),
                Just(Objective::Latency),
                Just(Objective::Balanced),
                Just(Objective::Cascade)
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn objectives_keep_their_promises(
                specs in proptest::collection::vec(spec(), 1..7),
                objective in objective(),
                difficulty in prop_oneof![Just(Difficulty::Easy), Just(Difficulty::Medium), Just(Difficulty::Hard)],
                p_hard in 0.0f32..1.0,
                min_quality in proptest::option::weighted(0.2, 0.0f32..1.0),
                max_cost_usd in proptest::option::weighted(0.2, 0.0f64..0.01),
                needs_tools in proptest::bool::weighted(0.2),
                excluded in proptest::collection::vec(0usize..7, 0..2),
            ) {
                let (models, live) = profiles(&specs);
                let mut req = request(RoutingOptions {
                    objective: Some(objective),
                    min_quality,
                    max_cost_usd,
                    exclude: excluded.iter().map(|i| format!("m{i}")).collect(),
                    ..Default::default()
                });
                req.classification.difficulty = difficulty;
                req.classification.p_hard = p_hard;
                req.needs_tools = needs_tools;
                let d = decide(&models, &req, &live);
                let tol = req.policy.quality_tolerance;
                let eligible: Vec<&Candidate> =
                    d.candidates.iter().filter(|c| c.excluded.is_none()).collect();
                // An excluded model is never served; every eligible one is a
                // fallback (under cost and latency, those meeting the floor).
                if matches!(objective, Objective::Quality | Objective::Balanced) {
                    prop_assert_eq!(d.order.len(), eligible.len());
                }
                for m in &d.order {
                    let c = d.candidates.iter().find(|c| &c.model == m).unwrap();
                    prop_assert!(c.excluded.is_none(), "{} is excluded but ordered", m);
                }
                let Some(winner) = d.order.first() else { return Ok(()); };
                let w = d.candidates.iter().find(|c| &c.model == winner).unwrap();
                let basis = eligible.iter().map(|c| c.quality_basis).max().unwrap();
                let best = eligible
                    .iter()
                    .filter(|c| c.quality_basis == basis)
                    .filter_map(|c| c.quality)
                    .fold(f64::NEG_INFINITY, f64::max);
                // Unknown quality never wins on quality (or balance) against known quality.
                if matches!(objective, Objective::Quality | Objective::Balanced) {
                    prop_assert_eq!(w.quality_basis, basis);
                }
                match objective {
                    Objective::Quality => {
                        if basis != QualityBasis::Unknown {
                            prop_assert!(w.quality.unwrap() >= best - tol - 1e-12,
                                "winner {} quality {:?} < best {} - tol", w.model, w.quality, best);
                            // Within the tolerance, nobody is cheaper.
                            for c in eligible.iter().filter(|c| {
                                c.quality_basis == basis && c.quality.is_some_and(|q| q >= best - tol)
                            }) {
                                prop_assert!(c.predicted_cost_usd >= w.predicted_cost_usd,
                                    "{} is within the tolerance and cheaper than {}", c.model, w.model);
                            }
                        }
                    }
                    Objective::Cost | Objective::Latency => {
                        let floor = match (min_quality, basis) {
                            (Some(f), _) => Some(f as f64),
                            (None, QualityBasis::Unknown) => None,
                            (None, _) => Some(req.policy.default_floor * best),
                        };
                        let meets = |c: &Candidate| match floor {
                            None => true,
                            Some(_) if min_quality.is_some() => true,
                            Some(f) => c.quality_basis == basis && c.quality.is_some_and(|q| q >= f),
                        };
                        let key = |c: &Candidate| if objective == Objective::Cost {
                            c.predicted_cost_usd
                        } else {
                            c.predicted_total_ms
                        };
                        if eligible.iter().any(|c| meets(c)) {
                            prop_assert!(meets(w), "winner {} misses the floor {:?}", w.model, floor);
                        }
                        for c in eligible.iter().filter(|c| meets(c)) {
                            prop_assert!(key(c) >= key(w) || near(key(c), key(w)),
                                "{} beats the winner {} on {:?} and meets the floor", c.model, w.model, objective);
                        }
                        // While some model meets the floor, no fallback is below it.
                        if eligible.iter().any(|c| meets(c)) {
                            for m in &d.order {
                                let c = d.candidates.iter().find(|c| &c.model == m).unwrap();
                                prop_assert!(meets(c), "fallback {} is below the floor", m);
                            }
                        }
                        if let (Some(f), Some(_)) = (min_quality, w.quality) {
                            prop_assert!(w.quality.unwrap() >= f as f64);
                        }
                    }
                    Objective::Balanced => {
                        for c in eligible.iter().filter(|c| c.quality_basis == basis) {
                            prop_assert!(c.utility.unwrap() <= w.utility.unwrap() + 1e-12);
                        }
                    }
                    Objective::Cascade => {
                        // The cheapest in the chain answers first; it climbs in cost;
                        // every eligible model is in it or says why not; no
                        // step is known to be no better than an earlier one.
                        for c in &eligible {
                            prop_assert!(c.not_in_chain.is_some() || c.predicted_cost_usd >= w.predicted_cost_usd,
                                "{} is cheaper than the first answer {}", c.model, w.model);
                            prop_assert_eq!(d.order.contains(&c.model), c.not_in_chain.is_none());
                        }
                        let chain: Vec<&Candidate> = d.order.iter()
                            .map(|m| d.candidates.iter().find(|c| &c.model == m).unwrap())
                            .collect();
                        // Below the last, every answer can be judged.
                        if let Some((_, judged)) = chain.split_last() {
                            for c in judged {
                                prop_assert!(c.confidence_threshold.is_some(), "{} cannot be judged", c.model);
                            }
                        }
                        for (k, later) in chain.iter().enumerate() {
                            for earlier in &chain[..k] {
                                prop_assert!(earlier.predicted_cost_usd <= later.predicted_cost_usd);
                                if let (Some(e), Some(l)) = (earlier.quality, later.quality) {
                                    if earlier.quality_basis == later.quality_basis {
                                        prop_assert!(l > e, "{} follows {} with no better quality", later.model, earlier.model);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
