//! Where a model's tensors come from: a GGUF file (quantized, llama.cpp's
//! names) or a Hugging Face safetensors folder (bf16/f16/f32, its own names,
//! mapped here to llama.cpp's). The forward pass only sees [`WeightSource`]
//! and [`Linear`].
//!
//! On the CPU the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) are
//! laid out for [`crate::model::cpu_matmul`] at load, straight from the file
//! mapping; K-quants run on candle's kernels (faster here, see `ours`),
//! though quantized embedding tables of any of these types stay in our
//! layout; other types and other devices keep candle's `QMatMul`.

pub(crate) mod gguf;
pub(crate) mod loader;

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{EngineError, Result};
use crate::family::Arch;
use crate::model::cpu_matmul::QuantMatrix;

/// A weight matrix for `x @ Wᵀ`: candle's (dense, on a GPU, or a quant type
/// our CPU kernels lack) or ours (quantized, on the CPU).
#[derive(Clone)]
pub enum Linear {
    Candle(QMatMul),
    Cpu(Arc<QuantMatrix>),
}

impl Linear {
    /// `x` is `[..., cols]`; the result `[..., rows]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Cpu(w) => {
                let mut dims = x.dims().to_vec();
                let cols = dims.pop().unwrap_or(0);
                if cols != w.cols() {
                    candle_core::bail!(
                        "{:?} matmul: input width {cols}, weights {}",
                        w.dtype(),
                        w.cols()
                    );
                }
                let tokens = x.elem_count() / cols.max(1);
                let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                dims.push(w.rows());
                Tensor::from_vec(w.matmul(&xs, tokens), dims, x.device())
            }
        }
    }
}

impl From<QMatMul> for Linear {
    fn from(m: QMatMul) -> Self {
        Linear::Candle(m)
    }
}

/// Whether a GGUF matrix of this type and shape runs on our CPU kernels.
/// K-quant matrices do only where ours run 16-row tiles (AVX-512 VNNI, rows
/// in sixteens): there they measured 1.5–2.7× faster than candle's repacked
/// AVX-512 tiles; elsewhere candle's, which keep the super-block scales as
/// integers, beat our row-major kernels (`benches/README.md`). Ours still
/// hold K-quant embedding tables.
fn ours(dtype: GgmlDType, rows: usize, cols: usize, device: &Device) -> bool {
    use GgmlDType::*;
    let candle_is_faster = matches!(dtype, Q4K | Q5K | Q6K) && !QuantMatrix::tiled_here(rows);
    !candle_is_faster && ours_as_table(dtype, cols, device)
}

/// A quantized embedding table kept in our layout (any type our kernels
/// know, on the CPU).
fn ours_as_table(dtype: GgmlDType, cols: usize, device: &Device) -> bool {
    device.is_cpu() && QuantMatrix::supports(dtype) && cols.is_multiple_of(dtype.block_size())
}

/// A GGUF matrix as the forward pass will run it (see the module docs).
fn linear_from_bytes(
    dtype: GgmlDType,
    bytes: &[u8],
    shape: candle_core::Shape,
    device: &Device,
) -> Result<Linear> {
    let cols = shape.dims().last().copied().unwrap_or(0);
    let rows = shape.elem_count().checked_div(cols).unwrap_or(0);
    if ours(dtype, rows, cols, device) {
        return Ok(Linear::Cpu(Arc::new(QuantMatrix::from_gguf(
            dtype, bytes, rows, cols,
        )?)));
    }
    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, dtype)?;
    Ok(QMatMul::from_qtensor(QTensor::new(storage, shape)?)?.into())
}

pub trait WeightSource {
    fn device(&self) -> &Device;
    fn has(&self, name: &str) -> bool;
    /// A dense f32 tensor (norms, embeddings, biases).
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// A weight matrix for `x @ Wᵀ`, kept quantized where the source is.
    fn matmul(&mut self, name: &str) -> Result<Linear>;
    /// A token-embedding table: dense, or (GGUF on the CPU) kept quantized
    /// with rows dequantized as they are looked up.
    fn embedding(&mut self, name: &str) -> Result<Embedding> {
        Ok(Embedding::Dense(self.tensor(name)?))
    }
    /// The `count` matrices stacked in one `[count, rows, cols]` tensor
    /// (llama.cpp's `ffn_*_exps`), each kept quantized.
    fn stacked_matmuls(&mut self, name: &str, count: usize) -> Result<Vec<Linear>> {
        let _ = count;
        Err(EngineError::Load(format!(
            "`{name}`: stacked tensors only come from GGUF"
        )))
    }
}

/// A token-embedding table. Quantized (on the CPU, in a type our kernels
/// know), it stays quantized (Gemma 3's 262144 × 640 table is 178 MB as
/// Q8_0 and would be 671 MB as f32) and only the rows a step looks up are
/// dequantized, as llama.cpp's `get_rows`. A model with tied embeddings runs
/// its LM head on the same table (one copy in memory, one copy at load).
pub enum Embedding {
    Dense(Tensor),
    Quantized(Arc<QuantMatrix>),
}

impl Embedding {
    /// The LM head of a model whose output matrix is its embedding table:
    /// the same quantized table where our kernels run its type, else the
    /// matrix loaded again through `w` (dense, or a K-quant for candle).
    pub fn tied_lm_head(&self, w: &mut dyn WeightSource, name: &str) -> Result<Linear> {
        match self {
            Embedding::Quantized(table)
                if ours(table.dtype(), table.rows(), table.cols(), w.device()) =>
            {
                Ok(Linear::Cpu(table.clone()))
            }
            _ => w.matmul(name),
        }
    }

    /// The activations' dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Embedding::Dense(t) => t.dtype(),
            Embedding::Quantized(_) => DType::F32,
        }
    }

    /// `[ids.len(), cols]`: the rows of `ids`.
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&Tensor::new(ids, device)?, 0)?),
            Embedding::Quantized(table) => {
                let (rows, cols) = (table.rows(), table.cols());
                let mut out = Vec::with_capacity(ids.len() * cols);
                for &id in ids {
                    if id as usize >= rows {
                        return Err(EngineError::InvalidRequest(format!(
                            "token id {id} is outside the embedding table ({rows} rows)"
                        )));
                    }
                    table.dequantize_row(id as usize, &mut out);
                }
                Ok(Tensor::from_vec(out, (ids.len(), cols), device)?)
            }
        }
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
    /// The whole file, memory-mapped (tensors copied from it directly).
    pub mapped: Option<&'a [u8]>,
    pub device: &'a Device,
    pub progress: LoadProgress,
}

/// One GGUF tensor's blocks as the file holds them: borrowed from the
/// mapping, or read into a buffer where the file could not be mapped.
struct RawTensor<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    dtype: GgmlDType,
    shape: candle_core::Shape,
}

impl RawTensor<'_> {
    /// As a candle tensor on `device` (dense tensors, matrices for candle's
    /// kernels).
    fn qtensor(&self, device: &Device) -> Result<QTensor> {
        let storage =
            QStorage::from_data(std::borrow::Cow::Borrowed(&self.bytes), device, self.dtype)?;
        Ok(QTensor::new(storage, self.shape.clone())?)
    }
}

impl<'a, R: std::io::Read + std::io::Seek> GgufWeights<'a, R> {
    /// A tensor's blocks, straight from the mapping (no copy) or read from
    /// the file; every weight source method goes through here once.
    fn raw(&mut self, name: &str) -> Result<RawTensor<'a>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Load(format!("tensor `{name}` is missing")))?;
        let start = self.content.tensor_data_offset + info.offset;
        let len = gguf_tensor_bytes(info);
        self.progress.advance(len);
        let bytes = match self.mapped {
            Some(file) => usize::try_from(start)
                .ok()
                .zip(usize::try_from(start + len).ok())
                .and_then(|(a, b)| file.get(a..b))
                .map(std::borrow::Cow::Borrowed)
                .ok_or_else(|| {
                    EngineError::Load(format!("tensor `{name}` lies past the end of the file"))
                })?,
            None => {
                let mut buf = vec![0u8; len as usize];
                self.reader
                    .seek(std::io::SeekFrom::Start(start))
                    .and_then(|_| self.reader.read_exact(&mut buf))
                    .map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))?;
                std::borrow::Cow::Owned(buf)
            }
        };
        Ok(RawTensor {
            bytes,
            dtype: info.ggml_dtype,
            shape: info.shape.clone(),
        })
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
        Ok(self
            .raw(name)?
            .qtensor(self.device)?
            .dequantize(self.device)?)
    }
    fn matmul(&mut self, name: &str) -> Result<Linear> {
        // Laid out (or uploaded) straight from the mapping, without a first
        // copy into candle's buffer.
        let t = self.raw(name)?;
        linear_from_bytes(t.dtype, &t.bytes, t.shape, self.device)
    }
    fn embedding(&mut self, name: &str) -> Result<Embedding> {
        let t = self.raw(name)?;
        match *t.shape.dims() {
            [rows, cols] if ours_as_table(t.dtype, cols, self.device) => Ok(Embedding::Quantized(
                Arc::new(QuantMatrix::from_gguf(t.dtype, &t.bytes, rows, cols)?),
            )),
            _ => Ok(Embedding::Dense(
                t.qtensor(self.device)?.dequantize(self.device)?,
            )),
        }
    }
    fn stacked_matmuls(&mut self, name: &str, count: usize) -> Result<Vec<Linear>> {
        let t = self.raw(name)?;
        let &[n, rows, cols] = t.shape.dims() else {
            return Err(EngineError::Load(format!(
                "`{name}` has shape {:?}, expected [experts, rows, cols]",
                t.shape.dims()
            )));
        };
        if n != count {
            return Err(EngineError::Load(format!(
                "`{name}` stacks {n} matrices, expected {count}"
            )));
        }
        // Quantized blocks never straddle rows, so each matrix is a contiguous byte range.
        let per = t.bytes.len() / n;
        (0..n)
            .map(|e| {
                let bytes = &t.bytes[e * per..(e + 1) * per];
                linear_from_bytes(t.dtype, bytes, (rows, cols).into(), self.device)
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

    fn hf_name(&self, name: &str) -> String {
        hf_tensor_name(self.arch, name)
    }
}

/// llama.cpp tensor name → the Hugging Face checkpoint's name for `arch`
/// (the one map between the two, used by the loader and the test converter).
pub fn hf_tensor_name(arch: Arch, name: &str) -> String {
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
    let family = arch.family();
    let mapped = match tail.rsplit_once('.') {
        Some((base, kind)) => {
            let base = match base {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => family.hf_ffn_norm,
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
        if self.arch.family().hf_norm_plus_one && name.ends_with("norm.weight") {
            return Ok((t + 1.0)?);
        }
        Ok(t)
    }
    fn matmul(&mut self, name: &str) -> Result<Linear> {
        Ok(QMatMul::Tensor(self.tensor(name)?).into())
    }
}

/// Load progress for large models: a `tracing` line per quarter (the
/// library writes nothing to the terminal itself). Loads under 256 MiB stay
/// quiet.
pub struct LoadProgress {
    total: u64,
    done: u64,
    shown: u64,
}

impl LoadProgress {
    const QUIET_BELOW: u64 = 256 << 20;

    pub fn new(total: u64) -> Self {
        LoadProgress {
            total,
            done: 0,
            shown: 0,
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        if self.total < Self::QUIET_BELOW {
            return;
        }
        self.done = (self.done + bytes).min(self.total);
        let pct = self.done * 100 / self.total;
        if pct < self.shown + 25 && self.done < self.total {
            return;
        }
        self.shown = pct;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        tracing::info!("loading weights: {pct}% of {:.2} GiB", gib(self.total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_embedding_rows_match_the_dequantized_table() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let table = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&table, dtype).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let ours = QuantMatrix::from_gguf(dtype, &q.data().unwrap(), 8, 256).unwrap();
            let e = Embedding::Quantized(Arc::new(ours));
            let ids = [3u32, 0, 7, 3];
            let got = e.lookup(&ids, &Device::Cpu).unwrap();
            let want = Embedding::Dense(dense).lookup(&ids, &Device::Cpu).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{dtype:?}");
            assert!(e.lookup(&[8], &Device::Cpu).is_err());
        }
    }

    /// A file that could not be mapped is read at the same offsets: every
    /// tensor's blocks are the mapping's, byte for byte.
    #[test]
    fn reading_and_mapping_give_the_same_blocks() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let (mut file, content) = gguf::open(&path).expect("scripts/fetch-models");
        let mapped = unsafe { memmap2::Mmap::map(file.get_ref()) }.unwrap();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names.into_iter().step_by(17) {
            let mut from = |mapped| {
                let mut w = GgufWeights {
                    content: &content,
                    reader: &mut file,
                    mapped,
                    device: &Device::Cpu,
                    progress: LoadProgress::new(0),
                };
                w.raw(name).unwrap().bytes.into_owned()
            };
            let (read, map) = (from(None), from(Some(&mapped[..])));
            assert!(!read.is_empty() && read == map, "{name}");
        }
    }

    /// On the CPU the 32-block quant types run on our kernels; K-quants
    /// only where ours run tiles (else candle's are faster); unknown types
    /// and every type on other devices on candle's.
    #[test]
    fn cpu_matrices_of_known_types_are_ours() {
        for rows in [4, 16] {
            let w = Tensor::randn(0f32, 1.0, (rows, 256), &Device::Cpu).unwrap();
            let tiled = QuantMatrix::tiled_here(rows);
            assert!(!tiled || rows == 16);
            for (dtype, want_ours) in [
                (GgmlDType::Q4_1, true),
                (GgmlDType::Q5_0, true),
                (GgmlDType::Q8_0, true),
                (GgmlDType::Q4K, tiled),
                (GgmlDType::Q6K, tiled),
                (GgmlDType::Q3K, false),
            ] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let linear =
                    linear_from_bytes(dtype, &q.data().unwrap(), (rows, 256).into(), &Device::Cpu)
                        .unwrap();
                assert_eq!(matches!(linear, Linear::Cpu(_)), want_ours, "{dtype:?}");
            }
        }
    }
}
