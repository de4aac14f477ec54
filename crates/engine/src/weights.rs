//! Where a model's tensors come from: a GGUF file (quantized, llama.cpp's
//! names) or a Hugging Face safetensors folder (bf16/f16/f32, its own names,
//! mapped here to llama.cpp's). The forward pass only sees [`WeightSource`].

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

pub trait WeightSource {
    fn device(&self) -> &Device;
    fn has(&self, name: &str) -> bool;
    /// A dense f32 tensor (norms, embeddings, biases).
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// A weight matrix for `x @ Wᵀ`, kept quantized where the source is.
    fn matmul(&mut self, name: &str) -> Result<QMatMul>;
}

pub struct GgufWeights<'a, R> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
}

impl<R: std::io::Read + std::io::Seek> GgufWeights<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<candle_core::quantized::QTensor> {
        self.content
            .tensor(self.reader, name, self.device)
            .map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
    }
}

impl<R: std::io::Read + std::io::Seek> WeightSource for GgufWeights<'_, R> {
    fn device(&self) -> &Device {
        self.device
    }
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.device)?)
    }
    fn matmul(&mut self, name: &str) -> Result<QMatMul> {
        Ok(QMatMul::from_qtensor(self.qtensor(name)?)?)
    }
}

/// Safetensors shards, memory-mapped, with Hugging Face tensor names.
pub struct SafetensorsWeights {
    tensors: candle_core::safetensors::MmapedSafetensors,
    device: Device,
}

impl SafetensorsWeights {
    pub fn open(files: &[std::path::PathBuf], device: &Device) -> Result<Self> {
        // SAFETY: the files are mapped read-only and not modified while loaded.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files)? };
        Ok(SafetensorsWeights {
            tensors,
            device: device.clone(),
        })
    }

    /// llama.cpp name → Hugging Face name (Llama/Qwen layout).
    fn hf_name(name: &str) -> String {
        let Some(rest) = name.strip_prefix("blk.") else {
            return match name {
                "token_embd.weight" => "model.embed_tokens.weight".into(),
                "output_norm.weight" => "model.norm.weight".into(),
                "output.weight" => "lm_head.weight".into(),
                other => other.into(),
            };
        };
        let (layer, tail) = rest.split_once('.').unwrap_or((rest, ""));
        // Experts: expert.{e}.ffn_gate.weight -> mlp.experts.{e}.gate_proj.weight
        if let Some(rest) = tail.strip_prefix("expert.") {
            if let Some((e, part)) = rest.split_once('.') {
                let part = part
                    .replace("ffn_gate", "gate_proj")
                    .replace("ffn_up", "up_proj")
                    .replace("ffn_down", "down_proj");
                return format!("model.layers.{layer}.mlp.experts.{e}.{part}");
            }
        }
        let mapped = match tail.rsplit_once('.') {
            Some((base, kind)) => {
                let base = match base {
                    "attn_norm" => "input_layernorm",
                    "ffn_norm" => "post_attention_layernorm",
                    "attn_q" => "self_attn.q_proj",
                    "attn_k" => "self_attn.k_proj",
                    "attn_v" => "self_attn.v_proj",
                    "attn_output" => "self_attn.o_proj",
                    "attn_q_norm" => "self_attn.q_norm",
                    "attn_k_norm" => "self_attn.k_norm",
                    "ffn_gate_inp" => "mlp.gate",
                    "ffn_gate" => "mlp.gate_proj",
                    "ffn_up" => "mlp.up_proj",
                    "ffn_down" => "mlp.down_proj",
                    other => other,
                };
                format!("{base}.{kind}")
            }
            None => tail.to_string(),
        };
        format!("model.layers.{layer}.{mapped}")
    }
}

impl WeightSource for SafetensorsWeights {
    fn device(&self) -> &Device {
        &self.device
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.get(&Self::hf_name(name)).is_ok()
    }
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let hf = Self::hf_name(name);
        let t = self
            .tensors
            .load(&hf, &self.device)
            .map_err(|e| EngineError::Load(format!("tensor `{hf}`: {e}")))?;
        Ok(t.to_dtype(DType::F32)?)
    }
    fn matmul(&mut self, name: &str) -> Result<QMatMul> {
        Ok(QMatMul::Tensor(self.tensor(name)?))
    }
}
