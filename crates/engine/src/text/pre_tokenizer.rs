//! How a GGUF `gpt2` (byte-level BPE) vocabulary splits text before merging,
//! chosen by `tokenizer.ggml.pre` as llama.cpp does (`llama_vocab_pre_type`).
//!
//! Each type is a sequence of regexes applied in turn; every match and every
//! gap between matches becomes a piece (Hugging Face's `Split` with
//! `Isolated`), then the pieces are byte-encoded (`ByteLevel` without its own
//! regex). The regexes are those of each model's `tokenizer.json`, so the
//! result matches Hugging Face `tokenizers` (checked against llama.cpp's
//! `ggml-vocab-*.gguf` fixtures in `tests/vocab_fixtures.rs`).

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};

/// GPT-2's own split (also the tail of several others).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3 (`llama-bpe`): case-insensitive contractions, digits in threes.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2/2.5/3: as Llama 3 but single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 3.5: letters keep their combining marks.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek-LLM / V2: Latin-like letters, ASCII and full-width punctuation, CJK, numbers.
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}+",
];
const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}",
];
/// DeepSeek-V3 / R1.
const DEEPSEEK3: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];
/// Mistral's Tekken (Nemo, Pixtral): case-run aware words, single digits.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One pre-tokenizer type.
#[derive(Debug, Clone, PartialEq)]
pub struct PreTokenizerSpec {
    /// llama.cpp's name of the type (for logs).
    pub kind: &'static str,
    pub regexes: Vec<&'static str>,
    /// A piece that is itself a vocabulary token is taken whole, unmerged (Llama 3).
    pub ignore_merges: bool,
    /// BOS is added unless the GGUF says otherwise.
    pub default_add_bos: bool,
}

impl PreTokenizerSpec {
    fn new(kind: &'static str, regexes: &[&'static str]) -> Self {
        PreTokenizerSpec {
            kind,
            regexes: regexes.to_vec(),
            ignore_merges: false,
            default_add_bos: false,
        }
    }

    /// The type a `tokenizer.ggml.pre` value names (`None`: the key is absent).
    pub fn from_gguf_pre(pre: Option<&str>) -> Result<Self> {
        let Some(pre) = pre else {
            tracing::warn!(
                "GGUF has no tokenizer.ggml.pre; using llama.cpp's `default` pre-tokenizer \
                 (tokenization may differ from the model's own)"
            );
            return Ok(Self::default_type());
        };
        let llama3 = PreTokenizerSpec {
            ignore_merges: true,
            default_add_bos: true,
            ..Self::new("llama3", &[LLAMA3])
        };
        Ok(match pre {
            "default" => Self::default_type(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => llama3,
            "dbrx" | "smaug-bpe" => Self::new("llama3", &[LLAMA3]),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" => Self::new("qwen2", &[QWEN2]),
            "qwen35" => Self::new("qwen35", &[QWEN35]),
            "deepseek-llm" => Self::new("deepseek-llm", DEEPSEEK_LLM),
            "deepseek-coder" => Self::new("deepseek-coder", DEEPSEEK_CODER),
            "deepseek-v3" => Self::new("deepseek-v3", DEEPSEEK3),
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "roberta-bpe" => {
                Self::new("gpt-2", &[GPT2])
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Self::new("smollm", &[r"\p{N}", GPT2]),
            "falcon" => Self::new(
                "falcon",
                &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            ),
            "tekken" => PreTokenizerSpec {
                ignore_merges: true,
                default_add_bos: true,
                ..Self::new("tekken", &[TEKKEN])
            },
            other => {
                return Err(EngineError::Load(format!(
                    "tokenizer: unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre); \
                     supported: default, llama-bpe/llama3, qwen2, qwen35, deepseek-llm, \
                     deepseek-coder, deepseek-v3, gpt-2, smollm, starcoder, falcon, tekken, \
                     and their aliases"
                )))
            }
        })
    }

    /// llama.cpp's fallback when a GGUF names no type.
    fn default_type() -> Self {
        Self::new(
            "default",
            &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        )
    }

    /// The `tokenizers` pre-tokenizer: each regex splits (keeping gaps), then
    /// byte-level encoding.
    pub fn build(&self) -> Result<PreTokenizerWrapper> {
        let mut steps = self
            .regexes
            .iter()
            .map(|r| {
                Split::new(
                    SplitPattern::Regex((*r).to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map(PreTokenizerWrapper::Split)
                .map_err(|e| EngineError::Load(format!("pre-tokenizer `{}`: {e}", self.kind)))
            })
            .collect::<Result<Vec<_>>>()?;
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, true, false,
        )));
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizerSpec::from_gguf_pre(Some(pre))
            .unwrap()
            .build()
            .unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    #[test]
    fn every_type_compiles() {
        for pre in [
            "default",
            "llama-bpe",
            "qwen2",
            "qwen35",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "gpt-2",
            "smollm",
            "falcon",
            "tekken",
            "dbrx",
        ] {
            PreTokenizerSpec::from_gguf_pre(Some(pre))
                .unwrap()
                .build()
                .unwrap_or_else(|e| panic!("{pre}: {e}"));
        }
    }

    #[test]
    fn digits_group_by_family() {
        // Llama 3 groups digits in threes; Qwen2 and SmolLM2 split them one by one.
        assert_eq!(pieces("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(pieces("qwen2", "123"), ["1", "2", "3"]);
        assert_eq!(pieces("smollm", "x 12"), ["x", "Ġ", "1", "2"]);
    }

    #[test]
    fn unknown_type_is_a_clear_error() {
        let e = PreTokenizerSpec::from_gguf_pre(Some("no-such-pre")).unwrap_err();
        assert!(e.to_string().contains("no-such-pre"), "{e}");
        assert_eq!(
            PreTokenizerSpec::from_gguf_pre(None).unwrap().kind,
            "default"
        );
    }
}
