//! Confidence cascades (`objective: "cascade"`): the cheapest model in the
//! decision's chain answers first; its answer is held back while its own
//! token log-probabilities are judged, and below the model's threshold the
//! next model answers instead, before any byte reaches the client.
//!
//! The signal is the one `switchyard eval` calibrates: the mean token
//! log-probability of the answer ([`crate::eval::confidence`]); the minimum
//! and the mean entropy are recorded beside it. Under a grammar, an answer
//! cut off inside it (`finish_reason: length`) is never accepted. A stream
//! holds back at most `[router] cascade_buffer_tokens` and is judged on those.
//! This is the in-process half of the "cascading" promise in ROUTING.md: no
//! proxy in front of an engine sees the tokens' probabilities without asking
//! the client's answer to carry them.

use switchyard_engine::{Event, FinishReason};
use switchyard_router::Attempt;

use crate::job::Pending;

/// What a model produced while it was being judged.
#[derive(Default)]
pub struct Held {
    /// The events, to be replayed to the client if the answer is accepted.
    pub events: Vec<Event>,
    pub logprobs: Vec<f32>,
    pub entropies: Vec<f32>,
    /// Generated tokens so far, every choice together.
    pub tokens: usize,
    /// Choices that finished, and whether any of them hit the length limit.
    pub finished: usize,
    pub cut_by_length: bool,
}

/// Read the answer until every one of `choices` has finished, or (for a
/// stream) until `limit` tokens are out. An engine error ends the attempt.
pub async fn hold(
    pending: &mut Pending,
    choices: usize,
    limit: Option<usize>,
) -> Result<Held, String> {
    let mut held = Held::default();
    while held.finished < choices.max(1) && limit.is_none_or(|l| held.tokens < l) {
        let event = match pending.next().await {
            None => return Err("the engine stopped".into()),
            Some(Event::Error { message }) => return Err(message),
            Some(event) => event,
        };
        match &event {
            Event::Delta {
                tokens, logprobs, ..
            } => {
                held.tokens += tokens.len();
                held.logprobs.extend(logprobs.iter().map(|l| l.logprob));
                held.entropies.extend(logprobs.iter().map(|l| l.entropy));
            }
            Event::Finished { reason, .. } => {
                held.finished += 1;
                held.cut_by_length |= *reason == FinishReason::Length;
            }
            Event::Error { .. } => {}
        }
        held.events.push(event);
    }
    Ok(held)
}

/// Where a threshold came from, for the record.
pub enum Threshold {
    /// `routing.min_confidence`.
    Request(f64),
    /// The catalog's (or `switchyard eval`'s) `confidence_threshold` for the task.
    Calibrated(f64),
    /// Neither: the answer cannot be judged.
    None,
}

/// The verdict on a held answer: accepted, or escalate. `grammar`: the
/// request was constrained (structured output or tools).
pub fn judge(
    model: &str,
    held: &Held,
    choices: usize,
    threshold: Threshold,
    grammar: bool,
    elapsed_ms: f64,
) -> Attempt {
    let mean = crate::eval::confidence(&held.logprobs);
    let min = held
        .logprobs
        .iter()
        .map(|&l| l as f64)
        .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.min(l))));
    let mean_entropy = (!held.entropies.is_empty()).then(|| {
        held.entropies.iter().map(|&e| e as f64).sum::<f64>() / held.entropies.len() as f64
    });
    let grammar_complete =
        (grammar && held.finished >= choices.max(1)).then_some(!held.cut_by_length);
    let (threshold, source) = match threshold {
        Threshold::Request(t) => (Some(t), "routing.min_confidence"),
        Threshold::Calibrated(t) => (Some(t), "confidence_threshold (calibrated)"),
        Threshold::None => (None, "none: no calibrated threshold for this task"),
    };
    let (accepted, why) = match (grammar_complete, mean, threshold) {
        (Some(false), _, _) => (
            false,
            "the answer ran out of tokens inside its grammar (incomplete structured output)"
                .to_string(),
        ),
        (_, None, _) => (true, "no tokens to judge".to_string()),
        (_, Some(_), None) => (
            true,
            "accepted unchecked: this model has no confidence threshold for the task".to_string(),
        ),
        (_, Some(m), Some(t)) if m >= t => (
            true,
            format!("mean token log-probability {m:.3} ≥ threshold {t:.3}"),
        ),
        (_, Some(m), Some(t)) => (
            false,
            format!("mean token log-probability {m:.3} < threshold {t:.3}: escalated"),
        ),
    };
    Attempt {
        model: model.to_string(),
        tokens: held.tokens,
        mean_logprob: mean,
        min_logprob: min,
        mean_entropy,
        grammar_complete,
        threshold,
        threshold_source: source.to_string(),
        accepted,
        why,
        cost_usd: None,
        ms: elapsed_ms,
    }
}

/// The record of a chain's last model, which serves whatever it answers.
pub fn last_in_chain(model: &str, why: &str) -> Attempt {
    Attempt {
        model: model.to_string(),
        threshold_source: "none: nothing to escalate to".into(),
        accepted: true,
        why: why.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(logprobs: &[f32], finished: usize, cut: bool) -> Held {
        Held {
            logprobs: logprobs.to_vec(),
            entropies: vec![0.5; logprobs.len()],
            tokens: logprobs.len(),
            finished,
            cut_by_length: cut,
            ..Default::default()
        }
    }

    #[test]
    fn below_the_threshold_escalates_at_or_above_accepts() {
        let h = held(&[-0.1, -0.5, -0.3], 1, false);
        let a = judge("m", &h, 1, Threshold::Calibrated(-0.2), false, 1.0);
        assert!(!a.accepted, "{a:?}");
        assert!((a.mean_logprob.unwrap() + 0.3).abs() < 1e-6);
        assert!((a.min_logprob.unwrap() + 0.5).abs() < 1e-6);
        assert_eq!(a.mean_entropy, Some(0.5));
        let a = judge("m", &h, 1, Threshold::Request(-0.31), false, 1.0);
        assert!(a.accepted, "{a:?}");
        assert_eq!(a.threshold_source, "routing.min_confidence");
    }

    #[test]
    fn without_a_threshold_the_answer_is_accepted_and_says_so() {
        let a = judge(
            "m",
            &held(&[-9.0], 1, false),
            1,
            Threshold::None,
            false,
            1.0,
        );
        assert!(a.accepted && a.why.contains("unchecked"), "{a:?}");
        assert_eq!(a.threshold, None);
    }

    #[test]
    fn an_unfinished_grammar_is_never_accepted() {
        let h = held(&[-0.01], 1, true);
        let a = judge("m", &h, 1, Threshold::None, true, 1.0);
        assert_eq!(a.grammar_complete, Some(false));
        assert!(!a.accepted);
        // Without a grammar a length cut is only a long answer; before the
        // end (a stream's held-back tokens) completion is unknown.
        assert!(judge("m", &h, 1, Threshold::None, false, 1.0).accepted);
        let open = judge(
            "m",
            &held(&[-0.01], 0, false),
            1,
            Threshold::None,
            true,
            1.0,
        );
        assert_eq!(open.grammar_complete, None);
        assert!(open.accepted);
    }
}
