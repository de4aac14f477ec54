// switchyard's CUDA kernels for the paged KV cache (vLLM's PagedAttention
// layout: per layer, K and V are [num_slots, num_kv_heads, head_dim] with
// slot = block_table[pos / block_size] * block_size + pos % block_size).
//
//   reshape_and_cache_<T>  writes a step's new K/V rows into their slots.
//   paged_attention_<T>    attention for every new token of a step over its
//                          sequence's blocks: decode (one token per sequence)
//                          and prefill chunks (varlen) alike, causal, GQA,
//                          optional sliding window and tanh soft-capping, and
//                          MLA's "value = key prefix" mode.
//
// One CUDA block per (query token, head); its warps split the context and run
// an online softmax (flash-decoding style), then merge through shared memory.
// Inputs/outputs are T (f32, f16, bf16); all arithmetic is f32.
//
// Built by crates/engine/build.rs (nvcc --ptx), embedded in the binary and
// launched from crates/engine/src/paged_attention/cuda.rs. The portable
// reference these kernels are tested against is
// crates/engine/src/paged_attention.rs (gather + candle attention).

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define WARP 32
#define NUM_WARPS 4
// Largest value width one thread block handles: MLA's kv_lora_rank is 512;
// per-lane accumulators hold MAX_VALUE_DIM / WARP floats.
#define MAX_VALUE_DIM 1024
#define MAX_KEY_DIM 1024

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// grid: (num_tokens), block: (min(row, 1024)). row = num_kv_heads * head_dim.
// value / value_cache may be null (MLA keeps no V buffer).
template <typename T>
__device__ void reshape_and_cache(const T* __restrict__ key, const T* __restrict__ value,
                                  T* __restrict__ key_cache, T* __restrict__ value_cache,
                                  const uint32_t* __restrict__ slots, int row) {
  const int t = blockIdx.x;
  const size_t dst = (size_t)slots[t] * row;
  const size_t src = (size_t)t * row;
  for (int i = threadIdx.x; i < row; i += blockDim.x) {
    key_cache[dst + i] = key[src + i];
    if (value != nullptr) value_cache[dst + i] = value[src + i];
  }
}

// grid: (num_tokens, num_heads), block: (NUM_WARPS * WARP).
//   q            [num_tokens, num_heads, head_dim]
//   out          [num_tokens, num_heads, value_dim]
//   block_tables [num_seqs, max_blocks]
//   token_seq    [num_tokens]  which sequence each token belongs to
//   token_pos    [num_tokens]  its position (it attends to 0..=pos)
//   value_cache  null: values are the first value_dim floats of each key row
template <typename T>
__device__ void paged_attention(const T* __restrict__ q, const T* __restrict__ key_cache,
                                const T* __restrict__ value_cache, T* __restrict__ out,
                                const uint32_t* __restrict__ block_tables,
                                const uint32_t* __restrict__ token_seq,
                                const uint32_t* __restrict__ token_pos, int num_heads,
                                int num_kv_heads, int head_dim, int value_dim, int block_size,
                                int max_blocks, float scale, int window, float softcap) {
  const int t = blockIdx.x;
  const int h = blockIdx.y;
  const int warp = threadIdx.x / WARP;
  const int lane = threadIdx.x % WARP;
  const int kv_head = h / (num_heads / num_kv_heads);
  const int seq = token_seq[t];
  const int pos = token_pos[t];
  const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
  const uint32_t* table = block_tables + (size_t)seq * max_blocks;
  const T* values = value_cache != nullptr ? value_cache : key_cache;

  __shared__ float q_s[MAX_KEY_DIM];
  __shared__ float m_s[NUM_WARPS];
  __shared__ float l_s[NUM_WARPS];
  __shared__ float acc_s[NUM_WARPS][MAX_VALUE_DIM];

  const T* qh = q + ((size_t)t * num_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_s[d] = to_f32(qh[d]);
  __syncthreads();

  constexpr int PER_LANE = MAX_VALUE_DIM / WARP;
  float acc[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; i++) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  const size_t row = (size_t)num_kv_heads * head_dim;

  for (int j = lo + warp; j <= pos; j += NUM_WARPS) {
    const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
    const T* k = key_cache + slot * row + (size_t)kv_head * head_dim;
    float s = 0.f;
    for (int d = lane; d < head_dim; d += WARP) s += q_s[d] * to_f32(k[d]);
    s = warp_sum(s) * scale;
    if (softcap > 0.f) s = softcap * tanhf(s / softcap);
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new);
    const float p = __expf(s - m_new);
    l = l * corr + p;
    const T* v = values + slot * row + (size_t)kv_head * head_dim;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
      const int d = lane + i * WARP;
      if (d < value_dim) acc[i] = acc[i] * corr + p * to_f32(v[d]);
    }
    m = m_new;
  }

  if (lane == 0) {
    m_s[warp] = m;
    l_s[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < PER_LANE; i++) {
    const int d = lane + i * WARP;
    if (d < value_dim) acc_s[warp][d] = acc[i];
  }
  __syncthreads();

  float m_all = -INFINITY;
  for (int w = 0; w < NUM_WARPS; w++) m_all = fmaxf(m_all, m_s[w]);
  float l_all = 0.f;
  for (int w = 0; w < NUM_WARPS; w++)
    if (m_s[w] > -INFINITY) l_all += l_s[w] * __expf(m_s[w] - m_all);
  const float inv = l_all > 0.f ? 1.f / l_all : 0.f;
  T* o = out + ((size_t)t * num_heads + h) * value_dim;
  for (int d = threadIdx.x; d < value_dim; d += blockDim.x) {
    float sum = 0.f;
    for (int w = 0; w < NUM_WARPS; w++)
      if (m_s[w] > -INFINITY) sum += acc_s[w][d] * __expf(m_s[w] - m_all);
    o[d] = from_f32<T>(sum * inv);
  }
}

#define INSTANTIATE(T, suffix)                                                                \
  extern "C" __global__ void reshape_and_cache_##suffix(                                      \
      const T* key, const T* value, T* key_cache, T* value_cache, const uint32_t* slots,      \
      int row) {                                                                              \
    reshape_and_cache<T>(key, value, key_cache, value_cache, slots, row);                     \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(NUM_WARPS * WARP) paged_attention_##suffix(    \
      const T* q, const T* key_cache, const T* value_cache, T* out,                           \
      const uint32_t* block_tables, const uint32_t* token_seq, const uint32_t* token_pos,     \
      int num_heads, int num_kv_heads, int head_dim, int value_dim, int block_size,           \
      int max_blocks, float scale, int window, float softcap) {                               \
    paged_attention<T>(q, key_cache, value_cache, out, block_tables, token_seq, token_pos,    \
                       num_heads, num_kv_heads, head_dim, value_dim, block_size, max_blocks,  \
                       scale, window, softcap);                                               \
  }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)
