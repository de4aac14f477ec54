//! `models.toml`: the catalog of models to load and the engine settings.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use switchyard_engine::{EngineConfig, ModelSource};
use switchyard_router::{Objective, RoutingProfile};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub router: RouterSection,
    pub models: Vec<ModelEntry>,
    /// Directory that relative model paths are taken from (the file's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Environment variable holding the API key; unset or empty means no auth.
    pub api_key_env: String,
    /// Waiting requests per model beyond which new ones get 503 + Retry-After.
    pub max_waiting: usize,
    /// Largest accepted request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            api_key_env: "SWITCHYARD_API_KEY".into(),
            max_waiting: 256,
            max_body_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Objective for `model: "auto"` without one.
    pub default_objective: Objective,
    /// SQLite file for decision records (relative to this file).
    pub audit_db: PathBuf,
    /// Keep the prompt text in decision records (only its hash otherwise).
    pub store_prompts: bool,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            default_objective: Objective::Balanced,
            audit_db: PathBuf::from("switchyard-audit.db"),
            store_prompts: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub source: String,
    /// Serve a shorter context window than the model's own.
    pub max_model_len: Option<usize>,
    /// Context window for routing previews of models that are not loaded
    /// (a loaded model's own window always wins).
    pub context_window: Option<usize>,
    /// What the router knows: capabilities, cost, performance, quality evidence.
    #[serde(default)]
    pub routing: RoutingProfile,
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
        if catalog.models.is_empty() {
            anyhow::bail!("{}: no [[models]] listed", path.display());
        }
        Ok(catalog)
    }

    pub fn find(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The audit database's path, relative paths taken from the catalog's directory.
    pub fn audit_db(&self) -> PathBuf {
        if self.router.audit_db.is_absolute() {
            self.router.audit_db.clone()
        } else {
            self.base_dir.join(&self.router.audit_db)
        }
    }

    pub fn resolve(&self, entry: &ModelEntry) -> anyhow::Result<PathBuf> {
        Ok(ModelSource::parse(&entry.source)?.resolve(&self.base_dir)?)
    }
}
