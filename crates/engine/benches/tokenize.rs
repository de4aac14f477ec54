//! Tokenizing huge prompts with both default models' tokenizers (Gemma's
//! SentencePiece merge, SmolLM2's byte-level BPE): median of 3 runs per size.
//! `cargo bench -p switchyard-engine --bench tokenize` (after scripts/fetch-models);
//! `TOKENIZE_SIZES=10000,30000` picks the prompt sizes in characters.

use std::path::PathBuf;
use std::time::Instant;

use switchyard_engine::internals::gguf_file::Content;
use switchyard_engine::Tokenizer;

fn main() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let unit = "The quarterly report, filed on 2026-11-30, shows revenue of 4,210 units across 12 regions. ";
    for file in [
        "gemma-3-270m-q4_k_m.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        let mut f = std::fs::File::open(models.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}: run scripts/fetch-models first"));
        let content = Content::read(&mut f).expect("gguf");
        let tk = Tokenizer::from_gguf(&content).expect("tokenizer");
        let sizes: Vec<usize> = std::env::var("TOKENIZE_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
        for &size in &sizes {
            let text: String = unit
                .repeat(size / unit.len() + 1)
                .chars()
                .take(size)
                .collect();
            let mut times: Vec<f64> = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(
                        tk.encode(std::hint::black_box(&text), true)
                            .expect("encode"),
                    );
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let n = tk.encode(&text, true).expect("encode").len();
            println!("{file}: {size} chars -> {n} tokens in {:.3} s", times[1]);
        }
    }
}
