//! Training needs gradients to reach the projection through the frozen LLM. candle's fused ops
//! drop gradients silently, so this checks the backward pass against central finite differences
//! of the same loss, on the tiny fixture MiniGPT-4 (merge-4 variant).

use crate::common;

use candle_core::{DType, Device, Tensor, Var, D};
use common::*;
use minigpt4_core::adapter::merge_tokens;
use minigpt4_core::llama::{Llama, LlamaConfig, Mode};
use minigpt4_core::weights::Weights;

/// Mean cross-entropy of `targets` at the positions after the image tokens, as stage 1 does.
fn loss(llm: &Llama, features: &Tensor, weight: &Tensor, bias: &Tensor, prefix: &[u32], targets: &[u32]) -> Tensor {
    let img = features.broadcast_matmul(&weight.t().unwrap()).unwrap().broadcast_add(bias).unwrap();
    let n_img = img.dim(1).unwrap();
    let embeds = Tensor::cat(&[llm.embed(prefix).unwrap(), img, llm.embed(targets).unwrap()], 1).unwrap();
    let logits = llm.forward_all(&embeds, Mode::Differentiable).unwrap();
    // Position p predicts token p + 1: the last image position predicts targets[0].
    let start = prefix.len() + n_img - 1;
    let logits = logits.narrow(1, start, targets.len()).unwrap().squeeze(0).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let t = Tensor::new(targets, &Device::Cpu).unwrap().unsqueeze(1).unwrap();
    logp.gather(&t, 1).unwrap().neg().unwrap().mean_all().unwrap()
}

#[test]
fn projection_gradient_matches_finite_differences() {
    // f64 so the finite differences are exact enough to compare to 1e-6 relative.
    let cfg = LlamaConfig::from_file(&fixture("llama/config.json")).unwrap();
    let w = Weights::open(&fixture("llama/model.safetensors"), &Device::Cpu, DType::F64).unwrap();
    let llm = Llama::load(&cfg, &w.pp("")).unwrap();
    let r = load_ref("blip2/reference.safetensors");
    let pre = r["vision_pre_norm"].to_dtype(DType::F64).unwrap();
    let normed = candle_nn::ops::layer_norm_slow(
        &pre,
        &Tensor::ones(32, DType::F64, &Device::Cpu).unwrap(),
        &Tensor::zeros(32, DType::F64, &Device::Cpu).unwrap(),
        1e-5,
    )
    .unwrap();
    let features = merge_tokens(&normed, 4).unwrap(); // [1, 4, 128]

    let weight = Var::from_tensor(&(Tensor::randn(0f64, 0.05, (64, 128), &Device::Cpu).unwrap())).unwrap();
    let bias = Var::from_tensor(&(Tensor::randn(0f64, 0.05, 64, &Device::Cpu).unwrap())).unwrap();
    let (prefix, targets) = ([1u32, 40, 41], [50u32, 60, 70, 80, 2]);

    let l = loss(&llm, &features, weight.as_tensor(), bias.as_tensor(), &prefix, &targets);
    let grads = l.backward().unwrap();
    let gw = grads.get(weight.as_tensor()).expect("no gradient reached the projection weight");
    let gb = grads.get(bias.as_tensor()).expect("no gradient reached the projection bias");

    let eps = 1e-5;
    let mut worst = 0f64;
    let w0: Vec<f64> = weight.flatten_all().unwrap().to_vec1().unwrap();
    let gw: Vec<f64> = gw.flatten_all().unwrap().to_vec1().unwrap();
    let gb: Vec<f64> = gb.to_vec1().unwrap();
    // A spread of weight entries and every bias entry.
    for idx in (0..w0.len()).step_by(97) {
        let numeric = {
            let mut plus = w0.clone();
            plus[idx] += eps;
            let mut minus = w0.clone();
            minus[idx] -= eps;
            let at = |v: Vec<f64>| {
                let wt = Tensor::from_vec(v, (64, 128), &Device::Cpu).unwrap();
                loss(&llm, &features, &wt, bias.as_tensor(), &prefix, &targets).to_scalar::<f64>().unwrap()
            };
            (at(plus) - at(minus)) / (2.0 * eps)
        };
        worst = worst.max((numeric - gw[idx]).abs() / numeric.abs().max(1e-3));
    }
    let b0: Vec<f64> = bias.to_vec1().unwrap();
    for idx in 0..b0.len() {
        let at = |delta: f64| {
            let mut v = b0.clone();
            v[idx] += delta;
            let bt = Tensor::from_vec(v, 64, &Device::Cpu).unwrap();
            loss(&llm, &features, weight.as_tensor(), &bt, &prefix, &targets).to_scalar::<f64>().unwrap()
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        worst = worst.max((numeric - gb[idx]).abs() / numeric.abs().max(1e-3));
    }
    println!("projection gradient vs finite differences: worst relative error {worst:.3e}");
    assert!(worst < 1e-5, "gradient mismatch: worst relative error {worst}");
}

#[test]
fn fused_ops_would_have_dropped_the_gradient() {
    // Guards the reason `Mode::Differentiable` exists: if candle ever starts propagating through
    // its fused kernels this test tells us the slow path can go.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 8), &Device::Cpu).unwrap()).unwrap();
    let alpha = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
    let fast = candle_nn::ops::rms_norm(x.as_tensor(), &alpha, 1e-5).unwrap().sqr().unwrap().sum_all().unwrap();
    let slow = candle_nn::ops::rms_norm_slow(x.as_tensor(), &alpha, 1e-5).unwrap().sqr().unwrap().sum_all().unwrap();
    let fast_grad = fast.backward().unwrap().get(x.as_tensor()).is_some();
    assert!(slow.backward().unwrap().get(x.as_tensor()).is_some());
    println!("fused rms_norm propagates gradient: {fast_grad}");
}

#[test]
fn lora_gradients_match_finite_differences() {
    // MiniGPT-v2's stage 3 trains LoRA on q/v with the projection; the decoder stays frozen.
    let cfg = LlamaConfig::from_file(&fixture("llama/config.json")).unwrap();
    let w = Weights::open(&fixture("llama/model.safetensors"), &Device::Cpu, DType::F64).unwrap();
    let mut llm = Llama::load(&cfg, &w.pp("")).unwrap();
    let adapter = minigpt4_core::lora::LoraAdapter::open(&fixture("lora/peft"), 16.0, &Device::Cpu).unwrap();
    let vars = llm.add_trainable_lora(&adapter).unwrap();
    assert_eq!(vars.len(), 8, "A and B of q and v in 2 layers");

    let features = Tensor::randn(0f64, 1.0, (1, 4, 128), &Device::Cpu).unwrap();
    let weight = Tensor::randn(0f64, 0.05, (64, 128), &Device::Cpu).unwrap();
    let bias = Tensor::randn(0f64, 0.05, 64, &Device::Cpu).unwrap();
    let (prefix, targets) = ([1u32, 40, 41], [50u32, 60, 70, 80, 2]);
    let at = |llm: &Llama| loss(llm, &features, &weight, &bias, &prefix, &targets);
    let grads = at(&llm).backward().unwrap();

    let eps = 1e-5;
    let mut worst = 0f64;
    let mut checked = 0;
    for (name, var) in &vars {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let v0 = var.as_tensor().copy().unwrap();
        let flat: Vec<f64> = v0.flatten_all().unwrap().to_vec1().unwrap();
        for idx in (0..flat.len()).step_by(37) {
            let value_at = |delta: f64| {
                let mut v = flat.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, v0.shape(), &Device::Cpu).unwrap()).unwrap();
                at(&llm).to_scalar::<f64>().unwrap()
            };
            let numeric = (value_at(eps) - value_at(-eps)) / (2.0 * eps);
            var.set(&v0).unwrap();
            worst = worst.max((numeric - g[idx]).abs() / numeric.abs().max(1e-3));
            checked += 1;
        }
    }
    println!("LoRA gradient vs central differences: worst relative error {worst:.2e} over {checked} entries");
    assert!(worst < 1e-6, "{worst}");
}
