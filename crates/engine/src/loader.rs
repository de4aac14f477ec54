//! Model sources and loading: a local GGUF path, or `hf:org/repo[@rev]/file.gguf`
//! resolved with `hf-hub` (local cache first; `HF_HUB_OFFLINE=1` never touches
//! the network and fails clearly when the file is not cached).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::Device;

use crate::chat::ChatTemplate;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Path(PathBuf),
    Hub {
        repo: String,
        revision: String,
        file: String,
    },
}

impl ModelSource {
    /// Parse `hf:org/repo[@rev]/file` or a filesystem path.
    pub fn parse(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("hf:") else {
            return Ok(ModelSource::Path(PathBuf::from(s)));
        };
        let bad =
            || EngineError::Source(format!("`{s}`: expected hf:org/repo[@revision]/file.gguf"));
        let mut parts = rest.splitn(3, '/');
        let (org, repo_rev, file) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, rev)) => (r, rev.to_string()),
            None => (repo_rev, "main".to_string()),
        };
        if org.is_empty() || repo.is_empty() || file.is_empty() {
            return Err(bad());
        }
        Ok(ModelSource::Hub {
            repo: format!("{org}/{repo}"),
            revision,
            file: file.to_string(),
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
                file,
            } => resolve_hub(repo, revision, file),
        }
    }
}

fn resolve_hub(repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let hf_repo = hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    };
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

/// Everything needed to start an engine for one model.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

impl LoadedModel {
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        let started = Instant::now();
        let mut file = std::fs::File::open(path)
            .map_err(|e| EngineError::Load(format!("opening {}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            EngineError::Load(format!("{}: not a readable GGUF file: {e}", path.display()))
        })?;
        let tokenizer = Tokenizer::from_gguf(&content)?;
        let model = Model::load(&content, &mut file, device)?;
        let template_src = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
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
                file: "m.gguf".into()
            }
        );
        assert!(matches!(
            ModelSource::parse("models/x.gguf").unwrap(),
            ModelSource::Path(_)
        ));
        assert!(ModelSource::parse("hf:org").is_err());
    }

    #[test]
    fn offline_missing_hub_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("switchyard-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("HF_HUB_CACHE", &dir);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let err = ModelSource::parse("hf:org/none/m.gguf")
            .unwrap()
            .resolve(Path::new("."))
            .unwrap_err();
        assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
        // A cache laid out like the real one resolves offline.
        let snap = dir.join("models--org--some/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("m.gguf"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("models--org--some/refs")).unwrap();
        std::fs::write(dir.join("models--org--some/refs/main"), "abc123").unwrap();
        let p = ModelSource::parse("hf:org/some/m.gguf")
            .unwrap()
            .resolve(Path::new("."))
            .unwrap();
        assert!(p.ends_with("snapshots/abc123/m.gguf"), "{}", p.display());
    }
}
