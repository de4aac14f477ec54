//! Where a model's tensors come from: a GGUF file (quantized, llama.cpp's
//! names) or a Hugging Face safetensors folder (bf16/f16/f32, its own names,
//! mapped here to llama.cpp's). The forward pass only sees [`WeightSource`].

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model_config::Arch;

pub trait WeightSource {
    fn device(&self) -> &Device;
    fn has(&self, name: &str) -> bool;
    /// A dense f32 tensor (norms, embeddings, biases).
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// A weight matrix for `x @ Wᵀ`, kept quantized where the source is.
    fn matmul(&mut self, name: &str) -> Result<QMatMul>;
    /// The `count` matrices stacked in one `[count, rows, cols]` tensor
    /// (llama.cpp's `ffn_*_exps`), each kept quantized.
    fn stacked_matmuls(&mut self, name: &str, count: usize) -> Result<Vec<QMatMul>> {
        let _ = count;
        Err(EngineError::Load(format!(
            "`{name}`: stacked tensors only come from GGUF"
        )))
    }
}

/// Bytes a GGUF tensor occupies on disk.
pub fn gguf_tensor_bytes(info: &gguf_file::TensorInfo) -> u64 {
    let blocks = info.shape.elem_count() / info.ggml_dtype.block_size().max(1);
    (blocks * info.ggml_dtype.type_size()) as u64
}

pub struct GgufWeights<'a, R> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
    pub progress: LoadProgress,
}

impl<R: std::io::Read + std::io::Seek> GgufWeights<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<candle_core::quantized::QTensor> {
        if let Some(info) = self.content.tensor_infos.get(name) {
            self.progress.advance(gguf_tensor_bytes(info));
        }
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
    fn stacked_matmuls(&mut self, name: &str, count: usize) -> Result<Vec<QMatMul>> {
        use candle_core::quantized::{QStorage, QTensor};
        let stacked = self.qtensor(name)?;
        let (n, rows, cols) = stacked.shape().dims3()?;
        if n != count {
            return Err(EngineError::Load(format!(
                "`{name}` stacks {n} matrices, expected {count}"
            )));
        }
        let dtype = stacked.dtype();
        let data = stacked.data()?;
        // Quantized blocks never straddle rows, so each matrix is a contiguous byte range.
        let per = data.len() / n;
        (0..n)
            .map(|e| {
                let bytes = std::borrow::Cow::Borrowed(&data[e * per..(e + 1) * per]);
                let storage = QStorage::from_data(bytes, self.device, dtype)?;
                Ok(QMatMul::from_qtensor(QTensor::new(storage, (rows, cols))?)?)
            })
            .collect()
    }
}

/// Safetensors shards, memory-mapped, with Hugging Face tensor names. On the
/// CPU tensors become f32 (our CPU kernels' type); on a GPU they stay 16-bit
/// (bf16), which halves the bytes each decode step reads.
pub struct SafetensorsWeights {
    tensors: candle_core::safetensors::MmapedSafetensors,
    device: Device,
    dtype: DType,
    arch: Arch,
    progress: LoadProgress,
}

impl SafetensorsWeights {
    pub fn open(files: &[std::path::PathBuf], arch: Arch, device: &Device) -> Result<Self> {
        // SAFETY: the files are mapped read-only and not modified while loaded.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files)? };
        let total = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        Ok(SafetensorsWeights {
            tensors,
            device: device.clone(),
            dtype: if device.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            },
            arch,
            progress: LoadProgress::new(total),
        })
    }

    /// llama.cpp name → Hugging Face name for this family.
    fn hf_name(&self, name: &str) -> String {
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
        if tail == "exp_probs_b.bias" {
            return format!("model.layers.{layer}.mlp.gate.e_score_correction_bias");
        }
        let gemma = self.arch == Arch::Gemma3;
        let mapped = match tail.rsplit_once('.') {
            Some((base, kind)) => {
                let base = match base {
                    "attn_norm" => "input_layernorm",
                    "ffn_norm" if gemma => "pre_feedforward_layernorm",
                    "ffn_norm" => "post_attention_layernorm",
                    "post_attention_norm" => "post_attention_layernorm",
                    "post_ffw_norm" => "post_feedforward_layernorm",
                    "attn_q" => "self_attn.q_proj",
                    "attn_k" => "self_attn.k_proj",
                    "attn_v" => "self_attn.v_proj",
                    "attn_output" => "self_attn.o_proj",
                    "attn_q_norm" => "self_attn.q_norm",
                    "attn_k_norm" => "self_attn.k_norm",
                    "attn_q_a" => "self_attn.q_a_proj",
                    "attn_q_a_norm" => "self_attn.q_a_layernorm",
                    "attn_q_b" => "self_attn.q_b_proj",
                    "attn_kv_a_mqa" => "self_attn.kv_a_proj_with_mqa",
                    "attn_kv_a_norm" => "self_attn.kv_a_layernorm",
                    "attn_kv_b" => "self_attn.kv_b_proj",
                    "ffn_gate_inp" => "mlp.gate",
                    "ffn_gate" => "mlp.gate_proj",
                    "ffn_up" => "mlp.up_proj",
                    "ffn_down" => "mlp.down_proj",
                    "ffn_gate_shexp" => "mlp.shared_experts.gate_proj",
                    "ffn_up_shexp" => "mlp.shared_experts.up_proj",
                    "ffn_down_shexp" => "mlp.shared_experts.down_proj",
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
        self.tensors.get(&self.hf_name(name)).is_ok()
    }
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let hf = self.hf_name(name);
        let view = self
            .tensors
            .get(&hf)
            .map_err(|e| EngineError::Load(format!("tensor `{hf}`: {e}")))?;
        self.progress.advance(view.data().len() as u64);
        let t = self
            .tensors
            .load(&hf, &self.device)
            .map_err(|e| EngineError::Load(format!("tensor `{hf}`: {e}")))?
            .to_dtype(self.dtype)?;
        // Gemma's checkpoints store norm weights as w with x·(1 + w); llama.cpp
        // (and our forward) bake in the 1.
        if self.arch == Arch::Gemma3 && name.ends_with("norm.weight") {
            return Ok((t + 1.0)?);
        }
        Ok(t)
    }
    fn matmul(&mut self, name: &str) -> Result<QMatMul> {
        Ok(QMatMul::Tensor(self.tensor(name)?))
    }
}

/// Load progress for large models: a bar on a terminal, a log line per quarter
/// otherwise. Loads under 256 MiB stay quiet.
pub struct LoadProgress {
    total: u64,
    done: u64,
    shown: u64,
    tty: bool,
}

impl LoadProgress {
    const QUIET_BELOW: u64 = 256 << 20;

    pub fn new(total: u64) -> Self {
        use std::io::IsTerminal;
        LoadProgress {
            total,
            done: 0,
            shown: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        if self.total < Self::QUIET_BELOW {
            return;
        }
        self.done = (self.done + bytes).min(self.total);
        let pct = self.done * 100 / self.total;
        let step = if self.tty { 2 } else { 25 };
        if pct < self.shown + step && self.done < self.total {
            return;
        }
        self.shown = pct;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        if self.tty {
            let filled = (pct / 4) as usize;
            eprint!(
                "\rloading [{}{}] {pct:3}% {:.2}/{:.2} GiB",
                "#".repeat(filled),
                " ".repeat(25 - filled),
                gib(self.done),
                gib(self.total)
            );
            if self.done == self.total {
                eprintln!();
            }
        } else {
            tracing::info!("loading weights: {pct}% of {:.2} GiB", gib(self.total));
        }
    }
}
