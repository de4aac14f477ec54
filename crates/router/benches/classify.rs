//! Classifier latency on a 2k-token prompt, one core: p50 and p99.
//! `cargo bench -p switchyard-router --bench classify`

use std::time::Instant;

fn main() {
    let c = switchyard_router::Classifier::embedded().expect("weights");
    // About 2,000 tokens of mixed prose, numbers and code.
    let unit = "The quarterly report shows revenue of 4,210 units across 12 regions; see `fn total(x: &[u32]) -> u32 { x.iter().sum() }`. ";
    let prompt = unit.repeat(70);
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(c.classify(std::hint::black_box(&prompt)));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "classify {} chars (~2k tokens): p50 {:.3} ms, p99 {:.3} ms",
        prompt.len(),
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
}
