//! The engine core: the loop on the engine thread (vLLM v1's `EngineCore`).
//! Each iteration drains commands, asks the [`Scheduler`] for a step, builds
//! the model input ([`batch`]), runs the [`Model`], samples one token per
//! sampling sequence and hands it to output processing ([`crate::engine::output`]), which
//! streams text and finishes sequences.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::batch;
use crate::engine::output::SeqState;
use crate::engine::{Command, EngineStats, Event, MASK_SAMPLES};
use crate::error::Result;
use crate::model::{KvStore, Model};
use crate::sched::scheduler::{Scheduler, SchedulerConfig, SeqId};
use crate::text::constraint::SeqConstraint;
use crate::text::tokenizer::Tokenizer;

pub(crate) struct EngineCore {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    cache: KvStore,
    sched_cfg: SchedulerConfig,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, SeqState>,
    requests: HashMap<u64, Vec<SeqId>>,
    next_seq: SeqId,
    stats: Arc<Mutex<EngineStats>>,
    /// Recent grammar-mask timings (µs), published with the stats.
    mask_us: std::collections::VecDeque<f32>,
}

impl EngineCore {
    pub(crate) fn new(
        model: Model,
        tokenizer: Arc<Tokenizer>,
        cache: KvStore,
        sched_cfg: SchedulerConfig,
        stats: Arc<Mutex<EngineStats>>,
    ) -> Self {
        EngineCore {
            model,
            tokenizer,
            cache,
            scheduler: Scheduler::new(sched_cfg.clone()),
            sched_cfg,
            seqs: HashMap::new(),
            requests: HashMap::new(),
            next_seq: 0,
            stats,
            mask_us: std::collections::VecDeque::new(),
        }
    }

    /// The loop, until every handle is gone or a shutdown asks for the
    /// model back (requests still in flight then end with an error).
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        loop {
            let mut shutdown = None;
            if !self.scheduler.has_work() {
                match rx.recv() {
                    Ok(Command::Shutdown { reply }) => shutdown = Some(reply),
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return, // every handle is gone
                }
            }
            while shutdown.is_none() {
                match rx.try_recv() {
                    Ok(Command::Shutdown { reply }) => shutdown = Some(reply),
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            if let Some(reply) = shutdown {
                self.fail_all("the model was put to sleep or unloaded");
                let _ = reply.send(self.model);
                return;
            }
            if !self.scheduler.has_work() {
                self.publish_stats();
                continue;
            }
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| self.step()));
            match step {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail_all(&format!("engine step failed: {e}")),
                Err(_) => self.fail_all("engine step panicked; the request was dropped"),
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                request,
                prompt,
                params,
                events,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let prompt_len = prompt.len();
                if let Err(e) = self.scheduler.add_salted(
                    seq,
                    prompt,
                    prompt_len + params.max_tokens,
                    params.cache_salt.as_deref(),
                ) {
                    let _ = events.send(Event::Error {
                        message: e.to_string(),
                    });
                    return;
                }
                let params = Arc::new(*params);
                self.seqs
                    .insert(seq, SeqState::first(request, params, prompt_len, events));
                self.requests.insert(request, vec![seq]);
            }
            Command::Cancel { request } => {
                for seq in self.requests.remove(&request).unwrap_or_default() {
                    self.scheduler.remove(seq);
                    self.seqs.remove(&seq);
                }
            }
            Command::Shutdown { .. } => {} // taken by the loop
        }
    }

    fn step(&mut self) -> Result<()> {
        let started = Instant::now();
        let out = self.scheduler.schedule();
        if out.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            return Ok(());
        }
        let batch = batch::build(&self.scheduler, &out, &self.seqs);
        self.cache.copy_blocks(&out.block_copies)?;
        let logits = self.model.forward(
            &batch.tokens,
            &batch.views,
            &batch.logits_rows,
            &mut self.cache,
        )?;
        let (prefill_tokens, decode_tokens, sampled) = (
            batch.prefill_tokens,
            batch.decode_tokens,
            batch.logits_rows.len(),
        );
        drop(batch);
        self.scheduler.commit(&out);
        for id in &out.preempted {
            tracing::debug!(seq = id, "preempted (recompute)");
        }
        let mut row = 0;
        for s in &out.seqs {
            if let Some(st) = self.seqs.get_mut(&s.id) {
                if !st.scheduled_once {
                    // A fresh sequence starts after its prefix-cache hits.
                    st.scheduled_once = true;
                    st.cached_tokens = s.start;
                    st.queued_us = started.saturating_duration_since(st.arrived).as_micros() as u64;
                }
            }
            if s.sample {
                self.sample_and_emit(s.id, &logits[row]);
                row += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        if let Ok(mut stats) = self.stats.lock() {
            stats.steps += 1;
            stats.prompt_tokens_computed += prefill_tokens as u64;
            stats.prefix_cache_hit_tokens += out.prefix_hit_tokens as u64;
            stats.generated_tokens += sampled as u64;
            let ema = |old: f64, new: f64| {
                if old == 0.0 {
                    new
                } else {
                    0.8 * old + 0.2 * new
                }
            };
            if prefill_tokens > 0 {
                stats.prefill_tokens_per_s =
                    ema(stats.prefill_tokens_per_s, prefill_tokens as f64 / elapsed);
            } else {
                stats.decode_tokens_per_s =
                    ema(stats.decode_tokens_per_s, decode_tokens as f64 / elapsed);
            }
        }
        self.publish_stats();
        Ok(())
    }

    fn sample_and_emit(&mut self, id: SeqId, logits: &[f32]) {
        // Fork n>1 children at the first sample: they share the prompt's blocks.
        let forks = self.seqs.get(&id).map_or(0, |st| st.forks_pending);
        if forks > 0 {
            let Some(parent) = self.seqs.get_mut(&id) else {
                return;
            };
            parent.forks_pending = 0;
            let children: Vec<SeqState> = (1..=forks).map(|c| parent.fork(c)).collect();
            for child_state in children {
                let child = self.next_seq;
                self.next_seq += 1;
                if self.scheduler.fork(id, child).is_err() {
                    continue;
                }
                let request = child_state.request;
                self.seqs.insert(child, child_state);
                self.requests.entry(request).or_default().push(child);
                self.emit_token(child, logits);
            }
        }
        self.emit_token(id, logits);
    }

    fn emit_token(&mut self, id: SeqId, logits: &[f32]) {
        let Some(context) = self.scheduler.tokens(id) else {
            return;
        };
        let Some(st) = self.seqs.get_mut(&id) else {
            return;
        };
        let mask_started = Instant::now();
        let mask = st.constraint.as_mut().map(SeqConstraint::mask);
        if mask.is_some() {
            if self.mask_us.len() == MASK_SAMPLES {
                self.mask_us.pop_front();
            }
            self.mask_us
                .push_back(mask_started.elapsed().as_secs_f32() * 1e6);
        }
        let mask = match mask {
            None => None,
            Some(Ok(m)) if !m.is_zero() => Some(m),
            Some(failed) => {
                let why = failed.err().unwrap_or_else(|| "no token is allowed".into());
                return self.fail_seq(id, &format!("structured output: {why}"));
            }
        };
        let sampled = st
            .sampler
            .sample(logits, &st.params, context, st.prompt_len, mask.as_ref());
        let token = sampled.token;
        self.scheduler.append_token(id, token);
        let context_length = self.model.config().context_length;
        let out = match st.accept(token, &self.tokenizer, context_length) {
            Ok(out) => out,
            Err(why) => return self.fail_seq(id, &format!("structured output: {why}")),
        };
        let delta = Event::Delta {
            choice: st.choice,
            text: out.text,
            tokens: vec![token],
            logprobs: sampled.logprob.into_iter().collect(),
        };
        let alive = st.events.send(delta).is_ok();
        if let Some(reason) = out.finish {
            let _ = st.events.send(Event::Finished {
                choice: st.choice,
                reason,
                usage: st.usage(),
            });
        }
        if out.finish.is_some() || !alive {
            let request = st.request;
            self.finish_seq(id, request);
        }
    }

    /// End one sequence with an error (its request's stream gets it).
    fn fail_seq(&mut self, id: SeqId, message: &str) {
        if let Some(st) = self.seqs.get(&id) {
            let _ = st.events.send(Event::Error {
                message: message.to_string(),
            });
            let request = st.request;
            self.finish_seq(id, request);
        }
    }

    fn finish_seq(&mut self, id: SeqId, request: u64) {
        self.scheduler.remove(id);
        self.seqs.remove(&id);
        if let Some(list) = self.requests.get_mut(&request) {
            list.retain(|&s| s != id);
            if list.is_empty() {
                self.requests.remove(&request);
            }
        }
    }

    /// Fail every request in flight and start over with an empty scheduler.
    fn fail_all(&mut self, message: &str) {
        tracing::error!("{message}");
        for st in self.seqs.values() {
            let _ = st.events.send(Event::Error {
                message: message.to_string(),
            });
        }
        self.seqs.clear();
        self.requests.clear();
        self.scheduler = Scheduler::new(self.sched_cfg.clone());
        self.publish_stats();
    }

    fn publish_stats(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.waiting = self.scheduler.num_waiting();
            s.running = self.scheduler.num_running();
            s.kv_blocks_free = self.scheduler.num_free_blocks();
            s.kv_blocks_total = self.scheduler.num_blocks();
            s.preemptions = self.scheduler.num_preemptions();
            if s.grammar_mask_us.len() != self.mask_us.len()
                || s.grammar_mask_us.last() != self.mask_us.back()
            {
                s.grammar_mask_us = self.mask_us.iter().copied().collect();
            }
        }
    }
}
