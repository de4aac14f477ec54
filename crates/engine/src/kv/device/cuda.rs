//! Launches of `kernels/paged_attention.cu` (PTX embedded by `build.rs`)
//! through candle's CUDA device: a custom op for attention (its output is a
//! new tensor) and a direct launch for the in-place slot writes.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

use super::StepGeometry;
use crate::error::{EngineError, Result};
use crate::kv::host::{AttentionParams, KvLayout};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MODULE: &str = "switchyard_paged_attention";
const THREADS: u32 = 128; // NUM_WARPS * WARP in the kernel
const MAX_DIM: usize = 1024; // MAX_KEY_DIM / MAX_VALUE_DIM in the kernel

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(EngineError::Load(format!(
            "paged attention kernels take f32/f16/bf16, not {other:?}"
        ))),
    }
}

/// The device view of a contiguous CUDA tensor's storage, from its layout's offset.
fn view<'a, T: CudaDType>(storage: &'a Storage, layout: &Layout) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(cs) = storage else {
        return Err(EngineError::Load("expected a CUDA tensor".into()));
    };
    if !layout.is_contiguous() {
        return Err(EngineError::Load(
            "paged attention needs contiguous tensors".into(),
        ));
    }
    Ok(cs.as_cuda_slice::<T>()?.slice(layout.start_offset()..))
}

fn device_of(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => Err(EngineError::Load("expected a CUDA tensor".into())),
    }
}

/// Write `k` (and `v`) rows `[tokens, kv_heads, head_dim]` into their slots.
pub(super) fn reshape_and_cache(
    k: &Tensor,
    v: Option<&Tensor>,
    k_cache: &Tensor,
    v_cache: Option<&Tensor>,
    slots: &Tensor,
) -> Result<()> {
    let dtype = k_cache.dtype();
    let dev = device_of(k_cache)?;
    let (tokens, kvh, hd) = k.dims3()?;
    if tokens == 0 {
        return Ok(());
    }
    let row = (kvh * hd) as i32;
    let name = format!("reshape_and_cache_{}", suffix(dtype)?);
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, 1, 1),
        block_dim: ((row as u32).min(1024), 1, 1),
        shared_mem_bytes: 0,
    };
    match dtype {
        DType::F32 => write_rows::<f32>(&dev, &name, cfg, k, v, k_cache, v_cache, slots, row),
        DType::F16 => write_rows::<half::f16>(&dev, &name, cfg, k, v, k_cache, v_cache, slots, row),
        DType::BF16 => {
            write_rows::<half::bf16>(&dev, &name, cfg, k, v, k_cache, v_cache, slots, row)
        }
        other => Err(EngineError::Load(format!("KV cache dtype {other:?}"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_rows<T: CudaDType>(
    dev: &CudaDevice,
    name: &str,
    cfg: LaunchConfig,
    k: &Tensor,
    v: Option<&Tensor>,
    k_cache: &Tensor,
    v_cache: Option<&Tensor>,
    slots: &Tensor,
    row: i32,
) -> Result<()> {
    let (k_s, k_l) = k.storage_and_layout();
    let (kc_s, kc_l) = k_cache.storage_and_layout();
    let (sl_s, sl_l) = slots.storage_and_layout();
    let values = match (v, v_cache) {
        (Some(v), Some(vc)) => Some((v.storage_and_layout(), vc.storage_and_layout())),
        _ => None,
    };
    let ks = view::<T>(&k_s, k_l)?;
    let kc = view::<T>(&kc_s, kc_l)?;
    let ss = view::<u32>(&sl_s, sl_l)?;
    let vs = match &values {
        Some(((v_s, v_l), (vc_s, vc_l))) => Some((view::<T>(v_s, v_l)?, view::<T>(vc_s, vc_l)?)),
        None => None,
    };
    let null = 0u64;
    let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&ks);
    match &vs {
        Some((v, _)) => b.arg(v),
        None => b.arg(&null),
    };
    b.arg(&kc);
    match &vs {
        Some((_, vc)) => b.arg(vc),
        None => b.arg(&null),
    };
    b.arg(&ss);
    b.arg(&row);
    // SAFETY: argument order and types match `reshape_and_cache_*` in
    // kernels/paged_attention.cu; every slot is inside the cache (the block
    // pool hands out only its own blocks).
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// `q` `[tokens, heads * head_dim]` → `[tokens, heads * value_dim]`, same dtype as the cache.
pub(super) fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: Option<&Tensor>,
    g: &StepGeometry,
    layout: &KvLayout,
    p: AttentionParams,
) -> Result<Tensor> {
    if layout.head_dim > MAX_DIM || layout.value_dim() > MAX_DIM {
        return Err(EngineError::Load(format!(
            "head_dim {} / value_dim {} exceed the kernel's {MAX_DIM}",
            layout.head_dim,
            layout.value_dim()
        )));
    }
    let op = PagedAttentionOp {
        k_cache: k_cache.clone(),
        v_cache: v_cache.cloned(),
        block_tables: g.block_tables.clone(),
        token_seq: g.token_seq.clone(),
        token_pos: g.token_pos.clone(),
        max_blocks: g.max_blocks,
        layout: *layout,
        params: p,
    };
    Ok(q.apply_op1_no_bwd(&op)?)
}

struct PagedAttentionOp {
    k_cache: Tensor,
    v_cache: Option<Tensor>,
    block_tables: Tensor,
    token_seq: Tensor,
    token_pos: Tensor,
    max_blocks: usize,
    layout: KvLayout,
    params: AttentionParams,
}

impl PagedAttentionOp {
    fn run<T>(&self, q: &CudaStorage, q_layout: &Layout) -> Result<(CudaStorage, Shape)>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::WithDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
    {
        let dev = q.device().clone();
        let (tokens, width) = q_layout.shape().dims2()?;
        let l = &self.layout;
        let heads = self.params.num_heads;
        let vd = l.value_dim();
        let out_len = tokens * heads * vd;
        let out = dev.alloc_zeros::<T>(out_len.max(1))?;
        if tokens > 0 {
            debug_assert_eq!(width, heads * l.head_dim);
            let func = dev.get_or_load_custom_func(
                &format!(
                    "paged_attention_{}",
                    suffix(<T as candle_core::WithDType>::DTYPE)?
                ),
                MODULE,
                PTX,
            )?;
            let cfg = LaunchConfig {
                grid_dim: (tokens as u32, heads as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let qs = q.as_cuda_slice::<T>()?.slice(q_layout.start_offset()..);
            let ints = [
                heads as i32,
                l.num_kv_heads as i32,
                l.head_dim as i32,
                vd as i32,
                l.block_size as i32,
                self.max_blocks as i32,
            ];
            let scale = self.params.scale;
            let window = self.params.window.unwrap_or(0) as i32;
            let softcap = self.params.softcap.unwrap_or(0.0);
            let (kc_s, kc_l) = self.k_cache.storage_and_layout();
            let (bt_s, bt_l) = self.block_tables.storage_and_layout();
            let (ts_s, ts_l) = self.token_seq.storage_and_layout();
            let (tp_s, tp_l) = self.token_pos.storage_and_layout();
            let v_guard = self.v_cache.as_ref().map(|v| v.storage_and_layout());
            let kc = view::<T>(&kc_s, kc_l)?;
            let bt = view::<u32>(&bt_s, bt_l)?;
            let ts = view::<u32>(&ts_s, ts_l)?;
            let tp = view::<u32>(&tp_s, tp_l)?;
            let vc = match &v_guard {
                Some((v_s, v_l)) => Some(view::<T>(v_s, v_l)?),
                None => None,
            };
            let null = 0u64;
            let mut b = func.builder();
            b.arg(&qs);
            b.arg(&kc);
            match &vc {
                Some(vc) => b.arg(vc),
                None => b.arg(&null),
            };
            b.arg(&out);
            b.arg(&bt);
            b.arg(&ts);
            b.arg(&tp);
            for i in &ints {
                b.arg(i);
            }
            b.arg(&scale);
            b.arg(&window);
            b.arg(&softcap);
            // SAFETY: argument order and types match `paged_attention_*` in
            // kernels/paged_attention.cu; block tables index only the pool's blocks.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((tokens, heads * vd)),
        ))
    }
}

impl CustomOp1 for PagedAttentionOp {
    fn name(&self) -> &'static str {
        "switchyard-paged-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("paged attention kernels run on CUDA; the CPU uses the reference path")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let r = match q.dtype() {
            DType::F32 => self.run::<f32>(q, layout),
            DType::F16 => self.run::<half::f16>(q, layout),
            DType::BF16 => self.run::<half::bf16>(q, layout),
            other => Err(EngineError::Load(format!("attention dtype {other:?}"))),
        };
        r.map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}
