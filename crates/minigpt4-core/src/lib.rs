//! MiniGPT-4 in Rust: a frozen vision encoder and adapter feed one trained linear projection
//! whose output is a soft prompt for a frozen LLaMA-family decoder.
//!
//! This crate is the pipeline on top of the model parts: image preprocessing ([`image`]),
//! tokenizers ([`tokenizer`]), chat templates and prompt assembly ([`template`]), generation
//! ([`generate`]), model files and presets ([`model_file`]), fetching the default's parts
//! ([`fetch`]) and the loaded model that answers ([`pipeline`]).
//!
//! Below it (see ARCHITECTURE.md): minigpt4-models (one file per model part), minigpt4-io
//! (the error type, checkpoint readers, hashing) and minigpt4-ops (the CPU kernels). Their
//! modules are re-exported here so that a user of the pipeline needs this crate alone.

pub mod convert;
pub mod fetch;
pub mod fetch_preset;
pub mod generate;
pub mod grounding;
pub mod image;
pub mod model_file;
pub mod pipeline;
pub mod template;
pub mod tokenizer;

pub use minigpt4_io::{error, files, torch_pickle, weights};
pub use minigpt4_models::{
    adapter, dinov2, efficientnet_lite, eva_vit, llama, lora, minigpt4, names, onnx, projector, qformer, vit_layers,
};
pub use minigpt4_ops::{quant_gemm, quant_matvec};

pub use error::{Error, Result};
