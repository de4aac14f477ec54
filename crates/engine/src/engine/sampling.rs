//! Logit processing and sampling, per sequence.
//!
//! Order, as in vLLM: penalties and logit bias on the raw logits, then the
//! grammar's mask (structured outputs), then temperature, then top-k / top-p
//! / min-p truncation, then a draw from the sequence's own seeded RNG (so a
//! seed gives the same output batched or not). Temperature 0 is greedy.
//! Logprobs are of the raw model distribution.

use llguidance::toktrie::SimpleVob;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::text::constraint::{apply_mask, Grammar};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Number of choices (n > 1 shares the prompt's KV blocks).
    pub n: usize,
    pub max_tokens: usize,
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// HF-style multiplicative penalty on tokens seen in prompt or output (1 = off).
    pub repetition_penalty: f32,
    /// OpenAI-style additive penalties on output tokens.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Strings that end generation; they are not part of the output.
    pub stop: Vec<String>,
    /// Token ids that end generation, besides the model's end-of-generation tokens.
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the chosen token's logprob and this many alternatives.
    pub logprobs: Option<usize>,
    /// Prefix-cache isolation (vLLM's `cache_salt`): KV blocks are shared
    /// only between requests with the same salt (or none).
    pub cache_salt: Option<String>,
    /// Structured output: only tokens the grammar allows are sampled, and
    /// the sequence stops when the grammar is complete.
    pub grammar: Option<Grammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            max_tokens: 256,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            cache_salt: None,
            grammar: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        }
    }

    /// Reject values no sampler can honour.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if self.n == 0 {
            return bad("n must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The most likely alternatives, best first.
    pub top: Vec<(u32, f32)>,
    /// Entropy of the model's distribution at this step, in nats (before
    /// penalties, bias, grammar and temperature, like `logprob`).
    pub entropy: f32,
}

#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
}

pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        Sampler { rng }
    }

    /// Pick the next token. `context` is prompt + output so far; `output_start`
    /// is where the output begins in it.
    /// Sample one token; `mask` (a grammar's allowed tokens) must allow at
    /// least one.
    pub fn sample(
        &mut self,
        logits: &[f32],
        p: &SamplingParams,
        context: &[u32],
        output_start: usize,
        mask: Option<&SimpleVob>,
    ) -> Sampled {
        let logprob_info = p.logprobs.map(|k| (log_softmax(logits), k));
        let mut l = logits.to_vec();
        apply_penalties(&mut l, p, context, output_start);
        for &(tok, bias) in &p.logit_bias {
            if let Some(x) = l.get_mut(tok as usize) {
                *x += bias;
            }
        }
        if let Some(mask) = mask {
            apply_mask(&mut l, mask);
        }
        let token = if p.temperature == 0.0 {
            argmax(&l)
        } else {
            self.draw(&mut l, p)
        };
        let logprob = logprob_info.map(|(lp, k)| TokenLogprob {
            token,
            logprob: lp[token as usize],
            top: top_k_indices(&lp, k)
                .into_iter()
                .map(|i| (i as u32, lp[i]))
                .collect(),
            entropy: entropy(&lp),
        });
        Sampled { token, logprob }
    }

    /// Temperature, then top-k, min-p and top-p (vLLM's order; see
    /// [`candidates`]), then a draw. Nothing is sorted unless a rule needs an order: top-k selects
    /// its k (then sorts those), min-p is a threshold, and top-p sorts only
    /// a growing prefix until it holds the nucleus — a 262k vocabulary is
    /// never sorted whole.
    fn draw(&mut self, l: &mut [f32], p: &SamplingParams) -> u32 {
        if p.top_k == 0 && p.top_p >= 1.0 {
            return self.draw_all(l, p);
        }
        let (idx, w) = candidates(l, p);
        let total: f32 = w.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (j, &x) in w.iter().enumerate() {
            r -= x;
            if r <= 0.0 {
                return idx[j] as u32;
            }
        }
        // Rounding left a little mass: the last candidate that has any (never
        // one a grammar masked to probability 0).
        let last = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
        idx[last] as u32
    }
}

impl Sampler {
    /// Temperature (and min-p) alone: one pass for the weights, one for the
    /// draw, in vocabulary order; no candidate list.
    fn draw_all(&mut self, l: &mut [f32], p: &SamplingParams) -> u32 {
        let inv_t = 1.0 / p.temperature;
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for x in l.iter_mut() {
            let w = ((*x - max) * inv_t).exp();
            *x = if w >= p.min_p { w } else { 0.0 };
            total += *x;
        }
        let mut r = self.rng.random::<f32>() * total;
        for (i, &w) in l.iter().enumerate() {
            r -= w;
            if r <= 0.0 && w > 0.0 {
                return i as u32;
            }
        }
        // Rounding left a little mass: the last token that has any.
        l.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }
}

/// The tokens a draw chooses from and their unnormalised probabilities.
fn candidates(l: &[f32], p: &SamplingParams) -> (Vec<usize>, Vec<f32>) {
    let inv_t = 1.0 / p.temperature;
    // Candidates: top-k's, best first, or every token in vocabulary order.
    let (mut idx, sorted) = if p.top_k > 0 && p.top_k < l.len() {
        (top_k_indices(l, p.top_k), true)
    } else {
        ((0..l.len()).collect::<Vec<usize>>(), false)
    };
    let max = idx.iter().map(|&i| l[i]).fold(f32::NEG_INFINITY, f32::max);
    // Unnormalised probabilities (the best candidate's is 1).
    let mut w: Vec<f32> = idx.iter().map(|&i| ((l[i] - max) * inv_t).exp()).collect();
    // min-p: drop tokens below min_p × the best probability.
    if p.min_p > 0.0 {
        let floor = p.min_p;
        let mut keep = 0;
        for j in 0..idx.len() {
            if w[j] >= floor {
                idx[keep] = idx[j];
                w[keep] = w[j];
                keep += 1;
            }
        }
        idx.truncate(keep.max(1));
        w.truncate(keep.max(1));
    }
    // top-p: the smallest best-first prefix whose mass reaches top_p.
    if p.top_p < 1.0 {
        if !sorted {
            sort_prefix_holding(&mut idx, &mut w, p.top_p);
        }
        let total: f32 = w.iter().sum();
        let target = p.top_p * total;
        let mut acc = 0.0;
        let mut keep = w.len();
        for (j, &x) in w.iter().enumerate() {
            acc += x;
            if acc >= target {
                keep = j + 1;
                break;
            }
        }
        idx.truncate(keep);
        w.truncate(keep);
    }
    (idx, w)
}

/// Reorder `idx`/`w` so that a best-first prefix holding at least `share` of
/// the total weight comes first, sorted; the rest stays unsorted behind it.
/// Partial selection with a growing prefix: a nucleus is usually tens of
/// tokens, so this costs a few passes over the vocabulary instead of a sort.
fn sort_prefix_holding(idx: &mut [usize], w: &mut [f32], share: f32) {
    let total: f32 = w.iter().sum();
    let target = share * total;
    let mut pairs: Vec<(f32, usize)> = w.iter().copied().zip(idx.iter().copied()).collect();
    let n = pairs.len();
    let mut k = 64.min(n);
    loop {
        if k < n {
            pairs.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        }
        pairs[..k].sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mass: f32 = pairs[..k].iter().map(|x| x.0).sum();
        if mass >= target || k == n {
            break;
        }
        k = (k * 8).min(n);
    }
    for (j, (x, i)) in pairs.into_iter().enumerate() {
        w[j] = x;
        idx[j] = i;
    }
}

fn apply_penalties(l: &mut [f32], p: &SamplingParams, context: &[u32], output_start: usize) {
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; l.len()];
        for &t in context {
            if let Some(s) = seen.get_mut(t as usize) {
                if !*s {
                    *s = true;
                    let x = &mut l[t as usize];
                    *x = if *x > 0.0 {
                        *x / p.repetition_penalty
                    } else {
                        *x * p.repetition_penalty
                    };
                }
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in &context[output_start.min(context.len())..] {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(x) = l.get_mut(t as usize) {
                *x -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
    }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(l: &[f32]) -> Vec<f32> {
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = l.iter().map(|&x| (x - max).exp()).sum::<f32>().ln() + max;
    l.iter().map(|&x| x - lse).collect()
}

/// Entropy, in nats, of the distribution whose log-probabilities are `lp`
/// (masked tokens, at −∞, contribute nothing).
fn entropy(lp: &[f32]) -> f32 {
    -lp.iter()
        .filter(|x| x.is_finite())
        .map(|&x| x.exp() * x)
        .sum::<f32>()
}

/// Indices of the k largest values, largest first.
fn top_k_indices(l: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(l.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.select_nth_unstable_by(k - 1, |&a, &b| l[b].total_cmp(&l[a]));
    idx.truncate(k);
    idx.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_and_min_p_draw_in_proportion() {
        let l = [0.0f32, 2f32.ln(), 4f32.ln()];
        let freq = |p: &SamplingParams| {
            let mut s = Sampler::new(Some(3));
            let mut n = [0usize; 3];
            for _ in 0..20_000 {
                n[s.sample(&l, p, &[], 0, None).token as usize] += 1;
            }
            n.map(|c| c as f64 / 20_000.0)
        };
        let f = freq(&SamplingParams::default());
        for (got, want) in f.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
            assert!((got - want).abs() < 0.02, "{f:?}");
        }
        // min_p 0.4: the token at a quarter of the best probability goes.
        let f = freq(&SamplingParams {
            min_p: 0.4,
            ..SamplingParams::default()
        });
        assert_eq!(f[0], 0.0);
        assert!(
            (f[1] - 1.0 / 3.0).abs() < 0.02 && (f[2] - 2.0 / 3.0).abs() < 0.02,
            "{f:?}"
        );
    }

    /// The candidate set as the rules define it, by sorting everything.
    fn reference_candidates(l: &[f32], p: &SamplingParams) -> Vec<(usize, f32)> {
        let mut all: Vec<usize> = (0..l.len()).collect();
        all.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        if p.top_k > 0 {
            all.truncate(p.top_k);
        }
        let max = l[all[0]];
        let mut c: Vec<(usize, f32)> = all
            .iter()
            .map(|&i| (i, ((l[i] - max) * (1.0 / p.temperature)).exp()))
            .collect();
        if p.min_p > 0.0 {
            c.retain(|x| x.1 >= p.min_p);
        }
        if p.top_p < 1.0 {
            let total: f32 = c.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let keep = c
                .iter()
                .position(|x| {
                    acc += x.1;
                    acc >= p.top_p * total
                })
                .map_or(c.len(), |j| j + 1);
            c.truncate(keep);
        }
        c.sort_by_key(|x| x.0);
        c
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Partial selection keeps exactly the tokens (and weights) a full
        /// sort would, for any mix of top-k, min-p and top-p.
        #[test]
        fn candidates_match_a_full_sort(
            // Distinct logits, so that "the k best" has one answer.
            seed in 0u64..1_000_000,
            n in 1usize..3000,
            top_k in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..50],
            top_p in proptest::prop_oneof![proptest::strategy::Just(1.0f32), 0.05f32..0.99],
            min_p in proptest::prop_oneof![proptest::strategy::Just(0.0f32), 0.001f32..0.5],
            temperature in 0.2f32..2.0,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut l: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
            for x in l.iter_mut() {
                *x += rng.random::<f32>() * 12.0;
            }
            let p = SamplingParams { top_k, top_p, min_p, temperature, ..SamplingParams::default() };
            let (idx, w) = candidates(&l, &p);
            let mut got: Vec<(usize, f32)> = idx.into_iter().zip(w).collect();
            got.sort_by_key(|x| x.0);
            // Summation order may move the top-p boundary by a rounding
            // error: the result lies between the nuclei of top_p ∓ 1e-5.
            let nudged = |f: f32| SamplingParams { top_p: if top_p < 1.0 { (top_p * f).min(0.999_999) } else { 1.0 }, ..p.clone() };
            let lo = reference_candidates(&l, &nudged(1.0 - 1e-5));
            let hi = reference_candidates(&l, &nudged(1.0 + 1e-5));
            let got_ids: std::collections::BTreeSet<usize> = got.iter().map(|x| x.0).collect();
            let hi_w: std::collections::BTreeMap<usize, f32> = hi.iter().copied().collect();
            proptest::prop_assert!(lo.iter().all(|x| got_ids.contains(&x.0)), "dropped a token");
            for (i, w) in &got {
                let r = hi_w.get(i).copied();
                proptest::prop_assert!(r.is_some(), "kept token {} the rules drop", i);
                let r = r.unwrap_or_default();
                proptest::prop_assert!((w - r).abs() <= 1e-6 * r.max(1e-30), "{} vs {}", w, r);
            }
        }
    }

    #[test]
    fn greedy_and_bias() {
        let mut s = Sampler::new(Some(1));
        let p = SamplingParams::greedy(1);
        assert_eq!(s.sample(&[0.1, 2.0, 1.0], &p, &[], 0, None).token, 1);
        let p = SamplingParams {
            logit_bias: vec![(2, 5.0)],
            ..p
        };
        assert_eq!(s.sample(&[0.1, 2.0, 1.0], &p, &[], 0, None).token, 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_repeats() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        assert_eq!(
            Sampler::new(None).sample(&logits, &p, &[], 0, None).token,
            argmax(&logits)
        );
        let p = SamplingParams {
            temperature: 1.5,
            seed: Some(9),
            ..Default::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(Some(seed));
            (0..20)
                .map(|_| s.sample(&logits, &p, &[], 0, None).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    #[test]
    fn penalties_discourage_repeats() {
        let p = SamplingParams {
            frequency_penalty: 2.0,
            ..SamplingParams::greedy(1)
        };
        let mut s = Sampler::new(Some(0));
        // Token 0 is best but was generated twice.
        assert_eq!(s.sample(&[3.0, 0.0], &p, &[0, 0], 0, None).token, 1);
        let p = SamplingParams {
            repetition_penalty: 10.0,
            ..SamplingParams::greedy(1)
        };
        assert_eq!(s.sample(&[3.0, 1.0], &p, &[0], 1, None).token, 1);
    }

    #[test]
    fn logprobs_are_normalised() {
        let p = SamplingParams {
            logprobs: Some(2),
            ..SamplingParams::greedy(1)
        };
        let out = Sampler::new(Some(0)).sample(&[1.0, 2.0, 3.0], &p, &[], 0, None);
        let lp = out.logprob.unwrap();
        assert_eq!(lp.token, 2);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        let z: f32 = log_softmax(&[1.0, 2.0, 3.0]).iter().map(|x| x.exp()).sum();
        assert!((z - 1.0).abs() < 1e-5);
        // Independent: softmax(1, 2, 3) = (0.0900, 0.2447, 0.6652), whose
        // entropy is 0.8324 nats.
        assert!((lp.entropy - 0.832_4).abs() < 1e-3, "{}", lp.entropy);
        let uniform = Sampler::new(Some(0)).sample(&[0.5; 8], &p, &[], 0, None);
        assert!((uniform.logprob.unwrap().entropy - 8f32.ln()).abs() < 1e-5);
    }
}
