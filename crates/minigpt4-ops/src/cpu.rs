//! Plumbing every CPU kernel of this crate shares: which tensors take the fused path, and the
//! elements of an operand as a slice.

use candle_core::{bail, CpuStorage, DType, Layout, Tensor, WithDType};

/// Inference kernels (ViT, decode): f32 on the CPU; anything else takes candle's composite ops.
pub fn fused_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Training kernels: f32, and f64 for the finite-difference gradient checks.
pub fn fused_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The elements of a contiguous operand.
pub fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{op}: operand {:?} is not contiguous", l.dims()) };
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// The instruction sets our kernels dispatch on, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuLevel {
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F/BW with VNNI (`vpdpbusd`): Ice Lake and later, Zen 4 and later.
    Avx512Vnni,
}

/// The best level this CPU has, capped by `MINIGPT4_CPU=scalar|avx2|avx512` (to measure or test
/// a lower path on a machine that has a higher one). Read once per process.
pub fn cpu_level() -> CpuLevel {
    static LEVEL: std::sync::OnceLock<CpuLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("MINIGPT4_CPU").as_deref().map(str::trim) {
            Ok("scalar") => CpuLevel::Scalar,
            Ok("avx2") => CpuLevel::Avx2,
            _ => CpuLevel::Avx512Vnni,
        };
        detected().min(cap)
    })
}

fn detected() -> CpuLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
        {
            return CpuLevel::Avx512Vnni;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return CpuLevel::Avx2;
        }
    }
    CpuLevel::Scalar
}
