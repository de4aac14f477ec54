//! Rotary position embeddings: the frequency table under each context-extension
//! scheme Hugging Face configs name (`linear`, `llama3`, `yarn` incl. DeepSeek's
//! mscale variant), and the per-batch cos/sin table that rotates Q and K.
//! Formulas follow `transformers`' `modeling_rope_utils`.

use std::f32::consts::PI;

use crate::error::{EngineError, Result};

/// Context-extension scaling of RoPE frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor.
    Linear(f32),
    /// Llama 3.1: low frequencies divided by `factor`, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
    /// YaRN: interpolate low frequencies, extrapolate high ones, scale cos/sin.
    Yarn {
        factor: f32,
        original_max_position: usize,
        beta_fast: f32,
        beta_slow: f32,
        /// cos/sin multiplier (`mscale / mscale_all_dim` for DeepSeek).
        cos_sin_scale: f32,
        /// DeepSeek's `mscale_all_dim`: the softmax scale gains its mscale squared.
        mscale_all_dim: f32,
    },
}

/// YaRN's attention-temperature correction.
fn yarn_mscale(scale: f32, mscale: f32) -> f32 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl RopeScaling {
    /// Parse `rope_scaling` of a `config.json` (`null` is no scaling).
    pub fn from_hf(v: &serde_json::Value) -> Result<Self> {
        if v.is_null() {
            return Ok(RopeScaling::None);
        }
        let kind = v["rope_type"]
            .as_str()
            .or_else(|| v["type"].as_str())
            .unwrap_or("default");
        let f = |k: &str, default: f32| v[k].as_f64().map_or(default, |x| x as f32);
        let factor = f("factor", 1.0);
        let original = v["original_max_position_embeddings"]
            .as_u64()
            .map(|x| x as usize);
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear(factor),
            "llama3" => RopeScaling::Llama3 {
                factor,
                low_freq_factor: f("low_freq_factor", 1.0),
                high_freq_factor: f("high_freq_factor", 4.0),
                original_max_position: original.unwrap_or(8192),
            },
            "yarn" => {
                let (mscale, mscale_all_dim) = (v["mscale"].as_f64(), v["mscale_all_dim"].as_f64());
                let cos_sin_scale = match (v["attention_factor"].as_f64(), mscale, mscale_all_dim) {
                    (Some(a), _, _) => a as f32,
                    (None, Some(m), Some(all)) => {
                        yarn_mscale(factor, m as f32) / yarn_mscale(factor, all as f32)
                    }
                    _ => yarn_mscale(factor, 1.0),
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position: original.unwrap_or(4096),
                    beta_fast: f("beta_fast", 32.0),
                    beta_slow: f("beta_slow", 1.0),
                    cos_sin_scale,
                    mscale_all_dim: mscale_all_dim.unwrap_or(0.0) as f32,
                }
            }
            other => {
                return Err(EngineError::Load(format!(
                    "unsupported rope_scaling type `{other}` (supported: linear, llama3, yarn)"
                )))
            }
        })
    }

    /// YaRN as a GGUF describes it. llama.cpp scales cos/sin by YaRN's
    /// default mscale, except for DeepSeek (`mscale_all_dim` given), where cos/sin
    /// stay unscaled (its `mscale` equals `mscale_all_dim`) and the softmax scale
    /// carries `mscale(factor, mscale_all_dim)` squared.
    pub fn gguf_yarn(
        factor: f32,
        original_max_position: usize,
        beta_fast: f32,
        beta_slow: f32,
        mscale_all_dim: Option<f32>,
    ) -> Self {
        RopeScaling::Yarn {
            factor,
            original_max_position,
            beta_fast,
            beta_slow,
            cos_sin_scale: if mscale_all_dim.is_some() {
                1.0
            } else {
                yarn_mscale(factor, 1.0)
            },
            mscale_all_dim: mscale_all_dim.unwrap_or(0.0),
        }
    }

    /// Factor on the softmax scale (DeepSeek YaRN: `mscale(factor, mscale_all_dim)`;
    /// the caller squares it).
    pub fn attention_mscale(&self) -> f32 {
        match self {
            RopeScaling::Yarn {
                factor,
                mscale_all_dim,
                ..
            } if *mscale_all_dim != 0.0 => yarn_mscale(*factor, *mscale_all_dim),
            _ => 1.0,
        }
    }

    /// Inverse frequencies for a `dim`-wide rotation with base `theta`, and the
    /// multiplier applied to cos/sin.
    pub fn inv_freq(&self, dim: usize, theta: f32) -> (Vec<f32>, f32) {
        let base: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / dim as f32))
            .collect();
        match *self {
            RopeScaling::None => (base, 1.0),
            RopeScaling::Linear(factor) => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let old = original_max_position as f32;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let scaled = base
                    .iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect();
                (scaled, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast,
                beta_slow,
                cos_sin_scale,
                ..
            } => {
                let correction_dim = |rotations: f32| {
                    dim as f32 * (original_max_position as f32 / (rotations * 2.0 * PI)).ln()
                        / (2.0 * theta.ln())
                };
                let low = correction_dim(beta_fast).floor().max(0.0);
                let mut high = correction_dim(beta_slow).ceil().min(dim as f32 - 1.0);
                if low == high {
                    high += 0.001;
                }
                let scaled = base
                    .iter()
                    .enumerate()
                    .map(|(i, &extrapolated)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp; // share of the unscaled frequency
                        extrapolated / factor * (1.0 - keep) + extrapolated * keep
                    })
                    .collect();
                (scaled, cos_sin_scale)
            }
        }
    }
}

/// Precomputed cos/sin for the batch's positions under one frequency table.
pub(crate) struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    pub(crate) fn new(positions: &[usize], inv_freq: &[f32], scale: f32) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                cos.push(c * scale);
                sin.push(s * scale);
            }
        }
        RopeTable { cos, sin, half }
    }

    /// cos and sin as `[tokens, 1, half]` tensors (candle's rope ops, one
    /// position per token).
    pub(crate) fn tensors(
        &self,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let n = self.cos.len() / self.half.max(1);
        let t = |v: &[f32]| {
            candle_core::Tensor::from_slice(v, (n, 1, self.half), device)?.to_dtype(dtype)
        };
        Ok((t(&self.cos)?, t(&self.sin)?))
    }

    /// Rotate the first `2 * half` floats of every head of every token in `x`
    /// (`[tokens, heads * head_dim]`).
    pub(crate) fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize, neox: bool) {
        for (t, row) in x.chunks_mut(heads * head_dim).enumerate() {
            let (cos, sin) = (
                &self.cos[t * self.half..(t + 1) * self.half],
                &self.sin[t * self.half..(t + 1) * self.half],
            );
            for head in row.chunks_mut(head_dim) {
                for i in 0..self.half {
                    let (a, b) = if neox {
                        (i, i + self.half)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::from_hf(&serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        }))
        .unwrap();
        let (base, _) = RopeScaling::None.inv_freq(128, 500_000.0);
        let (scaled, m) = s.inv_freq(128, 500_000.0);
        assert_eq!(m, 1.0);
        assert_eq!(scaled[0], base[0]);
        assert!((scaled[63] - base[63] / 8.0).abs() < 1e-12);
        assert!(scaled
            .iter()
            .zip(&base)
            .all(|(s, b)| s <= b && *s >= b / 8.0));
    }

    #[test]
    fn deepseek_yarn_mscale() {
        let s = RopeScaling::from_hf(&serde_json::json!({
            "type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707
        }))
        .unwrap();
        // Equal mscales cancel on cos/sin; the softmax gains 0.1*0.707*ln(40)+1.
        let (_, m) = s.inv_freq(64, 10_000.0);
        assert!((m - 1.0).abs() < 1e-6);
        assert!((s.attention_mscale() - (0.0707 * 40f32.ln() + 1.0)).abs() < 1e-5);
        assert!(RopeScaling::from_hf(&serde_json::json!({"type": "su"})).is_err());
    }
}
