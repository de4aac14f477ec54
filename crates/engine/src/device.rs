//! Devices and memory placement: parse `cpu` / `cuda` / `cuda:N`, read free
//! device memory, check that a model's weights fit before loading it, and
//! split what is left for KV pools (vLLM's `gpu_memory_utilization`: the
//! share of the whole device switchyard may use, weights included).

use std::path::Path;

use candle_core::Device;

use crate::error::{EngineError, Result};

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                EngineError::Load(format!("device `{spec}`: expected cpu, cuda or cuda:N"))
            })?,
        None => {
            return Err(EngineError::Load(format!(
                "device `{spec}`: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(EngineError::Load(format!(
            "device `{spec}`: this binary was built without CUDA (build it with scripts/build-cuda)"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| EngineError::Load(format!("device `{spec}`: cannot open it: {e}")))
}

/// Free and total bytes of a CUDA device; None for the CPU.
pub fn memory_info(device: &Device) -> Option<(usize, usize)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().mem_get_info().ok();
    }
    let _ = device;
    None
}

/// Bytes of weights a model source holds on disk (the GGUF file, or a
/// folder's `*.safetensors`): what loading it will place on the device.
pub fn weights_bytes(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

/// Refuse to load `model` when its weights cannot fit in what is free,
/// keeping `reserve` bytes back; the error says what needs how much.
pub fn check_fits(model: &str, weights: u64, free: usize, reserve: usize) -> Result<()> {
    let usable = free.saturating_sub(reserve) as u64;
    if weights > usable {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(EngineError::Load(format!(
            "model `{model}` needs {:.2} GiB for its weights but only {:.2} GiB of device memory \
             is free after the models already placed (and {:.2} GiB kept back by \
             gpu_memory_utilization); remove a model, use a smaller quantization, or another device",
            gib(weights),
            gib(usable),
            gib(reserve as u64)
        )));
    }
    Ok(())
}

/// Bytes the KV pools may take once every model is loaded: the
/// `utilization` share of the device minus what is already in use, split
/// between `models` pools in proportion to their weights.
pub fn kv_budgets(free: usize, total: usize, utilization: f64, weights: &[u64]) -> Vec<usize> {
    let allowed = (total as f64 * utilization.clamp(0.05, 1.0)) as usize;
    let used = total.saturating_sub(free);
    let budget = allowed.saturating_sub(used);
    let sum: u64 = weights.iter().sum::<u64>().max(1);
    weights
        .iter()
        .map(|&w| {
            if weights.len() == 1 {
                budget
            } else {
                (budget as f64 * w as f64 / sum as f64) as usize
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("built without CUDA"), "{err}");
        }
    }

    #[test]
    fn placement_errors_and_budgets() {
        let err = check_fits("big", 20 << 30, 16 << 30, 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`big` needs 20.00 GiB") && err.contains("15.00 GiB"),
            "{err}"
        );
        assert!(check_fits("small", 1 << 30, 16 << 30, 1 << 30).is_ok());
        // 80 GiB device, 30 GiB used by weights, 90% allowed: 42 GiB for KV, split 2:1.
        let gib = 1usize << 30;
        let b = kv_budgets(50 * gib, 80 * gib, 0.9, &[20 << 30, 10 << 30]);
        assert_eq!(b.len(), 2);
        assert!((b[0] as f64 / gib as f64 - 28.0).abs() < 0.01, "{b:?}");
        assert!((b[1] as f64 / gib as f64 - 14.0).abs() < 0.01, "{b:?}");
        assert_eq!(kv_budgets(10 * gib, 80 * gib, 0.9, &[1]), vec![2 * gib]);
        assert_eq!(kv_budgets(5 * gib, 80 * gib, 0.9, &[1]), vec![0]);
    }
}
