//! switchyard's serving engine.
//!
//! A model is loaded from GGUF ([`loader`]) into our own batched forward pass
//! ([`model`]) over a paged KV cache ([`kv_cache`]); a continuous-batching
//! [`scheduler`] over a prefix-caching [`block_pool`] plans every step, and the
//! [`engine`] loop runs steps, samples ([`sampling`]), detokenizes
//! ([`tokenizer`]) and applies stop strings ([`stop`]). Callers use
//! [`Engine::submit`] and read a [`RequestStream`] of [`Event`]s.

// Every module is crate-private: the API is what this file re-exports, so
// rustc's dead-code lint sees the whole crate.
pub(crate) mod block_pool;
pub(crate) mod chat;
pub(crate) mod constraint;
pub(crate) mod cpu_matmul;
pub(crate) mod device;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod gbnf;
pub(crate) mod kv_cache;
pub(crate) mod loader;
pub(crate) mod model;
pub(crate) mod model_config;
pub(crate) mod moe;
pub(crate) mod paged_attention;
pub(crate) mod pre_tokenizer;
pub(crate) mod rope;
pub(crate) mod sampling;
pub(crate) mod scheduler;
pub(crate) mod stop;
pub(crate) mod tokenizer;
pub(crate) mod tool_calls;
pub(crate) mod weights;

pub use candle_core::Device;
pub use chat::{ChatFunctionCall, ChatMessage, ChatTemplate, ChatToolCall};
pub use constraint::{Grammar, GrammarSpec};
pub use device::{check_fits, kv_budgets, memory_info, parse_device, weights_bytes};
pub use engine::{Engine, EngineConfig, EngineStats, Event, FinishReason, RequestStream, Usage};
pub use error::{EngineError, Result};
pub use loader::{LoadedModel, ModelSource};
pub use model::{Arch, KvBackend, ModelConfig};
pub use paged_attention::{self_check as kernel_self_check, KernelCheck};
pub use sampling::{SamplingParams, TokenLogprob};
pub use tokenizer::Tokenizer;
pub use tool_calls::{
    calls_or_json_grammar, forced_call_grammar, parse as parse_tool_calls, ParsedOutput, ToolCall,
    ToolCallFormat,
};

/// Internals for this crate's integration tests and benches and for the
/// test kit (`crates/testkit`); not part of the API.
#[doc(hidden)]
pub mod internals {
    pub use crate::kv_cache::SeqView;
    pub use crate::model::KvStore;
    pub use crate::tokenizer::gpt2_byte_to_unicode;
    pub use crate::weights::hf_tensor_name;
    pub use candle_core::quantized::gguf_file;
}
