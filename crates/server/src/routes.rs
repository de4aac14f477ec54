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

pub struct AppState {
    pub engines: BTreeMap<String, Arc<Engine>>,
    pub metrics: Metrics,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests waiting in one engine beyond which new ones get 503.
    pub max_waiting: usize,
    pub body_limit: usize,
    pub started: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("No such endpoint.") })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_id(prefix: &str) -> String {
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
    let data: Vec<Value> = state
        .engines
        .iter()
        .map(|(id, e)| model_card(id, state.started, e))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = state
        .engines
        .get(&id)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(model_card(&id, state.started, e)))
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
enum Kind {
    Chat,
    Completion,
}

/// A validated request, ready to submit.
struct Job {
    kind: Kind,
    model: String,
    engine: Arc<Engine>,
    prompts: Vec<Vec<u32>>,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
    id: String,
    created: u64,
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
fn finish_job(state: &AppState, mut job: Job, fields: &SamplingFields) -> Result<Job, ApiError> {
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
    let prepared = (|| {
        let req: ChatRequest = openai::parse_body(&body_bytes(&state, body)?)?;
        let engine = engine_for(&state, &req.model)?;
        let top = match (req.logprobs, req.top_logprobs) {
            (_, Some(k)) if !(0..=20).contains(&k) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("{k} is not in [0, 20] - 'top_logprobs'"),
                ))
            }
            (Some(true), k) => Some(k.unwrap_or(0) as usize),
            (_, Some(_)) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "'top_logprobs' requires 'logprobs' to be true.",
                ))
            }
            _ => None,
        };
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
        };
        finish_job(&state, job, &req.sampling)
    })();
    run(state, prepared).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let prepared = (|| {
        let req: CompletionRequest = openai::parse_body(&body_bytes(&state, body)?)?;
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
            Ok(s) => streams.push(s),
            Err(e) => {
                let err = ApiError::invalid(e.to_string());
                state.metrics.request(&job.model, err.status.as_str());
                return err.into_response();
            }
        }
    }
    if job.stream {
        stream_response(state, job, streams)
    } else {
        match collect(&state, &job, streams).await {
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
    job: &Job,
    streams: Vec<RequestStream>,
) -> Result<Value, ApiError> {
    let n = job.params.n;
    let started = Instant::now();
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
                        state
                            .metrics
                            .ttft(&job.model, started.elapsed().as_secs_f64());
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
    for (pi, chunk) in outs.chunks(n).enumerate() {
        let _ = pi;
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
    Ok(json!({
        "id": job.id,
        "object": if job.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": usage_json(prompt_tokens, completion, cached),
    }))
}

/// State of one SSE response; records the request as cancelled if the client
/// leaves before the end (the engine streams it holds are dropped with it).
struct SseState {
    state: Arc<AppState>,
    job: Job,
    streams: VecDeque<(usize, RequestStream)>,
    pending: VecDeque<SseEvent>,
    text_offsets: Vec<usize>,
    started: Instant,
    last_token: Option<Instant>,
    usage: (usize, usize, usize),
    finished: bool,
}

impl Drop for SseState {
    fn drop(&mut self) {
        if !self.finished {
            self.state.metrics.request(&self.job.model, "cancelled");
        }
    }
}

impl SseState {
    fn chunk(&self, choices: Vec<Value>) -> SseEvent {
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
        SseEvent::default().data(c.to_string())
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
                    None => self
                        .state
                        .metrics
                        .ttft(&self.job.model, (now - self.started).as_secs_f64()),
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
                let c = match self.job.kind {
                    Kind::Chat => {
                        json!({"index": base + choice, "delta": {}, "finish_reason": finish_str(Some(reason))})
                    }
                    Kind::Completion => {
                        self.choice(base + choice, Some(""), false, None, Some(reason))
                    }
                };
                self.pending.push_back(self.chunk(vec![c]));
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
            if self.job.kind == Kind::Completion {
                chunk["choices"] = json!([]);
            }
            self.pending
                .push_back(SseEvent::default().data(chunk.to_string()));
        }
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.state.metrics.request(&self.job.model, "200");
        self.finished = true;
    }
}

fn stream_response(state: Arc<AppState>, job: Job, streams: Vec<RequestStream>) -> Response {
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
        started: Instant::now(),
        last_token: None,
        usage: (0, 0, 0),
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
    let remaining_in_front = n;
    let body = stream::unfold(
        (st, remaining_in_front),
        |(mut st, mut remaining)| async move {
            loop {
                if let Some(ev) = st.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(ev), (st, remaining)));
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
                        if matches!(ev, Event::Finished { .. }) {
                            remaining -= 1;
                        }
                        st.on_event(base, ev);
                        if remaining == 0 {
                            st.streams.pop_front();
                            remaining = st.job.params.n;
                        }
                    }
                    None => st.fail("the engine stopped"),
                }
            }
        },
    );
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
