//! Output processing: one sequence's generation state and what a sampled
//! token does to it — the grammar advances, the token is detokenized
//! incrementally, stop strings are matched, and the finish rules (stop
//! token, stop string, completed grammar, `max_tokens`, context window) are
//! applied (vLLM v1's `OutputProcessor` and `Detokenizer`/`StopChecker`, run
//! on the engine thread because the step is synchronous anyway).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::sampling::{Sampler, SamplingParams};
use crate::engine::{Event, FinishReason, Usage};
use crate::text::constraint::{Grammar, SeqConstraint};
use crate::text::stop::StopMatcher;
use crate::text::tokenizer::{IncrementalDecoder, Tokenizer};

/// Per-sequence (per-choice) generation state.
pub(crate) struct SeqState {
    pub request: u64,
    pub choice: usize,
    pub params: Arc<SamplingParams>,
    pub sampler: Sampler,
    pub prompt_len: usize,
    pub generated: usize,
    /// Children still to fork at the first sample (n > 1).
    pub forks_pending: usize,
    pub cached_tokens: usize,
    pub scheduled_once: bool,
    /// When the request arrived, and how long it waited for its first step.
    pub arrived: std::time::Instant,
    pub queued_us: u64,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// The grammar's state, for structured outputs.
    pub constraint: Option<SeqConstraint>,
    pub events: UnboundedSender<Event>,
}

/// What one accepted token produced.
pub(crate) struct TokenOutput {
    /// Text now safe to show (held-back text is released when finishing).
    pub text: String,
    pub finish: Option<FinishReason>,
}

impl SeqState {
    /// A request's first sequence (choice 0); its `n - 1` siblings fork from
    /// it at the first sample.
    pub(crate) fn first(
        request: u64,
        params: Arc<SamplingParams>,
        prompt_len: usize,
        events: UnboundedSender<Event>,
    ) -> Self {
        SeqState {
            request,
            choice: 0,
            sampler: Sampler::new(params.seed),
            prompt_len,
            generated: 0,
            forks_pending: params.n - 1,
            cached_tokens: 0,
            scheduled_once: false,
            arrived: std::time::Instant::now(),
            queued_us: 0,
            decoder: IncrementalDecoder::default(),
            stop: StopMatcher::new(params.stop.clone()),
            constraint: params.grammar.as_ref().map(Grammar::start),
            params,
            events,
        }
    }

    /// Choice `choice` forked from this sequence before its first sample: the
    /// same prompt, cache hits and grammar state, its own seed.
    pub(crate) fn fork(&self, choice: usize) -> Self {
        let params = self.params.clone();
        SeqState {
            request: self.request,
            choice,
            sampler: Sampler::new(params.seed.map(|s| s.wrapping_add(choice as u64))),
            prompt_len: self.prompt_len,
            generated: 0,
            forks_pending: 0,
            cached_tokens: self.cached_tokens,
            scheduled_once: true,
            arrived: self.arrived,
            queued_us: self.queued_us,
            decoder: IncrementalDecoder::default(),
            stop: StopMatcher::new(params.stop.clone()),
            constraint: self.constraint.as_ref().map(SeqConstraint::fork),
            params,
            events: self.events.clone(),
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
            queued_us: self.queued_us,
        }
    }

    /// Takes the sampled `token` (already appended to the sequence's tokens):
    /// advances the grammar, detokenizes, matches stop strings and decides
    /// whether the sequence ends. An error is a grammar that rejects the
    /// token; the sequence must then fail.
    pub(crate) fn accept(
        &mut self,
        token: u32,
        tokenizer: &Tokenizer,
        context_length: usize,
    ) -> Result<TokenOutput, String> {
        self.generated += 1;
        let p = &self.params;
        let is_eog = tokenizer.eog_tokens().contains(&token);
        let constrained = self.constraint.is_some();
        let is_stop_token = (!p.ignore_eos && is_eog)
            || p.stop_token_ids.contains(&token)
            || (constrained && is_eog);
        // The grammar advances past the token; complete, it ends the output.
        let grammar_done = match self.constraint.as_mut().filter(|_| !is_stop_token) {
            Some(c) => {
                c.advance(token)?;
                c.is_done()
            }
            None => false,
        };
        let mut text = String::new();
        let mut finish = None;
        let mut stopped_by_string = false;
        if is_stop_token {
            finish = Some(FinishReason::Stop);
        } else if !tokenizer.is_control(token) {
            let o = self
                .stop
                .push(&self.decoder.push(tokenizer.token_bytes(token)));
            text = o.emit;
            if o.stopped {
                finish = Some(FinishReason::Stop);
                stopped_by_string = true;
            }
        }
        if grammar_done && finish.is_none() {
            finish = Some(FinishReason::Stop);
        }
        let total = self.prompt_len + self.generated;
        if finish.is_none() && (self.generated >= p.max_tokens || total >= context_length) {
            finish = Some(FinishReason::Length);
        }
        if finish.is_some() && !stopped_by_string {
            // Release what was held back: a UTF-8 tail, a partial stop string.
            let o = self.stop.push(&self.decoder.finish());
            text.push_str(&o.emit);
            if !o.stopped {
                text.push_str(&self.stop.flush());
            }
        }
        Ok(TokenOutput { text, finish })
    }
}
