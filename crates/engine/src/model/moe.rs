//! Mixture-of-experts routing: which experts each token goes to and with what
//! weight, for the gates of Qwen3-MoE and DeepSeek-V2/V3 (greedy,
//! group-limited greedy, and V3's bias-corrected sigmoid `noaux_tc`), following
//! the reference `MoEGate` code of each family. Pure functions over f32 rows so
//! the selection is tested on its own; the forward pass gathers tokens per
//! expert and scatters the weighted outputs back (`index_add`).

use crate::model::config::{GateKind, MoeConfig};

/// Top-k `(expert, weight)` for one token's router logits.
/// `bias` is V3's `e_score_correction_bias` (selection only, never weights).
pub fn route_token(logits: &[f32], cfg: &MoeConfig, bias: Option<&[f32]>) -> Vec<(usize, f32)> {
    let n = logits.len();
    let scores: Vec<f32> = match cfg.gate {
        GateKind::Softmax | GateKind::SoftmaxGroupLimited => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.into_iter().map(|e| e / sum).collect()
        }
        GateKind::SigmoidNoAux => logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    // What selection ranks by.
    let choice: Vec<f32> = match (cfg.gate, bias) {
        (GateKind::SigmoidNoAux, Some(b)) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    let mut allowed = vec![true; n];
    if cfg.gate != GateKind::Softmax && cfg.num_groups > 1 && cfg.topk_groups < cfg.num_groups {
        let per_group = n / cfg.num_groups;
        let group_score = |g: usize| -> f32 {
            let mut members: Vec<f32> = choice[g * per_group..(g + 1) * per_group].to_vec();
            members.sort_by(|a, b| b.total_cmp(a));
            match cfg.gate {
                // V3 ranks a group by the sum of its two best experts.
                GateKind::SigmoidNoAux => members.iter().take(2).sum(),
                _ => members[0],
            }
        };
        let mut groups: Vec<(usize, f32)> =
            (0..cfg.num_groups).map(|g| (g, group_score(g))).collect();
        groups.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        allowed = vec![false; n];
        for &(g, _) in groups.iter().take(cfg.topk_groups) {
            allowed[g * per_group..(g + 1) * per_group].fill(true);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&e| allowed[e]).collect();
    order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
    order.truncate(cfg.top_k);
    let mut picked: Vec<(usize, f32)> = order.into_iter().map(|e| (e, scores[e])).collect();
    let normalise = cfg.top_k > 1 && cfg.norm_topk_prob;
    if normalise {
        let sum: f32 = picked.iter().map(|p| p.1).sum::<f32>() + 1e-20;
        picked.iter_mut().for_each(|p| p.1 /= sum);
    }
    // V2 scales only unnormalised weights; V3 always scales.
    if !normalise || cfg.gate == GateKind::SigmoidNoAux {
        picked.iter_mut().for_each(|p| p.1 *= cfg.routed_scaling);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gate: GateKind, groups: usize, topk_groups: usize, norm: bool) -> MoeConfig {
        MoeConfig {
            num_experts: 8,
            top_k: 2,
            norm_topk_prob: norm,
            first_dense: 0,
            sparse_step: 1,
            sparse_phase: 0,
            num_shared: 0,
            gate,
            routed_scaling: 2.5,
            num_groups: groups,
            topk_groups,
        }
    }

    #[test]
    fn softmax_greedy_scales_unnormalised_weights() {
        let logits = [0.0, 1.0, 3.0, 0.5, 2.0, 0.0, 0.0, 0.0];
        let got = route_token(&logits, &cfg(GateKind::Softmax, 1, 1, false), None);
        let z: f32 = logits.iter().map(|l: &f32| l.exp()).sum();
        assert_eq!(got[0].0, 2);
        assert_eq!(got[1].0, 4);
        assert!((got[0].1 - 3f32.exp() / z * 2.5).abs() < 1e-6);
        // Renormalised weights sum to one and are not scaled (V2 semantics).
        let got = route_token(&logits, &cfg(GateKind::Softmax, 1, 1, true), None);
        assert!((got[0].1 + got[1].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn group_limited_picks_inside_the_best_groups() {
        // Groups of two: {0,1} {2,3} {4,5} {6,7}. The best single expert (7)
        // sits in a group whose max wins; expert 1 is second-best overall but
        // group {0,1} loses to {6,7} only if topk_groups = 1.
        let logits = [0.0, 2.9, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let got = route_token(
            &logits,
            &cfg(GateKind::SoftmaxGroupLimited, 4, 1, false),
            None,
        );
        let experts: Vec<usize> = got.iter().map(|p| p.0).collect();
        assert_eq!(experts, vec![7, 6]);
        let got = route_token(
            &logits,
            &cfg(GateKind::SoftmaxGroupLimited, 4, 2, false),
            None,
        );
        let experts: Vec<usize> = got.iter().map(|p| p.0).collect();
        assert_eq!(experts, vec![7, 1]);
    }

    #[test]
    fn noaux_bias_steers_selection_but_not_weights() {
        let logits = [1.0, 0.9, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0];
        let mut bias = [0.0f32; 8];
        bias[6] = 1.0; // expert 6 wins selection despite a low score
        let got = route_token(
            &logits,
            &cfg(GateKind::SigmoidNoAux, 1, 1, true),
            Some(&bias),
        );
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_eq!(got[0].0, 6);
        assert_eq!(got[1].0, 0);
        let sum = sig(-1.0) + sig(1.0);
        assert!((got[0].1 - sig(-1.0) / sum * 2.5).abs() < 1e-6);
        assert!((got[1].1 - sig(1.0) / sum * 2.5).abs() < 1e-6);
    }

    #[test]
    fn noaux_groups_rank_by_top_two_sum() {
        // Group {0,1}: 0.9 + 0.9; group {2,3}: 0.95 + 0.0. Top-2 sum picks {0,1}.
        let logits = [2.2, 2.2, 2.944, -20.0, -20.0, -20.0, -20.0, -20.0];
        let got = route_token(&logits, &cfg(GateKind::SigmoidNoAux, 4, 1, true), None);
        let mut experts: Vec<usize> = got.iter().map(|p| p.0).collect();
        experts.sort();
        assert_eq!(experts, vec![0, 1]);
    }
}
