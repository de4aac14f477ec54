//! Remote OpenAI-compatible models in the same pool: a frontier API, or
//! another switchyard / vLLM / llama.cpp server, listed in the catalog with
//! `backend = "openai"`. A remote model has no load state; it is routed,
//! served, timed and audited like a local one, priced from its catalog entry,
//! and a fallback target.
//!
//! The request's own JSON goes upstream (validated here first, the same as
//! for a local model; our fields `routing` and `keep_alive` removed, `model`
//! replaced by the remote name), and the answer comes back as the upstream
//! wrote it — streamed chunk by chunk — with `model` set to the catalog id
//! and our `routing` summary added. Failures (no connection, a timeout, a 5xx
//! or a 429) count toward a cooldown, LiteLLM's pattern: after
//! `allowed_fails` failures in a row the model is not routed to for
//! `cooldown_s`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::record::RouteCtx;
use crate::state::{AppState, InFlight};

/// One remote model from the catalog.
pub struct Remote {
    pub id: String,
    base_url: String,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
    allowed_fails: u32,
    cooldown: Duration,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures_in_a_row: u32,
    cooling_until: Option<Instant>,
}

/// Why an upstream call did not give an answer to pass on.
pub enum Upstream {
    /// Unreachable, timed out, 5xx, 401/403/404 (its key or name is wrong) or
    /// 429: the model's fault, another may serve.
    Failed(String),
    /// The upstream refused the request itself (a 4xx): its answer, as is.
    Refused(ApiError),
}

impl Remote {
    pub fn new(
        id: &str,
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        allowed_fails: u32,
        cooldown: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Remote> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(timeout)
            .build()?;
        Ok(Remote {
            id: id.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key,
            client,
            allowed_fails: allowed_fails.max(1),
            cooldown,
            health: Mutex::default(),
        })
    }

    /// In cooldown after repeated failures: the router skips it.
    pub fn cooling_down(&self) -> Option<Duration> {
        let h = self.health.lock().ok()?;
        let until = h.cooling_until?;
        until.checked_duration_since(Instant::now())
    }

    fn failed(&self, why: &str) {
        if let Ok(mut h) = self.health.lock() {
            h.failures_in_a_row += 1;
            if h.failures_in_a_row >= self.allowed_fails {
                h.cooling_until = Some(Instant::now() + self.cooldown);
                h.failures_in_a_row = 0;
                tracing::warn!(model = %self.id, "remote failing ({why}); cooling down for {:?}", self.cooldown);
            }
        }
    }

    fn succeeded(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.failures_in_a_row = 0;
        }
    }

    /// Send a request body upstream (`path` is `chat/completions` or
    /// `completions`); the response once its status says it is an answer.
    pub async fn send(
        &self,
        path: &str,
        raw: &Value,
        stream: bool,
    ) -> Result<reqwest::Response, Upstream> {
        let mut body = raw.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("routing");
            o.remove("keep_alive");
            o.insert("model".into(), Value::String(self.model.clone()));
            if stream {
                // Usage for the audit record and metrics; dropped again
                // before the client sees it unless it asked.
                let opts = o
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(opts) = opts.as_object_mut() {
                    opts.insert("include_usage".into(), Value::Bool(true));
                }
            }
        }
        let mut req = self
            .client
            .post(format!("{}/{path}", self.base_url))
            .json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let why = format!("upstream unreachable: {e}");
                self.failed(&why);
                return Err(Upstream::Failed(why));
            }
        };
        let status = resp.status();
        if status.is_success() {
            self.succeeded();
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        // Auth, a wrong model name or a server that is down are the
        // remote's failures (another model may serve, and they count toward
        // its cooldown); other 4xx refuse this request itself.
        let remote_fault =
            status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429);
        if remote_fault {
            let why = format!("upstream answered {}: {message}", status.as_u16());
            self.failed(&why);
            return Err(Upstream::Failed(why));
        }
        let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST);
        Err(Upstream::Refused(ApiError::upstream_refused(
            code, &self.id, &message,
        )))
    }

    /// The failure is the remote's: count it (a body that broke mid-way).
    pub fn broke(&self, why: &str) {
        self.failed(why);
    }
}

/// The remote models of a catalog, by id.
#[derive(Default)]
pub struct Remotes(Vec<Arc<Remote>>);

impl Remotes {
    pub fn new(remotes: Vec<Remote>) -> Self {
        Remotes(remotes.into_iter().map(Arc::new).collect())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Remote>> {
        self.0.iter().find(|r| r.id == id).cloned()
    }

    pub fn all(&self) -> &[Arc<Remote>] {
        &self.0
    }
}

/// An upstream answer on its way to the client.
pub struct Reply {
    pub remote: Arc<Remote>,
    pub response: reqwest::Response,
    pub stream: bool,
    pub include_usage: bool,
    /// Set for routed requests (and pinned ones with routing options).
    pub route: Option<RouteCtx>,
    pub started: Instant,
    /// The request's access-log entry.
    pub access: Option<Arc<crate::access::Access>>,
}

/// Pass an upstream answer on: one JSON body, or its SSE chunks as they come.
pub async fn respond(state: Arc<AppState>, reply: Reply, in_flight: InFlight) -> Response {
    if reply.stream {
        return relay_stream(state, reply, in_flight);
    }
    let _in_flight = in_flight;
    let Reply {
        remote,
        response,
        mut route,
        started,
        access,
        ..
    } = reply;
    let mut body: Value = match response.json().await {
        Ok(v) => v,
        Err(e) => {
            let why = format!("upstream answer unreadable: {e}");
            remote.broke(&why);
            if let Some(r) = route.as_mut() {
                r.finish(0, 0, None, Some(why.clone()));
            }
            state.metrics.request(&remote.id, "502");
            return ApiError::bad_gateway(&remote.id, &why).into_response();
        }
    };
    let (prompt, completion) = usage_of(&body);
    if let Some(o) = body.as_object_mut() {
        o.insert("model".into(), json!(remote.id));
        if let Some(r) = route.as_mut() {
            o.insert("routing".into(), r.summary.clone());
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            r.finish(prompt, completion, Some(ms), None);
        }
    }
    if let Some(a) = &access {
        a.done(&remote.id, prompt, completion, None);
    }
    state.metrics.done(
        &remote.id,
        &crate::metrics::Done {
            prompt_tokens: prompt,
            completion_tokens: completion,
            e2e_seconds: started.elapsed().as_secs_f64(),
            ttft_seconds: None,
            queue_seconds: None,
            finish_reason: None,
        },
    );
    state.metrics.request(&remote.id, "200");
    Json(body).into_response()
}

fn usage_of(v: &Value) -> (usize, usize) {
    let n = |k: &str| v["usage"][k].as_u64().unwrap_or(0) as usize;
    (n("prompt_tokens"), n("completion_tokens"))
}

/// The largest upstream SSE event relayed.
const MAX_EVENT_BYTES: usize = 16 << 20;

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// The SSE relay: upstream events are parsed, their `model` rewritten, the
/// usage-only chunk kept back unless the client asked for it, and the last
/// chunk before `[DONE]` given our `routing` summary.
struct Relay {
    upstream: ByteStream,
    remote: Arc<Remote>,
    state: Arc<AppState>,
    buf: Vec<u8>,
    held: Option<Value>,
    out: VecDeque<bytes::Bytes>,
    include_usage: bool,
    route: Option<RouteCtx>,
    started: Instant,
    access: Option<Arc<crate::access::Access>>,
    ttft_ms: Option<f64>,
    last_chunk: Option<Instant>,
    usage: (usize, usize),
    done: bool,
    _in_flight: InFlight,
}

fn sse(v: &Value) -> bytes::Bytes {
    bytes::Bytes::from(format!("data: {v}\n\n"))
}

impl Relay {
    /// One upstream `data:` payload.
    fn event(&mut self, data: &str) {
        if data == "[DONE]" {
            self.finish(None);
            return;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            return; // comments and keep-alives
        };
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let why = err["message"]
                .as_str()
                .unwrap_or("an error event")
                .to_string();
            self.finish(Some(why));
            return;
        }
        if chunk.get("usage").is_some_and(|u| !u.is_null()) {
            self.usage = usage_of(&chunk);
        }
        let has_text = chunk["choices"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
                    || c["text"].as_str().is_some_and(|t| !t.is_empty())
                    || c["delta"]["tool_calls"].is_array()
            })
        });
        if has_text {
            let now = Instant::now();
            match self.last_chunk {
                None => {
                    let ms = now.duration_since(self.started).as_secs_f64() * 1000.0;
                    self.ttft_ms = Some(ms);
                    if let Some(a) = &self.access {
                        a.first_token();
                    }
                    self.state.metrics.ttft(&self.remote.id, ms / 1000.0);
                }
                Some(prev) => self
                    .state
                    .metrics
                    .inter_token(&self.remote.id, now.duration_since(prev).as_secs_f64()),
            }
            self.last_chunk = Some(now);
        }
        let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
        if let Some(o) = chunk.as_object_mut() {
            o.insert("model".into(), json!(self.remote.id));
            if !self.include_usage {
                if usage_only {
                    return;
                }
                o.remove("usage");
            }
        }
        // Chunks flow through at once; a finishing or usage chunk is held
        // back (the last one gets the routing summary at `[DONE]`).
        let finishing = usage_only
            || chunk["choices"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| !c["finish_reason"].is_null()));
        if let Some(prev) = self.held.take() {
            self.out.push_back(sse(&prev));
        }
        if finishing {
            self.held = Some(chunk);
        } else {
            self.out.push_back(sse(&chunk));
        }
    }

    /// The stream ended (`[DONE]`, the upstream closed, or broke).
    fn finish(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let routing = self.route.as_ref().map(|r| r.summary.clone());
        match self.held.take() {
            Some(mut last) => {
                if let (Some(o), Some(r)) = (last.as_object_mut(), routing) {
                    o.insert("routing".into(), r);
                }
                self.out.push_back(sse(&last));
            }
            // Nothing held (the upstream sent no finish): the summary
            // comes in a chunk of its own.
            None => {
                if let Some(r) = routing {
                    self.out.push_back(sse(&json!({
                        "object": "chat.completion.chunk", "model": self.remote.id,
                        "choices": [], "routing": r})));
                }
            }
        }
        if let Some(why) = &error {
            self.remote.broke(why);
            self.out.push_back(sse(&json!({"error": {
                "message": format!("The upstream model `{}` broke off: {why}", self.remote.id),
                "type": "server_error", "param": null, "code": "upstream_error"}})));
        }
        self.out
            .push_back(bytes::Bytes::from_static(b"data: [DONE]\n\n"));
        let (p, c) = self.usage;
        if let Some(a) = &self.access {
            match &error {
                None => a.done(&self.remote.id, p, c, self.ttft_ms),
                Some(why) => a.error(why),
            }
        }
        if error.is_none() {
            self.state.metrics.done(
                &self.remote.id,
                &crate::metrics::Done {
                    prompt_tokens: p,
                    completion_tokens: c,
                    e2e_seconds: self.started.elapsed().as_secs_f64(),
                    ttft_seconds: self.ttft_ms.map(|ms| ms / 1000.0),
                    queue_seconds: None,
                    finish_reason: None,
                },
            );
        }
        self.state
            .metrics
            .request(&self.remote.id, if error.is_some() { "502" } else { "200" });
        if let Some(r) = self.route.as_mut() {
            r.finish(p, c, self.ttft_ms, error);
        }
    }

    /// Split complete events out of the buffer.
    fn drain_events(&mut self) {
        while let Some(end) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end.0).collect();
            self.buf.drain(..end.1);
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                self.event(data.join("\n").trim());
            }
        }
    }
}

/// The end of the first SSE event in `buf`: (its length, the separator's).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn relay_stream(state: Arc<AppState>, reply: Reply, in_flight: InFlight) -> Response {
    let relay = Relay {
        upstream: Box::pin(reply.response.bytes_stream()),
        remote: reply.remote,
        state,
        buf: Vec::new(),
        held: None,
        out: VecDeque::new(),
        include_usage: reply.include_usage,
        route: reply.route,
        started: reply.started,
        access: reply.access,
        ttft_ms: None,
        last_chunk: None,
        usage: (0, 0),
        done: false,
        _in_flight: in_flight,
    };
    let body = futures_util::stream::unfold(relay, |mut r| async move {
        loop {
            if let Some(b) = r.out.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(b), r));
            }
            if r.done {
                return None;
            }
            match r.upstream.next().await {
                Some(Ok(bytes)) => {
                    r.buf.extend_from_slice(&bytes);
                    r.drain_events();
                    if r.buf.len() > MAX_EVENT_BYTES {
                        r.finish(Some("an upstream event larger than 16 MiB".into()));
                    }
                }
                Some(Err(e)) => r.finish(Some(e.to_string())),
                None => {
                    r.drain_events();
                    r.finish(None);
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
