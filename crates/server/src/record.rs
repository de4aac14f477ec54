//! The audit record of one served request: what the response says about its
//! routing, and the outcome written back to the audit log when it ends.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use switchyard_router::{Decision, ModelProfile, Outcome};

use crate::state::AppState;

/// What the response needs to carry about the routing, and what the audit
/// record still needs once the request is done. Dropped unfinished (the
/// client went away), it records the request as cancelled.
pub struct RouteCtx {
    pub decision_id: String,
    pub summary: Value,
    pub outcome: Outcome,
    pub started: Instant,
    /// $/hour or per-token prices of the served model, for the actual cost.
    pub profile: ModelProfile,
    /// Under `cascade`: what the escalated answers cost, and when the
    /// served model started on this request (its own time is its cost).
    pub escalation_cost_usd: f64,
    pub served_from: Instant,
    state: Arc<AppState>,
    finished: bool,
}

impl RouteCtx {
    pub fn new(
        state: Arc<AppState>,
        decision_id: String,
        summary: Value,
        outcome: Outcome,
        started: Instant,
        profile: ModelProfile,
    ) -> Self {
        RouteCtx {
            decision_id,
            summary,
            outcome,
            started,
            profile,
            escalation_cost_usd: 0.0,
            served_from: started,
            state,
            finished: false,
        }
    }

    /// Fill in the outcome and write it to the audit log (once).
    pub fn finish(
        &mut self,
        prompt: usize,
        completion: usize,
        ttft_ms: Option<f64>,
        error: Option<String>,
    ) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        self.outcome.prompt_tokens = prompt;
        self.outcome.completion_tokens = completion;
        self.outcome.ttft_ms = ttft_ms;
        self.outcome.total_ms = Some(elapsed * 1000.0);
        let served_s = self.served_from.elapsed().as_secs_f64();
        self.outcome.cost_usd = Some(
            self.escalation_cost_usd + actual_cost(&self.profile, prompt, completion, served_s),
        );
        self.outcome.error = error;
        if let Some(r) = &self.state.router {
            if let Err(e) = r.audit.complete(&self.decision_id, &self.outcome) {
                tracing::warn!("audit: {e}");
            }
        }
    }
}

impl Drop for RouteCtx {
    fn drop(&mut self) {
        self.finish(0, 0, None, Some("cancelled by the client".into()));
    }
}

/// What serving `prompt` + `completion` tokens in `elapsed_s` cost on this model.
pub fn actual_cost(p: &ModelProfile, prompt: usize, completion: usize, elapsed_s: f64) -> f64 {
    match p.routing.cost {
        switchyard_router::catalog::Cost::Priced {
            input_per_mtok,
            output_per_mtok,
        } => (prompt as f64 * input_per_mtok + completion as f64 * output_per_mtok) / 1e6,
        switchyard_router::catalog::Cost::Derived { usd_per_hour } => {
            usd_per_hour * elapsed_s / 3600.0
        }
    }
}

/// The `routing` object of a response.
pub fn summary(id: &str, d: &Decision, served: &str, fallbacks: &[(String, String)]) -> Value {
    json!({
        "decision_id": id,
        "task": d.classification.task.as_str(),
        "task_confidence": d.classification.task_confidence,
        "difficulty": d.classification.difficulty,
        "difficulty_confidence": d.classification.difficulty_confidence,
        "objective": d.objective,
        "served_model": served,
        "fallbacks": fallbacks.iter().map(|(m, r)| json!({"model": m, "reason": r})).collect::<Vec<_>>(),
        "pinned": d.pinned,
        "why": d.why,
    })
}
