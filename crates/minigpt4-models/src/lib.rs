//! MiniGPT-4's model parts, one file each, built by `load(weights, cfg)` from checkpoints in
//! their published names: the vision encoders ([`eva_vit`], [`dinov2`], [`efficientnet_lite`]),
//! the adapters ([`qformer`], [`adapter`]), the projection ([`projector`]), the decoder
//! ([`llama`], with [`lora`] adapters) and the whole network ([`minigpt4`]). Weight renames live in [`names`]; the
//! DINOv2 ONNX import in [`onnx`]. Kernels come from minigpt4-ops, checkpoints from minigpt4-io.

pub mod adapter;
pub mod dinov2;
pub mod efficientnet_lite;
pub mod eva_vit;
pub mod llama;
pub mod lora;
pub mod minigpt4;
pub mod names;
pub mod onnx;
pub mod projector;
pub mod qformer;
pub mod vit_layers;

pub use minigpt4_io::{Error, Result};
