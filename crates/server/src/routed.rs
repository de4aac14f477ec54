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
use switchyard_router::classifier::Turn;
use switchyard_router::{
    decide, Attempt, Classification, Classifier, Decision, LiveLoad, LoadSnapshot, Objective,
    Outcome, RouteRequest, RoutingOptions,
};

use crate::cascade::{self, Threshold};
use crate::error::ApiError;
use crate::job::{admit, prepare, Input, Job, Pending, Prepared, ValidatedRequest};
use crate::record::{actual_cost, summary, RouteCtx};
use crate::remote::{Reply, Upstream};
use crate::state::{random_id, AppState};

struct EngineLoad<'a>(&'a AppState);

impl LiveLoad for EngineLoad<'_> {
    fn load(&self, model: &str) -> Option<LoadSnapshot> {
        if let Some(remote) = self.0.remotes.get(model) {
            // No load state: healthy unless cooling down after failures.
            return Some(LoadSnapshot {
                healthy: remote.cooling_down().is_none(),
                ..Default::default()
            });
        }
        let Some(engine) = self.0.pool.get(model) else {
            // Not loaded: a candidate that would wait for its load, unless
            // its last load failed a moment ago.
            let Some(cold) = self.0.pool.cold_start(model) else {
                // It became ready in between (or is not a pool model).
                return self.0.pool.get(model).map(|e| snapshot(&e));
            };
            return match cold {
                Ok(cold) => Some(LoadSnapshot {
                    healthy: true,
                    cold_start: Some(cold),
                    ..Default::default()
                }),
                Err(_) => Some(LoadSnapshot::default()), // unhealthy
            };
        };
        Some(snapshot(&engine))
    }
    fn max_waiting(&self) -> usize {
        self.0.limits.max_waiting
    }
}

/// A loaded engine's live numbers.
/// A loaded model's live load (what routing sees), for `/v1/models`.
pub fn live_load(state: &AppState, model: &str) -> Option<LoadSnapshot> {
    state.pool.get(model).map(|e| snapshot(&e))
}

fn snapshot(engine: &switchyard_engine::Engine) -> LoadSnapshot {
    let s = engine.stats();
    LoadSnapshot {
        healthy: true,
        cold_start: None,
        waiting: s.waiting,
        running: s.running,
        kv_blocks_free: s.kv_blocks_free,
        block_size: s.block_size,
        prefill_tok_s: s.prefill_tokens_per_s,
        decode_tok_s: s.decode_tokens_per_s,
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

/// Classify a request's conversation on the blocking pool: with a pasted
/// document it is milliseconds of work, which must not run on an async worker.
async fn classify_off_runtime(
    state: &Arc<AppState>,
    v: &ValidatedRequest,
) -> Result<Classification, ApiError> {
    let st = state.clone();
    let input = v.input.clone();
    let started = Instant::now();
    let classified = state
        .blocking
        .run(move || {
            let messages: &[ChatMessage] = match &input {
                Input::Chat(m) => m,
                Input::Completion(_) => &[],
            };
            let router = st
                .router
                .as_ref()
                .ok_or_else(|| ApiError::internal("routing is not configured"))?;
            Ok(classify(&router.classifier, messages))
        })
        .await?;
    state.metrics.classified(started.elapsed().as_secs_f64());
    classified
}

/// Classify a conversation: its final user turn, with the system prompt and
/// the turn before it.
pub fn classify(classifier: &Classifier, messages: &[ChatMessage]) -> Classification {
    let turns: Vec<Turn<'_>> = messages
        .iter()
        .map(|m| Turn {
            role: &m.role,
            content: &m.content,
        })
        .collect();
    classifier.classify_chat(&turns)
}

/// Where a routed request is being served.
pub enum Served {
    /// A local engine: the job and its first event.
    Local(Box<Job>, Pending),
    /// A remote model: its answer, status already checked.
    Remote(Box<Reply>),
}

/// A cascade's answers so far: each verdict, and what the escalated ones cost.
#[derive(Default)]
struct Escalations {
    attempts: Vec<Attempt>,
    cost_usd: f64,
}

/// The latest escalated answer, held until a later model starts: if every
/// later one fails, it is served after all (an answer beats an error).
struct Reserve {
    job: Job,
    pending: Pending,
    profile: switchyard_router::ModelProfile,
    submitted: Instant,
}

/// The routing context of the candidate that serves: its summary for the
/// response and the outcome so far (the fallbacks before it, a cascade's
/// answers and their cost). `served_from`: when this model started.
#[allow(clippy::too_many_arguments)]
fn served_ctx(
    state: &Arc<AppState>,
    id: &str,
    decision: &Decision,
    model: &str,
    profile: switchyard_router::ModelProfile,
    fallbacks: Vec<(String, String)>,
    escalations: Escalations,
    (started, served_from): (Instant, Instant),
) -> RouteCtx {
    state.metrics.routed(&crate::metrics::Routed {
        task: decision.classification.task.as_str(),
        objective: decision.objective.as_str(),
        served: model,
        fallbacks: &fallbacks,
        cold_start: decision
            .candidates
            .iter()
            .any(|c| c.model == model && c.cold_start.is_some()),
    });
    let mut summary = summary(id, decision, model, &fallbacks);
    if !escalations.attempts.is_empty() {
        summary["attempts"] = json!(escalations.attempts);
    }
    let mut ctx = RouteCtx::new(
        state.clone(),
        id.to_string(),
        summary,
        Outcome {
            served_model: Some(model.to_string()),
            fallbacks,
            attempts: escalations.attempts,
            ..Default::default()
        },
        started,
        profile,
    );
    ctx.escalation_cost_usd = escalations.cost_usd;
    ctx.served_from = served_from;
    ctx
}

/// The request's text length in bytes (messages or prompts).
fn prompt_bytes(v: &ValidatedRequest) -> usize {
    match &v.input {
        Input::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
        Input::Completion(prompts) => prompts
            .iter()
            .map(|p| match p {
                crate::openai::Prompt::Text(t) => t.len(),
                crate::openai::Prompt::Ids(t) => t.len() * 4,
            })
            .sum(),
    }
}

/// Decide, then admit and submit to the candidates in order until one
/// starts; the returned stream has its first event already received (so a
/// failure could still fall back). On failure, the error and the decision id.
pub async fn route_chat(
    state: &Arc<AppState>,
    v: &ValidatedRequest,
) -> Result<Served, (ApiError, Option<String>)> {
    let Some(router) = &state.router else {
        return Err((
            ApiError::invalid_param("model", "routing is not configured on this server"),
            None,
        ));
    };
    let started = Instant::now();
    let options = v.routing_options();
    if options.min_confidence.is_some()
        && options.objective.unwrap_or(router.default_objective) != Objective::Cascade
    {
        return Err((
            ApiError::invalid_param(
                "routing.min_confidence",
                "'routing.min_confidence' applies only under the cascade objective (routing.cascade: true or model \"auto:cascade\").",
            ),
            None,
        ));
    }
    let text = routing_text(v.messages());
    let classification = classify_off_runtime(state, v)
        .await
        .map_err(|e| (e, None))?;
    let profiles = router.profiles();
    // Each model's own template and tokenizer (off the async runtime), kept
    // for the one that serves. A model that refuses the prompt (too long,
    // template error) is excluded by its context window; if none is left,
    // its refusal is the answer, as it would be for a pinned request.
    let mut prompts: HashMap<String, Prepared> = HashMap::new();
    let mut refusal: Option<ApiError> = None;
    let mut prompt_tokens = Vec::with_capacity(profiles.len());
    for p in &profiles {
        let n = match state.pool.get(&p.id) {
            Some(engine) => match prepare(state, v, &engine).await {
                Ok(prepared) => {
                    let n = prepared.prompts.iter().map(Vec::len).max().unwrap_or(0);
                    prompts.insert(p.id.clone(), prepared);
                    n
                }
                Err(e) if e.is_client_error() => {
                    refusal.get_or_insert(e);
                    p.context_window.saturating_add(1)
                }
                Err(e) => return Err((e, None)),
            },
            None => 0, // not loaded: estimated below
        };
        prompt_tokens.push((p.id.clone(), n));
    }
    // A model that is not loaded has no tokenizer at hand: its prompt is
    // taken as long as the longest count of a loaded model (or a quarter of
    // the text's bytes when none is loaded). If it wins, it loads and
    // tokenizes for real, and refuses the prompt then if it must.
    let longest_known = prompt_tokens.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let estimate = if longest_known > 0 {
        longest_known
    } else {
        prompt_bytes(v) / 4 + 1
    };
    for (id, n) in prompt_tokens.iter_mut() {
        if !prompts.contains_key(id) && *n == 0 {
            *n = estimate;
        }
    }
    let rr = RouteRequest {
        classification,
        prompt_tokens,
        max_tokens: v.max_tokens,
        needs_tools: v.needs_tools,
        needs_json: v.needs_json,
        options,
        default_objective: router.default_objective,
        policy: router.policy,
    };
    let decision = decide(&profiles, &rr, &EngineLoad(state));
    if let Some(a) = &v.access {
        a.routed();
    }
    let id = random_id("dec-");
    if let Err(e) = router
        .audit
        .record(&id, &decision, &text, router.store_prompts)
    {
        tracing::warn!("audit: {e}");
    }
    tracing::info!(decision = %id, why = %decision.why, "routed");
    let mut fallbacks: Vec<(String, String)> = Vec::new();
    // Refusals that are the request's own fault; answered as a pinned model
    // would only if every candidate refused that way.
    let mut client_errors: Vec<ApiError> = Vec::new();
    let cascade = decision.objective == Objective::Cascade;
    let mut escalations = Escalations::default();
    let mut reserve: Option<Reserve> = None;
    for (position, model) in decision.order.iter().enumerate() {
        // Under a cascade, every model but the chain's last is judged.
        let judged = cascade && position + 1 < decision.order.len();
        if router.fault_models.contains(model) {
            fallbacks.push((
                model.clone(),
                "injected fault (SWITCHYARD_FAULT_MODELS)".into(),
            ));
            continue;
        }
        if let Some(remote) = state.remotes.get(model) {
            if judged {
                // Its tokens' probabilities are not ours to read: it could
                // only be accepted unchecked, which a cascade never does
                // below its chain's last.
                escalations.attempts.push(Attempt {
                    model: model.clone(),
                    threshold_source: "none: a remote model".into(),
                    why: "skipped: a remote model's answer cannot be judged here, so it answers a cascade only as the chain's last".into(),
                    ..Default::default()
                });
                continue;
            }
            // Sent upstream; a failure before the answer starts falls back.
            match remote.send(v.remote_path(), &v.raw, v.stream).await {
                Ok(response) => {
                    let Some(profile) = profiles.iter().find(|p| &p.id == model).cloned() else {
                        fallbacks.push((model.clone(), "no catalog profile".into()));
                        continue;
                    };
                    if cascade {
                        escalations.attempts.push(cascade::last_in_chain(
                            model,
                            "a remote model: its confidence is not judged here",
                        ));
                    }
                    let route = served_ctx(
                        state,
                        &id,
                        &decision,
                        model,
                        profile,
                        fallbacks,
                        escalations,
                        (started, started),
                    );
                    return Ok(Served::Remote(Box::new(Reply {
                        remote,
                        response,
                        stream: v.stream,
                        include_usage: v.include_usage,
                        route: Some(route),
                        started,
                        access: v.access.clone(),
                    })));
                }
                Err(Upstream::Failed(why)) => fallbacks.push((model.clone(), why)),
                Err(Upstream::Refused(e)) => {
                    fallbacks.push((model.clone(), e.message.clone()));
                    client_errors.push(e);
                }
            }
            continue;
        }
        // A cold model loads now (other requests keep being served); a
        // failed or refused load falls back to the next candidate.
        let engine = match state.pool.lease_if_ready(model, v.keep_alive) {
            Some(lease) => lease,
            None => {
                // A reserved answer holds its model, which this load may
                // need to evict: the escalation wins over the reserve.
                reserve = None;
                match state.pool.acquire(model, v.keep_alive).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        fallbacks.push((model.clone(), e.message));
                        continue;
                    }
                }
            }
        };
        let prompt = match prompts.remove(model) {
            Some(p) => p,
            None => match prepare(state, v, engine.engine()).await {
                Ok(p) => p,
                Err(e) => {
                    fallbacks.push((model.clone(), e.message.clone()));
                    if e.is_client_error() {
                        client_errors.push(e);
                    }
                    continue;
                }
            },
        };
        let mut job = match admit(state, v, model, engine, prompt) {
            Ok(j) => j,
            Err(e) => {
                fallbacks.push((model.clone(), e.message.clone()));
                if e.is_client_error() {
                    client_errors.push(e);
                }
                continue;
            }
        };
        // A judged answer carries its log-probabilities (the client's
        // request for them, or not, is restored once it is accepted).
        let client_logprobs = job.params.logprobs;
        if judged {
            job.params.logprobs.get_or_insert(0);
        }
        let submitted = Instant::now();
        if let Some(a) = &v.access {
            a.submitted(submitted, v.stream);
        }
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
        let first = tokio::select! {
            first = stream.next() => first,
            () = state.lifecycle.cancelled() => {
                fallbacks.push((model.clone(), "the server is shutting down".into()));
                return Err(unserved((state, &decision), &id, (fallbacks, escalations), ApiError::shutting_down()));
            }
        };
        match first {
            Some(Event::Error { message }) => fallbacks.push((model.clone(), message)),
            None => fallbacks.push((model.clone(), "the engine stopped".into())),
            Some(first) => {
                let Some(profile) = profiles.iter().find(|p| &p.id == model).cloned() else {
                    fallbacks.push((model.clone(), "no catalog profile".into()));
                    continue;
                };
                let mut pending = Pending::new(stream, Some(first));
                if judged {
                    let limit = v.stream.then_some(router.cascade_buffer_tokens);
                    let held = tokio::select! {
                        held = cascade::hold(&mut pending, job.params.n, limit) => held,
                        () = state.lifecycle.cancelled() => {
                            fallbacks.push((model.clone(), "the server is shutting down".into()));
                            return Err(unserved((state, &decision), &id, (fallbacks, escalations), ApiError::shutting_down()));
                        }
                    };
                    let held = match held {
                        Ok(held) => held,
                        Err(why) => {
                            fallbacks.push((model.clone(), why));
                            continue;
                        }
                    };
                    let calibrated = decision
                        .candidates
                        .iter()
                        .find(|c| &c.model == model)
                        .and_then(|c| c.confidence_threshold);
                    let threshold = match (decision.options.min_confidence, calibrated) {
                        (Some(t), _) => Threshold::Request(t),
                        (None, Some(t)) => Threshold::Calibrated(t),
                        (None, None) => Threshold::None,
                    };
                    let elapsed = submitted.elapsed().as_secs_f64();
                    let mut attempt = cascade::judge(
                        model,
                        &held,
                        job.params.n,
                        threshold,
                        v.grammar.is_some(),
                        elapsed * 1000.0,
                    );
                    if !attempt.accepted {
                        // Dropping the stream cancels the answer; dropping
                        // the job releases the model.
                        let cost =
                            actual_cost(&profile, job.prompts[0].len(), held.tokens, elapsed);
                        attempt.cost_usd = Some(cost);
                        state.metrics.escalated(model);
                        escalations.cost_usd += cost;
                        escalations.attempts.push(attempt);
                        // A finished answer is kept in case every later
                        // model fails; a stream's would go on generating.
                        if !v.stream {
                            pending.put_back(held.events);
                            job.params.logprobs = client_logprobs;
                            reserve = Some(Reserve {
                                job,
                                pending,
                                profile,
                                submitted,
                            });
                        }
                        continue;
                    }
                    escalations.attempts.push(attempt);
                    pending.put_back(held.events);
                    job.params.logprobs = client_logprobs;
                } else if cascade {
                    escalations.attempts.push(cascade::last_in_chain(
                        model,
                        "the chain's last model: served without a check",
                    ));
                }
                job.route = Some(served_ctx(
                    state,
                    &id,
                    &decision,
                    model,
                    profile,
                    fallbacks,
                    escalations,
                    (started, submitted),
                ));
                return Ok(Served::Local(Box::new(job), pending));
            }
        }
    }
    if let Some(Reserve {
        mut job,
        pending,
        profile,
        submitted,
    }) = reserve
    {
        // Its cost is the served model's now, not an escalation's.
        let model = job.model.clone();
        if let Some(a) = escalations
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.model == model)
        {
            escalations.cost_usd -= a.cost_usd.take().unwrap_or(0.0);
            a.accepted = true;
            a.why += "; served after all: every later model failed";
        }
        if let Some(a) = &v.access {
            a.submitted(submitted, v.stream);
        }
        job.route = Some(served_ctx(
            state,
            &id,
            &decision,
            &model,
            profile,
            fallbacks,
            escalations,
            (started, submitted),
        ));
        return Ok(Served::Local(Box::new(job), pending));
    }
    let err = if decision.order.is_empty() {
        match refusal {
            Some(e) => e,
            None if decision
                .candidates
                .iter()
                .all(|c| excluded_by_load(c.excluded.as_deref())) =>
            {
                ApiError::busy(format!(
                    "No model can serve this request right now: {}",
                    exclusions(&decision)
                ))
            }
            None => ApiError {
                code: Some("no_eligible_model".into()),
                ..ApiError::invalid_param(
                    "model",
                    format!("No model can serve this request: {}", exclusions(&decision)),
                )
            },
        }
    } else if client_errors.len() == fallbacks.len() && !client_errors.is_empty() {
        client_errors.swap_remove(0)
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
    Err(unserved(
        (state, &decision),
        &id,
        (fallbacks, escalations),
        err,
    ))
}

/// Complete the record of a request no model served; the error and its id.
fn unserved(
    (state, decision): (&AppState, &Decision),
    id: &str,
    (fallbacks, escalations): (Vec<(String, String)>, Escalations),
    err: ApiError,
) -> (ApiError, Option<String>) {
    state.metrics.routed(&crate::metrics::Routed {
        task: decision.classification.task.as_str(),
        objective: decision.objective.as_str(),
        served: "none",
        fallbacks: &fallbacks,
        cold_start: false,
    });
    let Some(router) = &state.router else {
        return (err, Some(id.to_string()));
    };
    let outcome = Outcome {
        fallbacks,
        error: Some(err.message.clone()),
        attempts: escalations.attempts,
        cost_usd: (escalations.cost_usd > 0.0).then_some(escalations.cost_usd),
        ..Default::default()
    };
    if let Err(e) = router.audit.complete(id, &outcome) {
        tracing::warn!("audit: {e}");
    }
    (err, Some(id.to_string()))
}

/// Exclusions that pass with time (loading, overload), not the request's fault.
fn excluded_by_load(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r == "not loaded" || r == "unhealthy" || r.starts_with("saturated"))
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
pub async fn pin(
    state: &Arc<AppState>,
    job: &mut Job,
    v: &ValidatedRequest,
    options: RoutingOptions,
) -> Option<String> {
    let ctx = pin_ctx(state, &job.model, v, options).await?;
    let id = ctx.decision_id.clone();
    job.route = Some(ctx);
    Some(id)
}

/// The decision record of a request pinned to `model` with routing options.
pub async fn pin_ctx(
    state: &Arc<AppState>,
    model: &str,
    v: &ValidatedRequest,
    options: RoutingOptions,
) -> Option<RouteCtx> {
    let router = state.router.as_ref()?;
    let profile = router.profile(model)?;
    let text = routing_text(v.messages());
    let objective = options.objective.unwrap_or(router.default_objective);
    let classification = match classify_off_runtime(state, v).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("classifying a pinned request for its record: {}", e.message);
            return None;
        }
    };
    let mut decision = switchyard_router::decide::pinned(model, classification, options, objective);
    decision.needs_tools = v.needs_tools;
    decision.needs_json = v.needs_json;
    let id = random_id("dec-");
    if let Err(e) = router
        .audit
        .record(&id, &decision, &text, router.store_prompts)
    {
        tracing::warn!("audit: {e}");
    }
    Some(RouteCtx::new(
        state.clone(),
        id.clone(),
        summary(&id, &decision, model, &[]),
        Outcome {
            served_model: Some(model.to_string()),
            ..Default::default()
        },
        Instant::now(),
        profile,
    ))
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
