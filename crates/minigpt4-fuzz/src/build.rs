//! Structure-aware builders: valid files of every format the parsers take, written field by field
//! so that any field can be given a hostile value (a length that lies, a count of 2^62, an
//! alignment of 0, a storage of a billion elements, a pickle that nests a million deep).

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// Values a hostile field is set to: the edges where arithmetic wraps or allocations explode.
pub const INTERESTING: [u64; 14] =
    [0, 1, 2, 7, 255, 256, 65_535, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 40, 1 << 62, i64::MAX as u64, u64::MAX];

pub fn interesting(rng: &mut StdRng) -> u64 {
    INTERESTING[rng.random_range(0..INTERESTING.len())]
}

// ---------------------------------------------------------------------------------------------
// GGUF (ggml/docs/gguf.md): magic, version, tensor count, kv count, kvs, tensor infos, padding,
// tensor data.

#[derive(Clone, Debug)]
pub enum GgufValue {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
    /// A value with a type id the format does not have.
    BadType(u32),
}

#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub kvs: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensor>,
    /// Counts written in the header; `None` writes the true ones.
    pub claimed_tensor_count: Option<u64>,
    pub claimed_kv_count: Option<u64>,
    pub alignment: u64,
    pub data: Vec<u8>,
}

fn gguf_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Gguf {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.claimed_tensor_count.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.claimed_kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            gguf_str(&mut out, k);
            match v {
                GgufValue::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                GgufValue::I32(x) => {
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                GgufValue::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                GgufValue::Bool(x) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                GgufValue::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    gguf_str(&mut out, s);
                }
                GgufValue::U64(x) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                GgufValue::Strings(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    v.iter().for_each(|s| gguf_str(&mut out, s));
                }
                GgufValue::I32s(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                }
                GgufValue::F32s(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                }
                GgufValue::BadType(t) => out.extend_from_slice(&t.to_le_bytes()),
            }
        }
        for t in &self.tensors {
            gguf_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let align = self.alignment.clamp(1, 4096) as usize;
        while !out.len().is_multiple_of(align) {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// A whole LLaMA with a byte-level BPE tokenizer: 1 block, width 8, vocabulary 12, f32 (or
    /// Q8_0 where `quantized`) weights. Small enough to load in microseconds.
    pub fn tiny_llama(rng: &mut StdRng, quantized: bool) -> Self {
        let (d, ff, vocab) = (32u64, 64u64, 12u64);
        let tokens: Vec<String> = ["<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "ab", "Ġa", "bc", "d", "e", "Ċ"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut kvs = vec![
            ("general.architecture".to_string(), GgufValue::Str("llama".into())),
            ("llama.block_count".into(), GgufValue::U32(1)),
            ("llama.embedding_length".into(), GgufValue::U32(d as u32)),
            ("llama.feed_forward_length".into(), GgufValue::U32(ff as u32)),
            ("llama.attention.head_count".into(), GgufValue::U32(4)),
            ("llama.attention.head_count_kv".into(), GgufValue::U32(2)),
            ("llama.context_length".into(), GgufValue::U32(64)),
            ("llama.attention.layer_norm_rms_epsilon".into(), GgufValue::F32(1e-5)),
            ("llama.rope.freq_base".into(), GgufValue::F32(10_000.0)),
            ("tokenizer.ggml.model".into(), GgufValue::Str("gpt2".into())),
            ("tokenizer.ggml.pre".into(), GgufValue::Str("smollm".into())),
            ("tokenizer.ggml.tokens".into(), GgufValue::Strings(tokens)),
            ("tokenizer.ggml.token_type".into(), GgufValue::I32s(vec![3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])),
            ("tokenizer.ggml.merges".into(), GgufValue::Strings(vec!["a b".into(), "Ġ a".into(), "b c".into()])),
            ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(0)),
            ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(1)),
        ];
        if rng.random_bool(0.5) {
            kvs.push(("general.alignment".into(), GgufValue::U32(32)));
        }
        let mut g = Gguf {
            version: 3,
            kvs,
            tensors: Vec::new(),
            claimed_tensor_count: None,
            claimed_kv_count: None,
            alignment: 32,
            data: Vec::new(),
        };
        let shapes: [(&str, [u64; 2]); 9] = [
            ("token_embd.weight", [d, vocab]),
            ("blk.0.attn_norm.weight", [d, 1]),
            ("blk.0.attn_q.weight", [d, d]),
            ("blk.0.attn_k.weight", [d, d / 2]),
            ("blk.0.attn_v.weight", [d, d / 2]),
            ("blk.0.attn_output.weight", [d, d]),
            ("blk.0.ffn_norm.weight", [d, 1]),
            ("blk.0.ffn_gate.weight", [d, ff]),
            ("blk.0.ffn_up.weight", [d, ff]),
        ];
        let mut all: Vec<(&str, Vec<u64>)> =
            shapes.iter().map(|(n, s)| (*n, if s[1] == 1 { vec![s[0]] } else { s.to_vec() })).collect();
        all.push(("blk.0.ffn_down.weight", vec![ff, d]));
        all.push(("output_norm.weight", vec![d]));
        for (name, dims) in all {
            let n: u64 = dims.iter().product();
            let q8 = quantized && dims.len() == 2 && dims[0] % 32 == 0;
            let bytes = if q8 { q8_0_blocks(rng, n as usize) } else { f32_bytes(rng, n as usize) };
            g.add_tensor(name, dims, if q8 { 8 } else { 0 }, &bytes);
        }
        g
    }

    pub fn add_tensor(&mut self, name: &str, dims: Vec<u64>, ggml_type: u32, bytes: &[u8]) {
        while !self.data.len().is_multiple_of(self.alignment.max(1) as usize) {
            self.data.push(0);
        }
        self.tensors.push(GgufTensor { name: name.into(), dims, ggml_type, offset: self.data.len() as u64 });
        self.data.extend_from_slice(bytes);
    }

    /// One field given a hostile value: a kv, a tensor's dims, type or offset, a count, the
    /// alignment, or the version.
    pub fn corrupt(&mut self, rng: &mut StdRng) {
        let v = interesting(rng);
        match rng.random_range(0..9) {
            0 => self.claimed_tensor_count = Some(v),
            1 => self.claimed_kv_count = Some(v),
            2 => self.kvs.push(("general.alignment".into(), GgufValue::U32(v as u32))),
            3 if !self.kvs.is_empty() => {
                let i = rng.random_range(0..self.kvs.len());
                self.kvs[i].1 = match rng.random_range(0..6) {
                    0 => GgufValue::U32(v as u32),
                    1 => GgufValue::U64(v),
                    2 => GgufValue::I32(v as i32),
                    3 => GgufValue::F32([f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30][rng.random_range(0..5)]),
                    4 => GgufValue::Str(String::new()),
                    _ => GgufValue::BadType(rng.random_range(11..u32::MAX)),
                };
            }
            4 if !self.tensors.is_empty() => {
                let i = rng.random_range(0..self.tensors.len());
                let t = &mut self.tensors[i];
                match rng.random_range(0..3) {
                    0 => t.dims = Vec::new(),
                    1 => t.dims.push(v),
                    _ => {
                        if let Some(d) = t.dims.first_mut() {
                            *d = v;
                        }
                    }
                }
            }
            5 if !self.tensors.is_empty() => {
                let i = rng.random_range(0..self.tensors.len());
                self.tensors[i].ggml_type = if rng.random_bool(0.5) { rng.random_range(0..40) } else { v as u32 };
            }
            6 if !self.tensors.is_empty() => {
                let i = rng.random_range(0..self.tensors.len());
                self.tensors[i].offset = v;
            }
            7 => self.version = v as u32,
            _ => {
                // NaN or ∞ in the weights.
                if self.data.len() >= 4 {
                    let at = rng.random_range(0..self.data.len() / 4) * 4;
                    self.data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }
        }
    }
}

fn f32_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| (rng.random::<f32>() * 0.2 - 0.1).to_le_bytes()).collect()
}

fn q8_0_blocks(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n / 32 * 34);
    for _ in 0..n / 32 {
        out.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        out.extend((0..32).map(|_| rng.random::<u8>()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// safetensors: u64 header length, JSON header {name: {dtype, shape, data_offsets}}, data.

pub fn safetensors(rng: &mut StdRng, hostile: bool) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let names = ["llama_proj.weight", "llama_proj.bias", "model.norm.weight"];
    for (i, name) in names.iter().enumerate().take(rng.random_range(1..=3)) {
        let shape: Vec<u64> = if i == 0 { vec![4, 8] } else { vec![4] };
        let n: u64 = shape.iter().product();
        let start = data.len() as u64;
        data.extend(f32_bytes(rng, n as usize));
        let mut entry = serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len() as u64]});
        if hostile {
            match rng.random_range(0..7) {
                0 => {
                    entry["dtype"] = serde_json::json!(
                        ["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", ""][rng.random_range(0..9)]
                    )
                }
                1 => entry["shape"] = serde_json::json!([interesting(rng), interesting(rng)]),
                2 => entry["data_offsets"] = serde_json::json!([interesting(rng), interesting(rng)]),
                3 => entry["shape"] = serde_json::json!([]),
                4 => entry["data_offsets"] = serde_json::json!([start + 4, start]),
                5 => {
                    let at = start as usize;
                    data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
                _ => entry = serde_json::json!("not an object"),
            }
        }
        header.insert(name.to_string(), entry);
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = Vec::new();
    let claimed = if hostile && rng.random_bool(0.2) { interesting(rng) } else { header.len() as u64 };
    out.extend_from_slice(&claimed.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

// ---------------------------------------------------------------------------------------------
// Pickles (protocol 2, the opcodes torch.save emits) and the two torch.save layouts.

#[derive(Default, Clone)]
pub struct Pickle {
    pub ops: Vec<u8>,
}

impl Pickle {
    pub fn proto(&mut self) -> &mut Self {
        self.ops.extend_from_slice(&[0x80, 2]);
        self
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.ops.push(b'c');
        self.ops.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    pub fn mark(&mut self) -> &mut Self {
        self.ops.push(b'(');
        self
    }
    pub fn tuple(&mut self) -> &mut Self {
        self.ops.push(b't');
        self
    }
    pub fn empty_tuple(&mut self) -> &mut Self {
        self.ops.push(b')');
        self
    }
    pub fn empty_dict(&mut self) -> &mut Self {
        self.ops.push(b'}');
        self
    }
    pub fn empty_list(&mut self) -> &mut Self {
        self.ops.push(b']');
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.ops.push(b'X');
        self.ops.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.ops.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(&mut self, v: u64) -> &mut Self {
        // LONG1 with 9 bytes always holds a u64 as a non-negative number.
        self.ops.push(0x8a);
        self.ops.push(9);
        self.ops.extend_from_slice(&v.to_le_bytes());
        self.ops.push(0);
        self
    }
    pub fn boolean(&mut self, b: bool) -> &mut Self {
        self.ops.push(if b { 0x88 } else { 0x89 });
        self
    }
    pub fn reduce(&mut self) -> &mut Self {
        self.ops.push(b'R');
        self
    }
    pub fn binpersid(&mut self) -> &mut Self {
        self.ops.push(b'Q');
        self
    }
    pub fn setitems(&mut self) -> &mut Self {
        self.ops.push(b'u');
        self
    }
    pub fn appends(&mut self) -> &mut Self {
        self.ops.push(b'e');
        self
    }
    pub fn put(&mut self, k: u32) -> &mut Self {
        self.ops.push(b'r');
        self.ops.extend_from_slice(&k.to_le_bytes());
        self
    }
    pub fn get(&mut self, k: u32) -> &mut Self {
        self.ops.push(b'j');
        self.ops.extend_from_slice(&k.to_le_bytes());
        self
    }
    pub fn stop(&mut self) -> &mut Self {
        self.ops.push(b'.');
        self
    }
}

/// One tensor record of a state dict: `_rebuild_tensor_v2(storage, offset, size, stride, False,
/// OrderedDict())` with the storage a persistent id.
#[derive(Clone, Debug)]
pub struct TensorRecord {
    pub name: String,
    pub storage_type: String,
    pub key: String,
    pub numel: u64,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

pub fn tensor_record(p: &mut Pickle, t: &TensorRecord) {
    p.str(&t.name);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    p.mark().str("storage").global("torch", &t.storage_type).str(&t.key).str("cpu").int(t.numel).tuple().binpersid();
    p.int(t.offset);
    p.mark();
    t.size.iter().for_each(|&s| {
        p.int(s);
    });
    p.tuple();
    p.mark();
    t.stride.iter().for_each(|&s| {
        p.int(s);
    });
    p.tuple();
    p.boolean(false);
    p.global("collections", "OrderedDict").empty_tuple().reduce();
    p.tuple().reduce();
}

/// A small state dict's records and their storages' bytes (f32, contiguous).
pub fn state_dict(rng: &mut StdRng) -> (Vec<TensorRecord>, Vec<Vec<u8>>) {
    let mut recs = Vec::new();
    let mut storages = Vec::new();
    for (i, (name, size)) in
        [("llama_proj.weight", vec![4u64, 8]), ("llama_proj.bias", vec![4])].into_iter().enumerate()
    {
        let numel: u64 = size.iter().product();
        let stride = if size.len() == 2 { vec![size[1], 1] } else { vec![1] };
        recs.push(TensorRecord {
            name: name.into(),
            storage_type: "FloatStorage".into(),
            key: i.to_string(),
            numel,
            offset: 0,
            size,
            stride,
        });
        storages.push(f32_bytes(rng, numel as usize));
    }
    (recs, storages)
}

/// The pickled state dict (wrapped as `{"model": …}` when `wrapped`).
pub fn state_dict_pickle(recs: &[TensorRecord], wrapped: bool) -> Vec<u8> {
    let mut p = Pickle::default();
    p.proto();
    if wrapped {
        p.empty_dict().mark().str("model");
    }
    p.global("collections", "OrderedDict").empty_tuple().reduce();
    p.mark();
    recs.iter().for_each(|t| tensor_record(&mut p, t));
    p.setitems();
    if wrapped {
        p.setitems();
    }
    p.stop();
    p.ops
}

/// Hostile pickles: the shapes that broke candle's reader, plus random opcode soup.
pub fn hostile_pickle(rng: &mut StdRng) -> Vec<u8> {
    let mut p = Pickle::default();
    p.proto();
    match rng.random_range(0..7) {
        // A million nested tuples in a few bytes: ( ( ( … ) ) ).
        0 => {
            let n = [1_000usize, 100_000, 1_000_000][rng.random_range(0..3)];
            p.ops.extend(std::iter::repeat_n(b'(', n));
            p.ops.extend(std::iter::repeat_n(b't', n));
        }
        // Billion laughs: a list put in the memo and appended to itself over and over.
        1 => {
            p.empty_list().put(0);
            for _ in 0..40 {
                p.mark().get(0).get(0).appends();
            }
        }
        // Short argument tuples for the tensor rebuild.
        2 => {
            p.empty_dict().mark().str("w").global("torch._utils", "_rebuild_tensor_v2");
            p.mark();
            for _ in 0..rng.random_range(0..3) {
                p.int(0);
            }
            p.tuple().reduce().setitems();
        }
        // Code next to a real tensor.
        3 => {
            let (recs, _) = state_dict(rng);
            p.global("collections", "OrderedDict").empty_tuple().reduce().mark();
            tensor_record(&mut p, &recs[0]);
            p.str("payload").global(
                ["os", "builtins", "subprocess"][rng.random_range(0..3)],
                ["system", "eval", "Popen"][rng.random_range(0..3)],
            );
            p.mark().str("echo pwned").tuple().reduce().setitems();
        }
        // Lying sizes.
        4 => {
            let (mut recs, _) = state_dict(rng);
            let r = &mut recs[0];
            match rng.random_range(0..4) {
                0 => r.numel = interesting(rng),
                1 => r.offset = interesting(rng),
                2 => r.size = vec![interesting(rng), interesting(rng)],
                _ => r.stride = vec![interesting(rng)],
            }
            return state_dict_pickle(&recs, rng.random_bool(0.5));
        }
        // A long string whose length lies.
        5 => {
            p.ops.push(b'X');
            p.ops.extend_from_slice(&(interesting(rng) as u32).to_le_bytes());
            p.ops.extend_from_slice(b"short");
        }
        // Opcode soup.
        _ => {
            const OPS: &[u8] = b"()tN\x88\x89JKMX\x8c\x8a\x85\x86\x87qrhjcQRbsuae0.}]\x94\x95";
            for _ in 0..rng.random_range(1..200) {
                p.ops.push(OPS[rng.random_range(0..OPS.len())]);
                for _ in 0..rng.random_range(0..4) {
                    p.ops.push(rng.random());
                }
            }
        }
    }
    p.stop();
    p.ops
}

/// A zip archive (stored or deflated entries) with CRCs, local headers and a central directory.
pub fn zip(entries: &[(String, Vec<u8>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, deflate) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let packed = if *deflate {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("in memory");
            e.finish().expect("in memory")
        } else {
            data.clone()
        };
        let method: u16 = if *deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        let fields = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // version made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&method.to_le_bytes());
            h.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
            h.extend_from_slice(&crc.sum().to_le_bytes());
            h.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&[0; 6]); // comment len, disk, internal attrs
                h.extend_from_slice(&0u32.to_le_bytes()); // external attrs
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(fields(0x0403_4b50, false));
        out.extend_from_slice(&packed);
        central.extend(fields(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A zip-layout `torch.save` file: `archive/data.pkl`, `archive/data/<key>`, `archive/version`.
pub fn torch_zip(pickle: Vec<u8>, storages: &[Vec<u8>], deflate: bool) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_string(), pickle, false)];
    for (i, s) in storages.iter().enumerate() {
        entries.push((format!("archive/data/{i}"), s.clone(), deflate));
    }
    entries.push(("archive/version".into(), b"3\n".to_vec(), false));
    zip(&entries)
}

/// A legacy `torch.save` file (see torch_pickle.rs for the layout).
pub fn torch_legacy(pickle: Vec<u8>, storages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic number, protocol version, sys info.
    out.extend_from_slice(&[0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.']);
    out.extend_from_slice(&[0x80, 2, b'M', 0xe9, 0x03, b'.']);
    out.extend_from_slice(&[0x80, 2, b'}', b'.']);
    out.extend_from_slice(&pickle);
    let mut keys = Pickle::default();
    keys.proto().empty_list().mark();
    for i in 0..storages.len() {
        keys.str(&i.to_string());
    }
    keys.appends().stop();
    out.extend_from_slice(&keys.ops);
    for s in storages {
        out.extend_from_slice(&((s.len() / 4) as u64).to_le_bytes());
        out.extend_from_slice(s);
    }
    out
}

/// A valid or hostile `.pth` in either layout.
pub fn pth(rng: &mut StdRng, hostile: bool) -> Vec<u8> {
    let (recs, storages) = state_dict(rng);
    let valid = state_dict_pickle(&recs, rng.random_bool(0.5));
    // Hostile: a crafted pickle, or the valid one mutated inside a zip whose CRCs still hold
    // (byte mutations of the finished zip mostly stop at a CRC).
    let pickle = match (hostile, rng.random_bool(0.5)) {
        (false, _) => valid,
        (true, true) => hostile_pickle(rng),
        (true, false) => crate::mutate::mutate(rng, &valid, &valid),
    };
    match rng.random_range(0..3) {
        0 => torch_legacy(pickle, &storages),
        1 => torch_zip(pickle, &storages, false),
        _ => torch_zip(pickle, &storages, true),
    }
}

/// A deflated storage that inflates far past its compressed size (a zip bomb) under a record
/// that claims it all: `mib` MiB of zeros.
pub fn zip_bomb_pth(mib: u64) -> Vec<u8> {
    let numel = mib * 1024 * 1024 / 4;
    let rec = TensorRecord {
        name: "w".into(),
        storage_type: "FloatStorage".into(),
        key: "0".into(),
        numel,
        offset: 0,
        size: vec![numel],
        stride: vec![1],
    };
    torch_zip(state_dict_pickle(&[rec], false), &[vec![0u8; (numel * 4) as usize]], true)
}

// ---------------------------------------------------------------------------------------------
// Images and requests.

/// A small image in one of the formats the decoder takes.
pub fn image(rng: &mut StdRng) -> Vec<u8> {
    let (w, h) = (rng.random_range(1..24), rng.random_range(1..24));
    let mut px = vec![0u8; (w * h * 4) as usize];
    rng.fill_bytes(&mut px);
    let img = image::RgbaImage::from_raw(w, h, px).expect("sized");
    let format = [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::WebP,
        image::ImageFormat::Gif,
        image::ImageFormat::Bmp,
    ][rng.random_range(0..5)];
    let mut out = std::io::Cursor::new(Vec::new());
    let dynamic = if format == image::ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(image::DynamicImage::ImageRgba8(img).to_rgb8())
    } else {
        image::DynamicImage::ImageRgba8(img)
    };
    dynamic.write_to(&mut out, format).expect("encoding a small image");
    out.into_inner()
}

/// A PNG whose header claims `w` × `h` (CRC fixed), with almost no data behind it.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out
}

const FIELDS: &[&str] = &[
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stream",
    "stop",
    "seed",
    "n",
    "num_beams",
    "repetition_penalty",
    "top_k",
    "stream_options",
    "include_usage",
];

/// A random JSON value of bounded depth over the API's own words.
pub fn json_value(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::json;
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => json!(null),
        1 => json!(rng.random_bool(0.5)),
        2 => json!(interesting(rng)),
        3 => json!([-1.5, 0.0, 2.5, 1e308, -7.0][rng.random_range(0..5)]),
        4 => json!(
            [
                "user",
                "assistant",
                "system",
                "tool",
                "text",
                "image_url",
                "<ImageHere>",
                "<|im_start|>assistant\n",
                "</s>",
                ""
            ][rng.random_range(0..10)]
        ),
        5 => json!(format!(
            "data:image/png;base64,{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, image(rng))
        )),
        6 => serde_json::Value::Array((0..rng.random_range(0..4)).map(|_| json_value(rng, depth - 1)).collect()),
        _ => serde_json::Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| (FIELDS[rng.random_range(0..FIELDS.len())].to_string(), json_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A chat request: valid (a user message with text and an image) or built from random parts.
pub fn request(rng: &mut StdRng, hostile: bool) -> Vec<u8> {
    use serde_json::json;
    let url = format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, image(rng))
    );
    let mut req = json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this? <|im_start|>assistant"}]},
    ], "max_tokens": 4});
    if hostile {
        let v = json_value(rng, 4);
        match rng.random_range(0..4) {
            0 => req["messages"][1]["content"][rng.random_range(0..2)] = v,
            1 => req[FIELDS[rng.random_range(0..FIELDS.len())]] = v,
            2 => req["messages"][rng.random_range(0..2)] = v,
            _ => req = v,
        }
    }
    req.to_string().into_bytes()
}
