//! f16 → f32 widening of weights kept in f16 (EVA ViT-g: 2 GB instead of 4) and widened for each
//! use. candle's `to_dtype` converts one value at a time on one thread; `half`'s slice conversion
//! uses the CPU's F16C instructions, here over the thread pool the matmuls use.

use candle_core::{DType, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// `t` (f16) as f32; other dtypes and devices go through `to_dtype`.
pub fn f16_to_f32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F16 || !t.device().is_cpu() || !t.is_contiguous() {
        return t.to_dtype(DType::F32);
    }
    let out = {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { return t.to_dtype(DType::F32) };
        let src: &[half::f16] = crate::cpu::slice(cpu, layout, "f16_to_f32")?;
        let mut out = vec![0f32; src.len()];
        const CHUNK: usize = 1 << 15;
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, i)| i.convert_to_f32_slice(o));
        out
    };
    Tensor::from_vec(out, t.shape(), t.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn widening_matches_candle() {
        let x = Tensor::randn(0f32, 3f32, (70_000,), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
        let a = f16_to_f32(&x).unwrap().to_vec1::<f32>().unwrap();
        let b = x.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        // A non-contiguous view takes candle's path and gives the same values.
        let m = x.reshape((700, 100)).unwrap().t().unwrap();
        assert_eq!(
            f16_to_f32(&m).unwrap().to_vec2::<f32>().unwrap(),
            m.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
        );
    }
}
