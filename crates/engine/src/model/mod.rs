//! Our batched, paged forward pass for every supported family (Llama, Qwen2/3
//! and Qwen3-MoE, Gemma 3, DeepSeek-V2/V3).
//!
//! One call runs a whole scheduler step: the new tokens of every sequence in the
//! batch (prefill chunks and single decode tokens alike) go through the dense
//! layers as one `[tokens, hidden]` matrix; attention is the only per-sequence
//! part and runs over the paged KV cache ([`crate::kv::host`]). Logits are
//! computed only for the rows that will be sampled.
//!
//! Weights are [`Linear`] matrices (candle's quantized or dense matmuls, or
//! our CPU Q4_1 kernel); norms, RoPE and attention are ours. The layers
//! ([`crate::model::layers`]) load and run themselves; which optional parts a
//! layer has is data from the family table ([`crate::family`]) and the
//! [`ModelConfig`]: Gemma 3's Q/K norms, post-norms, GELU-tanh, scaled
//! embeddings and sliding/global layers; Qwen's biases and QK-norms; experts
//! ([`crate::model::moe`]); and DeepSeek's absorbed multi-head latent
//! attention ([`crate::model::mla`]).

pub(crate) mod activation;
pub(crate) mod config;
pub(crate) mod cpu_matmul;
pub(crate) mod layers;
pub(crate) mod mla;
pub(crate) mod moe;
pub(crate) mod rope;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::kv::device::{DeviceKvCache, StepGeometry};
use crate::kv::host::{AttentionParams, KvCache, KvLayout, SeqView, ValueStorage};
pub use crate::model::config::{Arch, ModelConfig};
use crate::model::layers::{rms_norm, Layer, Step, StepRope};
use crate::model::rope::{RopeScaling, RopeTable};
use crate::weights::{Embedding, Linear, WeightSource};

/// RoPE frequencies of one kind of layer and their cos/sin multiplier.
struct RopeFreqs {
    inv_freq: Vec<f32>,
    scale: f32,
}

/// Where a model's KV pool lives and how attention reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvBackend {
    /// Host buffers and the rayon attention on the CPU; device tensors and
    /// our kernels on a GPU.
    #[default]
    Auto,
    /// Device tensors on any device, attention by candle's ops: the portable
    /// reference path (on a GPU: no custom kernels).
    Reference,
}

/// A model's KV pool: host memory with the CPU attention of [`crate::kv::host`],
/// or device tensors with [`crate::kv::device`] (CUDA kernels or the
/// portable reference path).
pub enum KvStore {
    Host(KvCache),
    Device(DeviceKvCache),
}

impl KvStore {
    /// Copy whole blocks (copy-on-write for forked sequences).
    pub fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        match self {
            KvStore::Host(c) => c.copy_blocks(copies),
            KvStore::Device(c) => c.copy_blocks(copies)?,
        }
        Ok(())
    }
}

pub struct Model {
    config: ModelConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: Linear,
    rope_global: RopeFreqs,
    rope_local: Option<RopeFreqs>,
    device: Device,
}

impl Model {
    /// Load from a GGUF file (quantized weights stay quantized). With the
    /// file's bytes `mapped` (memory-mapped), tensors are copied straight
    /// from the mapping instead of read into a buffer first.
    pub fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        mapped: Option<&[u8]>,
        device: &Device,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        let total = content
            .tensor_infos
            .values()
            .map(crate::weights::gguf_tensor_bytes)
            .sum();
        Self::from_weights(
            config,
            &mut crate::weights::GgufWeights {
                content,
                reader,
                mapped,
                device,
                progress: crate::weights::LoadProgress::new(total),
            },
        )
    }

    /// Build the model from any weight source, by llama.cpp's tensor names.
    pub fn from_weights(config: ModelConfig, w: &mut dyn WeightSource) -> Result<Self> {
        let device = w.device().clone();
        let embed = w.embedding("token_embd.weight")?;
        let output_norm = w.tensor("output_norm.weight")?;
        let lm_head = if w.has("output.weight") {
            w.matmul("output.weight")?
        } else {
            embed.tied_lm_head(w, "token_embd.weight")?
        };
        let (mut inv_freq, scale) = config
            .rope_scaling
            .inv_freq(config.rope_dim, config.rope_theta);
        // llama.cpp stores Llama 3's frequency divisors as a tensor.
        if w.has("rope_freqs.weight") {
            let factors = w
                .tensor("rope_freqs.weight")?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            if factors.len() != inv_freq.len() {
                return Err(EngineError::Load(format!(
                    "rope_freqs has {} entries, expected {}",
                    factors.len(),
                    inv_freq.len()
                )));
            }
            inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        let rope_global = RopeFreqs { inv_freq, scale };
        let rope_local = config.sliding_window.map(|_| {
            let (inv_freq, scale) =
                RopeScaling::None.inv_freq(config.rope_dim, config.rope_theta_local);
            RopeFreqs { inv_freq, scale }
        });
        let layers = (0..config.num_layers)
            .map(|i| Layer::load(&config, w, i))
            .collect::<Result<_>>()?;
        Ok(Model {
            config,
            embed,
            layers,
            output_norm,
            lm_head,
            rope_global,
            rope_local,
            device,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The paged cache this model needs for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_layout(&self, num_blocks: usize, block_size: usize) -> KvLayout {
        let c = &self.config;
        KvLayout {
            num_layers: c.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            values: match &c.mla {
                Some(m) => ValueStorage::KeyPrefix(m.kv_lora_rank),
                None => ValueStorage::Separate,
            },
        }
    }

    /// A KV pool for this model on its device: host memory on the CPU, device
    /// tensors elsewhere; [`KvBackend::Reference`] puts it in tensors read by
    /// candle's ops on any device.
    pub fn new_kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
        backend: KvBackend,
    ) -> Result<KvStore> {
        Ok(match (&self.device, backend) {
            (Device::Cpu, KvBackend::Auto) => {
                KvStore::Host(KvCache::new(self.kv_layout(num_blocks, block_size)))
            }
            (Device::Cpu, KvBackend::Reference) => {
                self.new_device_kv_store(num_blocks, block_size, DType::F32)?
            }
            // The pool keeps the activations' precision: bf16 for safetensors
            // weights on a GPU, f32 for GGUF (whose matmuls run in f32).
            (_, backend) => {
                match self.new_device_kv_store(num_blocks, block_size, self.embed.dtype())? {
                    KvStore::Device(c) if backend == KvBackend::Reference => {
                        KvStore::Device(c.with_reference_path())
                    }
                    store => store,
                }
            }
        })
    }

    /// A KV pool of device tensors in `dtype` (on the CPU: the reference path).
    pub fn new_device_kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<KvStore> {
        let layout = self.kv_layout(num_blocks, block_size);
        Ok(KvStore::Device(DeviceKvCache::new(
            layout,
            dtype,
            &self.device,
        )?))
    }

    /// Serve a shorter context window than the model supports.
    pub fn cap_context_length(&mut self, cap: usize) {
        self.config.context_length = self.config.context_length.min(cap.max(1));
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        rms_norm(x, w, self.config.rms_eps)
    }

    /// Run one step. `tokens` holds every sequence's new tokens back to back and
    /// `seqs` says whose they are; returns logits (`vocab` floats) for each batch
    /// row listed in `logits_rows`, in that order.
    pub fn forward(
        &self,
        tokens: &[u32],
        seqs: &[SeqView],
        logits_rows: &[usize],
        cache: &mut KvStore,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let mut positions = vec![0usize; tokens.len()];
        for s in seqs {
            for (i, t) in s.token_range.clone().enumerate() {
                positions[t] = s.start_pos + i;
            }
        }
        let geometry = match cache {
            KvStore::Device(d) => Some(StepGeometry::new(
                seqs,
                d.layout().block_size,
                &self.device,
            )?),
            KvStore::Host(_) => None,
        };
        let act_dtype = self.embed.dtype();
        let table = |f: &RopeFreqs| -> Result<StepRope> {
            let host = RopeTable::new(&positions, &f.inv_freq, f.scale);
            let device = match geometry {
                Some(_) => Some(host.tensors(&self.device, act_dtype)?),
                None => None,
            };
            Ok(StepRope { host, device })
        };
        let rope_global = table(&self.rope_global)?;
        let rope_local = self.rope_local.as_ref().map(table).transpose()?;

        let mut x = self.embed.lookup(tokens, &self.device)?;
        if c.arch.family().scaled_embeddings {
            x = (x * (c.hidden_size as f64).sqrt())?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("layer", li).entered();
            let sliding = c.is_sliding(li);
            let rope = match (&rope_local, sliding) {
                (Some(local), true) => local,
                _ => &rope_global,
            };
            let step = Step {
                layer: li,
                seqs,
                geometry: geometry.as_ref(),
                rope,
                params: AttentionParams {
                    num_heads: c.num_heads,
                    scale: c.attn_scale,
                    window: if sliding { c.sliding_window } else { None },
                    softcap: c.attn_softcap,
                },
            };
            x = layer.forward(x, c, &step, cache)?;
        }
        if logits_rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<u32> = logits_rows.iter().map(|&r| r as u32).collect();
        let x = x.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let x = self.rms_norm(&x, &self.output_norm)?;
        let mut logits = self.lm_head.forward(&x)?;
        if let Some(cap) = c.final_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}
