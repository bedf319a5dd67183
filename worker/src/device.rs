//! Device selection: parses `--device` specs (`cpu`, `cuda:N`) and picks the default compute
//! dtype for each device.
//!
//! CUDA support is a cargo feature (`cuda`, off by default) so the CPU build needs no toolkit; a
//! CPU-only binary asked for a GPU says how to get one instead of failing somewhere inside candle.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Parses a device spec: `cpu`, `cuda` (= `cuda:0`) or `cuda:N` (N counts the GPUs the process
/// sees, i.e. after `CUDA_VISIBLE_DEVICES`).
pub fn parse_device(spec: &str) -> Result<Device> {
    match parse_spec(spec)? {
        Spec::Cpu => Ok(Device::Cpu),
        Spec::Cuda(ordinal) => cuda_device(spec, ordinal),
    }
}

/// The dtype weights and activations use on `device` unless the job says otherwise: f32 on the
/// CPU (candle's CPU bf16 kernels are slow and lose precision), bf16 on a GPU (half the memory and
/// the tensor cores, with f32's exponent range).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// A device spec after parsing, before any device is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    Cpu,
    Cuda(usize),
}

fn parse_spec(spec: &str) -> Result<Spec> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Spec::Cpu);
    }
    if s == "cuda" || s == "gpu" {
        return Ok(Spec::Cuda(0));
    }
    let ordinal = s.strip_prefix("cuda:").or_else(|| s.strip_prefix("gpu:"));
    match ordinal.map(str::parse::<usize>) {
        Some(Ok(n)) => Ok(Spec::Cuda(n)),
        _ => Err(Error::Unsupported(format!(
            "device {spec:?}: expected `cpu`, `cuda` or `cuda:N` (N = 0, 1, ...)"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(spec: &str, ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Unsupported(format!("device {spec:?}: cannot open the GPU: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str, _ordinal: usize) -> Result<Device> {
    Err(Error::Unsupported(format!(
        "device {spec:?}: built without CUDA support: rebuild with --features cuda \
         (scripts/build-cuda.sh)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_specs() {
        assert_eq!(parse_spec("cpu").unwrap(), Spec::Cpu);
        assert_eq!(parse_spec(" CPU ").unwrap(), Spec::Cpu);
        assert_eq!(parse_spec("cuda").unwrap(), Spec::Cuda(0));
        assert_eq!(parse_spec("cuda:3").unwrap(), Spec::Cuda(3));
    }

    #[test]
    fn rejects_malformed_specs_naming_them() {
        for bad in ["cuda:", "cuda:-1", "cuda:x", "tpu", ""] {
            let err = parse_spec(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
            assert!(err.contains("cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_defaults_to_f32() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(default_dtype(&Device::Cpu), DType::F32);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(
            err.contains("built without CUDA support: rebuild with --features cuda"),
            "{err}"
        );
    }
}
