//! Classifier latency, one core: p50 and p99 on a 2k-token prompt, and on a
//! conversation (system prompt, two earlier turns, a 2k-token final turn).
//! `cargo bench -p switchyard-router --bench classify`

use std::time::Instant;

use switchyard_router::classifier::Turn;

fn time(label: &str, mut f: impl FnMut()) {
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{label}: p50 {:.3} ms, p99 {:.3} ms",
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
}

fn main() {
    let c = switchyard_router::Classifier::embedded().expect("weights");
    // About 2,000 tokens of mixed prose, numbers and code.
    let unit = "The quarterly report shows revenue of 4,210 units across 12 regions; see `fn total(x: &[u32]) -> u32 { x.iter().sum() }`. ";
    let prompt = unit.repeat(70);
    time(
        &format!("classify {} chars (~2k tokens)", prompt.len()),
        || {
            std::hint::black_box(c.classify(std::hint::black_box(&prompt)));
        },
    );
    let system =
        "You are the support assistant for Acme Bank. Answer briefly, in the customer's language. "
            .repeat(10);
    let turns = [
        Turn {
            role: "system",
            content: &system,
        },
        Turn {
            role: "user",
            content: "Why was my card declined yesterday at the pharmacy?",
        },
        Turn {
            role: "assistant",
            content: &unit.repeat(5),
        },
        Turn {
            role: "user",
            content: &prompt,
        },
    ];
    time(
        "classify_chat (system prompt, 3 turns, ~2k-token final turn)",
        || {
            std::hint::black_box(c.classify_chat(std::hint::black_box(&turns)));
        },
    );
}
