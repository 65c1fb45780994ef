//! The plumbing under the model parts: the library's error type (which says whose fault a
//! failure is), named-tensor sources read from checkpoints (safetensors, torch `.pth` through our
//! own restricted unpickler), content hashes and atomic writes ([`files`]), and the one pip
//! fetcher ([`pip`]).

pub mod error;
pub mod files;
pub mod gguf_writer;
pub mod pip;
pub mod safetensors_writer;
pub mod torch_pickle;
pub mod weights;

pub use error::{Error, Result};
