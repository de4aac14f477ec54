//! `model: "auto"`: classify, decide, serve the winner, fall back before any
//! byte reaches the client, and record everything in the audit log.
//!
//! The router crate decides; this module adapts the engines to its
//! [`LiveLoad`] view and runs the candidates in order. A request reaches it
//! validated ([`ValidatedRequest`]) and every candidate goes through the same
//! [`admit`] as a pinned request, so invalid input is answered the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use switchyard_engine::{ChatMessage, Event};
use switchyard_router::audit::Query;
use switchyard_router::{
    decide, Decision, LiveLoad, LoadSnapshot, Outcome, RouteRequest, RoutingOptions,
};

use crate::error::ApiError;
use crate::job::{admit, tokenize, Job, ModelChoice, Pending, ValidatedRequest};
use crate::record::{summary, RouteCtx};
use crate::state::{random_id, AppState};

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
        self.0.limits.max_waiting
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

/// Decide, then admit and submit to the candidates in order until one
/// starts; the returned stream has its first event already received (so a
/// failure could still fall back). On failure, the error and the decision id.
pub async fn route_chat(
    state: &Arc<AppState>,
    v: &ValidatedRequest,
) -> Result<(Job, Pending), (ApiError, Option<String>)> {
    let Some(router) = &state.router else {
        return Err((
            ApiError::invalid_param("model", "routing is not configured on this server"),
            None,
        ));
    };
    let started = Instant::now();
    let mut options = v.routing.clone().unwrap_or_default();
    if let (None, ModelChoice::Auto(objective)) = (options.objective, &v.model) {
        options.objective = *objective;
    }
    let text = routing_text(v.messages());
    let classification = router.classifier.classify(&text);
    // Each model's own template and tokenizer (off the async runtime), kept
    // for the one that serves; a prompt provably too long is not tokenized.
    let mut prompts: HashMap<String, Result<Vec<Vec<u32>>, ApiError>> = HashMap::new();
    let mut prompt_tokens = Vec::with_capacity(router.profiles.len());
    for p in &router.profiles {
        let n = match state.engines.get(&p.id) {
            Some(engine) => {
                let tokens = tokenize(state, v, &engine).await;
                let n = match &tokens {
                    Ok(t) => t.iter().map(Vec::len).max().unwrap_or(0),
                    Err(e) if !e.is_client_error() => return Err((e.clone(), None)),
                    Err(_) => v.min_prompt_tokens(&engine).max(p.context_window + 1),
                };
                prompts.insert(p.id.clone(), tokens);
                n
            }
            None => 0, // not loaded: excluded by decide
        };
        prompt_tokens.push((p.id.clone(), n));
    }
    let rr = RouteRequest {
        classification,
        prompt_tokens,
        max_tokens: v.max_tokens,
        needs_tools: v.needs_tools,
        needs_json: v.needs_json,
        options,
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
    // The first refusal that is the request's own fault, answered as a
    // pinned model would if every candidate refuses.
    let mut client_error: Option<ApiError> = None;
    for model in &decision.order {
        if router.fault_models.contains(model) {
            fallbacks.push((
                model.clone(),
                "injected fault (SWITCHYARD_FAULT_MODELS)".into(),
            ));
            continue;
        }
        let Some(engine) = state.engines.get(model) else {
            fallbacks.push((model.clone(), "not loaded".into()));
            continue;
        };
        let attempt = prompts
            .remove(model)
            .unwrap_or_else(|| Err(ApiError::internal("no prompt")))
            .and_then(|p| admit(state, v, model, engine.clone(), p));
        let job = match attempt {
            Ok(j) => j,
            Err(e) => {
                fallbacks.push((model.clone(), e.message.clone()));
                if e.is_client_error() {
                    client_error.get_or_insert(e);
                }
                continue;
            }
        };
        let mut stream = match job
            .engine
            .submit(job.prompts[0].clone(), job.params.clone())
        {
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
                let mut job = job;
                job.route = Some(RouteCtx {
                    summary: summary(&id, &decision, model, &fallbacks),
                    decision_id: id.clone(),
                    outcome: Outcome {
                        served_model: Some(model.clone()),
                        fallbacks,
                        ..Default::default()
                    },
                    started,
                    profile,
                });
                return Ok((job, Pending::new(stream, Some(first))));
            }
        }
    }
    let all_refused = client_error.is_some() && fallbacks.len() == decision.order.len();
    let err = if decision.order.is_empty() {
        ApiError {
            code: Some("no_eligible_model".into()),
            ..ApiError::invalid_param(
                "model",
                format!("No model can serve this request: {}", exclusions(&decision)),
            )
        }
    } else if let (true, Some(e)) = (all_refused, client_error) {
        e
    } else {
        ApiError::unavailable(format!(
            "Every candidate failed: {}",
            fallbacks
                .iter()
                .map(|(m, r)| format!("{m}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    };
    let outcome = Outcome {
        fallbacks,
        error: Some(err.message.clone()),
        ..Default::default()
    };
    if let Err(e) = router.audit.complete(&id, &outcome) {
        tracing::warn!("audit: {e}");
    }
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
