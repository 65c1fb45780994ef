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
