//! Batch building: turns the scheduler's plan for one step into the model's
//! input — the flattened new tokens of every scheduled sequence, each
//! sequence's view of the paged cache, and the rows whose logits are sampled
//! (vLLM v1's `GPUModelRunner._prepare_inputs`, without tensors: the model
//! makes those).

use std::collections::HashMap;

use crate::engine::output::SeqState;
use crate::kv::host::SeqView;
use crate::sched::scheduler::{Scheduler, SchedulerOutput, SeqId};

/// One step's model input, borrowed from the scheduler.
pub(crate) struct ModelBatch<'a> {
    /// Every scheduled sequence's new tokens, back to back.
    pub tokens: Vec<u32>,
    /// Where each sequence's tokens sit in `tokens`, and its block table.
    pub views: Vec<SeqView<'a>>,
    /// Rows of `tokens` whose logits are sampled (one per sampling sequence,
    /// in schedule order).
    pub logits_rows: Vec<usize>,
    /// Prompt tokens computed this step (prefill and recompute).
    pub prefill_tokens: usize,
    /// Sequences taking one decode step.
    pub decode_tokens: usize,
}

/// The model input for `out`. A decode step is one token of a sequence that
/// has already generated; everything else counts as prefill.
pub(crate) fn build<'a>(
    scheduler: &'a Scheduler,
    out: &SchedulerOutput,
    seqs: &HashMap<SeqId, SeqState>,
) -> ModelBatch<'a> {
    let mut batch = ModelBatch {
        tokens: Vec::with_capacity(out.num_tokens()),
        views: Vec::with_capacity(out.seqs.len()),
        logits_rows: Vec::new(),
        prefill_tokens: 0,
        decode_tokens: 0,
    };
    for s in &out.seqs {
        let all = scheduler.tokens(s.id).unwrap_or_default();
        let begin = batch.tokens.len();
        batch
            .tokens
            .extend_from_slice(&all[s.start..s.start + s.len]);
        batch.views.push(SeqView {
            token_range: begin..batch.tokens.len(),
            start_pos: s.start,
            block_table: scheduler.block_table(s.id).unwrap_or_default(),
        });
        if s.sample {
            batch.logits_rows.push(batch.tokens.len() - 1);
        }
        let is_decode = s.len == 1 && seqs.get(&s.id).is_some_and(|st| st.generated > 0);
        if is_decode {
            batch.decode_tokens += 1;
        } else {
            batch.prefill_tokens += s.len;
        }
    }
    batch
}
