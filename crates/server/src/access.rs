//! The access log: one line per API request (tracing target
//! `switchyard::access`), written when the request is over: for a stream,
//! when its last event went out. It carries the request id, the model asked
//! for and the one that served, the routing decision, the status, tokens,
//! time to first token and total time; never prompt or completion text.
//! With `--log-format json` each line is one JSON object. The same entry
//! times the request's phases ([`Marks`]), which become its trace when the
//! `otel` feature exports one (`crate::otel`).
//!
//! The `request_id` middleware creates the entry and puts it in the request's
//! extensions; the handler passes it on with the validated request to the
//! job (or the remote reply) that serves it, whose end drops the last
//! reference.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Set when traces are exported (the `otel` feature, with an endpoint).
pub static TRACING: AtomicBool = AtomicBool::new(false);

/// When a request reached each phase.
#[derive(Default, Clone, Copy)]
pub struct Marks {
    pub validated: Option<Instant>,
    pub routed: Option<Instant>,
    /// The serving model's engine got the request (the last one, after a
    /// cascade's escalations), and how long it waited for its first step.
    pub submitted: Option<Instant>,
    pub queued: Option<Duration>,
    pub first_token: Option<Instant>,
    /// The response's headers went out (a stream's body follows).
    pub responded: Option<Instant>,
    pub stream: bool,
}

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
    marks: Marks,
}

pub struct Access {
    request_id: String,
    method: String,
    path: String,
    started: Instant,
    started_wall: SystemTime,
    fields: Mutex<Fields>,
}

impl Access {
    pub fn new(request_id: &str, method: &str, path: &str) -> Arc<Access> {
        Arc::new(Access {
            request_id: request_id.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
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
            f.marks.responded = Some(Instant::now());
            if let Some(d) = decision {
                f.decision = Some(d.to_string());
            }
        });
    }

    /// The `model` the request named (`auto`, `auto:cost` or a model id).
    pub fn requested(&self, model: &str) {
        self.with(|f| f.model = Some(model.to_string()));
    }

    /// The request passed validation.
    pub fn validated(&self) {
        self.with(|f| f.marks.validated = Some(Instant::now()));
    }

    /// The router decided.
    pub fn routed(&self) {
        self.with(|f| f.marks.routed = Some(Instant::now()));
    }

    /// The request went to its engine at `at` (`stream`: as a stream).
    pub fn submitted(&self, at: Instant, stream: bool) {
        self.with(|f| {
            f.marks.submitted = Some(at);
            f.marks.stream = stream;
        });
    }

    /// The first token came out (the first, if called again).
    pub fn first_token(&self) {
        self.with(|f| {
            f.marks.first_token.get_or_insert_with(Instant::now);
        });
    }

    /// How long the engine kept the request waiting for its first step.
    pub fn queued(&self, waited: Duration) {
        self.with(|f| f.marks.queued = Some(waited));
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
        let finished = Instant::now();
        let total_ms = finished.duration_since(self.started).as_secs_f64() * 1000.0;
        let f = match self.fields.get_mut() {
            Ok(f) => std::mem::take(f),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        if TRACING.load(Ordering::Relaxed) {
            self.trace(&f, finished);
        }
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

impl Access {
    /// The request's phases as (name, start, end), in wall-clock time.
    fn phases(&self, f: &Fields, finished: Instant) -> Vec<(&'static str, SystemTime, SystemTime)> {
        let wall = |t: Instant| self.started_wall + t.saturating_duration_since(self.started);
        let m = &f.marks;
        let mut out = Vec::new();
        let mut push = |name, from: Option<Instant>, to: Option<Instant>| {
            if let (Some(a), Some(b)) = (from, to) {
                if b >= a {
                    out.push((name, wall(a), wall(b)));
                }
            }
        };
        push("validate", Some(self.started), m.validated);
        push("route", m.validated, m.routed);
        let scheduled = m.submitted.map(|s| s + m.queued.unwrap_or_default());
        push("queue", m.submitted, scheduled);
        push("prefill", scheduled, m.first_token);
        push("decode", m.first_token, Some(finished));
        if m.stream {
            push("stream", m.responded, Some(finished));
        }
        out
    }

    #[cfg(feature = "otel")]
    fn trace(&self, f: &Fields, finished: Instant) {
        use opentelemetry::KeyValue;
        let end = self.started_wall + finished.saturating_duration_since(self.started);
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method.clone()),
            KeyValue::new("url.path", self.path.clone()),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
            KeyValue::new("switchyard.request_id", self.request_id.clone()),
            KeyValue::new("gen_ai.usage.input_tokens", f.prompt_tokens as i64),
            KeyValue::new("gen_ai.usage.output_tokens", f.completion_tokens as i64),
        ];
        if let Some(m) = &f.model {
            attributes.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if let Some(m) = &f.served {
            attributes.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if let Some(d) = &f.decision {
            attributes.push(KeyValue::new("switchyard.decision_id", d.clone()));
        }
        if let Some(e) = &f.error {
            attributes.push(KeyValue::new("error.message", e.clone()));
        }
        crate::otel::export(
            self.started_wall,
            end,
            &self.phases(f, finished),
            attributes,
        );
    }

    #[cfg(not(feature = "otel"))]
    fn trace(&self, f: &Fields, finished: Instant) {
        // Only the `otel` feature sets TRACING; the phases stay checked.
        let _ = self.phases(f, finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_marks_in_order() {
        let a = Access::new("r", "POST", "/v1/chat/completions");
        let t0 = a.started;
        let at = |ms| t0 + Duration::from_millis(ms);
        let f = Fields {
            marks: Marks {
                validated: Some(at(1)),
                routed: Some(at(3)),
                submitted: Some(at(4)),
                queued: Some(Duration::from_millis(2)),
                first_token: Some(at(10)),
                responded: Some(at(5)),
                stream: true,
            },
            ..Default::default()
        };
        let names: Vec<_> = a
            .phases(&f, at(20))
            .iter()
            .map(|(n, from, to)| {
                assert!(from <= to);
                *n
            })
            .collect();
        assert_eq!(
            names,
            ["validate", "route", "queue", "prefill", "decode", "stream"]
        );
        let spans = a.phases(&f, at(20));
        let ms = |t: SystemTime| t.duration_since(a.started_wall).unwrap().as_millis();
        // queue is [submitted, submitted + queued]; prefill ends at the first token.
        assert_eq!((ms(spans[2].1), ms(spans[2].2)), (4, 6));
        assert_eq!((ms(spans[3].1), ms(spans[3].2)), (6, 10));
        // A pinned, non-streamed request has no route or stream phase.
        let pinned = Fields {
            marks: Marks {
                stream: false,
                routed: None,
                ..f.marks
            },
            ..Default::default()
        };
        let names: Vec<_> = a.phases(&pinned, at(20)).iter().map(|p| p.0).collect();
        assert_eq!(names, ["validate", "queue", "prefill", "decode"]);
    }
}
