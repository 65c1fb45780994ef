//! A GGUF (version 3) writer that streams tensor data: the header, which holds every tensor's
//! offset, is computed from shapes and block types alone, then each tensor is produced, written and
//! dropped in turn. candle's `gguf_file::write` takes every tensor at once, which for a 7B model is
//! the whole model in memory; this one holds one tensor at a time.
//!
//! Layout as in ggml's `gguf.c` / gguf-py's `GGUFWriter`: magic, version, tensor and key counts,
//! the key–value pairs, the tensor infos (dims innermost first, ggml type, offset from the start of
//! the data section), padding to `general.alignment` (32), then the data, each tensor padded to 32.

use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};
use crate::files::write_atomically;

const MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
const VERSION: u32 = 3;
const ALIGNMENT: u64 = 32;

/// One tensor of the file, as [`write_gguf`] will lay it out.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    /// Row-major dims (candle's order; the file stores them reversed).
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorPlan {
    /// Bytes of the tensor's data (blocks × block bytes).
    pub fn bytes(&self) -> Result<u64> {
        let elems: u64 = self.dims.iter().map(|&d| d as u64).product();
        let block = self.dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(Error::Internal(format!(
                "`{}`: {elems} values are not a whole number of {:?} blocks",
                self.name, self.dtype
            )));
        }
        Ok(elems / block * self.dtype.type_size() as u64)
    }
}

/// ggml's type id (`enum ggml_type`; candle keeps its own mapping private).
fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn padding(n: u64) -> u64 {
    (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGUF value type codes (`enum gguf_type`).
fn type_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(w: &mut impl Write, key: &str, v: &Value) -> Result<()> {
    let io = |e| Error::Internal(format!("writing GGUF value `{key}`: {e}"));
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => put_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(items) => {
            // gguf arrays are homogeneous; an empty one is written as an array of u32 (as candle and
            // gguf-py do).
            let code = items.first().map_or(4, type_code);
            if items.iter().any(|x| type_code(x) != code || matches!(x, Value::Array(_))) {
                return Err(Error::Internal(format!("GGUF array `{key}` mixes value types or nests arrays")));
            }
            w.write_all(&code.to_le_bytes()).map_err(io)?;
            w.write_all(&(items.len() as u64).to_le_bytes()).map_err(io)?;
            for x in items {
                put_value(w, key, x)?;
            }
            Ok(())
        }
    }
    .map_err(io)
}

/// Writes `path` atomically (see [`write_atomically`]): `metadata`, then the tensors of `plan`
/// in order, each produced by `data(i)` as its raw bytes (GGUF block layout) only when its turn
/// comes. `data` must return exactly `plan[i].bytes()` bytes.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    plan: &[TensorPlan],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    write_atomically(path, |file, tmp| {
        let io = |e: std::io::Error| Error::io(tmp, e);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&MAGIC.to_le_bytes()).map_err(io)?;
        w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        w.write_all(&(plan.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&(metadata.len() as u64).to_le_bytes()).map_err(io)?;
        for (key, value) in metadata {
            put_str(&mut w, key).map_err(io)?;
            w.write_all(&type_code(value).to_le_bytes()).map_err(io)?;
            put_value(&mut w, key, value)?;
        }
        let mut offset = 0u64;
        for t in plan {
            put_str(&mut w, &t.name).map_err(io)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes()).map_err(io)?;
            for &d in t.dims.iter().rev() {
                w.write_all(&(d as u64).to_le_bytes()).map_err(io)?;
            }
            w.write_all(&ggml_type_id(t.dtype).to_le_bytes()).map_err(io)?;
            w.write_all(&offset.to_le_bytes()).map_err(io)?;
            let bytes = t.bytes()?;
            offset += bytes + padding(bytes);
        }
        let header_end = w.stream_position().map_err(io)?;
        w.write_all(&vec![0u8; padding(header_end) as usize]).map_err(io)?;
        for (i, t) in plan.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != t.bytes()? {
                return Err(Error::Internal(format!(
                    "`{}`: {} bytes produced for a {:?} tensor of {:?} ({} expected)",
                    t.name,
                    bytes.len(),
                    t.dtype,
                    t.dims,
                    t.bytes()?
                )));
            }
            w.write_all(&bytes).map_err(io)?;
            w.write_all(&vec![0u8; padding(bytes.len() as u64) as usize]).map_err(io)?;
        }
        w.flush().map_err(io)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{gguf_file, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn written_file_reads_back_in_candle() {
        let dir = std::env::temp_dir().join(format!("minigpt4-gguf-writer-{}", std::process::id()));
        let path = dir.join("t.gguf");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 64.0, &dev).unwrap().reshape((2, 32)).unwrap();
        let qa = QTensor::quantize(&a, GgmlDType::Q8_0).unwrap();
        let b = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        let plan = vec![
            TensorPlan { name: "a".into(), dims: vec![2, 32], dtype: GgmlDType::Q8_0 },
            TensorPlan { name: "b".into(), dims: vec![3], dtype: GgmlDType::F32 },
        ];
        let md = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("x.list".to_string(), Value::Array(vec![Value::String("p".into()), Value::String("q".into())])),
            ("x.n".to_string(), Value::U32(7)),
        ];
        write_gguf(&path, &md, &plan, |i| {
            Ok(match i {
                0 => qa.data().unwrap().to_vec(),
                _ => b.to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
            })
        })
        .unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        assert_eq!(ct.metadata["x.n"].to_u32().unwrap(), 7);
        assert_eq!(ct.metadata["x.list"].to_vec().unwrap().len(), 2);
        let back = ct.tensor(&mut f, "a", &dev).unwrap().dequantize(&dev).unwrap();
        let want = qa.dequantize(&dev).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
        let back = ct.tensor(&mut f, "b", &dev).unwrap().dequantize(&dev).unwrap();
        assert_eq!(back.to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        // A producer that returns the wrong size leaves no file behind.
        let bad = dir.join("bad.gguf");
        assert!(write_gguf(&bad, &md, &plan, |_| Ok(vec![0u8; 3])).is_err());
        assert!(!bad.exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
