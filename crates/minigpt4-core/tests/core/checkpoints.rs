//! Broken checkpoints give errors that name the file (and the tensor and shapes where that is
//! the problem); nothing panics.

use crate::common;

use candle_core::{DType, Device};
use common::*;
use minigpt4_core::llama::{Llama, LlamaConfig};
use minigpt4_core::weights::Weights;

fn truncated(src: &str, keep: usize, name: &str) -> std::path::PathBuf {
    let bytes = std::fs::read(fixture(src)).unwrap();
    let dir = std::env::temp_dir().join(format!("mg4-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, &bytes[..keep.min(bytes.len())]).unwrap();
    p
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    for (src, name) in [("llama/model.safetensors", "cut.safetensors"), ("blip2/blip2_pretrained.pth", "cut.pth")] {
        let len = std::fs::metadata(fixture(src)).unwrap().len() as usize;
        for keep in [0, 7, len / 2, len - 1] {
            let p = truncated(src, keep, name);
            let err = Weights::open(&p, &Device::Cpu, DType::F32).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{src} cut at {keep} opened"));
            assert!(err.contains(name), "{err}");
        }
    }
    let len = std::fs::metadata(fixture("llama/model-q8_0.gguf")).unwrap().len() as usize;
    for keep in [0, 100, 3000, len / 2, len - 1] {
        let p = truncated("llama/model-q8_0.gguf", keep, "cut.gguf");
        let err = Llama::load_gguf(&p, &Device::Cpu).err().unwrap_or_else(|| panic!("gguf cut at {keep} loaded"));
        assert!(err.to_string().contains("cut.gguf"), "{err}");
    }
}

#[test]
fn wrong_config_is_a_shape_error_naming_tensor_file_and_shapes() {
    let mut cfg = LlamaConfig::from_file(&fixture("llama/config.json")).unwrap();
    cfg.intermediate_size = 96;
    let w = Weights::open(&fixture("llama/model.safetensors"), &Device::Cpu, DType::F32).unwrap();
    let err = Llama::load(&cfg, &w.pp("")).err().unwrap().to_string();
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight"), "{err}");
    assert!(err.contains("[128, 64]") && err.contains("[96, 64]") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    let w = Weights::open(&fixture("llama/model.safetensors"), &Device::Cpu, DType::F32).unwrap();
    let err = w.get("model.layers.9.mlp.up_proj.weight", &[1]).unwrap_err().to_string();
    assert!(err.contains("model.layers.9.mlp.up_proj.weight") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn out_of_vocabulary_ids_are_errors() {
    let cfg = LlamaConfig::from_file(&fixture("llama/config.json")).unwrap();
    let w = Weights::open(&fixture("llama/model.safetensors"), &Device::Cpu, DType::F32).unwrap();
    let llm = Llama::load(&cfg, &w.pp("")).unwrap();
    assert!(llm.embed(&[1, 512]).is_err());
}

/// GGUF headers that once crashed the process (`general.alignment = 0` divided by zero inside
/// candle's reader; a lying `block_count` asked for terabytes) are errors naming the file.
#[test]
fn hostile_gguf_headers_are_errors_not_crashes() {
    use candle_core::quantized::gguf_file;
    let src = common::fixture("llama/model-f32.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> =
        ct.tensor_infos.keys().map(|n| (n.clone(), ct.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap())).collect();
    let dir = std::env::temp_dir().join(format!("minigpt4-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("alignment.gguf", "general.alignment", gguf_file::Value::U32(0)),
        ("blocks.gguf", "llama.block_count", gguf_file::Value::U32(u32::MAX)),
        ("blocks64.gguf", "llama.block_count", gguf_file::Value::U64(1 << 62)),
    ];
    for (name, key, value) in cases {
        let mut md: Vec<(&str, &gguf_file::Value)> =
            ct.metadata.iter().filter(|(k, _)| k.as_str() != key).map(|(k, v)| (k.as_str(), v)).collect();
        md.push((key, &value));
        let ts: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let path = dir.join(name);
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &md, &ts).unwrap();
        let err = minigpt4_core::llama::Llama::load_gguf(&path, &candle_core::Device::Cpu)
            .err()
            .expect("a hostile GGUF loaded")
            .to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two torch zip fixtures laid out as a sharded Hugging Face `.bin` checkpoint (the form of
/// lmsys' Vicuna deltas): `pytorch_model-0000k-of-00002.bin` plus `pytorch_model.bin.index.json`.
/// `index` may edit the weight map before it is written; returns the folder.
fn bin_shards(tag: &str, index: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mg4-bin-shards-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut map = serde_json::Map::new();
    for (k, src) in BIN_SHARD_SOURCES.iter().enumerate() {
        let shard = format!("pytorch_model-{:05}-of-00002.bin", k + 1);
        std::fs::copy(fixture(src), dir.join(&shard)).unwrap();
        for n in Weights::from_pth(&fixture(src), &Device::Cpu, DType::F32).unwrap().names() {
            map.insert(n, serde_json::Value::String(shard.clone()));
        }
    }
    index(&mut map);
    let json = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(dir.join("pytorch_model.bin.index.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    dir
}

const BIN_SHARD_SOURCES: [&str; 2] = ["blip2/eva_vit_g.pth", "minigpt4/qformer/minigpt4_proj.pth"];

#[test]
fn sharded_torch_bin_checkpoints_open_as_a_folder_or_by_index() {
    let dir = bin_shards("ok", |_| {});
    for path in [dir.clone(), dir.join("pytorch_model.bin.index.json")] {
        let w = Weights::open(&path, &Device::Cpu, DType::F32).unwrap();
        let mut expected = Vec::new();
        for src in BIN_SHARD_SOURCES {
            let orig = Weights::from_pth(&fixture(src), &Device::Cpu, DType::F32).unwrap();
            for n in orig.names() {
                assert!(w.contains(&n), "{n}");
                assert_eq!(w.dims(&n).unwrap(), orig.dims(&n).unwrap(), "{n}");
                let (a, b) = (w.get_any(&n).unwrap(), orig.get_any(&n).unwrap());
                assert_eq!(a.dims(), b.dims(), "{n}");
                assert_eq!(max_abs_diff(&a, &b), 0.0, "{n}");
                expected.push(n);
            }
        }
        expected.sort();
        assert_eq!(w.names(), expected);
        let err = w.get_any("no.such.tensor").unwrap_err().to_string();
        assert!(err.contains("no.such.tensor") && err.contains("pytorch_model.bin.index.json"), "{err}");
    }
    // A single `pytorch_model.bin` in a folder opens too.
    let single = dir.join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(fixture(BIN_SHARD_SOURCES[1]), single.join("pytorch_model.bin")).unwrap();
    let w = Weights::open(&single, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(w.names(), Weights::from_pth(&fixture(BIN_SHARD_SOURCES[1]), &Device::Cpu, DType::F32).unwrap().names());
}

#[test]
fn broken_bin_shard_indexes_are_clear_errors() {
    // A shard the index names that is not there.
    let dir = bin_shards("missing", |_| {});
    std::fs::remove_file(dir.join("pytorch_model-00002-of-00002.bin")).unwrap();
    let err = Weights::open(&dir, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("pytorch_model-00002-of-00002.bin"), "{err}");

    // A name the index puts in a shard that does not hold it.
    let dir = bin_shards("absent", |m| {
        m.insert("model.layers.0.ghost.weight".into(), "pytorch_model-00001-of-00002.bin".into());
    });
    let err = Weights::open(&dir, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(
        err.contains("model.layers.0.ghost.weight")
            && err.contains("pytorch_model-00001-of-00002.bin")
            && err.contains("pytorch_model.bin.index.json"),
        "{err}"
    );

    // Shards outside the folder, and safetensors mixed with pickles, are refused.
    for (shard, what) in [("../elsewhere.bin", "not a file name"), ("model-00001-of-00001.safetensors", "mixes")] {
        let dir = bin_shards("odd", |m| {
            m.insert("extra.weight".into(), shard.into());
        });
        let err = Weights::open(&dir, &Device::Cpu, DType::F32).err().unwrap().to_string();
        assert!(err.contains(what) && err.contains("pytorch_model.bin.index.json"), "{err}");
    }

    // A folder with none of the known files names them all.
    let empty = std::env::temp_dir().join(format!("mg4-bin-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = Weights::open(&empty, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("pytorch_model.bin.index.json") && err.contains("model.safetensors"), "{err}");
}
