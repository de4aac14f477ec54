//! The access log: one line per API request (tracing target
//! `switchyard::access`), written when the request is over: for a stream,
//! when its last event went out. It carries the request id, the model asked
//! for and the one that served, the routing decision, the status, tokens,
//! time to first token and total time; never prompt or completion text.
//! With `--log-format json` each line is one JSON object.
//!
//! The `request_id` middleware creates the entry and puts it in the request's
//! extensions; the handler passes it on with the validated request to the
//! job (or the remote reply) that serves it, whose end drops the last
//! reference.

use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Default)]
struct Fields {
    status: u16,
    model: Option<String>,
    served: Option<String>,
    decision: Option<String>,
    prompt_tokens: usize,
    completion_tokens: usize,
    ttft_ms: Option<f64>,
    error: Option<String>,
}

pub struct Access {
    request_id: String,
    method: String,
    path: String,
    started: Instant,
    fields: Mutex<Fields>,
}

impl Access {
    pub fn new(request_id: &str, method: &str, path: &str) -> Arc<Access> {
        Arc::new(Access {
            request_id: request_id.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            started: Instant::now(),
            fields: Mutex::new(Fields::default()),
        })
    }

    fn with(&self, f: impl FnOnce(&mut Fields)) {
        if let Ok(mut g) = self.fields.lock() {
            f(&mut g);
        }
    }

    /// The response's status and routing decision (from its headers).
    pub fn responded(&self, status: u16, decision: Option<&str>) {
        self.with(|f| {
            f.status = status;
            if let Some(d) = decision {
                f.decision = Some(d.to_string());
            }
        });
    }

    /// The `model` the request named (`auto`, `auto:cost` or a model id).
    pub fn requested(&self, model: &str) {
        self.with(|f| f.model = Some(model.to_string()));
    }

    /// The request was answered: by which model, with how many tokens.
    pub fn done(&self, served: &str, prompt: usize, completion: usize, ttft_ms: Option<f64>) {
        self.with(|f| {
            f.served = Some(served.to_string());
            f.prompt_tokens = prompt;
            f.completion_tokens = completion;
            f.ttft_ms = ttft_ms;
        });
    }

    /// The request failed after its status went out (a broken stream), or
    /// the client went away.
    pub fn error(&self, message: &str) {
        self.with(|f| f.error = Some(message.to_string()));
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let f = match self.fields.get_mut() {
            Ok(f) => std::mem::take(f),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        tracing::info!(
            target: "switchyard::access",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            status = f.status,
            model = f.model.as_deref().unwrap_or("-"),
            served_model = f.served.as_deref().unwrap_or("-"),
            decision_id = f.decision.as_deref().unwrap_or("-"),
            prompt_tokens = f.prompt_tokens,
            completion_tokens = f.completion_tokens,
            ttft_ms = f.ttft_ms.map_or(-1.0, |t| (t * 10.0).round() / 10.0),
            total_ms = (total_ms * 10.0).round() / 10.0,
            error = f.error.as_deref().unwrap_or(""),
            "request"
        );
    }
}
