//! A safetensors writer that streams tensor data, like [`crate::gguf_writer`]: the header (every
//! tensor's dtype, shape and byte range) is computed from the plan, then each tensor is produced,
//! written and dropped in turn. The `safetensors` crate's `serialize_to_file` needs every tensor
//! in memory at once — a whole 7B shard, or a 13B model's worth while applying a delta.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::files::write_atomically;

/// One tensor of the file.
#[derive(Clone, Debug)]
pub struct SafetensorsPlan {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: DType,
}

impl SafetensorsPlan {
    fn bytes(&self) -> u64 {
        self.dims.iter().map(|&d| d as u64).product::<u64>() * self.dtype.size_in_bytes() as u64
    }
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        other => return Err(Error::Internal(format!("{other:?} tensors are not written to safetensors here"))),
    })
}

/// The raw little-endian bytes of `t` (any layout) as `dtype`.
pub fn tensor_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let t = t.to_dtype(dtype)?.flatten_all()?;
    Ok(match dtype {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::U32 => t.to_vec1::<u32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => t.to_vec1::<i64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => return Err(Error::Internal(format!("{other:?} tensors are not written to safetensors here"))),
    })
}

/// Writes `path` atomically: `metadata` as the header's `__metadata__`, then the tensors of
/// `plan` in order, each produced by `data(i)` (raw bytes in the planned dtype) when its turn
/// comes.
pub fn write_safetensors(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    plan: &[SafetensorsPlan],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header
            .insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| Error::Internal(e.to_string()))?);
    }
    let mut offset = 0u64;
    for t in plan {
        let end = offset + t.bytes();
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": dtype_name(t.dtype)?, "shape": t.dims, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| Error::Internal(e.to_string()))?;
    // The data that follows starts 8-byte aligned (what the format recommends and readers check).
    json.resize(json.len().div_ceil(8) * 8, b' ');
    write_atomically(path, |file, tmp| {
        let io = |e: std::io::Error| Error::io(tmp, e);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&json).map_err(io)?;
        for (i, t) in plan.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != t.bytes() {
                return Err(Error::Internal(format!(
                    "`{}`: {} bytes produced, {} planned",
                    t.name,
                    bytes.len(),
                    t.bytes()
                )));
            }
            w.write_all(&bytes).map_err(io)?;
        }
        w.flush().map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn written_file_reads_back() {
        let dir = std::env::temp_dir().join(format!("minigpt4-st-writer-{}", std::process::id()));
        let path = dir.join("t.safetensors");
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, -2.5], [3.0, 4.25]], &dev).unwrap();
        let b = Tensor::new(&[7f32, 8.0, 9.0], &dev).unwrap();
        let plan = vec![
            SafetensorsPlan { name: "a".into(), dims: vec![2, 2], dtype: DType::F16 },
            SafetensorsPlan { name: "b".into(), dims: vec![3], dtype: DType::F32 },
        ];
        let md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&path, &md, &plan, |i| {
            if i == 0 {
                tensor_bytes(&a, DType::F16)
            } else {
                tensor_bytes(&b, DType::F32)
            }
        })
        .unwrap();
        let back = candle_core::safetensors::load(&path, &dev).unwrap();
        assert_eq!(back["a"].dtype(), DType::F16);
        assert_eq!(back["a"].to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(back["b"].to_vec1::<f32>().unwrap(), vec![7.0, 8.0, 9.0]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
