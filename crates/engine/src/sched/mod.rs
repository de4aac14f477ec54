//! Scheduling: which sequences run in the next step, with how many tokens
//! (`scheduler`, vLLM v1's policy), over a prefix-caching pool of KV blocks
//! (`block_pool`, vLLM's KV-cache manager). Token ids and block ids only,
//! never tensors.

pub(crate) mod block_pool;
pub(crate) mod scheduler;
