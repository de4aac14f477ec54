//! One validated request, built once (TGI's `validation.rs` pattern).
//!
//! [`ValidatedRequest::chat`] and [`ValidatedRequest::completion`] turn a
//! parsed body into typed parts and refuse, with the field's name, anything
//! that is wrong whatever model serves it. What depends on a model (the
//! vocabulary range of `logit_bias`, the context window, the KV pool, the
//! queue) is [`admit`], which pinned and routed requests both call, so the
//! same bad body gets the same answer either way. Prompts are rendered and
//! tokenized, and grammars compiled, by [`prepare`] on the bounded blocking
//! pool, never on an async worker, after a length check that needs no
//! tokenizer.

use std::sync::Arc;
use std::time::Instant;

use switchyard_engine::{
    calls_or_json_grammar, forced_call_grammar, ChatMessage, Engine, Event, Grammar, GrammarSpec,
    RequestStream, SamplingParams, ToolCallFormat,
};
use switchyard_router::{Objective, RoutingOptions};

use crate::error::ApiError;
use crate::openai::{self, ChatRequest, CompletionRequest, Prompt, ToolChoice};
use crate::pool::{KeepAlive, Lease};
use crate::record::RouteCtx;
use crate::state::{now_secs, random_id, AppState};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Chat,
    Completion,
}

/// Which model serves: one named by the request, or the router's pick.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    Pinned(String),
    Auto(Option<Objective>),
}

/// What the model reads: chat messages (rendered by each model's template)
/// or completion prompts.
#[derive(Debug, Clone)]
pub enum Input {
    Chat(Arc<Vec<ChatMessage>>),
    Completion(Arc<Vec<Prompt>>),
}

/// A request whose every model-independent field has been checked.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub kind: Kind,
    pub model: ModelChoice,
    pub input: Input,
    /// Engine parameters; `max_tokens` is resolved by [`admit`].
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub routing: Option<RoutingOptions>,
    /// The request needs tool calls / structured output from its model.
    pub needs_tools: bool,
    pub needs_json: bool,
    /// The structured output asked for (`response_format`, vLLM's guided
    /// fields) and the field that asked; compiled for each model in [`prepare`].
    pub grammar: Option<(&'static str, GrammarSpec)>,
    /// The tools the model may call (rendered into its prompt; its output
    /// parsed for calls). None without tools or with `tool_choice: "none"`.
    pub tools: Option<Arc<Vec<serde_json::Value>>>,
    /// A grammar shapes the turn (`tool_choice` `required` or named, or a
    /// JSON answer format with tools): calls come in the Hermes format.
    pub tool_call_forced: bool,
    /// Extra chat-template variables (`chat_template_kwargs`).
    pub template_kwargs: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// How long the serving model stays loaded afterwards (`keep_alive`).
    pub keep_alive: Option<KeepAlive>,
    /// The body as sent, for a remote model.
    pub raw: Arc<serde_json::Value>,
    /// The access-log entry (dropped with the last thing serving it).
    pub access: Option<Arc<crate::access::Access>>,
}

/// The grammar for a chat with tools. A call that must happen (`required`,
/// a named function: exactly one call) is held to the Hermes format; under
/// `auto` a JSON answer format becomes "calls or that JSON"; other
/// constraints cannot be combined with tools the model may call.
fn grammar_with_tools(
    tool_use: &Option<(Vec<serde_json::Value>, ToolChoice)>,
    answer: Option<(&'static str, GrammarSpec)>,
    parallel_tool_calls: Option<bool>,
) -> Result<Option<(&'static str, GrammarSpec)>, ApiError> {
    let parallel = parallel_tool_calls.unwrap_or(true);
    let Some((tools, choice)) = tool_use else {
        return Ok(answer);
    };
    Ok(match (choice, answer) {
        (ToolChoice::Required, _) => {
            Some(("tool_choice", forced_call_grammar(tools, None, parallel)))
        }
        (ToolChoice::Named(name), _) => {
            Some(("tool_choice", forced_call_grammar(tools, Some(name), false)))
        }
        (ToolChoice::Auto, None) => None,
        (ToolChoice::Auto, Some((param, spec))) => {
            let schema = match spec {
                GrammarSpec::JsonObject => serde_json::json!({"type": "object"}),
                GrammarSpec::JsonSchema(schema) => schema,
                _ => {
                    return Err(ApiError::invalid_param(
                        param,
                        format!("'{param}' can be combined with tools only as JSON (a json_object or json_schema answer)."),
                    ))
                }
            };
            Some((param, calls_or_json_grammar(tools, parallel, &schema)))
        }
    })
}

/// At most one structured-output constraint per request.
fn one_grammar(
    mut specs: Vec<(&'static str, GrammarSpec)>,
) -> Result<Option<(&'static str, GrammarSpec)>, ApiError> {
    if specs.len() > 1 {
        let (first, second) = (specs[0].0, specs[1].0);
        return Err(ApiError::invalid_param(
            second,
            format!("'{second}' cannot be combined with '{first}': a request takes one structured-output constraint."),
        ));
    }
    Ok(specs.pop())
}

/// `routing.cascade` and `routing.min_confidence`: a cascade is a routed
/// objective, and a confidence is a mean token log-probability (≤ 0).
fn check_cascade(model: &ModelChoice, options: &RoutingOptions) -> Result<(), ApiError> {
    let named = match model {
        ModelChoice::Auto(o) => options.objective.or(*o),
        ModelChoice::Pinned(_) => None,
    };
    if options.cascade || options.min_confidence.is_some() {
        let param = if options.cascade {
            "routing.cascade"
        } else {
            "routing.min_confidence"
        };
        if let ModelChoice::Pinned(name) = model {
            return Err(ApiError::invalid_param(
                param,
                format!("'{param}' needs model \"auto\": the request names `{name}`, so there is nothing to escalate to."),
            ));
        }
        if options.cascade && named.is_some_and(|o| o != Objective::Cascade) {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "'routing.cascade' conflicts with the objective `{}`; drop one.",
                    named.map_or("", |o| o.as_str())
                ),
            ));
        }
    }
    if let Some(c) = options.min_confidence {
        if !(c.is_finite() && c <= 0.0) {
            return Err(ApiError::invalid_param(
                "routing.min_confidence",
                format!("{c} is not a mean token log-probability (a finite number ≤ 0) - 'routing.min_confidence'"),
            ));
        }
    }
    Ok(())
}

/// `auto`, `auto:<objective>`, or a concrete model name.
pub fn parse_model(model: &str) -> Result<ModelChoice, ApiError> {
    match model.strip_prefix("auto") {
        Some("") => Ok(ModelChoice::Auto(None)),
        Some(rest) if rest.starts_with(':') => Objective::parse(&rest[1..])
            .map(|o| ModelChoice::Auto(Some(o)))
            .ok_or_else(|| ApiError::invalid_param(
                "model",
                format!("unknown routing objective in `{model}`: use auto, auto:quality, auto:cost, auto:latency, auto:balanced or auto:cascade"),
            )),
        _ => Ok(ModelChoice::Pinned(model.to_string())),
    }
}

impl ValidatedRequest {
    pub fn chat(req: ChatRequest) -> Result<Self, ApiError> {
        let model = parse_model(&req.model)?;
        let top_logprobs = match (req.logprobs, req.top_logprobs) {
            (_, Some(k)) if !(0..=20).contains(&k) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("{k} is not in [0, 20] - 'top_logprobs'"),
                ))
            }
            (Some(true), k) => Some(k.unwrap_or(0) as usize),
            (_, Some(_)) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "'top_logprobs' requires 'logprobs' to be true.",
                ))
            }
            _ => None,
        };
        let params = req.sampling.to_params(top_logprobs)?;
        let max_tokens = req.sampling.max_tokens()?;
        let messages = openai::chat_messages(&req.messages)?;
        let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
        if req.tool_choice.is_some() && !has_tools {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "'tool_choice' is only allowed when 'tools' are specified.",
            ));
        }
        if req.parallel_tool_calls.is_some() && !has_tools {
            return Err(ApiError::invalid_param(
                "parallel_tool_calls",
                "'parallel_tool_calls' is only allowed when 'tools' are specified.",
            ));
        }
        let tool_use = openai::tool_use(req.tools.as_deref(), req.tool_choice.as_ref())?;
        let mut specs = req.guided.specs()?;
        if let Some(spec) = req
            .response_format
            .as_ref()
            .filter(|f| !f.is_null())
            .map(openai::response_format)
            .transpose()?
            .flatten()
        {
            specs.insert(0, ("response_format", spec));
        }
        let answer = one_grammar(specs)?;
        if let Some(options) = &req.routing {
            check_cascade(&model, options)?;
        }
        let needs_json = answer.is_some();
        let grammar = grammar_with_tools(&tool_use, answer, req.parallel_tool_calls)?;
        // Calls written under a grammar are in the Hermes format.
        let hermes_calls = tool_use.is_some() && grammar.is_some();
        if let Some(user) = &req.sampling.user {
            tracing::debug!(user, "request for end user");
        }
        Ok(ValidatedRequest {
            kind: Kind::Chat,
            model,
            input: Input::Chat(Arc::new(messages)),
            params,
            max_tokens,
            stream: req.sampling.stream(),
            include_usage: req.sampling.include_usage(),
            routing: req.routing,
            needs_tools: tool_use.is_some(),
            needs_json,
            grammar,
            tools: tool_use.map(|(tools, _)| Arc::new(tools)),
            tool_call_forced: hermes_calls,
            template_kwargs: req.chat_template_kwargs.map(Arc::new),
            keep_alive: openai::keep_alive(req.keep_alive.as_ref())?,
            raw: Arc::default(),
            access: None,
        })
    }

    pub fn completion(req: CompletionRequest) -> Result<Self, ApiError> {
        let model = parse_model(&req.model)?;
        if model != ModelChoice::Pinned(req.model.clone()) {
            return Err(ApiError::invalid_param(
                "model",
                "`auto` routing is served on /v1/chat/completions; name a model for /v1/completions.",
            ));
        }
        if req.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "'echo' is not supported."));
        }
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "suffix",
                "'suffix' is not supported.",
            ));
        }
        let top = match req.logprobs {
            Some(k) if !(0..=20).contains(&k) => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("{k} is not in [0, 20] - 'logprobs'"),
                ))
            }
            k => k.map(|k| k as usize),
        };
        let grammar = one_grammar(req.guided.specs()?)?;
        Ok(ValidatedRequest {
            kind: Kind::Completion,
            model,
            input: Input::Completion(Arc::new(openai::completion_prompts(&req.prompt)?)),
            params: req.sampling.to_params(top)?,
            max_tokens: req.sampling.max_tokens()?,
            stream: req.sampling.stream(),
            include_usage: req.sampling.include_usage(),
            routing: None,
            needs_tools: false,
            needs_json: grammar.is_some(),
            grammar,
            tools: None,
            tool_call_forced: false,
            template_kwargs: None,
            keep_alive: openai::keep_alive(req.keep_alive.as_ref())?,
            raw: Arc::default(),
            access: None,
        })
    }

    /// The request's access-log entry, passed on to what serves it.
    pub fn with_access(mut self, access: Option<Arc<crate::access::Access>>) -> Self {
        self.access = access;
        self
    }

    /// Keep the body as sent (a remote model is sent it).
    pub fn with_raw(mut self, raw: serde_json::Value) -> Self {
        self.raw = Arc::new(raw);
        self
    }

    /// The upstream path of this request on a remote model.
    pub fn remote_path(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat/completions",
            Kind::Completion => "completions",
        }
    }

    /// The chat messages, for the router's classifier.
    pub fn messages(&self) -> &[ChatMessage] {
        match &self.input {
            Input::Chat(m) => m,
            Input::Completion(_) => &[],
        }
    }

    /// The routing options with the objective from `auto:<objective>`
    /// when the options name none.
    pub fn routing_options(&self) -> RoutingOptions {
        let mut options = self.routing.clone().unwrap_or_default();
        if options.cascade {
            options.objective = Some(Objective::Cascade);
        }
        if let (None, ModelChoice::Auto(objective)) = (options.objective, &self.model) {
            options.objective = *objective;
        }
        options
    }
}

/// A request's prompts and grammar for one model.
pub struct Prepared {
    pub prompts: Vec<Vec<u32>>,
    pub grammar: Option<Grammar>,
}

/// The model's prompts and grammar, off the async runtime: render the chat
/// template, refuse a text that provably cannot fit the context window (its
/// bytes ÷ the longest token's already exceed it) without tokenizing it,
/// tokenize, and compile the structured-output grammar for this vocabulary.
pub async fn prepare(
    state: &AppState,
    v: &ValidatedRequest,
    engine: &Arc<Engine>,
) -> Result<Prepared, ApiError> {
    let engine = engine.clone();
    let input = v.input.clone();
    let grammar = v.grammar.clone();
    let tools = v.tools.clone();
    let kwargs = v.template_kwargs.clone();
    let out = v.max_tokens.unwrap_or(1);
    state
        .blocking
        .run(move || -> Result<Prepared, ApiError> {
            let (texts, param) = match input {
                Input::Chat(messages) => {
                    let text = engine.render_chat_with(
                        &messages,
                        tools.as_deref().map(Vec::as_slice),
                        kwargs.as_deref(),
                    )?;
                    (vec![Prompt::Text(text)], "messages")
                }
                Input::Completion(prompts) => (Arc::unwrap_or_clone(prompts), "prompt"),
            };
            let ctx = engine.context_length();
            for text in &texts {
                let at_least = match text {
                    Prompt::Text(t) => engine.tokenizer().min_tokens(t.len()),
                    Prompt::Ids(ids) => ids.len(),
                };
                if at_least + out > ctx {
                    return Err(ApiError::context_length_at_least(ctx, at_least, out));
                }
            }
            let prompts = texts
                .into_iter()
                .map(|p| match p {
                    Prompt::Ids(ids) => Ok(ids),
                    Prompt::Text(t) => engine
                        .tokenizer()
                        .encode(&t, true)
                        .map_err(|e| ApiError::invalid_param(param, e.to_string())),
                })
                .collect::<Result<_, _>>()?;
            let grammar = grammar
                .map(|(param, spec)| {
                    engine
                        .compile_grammar(&spec)
                        .map_err(|e| ApiError::invalid_param(param, e.to_string()))
                })
                .transpose()?;
            Ok(Prepared { prompts, grammar })
        })
        .await?
}

/// A request admitted to one engine, ready to submit.
pub struct Job {
    pub kind: Kind,
    pub model: String,
    /// The serving model, held (not evicted) until the job is dropped.
    pub engine: Lease,
    pub prompts: Vec<Vec<u32>>,
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    pub id: String,
    pub created: u64,
    /// Set for routed requests and pinned ones with routing options.
    pub route: Option<RouteCtx>,
    /// How to find tool calls in the output (requests with tools).
    pub tool_format: Option<ToolCallFormat>,
    /// The request's access-log entry: its line is written when the job ends.
    pub access: Option<Arc<crate::access::Access>>,
}

/// The model-dependent checks, the same for pinned and routed requests:
/// token ids inside the vocabulary, `max_tokens` against `max_output`, the
/// context window and the KV pool, and load shedding past `max_waiting`.
pub fn admit(
    state: &AppState,
    v: &ValidatedRequest,
    model: &str,
    engine: Lease,
    prepared: Prepared,
) -> Result<Job, ApiError> {
    let Prepared { prompts, grammar } = prepared;
    let vocab = engine.tokenizer().vocab_size();
    if let Some(&(id, _)) = v
        .params
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= vocab)
    {
        return Err(ApiError::invalid_param(
            "logit_bias",
            format!("token id {id} is outside the vocabulary (size {vocab})"),
        ));
    }
    if let Some(id) = v
        .params
        .stop_token_ids
        .iter()
        .find(|&&id| id as usize >= vocab)
    {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("token id {id} is outside the vocabulary (size {vocab})"),
        ));
    }
    if let Some(id) = prompts.iter().flatten().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("token id {id} is outside the vocabulary (size {vocab})"),
        ));
    }
    let ctx = engine.context_length();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_output = state.max_output(model);
    if let Some(m) = v.max_tokens.filter(|&m| max_output > 0 && m > max_output) {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!("{m} is more than `{model}`'s max_output of {max_output}"),
        ));
    }
    let max_tokens = match v.max_tokens {
        Some(m) => m,
        None => {
            let room = ctx.saturating_sub(longest).max(1);
            if max_output > 0 {
                room.min(max_output)
            } else {
                room
            }
        }
    };
    if longest + max_tokens > ctx {
        return Err(ApiError::context_length(ctx, longest, max_tokens));
    }
    let stats = engine.stats();
    let pool_tokens = stats.kv_blocks_total * stats.block_size;
    if longest + max_tokens > pool_tokens {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!("The KV cache holds {pool_tokens} tokens; this request needs up to {}. Lower max_tokens.", longest + max_tokens),
        ));
    }
    if stats.waiting >= state.limits.max_waiting {
        return Err(ApiError::overloaded(model, stats.waiting));
    }
    let mut params = v.params.clone();
    params.max_tokens = max_tokens;
    params.grammar = grammar;
    let tool_format = v.tools.as_ref().map(|_| {
        if v.tool_call_forced {
            ToolCallFormat::Hermes
        } else {
            engine.tool_call_format()
        }
    });
    Ok(Job {
        kind: v.kind,
        model: model.to_string(),
        engine,
        prompts,
        params,
        stream: v.stream,
        include_usage: v.include_usage,
        id: random_id(if v.kind == Kind::Chat {
            "chatcmpl-"
        } else {
            "cmpl-"
        }),
        created: now_secs(),
        route: None,
        tool_format,
        access: v.access.clone(),
    })
}

/// An engine stream whose first events may already have been received
/// (routing waits for the first so that a failing model can still fall
/// back; a cascade holds an answer back while it judges it).
pub struct Pending {
    held: std::collections::VecDeque<Event>,
    stream: RequestStream,
}

impl Pending {
    pub fn new(stream: RequestStream, first: Option<Event>) -> Self {
        Pending {
            held: first.into_iter().collect(),
            stream,
        }
    }

    /// Events read ahead, to be replayed before the stream's next ones.
    pub fn put_back(&mut self, events: Vec<Event>) {
        for e in events.into_iter().rev() {
            self.held.push_front(e);
        }
    }

    pub async fn next(&mut self) -> Option<Event> {
        match self.held.pop_front() {
            Some(e) => Some(e),
            None => self.stream.next().await,
        }
    }
}

/// Submit every prompt of a job; engine errors keep their kind.
pub fn submit(job: &Job) -> Result<Vec<Pending>, ApiError> {
    if let Some(a) = &job.access {
        a.submitted(Instant::now(), job.stream);
    }
    job.prompts
        .iter()
        .map(|p| {
            job.engine
                .submit(p.clone(), job.params.clone())
                .map(|s| Pending::new(s, None))
                .map_err(ApiError::from)
        })
        .collect()
}

/// When a request started, for TTFT: the routing decision's start if any.
pub fn started(job: &Job) -> Instant {
    job.route.as_ref().map_or_else(Instant::now, |r| r.started)
}
