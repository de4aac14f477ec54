//! Prometheus metrics through the `metrics` facade and
//! `metrics-exporter-prometheus` (text format, label values escaped by the
//! exporter), with vLLM's names and labels for what vLLM has, so that the
//! dashboards, autoscalers and endpoint pickers built for vLLM read
//! switchyard unchanged (`vllm:num_requests_waiting`,
//! `vllm:kv_cache_usage_perc`, ... with `model_name`), and `switchyard_*`
//! for the rest: the model pool, routing, cascades and the audit queue.
//!
//! Each server has its own recorder (no global state: tests run several in
//! one process). Request metrics are recorded by the HTTP layer; engine
//! gauges (queue, running batch, KV use) and engine counters (preemptions,
//! prefix-cache tokens) are read from each engine's stats when `/metrics`
//! is scraped.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use switchyard_engine::Engine;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const LOAD_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const FAST_BUCKETS: &[f64] = &[
    0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// The model pool's gauges at scrape time: every state name, and each
/// model's (id, current state, bytes held).
pub struct PoolGauges {
    pub states: &'static [&'static str],
    pub models: Vec<(String, &'static str, u64)>,
}

/// One request that ended with an answer.
pub struct Done {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From arrival (the routing decision's start) to the last token.
    pub e2e_seconds: f64,
    pub ttft_seconds: Option<f64>,
    /// Waiting for the engine's first step (local models).
    pub queue_seconds: Option<f64>,
    /// `stop` or `length` (vLLM's `finished_reason`), when known.
    pub finish_reason: Option<&'static str>,
}

/// A routing decision as `/metrics` counts it.
pub struct Routed<'a> {
    pub task: &'a str,
    pub objective: &'a str,
    /// The model that served (`none` when no model did).
    pub served: &'a str,
    pub fallbacks: &'a [(String, String)],
    pub cold_start: bool,
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Each engine counter's value at the last scrape, per (model, counter):
    /// an engine's counts restart with it, the exported ones must not.
    engine_counts: std::sync::Mutex<std::collections::HashMap<(String, &'static str), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let buckets = [
            ("vllm:time_to_first_token_seconds", TTFT_BUCKETS),
            ("vllm:inter_token_latency_seconds", ITL_BUCKETS),
            ("vllm:time_per_output_token_seconds", ITL_BUCKETS),
            ("vllm:e2e_request_latency_seconds", REQUEST_BUCKETS),
            ("vllm:request_queue_time_seconds", REQUEST_BUCKETS),
            ("switchyard_model_load_seconds", LOAD_BUCKETS),
            ("switchyard_classifier_seconds", FAST_BUCKETS),
        ];
        let mut builder = PrometheusBuilder::new();
        for (name, values) in buckets {
            // Only an empty bucket list is refused; these are constants.
            builder = match builder.set_buckets_for_metric(Matcher::Full(name.into()), values) {
                Ok(b) => b,
                Err(_) => unreachable!("bucket constants are non-empty"),
            };
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder,
            handle,
            engine_counts: Default::default(),
        };
        m.with(describe_all);
        m
    }

    fn with(&self, f: impl FnOnce()) {
        metrics::with_local_recorder(&self.recorder, f);
    }

    /// One finished request: `status` is the HTTP status or `cancelled`.
    pub fn request(&self, model: &str, status: &str) {
        let labels = [("model", model.to_string()), ("status", status.to_string())];
        self.with(|| counter!("switchyard_requests_total", &labels).increment(1));
    }

    pub fn ttft(&self, model: &str, seconds: f64) {
        let labels = [("model_name", model.to_string())];
        self.with(|| histogram!("vllm:time_to_first_token_seconds", &labels).record(seconds));
    }

    pub fn inter_token(&self, model: &str, seconds: f64) {
        let labels = [("model_name", model.to_string())];
        self.with(|| histogram!("vllm:inter_token_latency_seconds", &labels).record(seconds));
    }

    /// A request that ended with an answer: tokens, latencies, finish reason.
    pub fn done(&self, model: &str, d: &Done) {
        let labels = [("model_name", model.to_string())];
        self.with(|| {
            counter!("vllm:prompt_tokens_total", &labels).increment(d.prompt_tokens as u64);
            counter!("vllm:generation_tokens_total", &labels).increment(d.completion_tokens as u64);
            histogram!("vllm:e2e_request_latency_seconds", &labels).record(d.e2e_seconds);
            if let Some(q) = d.queue_seconds {
                histogram!("vllm:request_queue_time_seconds", &labels).record(q);
            }
            if let (Some(ttft), true) = (d.ttft_seconds, d.completion_tokens > 1) {
                let per_token = (d.e2e_seconds - ttft).max(0.0) / (d.completion_tokens - 1) as f64;
                histogram!("vllm:time_per_output_token_seconds", &labels).record(per_token);
            }
            if let Some(reason) = d.finish_reason {
                let labels = [
                    ("model_name", model.to_string()),
                    ("finished_reason", reason.to_string()),
                ];
                counter!("vllm:request_success_total", &labels).increment(1);
            }
        });
    }

    /// A pool event (`load_started`, `load_failed`, `evicted`, `unloaded`, `slept`).
    pub fn model_event(&self, model: &str, event: &str) {
        let labels = [("model", model.to_string()), ("event", event.to_string())];
        self.with(|| counter!("switchyard_model_events_total", &labels).increment(1));
    }

    /// A load (or a wake from sleep) finished in `seconds`.
    pub fn model_loaded(&self, model: &str, seconds: f64, woke: bool) {
        self.model_event(model, if woke { "woke" } else { "loaded" });
        let labels = [("model", model.to_string())];
        self.with(|| histogram!("switchyard_model_load_seconds", &labels).record(seconds));
    }

    /// How long the request classifier took.
    pub fn classified(&self, seconds: f64) {
        self.with(|| histogram!("switchyard_classifier_seconds").record(seconds));
    }

    /// A routed request's decision and how it was served.
    pub fn routed(&self, r: &Routed<'_>) {
        self.with(|| {
            let labels = [
                ("task", r.task.to_string()),
                ("objective", r.objective.to_string()),
                ("model", r.served.to_string()),
            ];
            counter!("switchyard_routing_decisions_total", &labels).increment(1);
            for (model, _) in r.fallbacks {
                let labels = [("model", model.clone())];
                counter!("switchyard_routing_fallbacks_total", &labels).increment(1);
            }
            if r.cold_start {
                let labels = [("model", r.served.to_string())];
                counter!("switchyard_routing_cold_starts_total", &labels).increment(1);
            }
        });
    }

    /// A cascade escalated past `model`'s answer.
    pub fn escalated(&self, model: &str) {
        let labels = [("model", model.to_string())];
        self.with(|| counter!("switchyard_cascade_escalations_total", &labels).increment(1));
    }

    /// The audit store's queue: records waiting, and dropped ones (cumulative).
    pub fn audit(&self, queued: usize, dropped: u64) {
        self.with(|| {
            gauge!("switchyard_audit_queue_depth").set(queued as f64);
            counter!("switchyard_audit_records_dropped_total").absolute(dropped);
        });
    }

    /// The text exposition: engine and pool numbers read now, then all.
    pub fn render<'a>(
        &self,
        engines: impl Iterator<Item = &'a Engine>,
        pool: &PoolGauges,
    ) -> String {
        let stats: Vec<(String, switchyard_engine::EngineStats)> =
            engines.map(|e| (e.id().to_string(), e.stats())).collect();
        self.with(|| {
            for (id, current, bytes) in &pool.models {
                for state in pool.states {
                    let labels = [("model", id.clone()), ("state", state.to_string())];
                    gauge!("switchyard_model_state", &labels)
                        .set(f64::from(u8::from(current == state)));
                }
                let labels = [("model", id.clone())];
                gauge!("switchyard_model_memory_bytes", &labels).set(*bytes as f64);
                if !stats.iter().any(|(s, _)| s == id) {
                    // Not loaded: nothing running, waiting or held.
                    engine_gauges(id, &switchyard_engine::EngineStats::default());
                }
            }
            for (id, s) in &stats {
                engine_gauges(id, s);
                let labels = [("model_name", id.clone())];
                for (name, now) in [
                    ("vllm:num_preemptions_total", s.preemptions),
                    (
                        "vllm:prefix_cache_queries_total",
                        s.prompt_tokens_computed + s.prefix_cache_hit_tokens,
                    ),
                    ("vllm:prefix_cache_hits_total", s.prefix_cache_hit_tokens),
                ] {
                    counter!(name, &labels).increment(self.engine_delta(id, name, now));
                }
            }
        });
        self.handle.render()
    }
}

impl Metrics {
    /// How much an engine counter grew since the last scrape; a smaller
    /// value means the engine restarted (a reload) and counts from zero.
    fn engine_delta(&self, model: &str, counter: &'static str, now: u64) -> u64 {
        let Ok(mut last) = self.engine_counts.lock() else {
            return 0;
        };
        let before = last.insert((model.to_string(), counter), now).unwrap_or(0);
        if now >= before {
            now - before
        } else {
            now
        }
    }
}

/// One engine's live gauges (zeros for a model that is not loaded).
fn engine_gauges(id: &str, s: &switchyard_engine::EngineStats) {
    let vllm = [("model_name", id.to_string())];
    gauge!("vllm:num_requests_running", &vllm).set(s.running as f64);
    gauge!("vllm:num_requests_waiting", &vllm).set(s.waiting as f64);
    let used = s.kv_blocks_total.saturating_sub(s.kv_blocks_free);
    let usage = if s.kv_blocks_total == 0 {
        0.0
    } else {
        used as f64 / s.kv_blocks_total as f64
    };
    gauge!("vllm:kv_cache_usage_perc", &vllm).set(usage);
    let ours = [("model", id.to_string())];
    gauge!("switchyard_kv_blocks_used", &ours).set(used as f64);
    gauge!("switchyard_kv_blocks_free", &ours).set(s.kv_blocks_free as f64);
}

fn describe_all() {
    for (name, help) in [
        (
            "vllm:num_requests_running",
            "Requests in the engine's running batch.",
        ),
        (
            "vllm:num_requests_waiting",
            "Requests waiting for the engine to schedule them.",
        ),
        (
            "vllm:kv_cache_usage_perc",
            "Share of the KV cache's blocks in use (0 to 1).",
        ),
        ("switchyard_kv_blocks_used", "KV cache blocks in use."),
        ("switchyard_kv_blocks_free", "KV cache blocks free."),
        (
            "switchyard_model_state",
            "1 for each model's current pool state.",
        ),
        (
            "switchyard_model_memory_bytes",
            "Memory a model holds (weights and KV pool).",
        ),
        (
            "switchyard_audit_queue_depth",
            "Decision records waiting to be written.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    for (name, help) in [
        (
            "vllm:prompt_tokens_total",
            "Prompt tokens of finished requests.",
        ),
        (
            "vllm:generation_tokens_total",
            "Tokens generated for finished requests.",
        ),
        (
            "vllm:num_preemptions_total",
            "Sequences preempted (to be recomputed) by the scheduler.",
        ),
        (
            "vllm:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
        ),
        (
            "vllm:prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
        ),
        (
            "vllm:request_success_total",
            "Requests that ended with an answer, by finish reason.",
        ),
        (
            "switchyard_requests_total",
            "Requests by model and final status.",
        ),
        (
            "switchyard_model_events_total",
            "Model pool events (loads, wakes, failures, evictions, unloads, sleeps).",
        ),
        (
            "switchyard_routing_decisions_total",
            "Routed requests by task, objective and serving model.",
        ),
        (
            "switchyard_routing_fallbacks_total",
            "Routed candidates that failed before their first byte.",
        ),
        (
            "switchyard_routing_cold_starts_total",
            "Routed requests whose model had to load first.",
        ),
        (
            "switchyard_cascade_escalations_total",
            "Cascade answers below their confidence threshold, by model.",
        ),
        (
            "switchyard_audit_records_dropped_total",
            "Decision records dropped because the audit queue was full.",
        ),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (
            "vllm:time_to_first_token_seconds",
            "Seconds from arrival to the first token.",
        ),
        (
            "vllm:inter_token_latency_seconds",
            "Seconds between consecutive streamed tokens.",
        ),
        (
            "vllm:time_per_output_token_seconds",
            "Mean seconds per output token after the first, per request.",
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "Seconds from arrival to the last token.",
        ),
        (
            "vllm:request_queue_time_seconds",
            "Seconds a request waited for its first engine step.",
        ),
        (
            "switchyard_model_load_seconds",
            "Time to load (or wake) a model until it serves.",
        ),
        (
            "switchyard_classifier_seconds",
            "Time to classify a routed request.",
        ),
    ] {
        describe_histogram!(name, help);
    }
}
