//! LoRA on the decoder (issue 18) against PEFT 0.21.2 (`scripts/make_lora_fixtures.py`): the
//! fixture Llama with r = 8, α = 16 on q_proj and v_proj, from PEFT's adapter folder and from
//! MiniGPT-v2's checkpoint layout; merged into a dense base, a side product on a quantized one.

use crate::common::*;

use candle_core::{DType, Device, Tensor};
use minigpt4_core::llama::{Llama, LlamaConfig, Mode, Quantize};
use minigpt4_core::lora::LoraAdapter;
use minigpt4_core::weights::Weights;

const CPU: Device = Device::Cpu;
const TOL: f32 = 1e-4;

fn base(quantize: Quantize) -> Llama {
    let cfg = LlamaConfig::from_file(&fixture("llama/config.json")).unwrap();
    let w = Weights::open(&fixture("llama/model.safetensors"), &CPU, DType::F32).unwrap();
    let llm = Llama::load_quantized(&cfg, &w.pp(""), quantize).unwrap();
    llm
}

fn peft() -> LoraAdapter {
    LoraAdapter::open(&fixture("lora/peft"), 16.0, &CPU).unwrap()
}

fn with(mut llm: Llama, adapter: &LoraAdapter) -> Llama {
    llm.apply_lora(adapter).unwrap();
    llm
}

fn logits(llm: &Llama) -> Tensor {
    let r = load_ref("lora/reference.safetensors");
    let ids: Vec<u32> =
        r["input_ids"].flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&i| i as u32).collect();
    llm.forward_all(&llm.embed(&ids).unwrap(), Mode::Inference).unwrap()
}

fn greedy(llm: &Llama) -> (Vec<u32>, Vec<u32>) {
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lora/greedy.json")).unwrap()).unwrap();
    let list = |k: &str| -> Vec<u32> { g[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let (prompt, want) = (list("prompt_ids"), list("generated_ids"));
    let mut cache = llm.new_cache();
    let mut next = llm.embed(&prompt).unwrap();
    let mut got = vec![];
    for _ in 0..want.len() {
        let tok = llm.forward_last(&next, &mut cache).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        got.push(tok);
        next = llm.embed(&[tok]).unwrap();
    }
    (got, want)
}

#[test]
fn peft_adapter_on_a_dense_base_matches_peft_unmerged_and_merged() {
    let r = load_ref("lora/reference.safetensors");
    let adapter = peft();
    assert_eq!(adapter.pairs.len(), 4, "q and v of 2 layers");
    assert!(adapter.pairs.values().all(|p| p.scale == 2.0), "α / r = 16 / 8");
    let llm = with(base(Quantize::None), &adapter);
    assert!(!llm.is_quantized(), "merged into the dense matrices");
    let ours = logits(&llm);
    assert_close("LoRA merged at load vs PEFT (unmerged)", &ours, &r["logits"], TOL);
    assert_close("LoRA merged at load vs PEFT merge_and_unload", &ours, &r["logits_merged"], TOL);
    // Without the adapter the logits are far from these: the fixture's adapter matters.
    assert!(max_abs_diff(&logits(&base(Quantize::None)), &r["logits"]) > 0.5);
    let (got, want) = greedy(&llm);
    assert_eq!(got, want, "greedy tokens of the adapted model");
}

#[test]
fn minigptv2_checkpoint_names_give_the_same_adapter() {
    let r = load_ref("lora/reference.safetensors");
    // MiniGPT-v2's .pth has no adapter config: α comes from the model file (16 for MiniGPT-v2).
    let adapter = LoraAdapter::open(&fixture("lora/minigptv2.pth"), 16.0, &CPU).unwrap();
    assert_eq!(adapter.pairs.len(), 4);
    let ours = logits(&with(base(Quantize::None), &adapter));
    assert_close("LoRA from MiniGPT-v2's checkpoint names vs PEFT", &ours, &r["logits"], TOL);
}

#[test]
fn lora_on_a_quantized_base_is_a_side_product_as_exact_as_merging() {
    let r = load_ref("lora/reference.safetensors");
    let adapter = peft();
    // (q4_k falls back to Q8_0 on matrices this narrow; the GGUF test covers Q4_0 blocks.)
    for q in [Quantize::Q8_0, Quantize::F16] {
        let quantized = base(q);
        assert!(quantized.is_quantized() || q == Quantize::F16);
        // The same quantized weights, dequantized, with the update merged: what the side
        // product must equal.
        let merged = with(quantized.clone().into_dense().unwrap(), &adapter);
        let side = with(quantized.clone(), &adapter);
        assert_eq!(side.is_quantized(), quantized.is_quantized(), "{q:?} stays quantized");
        let name = q.name();
        // An f16 base multiplies in f16 (so does the f16 update), not as its f32 copy does.
        let tol = if q == Quantize::F16 { 0.05 } else { 2e-5 };
        assert_close(&format!("{name} base: LoRA side product vs merged"), &logits(&side), &logits(&merged), tol);
        // Against PEFT's f32 model the quantized base's own error remains (stated per type;
        // the adapter roughly quadruples this fixture's logit range, and the error with it).
        let base_err = max_abs_diff(&logits(&quantized), &load_ref("llama/reference.safetensors")["logits"]);
        let lora_err = max_abs_diff(&logits(&side), &r["logits"]);
        println!("{name}: base vs transformers {base_err:.2e}, base + LoRA vs PEFT {lora_err:.2e}");
        let tol = match q {
            Quantize::F16 => 0.02,
            _ => 0.5,
        };
        assert!(lora_err <= tol, "{name}: {lora_err} (the base alone: {base_err})");
        // Greedy tokens: all equal to the merged model's (the same weights); PEFT's f32 model
        // agrees until a near-tie (the fixture's smallest top-2 margin is 0.03) meets the
        // quantization error.
        let ((got, want), (merged_got, _)) = (greedy(&side), greedy(&merged));
        assert_eq!(got, merged_got, "{name}: side product vs merged, greedy tokens");
        let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        println!("{name} + LoRA: greedy tokens agree with PEFT's for {agree} of {}", want.len());
        let need = match q {
            Quantize::F16 => want.len(),
            _ => 6,
        };
        assert!(agree >= need, "{name}: {agree} greedy tokens agree with PEFT's, {need} expected");
    }
}

#[test]
fn lora_on_a_gguf_base_follows_its_row_order() {
    let r = load_ref("lora/reference.safetensors");
    let adapter = peft();
    // GGUF stores q/k rows permuted for its rotary layout: the update must be permuted alike.
    let (f32_gguf, _) = Llama::load_gguf(&fixture("llama/model-f32.gguf"), &CPU).unwrap();
    assert_close("GGUF f32 + LoRA vs PEFT", &logits(&with(f32_gguf, &adapter)), &r["logits"], TOL);
    // Q8_0 through our kernel, Q4_0 through candle's QMatMul.
    for file in ["model-q8_0.gguf", "model-q4_0.gguf"] {
        let (q, _) = Llama::load_gguf(&fixture(&format!("llama/{file}")), &CPU).unwrap();
        let merged = with(q.clone().into_dense().unwrap(), &adapter);
        let side = with(q, &adapter);
        assert!(side.is_quantized());
        assert_close(&format!("GGUF {file} + LoRA side product vs merged"), &logits(&side), &logits(&merged), 2e-5);
        assert_eq!(greedy(&side).0, greedy(&merged).0, "{file}: greedy tokens");
    }
}

#[test]
fn adapters_that_do_not_fit_are_refused_with_the_reason() {
    let dir = TempDir::new("lora-refused");
    let a = Tensor::zeros((8, 64), DType::F32, &CPU).unwrap();
    let b = Tensor::zeros((64, 8), DType::F32, &CPU).unwrap();
    let open = |tensors: Vec<(&str, &Tensor)>| {
        let map = tensors.into_iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        let w = Weights::from_tensors(map, "test adapter", &CPU, DType::F32);
        LoraAdapter::from_weights(&w, 16.0, false)
    };
    let err = open(vec![("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", &a)]).unwrap_err();
    assert!(err.to_string().contains("must come together"), "{err}");
    let err = open(vec![("base_model.model.model.layers.0.self_attn.rotary.lora_A.weight", &a)]).unwrap_err();
    assert!(err.to_string().contains("no place for"), "{err}");
    // A layer the decoder does not have, and a matrix of another shape.
    for (name_a, name_b, why) in [
        (
            "model.layers.7.self_attn.q_proj.lora_A.weight",
            "model.layers.7.self_attn.q_proj.lora_B.weight",
            "has 2 layers",
        ),
        (
            "model.layers.0.self_attn.v_proj.lora_A.weight",
            "model.layers.0.self_attn.v_proj.lora_B.weight",
            "do not fit",
        ),
    ] {
        let adapter = open(vec![(name_a, &a), (name_b, &b)]).unwrap().unwrap();
        let err = base(Quantize::None).apply_lora(&adapter).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    // A checkpoint without LoRA tensors, and adapter kinds we do not implement.
    let err = LoraAdapter::open(&fixture("llama/model.safetensors"), 16.0, &CPU).unwrap_err();
    assert!(err.to_string().contains("holds no LoRA tensors"), "{err}");
    std::fs::copy(fixture("lora/peft/adapter_model.safetensors"), dir.0.join("adapter_model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(fixture("lora/peft/adapter_config.json")).unwrap();
    std::fs::write(dir.0.join("adapter_config.json"), cfg.replace("\"use_dora\": false", "\"use_dora\": true"))
        .unwrap();
    let err = LoraAdapter::open(&dir.0, 16.0, &CPU).unwrap_err();
    assert!(err.to_string().contains("DoRA"), "{err}");
}

#[test]
fn eva_at_twice_its_trained_size_matches_transformers_interpolation() {
    // MiniGPT-v2 runs EVA ViT-g, trained at 224 px, at 448 px with bicubically resized position
    // embeddings; the fixture EVA (56 px) at 112 px is the same operation.
    let r = load_ref("lora/vision-112.safetensors");
    let cfg: minigpt4_core::minigpt4::Blip2Config =
        serde_json::from_str(&std::fs::read_to_string(fixture("blip2/config.json")).unwrap()).unwrap();
    let w = Weights::open(&fixture("blip2/model.safetensors"), &CPU, DType::F32).unwrap();
    let eva = minigpt4_core::eva_vit::EvaVit::load(&cfg.vision_config, 112, &w.pp("vision_model"), DType::F32).unwrap();
    let tokens = eva.forward(&r["pixel_values"]).unwrap();
    assert_close("EVA at 112 px (position embeddings 4×4 → 8×8) vs transformers", &tokens, &r["vision_pre_norm"], TOL);
}

#[test]
fn minigptv2_model_file_puts_the_adapter_and_448_path_together() {
    use minigpt4_core::model_file::ModelSpec;
    use minigpt4_core::pipeline::Pipeline;
    let spec = ModelSpec::from_file(&fixture("lora/model.toml")).unwrap();
    let p = Pipeline::load(&spec, &CPU).unwrap();
    // 8×8 patches at 112 px, CLS dropped, 4 merged into one: 16 image tokens of the LLM's width.
    let img = p.image_embeds(&std::fs::read(fixture("images/cat.jpg")).unwrap(), "cat.jpg").unwrap();
    assert_eq!(img.dims(), &[1, 16, 64]);
    // The decoder is the base with the checkpoint's adapter, exactly.
    let adapter = LoraAdapter::open(&fixture("lora/minigptv2.pth"), 16.0, &CPU).unwrap();
    assert_close(
        "model file's LLM vs base + adapter",
        &logits(&p.model.llm),
        &logits(&with(base(Quantize::None), &adapter)),
        0.0,
    );
    let mut conv = minigpt4_core::template::Conversation::new(p.template);
    conv.add_image();
    conv.ask("[grounding] describe this image in detail");
    assert_eq!(conv.prompt(), "<s>[INST] <Img><ImageHere></Img> [grounding] describe this image in detail [/INST]");
}

#[test]
fn trainable_adapter_reads_back_in_hugging_face_order() {
    // On a GGUF decoder the q/k rows are permuted; what is read back (for saving) is PEFT's order.
    let adapter = peft();
    let (gguf, _) = Llama::load_gguf(&fixture("llama/model-f32.gguf"), &CPU).unwrap();
    let mut trainable = gguf.into_dense().unwrap();
    let vars = trainable.add_trainable_lora(&adapter).unwrap();
    assert_eq!(vars.len(), 8);
    let back = trainable.lora_adapter().unwrap();
    for (key, pair) in &adapter.pairs {
        let got = &back.pairs[key];
        assert_eq!(max_abs_diff(&got.a, &pair.a), 0.0);
        assert_eq!(max_abs_diff(&got.b, &pair.b), 0.0);
        assert_eq!(got.scale, pair.scale);
    }
    // Not merged: the side product gives PEFT's logits.
    let r = load_ref("lora/reference.safetensors");
    assert_close("trainable side product vs PEFT", &logits(&trainable), &r["logits"], TOL);
}
