//! Prometheus metrics, rendered in the text exposition format.
//!
//! Request counters and latency histograms are recorded by the HTTP layer;
//! queue depth, running sequences, KV blocks and preemptions are read live
//! from each engine's stats when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use switchyard_engine::Engine;

/// A per-engine gauge or counter: name, type, help, how to read it from stats.
type Gauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&switchyard_engine::EngineStats) -> f64,
);

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const LOAD_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, &b) in buckets.iter().enumerate() {
            if v <= b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, model: &str, buckets: &[f64]) {
        for (i, &b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String), u64>,
    ttft: BTreeMap<String, Histogram>,
    itl: BTreeMap<String, Histogram>,
    prompt_tokens: BTreeMap<String, u64>,
    generation_tokens: BTreeMap<String, u64>,
    /// Pool events by (model, event): load_started, loaded, woke,
    /// load_failed, evicted, unloaded, slept.
    model_events: BTreeMap<(String, String), u64>,
    load_seconds: BTreeMap<String, Histogram>,
}

/// The model pool's gauges at scrape time: every state name, and each
/// model's (id, current state, bytes held).
pub struct PoolGauges {
    pub states: &'static [&'static str],
    pub models: Vec<(String, &'static str, u64)>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<F: FnOnce(&mut Inner)>(&self, f: F) {
        if let Ok(mut g) = self.inner.lock() {
            f(&mut g);
        }
    }

    /// One finished request: `status` is the HTTP status or `cancelled`.
    pub fn request(&self, model: &str, status: &str) {
        self.with(|m| {
            *m.requests
                .entry((model.to_string(), status.to_string()))
                .or_default() += 1
        });
    }

    pub fn ttft(&self, model: &str, seconds: f64) {
        self.with(|m| {
            m.ttft
                .entry(model.to_string())
                .or_default()
                .observe(TTFT_BUCKETS, seconds)
        });
    }

    pub fn inter_token(&self, model: &str, seconds: f64) {
        self.with(|m| {
            m.itl
                .entry(model.to_string())
                .or_default()
                .observe(ITL_BUCKETS, seconds)
        });
    }

    pub fn tokens(&self, model: &str, prompt: usize, generated: usize) {
        self.with(|m| {
            *m.prompt_tokens.entry(model.to_string()).or_default() += prompt as u64;
            *m.generation_tokens.entry(model.to_string()).or_default() += generated as u64;
        });
    }

    /// A pool event (`load_started`, `load_failed`, `evicted`, `unloaded`, `slept`).
    pub fn model_event(&self, model: &str, event: &str) {
        self.with(|m| {
            *m.model_events
                .entry((model.to_string(), event.to_string()))
                .or_default() += 1
        });
    }

    /// A load (or a wake from sleep) finished in `seconds`.
    pub fn model_loaded(&self, model: &str, seconds: f64, woke: bool) {
        self.model_event(model, if woke { "woke" } else { "loaded" });
        self.with(|m| {
            m.load_seconds
                .entry(model.to_string())
                .or_default()
                .observe(LOAD_BUCKETS, seconds)
        });
    }

    pub fn render<'a>(
        &self,
        engines: impl Iterator<Item = &'a Engine>,
        pool: &PoolGauges,
    ) -> String {
        let mut out = String::new();
        let Ok(m) = self.inner.lock() else { return out };
        out.push_str("# HELP switchyard_model_events_total Model pool events (loads, wakes, failures, evictions, unloads, sleeps).\n# TYPE switchyard_model_events_total counter\n");
        for ((model, event), n) in &m.model_events {
            let _ = writeln!(
                out,
                "switchyard_model_events_total{{model=\"{model}\",event=\"{event}\"}} {n}"
            );
        }
        out.push_str("# HELP switchyard_model_load_seconds Time to load (or wake) a model until it serves.\n# TYPE switchyard_model_load_seconds histogram\n");
        for (model, h) in &m.load_seconds {
            h.render(
                &mut out,
                "switchyard_model_load_seconds",
                model,
                LOAD_BUCKETS,
            );
        }
        out.push_str("# HELP switchyard_model_state 1 for each model's current pool state.\n# TYPE switchyard_model_state gauge\n");
        for (id, current, _) in &pool.models {
            for state in pool.states {
                let v = u8::from(current == state);
                let _ = writeln!(
                    out,
                    "switchyard_model_state{{model=\"{id}\",state=\"{state}\"}} {v}"
                );
            }
        }
        out.push_str("# HELP switchyard_model_memory_bytes Memory a model holds (weights and KV pool).\n# TYPE switchyard_model_memory_bytes gauge\n");
        for (id, _, bytes) in &pool.models {
            let _ = writeln!(
                out,
                "switchyard_model_memory_bytes{{model=\"{id}\"}} {bytes}"
            );
        }
        out.push_str("# HELP switchyard_requests_total Requests by model and final status.\n# TYPE switchyard_requests_total counter\n");
        for ((model, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "switchyard_requests_total{{model=\"{model}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP switchyard_time_to_first_token_seconds Time to first token.\n# TYPE switchyard_time_to_first_token_seconds histogram\n");
        for (model, h) in &m.ttft {
            h.render(
                &mut out,
                "switchyard_time_to_first_token_seconds",
                model,
                TTFT_BUCKETS,
            );
        }
        out.push_str("# HELP switchyard_inter_token_latency_seconds Time between streamed tokens.\n# TYPE switchyard_inter_token_latency_seconds histogram\n");
        for (model, h) in &m.itl {
            h.render(
                &mut out,
                "switchyard_inter_token_latency_seconds",
                model,
                ITL_BUCKETS,
            );
        }
        for (name, help, map) in [
            (
                "switchyard_prompt_tokens_total",
                "Prompt tokens received.",
                &m.prompt_tokens,
            ),
            (
                "switchyard_generation_tokens_total",
                "Tokens generated.",
                &m.generation_tokens,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (model, n) in map {
                let _ = writeln!(out, "{name}{{model=\"{model}\"}} {n}");
            }
        }
        drop(m);
        let engines: Vec<&Engine> = engines.collect();
        let gauges: [Gauge; 6] = [
            (
                "switchyard_queue_depth",
                "gauge",
                "Requests waiting for a slot.",
                |s| s.waiting as f64,
            ),
            (
                "switchyard_running_sequences",
                "gauge",
                "Sequences in the running batch.",
                |s| s.running as f64,
            ),
            (
                "switchyard_kv_blocks_used",
                "gauge",
                "KV cache blocks in use.",
                |s| (s.kv_blocks_total - s.kv_blocks_free) as f64,
            ),
            (
                "switchyard_kv_blocks_free",
                "gauge",
                "KV cache blocks free.",
                |s| s.kv_blocks_free as f64,
            ),
            (
                "switchyard_preemptions_total",
                "counter",
                "Sequences preempted for recompute.",
                |s| s.preemptions as f64,
            ),
            (
                "switchyard_prefix_cache_hit_tokens_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                |s| s.prefix_cache_hit_tokens as f64,
            ),
        ];
        let stats: Vec<_> = engines
            .iter()
            .map(|e| (e.id().to_string(), e.stats()))
            .collect();
        for (name, kind, help, f) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (id, s) in &stats {
                let _ = writeln!(out, "{name}{{model=\"{id}\"}} {}", f(s));
            }
        }
        out
    }
}
