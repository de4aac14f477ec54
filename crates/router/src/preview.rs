//! Routing preview: "what would routing have done to my bill?" Replays a
//! sample of requests through [`decide`] (no model runs) and compares the
//! routed projection with serving every request on one baseline model: per
//! task and overall, the projected cost, quality and time, and the
//! cost/quality frontier across objectives and quality floors.
//!
//! Follows RouteLLM's evaluation (cost against quality relative to always
//! using one model, traced over thresholds into a curve), with this router's
//! honesty rule: a request whose routed model has no quality evidence for
//! its task counts as *unknown*, reported as a share and never averaged in
//! as good.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::ModelProfile;
use crate::decide::{decide, Decision, LiveLoad, LoadSnapshot, Objective, RouteRequest};

/// Every model healthy and idle: a preview's (and a dry run's) view, with
/// no live load to see.
pub struct IdleLoad;

impl LiveLoad for IdleLoad {
    fn load(&self, _: &str) -> Option<LoadSnapshot> {
        Some(LoadSnapshot {
            healthy: true,
            ..Default::default()
        })
    }
    fn max_waiting(&self) -> usize {
        usize::MAX
    }
}

/// One request's projection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PreviewRow {
    /// The request's position in the input (from 1).
    pub index: usize,
    pub task: String,
    pub difficulty: String,
    /// The routed model; `None` when every candidate was excluded.
    pub routed: Option<String>,
    pub routed_cost_usd: Option<f64>,
    pub routed_quality: Option<f64>,
    pub routed_ms: Option<f64>,
    pub baseline_cost_usd: f64,
    pub baseline_quality: Option<f64>,
    pub baseline_ms: f64,
    /// Why the baseline could not serve this request itself, if it could not.
    pub baseline_excluded: Option<String>,
    /// Served on both sides (`switchyard preview --execute`): the costs and
    /// times are measured, not projected.
    pub measured: bool,
}

/// Totals over a set of rows.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Summary {
    pub requests: usize,
    /// Requests no model could serve (every candidate excluded).
    pub unroutable: usize,
    pub routed_cost_usd: f64,
    pub baseline_cost_usd: f64,
    /// Routed cost ÷ baseline cost (`None` when the baseline costs nothing).
    pub cost_ratio: Option<f64>,
    /// Mean expected quality over the routed requests whose quality is known.
    pub routed_quality: Option<f64>,
    pub baseline_quality: Option<f64>,
    /// Mean routed − baseline quality over the requests where both are known.
    pub quality_delta: Option<f64>,
    /// Share of requests routed to a model whose quality for them is
    /// unknown (unroutable requests are counted apart).
    pub routed_unknown_share: f64,
    pub baseline_unknown_share: f64,
    /// Mean predicted end-to-end time, milliseconds.
    pub routed_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
    /// Share of requests routed to each model.
    pub share_by_model: BTreeMap<String, f64>,
}

/// One setting of the router and what it would do to the whole sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrontierPoint {
    pub objective: Objective,
    /// The caller's `min_quality` (`None`: the policy's default floor).
    pub min_quality: Option<f64>,
    pub cost_usd: f64,
    pub quality: Option<f64>,
    pub unknown_share: f64,
    /// Share of requests no model may serve under this setting (a floor
    /// above every model's expected quality for them).
    pub unroutable_share: f64,
    pub ms: Option<f64>,
    /// Serves every request, and no other setting that serves every request
    /// is at least as cheap and at least as good (on the known-quality mean)
    /// while strictly better on one of the two.
    pub pareto: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PreviewReport {
    pub baseline: String,
    /// The objective the sample was routed under (`None`: each request's
    /// own, else the catalog's default).
    pub objective: Option<Objective>,
    pub overall: Summary,
    pub by_task: BTreeMap<String, Summary>,
    pub frontier: Vec<FrontierPoint>,
    /// The floor for a target share of stronger models, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub rows: Vec<PreviewRow>,
}

/// The quality floors the frontier tries with each objective.
pub const FRONTIER_FLOORS: [Option<f64>; 6] =
    [None, Some(0.5), Some(0.6), Some(0.7), Some(0.8), Some(0.9)];

/// Projects `requests` routed (under `objective` where given, else each
/// request's own) against serving them all on `baseline`. Errors name a
/// baseline that is not in the catalog.
pub fn preview(
    models: &[ModelProfile],
    requests: &[RouteRequest],
    baseline: &str,
    objective: Option<Objective>,
    live: &dyn LiveLoad,
) -> Result<PreviewReport, String> {
    if !models.iter().any(|m| m.id == baseline) {
        let known: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
        return Err(format!(
            "baseline `{baseline}` is not in the catalog (models: {})",
            known.join(", ")
        ));
    }
    let route = |req: &RouteRequest, objective: Option<Objective>, floor: Option<Option<f64>>| {
        let mut req = req.clone();
        if objective.is_some() {
            req.options.objective = objective;
        }
        if let Some(floor) = floor {
            req.options.min_quality = floor.map(|f| f as f32);
        }
        decide(models, &req, live)
    };
    let rows: Vec<PreviewRow> = requests
        .iter()
        .enumerate()
        .map(|(i, req)| row(i + 1, &route(req, objective, None), baseline))
        .collect();
    let overall = summarize(&rows);
    let by_task = summarize_by_task(&rows);
    let mut frontier = Vec::new();
    for objective in [
        Objective::Quality,
        Objective::Balanced,
        Objective::Cost,
        Objective::Latency,
    ] {
        for floor in FRONTIER_FLOORS {
            let rows: Vec<PreviewRow> = requests
                .iter()
                .enumerate()
                .map(|(i, req)| row(i + 1, &route(req, Some(objective), Some(floor)), baseline))
                .collect();
            let s = summarize(&rows);
            frontier.push(FrontierPoint {
                objective,
                min_quality: floor,
                cost_usd: s.routed_cost_usd,
                quality: s.routed_quality,
                unknown_share: s.routed_unknown_share,
                unroutable_share: if s.requests == 0 {
                    0.0
                } else {
                    s.unroutable as f64 / s.requests as f64
                },
                ms: s.routed_ms,
                pareto: false,
            });
        }
    }
    mark_pareto(&mut frontier);
    Ok(PreviewReport {
        baseline: baseline.to_string(),
        objective,
        overall,
        by_task,
        frontier,
        calibration: None,
        rows,
    })
}

/// RouteLLM's threshold calibration for this router: the lowest quality
/// floor (`min_quality`, on a 0.01 grid) under the `cost` objective that
/// sends at least `strong_share` of the sample past its cheapest eligible
/// model to a stronger one.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Calibration {
    pub strong_share: f64,
    /// `None` when no floor reaches the share (`achieved` is then the most
    /// any floor sends).
    pub min_quality: Option<f64>,
    pub achieved: f64,
    /// Requests no model may serve at that floor.
    pub unroutable_share: f64,
}

/// See [`Calibration`]. "Stronger" means routed to another model than the
/// one the `cost` objective picks with no floor at all.
pub fn calibrate_floor(
    models: &[ModelProfile],
    requests: &[RouteRequest],
    strong_share: f64,
    live: &dyn LiveLoad,
) -> Calibration {
    let winner = |req: &RouteRequest, floor: f64| {
        let mut req = req.clone();
        req.options.objective = Some(Objective::Cost);
        req.options.min_quality = Some(floor as f32);
        decide(models, &req, live).order.first().cloned()
    };
    let cheapest: Vec<Option<String>> = requests.iter().map(|r| winner(r, 0.0)).collect();
    let n = requests.len().max(1) as f64;
    let mut best = (0.0, 0.0);
    for step in 0..=100 {
        let floor = step as f64 / 100.0;
        let (mut stronger, mut unroutable) = (0usize, 0usize);
        for (req, cheap) in requests.iter().zip(&cheapest) {
            match winner(req, floor) {
                None => unroutable += 1,
                Some(w) if Some(&w) != cheap.as_ref() => stronger += 1,
                Some(_) => {}
            }
        }
        let (share, lost) = (stronger as f64 / n, unroutable as f64 / n);
        if share >= strong_share {
            return Calibration {
                strong_share,
                min_quality: Some(floor),
                achieved: share,
                unroutable_share: lost,
            };
        }
        if share > best.0 {
            best = (share, lost);
        }
    }
    Calibration {
        strong_share,
        min_quality: None,
        achieved: best.0,
        unroutable_share: best.1,
    }
}

fn row(index: usize, d: &Decision, baseline: &str) -> PreviewRow {
    let winner = d
        .order
        .first()
        .and_then(|w| d.candidates.iter().find(|c| &c.model == w));
    let base = d.candidates.iter().find(|c| c.model == baseline);
    PreviewRow {
        index,
        task: d.classification.task.as_str().to_string(),
        difficulty: d.classification.difficulty.as_str().to_string(),
        routed: winner.map(|c| c.model.clone()),
        routed_cost_usd: winner.map(|c| c.predicted_cost_usd),
        routed_quality: winner.and_then(|c| c.quality),
        routed_ms: winner.map(|c| c.predicted_total_ms),
        baseline_cost_usd: base.map_or(0.0, |c| c.predicted_cost_usd),
        baseline_quality: base.and_then(|c| c.quality),
        baseline_ms: base.map_or(0.0, |c| c.predicted_total_ms),
        baseline_excluded: base.and_then(|c| c.excluded.clone()),
        measured: false,
    }
}

/// What serving a request cost on `model`: its price per token, or its
/// hourly price times the measured time.
pub fn measured_cost(model: &ModelProfile, prompt: usize, completion: usize, seconds: f64) -> f64 {
    match model.routing.cost {
        crate::catalog::Cost::Priced {
            input_per_mtok,
            output_per_mtok,
        } => (prompt as f64 * input_per_mtok + completion as f64 * output_per_mtok) / 1e6,
        crate::catalog::Cost::Derived { usd_per_hour } => usd_per_hour * seconds / 3600.0,
    }
}

impl PreviewReport {
    /// Row `index` (from 1) served on both sides: measured `(cost, ms)`
    /// replace the projections; the summaries are recomputed.
    pub fn measure(&mut self, index: usize, routed: (f64, f64), baseline: (f64, f64)) {
        if let Some(row) = self.rows.iter_mut().find(|r| r.index == index) {
            row.routed_cost_usd = Some(routed.0);
            row.routed_ms = Some(routed.1);
            row.baseline_cost_usd = baseline.0;
            row.baseline_ms = baseline.1;
            row.measured = true;
        }
        self.overall = summarize(&self.rows);
        self.by_task = summarize_by_task(&self.rows);
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn summarize(rows: &[PreviewRow]) -> Summary {
    let n = rows.len();
    let share = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let routed_cost: f64 = rows.iter().filter_map(|r| r.routed_cost_usd).sum();
    let baseline_cost: f64 = rows.iter().map(|r| r.baseline_cost_usd).sum();
    let mut share_by_model = BTreeMap::new();
    for r in rows {
        if let Some(m) = &r.routed {
            *share_by_model.entry(m.clone()).or_insert(0.0) += 1.0 / n as f64;
        }
    }
    Summary {
        requests: n,
        unroutable: rows.iter().filter(|r| r.routed.is_none()).count(),
        routed_cost_usd: routed_cost,
        baseline_cost_usd: baseline_cost,
        cost_ratio: (baseline_cost > 0.0).then(|| routed_cost / baseline_cost),
        routed_quality: mean(rows.iter().filter_map(|r| r.routed_quality)),
        baseline_quality: mean(rows.iter().filter_map(|r| r.baseline_quality)),
        quality_delta: mean(
            rows.iter()
                .filter_map(|r| Some(r.routed_quality? - r.baseline_quality?)),
        ),
        routed_unknown_share: share(
            rows.iter()
                .filter(|r| r.routed.is_some() && r.routed_quality.is_none())
                .count(),
        ),
        baseline_unknown_share: share(rows.iter().filter(|r| r.baseline_quality.is_none()).count()),
        routed_ms: mean(rows.iter().filter_map(|r| r.routed_ms)),
        baseline_ms: mean(rows.iter().map(|r| r.baseline_ms)),
        share_by_model,
    }
}

/// A [`Summary`] per task.
fn summarize_by_task(rows: &[PreviewRow]) -> BTreeMap<String, Summary> {
    let mut by_task: BTreeMap<String, Vec<PreviewRow>> = BTreeMap::new();
    for r in rows {
        by_task.entry(r.task.clone()).or_default().push(r.clone());
    }
    by_task
        .into_iter()
        .map(|(task, rows)| (task, summarize(&rows)))
        .collect()
}

/// Marks the points no other point dominates on (cost ↓, known quality ↑).
/// A point with no known quality, or that leaves requests unserved, is
/// never on the frontier (its cost and quality cover only part of the
/// sample).
fn mark_pareto(points: &mut [FrontierPoint]) {
    let dominated = |p: &FrontierPoint, q: &FrontierPoint| -> bool {
        match (p.quality, q.quality) {
            (Some(pq), Some(qq)) => {
                q.cost_usd <= p.cost_usd && qq >= pq && (q.cost_usd < p.cost_usd || qq > pq)
            }
            _ => false,
        }
    };
    let complete = |p: &FrontierPoint| p.quality.is_some() && p.unroutable_share == 0.0;
    let flags: Vec<bool> = points
        .iter()
        .map(|p| complete(p) && !points.iter().any(|q| complete(q) && dominated(p, q)))
        .collect();
    for (p, f) in points.iter_mut().zip(flags) {
        p.pareto = f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Cost, Evidence, RoutingProfile};
    use crate::classifier::Classification;
    use crate::decide::{Policy, RoutingOptions};
    use crate::taxonomy::{Difficulty, Task};

    fn model(id: &str, usd_per_mtok: f64, math: Option<f32>) -> ModelProfile {
        let mut routing = RoutingProfile {
            cost: Cost::Priced {
                input_per_mtok: usd_per_mtok,
                output_per_mtok: usd_per_mtok,
            },
            ..Default::default()
        };
        if let Some(score) = math {
            routing.quality.insert(
                Task::Math,
                Evidence {
                    score,
                    benchmark: "test bench".into(),
                    value: format!("{score}"),
                    source: "test".into(),
                    measured: None,
                },
            );
        }
        ModelProfile {
            id: id.to_string(),
            context_window: 4096,
            routing,
        }
    }

    fn request(task: Task) -> RouteRequest {
        RouteRequest {
            classification: Classification {
                task,
                task_confidence: 0.9,
                difficulty: Difficulty::Easy,
                difficulty_confidence: 0.9,
                p_hard: 0.1,
            },
            prompt_tokens: vec![("*".into(), 100)],
            max_tokens: Some(100),
            needs_tools: false,
            needs_json: false,
            options: RoutingOptions::default(),
            default_objective: Objective::Balanced,
            policy: Policy::default(),
        }
    }

    #[test]
    fn cost_objective_saves_against_the_big_baseline_and_unknowns_stay_unknown() {
        let models = [
            model("small", 0.1, Some(0.6)),
            model("big", 10.0, Some(0.9)),
        ];
        let reqs = [
            request(Task::Math),
            request(Task::Math),
            request(Task::Chat),
        ];
        let r = preview(&models, &reqs, "big", Some(Objective::Cost), &IdleLoad).unwrap();
        assert_eq!(r.overall.requests, 3);
        // The default floor (0.85 × the best expected quality) keeps math
        // on the big model; chat, unknown everywhere, goes to the cheapest.
        assert_eq!(r.by_task["math"].share_by_model.get("big"), Some(&1.0));
        assert_eq!(r.by_task["chat"].share_by_model.get("small"), Some(&1.0));
        let ratio = r.overall.cost_ratio.unwrap();
        assert!((0.6..0.75).contains(&ratio), "{ratio}");
        assert!(r.by_task["math"].routed_quality.is_some());
        // A caller's lower floor lets math go to the small model too.
        let lenient: Vec<RouteRequest> = reqs
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.options.min_quality = Some(0.5);
                r
            })
            .collect();
        let cheap = preview(&models, &lenient, "big", Some(Objective::Cost), &IdleLoad).unwrap();
        assert!(cheap.overall.cost_ratio.unwrap() < 0.05);
        let delta = cheap.by_task["math"].quality_delta.unwrap();
        assert!((delta + 0.3).abs() < 1e-6, "{delta}");
        // No model has chat evidence: unknown on both sides, not averaged in.
        let chat = &r.by_task["chat"];
        assert_eq!(chat.routed_quality, None);
        assert_eq!(chat.routed_unknown_share, 1.0);
        assert!((r.overall.routed_unknown_share - 1.0 / 3.0).abs() < 1e-9);
        // Quality routing sends math to the big model: no saving there.
        let q = preview(&models, &reqs, "big", Some(Objective::Quality), &IdleLoad).unwrap();
        assert_eq!(q.by_task["math"].share_by_model.get("big"), Some(&1.0));
        assert!(q.by_task["math"].quality_delta.unwrap().abs() < 1e-9);
    }

    #[test]
    fn the_frontier_marks_undominated_settings() {
        let models = [
            model("small", 0.1, Some(0.6)),
            model("big", 10.0, Some(0.9)),
        ];
        let reqs = [request(Task::Math)];
        let r = preview(&models, &reqs, "small", None, &IdleLoad).unwrap();
        assert_eq!(r.frontier.len(), 4 * FRONTIER_FLOORS.len());
        let pareto: Vec<&FrontierPoint> = r.frontier.iter().filter(|p| p.pareto).collect();
        assert!(!pareto.is_empty());
        for p in &pareto {
            assert_eq!(p.unroutable_share, 0.0);
            for q in r.frontier.iter().filter(|q| q.unroutable_share == 0.0) {
                let (pq, qq) = (p.quality.unwrap(), q.quality.unwrap_or(f64::MIN));
                assert!(
                    !(q.cost_usd < p.cost_usd && qq > pq),
                    "{p:?} dominated by {q:?}"
                );
            }
        }
        // Both the cheap and the good end are on it.
        assert!(pareto.iter().any(|p| p.quality.unwrap() > 0.85));
        assert!(pareto.iter().any(|p| p.quality.unwrap() < 0.65));
    }

    #[test]
    fn calibration_finds_the_floor_for_a_strong_share() {
        let models = [
            model("small", 0.1, Some(0.6)),
            model("big", 10.0, Some(0.9)),
        ];
        let reqs: Vec<RouteRequest> = (0..4).map(|_| request(Task::Math)).collect();
        // Any floor above the small model's 0.6 sends every request up.
        let c = calibrate_floor(&models, &reqs, 0.5, &IdleLoad);
        let floor = c.min_quality.unwrap();
        assert!(floor > 0.6 && floor <= 0.62, "{c:?}");
        assert_eq!((c.achieved, c.unroutable_share), (1.0, 0.0));
        // No floor sends anything up when one model serves everything.
        let one = [model("small", 0.1, Some(0.6))];
        let c = calibrate_floor(&one, &reqs, 0.3, &IdleLoad);
        assert_eq!((c.min_quality, c.achieved), (None, 0.0));
    }

    #[test]
    fn measured_rows_replace_projections() {
        let models = [
            model("small", 0.1, Some(0.6)),
            model("big", 10.0, Some(0.9)),
        ];
        let reqs = [request(Task::Math), request(Task::Chat)];
        let mut r = preview(&models, &reqs, "big", Some(Objective::Cost), &IdleLoad).unwrap();
        let chat_before = r.by_task["chat"].clone();
        r.measure(1, (0.5, 100.0), (2.0, 400.0));
        let row = &r.rows[0];
        assert!(row.measured && row.routed_cost_usd == Some(0.5) && row.baseline_ms == 400.0);
        assert!(!r.rows[1].measured);
        assert_eq!(r.by_task["math"].routed_cost_usd, 0.5);
        assert_eq!(r.by_task["chat"], chat_before);
        // Priced per token; derived from the hourly price and the time.
        assert!((measured_cost(&models[1], 1_000_000, 0, 9.0) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn an_unknown_baseline_is_an_error_naming_it() {
        let models = [model("small", 0.1, None)];
        let e = preview(&models, &[], "gpt-9", None, &IdleLoad).unwrap_err();
        assert!(e.contains("gpt-9") && e.contains("small"), "{e}");
    }
}
