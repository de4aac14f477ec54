//! Our CPU quantized matmul against candle's on the same GGUF blocks: the
//! default models' matrix shapes, one token (decode), 8 (a decode batch) and
//! 128 (a prefill chunk); alternating rounds, median milliseconds per call.
//! Both use the whole machine (ours: rayon's pool; candle: its own).
//! `cargo bench -p switchyard-engine --bench quant_matmul`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use switchyard_engine::internals::QuantMatrix;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cases = [
        ("SmolLM2 attn_q", GgmlDType::Q4_1, 576, 576),
        ("SmolLM2 ffn_up", GgmlDType::Q4_1, 1536, 576),
        ("SmolLM2 head", GgmlDType::Q8_0, 49152, 576),
        ("Gemma ffn_up", GgmlDType::Q5_0, 2048, 640),
        ("Gemma ffn_down", GgmlDType::Q6K, 640, 2048),
        ("Gemma attn_output", GgmlDType::Q4K, 640, 1024),
        ("Gemma attn_v", GgmlDType::Q8_0, 256, 640),
        ("Gemma head", GgmlDType::Q8_0, 262144, 640),
    ];
    println!("| matrix | type | rows × cols | tokens | candle ms | ours ms | speed-up |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for (name, dtype, rows, cols) in cases {
        let w = Tensor::randn(0f32, 0.3, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours = QuantMatrix::from_gguf(dtype, &q.data().unwrap(), rows, cols).unwrap();
        let theirs = QMatMul::from_qtensor(q).unwrap();
        for tokens in [1usize, 8, 128] {
            if rows * tokens > 8 << 20 {
                continue; // the head at prefill sizes: never one call
            }
            let x = Tensor::randn(0f32, 1.0, (tokens, cols), &Device::Cpu).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let rounds = if rows * tokens > 1 << 20 { 7 } else { 31 };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let t = Instant::now();
                std::hint::black_box(theirs.forward(&x).unwrap());
                a.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                std::hint::black_box(ours.matmul(&xs, tokens));
                b.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let (a, b) = (median(a), median(b));
            println!(
                "| {name} | {dtype:?} | {rows} × {cols} | {tokens} | {a:.3} | {b:.3} | {:.2}× |",
                a / b
            );
        }
    }
}
