//! One error type for the library. Every variant carries enough context (file, tensor, limit)
//! for a person to act on it without reading the source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("tensor `{name}` is missing from {file}")]
    MissingTensor { name: String, file: String },

    #[error("tensor `{name}` in {file} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch { name: String, file: String, expected: Vec<usize>, actual: Vec<usize> },

    #[error("{file}: {msg}")]
    BadCheckpoint { file: String, msg: String },

    #[error("config: {0}")]
    Config(String),

    #[error("image {what}: {msg}")]
    Image { what: String, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt: {0}")]
    Prompt(String),

    #[error("generation: {0}")]
    Generation(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Runs a reader from another crate on a file. candle's GGUF and pickle readers panic on some
/// malformed input (a zero alignment divides by zero, a short argument tuple indexes past its
/// end); the panic becomes an error naming the file, so a hostile file cannot take the process
/// down. (A stack overflow or an allocation failure cannot be caught this way.)
pub(crate) fn guard_reader<T>(file: &str, read: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the reader failed".into());
        Err(Error::BadCheckpoint { file: file.to_string(), msg: format!("malformed file ({why})") })
    })
}

