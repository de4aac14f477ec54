//! Model sources and loading: a local GGUF path, or `hf:org/repo[@rev]/file.gguf`
//! resolved with `hf-hub` (local cache first; `HF_HUB_OFFLINE=1` never touches
//! the network and fails clearly when the file is not cached).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::text::chat::ChatTemplate;
use crate::text::tokenizer::Tokenizer;
use crate::weights::gguf::GgufMetadata;

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Path(PathBuf),
    /// `file` is None for a whole model folder (safetensors layout).
    Hub {
        repo: String,
        revision: String,
        file: Option<String>,
    },
}

impl ModelSource {
    /// Parse `hf:org/repo[@rev][/file]` or a filesystem path.
    pub fn parse(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("hf:") else {
            return Ok(ModelSource::Path(PathBuf::from(s)));
        };
        let bad = || {
            EngineError::Source(format!(
                "`{s}`: expected hf:org/repo[@revision] (a safetensors folder) or hf:org/repo[@revision]/file.gguf"
            ))
        };
        let mut parts = rest.splitn(3, '/');
        let (org, repo_rev, file) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next(),
        );
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, rev)) => (r, rev.to_string()),
            None => (repo_rev, "main".to_string()),
        };
        if org.is_empty() || repo.is_empty() || file == Some("") {
            return Err(bad());
        }
        Ok(ModelSource::Hub {
            repo: format!("{org}/{repo}"),
            revision,
            file: file.map(str::to_string),
        })
    }

    /// A local file for this source, relative paths taken from `base`.
    pub fn resolve(&self, base: &Path) -> Result<PathBuf> {
        match self {
            ModelSource::Path(p) => {
                let p = if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                };
                if !p.exists() {
                    return Err(EngineError::Source(format!(
                        "model file {} not found (run scripts/fetch-models for the default models)",
                        p.display()
                    )));
                }
                Ok(p)
            }
            ModelSource::Hub {
                repo,
                revision,
                file: Some(file),
            } => resolve_hub(repo, revision, file),
            ModelSource::Hub {
                repo,
                revision,
                file: None,
            } => resolve_hub_folder(repo, revision),
        }
    }
}

impl ModelSource {
    /// The local file or folder for this source if it is already here (a
    /// path that exists, or a hub file in the cache); never downloads.
    pub fn local(&self, base: &Path) -> Option<PathBuf> {
        match self {
            ModelSource::Path(_) => self.resolve(base).ok(),
            ModelSource::Hub {
                repo,
                revision,
                file,
            } => {
                let cache = hub_cache().repo(hub_repo(repo, revision));
                match file {
                    Some(f) => cache.get(f),
                    None => cache.get("config.json")?.parent().map(Path::to_path_buf),
                }
            }
        }
    }
}

/// The local Hugging Face cache (`HF_HUB_CACHE`, else the default).
fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    }
}

fn hub_repo(repo: &str, revision: &str) -> hf_hub::Repo {
    hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    )
}

fn resolve_hub(repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let hf_repo = hub_repo(repo, revision);
    let cache = hub_cache();
    if let Some(p) = cache.repo(hf_repo.clone()).get(file) {
        return Ok(p);
    }
    let offline =
        std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if offline {
        return Err(EngineError::Source(format!(
            "{repo}@{revision}/{file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| EngineError::Source(e.to_string()))?;
    api.repo(hf_repo)
        .get(file)
        .map_err(|e| EngineError::Source(format!("downloading {repo}@{revision}/{file}: {e}")))
}

/// A model folder from the hub: the config, tokenizer files and every
/// safetensors shard; returns the snapshot directory that holds them.
fn resolve_hub_folder(repo: &str, revision: &str) -> Result<PathBuf> {
    let config = resolve_hub(repo, revision, "config.json")?;
    resolve_hub(repo, revision, "tokenizer.json")?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        let _ = resolve_hub(repo, revision, optional);
    }
    match resolve_hub(repo, revision, "model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::Source(format!("{}: {e}", index.display())))?;
            let mut shards: Vec<&str> = v["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                resolve_hub(repo, revision, shard)?;
            }
        }
        Err(_) => {
            resolve_hub(repo, revision, "model.safetensors")?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| EngineError::Source(format!("{repo}: no snapshot folder")))
}

/// Everything needed to start an engine for one model.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

impl LoadedModel {
    /// Where the weights live.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// A GGUF file, or a Hugging Face model folder (safetensors).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path, device)
        } else {
            Self::from_gguf(path, device)
        }
    }

    /// A Hugging Face folder: `config.json`, `tokenizer.json`,
    /// `tokenizer_config.json` (chat template), `generation_config.json` (EOS),
    /// and `model.safetensors` or shards listed in `model.safetensors.index.json`.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let started = Instant::now();
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p)?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| EngineError::Load(format!("{}: {e}", p.display())))
        };
        let config = read_json("config.json")?
            .ok_or_else(|| EngineError::Load(format!("{}: no config.json", dir.display())))?;
        let mc = crate::model::ModelConfig::from_hf(&config)?;
        let files = match read_json("model.safetensors.index.json")? {
            Some(index) => {
                let mut shards: Vec<String> = index["weight_map"]
                    .as_object()
                    .map(|m| {
                        m.values()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                shards.sort();
                shards.dedup();
                shards.into_iter().map(|f| dir.join(f)).collect()
            }
            None => vec![dir.join("model.safetensors")],
        };
        let mut weights = crate::weights::SafetensorsWeights::open(&files, mc.arch, device)?;
        let model = Model::from_weights(mc, &mut weights)?;
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Number(n) => {
                    n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
                }
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let mut eos = ids(&config["eos_token_id"]);
        if let Some(g) = read_json("generation_config.json")? {
            for id in ids(&g["eos_token_id"]) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let tok_cfg = read_json("tokenizer_config.json")?;
        let tokenizer = Tokenizer::from_hf(&dir.join("tokenizer.json"), tok_cfg.as_ref(), &eos)?;
        let template_src = tok_cfg
            .as_ref()
            .and_then(|c| c["chat_template"].as_str().map(str::to_string));
        Self::assemble(model, tokenizer, template_src, dir, started)
    }

    /// Chat template (the file's, or the family's built-in) and the result.
    fn assemble(
        model: Model,
        tokenizer: Tokenizer,
        template_src: Option<String>,
        path: &Path,
        started: Instant,
    ) -> Result<Self> {
        let template = ChatTemplate::new(
            template_src,
            model.config().arch,
            tokenizer.bos_text().unwrap_or_default(),
            tokenizer.eos_text().unwrap_or_default(),
        )?;
        tracing::info!(path = %path.display(), "loaded in {:.2}s", started.elapsed().as_secs_f64());
        Ok(LoadedModel {
            model,
            tokenizer: Arc::new(tokenizer),
            template,
        })
    }

    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        let started = Instant::now();
        let (mut file, content) = crate::weights::gguf::open(path)?;
        // SAFETY: the mapping is read during this load only (tensors are
        // copied out of it), and a GGUF being served is not rewritten in
        // place; if mapping fails, the tensors are read instead.
        let mapped = unsafe { memmap2::Mmap::map(file.get_ref()) }.ok();
        // The tokenizer (vocabulary maps, merge ranks: a third of a small
        // model's load) builds on a second core while the weights load.
        let (tokenizer, model) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| Tokenizer::from_gguf(&content));
            let model = Model::load(&content, &mut file, mapped.as_deref(), device);
            let tokenizer = tokenizer.join().unwrap_or_else(|_| {
                Err(EngineError::Load("the tokenizer's builder panicked".into()))
            });
            (tokenizer, model)
        });
        let (tokenizer, model) = (tokenizer?, model?);
        let template_src = GgufMetadata::new(&content)
            .string("tokenizer.chat_template")
            .map(str::to_string);
        Self::assemble(model, tokenizer, template_src, path, started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("hf:org/name@v1/m.gguf").unwrap(),
            ModelSource::Hub {
                repo: "org/name".into(),
                revision: "v1".into(),
                file: Some("m.gguf".into())
            }
        );
        assert!(matches!(
            ModelSource::parse("models/x.gguf").unwrap(),
            ModelSource::Path(_)
        ));
        assert!(ModelSource::parse("hf:org").is_err());
    }
}
