//! Text in and out: tokenizers and their pre-tokenizers, chat templates,
//! stop strings, tool-call formats, and constrained decoding (grammars).

pub(crate) mod chat;
pub(crate) mod constraint;
pub(crate) mod gbnf;
pub(crate) mod pre_tokenizer;
pub(crate) mod stop;
pub(crate) mod tokenizer;
pub(crate) mod tool_calls;
