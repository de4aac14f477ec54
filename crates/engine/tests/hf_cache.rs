//! `hf:` sources resolve from a Hugging Face cache laid out like the real one,
//! offline, and a missing file is a clear error naming `HF_HUB_OFFLINE`.

use std::path::Path;

use switchyard_engine::{Device, LoadedModel, ModelSource};

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
    // A whole safetensors folder in the cache resolves offline and loads.
    let snap = dir.join("models--org--tiny/snapshots/def456");
    switchyard_testkit::write_random_checkpoint(&snap, "qwen3", true).unwrap();
    std::fs::create_dir_all(dir.join("models--org--tiny/refs")).unwrap();
    std::fs::write(dir.join("models--org--tiny/refs/main"), "def456").unwrap();
    let p = ModelSource::parse("hf:org/tiny")
        .unwrap()
        .resolve(Path::new("."))
        .unwrap();
    assert!(p.ends_with("snapshots/def456"), "{}", p.display());
    assert!(LoadedModel::load(&p, &Device::Cpu).is_ok());
    let err = ModelSource::parse("hf:org/absent")
        .unwrap()
        .resolve(Path::new("."))
        .unwrap_err();
    assert!(
        err.to_string().contains("config.json") && err.to_string().contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}
