//! Training of MiniGPT-4's projection (`llama_proj`; Zhu et al., arXiv 2304.10592, §3): the vision encoder, adapter
//! and LLM stay frozen; their image features are computed once and cached on disk; stage 1
//! aligns on image–caption pairs, stage 2 tunes on instructions in the model's template.
//!
//! Outputs in the run directory: `projection.safetensors` (the trained projection),
//! `checkpoints/step-N.safetensors` (projection + AdamW state + settings, resumable),
//! `log.csv`, `loss.png`, `config.json`.
//!
//! [`eval`] scores a projection on held-out captions (BLEU-4, CIDEr-D, keyword hit rate).

pub mod caption;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod features;
pub mod io;
pub mod keyword;
pub mod log;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod schedule;
pub mod trainer;
pub mod warm_start;

pub use config::{TrainConfig, TrainOptions};
pub use data::Stage;
pub use progress::Progress;
pub use trainer::{train, TrainReport, Trainer};
