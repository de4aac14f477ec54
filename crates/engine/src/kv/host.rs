//! Paged KV storage and CPU paged attention (the vLLM PagedAttention layout).
//!
//! Per layer, K and V live in one flat buffer of `[num_blocks, block_size,
//! num_kv_heads, head_dim]` f32. A token at position `p` of a sequence sits in
//! slot `block_table[p / block_size] * block_size + p % block_size`. New K/V are
//! written by slot; attention reads a sequence's blocks through its table, so
//! sequences of any length share one pool without copies.
//!
//! Multi-head latent attention (DeepSeek-V2/V3) stores one latent row per token,
//! `[c_kv, k_pe]`, as a single KV head; its values are the key row's first
//! `kv_lora_rank` floats ([`ValueStorage::KeyPrefix`]), so no V buffer exists
//! (the "absorbed" MLA cache of vLLM/FlashMLA).
//!
//! Attention runs in parallel over (token, head) with rayon. Queries attend to
//! every cached position up to their own (causal), optionally only to the last
//! `window` positions (Gemma's sliding-window layers), with optional tanh
//! soft-capping of the scores.

use crate::sched::block_pool::BlockId;

#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    /// Width of one key head.
    pub head_dim: usize,
    pub values: ValueStorage,
}

/// Where a token's values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueStorage {
    /// A V buffer shaped like K.
    Separate,
    /// The first `n` floats of each key head are its value (MLA's latent `c_kv`).
    KeyPrefix(usize),
}

impl KvLayout {
    /// Bytes of K (and V, when stored) for one token over all layers.
    pub fn bytes_per_token(&self) -> usize {
        let buffers = match self.values {
            ValueStorage::Separate => 2,
            ValueStorage::KeyPrefix(_) => 1,
        };
        self.num_layers * buffers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
    fn floats_per_block(&self) -> usize {
        self.block_size * self.num_kv_heads * self.head_dim
    }
    /// Width of one value head (the attention output per query head).
    pub fn value_dim(&self) -> usize {
        match self.values {
            ValueStorage::Separate => self.head_dim,
            ValueStorage::KeyPrefix(n) => n,
        }
    }
}

pub struct KvCache {
    layout: KvLayout,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// The pool slot holding position `pos` of a sequence with this block table.
pub fn slot_of(table: &[BlockId], pos: usize, block_size: usize) -> usize {
    table[pos / block_size] as usize * block_size + pos % block_size
}

/// One sequence's share of a batch, as the attention kernel sees it.
#[derive(Debug, Clone)]
pub struct SeqView<'a> {
    /// Range of this sequence's new tokens in the batch.
    pub token_range: std::ops::Range<usize>,
    /// Position of the first new token.
    pub start_pos: usize,
    pub block_table: &'a [BlockId],
}

#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub num_heads: usize,
    pub scale: f32,
    /// Attend only to the last `window` positions (sliding-window layers).
    pub window: Option<usize>,
    /// Tanh soft-capping of the attention scores.
    pub softcap: Option<f32>,
}

impl KvCache {
    pub fn new(layout: KvLayout) -> Self {
        let n = layout.num_blocks * layout.floats_per_block();
        let v_layers = match layout.values {
            ValueStorage::Separate => layout.num_layers,
            ValueStorage::KeyPrefix(_) => 0,
        };
        // The pool is a zeroed allocation in huge pages where THP allows,
        // committed at once by every core (`commit_now`): reserved at
        // start-up, as a serving engine's KV pool should be, so that the
        // process does not grow while serving.
        let zeroed = || crate::host_memory::zeroed_with_huge_pages(n);
        let cache = KvCache {
            layout,
            k: (0..layout.num_layers).map(|_| zeroed()).collect(),
            v: (0..v_layers).map(|_| zeroed()).collect(),
        };
        let buffers: Vec<(usize, usize)> = cache
            .k
            .iter()
            .chain(&cache.v)
            .map(|b| (b.as_ptr() as usize, std::mem::size_of_val(b.as_slice())))
            .collect();
        crate::host_memory::commit_now(&buffers);
        cache
    }

    fn slot(&self, table: &[BlockId], pos: usize) -> usize {
        slot_of(table, pos, self.layout.block_size)
    }

    /// Copy whole blocks (copy-on-write for forked sequences), every layer.
    pub fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) {
        let n = self.layout.floats_per_block();
        for (src, dst) in copies {
            let (s, d) = (*src as usize * n, *dst as usize * n);
            for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
                layer.copy_within(s..s + n, d);
            }
        }
    }

    /// Write the batch's new K and V (`[tokens, kv_heads * head_dim]`) into their
    /// slots. `v` is ignored (may be empty) when values are a key prefix.
    pub fn write(&mut self, layer: usize, seqs: &[SeqView], k: &[f32], v: &[f32]) {
        let row = self.layout.num_kv_heads * self.layout.head_dim;
        let separate = self.layout.values == ValueStorage::Separate;
        for s in seqs {
            for (i, t) in s.token_range.clone().enumerate() {
                let slot = self.slot(s.block_table, s.start_pos + i);
                let dst = slot * row;
                self.k[layer][dst..dst + row].copy_from_slice(&k[t * row..(t + 1) * row]);
                if separate {
                    self.v[layer][dst..dst + row].copy_from_slice(&v[t * row..(t + 1) * row]);
                }
            }
        }
    }

    /// Paged attention for every new token of the batch. `q` is
    /// `[tokens, heads * head_dim]`; returns `[tokens, heads * value_dim]`.
    pub fn attend(
        &self,
        layer: usize,
        seqs: &[SeqView],
        q: &[f32],
        p: AttentionParams,
    ) -> Vec<f32> {
        let hd = self.layout.head_dim;
        let vd = self.layout.value_dim();
        let kvh = self.layout.num_kv_heads;
        let group = p.num_heads / kvh;
        let row_q = p.num_heads * hd;
        let num_tokens = q.len() / row_q;
        let mut out = vec![0.0f32; num_tokens * p.num_heads * vd];
        // Which sequence (and position) each batch token belongs to.
        let mut owner = vec![(0usize, 0usize); num_tokens];
        for (si, s) in seqs.iter().enumerate() {
            for (i, t) in s.token_range.clone().enumerate() {
                owner[t] = (si, s.start_pos + i);
            }
        }
        let kl = &self.k[layer];
        let vl = match self.layout.values {
            ValueStorage::Separate => &self.v[layer],
            ValueStorage::KeyPrefix(_) => kl,
        };
        crate::parallel::for_row_runs(&mut out, vd, |first, run| {
            let mut scores = Vec::new();
            for (i, o) in run.chunks_mut(vd).enumerate() {
                let idx = first + i;
                let (t, h) = (idx / p.num_heads, idx % p.num_heads);
                let (si, pos) = owner[t];
                let table = seqs[si].block_table;
                let qh = &q[t * row_q + h * hd..t * row_q + (h + 1) * hd];
                let kv_off = (h / group) * hd;
                let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for j in lo..=pos {
                    let base = self.slot(table, j) * kvh * hd + kv_off;
                    let mut s = dot(qh, &kl[base..base + hd]) * p.scale;
                    if let Some(cap) = p.softcap {
                        s = cap * (s / cap).tanh();
                    }
                    max = max.max(s);
                    scores.push(s);
                }
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                for (j, &w) in (lo..=pos).zip(scores.iter()) {
                    let base = self.slot(table, j) * kvh * hd + kv_off;
                    axpy(w * inv, &vl[base..base + vd], o);
                }
            }
        });
        out
    }
}

/// `a · b`, with AVX2+FMA where the CPU has them (checked once; std caches
/// the answer).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just checked.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail = a.len() / 8 * 8;
    acc.iter().sum::<f32>() + dot_tail(&a[tail..], &b[tail.min(b.len())..])
}

fn dot_tail(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 floats below `n`.
    while i + 16 <= n {
        s0 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            s0,
        );
        s1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            _mm256_loadu_ps(b.as_ptr().add(i + 8)),
            s1,
        );
        i += 16;
    }
    if i + 8 <= n {
        s0 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            s0,
        );
        i += 8;
    }
    let s = _mm256_add_ps(s0, s1);
    let half = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quad, _mm_movehdup_ps(quad));
    _mm_cvtss_f32(one) + dot_tail(&a[i..n], &b[i..n])
}

/// `y += alpha · x`, with AVX2+FMA where the CPU has them.
#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just checked.
        return unsafe { axpy_avx2(alpha, x, y) };
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let a = _mm256_set1_ps(alpha);
    let mut i = 0;
    // SAFETY: every access covers 8 floats below `n`.
    while i + 8 <= n {
        let yv = _mm256_loadu_ps(y.as_ptr().add(i));
        _mm256_storeu_ps(
            y.as_mut_ptr().add(i),
            _mm256_fmadd_ps(a, _mm256_loadu_ps(x.as_ptr().add(i)), yv),
        );
        i += 8;
    }
    for (yi, xi) in y[i..n].iter_mut().zip(&x[i..n]) {
        *yi += alpha * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paged attention equals dense causal attention computed directly.
    #[test]
    fn paged_matches_dense() {
        let layout = KvLayout {
            num_layers: 1,
            num_blocks: 8,
            block_size: 4,
            num_kv_heads: 2,
            head_dim: 8,
            values: ValueStorage::Separate,
        };
        let mut cache = KvCache::new(layout);
        let heads = 4;
        let n = 7;
        let rnd = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let q: Vec<f32> = (0..n * heads * 8).map(|i| rnd(i + 3)).collect();
        let k: Vec<f32> = (0..n * 2 * 8).map(rnd).collect();
        let v: Vec<f32> = (0..n * 2 * 8).map(|i| rnd(i + 11)).collect();
        let table = [5, 2];
        let seqs = [SeqView {
            token_range: 0..n,
            start_pos: 0,
            block_table: &table,
        }];
        cache.write(0, &seqs, &k, &v);
        let p = AttentionParams {
            num_heads: heads,
            scale: 0.3,
            window: Some(3),
            softcap: None,
        };
        let out = cache.attend(0, &seqs, &q, p);
        for t in 0..n {
            for h in 0..heads {
                let kvh = h / 2;
                let lo = (t + 1).saturating_sub(3);
                let qh = &q[(t * heads + h) * 8..(t * heads + h + 1) * 8];
                let s: Vec<f32> = (lo..=t)
                    .map(|j| dot(qh, &k[(j * 2 + kvh) * 8..(j * 2 + kvh + 1) * 8]) * 0.3)
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..8 {
                    let want: f32 = (lo..=t)
                        .zip(&e)
                        .map(|(j, w)| w / z * v[(j * 2 + kvh) * 8 + d])
                        .sum();
                    let got = out[(t * heads + h) * 8 + d];
                    assert!((want - got).abs() < 1e-5, "t{t} h{h} d{d}: {want} vs {got}");
                }
            }
        }
    }

    /// MLA layout: one latent head whose first `n` floats are the value; no V buffer.
    #[test]
    fn key_prefix_values_match_dense() {
        let (hd, vd, heads, n) = (12, 8, 3, 5);
        let layout = KvLayout {
            num_layers: 1,
            num_blocks: 4,
            block_size: 2,
            num_kv_heads: 1,
            head_dim: hd,
            values: ValueStorage::KeyPrefix(vd),
        };
        assert_eq!(layout.bytes_per_token(), hd * 4);
        let mut cache = KvCache::new(layout);
        let rnd = |i: usize| ((i * 7919 % 97) as f32 / 48.0) - 1.0;
        let q: Vec<f32> = (0..n * heads * hd).map(|i| rnd(i + 5)).collect();
        let k: Vec<f32> = (0..n * hd).map(rnd).collect();
        let table = [3, 0, 2];
        let seqs = [SeqView {
            token_range: 0..n,
            start_pos: 0,
            block_table: &table,
        }];
        cache.write(0, &seqs, &k, &[]);
        let p = AttentionParams {
            num_heads: heads,
            scale: 0.5,
            window: None,
            softcap: None,
        };
        let out = cache.attend(0, &seqs, &q, p);
        assert_eq!(out.len(), n * heads * vd);
        for t in 0..n {
            for h in 0..heads {
                let qh = &q[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                let s: Vec<f32> = (0..=t)
                    .map(|j| dot(qh, &k[j * hd..(j + 1) * hd]) * 0.5)
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..vd {
                    let want: f32 = (0..=t).zip(&e).map(|(j, w)| w / z * k[j * hd + d]).sum();
                    let got = out[(t * heads + h) * vd + d];
                    assert!((want - got).abs() < 1e-5, "t{t} h{h} d{d}: {want} vs {got}");
                }
            }
        }
    }
}
