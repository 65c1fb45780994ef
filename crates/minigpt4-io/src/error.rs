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

    /// A download that failed or was refused (connection, HTTP status, size, partial file); the
    /// message says what to do.
    #[error("{path}: {msg}")]
    Fetch { path: PathBuf, msg: String },

    #[error("config: {0}")]
    Config(String),

    #[error("image {what}: {msg}")]
    Image { what: String, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt: {0}")]
    Prompt(String),

    /// Generation settings or a prompt the model cannot serve (empty, no room left in the
    /// context, an out-of-range sampling value): the request's fault.
    #[error("generation: {0}")]
    Generation(String),

    /// A fault of this program or of the model's weights, never of the request: a poisoned lock,
    /// tensors of the wrong shape between our own parts, NaN logits from non-finite weights.
    #[error("internal error: {0}")]
    Internal(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Whether the input of one request or command caused this (an image that is not an image,
    /// a prompt or settings that cannot be served), as opposed to the model's files, the
    /// configuration, the machine or a bug. A server answers the first 4xx and the rest 5xx.
    pub fn is_input_error(&self) -> bool {
        matches!(self, Error::Image { .. } | Error::Prompt(_) | Error::Generation(_))
    }
}

/// Runs a reader from another crate on a file. candle's GGUF reader panics on some malformed
/// input (a zero alignment divides by zero), and the zip reader is guarded the same way; the
/// panic becomes an error naming the file, printed by us alone, so a hostile file cannot take
/// the process down. (A stack overflow or an allocation failure cannot be caught this way: the
/// readers' inputs are bounded before them, see `llama::read_gguf` and `torch_pickle`.)
pub fn guard_reader<T>(file: &str, read: impl FnOnce() -> Result<T>) -> Result<T> {
    silence_guarded_panics();
    let outer = GUARDED.with(|g| g.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    GUARDED.with(|g| g.set(outer));
    outcome.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the reader failed".into());
        Err(Error::BadCheckpoint { file: file.to_string(), msg: format!("malformed file ({why})") })
    })
}

thread_local! {
    /// Set while this thread runs a reader inside [`guard_reader`].
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps the panic hook, once, so that a panic inside [`guard_reader`] prints nothing (it becomes
/// an error message of ours) while panics anywhere else, on any thread, print as before.
fn silence_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}
