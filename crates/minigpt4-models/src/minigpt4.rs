//! The whole MiniGPT-4: vision tower (encoder + `ln_vision`) → adapter → projection → LLM,
//! with the image tokens spliced into the prompt where `<ImageHere>` stood.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::LayerNorm;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::dinov2::Dinov2;
use crate::efficientnet_lite::{Classifier, EfficientNet};
use crate::eva_vit::{EvaVit, EvaVitConfig};
use crate::llama::Llama;
use crate::projector::Projector;
use crate::qformer::QFormerConfig;
use crate::{Error, Result};
use minigpt4_io::weights::Weights;

/// Mirrors the vision/Q-Former part of Hugging Face's `Blip2Config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blip2Config {
    #[serde(default)]
    pub vision_config: EvaVitConfig,
    #[serde(default)]
    pub qformer_config: QFormerConfig,
    #[serde(default = "default_queries")]
    pub num_query_tokens: usize,
}

fn default_queries() -> usize {
    32
}

/// BLIP-2's published sizes, what LAVIS checkpoints (which come without a config) need: EVA
/// ViT-g/14, the 12-layer Q-Former and 32 query tokens. (A derived `Default` gave 0 queries, so
/// the real presets could not load their Q-Former; the random full-size benchmark found it.)
impl Default for Blip2Config {
    fn default() -> Self {
        Self {
            vision_config: EvaVitConfig::default(),
            qformer_config: QFormerConfig::default(),
            num_query_tokens: default_queries(),
        }
    }
}

impl Blip2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// `ln_vision` epsilon of LAVIS/MiniGPT-4 (`nn.LayerNorm` default); Hugging Face uses the vision
/// config's `layer_norm_eps` instead.
pub const LAVIS_LN_VISION_EPS: f64 = 1e-5;

/// The frozen image encoders MiniGPT-4 variants use.
pub enum VisionEncoder {
    Eva(EvaVit),
    Dinov2(Dinov2),
    /// A classifier whose one output token is its logits.
    EfficientNet(EfficientNet),
}

impl VisionEncoder {
    pub fn hidden_size(&self) -> usize {
        match self {
            VisionEncoder::Eva(e) => e.config().hidden_size,
            VisionEncoder::Dinov2(d) => d.hidden_size(),
            VisionEncoder::EfficientNet(e) => e.num_classes(),
        }
    }

    pub fn image_size(&self) -> usize {
        match self {
            VisionEncoder::Eva(e) => e.image_size(),
            VisionEncoder::Dinov2(d) => d.image_size(),
            VisionEncoder::EfficientNet(e) => e.image_size(),
        }
    }

    /// Output tokens per image, CLS included.
    pub fn num_tokens(&self) -> usize {
        match self {
            VisionEncoder::Eva(e) => e.num_tokens(),
            VisionEncoder::Dinov2(d) => d.num_tokens(),
            VisionEncoder::EfficientNet(_) => 1,
        }
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        match self {
            VisionEncoder::Eva(e) => e.forward(pixels),
            VisionEncoder::Dinov2(d) => d.forward(pixels),
            VisionEncoder::EfficientNet(e) => e.forward(pixels),
        }
    }
}

/// Vision encoder followed by `ln_vision` (none for a classifier: normalising its logits would
/// change which class wins by how much).
pub struct VisionTower {
    encoder: VisionEncoder,
    ln_vision: Option<LayerNorm>,
}

impl VisionTower {
    /// `w` holds `vision_model.*` names. `ln_vision` comes from `vision_model.post_layernorm.*`
    /// when `load_ln_vision`; otherwise it is a LayerNorm with weight 1 and bias 0, as in
    /// MiniGPT-4's Llama-2 variant, which builds `ln_vision` but never loads it.
    pub fn load(cfg: &EvaVitConfig, image_size: usize, w: &Weights, load_ln_vision: bool, ln_eps: f64) -> Result<Self> {
        let encoder = VisionEncoder::Eva(EvaVit::load(cfg, image_size, &w.pp("vision_model"), w.dtype())?);
        let d = cfg.hidden_size;
        let ln_vision = if load_ln_vision {
            candle_nn::layer_norm(d, ln_eps, w.pp("vision_model.post_layernorm"))?
        } else {
            unit_layer_norm(d, ln_eps, w.device(), w.dtype())?
        };
        Ok(Self { encoder, ln_vision: Some(ln_vision) })
    }

    /// Any encoder with an explicit `ln_vision`, or none.
    pub fn new(encoder: VisionEncoder, ln_vision: Option<LayerNorm>) -> Self {
        Self { encoder, ln_vision }
    }

    pub fn encoder(&self) -> &VisionEncoder {
        &self.encoder
    }

    pub fn hidden_size(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// [B, 3, S, S] → [B, N, D] normalised tokens.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.encoder.forward(pixels)?;
        Ok(match &self.ln_vision {
            Some(ln) => ln.forward(&x)?,
            None => x,
        })
    }
}

/// A LayerNorm with weight 1 and bias 0: it still normalises (an `ln_vision` that is built but
/// never loaded).
pub fn unit_layer_norm(dim: usize, eps: f64, device: &Device, dtype: DType) -> Result<LayerNorm> {
    let ones = Tensor::ones(dim, dtype, device)?;
    Ok(LayerNorm::new(ones.clone(), ones.zeros_like()?, eps))
}

pub struct MiniGpt4 {
    pub vision: VisionTower,
    pub adapter: Adapter,
    /// A classifier whose class tokens join the adapter's (model file `[classifier]`).
    pub classifier: Option<Classifier>,
    pub projector: Projector,
    pub llm: Llama,
}

impl MiniGpt4 {
    pub fn new(vision: VisionTower, adapter: Adapter, projector: Projector, llm: Llama) -> Result<Self> {
        Self::with_classifier(vision, adapter, None, projector, llm)
    }

    pub fn with_classifier(
        vision: VisionTower,
        adapter: Adapter,
        classifier: Option<Classifier>,
        projector: Projector,
        llm: Llama,
    ) -> Result<Self> {
        let a = adapter.out_dim(vision.hidden_size()) + classifier.as_ref().map_or(0, Classifier::width);
        if projector.in_dim() != a || projector.out_dim() != llm.hidden_size() {
            return Err(Error::Config(format!(
                "projection is Linear({} → {}), but the adapter gives {a} and the LLM takes {}",
                projector.in_dim(),
                projector.out_dim(),
                llm.hidden_size()
            )));
        }
        Ok(Self { vision, adapter, classifier, projector, llm })
    }

    pub fn device(&self) -> &Device {
        self.llm.device()
    }

    /// The frozen part: pixels → adapter tokens. Never changes during training, so it can be
    /// cached per image.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        image_features(&self.vision, &self.adapter, self.classifier.as_ref(), pixels)
    }

    /// Pixels [B, 3, S, S] → soft-prompt tokens [B, N, d_llm].
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        self.projector.forward(&self.image_features(pixels)?)?.to_dtype(self.llm.dtype()).map_err(Error::from)
    }

    /// Interleaves token segments with image embeddings: seg₀ img₀ seg₁ img₁ … segₙ. Each image is
    /// [1, N, D]; there must be exactly one fewer image than segments.
    pub fn splice(&self, segments: &[Vec<u32>], images: &[Tensor]) -> Result<Tensor> {
        if segments.len() != images.len() + 1 {
            return Err(Error::Prompt(format!(
                "the prompt has {} image placeholder(s) but {} image(s) were given",
                segments.len().saturating_sub(1),
                images.len()
            )));
        }
        let mut parts = Vec::with_capacity(segments.len() * 2);
        for (i, seg) in segments.iter().enumerate() {
            if !seg.is_empty() {
                parts.push(self.llm.embed(seg)?);
            }
            if let Some(img) = images.get(i) {
                parts.push(img.to_dtype(self.llm.dtype())?);
            }
        }
        if parts.is_empty() {
            return Err(Error::Prompt("empty prompt".into()));
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// Pixels → the projection's input tokens: the adapter's, after the classifier's when there is one.
pub fn image_features(
    vision: &VisionTower,
    adapter: &Adapter,
    classifier: Option<&Classifier>,
    pixels: &Tensor,
) -> Result<Tensor> {
    let tokens = adapter.forward(&vision.forward(pixels)?)?;
    match classifier {
        Some(c) => c.join(pixels, &tokens),
        None => Ok(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_blip2s_published_sizes() {
        let c = Blip2Config::default();
        assert_eq!(c.num_query_tokens, 32);
        assert_eq!((c.vision_config.hidden_size, c.vision_config.num_hidden_layers), (1408, 39));
        assert_eq!((c.qformer_config.hidden_size, c.qformer_config.num_hidden_layers), (768, 12));
        // An empty config file means the same.
        assert_eq!(serde_json::from_str::<Blip2Config>("{}").unwrap(), c);
    }
}
