//! The engine: one model, one KV pool, one step loop on a dedicated thread.
//!
//! Shaped like vLLM v1: this module is the handle (`LLMEngine`'s client
//! side) — callers submit requests through a channel and get a per-request
//! event stream back; [`core`] is the loop (`EngineCore`), [`batch`] builds
//! each step's model input and [`output`] turns sampled tokens into text and
//! finishes. Dropping a [`RequestStream`] cancels the request, and its KV
//! blocks are freed before the next step.

pub(crate) mod batch;
pub(crate) mod core;
pub(crate) mod output;
pub(crate) mod sampling;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::engine::core::EngineCore;
use crate::engine::sampling::{SamplingParams, TokenLogprob};
use crate::error::{EngineError, Result};
use crate::model::{KvBackend, ModelConfig};
use crate::sched::scheduler::SchedulerConfig;
use crate::text::chat::{ChatMessage, ChatTemplate};
use crate::text::constraint::{Constraints, Grammar, GrammarSpec};
use crate::text::tokenizer::Tokenizer;
use crate::text::tool_calls::ToolCallFormat;
use crate::weights::loader::LoadedModel;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub block_size: usize,
    /// Memory for the KV pool; the block count follows from the model's shape.
    pub kv_cache_bytes: usize,
    /// Overrides `kv_cache_bytes` when set (tests use small pools).
    pub num_blocks: Option<usize>,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub chunked_prefill: bool,
    pub prefix_caching: bool,
    /// Cap the context window below the model's own (vLLM's `max_model_len`).
    pub max_model_len: Option<usize>,
    /// Where the KV pool lives and how attention reads it.
    pub kv_backend: KvBackend,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_cache_bytes: 512 << 20,
            num_blocks: None,
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            chunked_prefill: true,
            prefix_caching: true,
            max_model_len: None,
            kv_backend: KvBackend::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token, stop token or stop string.
    Stop,
    /// `max_tokens` or the context window reached.
    Length,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Microseconds from submission to the request's first scheduled step.
    pub queued_us: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New output for one choice: text safe to show (may be empty while a
    /// stop string or a UTF-8 sequence is pending), the token ids behind it.
    Delta {
        choice: usize,
        text: String,
        tokens: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
    },
    /// A choice ended; exactly one per choice.
    Finished {
        choice: usize,
        reason: FinishReason,
        usage: Usage,
    },
    /// The request failed; no further events follow.
    Error { message: String },
}

/// Live numbers for load-aware routing and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub block_size: usize,
    pub preemptions: u64,
    pub steps: u64,
    /// Prompt tokens computed (prefix-cache hits excluded).
    pub prompt_tokens_computed: u64,
    pub prefix_cache_hit_tokens: u64,
    pub generated_tokens: u64,
    /// Moving averages over recent steps, tokens per second.
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// The latest grammar-mask computations (structured outputs), in
    /// microseconds, at most [`MASK_SAMPLES`].
    pub grammar_mask_us: Vec<f32>,
}

/// How many recent grammar-mask timings the stats keep.
pub const MASK_SAMPLES: usize = 1024;

pub(crate) enum Command {
    Submit {
        request: u64,
        prompt: Vec<u32>,
        params: Box<SamplingParams>,
        events: UnboundedSender<Event>,
    },
    Cancel {
        request: u64,
    },
    /// Stop the loop and hand the model back (its KV pool is dropped).
    Shutdown {
        reply: Sender<crate::model::Model>,
    },
}

/// A submitted request's events. Dropping it cancels the request.
pub struct RequestStream {
    id: u64,
    events: UnboundedReceiver<Event>,
    commands: Sender<Command>,
}

impl RequestStream {
    pub fn id(&self) -> u64 {
        self.id
    }
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
    /// For synchronous callers (CLI, tests); not from inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { request: self.id });
    }
}

/// Handle to a running engine; cheap to share behind an `Arc`.
pub struct Engine {
    id: String,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    config: ModelConfig,
    commands: Mutex<Sender<Command>>,
    stats: Arc<Mutex<EngineStats>>,
    next_request: AtomicU64,
    constraints: Constraints,
}

impl Engine {
    /// Start the step loop for a loaded model.
    pub fn start(id: &str, loaded: LoadedModel, cfg: EngineConfig) -> Result<Engine> {
        let LoadedModel {
            mut model,
            tokenizer,
            template,
        } = loaded;
        if let Some(cap) = cfg.max_model_len {
            if cap == 0 {
                return Err(EngineError::Load("max_model_len must be at least 1".into()));
            }
            model.cap_context_length(cap);
        }
        let mc = model.config().clone();
        let layout_for = |num_blocks| model.kv_layout(num_blocks, cfg.block_size);
        let per_block = layout_for(0).bytes_per_token() * cfg.block_size;
        let num_blocks = cfg
            .num_blocks
            .unwrap_or(cfg.kv_cache_bytes / per_block.max(1));
        if num_blocks == 0 {
            return Err(EngineError::Load(format!(
                "kv_cache_bytes {} is less than one block ({per_block} bytes)",
                cfg.kv_cache_bytes
            )));
        }
        let sched_cfg = SchedulerConfig {
            block_size: cfg.block_size,
            num_blocks,
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            chunked_prefill: cfg.chunked_prefill,
            prefix_caching: cfg.prefix_caching,
        };
        tracing::info!(
            model = id,
            num_blocks,
            block_size = cfg.block_size,
            "KV pool: {} MiB",
            (num_blocks * per_block) >> 20
        );
        let stats = Arc::new(Mutex::new(EngineStats {
            kv_blocks_total: num_blocks,
            kv_blocks_free: num_blocks,
            block_size: cfg.block_size,
            ..Default::default()
        }));
        let (tx, rx) = mpsc::channel();
        let cache = model.new_kv_store(num_blocks, cfg.block_size, cfg.kv_backend)?;
        let core = EngineCore::new(model, tokenizer.clone(), cache, sched_cfg, stats.clone());
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || core.run(rx))?;
        Ok(Engine {
            id: id.to_string(),
            constraints: Constraints::new(tokenizer.clone()),
            tokenizer,
            template,
            config: mc,
            commands: Mutex::new(tx),
            stats,
            next_request: AtomicU64::new(1),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stop the step loop and take the model back, its KV pool freed
    /// (requests still in flight end with an error event). Starting it again
    /// with [`Engine::start`] skips reading and re-laying out the weights:
    /// this is "sleep" and "wake" for a serving pool. The handle stays, but
    /// later submissions fail with [`EngineError::Stopped`].
    pub fn shutdown(&self) -> Result<LoadedModel> {
        let (reply, model) = mpsc::channel();
        self.commands
            .lock()
            .map_err(|_| EngineError::Stopped)?
            .send(Command::Shutdown { reply })
            .map_err(|_| EngineError::Stopped)?;
        let model = model.recv().map_err(|_| EngineError::Stopped)?;
        Ok(LoadedModel {
            model,
            tokenizer: self.tokenizer.clone(),
            template: self.template.clone(),
        })
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn model_config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn context_length(&self) -> usize {
        self.config.context_length
    }
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Compile a structured-output grammar for this model's vocabulary (for
    /// [`SamplingParams::grammar`]); an invalid or unsupported grammar is an
    /// `InvalidRequest` saying why. Can take milliseconds (the first call
    /// builds the token trie): call it off latency-critical threads.
    pub fn compile_grammar(&self, spec: &GrammarSpec) -> Result<Grammar> {
        self.constraints.compile(spec)
    }

    /// Render a chat with the model's template (generation prompt added),
    /// optionally offering `tools` (the template's own tool support, or the
    /// fallback tool prompt) and with extra template variables
    /// (`chat_template_kwargs`). Earlier tool calls and results reach a
    /// template without tool support as text.
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String> {
        let tools = tools.filter(|t| !t.is_empty());
        let has_tool_turns = messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || m.role == "tool");
        if self.template.supports_tools() || (tools.is_none() && !has_tool_turns) {
            return self.template.render_with(messages, tools, kwargs, true);
        }
        let rewritten =
            crate::text::tool_calls::with_fallback_tools(messages, tools.unwrap_or_default());
        self.template.render_with(&rewritten, None, kwargs, true)
    }

    /// How this model writes tool calls, as rendered by
    /// [`Engine::render_chat_with`]: its family's format when its
    /// template speaks tools, else the fallback's (Hermes).
    pub fn tool_call_format(&self) -> ToolCallFormat {
        if self.template.supports_tools() {
            self.template
                .tool_call_format()
                .or(ToolCallFormat::for_arch(self.config.arch))
                .unwrap_or(ToolCallFormat::Hermes)
        } else {
            ToolCallFormat::Hermes
        }
    }

    /// Render a chat with the model's template (generation prompt added);
    /// tokenize the text with `tokenizer().encode(text, true)`.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_chat_with(messages, None, None)
    }

    /// Render a chat with the model's template and tokenize it.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.render_chat(messages)?, true)
    }

    /// Queue a request; its events arrive on the returned stream.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<RequestStream> {
        params.validate().map_err(EngineError::InvalidRequest)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if let Some(bad) = prompt
            .iter()
            .find(|&&t| t as usize >= self.tokenizer.vocab_size())
        {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.tokenizer.vocab_size()
            )));
        }
        let ctx = self.context_length();
        if prompt.len() + params.max_tokens > ctx {
            return Err(EngineError::InvalidRequest(format!(
                "this model's maximum context length is {ctx} tokens; the prompt has {} tokens and max_tokens is {} ({} in all)",
                prompt.len(),
                params.max_tokens,
                prompt.len() + params.max_tokens
            )));
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        let commands = self
            .commands
            .lock()
            .map_err(|_| EngineError::Stopped)?
            .clone();
        commands
            .send(Command::Submit {
                request,
                prompt,
                params: Box::new(params),
                events: tx,
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(RequestStream {
            id: request,
            events: rx,
            commands,
        })
    }
}
