//! minigpt4-core's integration tests, one binary (one link instead of 12).

mod checkpoints;
mod common;
mod convert;
mod dinov2;
mod efficientnet;
mod fetch;
mod generate;
mod gradient;
mod image;
mod lora;
mod parity;
mod pipeline;
mod quantize;
mod smollm2;
mod template;
mod tokenizer;
