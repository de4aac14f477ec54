//! GGUF tokenizers against llama.cpp's tokenizer test set: real vocabularies
//! (`ggml-vocab-*.gguf`: Llama 3, Qwen2, Qwen3.5, DeepSeek, GPT-2, StarCoder,
//! Falcon, Llama 2 SentencePiece...) with input strings and the ids Hugging
//! Face `tokenizers` gives for them, written by llama.cpp's
//! `convert_hf_to_gguf_update.py`. `scripts/fetch-models --vocab-fixtures`
//! puts them in `models/vocab/` (from the pinned llama-cpp-python sdist).

use std::path::PathBuf;

use switchyard_engine::Tokenizer;

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn vocab_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/vocab");
    assert!(
        dir.join("ggml-vocab-llama-bpe.gguf").exists(),
        "llama.cpp's vocab fixtures are missing from {}: run `scripts/fetch-models --vocab-fixtures`",
        dir.display()
    );
    dir
}

/// Every fixture string of `name` tokenizes to the reference ids and decodes back.
fn check(name: &str) {
    let dir = vocab_dir();
    let path = dir.join(format!("ggml-vocab-{name}.gguf"));
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let inputs = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let outputs = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let inputs: Vec<&str> = inputs.split(SEPARATOR).collect();
    let outputs: Vec<&str> = outputs.split('\n').collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: fixture files disagree"
    );
    let mut failures = Vec::new();
    for (text, want) in inputs.iter().zip(&outputs) {
        let want: Vec<u32> = want
            .split_whitespace()
            .map(|id| id.parse().unwrap())
            .collect();
        // llama.cpp's test-tokenizer-0: no BOS, no special-token parsing (no
        // fixture string contains one).
        let got = tokenizer.encode(text, false).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n    want {want:?}\n    got  {got:?}"));
        }
        // SentencePiece vocabularies prepend a space that decoding gives back.
        let decoded = tokenizer.decode(&got, false);
        assert!(
            decoded == *text || decoded.strip_prefix(' ') == Some(text),
            "{name}: {text:?} decodes to {decoded:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} strings differ from Hugging Face tokenizers:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

#[test]
fn llama3_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn qwen35() {
    check("qwen35");
}

#[test]
fn deepseek_llm() {
    check("deepseek-llm");
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder");
}

#[test]
fn gpt2() {
    check("gpt-2");
}

#[test]
fn starcoder_refact_command_r_mpt_falcon() {
    for name in ["starcoder", "refact", "command-r", "mpt", "falcon"] {
        check(name);
    }
}

#[test]
fn llama_sentencepiece() {
    check("llama-spm");
    check("phi-3");
}
