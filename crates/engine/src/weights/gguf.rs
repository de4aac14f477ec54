//! One typed reader over a GGUF file's metadata, shared by the model config,
//! the tokenizer and the loader (llama.cpp's `llama_model_loader::get_key` in
//! spirit): a key is read through one accessor that accepts the integer widths
//! writers actually use, and a missing required key is an error naming it.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{EngineError, Result};

/// Opens a GGUF file and reads its header (metadata and tensor index); the
/// reader stays open for the tensor data. Buffered: the header is hundreds
/// of thousands of small reads (one per vocabulary string), which unbuffered
/// were a third of a Gemma 3 load.
pub(crate) fn open(path: &Path) -> Result<(BufReader<std::fs::File>, Content)> {
    let file = std::fs::File::open(path)
        .map_err(|e| EngineError::Load(format!("opening {}: {e}", path.display())))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let content = Content::read(&mut reader).map_err(|e| {
        EngineError::Load(format!("{}: not a readable GGUF file: {e}", path.display()))
    })?;
    Ok((reader, content))
}

/// Typed access to GGUF metadata; [`GgufMetadata::arch`] gives the view whose
/// keys are prefixed by the architecture (`llama.block_count`, ...).
#[derive(Clone, Copy)]
pub(crate) struct GgufMetadata<'a> {
    values: &'a HashMap<String, Value>,
    prefix: Option<&'a str>,
}

impl<'a> GgufMetadata<'a> {
    pub(crate) fn new(content: &'a Content) -> Self {
        GgufMetadata {
            values: &content.metadata,
            prefix: None,
        }
    }

    /// `general.architecture`, required.
    pub(crate) fn architecture(&self) -> Result<&'a str> {
        self.string("general.architecture")
            .ok_or_else(|| EngineError::Load("GGUF has no general.architecture".into()))
    }

    /// The view whose keys are read under `{arch}.`.
    pub(crate) fn arch(self, arch: &'a str) -> Self {
        GgufMetadata {
            prefix: Some(arch),
            ..self
        }
    }

    fn full_key(&self, key: &str) -> String {
        match self.prefix {
            Some(p) => format!("{p}.{key}"),
            None => key.to_string(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        match self.prefix {
            Some(_) => self.values.get(&self.full_key(key)),
            None => self.values.get(key),
        }
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::Load(format!("GGUF metadata `{}` missing", self.full_key(key)))
    }

    pub(crate) fn string(&self, key: &str) -> Option<&'a str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// An unsigned count stored as any integer width (writers differ).
    pub(crate) fn usize(&self, key: &str) -> Option<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) => u64::try_from(*x).ok()?,
            Value::I16(x) => u64::try_from(*x).ok()?,
            Value::I32(x) => u64::try_from(*x).ok()?,
            Value::I64(x) => u64::try_from(*x).ok()?,
            _ => return None,
        };
        usize::try_from(n).ok()
    }

    pub(crate) fn require_usize(&self, key: &str) -> Result<usize> {
        self.usize(key).ok_or_else(|| self.missing(key))
    }

    /// A token id (`u32`), stored as any integer width.
    pub(crate) fn token_id(&self, key: &str) -> Option<u32> {
        self.usize(key).and_then(|n| u32::try_from(n).ok())
    }

    pub(crate) fn f32(&self, key: &str) -> Option<f32> {
        match self.get(key)? {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    fn array(&self, key: &str) -> Option<&'a Vec<Value>> {
        self.get(key).and_then(|v| v.to_vec().ok())
    }

    pub(crate) fn array_len(&self, key: &str) -> Option<usize> {
        self.array(key).map(Vec::len)
    }

    /// A required array of strings.
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)
            .ok_or_else(|| self.missing(key))?
            .iter()
            .map(|v| {
                v.to_string().cloned().map_err(|e| {
                    EngineError::Load(format!("GGUF metadata `{}`: {e}", self.full_key(key)))
                })
            })
            .collect()
    }

    /// An optional numeric array as `i32` (entries of another type read as `default`).
    pub(crate) fn i32s(&self, key: &str, default: i32) -> Option<Vec<i32>> {
        self.array(key)
            .map(|a| a.iter().map(|x| x.to_i32().unwrap_or(default)).collect())
    }

    /// An optional numeric array as `f32` (entries of another type read as `default`).
    pub(crate) fn f32s(&self, key: &str, default: f32) -> Option<Vec<f32>> {
        self.array(key)
            .map(|a| a.iter().map(|x| x.to_f32().unwrap_or(default)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(pairs: Vec<(&str, Value)>) -> Content {
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn integers_of_any_width_and_arch_keys() {
        let c = content(vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U64(30)),
            ("llama.context_length", Value::I32(2048)),
            ("llama.bad", Value::I32(-1)),
            ("llama.rope.freq_base", Value::F64(1e4)),
        ]);
        let md = GgufMetadata::new(&c);
        let a = md.arch(md.architecture().unwrap());
        assert_eq!(a.usize("block_count"), Some(30));
        assert_eq!(a.usize("context_length"), Some(2048));
        assert_eq!(a.usize("bad"), None);
        assert_eq!(a.f32("rope.freq_base"), Some(1e4));
        let err = a.require_usize("embedding_length").unwrap_err().to_string();
        assert!(err.contains("`llama.embedding_length`"), "{err}");
        assert!(md.strings("tokenizer.ggml.tokens").is_err());
    }
}
