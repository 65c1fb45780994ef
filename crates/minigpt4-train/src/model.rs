//! The frozen model as training needs it: the pipeline's [`FrozenParts`] (the one assembly of
//! the network) with the LLM made dense (for `Mode::Differentiable`) and the vision tower
//! dropped once the features are cached, plus the projection's starting point.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use minigpt4_core::adapter::Adapter;
use minigpt4_core::efficientnet_lite::Classifier;
use minigpt4_core::image::{ImageConfig, Limits};
use minigpt4_core::llama::Llama;
use minigpt4_core::minigpt4::VisionTower;
use minigpt4_core::model_file::{AdapterKind, ModelSpec, VisionKind};
use minigpt4_core::pipeline::{efficientnet_config, load_projection, FrozenParts};
use minigpt4_core::template::TemplateKind;
use minigpt4_core::tokenizer::Tokenizer;

use crate::data::{derive_seed, SplitMix64};

/// `(slots, classes)` of the model's class tokens, which come first in the projection's input:
/// those of a `[classifier]`, or of the `classes` adapter on a classifier encoder.
pub fn class_slots(spec: &ModelSpec) -> Result<Option<(usize, usize)>> {
    Ok(match (&spec.classifier, spec.adapter.kind) {
        (Some(c), _) => Some((c.slots, efficientnet_config(c.config.as_ref(), None)?.num_classes)),
        (None, AdapterKind::Classes) if spec.vision.kind == VisionKind::EfficientnetLite => {
            Some((spec.adapter.slots, efficientnet_config(spec.vision.config.as_ref(), None)?.num_classes))
        }
        _ => None,
    })
}

/// `nn.Linear`'s default initialisation (Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in) for
/// weight and bias), drawn from a fixed generator so a seed always gives the same start.
pub fn random_projection(in_dim: usize, out_dim: usize, seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let mut rng = SplitMix64::new(derive_seed(seed, &[3]));
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32).collect() };
    let w = Tensor::from_vec(draw(in_dim * out_dim), (out_dim, in_dim), device)?;
    let b = Tensor::from_vec(draw(out_dim), out_dim, device)?;
    Ok((w, b))
}

/// Writes [`random_projection`] for `seed` to `path` as a projection file (the record of where a
/// training run started).
pub fn write_random_projection(path: &Path, in_dim: usize, out_dim: usize, seed: u64, device: &Device) -> Result<()> {
    let (w, b) = random_projection(in_dim, out_dim, seed, device)?;
    let meta = [("init".to_string(), "random".to_string()), ("seed".to_string(), seed.to_string())].into();
    crate::checkpoint::save_projection(path, &w, &b, meta)
}

pub struct Frozen {
    /// Vision tower, adapter and classifier; `None` once the features are cached.
    pub vision: Option<(VisionTower, Adapter, Option<Classifier>)>,
    pub llm: Llama,
    pub tokenizer: Tokenizer,
    pub template: TemplateKind,
    pub image: ImageConfig,
    pub limits: Limits,
}

impl Frozen {
    /// The frozen part of MiniGPT-4: pixels `[B, 3, S, S]` → adapter tokens `[B, N, d_a]`.
    pub fn image_features(&self, pixels: &Tensor) -> minigpt4_core::Result<Tensor> {
        let (v, a, c) = self
            .vision
            .as_ref()
            .ok_or_else(|| minigpt4_core::Error::Config("the vision encoder was released".into()))?;
        minigpt4_core::minigpt4::image_features(v, a, c.as_ref(), pixels)
    }

    /// BOS for stage 1: the tokenizer's, else the LLM config's.
    pub fn bos(&self) -> Option<u32> {
        self.tokenizer.bos_id().or(self.llm.config().bos_token_id)
    }
}

/// Where the projection starts.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// A projection file (a checkpoint to resume, `--init`, a model's projection).
    File(&'a Path),
    /// [`random_projection`] for this seed.
    Random(u64),
}

/// Loads the frozen parts of `spec` (its `[projection]` file is not needed) and the projection's
/// starting weight `[d_llm, d_a]` and bias `[d_llm]`.
pub fn load(spec: &ModelSpec, device: &Device, start: Start) -> Result<(Frozen, Tensor, Tensor)> {
    let parts = FrozenParts::load(spec, device)
        .with_context(|| format!("loading model `{}`", spec.name.as_deref().unwrap_or("?")))?;
    let dims = parts.projection_dims();
    let (weight, bias) = match start {
        Start::File(path) => {
            let projector = load_projection(path, dims, device)
                .with_context(|| format!("starting projection {}", path.display()))?;
            let weight = projector.weight().clone();
            let bias = match projector.bias() {
                Some(b) => b.clone(),
                None => Tensor::zeros(projector.out_dim(), weight.dtype(), device)?,
            };
            (weight, bias)
        }
        Start::Random(seed) => random_projection(dims.0, dims.1, seed, device)?,
    };
    let FrozenParts { vision, adapter, classifier, llm, tokenizer, template, image, .. } = parts;
    let llm = if llm.is_quantized() { llm.into_dense()? } else { llm };
    let frozen = Frozen {
        vision: Some((vision, adapter, classifier)),
        llm,
        tokenizer,
        template,
        image,
        limits: Limits::default(),
    };
    Ok((frozen, weight, bias))
}
