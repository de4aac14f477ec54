//! `models.toml`: the catalog of models to load and the engine settings.

use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::Deserialize;
use switchyard_engine::{EngineConfig, KvBackend, ModelSource};
use switchyard_router::{Objective, Policy, RoutingProfile};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub router: RouterSection,
    #[serde(default)]
    pub pool: PoolSection,
    pub models: Vec<ModelEntry>,
    /// Directory that relative model paths are taken from (the file's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file's name without its extension (`models` for `models.toml`).
    #[serde(skip)]
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// `cpu`, `cuda` or `cuda:N` (the `SWITCHYARD_DEVICE` variable overrides it).
    pub device: String,
    /// Share of the GPU's memory switchyard may use, weights and KV pools
    /// together (vLLM's `gpu_memory_utilization`); on a GPU the KV pools get
    /// what the weights leave, and `kv_cache_mb` is ignored.
    pub gpu_memory_utilization: f64,
    pub block_size: usize,
    pub kv_cache_mb: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub chunked_prefill: bool,
    pub prefix_caching: bool,
    /// `auto` (host KV and our CPU attention, device KV and our kernels on a
    /// GPU) or `reference` (device tensors and candle's ops everywhere).
    pub kv_backend: KvBackend,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        EngineSection {
            device: "cpu".into(),
            gpu_memory_utilization: 0.9,
            block_size: d.block_size,
            kv_cache_mb: d.kv_cache_bytes >> 20,
            max_num_seqs: d.max_num_seqs,
            max_num_batched_tokens: d.max_num_batched_tokens,
            chunked_prefill: d.chunked_prefill,
            prefix_caching: d.prefix_caching,
            kv_backend: d.kv_backend,
        }
    }
}

impl EngineSection {
    /// The device to load on: `SWITCHYARD_DEVICE` when set, else `device`.
    pub fn device_spec(&self) -> String {
        std::env::var("SWITCHYARD_DEVICE")
            .ok()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.device.clone())
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            block_size: self.block_size,
            kv_cache_bytes: self.kv_cache_mb << 20,
            num_blocks: None,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            chunked_prefill: self.chunked_prefill,
            prefix_caching: self.prefix_caching,
            max_model_len: None,
            kv_backend: self.kv_backend,
        }
    }
}

/// Limits from `[server]`, in the units handlers use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests waiting in one engine beyond which new ones get 503.
    pub max_waiting: usize,
    pub body_limit: usize,
    /// A non-streamed request that has not finished by then gets a 504.
    pub request_timeout: Duration,
    /// A stream that produces nothing for this long ends with an error event.
    pub stream_idle_timeout: Duration,
    /// After SIGTERM, in-flight requests may finish for this long.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Environment variable holding the API key, or several separated by
    /// commas; unset or empty (and no `api_keys_file`) means no auth.
    pub api_key_env: String,
    /// A file of API keys, one a line (`#` starts a comment line).
    pub api_keys_file: Option<PathBuf>,
    /// Requests per minute allowed to each API key (429 + Retry-After
    /// beyond); 0 is unlimited.
    pub rate_limit_per_minute: u32,
    /// Waiting requests per model beyond which new ones get 503 + Retry-After.
    pub max_waiting: usize,
    /// Largest accepted request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// A non-streamed request still running after this many seconds gets a 504.
    pub request_timeout_s: f64,
    /// A stream silent for this many seconds ends with an error event.
    pub stream_idle_timeout_s: f64,
    /// On SIGTERM/SIGINT, seconds that requests in flight may still run.
    pub shutdown_grace_s: f64,
    /// Threads tokenizing prompts and rendering templates (default: the cores).
    pub tokenizer_threads: Option<usize>,
    /// Prompts that may wait for those threads; beyond, 503 + Retry-After.
    pub tokenizer_queue: usize,
    /// OTLP/HTTP endpoint for traces (`http://collector:4318`), else the
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable; needs a binary built with
    /// the `otel` feature (one without refuses to start with it set).
    pub otlp_endpoint: Option<String>,
}

impl ServerSection {
    /// Where traces go, if anywhere: the setting, then the standard variable.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            api_key_env: "SWITCHYARD_API_KEY".into(),
            api_keys_file: None,
            rate_limit_per_minute: 0,
            max_waiting: 256,
            max_body_bytes: 4 << 20,
            request_timeout_s: 600.0,
            stream_idle_timeout_s: 300.0,
            shutdown_grace_s: 30.0,
            tokenizer_threads: None,
            tokenizer_queue: 256,
            otlp_endpoint: None,
        }
    }
}

impl ServerSection {
    pub fn limits(&self) -> Limits {
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.001, 1e9));
        Limits {
            max_waiting: self.max_waiting,
            body_limit: self.max_body_bytes,
            request_timeout: secs(self.request_timeout_s),
            stream_idle_timeout: secs(self.stream_idle_timeout_s),
            shutdown_grace: secs(self.shutdown_grace_s),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Objective for `model: "auto"` without one.
    pub default_objective: Objective,
    /// Where decision records go: a SQLite file (relative to this file), or
    /// a `postgres://` URL that several replicas share. The
    /// `SWITCHYARD_AUDIT_DB` variable overrides it (keeps a password out of
    /// the catalog).
    pub audit_db: String,
    /// Delete decision records older than this many days (checked hourly);
    /// unset keeps them all.
    pub audit_retention_days: Option<f64>,
    /// Record writes that may wait for the database; past it new ones are
    /// dropped (and counted in `switchyard_audit_records_dropped_total`).
    pub audit_queue: usize,
    /// `audit_db` came from the command line: it wins over the variable.
    #[serde(skip)]
    pub audit_db_from_cli: bool,
    /// Keep the prompt text in decision records (only its hash otherwise).
    pub store_prompts: bool,
    /// The objectives' numbers: near-tie tolerance, default quality floor,
    /// balanced weights (`[router.policy]`; see the router's `decide` docs).
    pub policy: Policy,
    /// Measured quality evidence (`switchyard eval` writes it), relative to
    /// this file; default `<catalog name>.evidence.json` beside it. Read
    /// when it exists: its figures replace the catalog's for those tasks.
    pub evidence: Option<PathBuf>,
    /// Under `cascade`, tokens a stream holds back while the first model's
    /// confidence is judged (an answer that ends sooner is judged whole).
    pub cascade_buffer_tokens: usize,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            default_objective: Objective::Balanced,
            audit_db: "switchyard-audit.db".into(),
            audit_retention_days: None,
            audit_queue: 4096,
            audit_db_from_cli: false,
            store_prompts: false,
            policy: Policy::default(),
            evidence: None,
            cascade_buffer_tokens: 16,
        }
    }
}

/// `[pool]`: how models come and go (see [`crate::pool`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Memory for every model's weights and KV pool together: bytes, or a
    /// size like `"2GiB"`. Unset: on a GPU, its memory under
    /// `gpu_memory_utilization`; on the CPU, no limit.
    #[serde(deserialize_with = "de_bytes")]
    pub memory_budget: Option<u64>,
    /// How long a request waits for its model to load before 503 + Retry-After.
    pub load_timeout_s: f64,
    /// How long an idle model stays loaded, unless its entry says otherwise:
    /// seconds or `"5m"`; `-1` (the default) keeps models loaded.
    pub keep_alive: KeepAlive,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            memory_budget: None,
            load_timeout_s: 120.0,
            keep_alive: KeepAlive::Forever,
        }
    }
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    parse_bytes(&v).map(Some).map_err(serde::de::Error::custom)
}

/// Where a catalog model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Our engine, from `source`.
    #[default]
    Local,
    /// An OpenAI-compatible server at `base_url` (see [`crate::remote`]).
    Openai,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    /// Local weights (a path or `hf:`); empty for a remote model.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub backend: Backend,
    /// Remote: the server's API root, e.g. `https://api.example.com/v1`.
    pub base_url: Option<String>,
    /// Remote: the environment variable holding its API key (none: no auth).
    pub api_key_env: Option<String>,
    /// Remote: the model name the server knows it by (default: `id`).
    pub model: Option<String>,
    /// Remote: failures in a row before a cooldown (default 3).
    pub allowed_fails: Option<u32>,
    /// Remote: seconds it is not routed to after `allowed_fails` failures (default 30).
    pub cooldown_s: Option<f64>,
    /// Serve a shorter context window than the model's own.
    pub max_model_len: Option<usize>,
    /// Context window for routing previews of models that are not loaded
    /// (a loaded model's own window always wins).
    pub context_window: Option<usize>,
    /// What the router knows: capabilities, cost, performance, quality evidence.
    #[serde(default)]
    pub routing: RoutingProfile,
    /// Never evicted or unloaded for idleness.
    #[serde(default)]
    pub pin: bool,
    /// Loaded at start-up (`/ready` waits for it); otherwise on first use.
    #[serde(default = "yes")]
    pub preload: bool,
    /// This model's idle time before it unloads (else `[pool] keep_alive`).
    pub keep_alive: Option<KeepAlive>,
}

fn yes() -> bool {
    true
}

impl ModelEntry {
    pub fn engine_config(&self, engine: &EngineSection) -> EngineConfig {
        EngineConfig {
            max_model_len: self.max_model_len,
            ..engine.engine_config()
        }
    }
}

impl Catalog {
    pub fn load(path: &Path) -> anyhow::Result<Catalog> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut catalog: Catalog =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        catalog.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        catalog.name = path
            .file_stem()
            .map_or_else(|| "catalog".into(), |s| s.to_string_lossy().into_owned());
        if catalog.models.is_empty() {
            anyhow::bail!("{}: no [[models]] listed", path.display());
        }
        catalog
            .router
            .policy
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [router.policy]: {e}", path.display()))?;
        if !(catalog.pool.load_timeout_s > 0.0 && catalog.pool.load_timeout_s.is_finite()) {
            anyhow::bail!("{}: [pool] load_timeout_s must be positive", path.display());
        }
        for (i, m) in catalog.models.iter().enumerate() {
            if catalog.models[..i].iter().any(|o| o.id == m.id) {
                anyhow::bail!("{}: model id `{}` is listed twice", path.display(), m.id);
            }
        }
        for m in &catalog.models {
            match m.backend {
                Backend::Local if m.source.is_empty() => anyhow::bail!(
                    "{}: model {}: set source (a path or hf:...), or backend = \"openai\" with base_url",
                    path.display(),
                    m.id
                ),
                Backend::Openai if m.base_url.is_none() => anyhow::bail!(
                    "{}: model {}: a remote model (backend = \"openai\") needs base_url",
                    path.display(),
                    m.id
                ),
                Backend::Openai if m.context_window.is_none() => anyhow::bail!(
                    "{}: model {}: a remote model needs context_window (for routing)",
                    path.display(),
                    m.id
                ),
                _ => {}
            }
            m.routing
                .validate()
                .map_err(|e| anyhow::anyhow!("{}: model {}: {e}", path.display(), m.id))?;
        }
        if catalog.router.cascade_buffer_tokens == 0 {
            anyhow::bail!(
                "{}: [router] cascade_buffer_tokens must be at least 1 (a stream is judged on those tokens)",
                path.display()
            );
        }
        let overlay = EvidenceOverlay::load(&catalog.evidence_path())?;
        for (id, measured) in overlay.models {
            // Evidence for a model no longer listed stays in the file, unused.
            if let Some(m) = catalog.models.iter_mut().find(|m| m.id == id) {
                m.routing.quality.extend(measured.quality);
                // A measured separation replaces the catalog's threshold; one
                // that does not separate right from wrong removes it.
                for (task, separation) in measured.confidence {
                    match separation.threshold {
                        Some(t) => m.routing.confidence_threshold.insert(task, t),
                        None => m.routing.confidence_threshold.remove(&task),
                    };
                }
                m.routing.validate().map_err(|e| {
                    anyhow::anyhow!("{}: model {id}: {e}", catalog.evidence_path().display())
                })?;
            }
        }
        Ok(catalog)
    }

    /// The measured-evidence overlay's path (see [`RouterSection::evidence`]).
    pub fn evidence_path(&self) -> PathBuf {
        match &self.router.evidence {
            Some(p) => self.relative(p),
            None => self.base_dir.join(format!("{}.evidence.json", self.name)),
        }
    }

    /// The catalog's models served by our engine.
    pub fn local_models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(|m| m.backend == Backend::Local)
    }

    pub fn find(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The audit store: `SWITCHYARD_AUDIT_DB` when set, else `audit_db`; a
    /// relative SQLite path is taken from the catalog's directory.
    pub fn audit_target(&self) -> switchyard_router::AuditTarget {
        let configured = std::env::var("SWITCHYARD_AUDIT_DB")
            .ok()
            .filter(|v| !v.trim().is_empty() && !self.router.audit_db_from_cli)
            .unwrap_or_else(|| self.router.audit_db.clone());
        match switchyard_router::AuditTarget::parse(configured.trim()) {
            switchyard_router::AuditTarget::Sqlite(p) => {
                switchyard_router::AuditTarget::Sqlite(self.relative(&p))
            }
            postgres => postgres,
        }
    }

    /// The audit store's queue and retention.
    pub fn audit_options(&self) -> switchyard_router::AuditOptions {
        switchyard_router::AuditOptions {
            queue: self.router.audit_queue.max(1),
            retention: self
                .router
                .audit_retention_days
                .filter(|d| d.is_finite() && *d > 0.0)
                .map(|d| std::time::Duration::from_secs_f64(d * 86_400.0)),
        }
    }

    /// A path from the catalog: relative ones are taken from its directory.
    pub fn relative(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn resolve(&self, entry: &ModelEntry) -> anyhow::Result<PathBuf> {
        Ok(ModelSource::parse(&entry.source)?.resolve(&self.base_dir)?)
    }
}

/// Measured quality evidence per model and task, beside the catalog
/// (`switchyard eval` writes it; [`Catalog::load`] applies it).
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceOverlay {
    pub models: std::collections::BTreeMap<String, OverlayModel>,
}

#[derive(Debug, Clone, Default, serde::Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlayModel {
    pub quality:
        std::collections::BTreeMap<switchyard_router::Task, switchyard_router::catalog::Evidence>,
    /// Per task: the mean token log-probability below which this model's
    /// answers on the suite were more often wrong (where a confidence
    /// cascade would escalate), and how well it separates them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub confidence: std::collections::BTreeMap<switchyard_router::Task, Separation>,
}

/// How well a confidence (mean token log-probability) separates right
/// answers from wrong ones on a suite (`crate::eval::separate`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Separation {
    /// Accept at or above this mean token log-probability; `None`: above
    /// every answer's (the confidence does not tell right from wrong better
    /// than escalating everything).
    pub threshold: Option<f64>,
    /// Share of cases where "at or above the threshold" equals "right".
    pub accuracy: f64,
    /// Probability that a right answer is more confident than a wrong one.
    pub auc: f64,
    pub n: usize,
}

impl EvidenceOverlay {
    /// The overlay at `path`, or an empty one if there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<EvidenceOverlay> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EvidenceOverlay::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// Written whole to a temporary file, then renamed over `path`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// How long an idle model stays loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Forever,
    For(Duration),
}

impl KeepAlive {
    /// Ollama's forms: seconds as a number (negative: forever), or a string
    /// `"-1"`, `"0"`, `"30s"`, `"5m"`, `"1h"`, `"500ms"`.
    pub fn parse(v: &serde_json::Value) -> Result<KeepAlive, String> {
        let from_secs = |s: f64| {
            if s < 0.0 {
                Ok(KeepAlive::Forever)
            } else if s.is_finite() && s < 1e9 {
                Ok(KeepAlive::For(Duration::from_secs_f64(s)))
            } else {
                Err(format!("{s} seconds is out of range"))
            }
        };
        match v {
            serde_json::Value::Number(n) => from_secs(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => {
                let (n, unit) = number_and_unit(s)
                    .ok_or_else(|| format!("`{s}` is not a duration like 30s, 5m, 1h or -1"))?;
                let scale = match if unit.is_empty() { "s" } else { unit } {
                    "ms" => 1e-3,
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    other => return Err(format!("unknown unit `{other}` (ms, s, m, h)")),
                };
                from_secs(n * scale)
            }
            _ => Err("a number of seconds or a duration string like \"5m\"".into()),
        }
    }

    pub fn expired(self, idle: Duration) -> bool {
        match self {
            KeepAlive::Forever => false,
            KeepAlive::For(d) => idle >= d,
        }
    }

    pub fn as_json(self) -> serde_json::Value {
        match self {
            KeepAlive::Forever => serde_json::json!(-1),
            KeepAlive::For(d) => serde_json::json!(d.as_secs_f64()),
        }
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        KeepAlive::parse(&v).map_err(serde::de::Error::custom)
    }
}

/// A byte count written as a number or with a unit (`"2GiB"`, `"512MB"`).
pub fn parse_bytes(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => {
            n.as_u64().ok_or_else(|| format!("{n} is not a byte count"))
        }
        serde_json::Value::String(s) => {
            let (n, unit) = number_and_unit(s)
                .ok_or_else(|| format!("`{s}` is not a size like 2GiB or 512MB"))?;
            let scale = match unit.to_ascii_lowercase().as_str() {
                "" | "b" => 1.0,
                "kb" => 1e3,
                "mb" => 1e6,
                "gb" => 1e9,
                "kib" => 1024.0,
                "mib" => 1024.0 * 1024.0,
                "gib" => 1024.0 * 1024.0 * 1024.0,
                other => {
                    return Err(format!(
                        "unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"
                    ))
                }
            };
            if n < 0.0 || !n.is_finite() {
                return Err(format!("`{s}` is not a size"));
            }
            Ok((n * scale) as u64)
        }
        _ => Err("a number of bytes or a size string like \"2GiB\"".into()),
    }
}

/// `"1.5 GiB"` → `(1.5, "GiB")`; the unit is empty when there is none.
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    Some((num.trim().parse().ok()?, unit.trim()))
}
