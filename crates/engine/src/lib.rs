//! switchyard's serving engine.
//!
//! A model is loaded from GGUF ([`loader`]) into our own batched forward pass
//! ([`model`]) over a paged KV cache ([`kv_cache`]); a continuous-batching
//! [`scheduler`] over a prefix-caching [`block_pool`] plans every step, and the
//! [`engine`] loop runs steps, samples ([`sampling`]), detokenizes
//! ([`tokenizer`]) and applies stop strings ([`stop`]). Callers use
//! [`Engine::submit`] and read a [`RequestStream`] of [`Event`]s.

pub mod block_pool;
pub mod chat;
mod constraint;
pub mod cpu_matmul;
pub mod device;
pub mod engine;
pub mod error;
mod gbnf;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod model_config;
pub mod moe;
pub mod paged_attention;
pub mod pre_tokenizer;
pub mod rope;
pub mod sampling;
pub mod scheduler;
pub mod stop;
pub mod testing;
pub mod tokenizer;
pub mod tool_calls;
pub mod weights;

pub use candle_core::quantized::gguf_file as candle_gguf;
pub use candle_core::Device;
pub use chat::{ChatFunctionCall, ChatMessage, ChatTemplate, ChatToolCall};
pub use constraint::{Grammar, GrammarSpec};
pub use engine::{Engine, EngineConfig, EngineStats, Event, FinishReason, RequestStream, Usage};
pub use error::{EngineError, Result};
pub use loader::{LoadedModel, ModelSource};
pub use model::{Arch, ModelConfig};
pub use sampling::{SamplingParams, TokenLogprob};
pub use tokenizer::Tokenizer;
pub use tool_calls::{ParsedOutput, ToolCall, ToolCallFormat};
