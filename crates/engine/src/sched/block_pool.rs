//! KV block pool with prefix caching, following vLLM v1's `BlockPool`.
//!
//! The pool hands out fixed-size KV blocks by id. Each block carries a reference
//! count; a block whose count drops to zero goes to the *tail* of an LRU free
//! queue but keeps its content hash, so a later request with the same prefix can
//! take it back (a prefix-cache hit). Allocation pops the *head* of the queue and
//! evicts whatever hash the block still had. A full block's hash chains its
//! parent's hash with its own token ids, so equal hashes mean equal prefixes.
//! The hash is SHA-256 (vLLM's `sha256` prefix-caching hash), so a crafted
//! prompt cannot collide into another request's blocks; a request's
//! `cache_salt` seeds the chain, so only requests with the same salt share.
//!
//! Invariants (checked by the property tests in `scheduler.rs`):
//! - a block is in the free queue iff its ref count is zero;
//! - `cached` maps a hash to exactly one block, and that block carries that hash.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

pub type BlockId = u32;

/// Chained content hash of one full block of token ids (SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// Hash of a full block given its parent's hash (for the first block,
    /// the request's salt root, or None).
    pub fn of(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = Sha256::new();
        match parent {
            Some(p) => {
                h.update([1u8]);
                h.update(p.0);
            }
            None => h.update([0u8]),
        }
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        BlockHash(h.finalize().into())
    }

    /// The chain's root for requests that carry a `cache_salt`: their first
    /// block's parent, so they share blocks only with the same salt.
    pub fn salt_root(salt: &str) -> BlockHash {
        let mut h = Sha256::new();
        h.update([2u8]);
        h.update(salt.as_bytes());
        BlockHash(h.finalize().into())
    }
}

#[derive(Debug, Default, Clone)]
struct BlockMeta {
    ref_cnt: u32,
    hash: Option<BlockHash>,
    /// Position in the free queue while `ref_cnt == 0`.
    free_stamp: Option<u64>,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    /// LRU order of free blocks: stamp -> block id (lowest stamp evicted first).
    free_queue: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    cached: HashMap<BlockHash, BlockId>,
    prefix_caching: bool,
}

impl BlockPool {
    pub fn new(num_blocks: usize, prefix_caching: bool) -> Self {
        let mut pool = BlockPool {
            blocks: vec![BlockMeta::default(); num_blocks],
            free_queue: BTreeMap::new(),
            next_stamp: 0,
            cached: HashMap::new(),
            prefix_caching,
        };
        for id in 0..num_blocks as BlockId {
            pool.push_free(id);
        }
        pool
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be allocated now (free, possibly still holding a cached prefix).
    pub fn num_free(&self) -> usize {
        self.free_queue.len()
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_cnt
    }

    fn push_free(&mut self, id: BlockId) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.free_queue.insert(stamp, id);
        self.blocks[id as usize].free_stamp = Some(stamp);
    }

    fn take_from_free(&mut self, id: BlockId) {
        if let Some(stamp) = self.blocks[id as usize].free_stamp.take() {
            self.free_queue.remove(&stamp);
        }
    }

    /// Allocate a fresh block (ref count 1), evicting its cached hash if any.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let (_, id) = self.free_queue.pop_first()?;
        let meta = &mut self.blocks[id as usize];
        meta.free_stamp = None;
        debug_assert_eq!(meta.ref_cnt, 0);
        meta.ref_cnt = 1;
        if let Some(hash) = meta.hash.take() {
            if self.cached.get(&hash) == Some(&id) {
                self.cached.remove(&hash);
            }
        }
        Some(id)
    }

    /// Look a full block up by hash; on a hit the block gains a reference.
    pub fn take_cached(&mut self, hash: BlockHash) -> Option<BlockId> {
        if !self.prefix_caching {
            return None;
        }
        let id = *self.cached.get(&hash)?;
        if self.blocks[id as usize].ref_cnt == 0 {
            self.take_from_free(id);
        }
        self.blocks[id as usize].ref_cnt += 1;
        Some(id)
    }

    /// Is a block with this hash cached (without taking it)?
    pub fn is_cached(&self, hash: BlockHash) -> bool {
        self.prefix_caching && self.cached.contains_key(&hash)
    }

    /// Add a reference to a block already held (n>1 forks share blocks).
    pub fn share(&mut self, id: BlockId) {
        let meta = &mut self.blocks[id as usize];
        debug_assert!(meta.ref_cnt > 0, "sharing a free block");
        meta.ref_cnt += 1;
    }

    /// Drop one reference; at zero the block goes to the free queue's tail.
    pub fn release(&mut self, id: BlockId) {
        let meta = &mut self.blocks[id as usize];
        assert!(meta.ref_cnt > 0, "double free of KV block {id}");
        meta.ref_cnt -= 1;
        if meta.ref_cnt == 0 {
            self.push_free(id);
        }
    }

    /// Record that a full, computed block holds the prefix with this hash.
    pub fn register(&mut self, id: BlockId, hash: BlockHash) {
        if !self.prefix_caching {
            return;
        }
        let meta = &mut self.blocks[id as usize];
        if meta.hash.is_some() {
            return;
        }
        // Another block may already hold this prefix (computed concurrently): keep that one.
        if self.cached.contains_key(&hash) {
            return;
        }
        meta.hash = Some(hash);
        self.cached.insert(hash, id);
    }

    /// Check the pool's internal invariants; used by tests.
    #[cfg(test)]
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, meta) in self.blocks.iter().enumerate() {
            let in_queue = meta
                .free_stamp
                .is_some_and(|s| self.free_queue.get(&s) == Some(&(id as BlockId)));
            if (meta.ref_cnt == 0) != in_queue {
                return Err(format!(
                    "block {id}: ref {} but in_queue={in_queue}",
                    meta.ref_cnt
                ));
            }
        }
        if self.free_queue.len() != self.blocks.iter().filter(|m| m.ref_cnt == 0).count() {
            return Err("free queue holds stale entries".into());
        }
        for (hash, &id) in &self.cached {
            if self.blocks[id as usize].hash != Some(*hash) {
                return Err(format!(
                    "cache entry for block {id} does not match its hash"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_reuse_and_eviction() {
        let mut pool = BlockPool::new(2, true);
        let a = pool.allocate().unwrap();
        let h = BlockHash::of(None, &[1, 2, 3]);
        pool.register(a, h);
        pool.release(a);
        assert_eq!(pool.num_free(), 2);
        // A hit takes the freed block back.
        assert_eq!(pool.take_cached(h), Some(a));
        pool.release(a);
        // Two allocations evict it.
        let x = pool.allocate().unwrap();
        let y = pool.allocate().unwrap();
        assert!(pool.allocate().is_none());
        assert_eq!(pool.take_cached(h), None);
        pool.release(x);
        pool.release(y);
        pool.check_invariants().unwrap();
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut pool = BlockPool::new(1, false);
        let a = pool.allocate().unwrap();
        pool.release(a);
        pool.release(a);
    }
}
