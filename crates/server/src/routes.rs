//! The HTTP API: OpenAI's chat and text completions (streamed as SSE or not),
//! models, health, readiness and metrics, behind request-id, auth and
//! draining layers.
//!
//! Handlers are short: parse the body, build the [`ValidatedRequest`] once,
//! then either route it (`model: "auto"`) or admit it to the named model, and
//! answer from the engine's events. Handlers only use the engine's public API.
//! A client that goes away drops its `RequestStream`, which cancels the
//! request in the engine, freeing its KV blocks that step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use switchyard_engine::{
    Engine, Event, FinishReason, TokenLogprob, ToolCall, ToolCallFormat, Usage,
};

use crate::access::Access;
use crate::error::ApiError;
use crate::job::{self, admit, prepare, Job, Kind, ModelChoice, Pending, ValidatedRequest};
use crate::openai::{self, ChatRequest, CompletionRequest};
use crate::pool::{ModelState, ModelStatus};
use crate::remote::{self, Remote, Reply, Upstream};
use crate::routed;
use crate::state::{random_id, AppState, InFlight, KeyRefusal};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/routing/decisions", get(list_decisions))
        .route("/v1/routing/decisions/{id}", get(get_decision))
        .route("/v1/routing/preview", post(routing_preview))
        .route("/v1/routing/preview/latest", get(latest_preview))
        .route("/ui", get(decisions_page))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/models/{id}/{action}", post(admin_model))
        .fallback(|| async { ApiError::not_found("No such endpoint.") })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), draining))
        .layer(DefaultBodyLimit::max(state.limits.body_limit))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Every response carries `x-request-id` (the caller's, or a fresh one),
/// and every API request leaves one access-log line ([`Access`]).
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| random_id("req-"));
    let path = req.uri().path();
    // Probes and scrapes are not requests worth a line each.
    let logged = !matches!(path, "/health" | "/ready" | "/metrics");
    let access = logged.then(|| Access::new(&id, req.method().as_str(), path));
    if let Some(a) = &access {
        req.extensions_mut().insert(a.clone());
    }
    let mut resp = next.run(req).await;
    if let Some(a) = access {
        let decision = resp
            .headers()
            .get("x-switchyard-decision-id")
            .and_then(|v| v.to_str().ok());
        a.responded(resp.status().as_u16(), decision);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// `/v1/*` needs one of the API keys (when any are set), within its rate limit.
async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(keys) = &state.keys {
        let path = req.uri().path();
        if path.starts_with("/v1/") || path.starts_with("/admin/") {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()))
                .unwrap_or_default();
            match keys.admit(given) {
                Ok(()) => {}
                Err(KeyRefusal::Unknown) => return ApiError::unauthorized().into_response(),
                Err(KeyRefusal::RateLimited(s)) => {
                    state.metrics.request("none", "429");
                    return ApiError::rate_limited(s).into_response();
                }
            }
        }
    }
    next.run(req).await
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

/// After SIGTERM new work is refused with 503 (reads still answer).
async fn draining(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.lifecycle.draining() && req.method() == Method::POST {
        return ApiError::shutting_down().into_response();
    }
    next.run(req).await
}

/// A catalog model as `/v1/models` lists it: OpenAI's fields, and its pool
/// state (`state`, `memory_bytes`, `in_flight`, `last_used`,
/// `load_seconds`, `keep_alive`, `pinned`, and `error` after a failed load).
fn model_card(state: &AppState, st: &ModelStatus) -> Value {
    let context = st.context_length.or_else(|| {
        state
            .router
            .as_ref()
            .and_then(|r| r.profile(&st.id))
            .map(|p| p.context_window)
            .filter(|&w| w != usize::MAX)
    });
    let mut card = json!({
        "id": st.id,
        "object": "model",
        "created": state.started,
        "owned_by": "switchyard",
        "context_length": context,
        "state": st.state.as_str(),
        "pinned": st.pinned,
        "preload": st.preload,
        "memory_bytes": st.memory_bytes,
        "in_flight": st.in_flight,
        "last_used": st.last_used,
        "load_seconds": st.load_seconds,
        "keep_alive": st.keep_alive.as_json(),
    });
    if let (Some(e), Some(o)) = (&st.error, card.as_object_mut()) {
        o.insert("error".into(), json!(e));
    }
    if let (Some(load), Some(o)) = (routed::live_load(state, &st.id), card.as_object_mut()) {
        o.insert(
            "load".into(),
            json!({"waiting": load.waiting, "running": load.running,
                   "kv_blocks_free": load.kv_blocks_free, "block_size": load.block_size,
                   "prefill_tok_s": load.prefill_tok_s, "decode_tok_s": load.decode_tok_s}),
        );
    }
    card
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data: Vec<Value> = state
        .pool
        .statuses()
        .iter()
        .map(|st| model_card(&state, st))
        .collect();
    data.extend(state.remotes.all().iter().map(|r| remote_card(&state, r)));
    if state.router.is_some() {
        data.push(auto_card(state.started));
    }
    let (budget, used) = state.pool.memory();
    Json(json!({"object": "list", "data": data,
                "memory": {"budget_bytes": budget, "used_bytes": used}}))
}

/// A remote model as `/v1/models` lists it: `state` is `remote`, or
/// `cooling_down` (with the seconds left) after repeated failures.
fn remote_card(state: &AppState, r: &Remote) -> Value {
    let context = state
        .router
        .as_ref()
        .and_then(|rs| rs.profile(&r.id))
        .map(|p| p.context_window);
    let cooling = r.cooling_down();
    json!({
        "id": r.id,
        "object": "model",
        "created": state.started,
        "owned_by": "switchyard",
        "context_length": context,
        "backend": "openai",
        "state": if cooling.is_some() { "cooling_down" } else { "remote" },
        "cooldown_seconds_left": cooling.map(|d| d.as_secs_f64()),
    })
}

/// `POST /admin/models/{id}/load|sleep|unload`: the model's status after.
async fn admin_model(
    State(state): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let st = match action.as_str() {
        "load" => state.pool.load(&id).await?,
        "sleep" => state.pool.sleep(&id).await?,
        "unload" => state.pool.unload(&id)?,
        other => {
            return Err(ApiError::not_found(format!(
                "No admin action `{other}`; use load, sleep or unload."
            )))
        }
    };
    Ok(Json(model_card(&state, &st)))
}

fn auto_card(created: u64) -> Value {
    json!({
        "id": "auto",
        "object": "model",
        "created": created,
        "owned_by": "switchyard",
        "description": "Routes each request to the best loaded model; auto:quality, auto:cost, auto:latency and auto:balanced pick the objective.",
    })
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == "auto" && state.router.is_some() {
        return Ok(Json(auto_card(state.started)));
    }
    if let Some(r) = state.remotes.get(&id) {
        return Ok(Json(remote_card(&state, &r)));
    }
    let st = state
        .pool
        .status(&id)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(model_card(&state, &st)))
}

async fn get_decision(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // The store answers on its own thread, behind queued writes.
    tokio::task::spawn_blocking(move || routed::get_decision(&state, &id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(Json)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionQuery {
    limit: Option<usize>,
    model: Option<String>,
    task: Option<String>,
    since: Option<f64>,
    objective: Option<String>,
    outcome: Option<String>,
    #[serde(default)]
    fallback: bool,
    #[serde(default)]
    escalated: bool,
    #[serde(default)]
    pinned: bool,
}

async fn list_decisions(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(t) = &q.task {
        switchyard_router::Task::parse(t)
            .ok_or_else(|| ApiError::invalid_param("task", format!("unknown task `{t}`")))?;
    }
    if let Some(o) = &q.objective {
        switchyard_router::Objective::parse(o).ok_or_else(|| {
            ApiError::invalid_param(
                "objective",
                format!("unknown objective `{o}` (quality, cost, latency, balanced, cascade)"),
            )
        })?;
    }
    let outcome = q
        .outcome
        .as_deref()
        .map(|o| {
            switchyard_router::audit::OutcomeKind::parse(o).ok_or_else(|| {
                ApiError::invalid_param(
                    "outcome",
                    format!("unknown outcome `{o}` (served, error, open)"),
                )
            })
        })
        .transpose()?;
    let q = switchyard_router::audit::Query {
        limit: q.limit.unwrap_or(20).min(1000),
        model: q.model,
        task: q.task,
        since: q.since,
        objective: q.objective,
        outcome,
        fallback: q.fallback,
        escalated: q.escalated,
        pinned: q.pinned,
    };
    tokio::task::spawn_blocking(move || routed::list_decisions(&state, q))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(Json)
}

/// `POST /v1/routing/preview`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    /// Chat request bodies (or OpenAI Batch API / chat-log lines).
    requests: Vec<Value>,
    baseline: String,
    #[serde(default)]
    objective: Option<String>,
    /// Calibrate the quality floor that sends this share to stronger models.
    #[serde(default)]
    strong_share: Option<f64>,
}

/// Most requests one preview call replays.
const PREVIEW_MAX_REQUESTS: usize = 10_000;

/// The routing preview over a list of requests (`crate::preview`): the
/// report, and the requests left out with their index and error. Runs on
/// the blocking pool; no model runs.
async fn routing_preview(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(&state, body).await?;
    let body: PreviewBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("routing preview body: {e}")))?;
    let router = state
        .router
        .clone()
        .ok_or_else(|| ApiError::not_found("routing is not configured"))?;
    if body.requests.is_empty() || body.requests.len() > PREVIEW_MAX_REQUESTS {
        return Err(ApiError::invalid_param(
            "requests",
            format!(
                "give 1 to {PREVIEW_MAX_REQUESTS} requests, not {}",
                body.requests.len()
            ),
        ));
    }
    if body.strong_share.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        return Err(ApiError::invalid_param(
            "strong_share",
            "strong_share is a share between 0 and 1",
        ));
    }
    let objective = match &body.objective {
        None => None,
        Some(o) => Some(
            crate::preview::objective(o).map_err(|e| ApiError::invalid_param("objective", e))?,
        ),
    };
    state
        .blocking
        .run(move || {
            let profiles = router.profiles();
            let view = crate::preview::RouterView {
                profiles: &profiles,
                classifier: &router.classifier,
                default_objective: router.default_objective,
                policy: router.policy,
            };
            let (mut requests, mut errors) = (Vec::new(), Vec::new());
            for (index, r) in body.requests.iter().enumerate() {
                match view.route_request(r) {
                    Ok(r) => requests.push(r),
                    Err(e) => errors.push(json!({"index": index, "error": e.message})),
                }
            }
            if requests.is_empty() {
                return Err(ApiError::invalid_param(
                    "requests",
                    format!("none of the requests is valid: {}", errors[0]["error"]),
                ));
            }
            let mut report = switchyard_router::preview(
                &profiles,
                &requests,
                &body.baseline,
                objective,
                &switchyard_router::IdleLoad,
            )
            .map_err(|e| ApiError::invalid_param("baseline", e))?;
            report.calibration = body.strong_share.map(|share| {
                switchyard_router::preview::calibrate_floor(
                    &profiles,
                    &requests,
                    share,
                    &switchyard_router::IdleLoad,
                )
            });
            let mut out =
                serde_json::to_value(report).map_err(|e| ApiError::internal(e.to_string()))?;
            out["object"] = json!("routing.preview");
            out["errors"] = Value::Array(errors);
            if let Ok(mut latest) = router.latest_preview.lock() {
                *latest = Some(Arc::new(out.clone()));
            }
            Ok(Json(out))
        })
        .await?
}

/// The last routing preview this server made (404 before the first).
async fn latest_preview(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let router = state
        .router
        .as_ref()
        .ok_or_else(|| ApiError::not_found("routing is not configured"))?;
    let latest = router.latest_preview.lock().ok().and_then(|l| l.clone());
    latest
        .map(|v| Json((*v).clone()))
        .ok_or_else(|| ApiError::not_found("no routing preview yet: POST /v1/routing/preview"))
}

/// The decisions page: a static shell whose script reads the JSON API
/// (`/v1/models`, `/v1/routing/decisions`, `/v1/routing/preview/latest`)
/// with the caller's key, so it shows nothing the API would not. No
/// external resources; the policy keeps it that way.
async fn decisions_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        include_str!("ui/index.html"),
    )
        .into_response()
}

/// 200 once the `preload` models are ready and while not draining; 503
/// with the models still loading (or `draining`) otherwise. Models loaded
/// on demand never make a replica unready.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let statuses = state.pool.statuses();
    let models: Vec<&str> = statuses
        .iter()
        .filter(|s| s.state == ModelState::Ready)
        .map(|s| s.id.as_str())
        .collect();
    let preloaded = state.preloaded.load(std::sync::atomic::Ordering::SeqCst);
    let loading: Vec<&str> = if preloaded {
        Vec::new()
    } else {
        statuses
            .iter()
            .filter(|s| s.preload && s.state != ModelState::Ready)
            .map(|s| s.id.as_str())
            .collect()
    };
    let status = if state.lifecycle.draining() {
        "draining"
    } else if !preloaded {
        "loading"
    } else {
        "ready"
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"status": status, "models": models, "loading": loading})),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(router) = &state.router {
        state
            .metrics
            .audit(router.audit.queued(), router.audit.dropped());
    }
    let engines = state.pool.ready();
    let body = state.metrics.render(
        engines.iter().map(|(_, e)| e.as_ref()),
        &state.pool.gauges(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The request body, at most `max_body_bytes`. A larger one is read on
/// (up to 8× the limit, for at most 5 s) and thrown away before the 413 goes
/// out, so that the client is listening when it comes (nginx's lingering
/// close): answering mid-upload and closing makes the connection reset under
/// a client that is still sending.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.limits.body_limit;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    let mut drain_until = None;
    loop {
        let next = match drain_until {
            None => stream.next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        match next {
            None => break,
            Some(Err(e)) if total <= limit => {
                return Err(ApiError::invalid(format!(
                    "Could not read the request body: {e}"
                )))
            }
            Some(Err(_)) => break,
            Some(Ok(chunk)) => {
                total += chunk.len();
                if total <= limit {
                    buf.extend_from_slice(&chunk);
                } else {
                    buf = bytes::BytesMut::new();
                    drain_until.get_or_insert_with(|| {
                        tokio::time::Instant::now() + Duration::from_secs(5)
                    });
                    if total > limit.saturating_mul(8) {
                        break;
                    }
                }
            }
        }
    }
    if total > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf.freeze())
}

/// Count a failed request and answer it.
fn fail(state: &AppState, model: &str, e: ApiError) -> Response {
    // A name the catalog does not have is the caller's text: one label for
    // all of them, not a series each.
    let known = model == "none" || state.pool.contains(model) || state.remotes.get(model).is_some();
    let model = if known { model } else { "unknown" };
    state.metrics.request(model, e.status.as_str());
    e.into_response()
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    access: Option<Extension<Arc<Access>>>,
    body: Body,
) -> Response {
    let access = access.map(|Extension(a)| a);
    let validated = read_body(&state, body)
        .await
        .and_then(|b| openai::parse_body_raw::<ChatRequest>(&b, openai::CHAT_FIELDS))
        .and_then(|(req, raw)| {
            if let Some(a) = &access {
                a.requested(&req.model);
            }
            ValidatedRequest::chat(req).map(|v| v.with_raw(raw).with_access(access))
        });
    match validated {
        Ok(v) => {
            if let Some(a) = &v.access {
                a.validated();
            }
            answer(state, v).await
        }
        Err(e) => fail(&state, "none", e),
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    access: Option<Extension<Arc<Access>>>,
    body: Body,
) -> Response {
    let access = access.map(|Extension(a)| a);
    let validated = read_body(&state, body)
        .await
        .and_then(|b| openai::parse_body_raw::<CompletionRequest>(&b, openai::COMPLETION_FIELDS))
        .and_then(|(req, raw)| {
            if let Some(a) = &access {
                a.requested(&req.model);
            }
            ValidatedRequest::completion(req).map(|v| v.with_raw(raw).with_access(access))
        });
    match validated {
        Ok(v) => {
            if let Some(a) = &v.access {
                a.validated();
            }
            answer(state, v).await
        }
        Err(e) => fail(&state, "none", e),
    }
}

/// Serve a validated request: routed for `auto`, else on the named model.
/// It counts as in flight (for the drain) from here to its last byte.
async fn answer(state: Arc<AppState>, v: ValidatedRequest) -> Response {
    let in_flight = InFlight::new(state.clone());
    match v.model.clone() {
        ModelChoice::Auto(_) => routed_chat(state, v, in_flight).await,
        ModelChoice::Pinned(model) => pinned(state, v, model, in_flight).await,
    }
}

/// A request for a named model: tokenize, admit, record when it carries
/// routing options, submit, answer.
async fn pinned(
    state: Arc<AppState>,
    v: ValidatedRequest,
    model: String,
    in_flight: InFlight,
) -> Response {
    if let Some(remote) = state.remotes.get(&model) {
        return pinned_remote(state, v, remote, in_flight).await;
    }
    let admitted = async {
        let engine = state.pool.acquire(&model, v.keep_alive).await?;
        let prepared = prepare(&state, &v, engine.engine()).await?;
        admit(&state, &v, &model, engine, prepared)
    }
    .await;
    let mut job = match admitted {
        Ok(j) => j,
        Err(e) => return fail(&state, &model, e),
    };
    // A concrete model with routing options: recorded as pinned.
    let decision_id = match v.routing.clone() {
        Some(options) => routed::pin(&state, &mut job, &v, options).await,
        None => None,
    };
    let mut resp = match job::submit(&job) {
        Ok(streams) => serve(state, job, streams, in_flight).await,
        Err(e) => {
            if let Some(route) = job.route.as_mut() {
                route.finish(0, 0, None, Some(e.message.clone()));
            }
            fail(&state, &job.model, e)
        }
    };
    if let Some(v) = decision_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("x-switchyard-decision-id", v);
    }
    resp
}

/// A request for a remote model: sent upstream as is (after the same
/// validation), answered as the upstream answers.
async fn pinned_remote(
    state: Arc<AppState>,
    v: ValidatedRequest,
    remote: Arc<Remote>,
    in_flight: InFlight,
) -> Response {
    let mut route = match v.routing.clone() {
        Some(options) => routed::pin_ctx(&state, &remote.id, &v, options).await,
        None => None,
    };
    let decision_id = route.as_ref().map(|r| r.decision_id.clone());
    let started = route.as_ref().map_or_else(Instant::now, |r| r.started);
    let mut resp = match remote.send(v.remote_path(), &v.raw, v.stream).await {
        Ok(response) => {
            let reply = Reply {
                remote,
                response,
                stream: v.stream,
                include_usage: v.include_usage,
                route,
                started,
                access: v.access.clone(),
            };
            remote::respond(state, reply, in_flight).await
        }
        Err(failure) => {
            let e = match failure {
                Upstream::Failed(why) => ApiError::bad_gateway(&remote.id, &why),
                Upstream::Refused(e) => e,
            };
            if let Some(r) = route.as_mut() {
                r.finish(0, 0, None, Some(e.message.clone()));
            }
            fail(&state, &remote.id, e)
        }
    };
    if let Some(v) = decision_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("x-switchyard-decision-id", v);
    }
    resp
}

async fn routed_chat(state: Arc<AppState>, v: ValidatedRequest, in_flight: InFlight) -> Response {
    match routed::route_chat(&state, &v).await {
        Ok(served) => {
            let (id, mut resp) = match served {
                routed::Served::Local(job, pending) => (
                    job.route.as_ref().map(|r| r.decision_id.clone()),
                    serve(state, *job, vec![pending], in_flight).await,
                ),
                routed::Served::Remote(reply) => (
                    reply.route.as_ref().map(|r| r.decision_id.clone()),
                    remote::respond(state, *reply, in_flight).await,
                ),
            };
            if let Some(v) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                resp.headers_mut().insert("x-switchyard-decision-id", v);
            }
            resp
        }
        Err((e, id)) => {
            let mut resp = fail(&state, "auto", e);
            if let Some(v) = id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
                resp.headers_mut().insert("x-switchyard-decision-id", v);
            }
            resp
        }
    }
}

/// Answer from submitted streams: one JSON body, or SSE.
async fn serve(
    state: Arc<AppState>,
    job: Job,
    streams: Vec<Pending>,
    in_flight: InFlight,
) -> Response {
    if job.stream {
        stream_response(state, job, streams, in_flight)
    } else {
        let mut job = job;
        let _in_flight = in_flight;
        match collect(&state, &mut job, streams).await {
            Ok(body) => {
                state.metrics.request(&job.model, "200");
                Json(body).into_response()
            }
            Err(e) => {
                state.metrics.request(&job.model, e.status.as_str());
                e.into_response()
            }
        }
    }
}

#[derive(Default)]
struct ChoiceOut {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    usage: Usage,
}

/// vLLM's `finished_reason` label.
fn finish_name(f: Option<FinishReason>) -> Option<&'static str> {
    match f? {
        FinishReason::Stop => Some("stop"),
        FinishReason::Length => Some("length"),
    }
}

fn finish_str(f: Option<FinishReason>) -> Value {
    match f {
        Some(FinishReason::Stop) => json!("stop"),
        Some(FinishReason::Length) => json!("length"),
        None => Value::Null,
    }
}

/// A chat choice's message and finish reason: with tools, the calls found
/// in the text (`finish_reason: "tool_calls"`) and the rest as content.
fn chat_message(
    tool_format: Option<ToolCallFormat>,
    text: &str,
    finish: Option<FinishReason>,
) -> (Value, Value) {
    let plain = || {
        (
            json!({"role": "assistant", "content": text}),
            finish_str(finish),
        )
    };
    let Some(format) = tool_format else {
        return plain();
    };
    let parsed = switchyard_engine::parse_tool_calls(format, text);
    if parsed.tool_calls.is_empty() {
        return plain();
    }
    let calls: Vec<Value> = parsed
        .tool_calls
        .iter()
        .map(|c| call_json(c, &c.arguments))
        .collect();
    let content = (!parsed.content.is_empty()).then_some(parsed.content);
    (
        json!({"role": "assistant", "content": content, "tool_calls": calls}),
        tool_finish(finish),
    )
}

/// A tool call as OpenAI writes it, with a fresh id.
fn call_json(call: &ToolCall, arguments: &str) -> Value {
    json!({"id": random_id("call_"), "type": "function",
           "function": {"name": call.name, "arguments": arguments}})
}

/// The finish reason of a choice that made calls.
fn tool_finish(finish: Option<FinishReason>) -> Value {
    match finish {
        Some(FinishReason::Stop) => json!("tool_calls"),
        other => finish_str(other),
    }
}

fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    let mut u = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if cached > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    u
}

/// Text-completion logprobs (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
fn completion_logprobs(engine: &Engine, lps: &[TokenLogprob], offset: usize) -> Value {
    let tk = engine.tokenizer();
    let mut pos = offset;
    let mut offsets = Vec::new();
    let tokens: Vec<String> = lps
        .iter()
        .map(|l| {
            let t = openai::token_text(tk, l.token);
            offsets.push(pos);
            pos += t.len();
            t
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| {
            l.top.iter().map(|&(id, lp)| (openai::token_text(tk, id), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// Wait for every choice of every prompt; one JSON response.
async fn collect(
    state: &AppState,
    job: &mut Job,
    streams: Vec<Pending>,
) -> Result<Value, ApiError> {
    let limit = state.limits.request_timeout;
    let result = tokio::select! {
        r = tokio::time::timeout(limit, collect_inner(state, job, streams)) => {
            r.unwrap_or_else(|_| Err(ApiError::timeout(limit)))
        }
        () = state.lifecycle.cancelled() => Err(ApiError::shutting_down()),
    };
    match (&result, job.route.as_mut()) {
        (Ok((_, usage, ttft)), Some(route)) => route.finish(usage.0, usage.1, *ttft, None),
        (Err(e), Some(route)) => route.finish(0, 0, None, Some(e.message.clone())),
        _ => {}
    }
    let (mut body, _, _) = result?;
    if let Some(route) = &job.route {
        body["routing"] = route.summary.clone();
    }
    Ok(body)
}

/// The response body, (prompt, completion) tokens and time to first token.
async fn collect_inner(
    state: &AppState,
    job: &Job,
    streams: Vec<Pending>,
) -> Result<(Value, (usize, usize), Option<f64>), ApiError> {
    let n = job.params.n;
    let started = job::started(job);
    let mut ttft_ms = None;
    let mut outs: Vec<ChoiceOut> = (0..n * streams.len())
        .map(|_| ChoiceOut::default())
        .collect();
    let mut first_token = true;
    for (pi, mut s) in streams.into_iter().enumerate() {
        let mut remaining = n;
        while remaining > 0 {
            match s.next().await {
                Some(Event::Delta {
                    choice,
                    text,
                    logprobs,
                    ..
                }) => {
                    if first_token {
                        let t = started.elapsed().as_secs_f64();
                        if let Some(a) = &job.access {
                            a.first_token();
                        }
                        state.metrics.ttft(&job.model, t);
                        ttft_ms = Some(t * 1000.0);
                        first_token = false;
                    }
                    let o = &mut outs[pi * n + choice];
                    o.text.push_str(&text);
                    o.logprobs.extend(logprobs);
                }
                Some(Event::Finished {
                    choice,
                    reason,
                    usage,
                }) => {
                    let o = &mut outs[pi * n + choice];
                    o.finish = Some(reason);
                    o.usage = usage;
                    remaining -= 1;
                }
                Some(Event::Error { message }) => return Err(ApiError::internal(message)),
                None => return Err(ApiError::busy("The model's engine has stopped.")),
            }
        }
    }
    let (mut prompt_tokens, mut completion, mut cached) = (0, 0, 0);
    for chunk in outs.chunks(n) {
        prompt_tokens += chunk[0].usage.prompt_tokens;
        cached += chunk[0].usage.cached_tokens;
        completion += chunk
            .iter()
            .map(|o| o.usage.completion_tokens)
            .sum::<usize>();
    }
    if let Some(a) = &job.access {
        a.done(&job.model, prompt_tokens, completion, ttft_ms);
        if let Some(o) = outs.first() {
            a.queued(std::time::Duration::from_micros(o.usage.queued_us));
        }
    }
    state.metrics.done(
        &job.model,
        &crate::metrics::Done {
            prompt_tokens,
            completion_tokens: completion,
            e2e_seconds: started.elapsed().as_secs_f64(),
            ttft_seconds: ttft_ms.map(|ms| ms / 1000.0),
            queue_seconds: outs.first().map(|o| o.usage.queued_us as f64 / 1e6),
            finish_reason: outs.first().and_then(|o| finish_name(o.finish)),
        },
    );
    let want_logprobs = job.params.logprobs.is_some();
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(index, o)| match job.kind {
            Kind::Chat => {
                let (message, finish) = chat_message(job.tool_format, &o.text, o.finish);
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": if want_logprobs { json!({"content": openai::chat_logprobs(job.engine.tokenizer(), &o.logprobs)}) } else { Value::Null },
                    "finish_reason": finish,
                })
            }
            Kind::Completion => json!({
                "index": index,
                "text": o.text,
                "logprobs": if want_logprobs { completion_logprobs(&job.engine, &o.logprobs, 0) } else { Value::Null },
                "finish_reason": finish_str(o.finish),
            }),
        })
        .collect();
    let body = json!({
        "id": job.id,
        "object": if job.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": usage_json(prompt_tokens, completion, cached),
    });
    Ok((body, (prompt_tokens, completion), ttft_ms))
}

/// State of one SSE response; records the request as cancelled if the client
/// leaves before the end (the engine streams it holds are dropped with it).
struct SseState {
    state: Arc<AppState>,
    job: Job,
    streams: VecDeque<(usize, Pending)>,
    pending: VecDeque<SseEvent>,
    ttft_ms: Option<f64>,
    text_offsets: Vec<usize>,
    started: Instant,
    last_token: Option<Instant>,
    usage: (usize, usize, usize),
    /// The first choice's wait for the engine and finish reason (metrics).
    queued_us: Option<u64>,
    finish: Option<FinishReason>,
    /// Choices of the front stream still to finish.
    remaining: usize,
    finished: bool,
    /// Per choice, with tools: the text so far and how much went out.
    tool_texts: Vec<HeldText>,
    _in_flight: InFlight,
}

/// A streamed choice's text while its model may call tools: content is
/// sent until a call may be starting, then held; at the end the whole text
/// is parsed into content and calls.
#[derive(Default)]
struct HeldText {
    text: String,
    /// Bytes of `text` already sent as content.
    sent: usize,
    /// A call started: nothing more goes out as content.
    holding: bool,
}

impl HeldText {
    /// Append a delta; returns the content that is safe to send now.
    fn push(&mut self, format: ToolCallFormat, delta: &str) -> String {
        self.text.push_str(delta);
        if self.holding {
            return String::new();
        }
        // Only the Hermes format announces a call with a tag; the others
        // are held whole.
        let ToolCallFormat::Hermes = format else {
            self.holding = true;
            return String::new();
        };
        const OPEN: &str = "<tool_call>";
        let unsent = &self.text[self.sent..];
        let safe = match unsent.find(OPEN) {
            Some(at) => {
                self.holding = true;
                at
            }
            // Keep back a tail that could be the start of the tag.
            None => (1..OPEN.len().min(unsent.len() + 1))
                .rev()
                .find(|&n| {
                    unsent.is_char_boundary(unsent.len() - n)
                        && OPEN.starts_with(&unsent[unsent.len() - n..])
                })
                .map_or(unsent.len(), |n| unsent.len() - n),
        };
        let out = unsent[..safe].to_string();
        self.sent += safe;
        out
    }

    /// The content still to send and the calls.
    fn finish(&mut self, format: ToolCallFormat) -> (String, Vec<ToolCall>) {
        let parsed = switchyard_engine::parse_tool_calls(format, &self.text);
        if parsed.tool_calls.is_empty() {
            let rest = self.text[self.sent..].to_string();
            self.sent = self.text.len();
            return (rest, Vec::new());
        }
        let sent = self.text[..self.sent].trim();
        let rest = parsed
            .content
            .strip_prefix(sent)
            .unwrap_or_default()
            .to_string();
        (rest, parsed.tool_calls)
    }
}

impl Drop for SseState {
    fn drop(&mut self) {
        if !self.finished {
            self.state.metrics.request(&self.job.model, "cancelled");
            if let Some(mut route) = self.job.route.take() {
                let (p, c, _) = self.usage;
                route.finish(p, c, self.ttft_ms, Some("cancelled by the client".into()));
            }
            if let Some(a) = &self.job.access {
                a.error("cancelled by the client");
            }
        }
    }
}

impl SseState {
    fn chunk(&self, choices: Vec<Value>) -> SseEvent {
        SseEvent::default().data(self.chunk_json(choices).to_string())
    }

    fn chunk_json(&self, choices: Vec<Value>) -> Value {
        let mut c = json!({
            "id": self.job.id,
            "object": if self.job.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.job.created,
            "model": self.job.model,
            "choices": choices,
        });
        if self.job.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn choice(
        &self,
        index: usize,
        text: Option<&str>,
        first: bool,
        logprobs: Option<Value>,
        finish: Option<FinishReason>,
    ) -> Value {
        let mut v = match self.job.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": index, "delta": delta, "finish_reason": finish_str(finish)})
            }
            Kind::Completion => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": Value::Null, "finish_reason": finish_str(finish)})
            }
        };
        if let Some(lp) = logprobs {
            v["logprobs"] = lp;
        }
        v
    }

    /// Turn one engine event into zero or more SSE events.
    fn on_event(&mut self, base: usize, ev: Event) {
        match ev {
            Event::Delta {
                choice,
                text,
                logprobs,
                tokens,
            } => {
                let now = Instant::now();
                match self.last_token {
                    None => {
                        let t = (now - self.started).as_secs_f64();
                        self.ttft_ms = Some(t * 1000.0);
                        if let Some(a) = &self.job.access {
                            a.first_token();
                        }
                        self.state.metrics.ttft(&self.job.model, t)
                    }
                    Some(t) => self
                        .state
                        .metrics
                        .inter_token(&self.job.model, (now - t).as_secs_f64()),
                }
                self.last_token = Some(now);
                let want_lp = self.job.params.logprobs.is_some() && !tokens.is_empty();
                if text.is_empty() && !want_lp {
                    return;
                }
                let index = base + choice;
                let lp = want_lp.then(|| match self.job.kind {
                    Kind::Chat => json!({"content": openai::chat_logprobs(self.job.engine.tokenizer(), &logprobs)}),
                    Kind::Completion => completion_logprobs(&self.job.engine, &logprobs, self.text_offsets[index]),
                });
                self.text_offsets[index] += text.len();
                // With tools, text that may be a call is held back.
                let text = match (self.job.tool_format, self.tool_texts.get_mut(index)) {
                    (Some(format), Some(held)) => held.push(format, &text),
                    _ => text,
                };
                if text.is_empty() && lp.is_none() {
                    return;
                }
                let c = self.choice(index, Some(&text), false, lp, None);
                self.pending.push_back(self.chunk(vec![c]));
            }
            Event::Finished {
                choice,
                reason,
                usage,
            } => {
                self.usage.0 += if choice == 0 { usage.prompt_tokens } else { 0 };
                self.usage.1 += usage.completion_tokens;
                self.usage.2 += if choice == 0 { usage.cached_tokens } else { 0 };
                self.queued_us.get_or_insert(usage.queued_us);
                self.finish.get_or_insert(reason);
                let last = self.streams.len() <= 1 && self.remaining == 1;
                let mut finish = finish_str(Some(reason));
                if let (Some(format), Some(held)) =
                    (self.job.tool_format, self.tool_texts.get_mut(base + choice))
                {
                    let (rest, calls) = held.finish(format);
                    let index = base + choice;
                    if !rest.is_empty() {
                        let c = self.choice(index, Some(&rest), false, None, None);
                        self.pending.push_back(self.chunk(vec![c]));
                    }
                    // As OpenAI streams calls: id, type and name first, then
                    // the arguments.
                    for (i, call) in calls.iter().enumerate() {
                        let mut first = call_json(call, "");
                        first["index"] = json!(i);
                        let head = json!({"index": index, "finish_reason": null, "delta": {"tool_calls": [first]}});
                        let args = json!({"index": index, "finish_reason": null, "delta": {"tool_calls": [
                            {"index": i, "function": {"arguments": call.arguments}}]}});
                        self.pending.push_back(self.chunk(vec![head]));
                        self.pending.push_back(self.chunk(vec![args]));
                    }
                    if !calls.is_empty() {
                        finish = tool_finish(Some(reason));
                    }
                }
                let c = match self.job.kind {
                    Kind::Chat => {
                        json!({"index": base + choice, "delta": {}, "finish_reason": finish})
                    }
                    Kind::Completion => {
                        self.choice(base + choice, Some(""), false, None, Some(reason))
                    }
                };
                let mut chunk = self.chunk_json(vec![c]);
                if let (true, false, Some(route)) = (last, self.job.include_usage, &self.job.route)
                {
                    chunk["routing"] = route.summary.clone();
                }
                self.pending
                    .push_back(SseEvent::default().data(chunk.to_string()));
            }
            Event::Error { message } => self.fail(ApiError::internal(message)),
        }
    }

    /// End the stream with an error event (the SSE status is already 200).
    fn fail(&mut self, err: ApiError) {
        let message = err.message.clone();
        if let Some(a) = &self.job.access {
            a.error(&message);
        }
        self.state
            .metrics
            .request(&self.job.model, err.status.as_str());
        self.pending
            .push_back(SseEvent::default().data(err.body().to_string()));
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.streams.clear();
        self.finished = true;
        if let Some(mut route) = self.job.route.take() {
            let (p, c, _) = self.usage;
            route.finish(p, c, self.ttft_ms, Some(message));
        }
    }

    fn end(&mut self) {
        let (p, c, cached) = self.usage;
        if let Some(a) = &self.job.access {
            a.done(&self.job.model, p, c, self.ttft_ms);
            if let Some(us) = self.queued_us {
                a.queued(std::time::Duration::from_micros(us));
            }
        }
        self.state.metrics.done(
            &self.job.model,
            &crate::metrics::Done {
                prompt_tokens: p,
                completion_tokens: c,
                e2e_seconds: self.started.elapsed().as_secs_f64(),
                ttft_seconds: self.ttft_ms.map(|ms| ms / 1000.0),
                queue_seconds: self.queued_us.map(|us| us as f64 / 1e6),
                finish_reason: finish_name(self.finish),
            },
        );
        if self.job.include_usage {
            let mut chunk = json!({
                "id": self.job.id,
                "object": if self.job.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                "created": self.job.created,
                "model": self.job.model,
                "choices": [],
                "usage": usage_json(p, c, cached),
            });
            if let Some(route) = &self.job.route {
                chunk["routing"] = route.summary.clone();
            }
            self.pending
                .push_back(SseEvent::default().data(chunk.to_string()));
        }
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.state.metrics.request(&self.job.model, "200");
        self.finished = true;
        if let Some(mut route) = self.job.route.take() {
            route.finish(p, c, self.ttft_ms, None);
        }
    }
}

fn stream_response(
    state: Arc<AppState>,
    job: Job,
    streams: Vec<Pending>,
    in_flight: InFlight,
) -> Response {
    let n = job.params.n;
    let total = n * streams.len();
    let mut st = SseState {
        streams: streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i * n, s))
            .collect(),
        pending: VecDeque::new(),
        text_offsets: vec![0; total],
        started: job::started(&job),
        last_token: None,
        ttft_ms: None,
        usage: (0, 0, 0),
        queued_us: None,
        finish: None,
        remaining: n,
        finished: false,
        tool_texts: if job.tool_format.is_some() {
            (0..total).map(|_| HeldText::default()).collect()
        } else {
            Vec::new()
        },
        _in_flight: in_flight,
        state,
        job,
    };
    // The role comes first, once per choice (chat only).
    if st.job.kind == Kind::Chat {
        for i in 0..total {
            let c = st.choice(i, Some(""), true, None, None);
            let ev = st.chunk(vec![c]);
            st.pending.push_back(ev);
        }
    }
    let body = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.finished {
                return None;
            }
            let Some((base, front)) = st.streams.front_mut() else {
                st.end();
                continue;
            };
            let base = *base;
            let idle = st.state.limits.stream_idle_timeout;
            let cancelled = st.state.lifecycle.cancelled();
            let next = tokio::select! {
                ev = tokio::time::timeout(idle, front.next()) => Some(ev),
                () = cancelled => None,
            };
            let Some(next) = next else {
                st.fail(ApiError::shutting_down());
                continue;
            };
            match next {
                Err(_) => st.fail(ApiError::stream_idle(idle)),
                Ok(Some(ev)) => {
                    let finished = matches!(ev, Event::Finished { .. });
                    st.on_event(base, ev);
                    if finished {
                        st.remaining -= 1;
                        if st.remaining == 0 {
                            st.streams.pop_front();
                            st.remaining = st.job.params.n;
                        }
                    }
                }
                Ok(None) => st.fail(ApiError::busy("The model's engine has stopped.")),
            }
        }
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
