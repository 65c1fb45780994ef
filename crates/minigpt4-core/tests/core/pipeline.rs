//! End to end from files: model file → image file → template → tokenizer → logits, against
//! the whole-model references (the same reference image, cat.jpg, preprocessed by PIL there
//! and by us here).

use crate::common;

use candle_core::{Device, Tensor};
use common::*;
use minigpt4_core::llama::Mode;
use minigpt4_core::model_file::ModelSpec;
use minigpt4_core::pipeline::Pipeline;
use minigpt4_core::template::{self, Conversation};

fn pipeline(variant: &str) -> Pipeline {
    let spec = ModelSpec::from_file(&fixture(&format!("minigpt4/{variant}/model.toml"))).unwrap();
    Pipeline::load(&spec, &Device::Cpu).unwrap()
}

#[test]
fn image_file_to_logits_matches_reference() {
    for variant in ["qformer", "merge4"] {
        let p = pipeline(variant);
        let r = load_ref(&format!("minigpt4/{variant}/reference.safetensors"));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&format!("minigpt4/{variant}/meta.json"))).unwrap())
                .unwrap();
        let bytes = std::fs::read(fixture("images/cat.jpg")).unwrap();
        let img = p.image_embeds(&bytes, "cat.jpg").unwrap();
        assert_close(&format!("{variant}: image embeds from cat.jpg"), &img, &r["image_embeds"], 1e-4);

        let mut conv = Conversation::new(p.template);
        conv.add_image();
        conv.ask(meta["question"].as_str().unwrap());
        assert_eq!(conv.prompt(), meta["prompt"].as_str().unwrap(), "{variant}: prompt text");
        let segments = template::tokenize_segments(&p.tokenizer, &conv.prompt(), p.template.add_bos()).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(meta["segment_ids"].clone()).unwrap();
        assert_eq!(segments, want, "{variant}: segment ids");

        let embeds = p.prompt_embeds(&conv, &[img]).unwrap();
        let logits = p.model.llm.forward_all(&embeds, Mode::Inference).unwrap();
        assert_close(&format!("{variant}: logits from files"), &logits, &r["logits"], 1e-4);
    }
}

#[test]
fn image_embeddings_are_cached_by_content() {
    let p = pipeline("merge4");
    let bytes = std::fs::read(fixture("images/cat.jpg")).unwrap();
    let a = p.image_embeds(&bytes, "cat.jpg").unwrap();
    let b = p.image_embeds(&bytes, "cat.jpg").unwrap();
    // The cache hands back the very same storage, not a recomputation.
    assert_eq!(a.id(), b.id());
    assert_eq!(p.cached_images().0, 1);
}

fn tiny_png(i: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(i % 256) as u8, (i / 256) as u8, (x * 8 + y) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A server sees an endless stream of images: the cache keeps what fits its byte budget, and an
/// image used again stays in while older ones go.
#[test]
fn image_cache_is_bounded_in_bytes_and_keeps_what_is_reused() {
    let p = pipeline("merge4");
    let first = p.image_embeds(&tiny_png(0), "0").unwrap();
    let entry = tiny_png(0).len() + first.elem_count() * 4;
    p.set_image_cache_bytes(20 * entry);
    for i in 1..100 {
        p.image_embeds(&tiny_png(i), "i").unwrap();
        p.image_embeds(&tiny_png(0), "0 again").unwrap(); // reused: stays
        let (n, bytes) = p.cached_images();
        assert!(bytes <= 20 * entry && n <= 20, "{n} entries, {bytes} bytes");
    }
    let (n, _) = p.cached_images();
    assert!(n >= 18, "{n} entries: the budget should hold about 20");
    assert_eq!(p.image_embeds(&tiny_png(0), "0").unwrap().id(), first.id(), "the reused image was evicted");
    p.set_image_cache_bytes(0);
    assert_eq!(p.cached_images(), (0, 0));
    p.image_embeds(&tiny_png(1), "1").unwrap();
    assert_eq!(p.cached_images(), (0, 0), "a zero budget caches nothing");
}

/// Two images whose cache keys collide (forced by the test hook) still get their own
/// embeddings: a hit needs the very same bytes.
#[test]
fn colliding_cache_keys_never_hand_out_another_image() {
    let p = pipeline("merge4");
    let fresh: Vec<Tensor> = (0..3)
        .map(|i| {
            p.clear_image_cache();
            p.image_embeds(&tiny_png(i * 40), "fresh").unwrap()
        })
        .collect();
    let gap = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(gap(&fresh[0], &fresh[1]) > 0.0 && gap(&fresh[1], &fresh[2]) > 0.0, "the test images must differ");
    p.force_image_cache_key_collisions(true);
    for round in 0..2 {
        for (i, want) in fresh.iter().enumerate() {
            let got = p.image_embeds(&tiny_png(i as u32 * 40), "colliding").unwrap();
            assert_eq!(gap(&got, want), 0.0, "round {round}: image {i} got another image's embeddings");
        }
    }
    assert_eq!(p.cached_images().0, 3, "all three kept, side by side under one key");
    p.force_image_cache_key_collisions(false);
}

#[test]
fn wrong_image_count_is_a_prompt_error() {
    let p = pipeline("merge4");
    let mut conv = Conversation::new(p.template);
    conv.add_image();
    conv.ask("What is this?");
    let err = p.prompt_embeds(&conv, &[]).unwrap_err().to_string();
    assert!(err.contains("1 image placeholder"), "{err}");
}

#[test]
fn missing_projection_says_how_to_get_one() {
    let mut spec = ModelSpec::from_file(&fixture("minigpt4/merge4/model.toml")).unwrap();
    spec.projection.weights = fixture("minigpt4/merge4/no-such-projection.safetensors");
    let err = Pipeline::load(&spec, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("projection") && err.contains("no-such-projection") && err.contains("minigpt4 train"),
        "{err}"
    );
}

/// A projection holding NaN or ∞ is refused at load, naming the file and the tensor (it used to
/// load, and `describe` printed an empty answer with exit status 0).
#[test]
fn non_finite_projection_is_refused_at_load() {
    let mut spec = ModelSpec::from_file(&fixture("minigpt4/merge4/model.toml")).unwrap();
    let w =
        minigpt4_core::weights::Weights::open(&spec.projection.weights, &Device::Cpu, candle_core::DType::F32).unwrap();
    let good: std::collections::HashMap<String, candle_core::Tensor> =
        ["llama_proj.weight", "llama_proj.bias"].iter().map(|n| (n.to_string(), w.get_any(n).unwrap())).collect();
    let dir = std::env::temp_dir().join(format!("minigpt4-nan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (bad, value) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let mut tensors = good.clone();
        let w = &tensors["llama_proj.weight"];
        let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[3] = value;
        tensors.insert("llama_proj.weight".into(), candle_core::Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap());
        let path = dir.join(format!("{bad}.safetensors"));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        spec.projection.weights = path;
        let err = Pipeline::load(&spec, &Device::Cpu).err().expect("a non-finite projection loaded").to_string();
        assert!(
            err.contains(&format!("{bad}.safetensors"))
                && err.contains("llama_proj.weight")
                && err.contains("NaN or infinite"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn f16_storage_holds_eva_and_the_qformer_in_half_the_bytes_close_to_f32() {
    // `[vision] storage = "f16"` (the default for the published ViT-g) holds EVA's block
    // matrices and the Q-Former's in f16, computed in f32: the image embeddings move by about
    // the f16 rounding of the weights.
    let f32_spec = ModelSpec::from_file(&fixture("minigpt4/qformer/model.toml")).unwrap();
    let mut f16_spec = f32_spec.clone();
    f16_spec.vision.storage = Some(minigpt4_core::model_file::WeightStorage::F16);
    let image = std::fs::read(fixture("images/cat.jpg")).unwrap();
    let embeds =
        |spec: &ModelSpec| Pipeline::load(spec, &Device::Cpu).unwrap().image_embeds(&image, "cat.jpg").unwrap();
    let (want, got) = (embeds(&f32_spec), embeds(&f16_spec));
    let d = max_abs_diff(&got, &want);
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    println!("EVA + Q-Former in f16: image embeds max abs diff {d:.2e} (largest |value| {scale:.2})");
    assert!(d > 0.0 && d <= 1e-2 * scale, "{d:e}");
}
