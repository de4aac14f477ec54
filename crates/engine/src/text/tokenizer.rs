//! Tokenizers built from GGUF metadata, matching llama.cpp's vocabularies.
//!
//! - `gpt2` vocabularies (SmolLM2, Llama 3, Qwen, DeepSeek): byte-level BPE
//!   from the vocab and merges, via the `tokenizers` crate, pre-tokenized the
//!   way `tokenizer.ggml.pre` names ([`crate::text::pre_tokenizer`]); control tokens split out.
//! - `llama` vocabularies (Gemma, Llama 2): SentencePiece-style BPE by score
//!   (repeatedly merge the adjacent pair whose concatenation is the
//!   best-scoring token), spaces as `▁`, `<0xXX>` byte fallback; control and
//!   user-defined tokens split out first, as llama.cpp does.
//!
//! Decoding is byte-exact for both: every token maps to the bytes it stands
//! for, so [`IncrementalDecoder`] can emit text as soon as it is valid UTF-8.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use tokenizers::AddedToken;

use crate::error::{EngineError, Result};
use crate::text::pre_tokenizer::PreTokenizerSpec;
use crate::weights::gguf::GgufMetadata;

const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

enum Kind {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm(Spm),
}

pub struct Tokenizer {
    kind: Kind,
    /// Bytes each token decodes to.
    token_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    bos: Option<u32>,
    add_bos: bool,
    /// Tokens that end generation (EOS and end-of-turn markers).
    eog: Vec<u32>,
    vocab: HashMap<String, u32>,
    /// Most bytes of input text one token can stand for (see [`Tokenizer::min_tokens`]).
    longest_token_bytes: usize,
}

impl Tokenizer {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = GgufMetadata::new(content);
        let load_err = |m: &str| EngineError::Load(format!("tokenizer: {m}"));
        let strings = |key: &str| md.strings(key);
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = md
            .i32s("tokenizer.ggml.token_type", TOKEN_TYPE_NORMAL)
            .unwrap_or_else(|| vec![TOKEN_TYPE_NORMAL; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(load_err(&format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let get_u32 = |k: &str| md.token_id(k);
        let get_bool = |k: &str| md.bool(k);
        let model = md.string("tokenizer.ggml.model").unwrap_or_default();
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let is_control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let specials: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
                ) && !tokens[i as usize].is_empty()
            })
            .collect();

        let (kind, token_bytes, default_add_bos): (Kind, Vec<Vec<u8>>, bool) = match model {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?;
                let merges: Vec<(String, String)> = merges
                    .iter()
                    .filter_map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                    })
                    .collect();
                let pre = PreTokenizerSpec::from_gguf_pre(md.string("tokenizer.ggml.pre"))?;
                let bpe = tokenizers::models::bpe::BPE::builder()
                    .vocab_and_merges(
                        vocab.clone().into_iter().collect::<ahash::AHashMap<_, _>>(),
                        merges,
                    )
                    .ignore_merges(pre.ignore_merges)
                    .build()
                    .map_err(|e| load_err(&e.to_string()))?;
                let mut tk = tokenizers::Tokenizer::new(bpe);
                tk.with_pre_tokenizer(Some(pre.build()?));
                let added: Vec<AddedToken> = specials
                    .iter()
                    .map(|&i| AddedToken::from(tokens[i as usize].clone(), true))
                    .collect();
                tk.add_special_tokens(&added);
                let unicode_to_byte = gpt2_unicode_to_byte();
                let bytes = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, &ty)| {
                        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                            t.as_bytes().to_vec()
                        } else {
                            t.chars()
                                .map(|c| unicode_to_byte.get(&c).copied().unwrap_or(b'?'))
                                .collect()
                        }
                    })
                    .collect();
                (Kind::Bpe(Box::new(tk)), bytes, pre.default_add_bos)
            }
            "llama" | "gemma" => {
                let scores: Vec<f32> = match md.f32s("tokenizer.ggml.scores", 0.0) {
                    Some(v) => v,
                    None => vec![0.0; tokens.len()],
                };
                let bytes = tokens.iter().map(|t| spm_token_bytes(t)).collect();
                let byte_tokens: Vec<Option<u32>> = (0..=255u8)
                    .map(|b| vocab.get(&format!("<0x{b:02X}>")).copied())
                    .collect();
                let add_space_prefix = get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let mut specials_by_first_byte: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
                for &i in &specials {
                    let s = tokens[i as usize].clone();
                    specials_by_first_byte
                        .entry(s.as_bytes()[0])
                        .or_default()
                        .push((s, i));
                }
                for list in specials_by_first_byte.values_mut() {
                    list.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                }
                let unk = get_u32("tokenizer.ggml.unknown_token_id");
                let spm = Spm {
                    scores,
                    byte_tokens,
                    add_space_prefix,
                    specials_by_first_byte,
                    unk,
                };
                (Kind::Spm(spm), bytes, true)
            }
            other => return Err(load_err(&format!("unsupported tokenizer model `{other}`"))),
        };
        let eos = get_u32("tokenizer.ggml.eos_token_id");
        let mut eog: Vec<u32> = eos.into_iter().collect();
        for marker in [
            "<end_of_turn>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|endoftext|>",
            "<|end|>",
            "<eos>",
        ] {
            if let Some(&id) = vocab.get(marker) {
                if !eog.contains(&id) {
                    eog.push(id);
                }
            }
        }
        Ok(Tokenizer {
            longest_token_bytes: longest_token_bytes(&vocab, &token_bytes),
            kind,
            token_bytes,
            is_control,
            bos: get_u32("tokenizer.ggml.bos_token_id"),
            add_bos: get_bool("tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos),
            eog,
            vocab,
        })
    }

    /// From a Hugging Face `tokenizer.json`, with `tokenizer_config.json`'s
    /// BOS settings and the model's end-of-generation ids.
    pub fn from_hf(
        tokenizer_json: &std::path::Path,
        tokenizer_config: Option<&serde_json::Value>,
        eos_ids: &[u32],
    ) -> Result<Self> {
        let err = |m: String| EngineError::Load(format!("tokenizer: {m}"));
        let tk = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| err(format!("{}: {e}", tokenizer_json.display())))?;
        let raw: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tokenizer_json).map_err(|e| err(e.to_string()))?,
        )
        .map_err(|e| err(e.to_string()))?;
        let byte_level = raw["decoder"]["type"] == "ByteLevel"
            || raw["pre_tokenizer"].to_string().contains("ByteLevel");
        let n = tk.get_vocab_size(true);
        let added = tk.get_added_tokens_decoder();
        let unicode_to_byte = gpt2_unicode_to_byte();
        let mut token_bytes = Vec::with_capacity(n);
        let mut is_control = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let text = tk.id_to_token(id).unwrap_or_default();
            match added.get(&id) {
                Some(a) => {
                    token_bytes.push(a.content.as_bytes().to_vec());
                    is_control.push(a.special);
                }
                None => {
                    token_bytes.push(if byte_level {
                        text.chars()
                            .map(|c| unicode_to_byte.get(&c).copied().unwrap_or(b'?'))
                            .collect()
                    } else {
                        spm_token_bytes(&text)
                    });
                    is_control.push(false);
                }
            }
        }
        let vocab: HashMap<String, u32> = tk.get_vocab(true).into_iter().collect();
        let token_text = |v: &serde_json::Value| -> Option<String> {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v["content"].as_str().map(str::to_string))
        };
        let bos = tokenizer_config
            .and_then(|c| token_text(&c["bos_token"]))
            .and_then(|t| vocab.get(&t).copied());
        let add_bos = tokenizer_config
            .and_then(|c| c["add_bos_token"].as_bool())
            .unwrap_or(false);
        let mut eog: Vec<u32> = eos_ids.to_vec();
        if let Some(e) = tokenizer_config
            .and_then(|c| token_text(&c["eos_token"]))
            .and_then(|t| vocab.get(&t).copied())
        {
            if !eog.contains(&e) {
                eog.push(e);
            }
        }
        Ok(Tokenizer {
            longest_token_bytes: if text_only_grows(&raw) {
                longest_token_bytes(&vocab, &token_bytes)
            } else {
                usize::MAX // no bound: `min_tokens` is 0
            },
            kind: Kind::Bpe(Box::new(tk)),
            token_bytes,
            is_control,
            bos,
            add_bos,
            eog,
            vocab,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Tokens that end generation by default.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    pub fn bos_text(&self) -> Option<String> {
        self.bos
            .map(|b| String::from_utf8_lossy(&self.token_bytes[b as usize]).into_owned())
    }

    pub fn eos_text(&self) -> Option<String> {
        self.eog
            .first()
            .map(|&e| String::from_utf8_lossy(&self.token_bytes[e as usize]).into_owned())
    }

    /// A lower bound on the number of tokens any encoding of `text_bytes`
    /// bytes of text has: no token stands for more than the longest token's
    /// bytes. Lets a caller refuse a prompt that cannot fit a context window
    /// without tokenizing it.
    pub fn min_tokens(&self, text_bytes: usize) -> usize {
        text_bytes / self.longest_token_bytes.max(1)
    }

    /// Encode text; special tokens written in the text become their ids.
    /// `add_bos` adds BOS when the vocabulary asks for it and the text lacks it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let bos_wanted = add_bos && self.add_bos && self.bos.is_some();
        match &self.kind {
            Kind::Bpe(tk) => {
                let enc = tk
                    .encode(text, false)
                    .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Kind::Spm(spm) => spm.encode(text, &self.vocab, &mut ids),
        }
        if bos_wanted && ids.first() != self.bos.as_ref() {
            ids.insert(0, self.bos.unwrap_or_default());
        }
        Ok(ids)
    }

    /// The bytes a token stands for.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(|b| b.as_slice())
            .unwrap_or(&[])
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// Decode ids to text (invalid UTF-8 replaced), optionally skipping control tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_control(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The most input bytes one token can cover: its vocabulary string or its
/// decoded bytes, whichever is longer. A bound only where the text reaches
/// the vocabulary without shrinking (see [`text_only_grows`]).
fn longest_token_bytes(vocab: &HashMap<String, u32>, token_bytes: &[Vec<u8>]) -> usize {
    let by_text = vocab.keys().map(String::len).max().unwrap_or(1);
    let by_bytes = token_bytes.iter().map(Vec::len).max().unwrap_or(1);
    by_text.max(by_bytes).max(1)
}

/// Can a `tokenizer.json` pipeline only keep or lengthen the input before
/// BPE? Normalizers (composition, stripping), pre-tokenizers that drop
/// whitespace or delimiters, added tokens that swallow neighbouring
/// whitespace, `fuse_unk`, and non-BPE models can all shrink it, and then no
/// bound on the token count follows from the text's length.
fn text_only_grows(raw: &serde_json::Value) -> bool {
    let pre = raw["pre_tokenizer"].to_string();
    let strips = |t: &serde_json::Value| t["lstrip"] == true || t["rstrip"] == true;
    raw["normalizer"].is_null()
        && raw["model"]["type"] == "BPE"
        && raw["model"]["fuse_unk"] != true
        && !["Whitespace", "Bert", "\"Removed\""]
            .iter()
            .any(|p| pre.contains(p))
        && !raw["added_tokens"]
            .as_array()
            .is_some_and(|a| a.iter().any(strips))
}

/// SentencePiece-style BPE by token score, as in llama.cpp's `llm_tokenizer_spm`.
struct Spm {
    scores: Vec<f32>,
    byte_tokens: Vec<Option<u32>>,
    add_space_prefix: bool,
    /// Special token strings by first byte, longest first.
    specials_by_first_byte: HashMap<u8, Vec<(String, u32)>>,
    unk: Option<u32>,
}

impl Spm {
    fn encode(&self, text: &str, vocab: &HashMap<String, u32>, out: &mut Vec<u32>) {
        // One left-to-right scan; at each char boundary try the specials that
        // start with this byte, longest first.
        let bytes = text.as_bytes();
        let mut plain_start = 0;
        let mut first = true;
        let mut i = 0;
        while i < bytes.len() {
            let hit = self
                .specials_by_first_byte
                .get(&bytes[i])
                .and_then(|cands| {
                    cands
                        .iter()
                        .find(|(s, _)| bytes[i..].starts_with(s.as_bytes()))
                });
            match hit {
                Some((s, id)) if text.is_char_boundary(i) => {
                    if plain_start < i {
                        self.encode_piece(
                            &text[plain_start..i],
                            first && self.add_space_prefix,
                            vocab,
                            out,
                        );
                    }
                    first = false;
                    out.push(*id);
                    i += s.len();
                    plain_start = i;
                }
                _ => i += 1,
            }
        }
        if plain_start < bytes.len() {
            self.encode_piece(
                &text[plain_start..],
                first && self.add_space_prefix,
                vocab,
                out,
            );
        }
    }

    fn encode_piece(
        &self,
        text: &str,
        space_prefix: bool,
        vocab: &HashMap<String, u32>,
        out: &mut Vec<u32>,
    ) {
        let mut normalized = String::with_capacity(text.len() + 3);
        if space_prefix {
            normalized.push('▁');
        }
        normalized.push_str(&text.replace(' ', "▁"));
        let syms = self.merge(&normalized, vocab);
        for piece in syms {
            let piece = &normalized[piece];
            match vocab.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        if let Some(id) = self.byte_tokens[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}

impl Spm {
    /// Merge the characters of `text` into tokens: repeatedly join the
    /// adjacent pair whose concatenation is the best-scoring token (leftmost
    /// on ties). llama.cpp's `llm_tokenizer_spm`: symbols in a linked list, a
    /// max-heap of candidate pairs, stale pairs skipped when popped, so a
    /// piece of n characters costs O(n log n) rather than O(n²).
    fn merge(&self, text: &str, vocab: &HashMap<String, u32>) -> Vec<std::ops::Range<usize>> {
        // Symbols as byte ranges into `text`, one per char to start with; a
        // symbol merged into its left neighbour becomes empty.
        let mut syms: Vec<SpmSymbol> = text
            .char_indices()
            .enumerate()
            .map(|(i, (at, c))| SpmSymbol {
                range: at..at + c.len_utf8(),
                prev: i.checked_sub(1),
                next: i + 1,
            })
            .collect();
        let mut heap = std::collections::BinaryHeap::new();
        let candidate =
            |syms: &[SpmSymbol], left: usize, heap: &mut std::collections::BinaryHeap<SpmPair>| {
                let Some(right) = syms.get(syms[left].next) else {
                    return;
                };
                let range = syms[left].range.start..right.range.end;
                if let Some(&id) = vocab.get(&text[range.clone()]) {
                    // `+ 0.0` turns -0.0 into 0.0: equal scores tie (leftmost wins).
                    let score = self.scores.get(id as usize).copied();
                    heap.push(SpmPair {
                        score: score.unwrap_or(f32::NEG_INFINITY) + 0.0,
                        left,
                        len: range.len(),
                    });
                }
            };
        for left in 0..syms.len() {
            candidate(&syms, left, &mut heap);
        }
        while let Some(pair) = heap.pop() {
            let right = syms[pair.left].next;
            // Stale: one side was merged away or grew since the pair was pushed.
            let (l, r) = (&syms[pair.left].range, syms.get(right).map(|s| &s.range));
            if l.is_empty() || r.is_none_or(|r| r.is_empty() || l.len() + r.len() != pair.len) {
                continue;
            }
            let absorbed = std::mem::replace(&mut syms[right].range, 0..0);
            let after = syms[right].next;
            syms[pair.left].range.end = absorbed.end;
            syms[pair.left].next = after;
            if let Some(s) = syms.get_mut(after) {
                s.prev = Some(pair.left);
            }
            if let Some(prev) = syms[pair.left].prev {
                candidate(&syms, prev, &mut heap);
            }
            candidate(&syms, pair.left, &mut heap);
        }
        syms.into_iter()
            .map(|s| s.range)
            .filter(|r| !r.is_empty())
            .collect()
    }
}

struct SpmSymbol {
    range: std::ops::Range<usize>,
    prev: Option<usize>,
    /// Index of the next live symbol (`len` past the end).
    next: usize,
}

/// A candidate merge of symbol `left` with its right neighbour, `len` bytes in all.
struct SpmPair {
    score: f32,
    left: usize,
    len: usize,
}

impl Ord for SpmPair {
    /// Best score first; on ties the leftmost pair.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for SpmPair {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SpmPair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for SpmPair {}

fn spm_token_bytes(token: &str) -> Vec<u8> {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        if let Ok(b) = u8::from_str_radix(&token[3..5], 16) {
            return vec![b];
        }
    }
    token.replace('▁', " ").into_bytes()
}

/// GPT-2's byte-to-unicode table: the printable character standing for each byte.
pub fn gpt2_byte_to_unicode() -> Vec<char> {
    let mut inverse = vec!['?'; 256];
    for (c, b) in gpt2_unicode_to_byte() {
        inverse[b as usize] = c;
    }
    inverse
}

/// GPT-2's byte-to-unicode table, inverted.
fn gpt2_unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::new();
    let mut extra = 0;
    for b in 0..=255u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).unwrap_or('?'), b as u8);
    }
    map
}

/// Turns a stream of token bytes into text, holding back an incomplete UTF-8
/// sequence until its last byte arrives.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flush whatever is left (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_decoder_waits_for_complete_chars() {
        let mut d = IncrementalDecoder::default();
        let euro = "€".as_bytes();
        assert_eq!(d.push(&euro[..1]), "");
        assert_eq!(d.push(&euro[1..2]), "");
        assert_eq!(d.push(&euro[2..]), "€");
        assert_eq!(d.push(b"a\xff"), "a\u{FFFD}");
        assert_eq!(d.push(&euro[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    /// The quadratic greedy merge the heap version replaced: scan every
    /// adjacent pair, join the best-scoring one (leftmost on ties), repeat.
    fn merge_by_scan(spm: &Spm, text: &str, vocab: &HashMap<String, u32>) -> Vec<String> {
        let mut syms: Vec<(usize, usize)> = text
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&id) = vocab.get(&text[syms[i].0..syms[i + 1].1]) {
                    let score = spm.scores[id as usize];
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            syms[i].1 = syms[i + 1].1;
            syms.remove(i + 1);
        }
        syms.into_iter()
            .map(|(a, b)| text[a..b].to_string())
            .collect()
    }

    fn spm_with(vocab: &[(&str, f32)]) -> (Spm, HashMap<String, u32>) {
        let map = vocab
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.to_string(), i as u32))
            .collect();
        let spm = Spm {
            scores: vocab.iter().map(|&(_, s)| s).collect(),
            byte_tokens: vec![None; 256],
            add_space_prefix: false,
            specials_by_first_byte: HashMap::new(),
            unk: None,
        };
        (spm, map)
    }

    proptest::proptest! {
        /// The heap merge picks exactly the pairs the quadratic scan picks,
        /// ties included (scores drawn from a few values so ties are common).
        #[test]
        fn heap_merge_equals_quadratic_scan(
            pieces in proptest::collection::vec(("[ab▁é]{2,4}", 0usize..5), 1..24),
            text in "[ab▁é]{0,40}",
        ) {
            // SentencePiece scores its first piece -0.0: it must tie with 0.0.
            let score = [-0.0f32, 0.0, 1.0, 2.0, 3.0];
            let vocab: Vec<(&str, f32)> = pieces.iter().map(|(p, s)| (p.as_str(), score[*s])).collect();
            let (spm, map) = spm_with(&vocab);
            let heap: Vec<String> = spm.merge(&text, &map).into_iter().map(|r| text[r].to_string()).collect();
            proptest::prop_assert_eq!(heap, merge_by_scan(&spm, &text, &map));
        }
    }

    #[test]
    fn gpt2_table_is_a_bijection() {
        let m = gpt2_unicode_to_byte();
        assert_eq!(m.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
    }
}
