//! OpenAI request bodies and their translation to engine sampling parameters.
//!
//! A field is honoured or refused: an unknown field is a 400 naming it (as
//! OpenAI answers), and known fields are checked against OpenAI's documented
//! ranges and rejected with the field's name. vLLM's extensions (`top_k`,
//! `min_p`, `repetition_penalty`, `ignore_eos`, `stop_token_ids`,
//! `cache_salt`) are accepted too. `user` is accepted and logged (it names
//! the end user; it never changes the output).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use switchyard_engine::{
    ChatFunctionCall, ChatMessage, ChatToolCall, GrammarSpec, SamplingParams, TokenLogprob,
    Tokenizer,
};

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and text completions.
#[derive(Debug, Deserialize, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<StopField>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Ordered, so that the first bad key reported is always the same one.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's prefix-cache isolation key.
    pub cache_salt: Option<String>,
    pub user: Option<String>,
}

/// The sampling fields' names, for the unknown-field check.
const SAMPLING_FIELDS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "stop_token_ids",
    "stream",
    "stream_options",
    "cache_salt",
    "user",
];

/// vLLM's structured-output fields, on chat and text completions.
const GUIDED_FIELDS: &[&str] = &[
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
];

/// Structured outputs the way vLLM takes them: the older `guided_*` fields
/// or the newer `structured_outputs` object.
#[derive(Debug, Deserialize, Default)]
pub struct GuidedFields {
    /// A JSON schema (an object, or a string holding one).
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    /// A Lark grammar (llguidance's dialect) or GBNF (`::=` rules).
    pub guided_grammar: Option<String>,
    pub structured_outputs: Option<StructuredOutputs>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StructuredOutputs {
    pub json: Option<Value>,
    pub regex: Option<String>,
    pub choice: Option<Vec<String>>,
    pub grammar: Option<String>,
    pub json_object: Option<bool>,
}

impl GuidedFields {
    /// Every constraint the body names, with the field it came from.
    pub fn specs(&self) -> Result<Vec<(&'static str, GrammarSpec)>, ApiError> {
        // The older fields are the newer object's, each under its own name.
        let legacy = StructuredOutputs {
            json: self.guided_json.clone(),
            regex: self.guided_regex.clone(),
            choice: self.guided_choice.clone(),
            grammar: self.guided_grammar.clone(),
            json_object: None,
        };
        let mut out = legacy.specs(|field| match field {
            "json" => "guided_json",
            "regex" => "guided_regex",
            "choice" => "guided_choice",
            _ => "guided_grammar",
        })?;
        if let Some(so) = &self.structured_outputs {
            out.extend(so.specs(|_| "structured_outputs")?);
        }
        Ok(out)
    }
}

impl StructuredOutputs {
    /// The constraints named, each with the request field `param_of` gives.
    fn specs(
        &self,
        param_of: impl Fn(&str) -> &'static str,
    ) -> Result<Vec<(&'static str, GrammarSpec)>, ApiError> {
        let mut out = Vec::new();
        if let Some(v) = &self.json {
            let param = param_of("json");
            let schema = match v {
                Value::String(s) => serde_json::from_str(s).map_err(|e| {
                    ApiError::invalid_param(param, format!("'{param}' is not valid JSON: {e}"))
                })?,
                other => other.clone(),
            };
            out.push((param, GrammarSpec::JsonSchema(schema)));
        }
        if let Some(rx) = &self.regex {
            out.push((param_of("regex"), GrammarSpec::Regex(rx.clone())));
        }
        if let Some(c) = &self.choice {
            out.push((param_of("choice"), GrammarSpec::Choice(c.clone())));
        }
        if let Some(g) = &self.grammar {
            // GBNF (EBNF with `::=`, as llama.cpp and vLLM take it) or Lark.
            let spec = if g.contains("::=") {
                GrammarSpec::Gbnf(g.clone())
            } else {
                GrammarSpec::Lark(g.clone())
            };
            out.push((param_of("grammar"), spec));
        }
        if self.json_object == Some(true) {
            out.push((param_of("json_object"), GrammarSpec::JsonObject));
        }
        Ok(out)
    }
}

/// OpenAI's `response_format`: text, JSON mode or a JSON schema.
pub fn response_format(f: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "response_format";
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let Some(js) = f.get("json_schema").filter(|j| j.is_object()) else {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema",
                    "Missing required parameter: 'response_format.json_schema'.",
                ));
            };
            if !js.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema.name",
                    "Missing required parameter: 'response_format.json_schema.name'.",
                ));
            }
            Ok(Some(match js.get("schema") {
                None | Some(Value::Null) => GrammarSpec::JsonObject,
                Some(schema) => GrammarSpec::JsonSchema(schema.clone()),
            }))
        }
        _ => Err(ApiError::invalid_param(
            P,
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
        )),
    }
}

/// Top-level fields of a chat request besides the sampling ones.
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "logprobs",
    "top_logprobs",
    "routing",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "chat_template_kwargs",
    "keep_alive",
];

/// Top-level fields of a text-completion request besides the sampling ones.
pub const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "echo",
    "logprobs",
    "suffix",
    "keep_alive",
];

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// switchyard's routing options, for `model: "auto"`.
    pub routing: Option<switchyard_router::RoutingOptions>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
    /// Extra chat-template variables (vLLM's), e.g. `enable_thinking`.
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// How long the model stays loaded after this request (Ollama's).
    pub keep_alive: Option<Value>,
    #[serde(flatten)]
    pub guided: GuidedFields,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Value,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub suffix: Option<String>,
    pub keep_alive: Option<Value>,
    #[serde(flatten)]
    pub guided: GuidedFields,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// Parse a JSON body into a request type, with OpenAI-shaped errors; a
/// top-level field outside `known` (and the sampling fields) is refused.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    known: &[&str],
) -> Result<T, ApiError> {
    parse_body_raw(body, known).map(|(t, _)| t)
}

/// As [`parse_body`], also returning the body as JSON (what a remote model
/// is sent).
pub fn parse_body_raw<T: serde::de::DeserializeOwned>(
    body: &[u8],
    known: &[&str],
) -> Result<(T, Value), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    let Some(fields) = value.as_object() else {
        return Err(ApiError::invalid("The request body must be a JSON object."));
    };
    if let Some(unknown) = fields.keys().find(|k| {
        ![known, SAMPLING_FIELDS, GUIDED_FIELDS]
            .iter()
            .any(|list| list.contains(&k.as_str()))
    }) {
        return Err(ApiError::invalid_param(
            unknown,
            format!("Unrecognized request argument supplied: {unknown}"),
        ));
    }
    let parsed = T::deserialize(&value).map_err(|e| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).map(str::to_string);
        ApiError {
            param,
            ..ApiError::invalid(format!("Invalid request: {msg}"))
        }
    })?;
    Ok((parsed, value))
}

/// Ollama's `keep_alive`: seconds, or a duration like `"5m"`; `-1` keeps
/// the model loaded, `0` unloads it after this request.
pub fn keep_alive(v: Option<&Value>) -> Result<Option<crate::config::KeepAlive>, ApiError> {
    v.filter(|v| !v.is_null())
        .map(|v| {
            crate::config::KeepAlive::parse(v).map_err(|e| {
                ApiError::invalid_param("keep_alive", format!("Invalid 'keep_alive': {e}."))
            })
        })
        .transpose()
}

impl SamplingFields {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// Check the fields and build engine parameters. `max_tokens` is resolved
    /// by the caller once the prompt length is known.
    /// The vocabulary range of `logit_bias` and `stop_token_ids` is the
    /// model's, checked when the request is admitted to one.
    pub fn to_params(&self, logprobs: Option<usize>) -> Result<SamplingParams, ApiError> {
        if self.stream_options.is_some() && !self.stream() {
            return Err(ApiError::invalid_param(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            ));
        }
        let mut p = SamplingParams::default();
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid_param(
                    "temperature",
                    format!("{t} is not in [0, 2] - 'temperature'"),
                ));
            }
            p.temperature = t;
        }
        if let Some(v) = self.top_p {
            if !(v > 0.0 && v <= 1.0) {
                return Err(ApiError::invalid_param(
                    "top_p",
                    format!("{v} is not in (0, 1] - 'top_p'"),
                ));
            }
            p.top_p = v;
        }
        if let Some(n) = self.n {
            if !(1..=128).contains(&n) {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("{n} is not in [1, 128] - 'n'"),
                ));
            }
            p.n = n as usize;
        }
        for (name, v, slot) in [
            (
                "presence_penalty",
                self.presence_penalty,
                &mut p.presence_penalty,
            ),
            (
                "frequency_penalty",
                self.frequency_penalty,
                &mut p.frequency_penalty,
            ),
        ] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid_param(
                        name,
                        format!("{v} is not in [-2, 2] - '{name}'"),
                    ));
                }
                *slot = v;
            }
        }
        if let Some(k) = self.top_k {
            if k < -1 {
                return Err(ApiError::invalid_param(
                    "top_k",
                    "top_k must be -1 (off), 0 (off) or positive",
                ));
            }
            p.top_k = k.max(0) as usize;
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(ApiError::invalid_param(
                    "min_p",
                    format!("{m} is not in [0, 1] - 'min_p'"),
                ));
            }
            p.min_p = m;
        }
        if let Some(r) = self.repetition_penalty {
            if !(r.is_finite() && r > 0.0) {
                return Err(ApiError::invalid_param(
                    "repetition_penalty",
                    "repetition_penalty must be > 0",
                ));
            }
            p.repetition_penalty = r;
        }
        p.seed = self.seed.map(|s| s as u64);
        p.stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        p.stop.retain(|s| !s.is_empty());
        if let Some(bias) = &self.logit_bias {
            for (k, &v) in bias {
                let id: u32 = k.parse().map_err(|_| {
                    ApiError::invalid_param(
                        "logit_bias",
                        format!("logit_bias key `{k}` is not a token id"),
                    )
                })?;
                if !(-100.0..=100.0).contains(&v) {
                    return Err(ApiError::invalid_param(
                        "logit_bias",
                        format!("logit_bias value {v} is not in [-100, 100]"),
                    ));
                }
                p.logit_bias.push((id, v));
            }
        }
        if let Some(ids) = &self.stop_token_ids {
            p.stop_token_ids = ids.clone();
        }
        p.ignore_eos = self.ignore_eos.unwrap_or(false);
        p.logprobs = logprobs;
        p.cache_salt = self.cache_salt.clone().filter(|s| !s.is_empty());
        Ok(p)
    }

    /// The requested output budget, if any (`max_completion_tokens` wins).
    pub fn max_tokens(&self) -> Result<Option<usize>, ApiError> {
        let (name, v) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", v),
            (None, Some(v)) => ("max_tokens", v),
            (None, None) => return Ok(None),
        };
        if v < 1 {
            return Err(ApiError::invalid_param(
                name,
                format!("{v} is less than the minimum of 1 - '{name}'"),
            ));
        }
        Ok(Some(v as usize))
    }
}

/// Chat messages in the template's terms: content as plain text, earlier
/// tool calls and tool results. A message key the templates cannot carry
/// (`name`) is refused.
pub fn chat_messages(messages: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages.[{i}]");
            let Some(fields) = m.as_object() else {
                return Err(ApiError::invalid_param(&param, format!("messages[{i}] must be an object")));
            };
            // Keys SDKs echo back empty (`refusal`, `parsed`, `annotations`)
            // say nothing; any other key must be one the template carries.
            let says_nothing = |v: &Value| v.is_null() || v.as_array().is_some_and(Vec::is_empty);
            if let Some(key) = fields.iter().find_map(|(k, v)| {
                (!["role", "content", "tool_calls", "tool_call_id"].contains(&k.as_str())
                    && !says_nothing(v))
                .then_some(k)
            }) {
                return Err(ApiError::invalid_param(
                    &format!("{param}.{key}"),
                    format!("messages[{i}].{key} is not supported."),
                ));
            }
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid_param(&param, format!("messages[{i}] has no 'role'")))?;
            let role = match role {
                "system" | "developer" => "system",
                "user" | "assistant" | "tool" => role,
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.role"),
                        format!("Invalid role '{other}' in messages[{i}]: expected system, developer, user, assistant or tool."),
                    ))
                }
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    &format!("{param}.content"),
                                    format!("Unsupported content part {:?} in messages[{i}]: only text parts are supported.", kind.unwrap_or("?")),
                                ))
                            }
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.content"),
                        format!("messages[{i}].content must be a string or an array of text parts."),
                    ))
                }
            };
            let tool_calls = match m.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(calls) if role == "assistant" => history_tool_calls(calls, &format!("{param}.tool_calls"))?,
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.tool_calls"),
                        format!("messages[{i}]: only assistant messages carry 'tool_calls'."),
                    ))
                }
            };
            let tool_call_id = match (role, m.get("tool_call_id")) {
                ("tool", Some(Value::String(id))) => Some(id.clone()),
                (_, None | Some(Value::Null)) => None,
                _ => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.tool_call_id"),
                        format!("messages[{i}].tool_call_id must be a string on a tool message."),
                    ))
                }
            };
            Ok(ChatMessage { role: role.to_string(), content, tool_calls, tool_call_id })
        })
        .collect()
}

/// An assistant message's `tool_calls`, arguments parsed to JSON for the
/// template (left as a string when they are not JSON).
fn history_tool_calls(calls: &Value, param: &str) -> Result<Vec<ChatToolCall>, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            param,
            "tool_calls must be an array of {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}.",
        )
    };
    calls
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|c| {
            let id = c.get("id").and_then(Value::as_str).ok_or_else(bad)?;
            let f = c.get("function").ok_or_else(bad)?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(bad)?;
            let arguments = match f.get("arguments") {
                Some(Value::String(a)) => {
                    serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone()))
                }
                Some(other) => other.clone(),
                None => return Err(bad()),
            };
            Ok(ChatToolCall {
                id: id.to_string(),
                kind: "function".into(),
                function: ChatFunctionCall {
                    name: name.to_string(),
                    arguments,
                },
            })
        })
        .collect()
}

/// How the request lets the model use its tools.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// It must call at least one tool.
    Required,
    /// It must call this one.
    Named(String),
}

/// `tools` and `tool_choice`, checked: function definitions with a name (as
/// OpenAI restricts it) and object parameters. None when no tool may be
/// called (no tools, or `tool_choice: "none"`).
pub fn tool_use(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<Option<(Vec<Value>, ToolChoice)>, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut names = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let f = match (t.get("type").and_then(Value::as_str), t.get("function")) {
            (Some("function"), Some(f)) if f.is_object() => f,
            _ => {
                return Err(ApiError::invalid_param(
                    &param,
                    format!("{param} must be {{\"type\": \"function\", \"function\": {{...}}}}."),
                ))
            }
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ApiError::invalid_param(
                &format!("{param}.function.name"),
                format!("Invalid function name {name:?}: 1-64 letters, digits, '_' or '-'."),
            ));
        }
        if f.get("parameters")
            .is_some_and(|p| !p.is_object() && !p.is_null())
        {
            return Err(ApiError::invalid_param(
                &format!("{param}.function.parameters"),
                "'parameters' must be a JSON Schema object.",
            ));
        }
        names.push(name);
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(c)) => match c.as_str() {
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            "none" => return Ok(None),
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!(
                    "Invalid tool_choice {other:?}: expected none, auto, required or a function."
                ),
                ))
            }
        },
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\"}}.",
                    )
                })?;
            if !names.contains(&name) {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not in 'tools'."),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
    };
    Ok((!tools.is_empty()).then(|| (tools.to_vec(), choice)))
}

/// One text-completion prompt: text to tokenize, or token ids as given.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Completion prompts: a string, strings, token ids, or lists of token ids.
pub fn completion_prompts(prompt: &Value) -> Result<Vec<Prompt>, ApiError> {
    let bad = || {
        ApiError::invalid_param("prompt", "'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays.")
    };
    let ids = |v: &[Value]| -> Result<Prompt, ApiError> {
        v.iter()
            .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<Vec<u32>>>()
            .map(Prompt::Ids)
            .ok_or_else(|| {
                ApiError::invalid_param("prompt", "token ids must be non-negative integers")
            })
    };
    let text = |s: &str| Ok(Prompt::Text(s.to_string()));
    let prompts: Vec<Prompt> = match prompt {
        Value::String(s) => vec![text(s)?],
        Value::Array(items) if items.is_empty() => return Err(bad()),
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|i| i.as_str().ok_or_else(bad).and_then(text))
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![ids(items)?],
            Value::Array(_) => items
                .iter()
                .map(|i| i.as_array().ok_or_else(bad).and_then(|a| ids(a)))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if prompts.iter().any(|p| match p {
        Prompt::Text(t) => t.is_empty(),
        Prompt::Ids(ids) => ids.is_empty(),
    }) {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompts must not be empty",
        ));
    }
    Ok(prompts)
}

/// A token's text for logprobs (lossy where a token is part of a UTF-8 char;
/// empty for control tokens such as end-of-turn, which the text never shows).
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    if tokenizer.is_control(id) {
        return String::new();
    }
    String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned()
}

/// Chat-format logprob entries (`choices[].logprobs.content`).
pub fn chat_logprobs(tokenizer: &Tokenizer, lps: &[TokenLogprob]) -> Vec<Value> {
    let entry = |id: u32, lp: f32| {
        serde_json::json!({
            "token": token_text(tokenizer, id),
            "logprob": lp,
            "bytes": if tokenizer.is_control(id) { &[][..] } else { tokenizer.token_bytes(id) },
        })
    };
    lps.iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = Value::Array(l.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_and_roles() {
        let msgs = vec![
            serde_json::json!({"role": "developer", "content": "be brief"}),
            serde_json::json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
        ];
        let out = chat_messages(&msgs).unwrap();
        assert_eq!(out[0], ChatMessage::new("system", "be brief"));
        assert_eq!(out[1].content, "ab");
        assert!(chat_messages(&[serde_json::json!({"role": "wizard", "content": "x"})]).is_err());
        assert!(chat_messages(&[]).is_err());
    }

    #[test]
    fn malformed_bodies_are_400s() {
        let e = parse_body::<ChatRequest>(b"{not json", CHAT_FIELDS).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse_body::<ChatRequest>(br#"{"model": "m"}"#, CHAT_FIELDS).unwrap_err();
        assert!(e.message.contains("messages"), "{}", e.message);
        let e = parse_body::<ChatRequest>(br#"[1]"#, CHAT_FIELDS).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse_body::<ChatRequest>(
            br#"{"model": "m", "messages": [], "frobnicate": 1}"#,
            CHAT_FIELDS,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("frobnicate"));
        assert!(
            chat_messages(&[serde_json::json!({"role": "user", "content": "x", "name": "a"})])
                .is_err()
        );
    }
}
