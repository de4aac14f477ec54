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

use serde_json::Value;

use crate::model::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    Hermes,
    Llama3Json,
    DeepSeek,
}

impl ToolCallFormat {
    /// The format a model family emits.
    pub fn for_arch(arch: Arch) -> Option<ToolCallFormat> {
        match arch {
            Arch::Qwen2 | Arch::Qwen3 => Some(ToolCallFormat::Hermes),
            Arch::Llama => Some(ToolCallFormat::Llama3Json),
            Arch::DeepSeek => Some(ToolCallFormat::DeepSeek),
            Arch::Gemma3 => None,
        }
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

pub fn parse(format: ToolCallFormat, text: &str) -> ParsedOutput {
    match format {
        ToolCallFormat::Hermes => parse_tagged(text, "<tool_call>", "</tool_call>", |body| {
            serde_json::from_str::<Value>(body.trim())
                .ok()
                .and_then(|v| call_from_json(&v, "arguments"))
        }),
        ToolCallFormat::DeepSeek => parse_deepseek(text),
        ToolCallFormat::Llama3Json => parse_llama3(text),
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
    out.content.push_str(rest);
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

    proptest! {
        /// Any text: no panic, and text without a call marker stays content.
        #[test]
        fn never_panics(text in "(\\PC|<tool_call>|</tool_call>|<｜tool▁calls▁begin｜>|<｜tool▁sep｜>|[{}\":;\n])*") {
            for f in [ToolCallFormat::Hermes, ToolCallFormat::Llama3Json, ToolCallFormat::DeepSeek] {
                let out = parse(f, &text);
                for c in &out.tool_calls {
                    prop_assert!(serde_json::from_str::<Value>(&c.arguments).is_ok());
                }
            }
        }
    }
}
