//! `model: "auto"`: classify, decide, serve the winner, fall back before any
//! byte reaches the client, and record everything in the audit log.
//!
//! The router crate decides; this module adapts the engines to its
//! [`LiveLoad`] view and runs the candidates in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use switchyard_engine::{ChatMessage, Event};
use switchyard_router::audit::Query;
use switchyard_router::{
    decide, AuditLog, Classifier, Decision, LiveLoad, LoadSnapshot, ModelProfile, Objective,
    Outcome, RouteRequest, RoutingOptions,
};

use crate::error::ApiError;
use crate::routes::{finish_job, random_id, AppState, Job, Kind, Pending};

pub struct RouterState {
    pub classifier: Classifier,
    pub profiles: Vec<ModelProfile>,
    pub audit: AuditLog,
    pub default_objective: Objective,
    pub store_prompts: bool,
    /// Testing hook (`SWITCHYARD_FAULT_MODELS=a,b`): submissions to these models fail.
    pub fault_models: Vec<String>,
}

/// What the response needs to carry about the routing, and what the audit
/// record still needs once the request is done.
pub struct RouteCtx {
    pub decision_id: String,
    pub summary: Value,
    pub outcome: Outcome,
    pub started: Instant,
    /// $/hour or per-token prices of the served model, for the actual cost.
    pub profile: ModelProfile,
}

impl RouteCtx {
    /// Fill in the outcome and write it to the audit log.
    pub fn finish(
        &mut self,
        state: &AppState,
        prompt: usize,
        completion: usize,
        ttft_ms: Option<f64>,
        error: Option<String>,
    ) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.outcome.prompt_tokens = prompt;
        self.outcome.completion_tokens = completion;
        self.outcome.ttft_ms = ttft_ms;
        self.outcome.total_ms = Some(elapsed * 1000.0);
        self.outcome.cost_usd = Some(actual_cost(&self.profile, prompt, completion, elapsed));
        self.outcome.error = error;
        if let Some(r) = &state.router {
            if let Err(e) = r.audit.complete(&self.decision_id, &self.outcome) {
                tracing::warn!("audit: {e}");
            }
        }
    }
}

fn actual_cost(p: &ModelProfile, prompt: usize, completion: usize, elapsed_s: f64) -> f64 {
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

struct EngineLoad<'a>(&'a AppState);

impl LiveLoad for EngineLoad<'_> {
    fn load(&self, model: &str) -> Option<LoadSnapshot> {
        let s = self.0.engines.get(model)?.stats();
        Some(LoadSnapshot {
            healthy: true,
            waiting: s.waiting,
            running: s.running,
            kv_blocks_free: s.kv_blocks_free,
            block_size: s.block_size,
            prefill_tok_s: s.prefill_tokens_per_s,
            decode_tok_s: s.decode_tokens_per_s,
        })
    }
    fn max_waiting(&self) -> usize {
        self.0.max_waiting
    }
}

/// `auto`, `auto:<objective>`; None for a concrete model name.
pub fn parse_auto(model: &str) -> Result<Option<Option<Objective>>, ApiError> {
    match model.strip_prefix("auto") {
        Some("") => Ok(Some(None)),
        Some(rest) => match rest.strip_prefix(':').and_then(Objective::parse) {
            Some(o) => Ok(Some(Some(o))),
            None if rest.starts_with(':') => Err(ApiError::invalid_param(
                "model",
                format!("unknown routing objective in `{model}`: use auto, auto:quality, auto:cost, auto:latency or auto:balanced"),
            )),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// The text the classifier reads: the last user message (the instruction).
pub fn routing_text(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .or(messages.last())
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// A request that can be built for any model (the caller's fields bound).
pub struct RoutedChat<'a> {
    pub messages: Vec<ChatMessage>,
    pub fields: &'a crate::openai::SamplingFields,
    pub top_logprobs: Option<usize>,
    pub needs_tools: bool,
    pub needs_json: bool,
    pub options: RoutingOptions,
}

fn summary(id: &str, d: &Decision, served: &str, fallbacks: &[(String, String)]) -> Value {
    json!({
        "decision_id": id,
        "task": d.classification.family.as_str(),
        "task_confidence": d.classification.family_confidence,
        "difficulty": d.classification.difficulty,
        "difficulty_confidence": d.classification.difficulty_confidence,
        "objective": d.objective,
        "served_model": served,
        "fallbacks": fallbacks.iter().map(|(m, r)| json!({"model": m, "reason": r})).collect::<Vec<_>>(),
        "pinned": d.pinned,
        "why": d.why,
    })
}

/// Decide, then submit to the candidates in order until one starts; the
/// returned stream has its first event already received (so a failure could
/// still fall back).
pub async fn route_chat(
    state: &Arc<AppState>,
    req: RoutedChat<'_>,
) -> Result<(Job, Pending, RouteCtx), (ApiError, Option<String>)> {
    let Some(router) = &state.router else {
        return Err((
            ApiError::invalid_param("model", "routing is not configured on this server"),
            None,
        ));
    };
    let started = Instant::now();
    let text = routing_text(&req.messages);
    let classification = router.classifier.classify(&text);
    // Each model's own template and tokenizer; kept for the one that serves.
    let mut prompts: HashMap<String, Result<Vec<u32>, String>> = router
        .profiles
        .iter()
        .filter_map(|p| {
            let engine = state.engines.get(&p.id)?;
            Some((
                p.id.clone(),
                engine.encode_chat(&req.messages).map_err(|e| e.to_string()),
            ))
        })
        .collect();
    let prompt_tokens = router
        .profiles
        .iter()
        .map(|p| {
            let n = match prompts.get(&p.id) {
                Some(Ok(t)) => t.len(),
                _ => usize::MAX / 4, // cannot render: excluded by the context check
            };
            (p.id.clone(), n)
        })
        .collect();
    let max_tokens = req.fields.max_tokens().map_err(|e| (e, None))?;
    let rr = RouteRequest {
        classification,
        prompt_tokens,
        max_tokens,
        needs_tools: req.needs_tools,
        needs_json: req.needs_json,
        options: req.options.clone(),
        default_objective: router.default_objective,
    };
    let decision = decide(&router.profiles, &rr, &EngineLoad(state));
    let id = random_id("dec-");
    if let Err(e) = router
        .audit
        .record(&id, &decision, &text, router.store_prompts)
    {
        tracing::warn!("audit: {e}");
    }
    tracing::info!(decision = %id, why = %decision.why, "routed");
    let mut fallbacks: Vec<(String, String)> = Vec::new();
    for model in &decision.order {
        if router.fault_models.contains(model) {
            fallbacks.push((
                model.clone(),
                "injected fault (SWITCHYARD_FAULT_MODELS)".into(),
            ));
            continue;
        }
        let Some(engine) = state.engines.get(model).cloned() else {
            continue;
        };
        let attempt = (|| {
            let params = req.fields.to_params(engine.tokenizer(), req.top_logprobs)?;
            let prompt = prompts
                .remove(model)
                .unwrap_or_else(|| Err("no prompt".into()))
                .map_err(ApiError::invalid)?;
            let job = Job {
                kind: Kind::Chat,
                model: model.clone(),
                engine: engine.clone(),
                prompts: vec![prompt],
                params,
                stream: req.fields.stream(),
                include_usage: req.fields.include_usage(),
                id: random_id("chatcmpl-"),
                created: crate::routes::now_secs(),
                route: None,
            };
            finish_job(state, job, req.fields)
        })();
        let job = match attempt {
            Ok(j) => j,
            Err(e) => {
                fallbacks.push((model.clone(), e.message));
                continue;
            }
        };
        let mut stream = match engine.submit(job.prompts[0].clone(), job.params.clone()) {
            Ok(s) => s,
            Err(e) => {
                fallbacks.push((model.clone(), e.to_string()));
                continue;
            }
        };
        match stream.next().await {
            Some(Event::Error { message }) => fallbacks.push((model.clone(), message)),
            None => fallbacks.push((model.clone(), "the engine stopped".into())),
            Some(first) => {
                let Some(profile) = router.profiles.iter().find(|p| &p.id == model).cloned() else {
                    fallbacks.push((model.clone(), "no catalog profile".into()));
                    continue;
                };
                let ctx = RouteCtx {
                    summary: summary(&id, &decision, model, &fallbacks),
                    decision_id: id.clone(),
                    outcome: Outcome {
                        served_model: Some(model.clone()),
                        fallbacks,
                        ..Default::default()
                    },
                    started,
                    profile,
                };
                return Ok((job, Pending::new(stream, Some(first)), ctx));
            }
        }
    }
    let (status_err, msg) = if decision.order.is_empty() {
        (
            true,
            format!("No model can serve this request: {}", exclusions(&decision)),
        )
    } else {
        (
            false,
            format!(
                "Every candidate failed: {}",
                fallbacks
                    .iter()
                    .map(|(m, r)| format!("{m}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    };
    let outcome = Outcome {
        fallbacks,
        error: Some(msg.clone()),
        ..Default::default()
    };
    if let Err(e) = router.audit.complete(&id, &outcome) {
        tracing::warn!("audit: {e}");
    }
    let err = if status_err {
        ApiError {
            code: Some("no_eligible_model".into()),
            ..ApiError::invalid_param("model", msg)
        }
    } else {
        ApiError::unavailable(msg)
    };
    Err((err, Some(id)))
}

fn exclusions(d: &Decision) -> String {
    d.candidates
        .iter()
        .map(|c| {
            format!(
                "{} ({})",
                c.model,
                c.excluded.as_deref().unwrap_or("eligible")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Record a pinned request that carried routing options, and attach the
/// routing context to its job. Returns the decision id.
pub fn pin(
    state: &AppState,
    job: &mut Job,
    messages: &[ChatMessage],
    options: RoutingOptions,
) -> Option<String> {
    let router = state.router.as_ref()?;
    let profile = router.profiles.iter().find(|p| p.id == job.model)?.clone();
    let text = routing_text(messages);
    let objective = options.objective.unwrap_or(router.default_objective);
    let decision = switchyard_router::decide::pinned(
        &job.model,
        router.classifier.classify(&text),
        options,
        objective,
    );
    let id = random_id("dec-");
    if let Err(e) = router
        .audit
        .record(&id, &decision, &text, router.store_prompts)
    {
        tracing::warn!("audit: {e}");
    }
    job.route = Some(RouteCtx {
        summary: summary(&id, &decision, &job.model, &[]),
        decision_id: id.clone(),
        outcome: Outcome {
            served_model: Some(job.model.clone()),
            ..Default::default()
        },
        started: Instant::now(),
        profile,
    });
    Some(id)
}

pub fn get_decision(state: &AppState, id: &str) -> Result<Value, ApiError> {
    let router = state
        .router
        .as_ref()
        .ok_or_else(|| ApiError::not_found("routing is not configured"))?;
    match router.audit.get(id) {
        Ok(Some(rec)) => Ok(serde_json::to_value(rec).unwrap_or(Value::Null)),
        Ok(None) => Err(ApiError::not_found(format!("No routing decision `{id}`."))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

pub fn list_decisions(state: &AppState, q: Query) -> Result<Value, ApiError> {
    let router = state
        .router
        .as_ref()
        .ok_or_else(|| ApiError::not_found("routing is not configured"))?;
    let recs = router
        .audit
        .list(&q)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json!({"object": "list", "data": recs}))
}
