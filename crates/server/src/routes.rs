//! The HTTP API: OpenAI's chat and text completions (streamed as SSE or not),
//! models, health, readiness and metrics, behind request-id and auth layers.
//!
//! Handlers only use the engine's public API (`submit`, `stats`, tokenizer,
//! chat template). A client that goes away drops its `RequestStream`, which
//! cancels the request in the engine, freeing its KV blocks that step.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use rand::Rng;
use serde_json::{json, Value};
use switchyard_engine::{
    Engine, Event, FinishReason, RequestStream, SamplingParams, TokenLogprob, Usage,
};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::{self, ChatRequest, CompletionRequest, SamplingFields};
use crate::routed::{self, RouteCtx, RoutedChat, RouterState};

pub struct AppState {
    pub engines: BTreeMap<String, Arc<Engine>>,
    pub metrics: Metrics,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests waiting in one engine beyond which new ones get 503.
    pub max_waiting: usize,
    pub body_limit: usize,
    pub started: u64,
    /// The router for `model: "auto"` (None: only pinned models).
    pub router: Option<RouterState>,
}

/// An engine stream whose first event may already have been received
/// (routing waits for it so that a failing model can still fall back).
pub struct Pending {
    first: Option<Event>,
    stream: RequestStream,
}

impl Pending {
    pub fn new(stream: RequestStream, first: Option<Event>) -> Self {
        Pending { first, stream }
    }

    async fn next(&mut self) -> Option<Event> {
        match self.first.take() {
            Some(e) => Some(e),
            None => self.stream.next().await,
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/routing/decisions", get(list_decisions))
        .route("/v1/routing/decisions/{id}", get(get_decision))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("No such endpoint.") })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn random_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}{:024x}", n & ((1u128 << 96) - 1))
}

/// Every response carries `x-request-id` (the caller's, or a fresh one).
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| random_id("req-"));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        if req.uri().path().starts_with("/v1/") {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

fn model_card(id: &str, created: u64, engine: &Engine) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "switchyard",
        "context_length": engine.context_length(),
    })
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data: Vec<Value> = state
        .engines
        .iter()
        .map(|(id, e)| model_card(id, state.started, e))
        .collect();
    if state.router.is_some() {
        data.push(auto_card(state.started));
    }
    Json(json!({"object": "list", "data": data}))
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
    let e = state
        .engines
        .get(&id)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(model_card(&id, state.started, e)))
}

async fn get_decision(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    routed::get_decision(&state, &id).map(Json)
}

#[derive(serde::Deserialize)]
struct DecisionQuery {
    limit: Option<usize>,
    model: Option<String>,
    task: Option<String>,
    since: Option<f64>,
}

async fn list_decisions(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid(e.to_string()))?;
    let q = switchyard_router::audit::Query {
        limit: q.limit.unwrap_or(20).min(1000),
        model: q.model,
        task: q.task,
        since: q.since,
    };
    routed::list_decisions(&state, q).map(Json)
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let models: Vec<&String> = state.engines.keys().collect();
    if models.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response();
    }
    Json(json!({"status": "ready", "models": models})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .metrics
        .render(state.engines.values().map(|e| e.as_ref()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn body_bytes(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.body_limit)
        } else {
            ApiError::invalid(format!("Could not read the request body: {rej}"))
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
}

/// A validated request, ready to submit.
pub(crate) struct Job {
    pub kind: Kind,
    pub model: String,
    pub engine: Arc<Engine>,
    pub prompts: Vec<Vec<u32>>,
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    pub id: String,
    pub created: u64,
    /// Set for `model: "auto"` requests.
    pub route: Option<RouteCtx>,
}

fn engine_for(state: &AppState, model: &str) -> Result<Arc<Engine>, ApiError> {
    state
        .engines
        .get(model)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(model))
}

/// Resolve max_tokens against the context window and the KV pool; refuse
/// requests that cannot fit, and shed load when the queue is too deep.
pub(crate) fn finish_job(
    state: &AppState,
    mut job: Job,
    fields: &SamplingFields,
) -> Result<Job, ApiError> {
    let ctx = job.engine.context_length();
    let longest = job.prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_tokens = match fields.max_tokens()? {
        Some(m) => m,
        None => ctx.saturating_sub(longest).max(1),
    };
    if longest + max_tokens > ctx {
        return Err(ApiError::context_length(ctx, longest, max_tokens));
    }
    let stats = job.engine.stats();
    let pool_tokens = stats.kv_blocks_total * stats.block_size;
    if longest + max_tokens > pool_tokens {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!("The KV cache holds {pool_tokens} tokens; this request needs up to {}. Lower max_tokens.", longest + max_tokens),
        ));
    }
    if stats.waiting >= state.max_waiting {
        return Err(ApiError::overloaded(&job.model, stats.waiting));
    }
    job.params.max_tokens = max_tokens;
    Ok(job)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = match body_bytes(&state, body).and_then(|b| openai::parse_body::<ChatRequest>(&b)) {
        Ok(r) => r,
        Err(e) => return run(state, Err(e)).await,
    };
    let top = match (req.logprobs, req.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => Err(ApiError::invalid_param(
            "top_logprobs",
            format!("{k} is not in [0, 20] - 'top_logprobs'"),
        )),
        (Some(true), k) => Ok(Some(k.unwrap_or(0) as usize)),
        (_, Some(_)) => Err(ApiError::invalid_param(
            "top_logprobs",
            "'top_logprobs' requires 'logprobs' to be true.",
        )),
        _ => Ok(None),
    };
    let top = match top {
        Ok(t) => t,
        Err(e) => return run(state, Err(e)).await,
    };
    match routed::parse_auto(&req.model) {
        Err(e) => run(state, Err(e)).await,
        Ok(Some(objective)) => routed_chat(state, req, objective, top).await,
        Ok(None) => {
            let prepared = (|| {
                let engine = engine_for(&state, &req.model)?;
                let params = req.sampling.to_params(engine.tokenizer(), top)?;
                let messages = openai::chat_messages(&req.messages)?;
                let prompt = engine
                    .encode_chat(&messages)
                    .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
                let job = Job {
                    kind: Kind::Chat,
                    model: req.model.clone(),
                    engine,
                    prompts: vec![prompt],
                    params,
                    stream: req.sampling.stream(),
                    include_usage: req.sampling.include_usage(),
                    id: random_id("chatcmpl-"),
                    created: now_secs(),
                    route: None,
                };
                finish_job(&state, job, &req.sampling)
            })();
            // A concrete model with routing options: recorded as pinned.
            let mut decision_id = None;
            let prepared = prepared.map(|mut job| {
                if let (Some(options), Ok(messages)) =
                    (&req.routing, openai::chat_messages(&req.messages))
                {
                    decision_id = routed::pin(&state, &mut job, &messages, options.clone());
                }
                job
            });
            let mut resp = run(state, prepared).await;
            if let Some(v) = decision_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                resp.headers_mut().insert("x-switchyard-decision-id", v);
            }
            resp
        }
    }
}

async fn routed_chat(
    state: Arc<AppState>,
    req: ChatRequest,
    objective: Option<switchyard_router::Objective>,
    top: Option<usize>,
) -> Response {
    let messages = match openai::chat_messages(&req.messages) {
        Ok(m) => m,
        Err(e) => return run(state, Err(e)).await,
    };
    let mut options = req.routing.clone().unwrap_or_default();
    if options.objective.is_none() {
        options.objective = objective;
    }
    let needs_json = req
        .response_format
        .as_ref()
        .is_some_and(|f| f.get("type").and_then(Value::as_str) != Some("text"));
    let routed = RoutedChat {
        messages,
        fields: &req.sampling,
        top_logprobs: top,
        needs_tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
        needs_json,
        options,
    };
    match routed::route_chat(&state, routed).await {
        Ok((mut job, pending, ctx)) => {
            let id = ctx.decision_id.clone();
            job.route = Some(ctx);
            let mut resp = serve(state, job, vec![pending]).await;
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-switchyard-decision-id", v);
            }
            resp
        }
        Err((e, id)) => {
            state.metrics.request("auto", e.status.as_str());
            let mut resp = e.into_response();
            if let Some(v) = id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
                resp.headers_mut().insert("x-switchyard-decision-id", v);
            }
            resp
        }
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let prepared = (|| {
        let req: CompletionRequest = openai::parse_body(&body_bytes(&state, body)?)?;
        if routed::parse_auto(&req.model)?.is_some() {
            return Err(ApiError::invalid_param(
                "model",
                "`auto` routing is served on /v1/chat/completions; name a model for /v1/completions.",
            ));
        }
        let engine = engine_for(&state, &req.model)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "'echo' is not supported."));
        }
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "suffix",
                "'suffix' is not supported.",
            ));
        }
        let top = match req.logprobs {
            Some(k) if !(0..=20).contains(&k) => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("{k} is not in [0, 20] - 'logprobs'"),
                ))
            }
            k => k.map(|k| k as usize),
        };
        let params = req.sampling.to_params(engine.tokenizer(), top)?;
        let prompts = openai::completion_prompts(&req.prompt, engine.tokenizer())?;
        let job = Job {
            kind: Kind::Completion,
            model: req.model.clone(),
            engine,
            prompts,
            params,
            stream: req.sampling.stream(),
            include_usage: req.sampling.include_usage(),
            id: random_id("cmpl-"),
            created: now_secs(),
            route: None,
        };
        finish_job(&state, job, &req.sampling)
    })();
    run(state, prepared).await
}

async fn run(state: Arc<AppState>, job: Result<Job, ApiError>) -> Response {
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            state.metrics.request("none", e.status.as_str());
            return e.into_response();
        }
    };
    let mut streams = Vec::with_capacity(job.prompts.len());
    for p in &job.prompts {
        match job.engine.submit(p.clone(), job.params.clone()) {
            Ok(s) => streams.push(Pending::new(s, None)),
            Err(e) => {
                let err = ApiError::invalid(e.to_string());
                state.metrics.request(&job.model, err.status.as_str());
                return err.into_response();
            }
        }
    }
    serve(state, job, streams).await
}

/// Answer from submitted streams: one JSON body, or SSE.
async fn serve(state: Arc<AppState>, job: Job, streams: Vec<Pending>) -> Response {
    if job.stream {
        stream_response(state, job, streams)
    } else {
        let mut job = job;
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

fn finish_str(f: Option<FinishReason>) -> Value {
    match f {
        Some(FinishReason::Stop) => json!("stop"),
        Some(FinishReason::Length) => json!("length"),
        None => Value::Null,
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
    let result = collect_inner(state, job, streams).await;
    match (&result, job.route.as_mut()) {
        (Ok((_, usage, ttft)), Some(route)) => route.finish(state, usage.0, usage.1, *ttft, None),
        (Err(e), Some(route)) => route.finish(state, 0, 0, None, Some(e.message.clone())),
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
    let started = job.route.as_ref().map_or_else(Instant::now, |r| r.started);
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
                None => return Err(ApiError::internal("the engine stopped")),
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
    state.metrics.tokens(&job.model, prompt_tokens, completion);
    let want_logprobs = job.params.logprobs.is_some();
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(index, o)| match job.kind {
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": o.text},
                "logprobs": if want_logprobs { json!({"content": openai::chat_logprobs(job.engine.tokenizer(), &o.logprobs)}) } else { Value::Null },
                "finish_reason": finish_str(o.finish),
            }),
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
    /// Choices of the front stream still to finish.
    remaining: usize,
    finished: bool,
}

impl Drop for SseState {
    fn drop(&mut self) {
        if !self.finished {
            self.state.metrics.request(&self.job.model, "cancelled");
            if let Some(mut route) = self.job.route.take() {
                let (p, c, _) = self.usage;
                route.finish(
                    &self.state,
                    p,
                    c,
                    self.ttft_ms,
                    Some("cancelled by the client".into()),
                );
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
                let last = self.streams.len() <= 1 && self.remaining == 1;
                let c = match self.job.kind {
                    Kind::Chat => {
                        json!({"index": base + choice, "delta": {}, "finish_reason": finish_str(Some(reason))})
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
            Event::Error { message } => self.fail(&message),
        }
    }

    fn fail(&mut self, message: &str) {
        let err = ApiError::internal(message);
        self.state.metrics.request(&self.job.model, "500");
        self.pending
            .push_back(SseEvent::default().data(err.body().to_string()));
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.streams.clear();
        self.finished = true;
        if let Some(mut route) = self.job.route.take() {
            let (p, c, _) = self.usage;
            route.finish(&self.state, p, c, self.ttft_ms, Some(message.to_string()));
        }
    }

    fn end(&mut self) {
        let (p, c, cached) = self.usage;
        self.state.metrics.tokens(&self.job.model, p, c);
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
            route.finish(&self.state, p, c, self.ttft_ms, None);
        }
    }
}

fn stream_response(state: Arc<AppState>, job: Job, streams: Vec<Pending>) -> Response {
    let n = job.params.n;
    let total = n * streams.len();
    let mut st = SseState {
        state,
        streams: streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i * n, s))
            .collect(),
        pending: VecDeque::new(),
        text_offsets: vec![0; total],
        started: job.route.as_ref().map_or_else(Instant::now, |r| r.started),
        last_token: None,
        ttft_ms: None,
        usage: (0, 0, 0),
        remaining: n,
        finished: false,
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
            match front.next().await {
                Some(ev) => {
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
                None => st.fail("the engine stopped"),
            }
        }
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
