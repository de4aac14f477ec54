//! Continuous-batching scheduler, following vLLM v1's scheduler.
//!
//! There are no separate "prefill" and "decode" phases: every sequence simply has
//! `num_computed` tokens whose K/V are in the cache and some tokens that are not
//! yet. Each step hands out a token budget (`max_num_batched_tokens`):
//! 1. running sequences first, in admission order (a decode needs one token, a
//!    chunked prefill in progress needs the rest of its prompt, capped by budget);
//! 2. then waiting sequences FCFS, after a prefix-cache lookup, while the budget,
//!    `max_num_seqs` and free blocks allow.
//!
//! When a running sequence needs a block and none is free, the *newest* running
//! sequence is preempted by recompute: its blocks are released (they stay in the
//! prefix cache until evicted) and it goes back to the front of the queue with
//! all its tokens (prompt and output so far) to be prefilled again.
//!
//! n>1 requests fork a sequence after its prompt is computed; the children share
//! every block, and a child about to write into a shared block first gets a
//! private copy (copy-on-write, reported in [`SchedulerOutput::block_copies`]).
//!
//! The scheduler knows token ids and blocks, never tensors: the engine runs the
//! model on a [`SchedulerOutput`] and reports back through [`Scheduler::commit`].

use std::collections::{HashMap, VecDeque};

use crate::sched::block_pool::{BlockHash, BlockId, BlockPool};

pub type SeqId = u64;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Most sequences in one step's batch.
    pub max_num_seqs: usize,
    /// Most tokens in one step's batch.
    pub max_num_batched_tokens: usize,
    /// Split long prompts over several steps.
    pub chunked_prefill: bool,
    pub prefix_caching: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            block_size: 16,
            num_blocks: 1024,
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            chunked_prefill: true,
            prefix_caching: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
}

#[derive(Debug)]
struct Sequence {
    /// Prompt followed by every token sampled so far.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    num_computed: usize,
    block_table: Vec<BlockId>,
    /// Hashes of the leading full blocks that are computed and registered.
    block_hashes: Vec<BlockHash>,
    /// The first block's parent in the hash chain (`cache_salt`), if any.
    salt_root: Option<BlockHash>,
    status: SeqStatus,
}

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// First position computed this step (== tokens already in cache).
    pub start: usize,
    /// Number of tokens computed this step.
    pub len: usize,
    /// True when this chunk reaches the sequence's last token: sample after it.
    pub sample: bool,
}

#[derive(Debug, Default, Clone)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    /// (src, dst) block copies to perform before the forward pass.
    pub block_copies: Vec<(BlockId, BlockId)>,
    /// Sequences preempted this step (they keep their tokens and will be recomputed).
    pub preempted: Vec<SeqId>,
    /// Tokens found in the prefix cache for sequences admitted this step.
    pub prefix_hit_tokens: usize,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.len).sum()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddError {
    #[error("sequence of {tokens} tokens needs {needed} KV blocks but the pool has only {total}")]
    TooLongForPool {
        tokens: usize,
        needed: usize,
        total: usize,
    },
    #[error("prompt of {tokens} tokens exceeds max_num_batched_tokens ({budget}) and chunked prefill is off")]
    TooLongForBatch { tokens: usize, budget: usize },
    #[error("empty prompt")]
    Empty,
    #[error("sequence id {0} already exists")]
    Duplicate(SeqId),
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    /// Admission order: the last one is the newest (first to be preempted).
    running: Vec<SeqId>,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let pool = BlockPool::new(config.num_blocks, config.prefix_caching);
        Scheduler {
            config,
            pool,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
        }
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// Queue a new sequence. `max_total_tokens` (prompt + output) is checked
    /// against the pool so that a request that could never fit is refused now.
    #[cfg(test)]
    pub fn add(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        max_total_tokens: usize,
    ) -> Result<(), AddError> {
        self.add_salted(id, prompt, max_total_tokens, None)
    }

    /// [`Scheduler::add`] for a request with a `cache_salt`: its blocks are
    /// shared only with requests that carry the same salt.
    pub fn add_salted(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        max_total_tokens: usize,
        salt: Option<&str>,
    ) -> Result<(), AddError> {
        if prompt.is_empty() {
            return Err(AddError::Empty);
        }
        if self.seqs.contains_key(&id) {
            return Err(AddError::Duplicate(id));
        }
        let needed = self.blocks_for(max_total_tokens.max(prompt.len()));
        if needed > self.pool.num_blocks() {
            return Err(AddError::TooLongForPool {
                tokens: max_total_tokens,
                needed,
                total: self.pool.num_blocks(),
            });
        }
        if !self.config.chunked_prefill && prompt.len() > self.config.max_num_batched_tokens {
            return Err(AddError::TooLongForBatch {
                tokens: prompt.len(),
                budget: self.config.max_num_batched_tokens,
            });
        }
        self.seqs.insert(
            id,
            Sequence {
                tokens: prompt,
                num_computed: 0,
                block_table: Vec::new(),
                block_hashes: Vec::new(),
                salt_root: salt.map(BlockHash::salt_root),
                status: SeqStatus::Waiting,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Fork `parent` (whose tokens are all computed but the last) into `child`:
    /// the child shares every block; copy-on-write happens when one writes.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), AddError> {
        if self.seqs.contains_key(&child) {
            return Err(AddError::Duplicate(child));
        }
        let Some(p) = self.seqs.get(&parent) else {
            return Err(AddError::Empty);
        };
        let seq = Sequence {
            tokens: p.tokens.clone(),
            num_computed: p.num_computed,
            block_table: p.block_table.clone(),
            block_hashes: p.block_hashes.clone(),
            salt_root: p.salt_root,
            status: p.status,
        };
        for &b in &seq.block_table {
            self.pool.share(b);
        }
        match seq.status {
            SeqStatus::Running => self.running.push(child),
            SeqStatus::Waiting => self.waiting.push_back(child),
        }
        self.seqs.insert(child, seq);
        Ok(())
    }

    /// Append a sampled token to a sequence.
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    /// Replace the last sampled token (a fork's sibling sampled a different one).
    #[cfg(test)]
    pub fn replace_last_token(&mut self, id: SeqId, token: u32) {
        if let Some(last) = self.seqs.get_mut(&id).and_then(|s| s.tokens.last_mut()) {
            *last = token;
        }
    }

    /// Remove a sequence (finished or cancelled) and release its blocks now.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        match seq.status {
            SeqStatus::Waiting => self.waiting.retain(|&s| s != id),
            SeqStatus::Running => self.running.retain(|&s| s != id),
        }
        // Release tail first so that the LRU evicts a sequence's tail before its head.
        for &b in seq.block_table.iter().rev() {
            self.pool.release(b);
        }
        true
    }

    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    pub fn block_table(&self, id: SeqId) -> Option<&[BlockId]> {
        self.seqs.get(&id).map(|s| s.block_table.as_slice())
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free()
    }
    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }
    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    fn preempt(&mut self, id: SeqId, out: &mut SchedulerOutput) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        for &b in seq.block_table.iter().rev() {
            self.pool.release(b);
        }
        seq.block_table.clear();
        seq.block_hashes.clear();
        seq.num_computed = 0;
        seq.status = SeqStatus::Waiting;
        self.running.retain(|&s| s != id);
        self.waiting.push_front(id);
        out.seqs.retain(|s| s.id != id);
        out.preempted.push(id);
        self.num_preemptions += 1;
    }

    /// Give `id` the blocks to hold `upto` tokens, with a private copy of any
    /// shared block it is about to write into. False when the pool is short.
    fn reserve(&mut self, id: SeqId, upto: usize, out: &mut SchedulerOutput) -> bool {
        let block_size = self.config.block_size;
        let seq = &self.seqs[&id];
        let need_new = self.blocks_for(upto).saturating_sub(seq.block_table.len());
        let first_written = seq.num_computed / block_size;
        let cow: Vec<usize> = (first_written..seq.block_table.len())
            .filter(|&i| self.pool.ref_count(seq.block_table[i]) > 1)
            .collect();
        if need_new + cow.len() > self.pool.num_free() {
            return false;
        }
        for i in cow {
            let Some(dst) = self.pool.allocate() else {
                return false;
            };
            let seq = self.seqs.get_mut(&id).expect("scheduled sequence exists");
            let src = seq.block_table[i];
            seq.block_table[i] = dst;
            // The copy is a private block now: it must not claim the shared hash.
            seq.block_hashes.truncate(i);
            self.pool.release(src);
            out.block_copies.push((src, dst));
        }
        for _ in 0..need_new {
            let Some(b) = self.pool.allocate() else {
                return false;
            };
            self.seqs
                .get_mut(&id)
                .expect("scheduled sequence exists")
                .block_table
                .push(b);
        }
        true
    }

    /// Plan one step.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;

        // 1. Running sequences, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let remaining = seq.tokens.len() - seq.num_computed;
            let n = remaining.min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let start = seq.num_computed;
            let mut preempted_self = false;
            while !self.reserve(id, start + n, &mut out) {
                let victim = *self.running.last().expect("running is non-empty");
                self.preempt(victim, &mut out);
                if victim == id {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                break;
            }
            out.seqs.push(ScheduledSeq {
                id,
                start,
                len: n,
                sample: n == remaining,
            });
            budget -= n;
            i += 1;
        }

        // 2. Waiting sequences, FCFS; none if anything was preempted this step.
        while out.preempted.is_empty()
            && budget > 0
            && self.running.len() < self.config.max_num_seqs
        {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let hit_tokens = self.take_prefix_hits(id);
            let seq = &self.seqs[&id];
            let start = seq.num_computed;
            let remaining = seq.tokens.len() - start;
            // Chunk when enabled, and always for a recomputed sequence that outgrew
            // the step budget (with chunking off, no longer prompt is admitted).
            let n = if self.config.chunked_prefill || remaining > self.config.max_num_batched_tokens
            {
                remaining.min(budget)
            } else {
                remaining
            };
            if n > budget || !self.reserve(id, start + n, &mut out) {
                self.undo_prefix_hits(id);
                break;
            }
            self.waiting.pop_front();
            let seq = self.seqs.get_mut(&id).expect("waiting sequence exists");
            seq.status = SeqStatus::Running;
            self.running.push(id);
            out.prefix_hit_tokens += hit_tokens;
            out.seqs.push(ScheduledSeq {
                id,
                start,
                len: n,
                sample: n == remaining,
            });
            budget -= n;
        }
        out
    }

    /// Take cached blocks for the leading full blocks of a fresh sequence.
    /// At least one token is always left to compute (its logits are needed).
    fn take_prefix_hits(&mut self, id: SeqId) -> usize {
        let block_size = self.config.block_size;
        let seq = &self.seqs[&id];
        if seq.num_computed > 0 || !self.pool.prefix_caching() {
            return 0;
        }
        let max_blocks = (seq.tokens.len() - 1) / block_size;
        let mut parent = seq.salt_root;
        let mut hits = Vec::new();
        for b in 0..max_blocks {
            let hash = BlockHash::of(parent, &seq.tokens[b * block_size..(b + 1) * block_size]);
            if !self.pool.is_cached(hash) {
                break;
            }
            hits.push(hash);
            parent = Some(hash);
        }
        let mut table = Vec::with_capacity(hits.len());
        for &h in &hits {
            table.push(self.pool.take_cached(h).expect("checked cached"));
        }
        let seq = self.seqs.get_mut(&id).expect("sequence exists");
        seq.num_computed = hits.len() * block_size;
        seq.block_table = table;
        seq.block_hashes = hits;
        seq.num_computed
    }

    fn undo_prefix_hits(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("sequence exists");
        let table = std::mem::take(&mut seq.block_table);
        seq.block_hashes.clear();
        seq.num_computed = 0;
        for &b in table.iter().rev() {
            self.pool.release(b);
        }
    }

    /// Record that a step's forward pass ran: K/V for the scheduled tokens are in
    /// the cache, and newly filled blocks become reusable prefixes.
    pub fn commit(&mut self, output: &SchedulerOutput) {
        let block_size = self.config.block_size;
        for s in &output.seqs {
            let Some(seq) = self.seqs.get_mut(&s.id) else {
                continue;
            };
            seq.num_computed = s.start + s.len;
            let full = seq.num_computed / block_size;
            while seq.block_hashes.len() < full {
                let b = seq.block_hashes.len();
                let hash = BlockHash::of(
                    seq.block_hashes.last().copied().or(seq.salt_root),
                    &seq.tokens[b * block_size..(b + 1) * block_size],
                );
                self.pool.register(seq.block_table[b], hash);
                seq.block_hashes.push(hash);
            }
        }
    }

    /// Check pool and bookkeeping invariants; used by tests.
    #[cfg(test)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs = vec![0u32; self.pool.num_blocks()];
        for seq in self.seqs.values() {
            for &b in &seq.block_table {
                refs[b as usize] += 1;
            }
            if seq.num_computed > seq.tokens.len() {
                return Err("computed past the end".into());
            }
            if seq.block_table.len() * self.config.block_size < seq.num_computed {
                return Err("computed tokens without blocks".into());
            }
        }
        for (b, &r) in refs.iter().enumerate() {
            if self.pool.ref_count(b as BlockId) != r {
                return Err(format!(
                    "block {b}: ref count {} but {r} holders",
                    self.pool.ref_count(b as BlockId)
                ));
            }
        }
        if self.waiting.len() + self.running.len() != self.seqs.len() {
            return Err("queues and sequence map disagree".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(num_blocks: usize, budget: usize, chunked: bool) -> SchedulerConfig {
        SchedulerConfig {
            block_size: 4,
            num_blocks,
            max_num_seqs: 4,
            max_num_batched_tokens: budget,
            chunked_prefill: chunked,
            prefix_caching: true,
        }
    }

    /// Pretend to run the model: commit and append a token to sampled sequences.
    fn fake_step(s: &mut Scheduler, next_token: u32) -> SchedulerOutput {
        let out = s.schedule();
        s.commit(&out);
        for seq in &out.seqs {
            if seq.sample {
                s.append_token(seq.id, next_token);
            }
        }
        out
    }

    #[test]
    fn prefix_hit_skips_computed_blocks() {
        let mut s = Scheduler::new(config(16, 64, true));
        s.add(1, (0..10).collect(), 12).unwrap();
        let out = fake_step(&mut s, 99);
        assert_eq!(out.seqs[0].len, 10);
        s.remove(1);
        s.add(2, (0..10).collect(), 12).unwrap();
        let out = s.schedule();
        assert_eq!(out.prefix_hit_tokens, 8);
        assert_eq!(
            out.seqs[0],
            ScheduledSeq {
                id: 2,
                start: 8,
                len: 2,
                sample: true
            }
        );
        s.check_invariants().unwrap();
    }

    #[test]
    fn chunked_prefill_splits_long_prompt() {
        let mut s = Scheduler::new(config(16, 6, true));
        s.add(1, (0..14).collect(), 16).unwrap();
        let lens: Vec<_> = (0..3).map(|_| fake_step(&mut s, 7).seqs[0].len).collect();
        assert_eq!(lens, vec![6, 6, 2]);
    }

    #[test]
    fn preempts_newest_when_blocks_run_out() {
        let mut s = Scheduler::new(config(4, 64, true));
        s.add(1, (0..8).collect(), 16).unwrap();
        s.add(2, (100..108).collect(), 16).unwrap();
        fake_step(&mut s, 1); // both prefilled: 4 blocks used
        let out = fake_step(&mut s, 1); // seq 1 needs a 3rd block -> preempt seq 2
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(s.num_preemptions(), 1);
        s.check_invariants().unwrap();
    }

    #[test]
    fn fork_copies_shared_block_on_write() {
        let mut s = Scheduler::new(config(16, 64, true));
        s.add(1, (0..6).collect(), 12).unwrap();
        fake_step(&mut s, 50);
        s.fork(1, 2).unwrap();
        s.replace_last_token(2, 51);
        let out = s.schedule();
        // Both write position 6, inside the shared second block: one of them copies.
        assert_eq!(out.block_copies.len(), 1);
        s.commit(&out);
        s.check_invariants().unwrap();
        assert_ne!(s.block_table(1).unwrap()[1], s.block_table(2).unwrap()[1]);
        assert_eq!(s.block_table(1).unwrap()[0], s.block_table(2).unwrap()[0]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add {
            len: usize,
            max_new: usize,
            shared_prefix: bool,
        },
        Step,
        Cancel(usize),
        Fork(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..20, 1usize..10, any::<bool>()).prop_map(|(len, max_new, shared_prefix)| {
                Op::Add {
                    len,
                    max_new,
                    shared_prefix,
                }
            }),
            Just(Op::Step),
            Just(Op::Step),
            Just(Op::Step),
            (0usize..8).prop_map(Op::Cancel),
            (0usize..8).prop_map(Op::Fork),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(std::env::var("SCHED_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]
        /// Random submit/step/cancel/fork sequences never leak or double-free a
        /// block, ref counts return to zero, and every sequence ends exactly once.
        #[test]
        fn random_workloads_keep_invariants(
            ops in proptest::collection::vec(op(), 1..80),
            num_blocks in 6usize..24,
            budget in 4usize..32,
            chunked in any::<bool>(),
        ) {
            let mut s = Scheduler::new(config(num_blocks, budget, chunked));
            let mut next_id: SeqId = 0;
            let mut limits: HashMap<SeqId, usize> = HashMap::new();
            let mut live: Vec<SeqId> = Vec::new();
            let mut ended: Vec<SeqId> = Vec::new();
            let finish = |s: &mut Scheduler, id: SeqId, live: &mut Vec<SeqId>, ended: &mut Vec<SeqId>| {
                assert!(s.remove(id), "sequence {id} ended twice");
                live.retain(|&x| x != id);
                ended.push(id);
            };
            for op in ops.iter().cloned().chain(std::iter::repeat_n(Op::Step, 200)) {
                match op {
                    Op::Add { len, max_new, shared_prefix } => {
                        let base = if shared_prefix { 0 } else { 1000 * (next_id as u32 + 1) };
                        let prompt: Vec<u32> = (base..base + len as u32).collect();
                        if s.add(next_id, prompt, len + max_new).is_ok() {
                            limits.insert(next_id, len + max_new);
                            live.push(next_id);
                        }
                        next_id += 1;
                    }
                    Op::Cancel(k) => {
                        if !live.is_empty() {
                            let id = live[k % live.len()];
                            finish(&mut s, id, &mut live, &mut ended);
                        }
                    }
                    Op::Fork(k) => {
                        if !live.is_empty() {
                            let parent = live[k % live.len()];
                            let tokens = s.tokens(parent).unwrap().len();
                            if s.fork(parent, next_id).is_ok() {
                                limits.insert(next_id, limits[&parent].max(tokens));
                                live.push(next_id);
                            }
                            next_id += 1;
                        }
                    }
                    Op::Step => {
                        let out = s.schedule();
                        prop_assert!(out.num_tokens() <= budget);
                        s.commit(&out);
                        for seq in &out.seqs {
                            if seq.sample {
                                s.append_token(seq.id, 7);
                                if s.tokens(seq.id).unwrap().len() >= limits[&seq.id] {
                                    finish(&mut s, seq.id, &mut live, &mut ended);
                                }
                            }
                        }
                    }
                }
                if let Err(e) = s.check_invariants() {
                    prop_assert!(false, "{}", e);
                }
            }
            // Everything drains: each sequence ends exactly once, all blocks are free.
            prop_assert!(live.is_empty(), "stuck sequences: {:?}", live);
            let mut sorted = ended.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), ended.len());
            prop_assert_eq!(s.num_free_blocks(), num_blocks);
        }
    }
}
