//! The device forward path (KV pool as candle tensors, RoPE by candle's ops,
//! the portable paged-attention reference that the CUDA kernels are checked
//! against) equals the CPU fast path on every family, over a realistic step
//! sequence: two sequences, a chunked prefill, then batched decodes.

mod common;

use candle_core::{DType, Device};
use switchyard_engine::internals::KvStore;
use switchyard_engine::internals::SeqView;
use switchyard_engine::LoadedModel;
use switchyard_testkit::{write_random_checkpoint, FAMILIES};

/// Run the same steps through `store`; returns every logits row produced.
fn run_steps(loaded: &LoadedModel, mut store: KvStore) -> Vec<Vec<f32>> {
    let a: Vec<u32> = (0..19).map(|i| (i * 13 % 250) as u32).collect();
    let b: Vec<u32> = (0..6).map(|i| (i * 29 % 250 + 1) as u32).collect();
    let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..2).collect(), (4..6).collect());
    // (seq a: start, len), (seq b: start, len) per step; tokens are made up.
    type Chunk = (usize, usize);
    let steps: [(Chunk, Option<Chunk>); 4] = [
        ((0, 11), None),
        ((11, 8), Some((0, 6))),
        ((19, 1), Some((6, 1))),
        ((20, 1), Some((7, 1))),
    ];
    let mut out = Vec::new();
    for ((sa, la), bstep) in steps {
        let tok = |seq: &[u32], start: usize, len: usize| -> Vec<u32> {
            (start..start + len)
                .map(|p| seq.get(p).copied().unwrap_or((p * 7 % 250) as u32))
                .collect()
        };
        let mut tokens = tok(&a, sa, la);
        let mut seqs = vec![SeqView {
            token_range: 0..la,
            start_pos: sa,
            block_table: &ta,
        }];
        if let Some((sb, lb)) = bstep {
            tokens.extend(tok(&b, sb, lb));
            seqs.push(SeqView {
                token_range: la..la + lb,
                start_pos: sb,
                block_table: &tb,
            });
        }
        let rows: Vec<usize> = seqs.iter().map(|s| s.token_range.end - 1).collect();
        out.extend(
            loaded
                .model
                .forward(&tokens, &seqs, &rows, &mut store)
                .expect("forward"),
        );
    }
    out
}

#[test]
fn device_reference_path_matches_cpu_path_for_every_family() {
    for family in FAMILIES {
        let dir =
            std::env::temp_dir().join(format!("switchyard-device-{family}-{}", std::process::id()));
        write_random_checkpoint(&dir, family, false).unwrap();
        let loaded = LoadedModel::load(&dir, &Device::Cpu).unwrap();
        let host = run_steps(
            &loaded,
            loaded
                .model
                .new_kv_store(8, 16, switchyard_engine::KvBackend::Auto)
                .unwrap(),
        );
        assert!(matches!(
            loaded
                .model
                .new_kv_store(8, 16, switchyard_engine::KvBackend::Auto)
                .unwrap(),
            KvStore::Host(_)
        ));
        let device = run_steps(
            &loaded,
            loaded.model.new_device_kv_store(8, 16, DType::F32).unwrap(),
        );
        assert_eq!(host.len(), device.len());
        for (i, (h, d)) in host.iter().zip(&device).enumerate() {
            let diff = common::max_abs_diff(h, d);
            assert!(diff < 1e-3, "{family} row {i}: max |diff| {diff}");
        }
        // A bf16 pool stays close (bf16 rounding of K/V only).
        let bf16 = run_steps(
            &loaded,
            loaded
                .model
                .new_device_kv_store(8, 16, DType::BF16)
                .unwrap(),
        );
        for (h, d) in host.iter().zip(&bf16) {
            let diff = common::max_abs_diff(h, d);
            assert!(diff < 0.1, "{family} bf16 pool: max |diff| {diff}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
