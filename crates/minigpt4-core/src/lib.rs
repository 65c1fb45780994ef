//! MiniGPT-4 in Rust: a frozen vision encoder and adapter feed one trained linear projection
//! whose output is a soft prompt for a frozen LLaMA-family decoder.

pub mod adapter;
pub mod dinov2;
pub mod efficientnet_lite;
pub mod error;
pub mod eva_vit;
pub mod fetch;
pub mod generate;
pub mod image;
pub mod llama;
pub mod minigpt4;
pub mod model_file;
pub mod names;
pub mod onnx;
pub mod pipeline;
pub mod projector;
pub mod qformer;
pub mod quant_matvec;
pub mod template;
pub mod tokenizer;
pub mod torch_pickle;
mod train_ops;
pub mod vit_layers;
mod vit_ops;
pub mod weights;

pub use error::{Error, Result};
