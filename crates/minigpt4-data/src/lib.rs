//! Training data: one plain manifest format (JSONL), the importers that write it from the
//! sources that can be had here, and readers for the layouts real users bring.

pub mod manifest;

pub use manifest::{Manifest, Record, Split, Turn};
