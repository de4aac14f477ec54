//! Chat templates rendered with minijinja, as Hugging Face's `apply_chat_template`.
//!
//! The template comes from the GGUF's `tokenizer.chat_template`; a file without
//! one gets its family's built-in template (Gemma's below).

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::family::Arch;
use crate::text::tool_calls::ToolCallFormat;

/// Gemma's turn format (system text folded into the first user turn).
pub(crate) const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}\
{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\
{%- for message in loop_messages -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// ChatML, for Llama-architecture files that carry no template.
pub(crate) const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}\
{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}";

/// One chat message as templates see it (Hugging Face's message dicts).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's earlier tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
    /// A `tool` message's answer to this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool call in a chat history: `{"id", "type": "function", "function":
/// {"name", "arguments"}}` with the arguments as a JSON value, the way Hugging
/// Face templates read them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: ChatFunctionCall,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatFunctionCall {
    pub name: String,
    pub arguments: serde_json::Value,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }
}

#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template renders a `tools` list itself (else the engine writes
    /// its fallback tool prompt into the messages).
    supports_tools: bool,
    /// The call format the template teaches, read from its markers.
    tool_call_format: Option<ToolCallFormat>,
}

impl ChatTemplate {
    pub fn new(
        source: Option<String>,
        arch: Arch,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self> {
        let source = source.unwrap_or_else(|| arch.family().default_template.to_string());
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let supports_tools = source.contains("tools");
        let tool_call_format = ToolCallFormat::from_template(&source);
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            supports_tools,
            tool_call_format,
        })
    }

    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// The tool-call format the template's markers show, if any.
    pub fn tool_call_format(&self) -> Option<ToolCallFormat> {
        self.tool_call_format
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, None, None, add_generation_prompt)
    }

    /// Render with the `tools` variable (OpenAI/HF function definitions) and
    /// extra template variables (`chat_template_kwargs`, e.g. Qwen3's
    /// `enable_thinking`), which cannot override the ones set here.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let extra = minijinja::Value::from_serialize(kwargs);
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            ..extra
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwargs_reach_the_template_but_never_override_its_variables() {
        let t = ChatTemplate::new(
            Some("{{ greeting }} {{ bos_token }}{{ messages[0]['content'] }}".into()),
            Arch::Llama,
            "<s>".into(),
            "</s>".into(),
        )
        .unwrap();
        let kwargs = serde_json::json!({"greeting": "hi", "bos_token": "X"});
        let out = t
            .render_with(
                &[ChatMessage::new("user", "u")],
                None,
                kwargs.as_object(),
                true,
            )
            .unwrap();
        assert_eq!(out, "hi <s>u");
    }

    #[test]
    fn gemma_builtin_folds_system_into_first_turn() {
        let t = ChatTemplate::new(None, Arch::Gemma3, "<bos>".into(), "<eos>".into()).unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", " Hi "),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
