//! switchyard's serving engine.
//!
//! A model is loaded from GGUF or safetensors ([`weights`]) into
//! our own batched forward pass ([`model`]) over a paged KV cache ([`kv`]:
//! host and device); a continuous-batching scheduler over a prefix-caching
//! block pool ([`sched`]) plans every step, and the [`engine`] loop runs
//! steps, samples, detokenizes and applies stop strings and
//! grammars ([`text`]). Callers use [`Engine::submit`] and read a
//! [`RequestStream`] of [`Event`]s.

// Every module is crate-private: the API is what this file re-exports, so
// rustc's dead-code lint sees the whole crate.
pub(crate) mod device;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod family;
pub(crate) mod host_memory;
pub(crate) mod kv;
pub(crate) mod model;
pub(crate) mod parallel;
pub(crate) mod sched;
pub(crate) mod text;
pub(crate) mod weights;

pub use candle_core::Device;
pub use device::{check_fits, kv_budgets, memory_info, parse_device, weights_bytes};
pub use engine::sampling::{SamplingParams, TokenLogprob};
pub use engine::{Engine, EngineConfig, EngineStats, Event, FinishReason, RequestStream, Usage};
pub use error::{EngineError, Result};
pub use kv::device::{self_check as kernel_self_check, KernelCheck};
pub use model::{Arch, KvBackend, ModelConfig};
pub use text::chat::{ChatFunctionCall, ChatMessage, ChatTemplate, ChatToolCall};
pub use text::constraint::{Grammar, GrammarSpec};
pub use text::tokenizer::Tokenizer;
pub use text::tool_calls::{
    calls_or_json_grammar, forced_call_grammar, parse as parse_tool_calls, ParsedOutput, ToolCall,
    ToolCallFormat,
};
pub use weights::loader::{LoadedModel, ModelSource};

/// Internals for this crate's integration tests and benches and for the
/// test kit (`crates/testkit`); not part of the API.
#[doc(hidden)]
pub mod internals {
    pub use crate::engine::sampling::Sampler;
    pub use crate::kv::host::SeqView;
    pub use crate::model::cpu_matmul::QuantMatrix;
    pub use crate::model::KvStore;
    pub use crate::text::tokenizer::gpt2_byte_to_unicode;
    pub use crate::weights::hf_tensor_name;
    pub use candle_core::quantized::gguf_file;
}
