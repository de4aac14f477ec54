//! Grammar-constrained decoding with `llguidance` (the engine vLLM, SGLang
//! and llama.cpp use): JSON mode, JSON schemas, regular expressions, choices
//! and Lark grammars become a token mask applied before sampling.
//!
//! - [`GrammarSpec`] is what a request asks for; [`Constraints::compile`]
//!   turns it into a [`Grammar`] (a parser shared by the request's choices)
//!   or a clear error naming what cannot be enforced: a schema feature
//!   llguidance does not support is refused, never relaxed.
//! - Each sequence gets its own matcher ([`SeqConstraint`]); the sampler
//!   masks the logits with it, the sampled token advances it, and a matcher
//!   that can go no further ends the sequence with `stop`. Forks (n > 1) deep
//!   clone it; preemption keeps it (sampled tokens are never recomputed).
//! - The token trie is built from our tokenizer's byte strings, control
//!   tokens marked as special (llguidance's `\xFF` convention) so that text
//!   never matches them; every end-of-generation token counts as EOS.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::text::tokenizer::Tokenizer;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON schema (OpenAI's `json_schema`, vLLM's `guided_json`).
    JsonSchema(Value),
    /// A regular expression (vLLM's `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM's `guided_choice`).
    Choice(Vec<String>),
    /// A Lark grammar (vLLM's `guided_grammar`; llguidance's Lark dialect).
    Lark(String),
    /// A GBNF grammar (llama.cpp's EBNF, also taken by vLLM), translated to Lark.
    Gbnf(String),
}

/// A compiled grammar: cheap to clone, shared by a request's choices.
#[derive(Clone)]
pub struct Grammar {
    parser: Arc<TokenParser>,
    /// For `Debug`: what was asked for.
    spec: Arc<GrammarSpec>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Grammar").field(&self.spec).finish()
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.parser, &other.parser)
    }
}

impl Grammar {
    /// A fresh matcher for one sequence.
    pub(crate) fn start(&self) -> SeqConstraint {
        SeqConstraint {
            matcher: Matcher::new(Ok(self.parser.deep_clone())),
        }
    }
}

/// One model's grammar compiler; the token trie is built on first use.
pub struct Constraints {
    tokenizer: Arc<Tokenizer>,
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
}

impl Constraints {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Constraints {
            tokenizer,
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&ParserFactory> {
        self.factory
            .get_or_init(|| {
                let env: TokEnv = Arc::new(TokenizerBridge::new(&self.tokenizer));
                let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(|e| EngineError::Load(format!("constrained decoding: {e}")))
    }

    /// Compile a grammar; an invalid or unsupported one is an
    /// `InvalidRequest` that says why.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar> {
        let grammar = match spec {
            GrammarSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            GrammarSpec::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(EngineError::InvalidRequest(
                        "the JSON schema must be an object".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Choice(options) => {
                if options.is_empty() {
                    return Err(EngineError::InvalidRequest(
                        "guided_choice needs at least one option".into(),
                    ));
                }
                let alternatives: Vec<String> = options
                    .iter()
                    .map(|o| serde_json::to_string(o).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            GrammarSpec::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            GrammarSpec::Gbnf(gbnf) => {
                TopLevelGrammar::from_lark(crate::text::gbnf::to_lark(gbnf).map_err(|e| {
                    EngineError::InvalidRequest(format!("invalid GBNF grammar: {e}"))
                })?)
            }
        };
        let parser = self
            .factory()?
            .create_parser(grammar)
            .map_err(|e| EngineError::InvalidRequest(format!("invalid grammar: {e}")))?;
        Ok(Grammar {
            parser: Arc::new(parser),
            spec: Arc::new(spec.clone()),
        })
    }
}

/// JSON without free whitespace: a small model given the choice may emit
/// newlines until it runs out of tokens. A schema's own `x-guidance`
/// options win.
fn compact(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// One sequence's grammar state.
#[derive(Clone)]
pub(crate) struct SeqConstraint {
    matcher: Matcher,
}

impl SeqConstraint {
    /// The tokens allowed next, or why there are none.
    pub(crate) fn mask(&mut self) -> std::result::Result<SimpleVob, String> {
        self.matcher.compute_mask().map_err(|e| e.to_string())
    }

    /// Advance past a sampled token.
    pub(crate) fn advance(&mut self, token: u32) -> std::result::Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// Nothing more can follow: the output is complete.
    pub(crate) fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    pub(crate) fn fork(&self) -> Self {
        SeqConstraint {
            matcher: self.matcher.deep_clone(),
        }
    }
}

/// Our tokenizer as llguidance sees it: its token trie.
struct TokenizerBridge {
    trie: TokTrie,
}

impl TokenizerBridge {
    fn new(tokenizer: &Tokenizer) -> Self {
        let n = tokenizer.vocab_size();
        let eog = tokenizer.eog_tokens();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                // End-of-generation tokens are special even when a vocabulary
                // types them as text: text must never end the output.
                if tokenizer.is_control(id) || eog.contains(&id) {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let info = TokRxInfo::new(n as u32, eog.first().copied().unwrap_or(0));
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eog);
        TokenizerBridge { trie }
    }
}

impl TokenizerEnv for TokenizerBridge {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Greedy over the trie: exact for any byte string (partial UTF-8, no
    /// space prefix, special-token text stays text), but not the model's
    /// canonical tokenization, so llguidance does not force tokens from it.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Set every token the mask forbids to -inf.
/// Logits past the tokenizer's vocabulary (padded embedding rows) are
/// never allowed.
pub(crate) fn apply_mask(logits: &mut [f32], mask: &SimpleVob) {
    for (id, l) in logits.iter_mut().enumerate() {
        if id >= mask.len() || !mask.is_allowed(id as TokenId) {
            *l = f32::NEG_INFINITY;
        }
    }
}
