//! Errors as the OpenAI API writes them: `{"error": {"message", "type", "param", "code"}}` with
//! the matching HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use minigpt4_core::Error as CoreError;
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `requests`, `server_error`, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn server(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn busy(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "the server is busy: every worker is generating and the queue is full; retry shortly",
        )
        .code("rate_limit_exceeded");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down").code("shutting_down")
    }

    /// 413: the body is larger than the server reads.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
        .code("request_too_large")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body, also used as an SSE `data:` payload when a stream fails part-way.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// A core error met while handling a request: what the request caused is a 400
    /// ([`CoreError::is_input_error`]), everything else (the model's files, a bug) a 500.
    pub fn from_core(e: CoreError, param: Option<String>) -> Self {
        if !e.is_input_error() {
            tracing::error!("internal error while answering: {e}");
            return Self::server(format!("internal error: {e}")).code("internal_error");
        }
        let code = match &e {
            CoreError::Image { .. } => "invalid_image",
            CoreError::Prompt(_) => "invalid_prompt",
            _ => "invalid_value",
        };
        let mut err = Self::invalid(e.to_string()).code(code);
        err.param = param;
        err
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the request caused is a 400; the model's files, the machine and our bugs are 500s.
    #[test]
    fn whose_fault_decides_the_status() {
        let cases = [
            (CoreError::Image { what: "image 1".into(), msg: "not an image".into() }, 400, "invalid_image"),
            (CoreError::Prompt("two placeholders".into()), 400, "invalid_prompt"),
            (CoreError::Generation("no room left in the context".into()), 400, "invalid_value"),
            (CoreError::Internal("image cache poisoned".into()), 500, "internal_error"),
            (CoreError::BadCheckpoint { file: "llm.gguf".into(), msg: "truncated".into() }, 500, "internal_error"),
            (CoreError::Tokenizer("encoding failed".into()), 500, "internal_error"),
            (CoreError::Config("bad model file".into()), 500, "internal_error"),
        ];
        for (e, status, code) in cases {
            let what = e.to_string();
            let api = ApiError::from_core(e, Some("messages".into()));
            assert_eq!((api.status.as_u16(), api.code), (status, Some(code)), "{what}");
            assert_eq!(api.param.is_some(), status == 400, "{what}");
        }
    }
}
