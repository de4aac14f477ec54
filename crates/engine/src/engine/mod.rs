//! The engine: one model, one KV pool, one step loop on a dedicated thread.
//!
//! Shaped like vLLM v1's `EngineCore`: callers submit requests through a
//! channel and get a per-request event stream back; the loop drains commands,
//! asks the [`Scheduler`] for a step, runs the [`Model`] on it, samples, and
//! streams text deltas out. Dropping a [`RequestStream`] cancels the request,
//! and its KV blocks are freed before the next step.

pub(crate) mod sampling;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::engine::sampling::{Sampler, SamplingParams, TokenLogprob};
use crate::error::{EngineError, Result};
use crate::kv::host::SeqView;
use crate::model::KvBackend;
use crate::model::KvStore;
use crate::model::{Model, ModelConfig};
use crate::sched::scheduler::{Scheduler, SchedulerConfig, SeqId};
use crate::text::chat::{ChatMessage, ChatTemplate};
use crate::text::constraint::{Constraints, Grammar, GrammarSpec, SeqConstraint};
use crate::text::stop::StopMatcher;
use crate::text::tokenizer::{IncrementalDecoder, Tokenizer};
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

enum Command {
    Submit {
        request: u64,
        prompt: Vec<u32>,
        params: Box<SamplingParams>,
        events: UnboundedSender<Event>,
    },
    Cancel {
        request: u64,
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
        let mut core = EngineCore {
            model,
            tokenizer: tokenizer.clone(),
            cache,
            sched_cfg: sched_cfg.clone(),
            scheduler: Scheduler::new(sched_cfg),
            seqs: HashMap::new(),
            requests: HashMap::new(),
            next_seq: 0,
            stats: stats.clone(),
            mask_us: std::collections::VecDeque::new(),
        };
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

/// Per-sequence (per-choice) generation state.
struct SeqState {
    request: u64,
    choice: usize,
    params: Arc<SamplingParams>,
    sampler: Sampler,
    prompt_len: usize,
    generated: usize,
    /// Children still to fork at the first sample (n > 1).
    forks_pending: usize,
    cached_tokens: usize,
    scheduled_once: bool,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// The grammar's state, for structured outputs.
    constraint: Option<SeqConstraint>,
    events: UnboundedSender<Event>,
}

struct EngineCore {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    cache: KvStore,
    sched_cfg: SchedulerConfig,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, SeqState>,
    requests: HashMap<u64, Vec<SeqId>>,
    next_seq: SeqId,
    stats: Arc<Mutex<EngineStats>>,
    /// Recent grammar-mask timings (µs), published with the stats.
    mask_us: std::collections::VecDeque<f32>,
}

impl EngineCore {
    fn run(&mut self, rx: Receiver<Command>) {
        loop {
            if !self.scheduler.has_work() {
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return, // every handle is gone
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            if !self.scheduler.has_work() {
                self.publish_stats();
                continue;
            }
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| self.step()));
            match step {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail_all(&format!("engine step failed: {e}")),
                Err(_) => self.fail_all("engine step panicked; the request was dropped"),
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                request,
                prompt,
                params,
                events,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let prompt_len = prompt.len();
                if let Err(e) = self.scheduler.add_salted(
                    seq,
                    prompt,
                    prompt_len + params.max_tokens,
                    params.cache_salt.as_deref(),
                ) {
                    let _ = events.send(Event::Error {
                        message: e.to_string(),
                    });
                    return;
                }
                let params = Arc::new(*params);
                self.seqs.insert(
                    seq,
                    SeqState {
                        request,
                        choice: 0,
                        sampler: Sampler::new(params.seed),
                        prompt_len,
                        generated: 0,
                        forks_pending: params.n - 1,
                        cached_tokens: 0,
                        scheduled_once: false,
                        decoder: IncrementalDecoder::default(),
                        stop: StopMatcher::new(params.stop.clone()),
                        constraint: params.grammar.as_ref().map(Grammar::start),
                        params,
                        events,
                    },
                );
                self.requests.insert(request, vec![seq]);
            }
            Command::Cancel { request } => {
                for seq in self.requests.remove(&request).unwrap_or_default() {
                    self.scheduler.remove(seq);
                    self.seqs.remove(&seq);
                }
            }
        }
    }

    fn step(&mut self) -> Result<()> {
        let started = Instant::now();
        let out = self.scheduler.schedule();
        if out.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            return Ok(());
        }
        let mut tokens = Vec::with_capacity(out.num_tokens());
        let mut views = Vec::with_capacity(out.seqs.len());
        let mut logits_rows = Vec::new();
        let (mut prefill_tokens, mut decode_tokens) = (0usize, 0usize);
        for s in &out.seqs {
            let all = self.scheduler.tokens(s.id).unwrap_or_default();
            let begin = tokens.len();
            tokens.extend_from_slice(&all[s.start..s.start + s.len]);
            views.push(SeqView {
                token_range: begin..tokens.len(),
                start_pos: s.start,
                block_table: self.scheduler.block_table(s.id).unwrap_or_default(),
            });
            if s.sample {
                logits_rows.push(tokens.len() - 1);
            }
            let is_decode = s.len == 1 && self.seqs.get(&s.id).is_some_and(|st| st.generated > 0);
            if is_decode {
                decode_tokens += 1;
            } else {
                prefill_tokens += s.len;
            }
        }
        self.cache.copy_blocks(&out.block_copies)?;
        let logits = self
            .model
            .forward(&tokens, &views, &logits_rows, &mut self.cache)?;
        drop(views);
        self.scheduler.commit(&out);
        for id in &out.preempted {
            tracing::debug!(seq = id, "preempted (recompute)");
        }
        let mut row = 0;
        for s in &out.seqs {
            if let Some(st) = self.seqs.get_mut(&s.id) {
                if !st.scheduled_once {
                    // A fresh sequence starts after its prefix-cache hits.
                    st.scheduled_once = true;
                    st.cached_tokens = s.start;
                }
            }
            if s.sample {
                self.sample_and_emit(s.id, &logits[row]);
                row += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        if let Ok(mut stats) = self.stats.lock() {
            stats.steps += 1;
            stats.prompt_tokens_computed += prefill_tokens as u64;
            stats.prefix_cache_hit_tokens += out.prefix_hit_tokens as u64;
            stats.generated_tokens += logits_rows.len() as u64;
            let ema = |old: f64, new: f64| {
                if old == 0.0 {
                    new
                } else {
                    0.8 * old + 0.2 * new
                }
            };
            if prefill_tokens > 0 {
                stats.prefill_tokens_per_s =
                    ema(stats.prefill_tokens_per_s, prefill_tokens as f64 / elapsed);
            } else {
                stats.decode_tokens_per_s =
                    ema(stats.decode_tokens_per_s, decode_tokens as f64 / elapsed);
            }
        }
        self.publish_stats();
        Ok(())
    }

    fn sample_and_emit(&mut self, id: SeqId, logits: &[f32]) {
        // Fork n>1 children at the first sample: they share the prompt's blocks.
        let forks = self.seqs.get(&id).map_or(0, |st| st.forks_pending);
        if forks > 0 {
            let parent = self.seqs.get_mut(&id).expect("checked");
            parent.forks_pending = 0;
            let (request, params, prompt_len, events, cached, constraint) = (
                parent.request,
                parent.params.clone(),
                parent.prompt_len,
                parent.events.clone(),
                parent.cached_tokens,
                parent.constraint.as_ref().map(SeqConstraint::fork),
            );
            for choice in 1..=forks {
                let child = self.next_seq;
                self.next_seq += 1;
                if self.scheduler.fork(id, child).is_err() {
                    continue;
                }
                self.seqs.insert(
                    child,
                    SeqState {
                        request,
                        choice,
                        sampler: Sampler::new(params.seed.map(|s| s.wrapping_add(choice as u64))),
                        prompt_len,
                        generated: 0,
                        forks_pending: 0,
                        cached_tokens: cached,
                        scheduled_once: true,
                        decoder: IncrementalDecoder::default(),
                        stop: StopMatcher::new(params.stop.clone()),
                        constraint: constraint.as_ref().map(SeqConstraint::fork),
                        params: params.clone(),
                        events: events.clone(),
                    },
                );
                self.requests.entry(request).or_default().push(child);
                self.emit_token(child, logits);
            }
        }
        self.emit_token(id, logits);
    }

    fn emit_token(&mut self, id: SeqId, logits: &[f32]) {
        let Some(context) = self.scheduler.tokens(id) else {
            return;
        };
        let Some(st) = self.seqs.get_mut(&id) else {
            return;
        };
        let mask_started = Instant::now();
        let mask = st.constraint.as_mut().map(SeqConstraint::mask);
        if mask.is_some() {
            if self.mask_us.len() == MASK_SAMPLES {
                self.mask_us.pop_front();
            }
            self.mask_us
                .push_back(mask_started.elapsed().as_secs_f32() * 1e6);
        }
        let mask = match mask {
            None => None,
            Some(Ok(m)) if !m.is_zero() => Some(m),
            Some(failed) => {
                let why = failed.err().unwrap_or_else(|| "no token is allowed".into());
                return self.fail_seq(id, &format!("structured output: {why}"));
            }
        };
        let sampled = st
            .sampler
            .sample(logits, &st.params, context, st.prompt_len, mask.as_ref());
        let token = sampled.token;
        self.scheduler.append_token(id, token);
        st.generated += 1;
        let p = &st.params;
        let is_eog = self.tokenizer.eog_tokens().contains(&token);
        let is_stop_token = (!p.ignore_eos && is_eog)
            || p.stop_token_ids.contains(&token)
            || (mask.is_some() && is_eog);
        // The grammar advances past the token; complete, it ends the output.
        let grammar_done = match st.constraint.as_mut().filter(|_| !is_stop_token) {
            Some(c) => match c.advance(token) {
                Ok(()) => c.is_done(),
                Err(why) => return self.fail_seq(id, &format!("structured output: {why}")),
            },
            None => false,
        };
        let mut text = String::new();
        let mut finish = None;
        let mut stopped_by_string = false;
        if is_stop_token {
            finish = Some(FinishReason::Stop);
        } else if !self.tokenizer.is_control(token) {
            let o = st
                .stop
                .push(&st.decoder.push(self.tokenizer.token_bytes(token)));
            text = o.emit;
            if o.stopped {
                finish = Some(FinishReason::Stop);
                stopped_by_string = true;
            }
        }
        if grammar_done && finish.is_none() {
            finish = Some(FinishReason::Stop);
        }
        let total = st.prompt_len + st.generated;
        if finish.is_none()
            && (st.generated >= p.max_tokens || total >= self.model.config().context_length)
        {
            finish = Some(FinishReason::Length);
        }
        if finish.is_some() && !stopped_by_string {
            // Release what was held back: a UTF-8 tail, a partial stop string.
            let o = st.stop.push(&st.decoder.finish());
            text.push_str(&o.emit);
            if !o.stopped {
                text.push_str(&st.stop.flush());
            }
        }
        let delta = Event::Delta {
            choice: st.choice,
            text,
            tokens: vec![token],
            logprobs: sampled.logprob.into_iter().collect(),
        };
        let alive = st.events.send(delta).is_ok();
        if let Some(reason) = finish {
            let usage = Usage {
                prompt_tokens: st.prompt_len,
                completion_tokens: st.generated,
                cached_tokens: st.cached_tokens,
            };
            let _ = st.events.send(Event::Finished {
                choice: st.choice,
                reason,
                usage,
            });
            let request = st.request;
            self.finish_seq(id, request);
        } else if !alive {
            let request = st.request;
            self.finish_seq(id, request);
        }
    }

    /// End one sequence with an error (its request's stream gets it).
    fn fail_seq(&mut self, id: SeqId, message: &str) {
        if let Some(st) = self.seqs.get(&id) {
            let _ = st.events.send(Event::Error {
                message: message.to_string(),
            });
            let request = st.request;
            self.finish_seq(id, request);
        }
    }

    fn finish_seq(&mut self, id: SeqId, request: u64) {
        self.scheduler.remove(id);
        self.seqs.remove(&id);
        if let Some(list) = self.requests.get_mut(&request) {
            list.retain(|&s| s != id);
            if list.is_empty() {
                self.requests.remove(&request);
            }
        }
    }

    /// Fail every request in flight and start over with an empty scheduler.
    fn fail_all(&mut self, message: &str) {
        tracing::error!("{message}");
        for st in self.seqs.values() {
            let _ = st.events.send(Event::Error {
                message: message.to_string(),
            });
        }
        self.seqs.clear();
        self.requests.clear();
        self.scheduler = Scheduler::new(self.sched_cfg.clone());
        self.publish_stats();
    }

    fn publish_stats(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.waiting = self.scheduler.num_waiting();
            s.running = self.scheduler.num_running();
            s.kv_blocks_free = self.scheduler.num_free_blocks();
            s.kv_blocks_total = self.scheduler.num_blocks();
            s.preemptions = self.scheduler.num_preemptions();
            if s.grammar_mask_us.len() != self.mask_us.len()
                || s.grammar_mask_us.last() != self.mask_us.back()
            {
                s.grammar_mask_us = self.mask_us.iter().copied().collect();
            }
        }
    }
}
