//! Sampling one token from a full vocabulary (Gemma 3's 262144 and SmolLM2's
//! 49152 logits) under common settings, against the full-sort sampler the
//! engine used before (reimplemented here as the peer): median µs per token.
//! `cargo bench -p switchyard-engine --bench sampling`

use std::time::Instant;

use rand::{Rng, SeedableRng};
use switchyard_engine::internals::Sampler;
use switchyard_engine::SamplingParams;

/// The old way: sort every token by logit, then temperature, top-k, min-p,
/// top-p and a draw over the sorted list.
fn full_sort(l: &[f32], p: &SamplingParams, rng: &mut impl Rng) -> u32 {
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]));
    if p.top_k > 0 {
        idx.truncate(p.top_k);
    }
    let max = l[idx[0]];
    let mut probs: Vec<f32> = idx
        .iter()
        .map(|&i| ((l[i] - max) / p.temperature).exp())
        .collect();
    if p.min_p > 0.0 {
        let keep = probs.iter().take_while(|&&x| x >= p.min_p).count().max(1);
        probs.truncate(keep);
    }
    if p.top_p < 1.0 {
        let total: f32 = probs.iter().sum();
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&x| {
                acc += x;
                acc >= p.top_p * total
            })
            .map_or(probs.len(), |j| j + 1);
        probs.truncate(keep);
    }
    let mut r = rng.random::<f32>() * probs.iter().sum::<f32>();
    for (j, &x) in probs.iter().enumerate() {
        r -= x;
        if r <= 0.0 {
            return idx[j] as u32;
        }
    }
    idx[0] as u32
}

fn median_us(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..101)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[50]
}

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    println!("| vocab | settings | full sort µs | ours µs | speed-up |");
    println!("|---:|---|---:|---:|---:|");
    for vocab in [262_144usize, 49_152] {
        // Logits shaped like a model's: a few strong candidates, a long tail.
        let l: Vec<f32> = (0..vocab)
            .map(|i| rng.random::<f32>() * 8.0 + if i % 997 == 0 { 10.0 } else { 0.0 })
            .collect();
        let settings = [
            ("temperature 1", SamplingParams::default()),
            (
                "top_p 0.9",
                SamplingParams {
                    top_p: 0.9,
                    ..SamplingParams::default()
                },
            ),
            (
                "top_k 40",
                SamplingParams {
                    top_k: 40,
                    ..SamplingParams::default()
                },
            ),
            (
                "min_p 0.05",
                SamplingParams {
                    min_p: 0.05,
                    ..SamplingParams::default()
                },
            ),
        ];
        for (name, p) in settings {
            let mut peer_rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            let peer = median_us(|| {
                std::hint::black_box(full_sort(&l, &p, &mut peer_rng));
            });
            let mut s = Sampler::new(Some(1));
            let ours = median_us(|| {
                std::hint::black_box(s.sample(&l, &p, &[], 0, None));
            });
            println!(
                "| {vocab} | {name} | {peer:.0} | {ours:.0} | {:.1}× |",
                peer / ours
            );
        }
    }
}
