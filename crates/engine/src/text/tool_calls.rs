//! Tool-call output formats, per model family: turn a completion's text into
//! plain content plus structured calls, so the server only sees structure.
//!
//! - Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
//! - Llama 3.x: a JSON object `{"name": ..., "parameters": {...}}` (optionally
//!   after `<|python_tag|>`), one per line or `;`-separated
//! - DeepSeek: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
//!   then a fenced JSON block and `<｜tool▁call▁end｜>`, closed by `<｜tool▁calls▁end｜>`
//!
//! Parsing never fails: text that is not a well-formed call stays content.
//!
//! A model whose chat template cannot render tools gets the fallback: a
//! system block that lists the tools and asks for Hermes-style calls, with
//! earlier calls and tool results written into the turns as text
//! ([`with_fallback_tools`]). A request that must call a tool (`tool_choice`
//! `required` or a named function) is held to the Hermes format by a grammar
//! ([`forced_call_grammar`]) whose arguments follow each tool's JSON schema.

use serde_json::{json, Value};

use crate::family::Arch;
use crate::text::chat::ChatMessage;
use crate::text::constraint::GrammarSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    Hermes,
    Llama3Json,
    DeepSeek,
    /// `[TOOL_CALLS]` then a JSON array of calls, or (newer tokenizers)
    /// `[TOOL_CALLS]name[ARGS]{...}` per call.
    Mistral,
}

impl ToolCallFormat {
    /// The format a chat template teaches, from the markers it writes.
    pub fn from_template(source: &str) -> Option<ToolCallFormat> {
        if source.contains("[TOOL_CALLS]") {
            Some(ToolCallFormat::Mistral)
        } else if source.contains("tool▁calls▁begin") {
            Some(ToolCallFormat::DeepSeek)
        } else if source.contains("<tool_call>") {
            Some(ToolCallFormat::Hermes)
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            Some(ToolCallFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The format a model family emits.
    pub fn for_arch(arch: Arch) -> Option<ToolCallFormat> {
        arch.family().tool_format
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON object, serialized (OpenAI's wire form).
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedOutput {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

/// A call from a JSON object with a name and arguments under `args_key`.
fn call_from_json(v: &Value, args_key: &str) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = match v.get(args_key) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => return None,
    };
    Some(ToolCall {
        name,
        arguments: args.to_string(),
    })
}

/// The function definitions' name and JSON-schema parameters.
fn functions(tools: &[Value]) -> impl Iterator<Item = (&str, Value)> {
    tools.iter().filter_map(|t| {
        let f = t.get("function")?;
        let name = f.get("name")?.as_str()?;
        let params = f
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        Some((name, params))
    })
}

/// The call text the fallback prompt asks for.
fn hermes_call(name: &str, arguments: &Value) -> String {
    format!(
        "<tool_call>\n{}\n</tool_call>",
        json!({"name": name, "arguments": arguments})
    )
}

/// Messages for a template without tool support: the tools as a system
/// block, earlier calls as Hermes text, tool results as user turns.
pub fn with_fallback_tools(messages: &[ChatMessage], tools: &[Value]) -> Vec<ChatMessage> {
    let listed: Vec<String> = tools
        .iter()
        .filter_map(|t| t.get("function"))
        .map(Value::to_string)
        .collect();
    let block = format!(
        "You can call functions. Their signatures, as JSON Schema:\n<tools>\n{}\n</tools>\n\
         To call a function, answer with one block per call:\n\
         <tool_call>\n{{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}}\n</tool_call>",
        listed.join("\n")
    );
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let has_system = messages.first().is_some_and(|m| m.role == "system");
    match messages.first() {
        // A history without tools on offer: only its turns are rewritten.
        _ if tools.is_empty() => {}
        Some(m) if has_system => out.push(ChatMessage::new(
            "system",
            &format!("{}\n\n{block}", m.content),
        )),
        _ => out.push(ChatMessage::new("system", &block)),
    }
    let skip = usize::from(has_system && !tools.is_empty());
    for m in &messages[skip..] {
        out.push(match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| hermes_call(&c.function.name, &c.function.arguments))
                    .collect();
                let text = [m.content.as_str()]
                    .into_iter()
                    .chain(calls.iter().map(String::as_str))
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n");
                ChatMessage::new("assistant", &text)
            }
            "tool" => ChatMessage::new(
                "user",
                &format!("<tool_response>\n{}\n</tool_response>", m.content),
            ),
            _ => m.clone(),
        });
    }
    out
}

/// Most calls a forced `parallel_tool_calls` turn may make.
pub const MAX_PARALLEL_CALLS: usize = 8;

/// A grammar that admits only Hermes-format calls to these tools (or the
/// one named), arguments valid against each tool's schema; one call, or up
/// to [`MAX_PARALLEL_CALLS`] on separate lines when `parallel`.
pub fn forced_call_grammar(tools: &[Value], only: Option<&str>, parallel: bool) -> GrammarSpec {
    GrammarSpec::Lark(format!(
        "start: calls\n{}",
        call_rules(tools, only, parallel)
    ))
}

/// `tool_choice: "auto"` with a JSON `response_format`: either calls (as
/// [`forced_call_grammar`]) or an answer that matches `schema`.
pub fn calls_or_json_grammar(tools: &[Value], parallel: bool, schema: &Value) -> GrammarSpec {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false}));
    }
    GrammarSpec::Lark(format!(
        "start: calls | answer\nanswer: %json {schema}\n{}",
        call_rules(tools, None, parallel)
    ))
}

/// The Lark rules `calls` and `call` for Hermes-format calls.
fn call_rules(tools: &[Value], only: Option<&str>, parallel: bool) -> String {
    let alternatives: Vec<Value> = functions(tools)
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
        .map(|(name, params)| {
            json!({
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    let schema = json!({
        "anyOf": alternatives,
        "x-guidance": {"whitespace_flexible": false}
    });
    // Parallel calls are bounded: a small model may otherwise repeat a call
    // until max_tokens.
    let repeat = if parallel {
        format!(" (\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1)
    } else {
        String::new()
    };
    format!("calls: call{repeat}\ncall: \"<tool_call>\\n\" %json {schema} \"\\n</tool_call>\"\n")
}

pub fn parse(format: ToolCallFormat, text: &str) -> ParsedOutput {
    match format {
        ToolCallFormat::Hermes => parse_tagged(text, "<tool_call>", "</tool_call>", |body| {
            serde_json::from_str::<Value>(body.trim())
                .ok()
                .and_then(|v| call_from_json(&v, "arguments"))
        }),
        ToolCallFormat::DeepSeek => parse_deepseek(text),
        ToolCallFormat::Llama3Json => parse_llama3(text),
        ToolCallFormat::Mistral => parse_mistral(text),
    }
}

fn parse_mistral(text: &str) -> ParsedOutput {
    const MARK: &str = "[TOOL_CALLS]";
    let Some(start) = text.find(MARK) else {
        return ParsedOutput {
            content: text.trim().to_string(),
            tool_calls: Vec::new(),
        };
    };
    let content = text[..start].trim().to_string();
    let body = &text[start..];
    let mut calls = Vec::new();
    for piece in body.split(MARK).map(str::trim).filter(|p| !p.is_empty()) {
        if piece.starts_with('[') {
            // v0.3: a JSON array of {"name", "arguments"} (ids optional).
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(piece) else {
                return ParsedOutput {
                    content: text.trim().to_string(),
                    tool_calls: Vec::new(),
                };
            };
            calls.extend(items.iter().filter_map(|v| call_from_json(v, "arguments")));
        } else if let Some((name, args)) = piece.split_once("[ARGS]") {
            // Newer: name[ARGS]{...} (a [CALL_ID] may sit before [ARGS]).
            let name = name.split("[CALL_ID]").next().unwrap_or(name).trim();
            match serde_json::from_str::<Value>(args.trim()) {
                Ok(args @ Value::Object(_)) if !name.is_empty() => calls.push(ToolCall {
                    name: name.to_string(),
                    arguments: args.to_string(),
                }),
                _ => {
                    return ParsedOutput {
                        content: text.trim().to_string(),
                        tool_calls: Vec::new(),
                    }
                }
            }
        }
    }
    ParsedOutput {
        content,
        tool_calls: calls,
    }
}

/// Calls between `open` and `close` tags; everything else is content.
fn parse_tagged(
    text: &str,
    open: &str,
    close: &str,
    parse_body: impl Fn(&str) -> Option<ToolCall>,
) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        match parse_body(&after[..end]) {
            Some(call) => {
                out.content.push_str(&rest[..start]);
                out.tool_calls.push(call);
            }
            None => out
                .content
                .push_str(&rest[..start + open.len() + end + close.len()]),
        }
        rest = &after[end + close.len()..];
    }
    // After complete calls, an unclosed one is a call cut short (max_tokens),
    // not content.
    match rest.find(open) {
        Some(start) if !out.tool_calls.is_empty() => out.content.push_str(&rest[..start]),
        _ => out.content.push_str(rest),
    }
    out.content = out.content.trim().to_string();
    out
}

fn parse_llama3(text: &str) -> ParsedOutput {
    let body = text
        .trim()
        .strip_prefix("<|python_tag|>")
        .unwrap_or(text.trim());
    let mut calls = Vec::new();
    for piece in body
        .split(';')
        .flat_map(|p| p.lines())
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match serde_json::from_str::<Value>(piece).ok().and_then(|v| {
            call_from_json(&v, "parameters").or_else(|| call_from_json(&v, "arguments"))
        }) {
            Some(c) => calls.push(c),
            // Anything that is not a call means the whole output is content.
            None => {
                return ParsedOutput {
                    content: text.to_string(),
                    tool_calls: Vec::new(),
                }
            }
        }
    }
    ParsedOutput {
        content: String::new(),
        tool_calls: calls,
    }
}

fn parse_deepseek(text: &str) -> ParsedOutput {
    const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
    const CALLS_END: &str = "<｜tool▁calls▁end｜>";
    let Some(start) = text.find(CALLS_BEGIN) else {
        return ParsedOutput {
            content: text.trim().to_string(),
            tool_calls: Vec::new(),
        };
    };
    let section = &text[start + CALLS_BEGIN.len()..];
    let section = section.find(CALLS_END).map_or(section, |e| &section[..e]);
    let inner = parse_tagged(
        section,
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        |body| {
            let (_, rest) = body.split_once("<｜tool▁sep｜>")?;
            let (name, args) = rest.split_once('\n')?;
            let json = args
                .trim()
                .trim_start_matches("```json")
                .trim_start_matches("```")
                .trim_end_matches("```")
                .trim();
            let args: Value = serde_json::from_str(json).ok()?;
            args.is_object().then(|| ToolCall {
                name: name.trim().to_string(),
                arguments: args.to_string(),
            })
        },
    );
    ParsedOutput {
        content: text[..start].trim().to_string(),
        tool_calls: inner.tool_calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hermes() {
        let out = parse(
            ToolCallFormat::Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        );
        assert_eq!(out.content, "Let me check.");
        assert_eq!(
            out.tool_calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
        let broken = parse(ToolCallFormat::Hermes, "<tool_call>{not json}</tool_call>");
        assert!(broken.tool_calls.is_empty() && broken.content.contains("not json"));
        let cut = parse(
            ToolCallFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"f\", \"argu",
        );
        assert_eq!(cut.tool_calls.len(), 1);
        assert_eq!(cut.content, "");
    }

    #[test]
    fn llama3() {
        let out = parse(
            ToolCallFormat::Llama3Json,
            r#"{"name": "search", "parameters": {"q": "rust"}}"#,
        );
        assert_eq!(out.tool_calls[0].name, "search");
        assert_eq!(out.tool_calls[0].arguments, r#"{"q":"rust"}"#);
        let plain = parse(ToolCallFormat::Llama3Json, "Hello there.");
        assert_eq!(plain.content, "Hello there.");
        assert!(plain.tool_calls.is_empty());
    }

    #[test]
    fn mistral() {
        let v03 = parse(
            ToolCallFormat::Mistral,
            r#"[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]"#,
        );
        assert_eq!(v03.tool_calls.len(), 2);
        assert_eq!(v03.tool_calls[0].arguments, r#"{"x":1}"#);
        let v11 = parse(
            ToolCallFormat::Mistral,
            r#"Sure.[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}"#,
        );
        assert_eq!(v11.content, "Sure.");
        assert_eq!(v11.tool_calls[0].name, "get_time");
        assert_eq!(
            parse(ToolCallFormat::Mistral, "[TOOL_CALLS] nonsense").tool_calls,
            vec![]
        );
        assert_eq!(
            ToolCallFormat::from_template("{{ '[TOOL_CALLS]' + calls }}"),
            Some(ToolCallFormat::Mistral)
        );
    }

    #[test]
    fn deepseek() {
        let text = "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"tz\": \"UTC\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let out = parse(ToolCallFormat::DeepSeek, text);
        assert_eq!(out.content, "Sure.");
        assert_eq!(
            out.tool_calls,
            vec![ToolCall {
                name: "get_time".into(),
                arguments: r#"{"tz":"UTC"}"#.into()
            }]
        );
    }

    #[test]
    fn fallback_writes_tools_calls_and_results_into_the_turns() {
        use crate::text::chat::{ChatFunctionCall, ChatToolCall};
        let tools = vec![
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}),
        ];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![ChatToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: ChatFunctionCall {
                name: "f".into(),
                arguments: json!({"x": 1}),
            },
        }];
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("call_1".into());
        let out = with_fallback_tools(
            &[
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "go"),
                call,
                result,
            ],
            &tools,
        );
        assert_eq!(out.len(), 4);
        assert!(
            out[0].content.starts_with("Be brief.\n\n")
                && out[0].content.contains("\"name\":\"f\"")
        );
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"
        );
        assert!(out[2].tool_calls.is_empty());
        assert_eq!(
            (out[3].role.as_str(), out[3].content.as_str()),
            ("user", "<tool_response>\n42\n</tool_response>")
        );
        // What the fallback asks for is what the Hermes parser reads.
        assert_eq!(
            parse(ToolCallFormat::Hermes, &out[2].content).tool_calls[0].name,
            "f"
        );
    }

    #[test]
    fn forced_grammar_names_only_the_chosen_tools() {
        let tools = vec![
            json!({"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}),
            json!({"type": "function", "function": {"name": "b"}}),
        ];
        let GrammarSpec::Lark(all) = forced_call_grammar(&tools, None, true) else {
            panic!()
        };
        assert!(
            all.contains("\"const\":\"a\"")
                && all.contains("\"const\":\"b\"")
                && all.contains("call){0,7}")
        );
        let GrammarSpec::Lark(either) =
            calls_or_json_grammar(&tools, false, &json!({"type": "object"}))
        else {
            panic!()
        };
        assert!(either.starts_with("start: calls | answer") && either.contains("answer: %json"));
        let GrammarSpec::Lark(one) = forced_call_grammar(&tools, Some("b"), false) else {
            panic!()
        };
        assert!(
            !one.contains("\"const\":\"a\"")
                && one.contains("\"const\":\"b\"")
                && !one.contains("call){")
        );
    }

    proptest! {
        /// Any text: no panic, and text without a call marker stays content.
        #[test]
        fn never_panics(text in "(\\PC|<tool_call>|</tool_call>|<｜tool▁calls▁begin｜>|<｜tool▁sep｜>|\\[TOOL_CALLS\\]|\\[ARGS\\]|[{}\":;\n])*") {
            for f in [ToolCallFormat::Hermes, ToolCallFormat::Llama3Json, ToolCallFormat::DeepSeek, ToolCallFormat::Mistral] {
                let out = parse(f, &text);
                for c in &out.tool_calls {
                    prop_assert!(serde_json::from_str::<Value>(&c.arguments).is_ok());
                }
            }
        }
    }
}
