//! The paged KV cache: `host` (f32 buffers and the rayon attention, the CPU
//! fast path) and `device` (tensors on any device: the portable reference
//! path, and our CUDA kernels in `device/cuda.rs`).

pub(crate) mod device;
pub(crate) mod host;
