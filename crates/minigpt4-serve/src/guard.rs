//! What every request passes before its handler:
//! - the Origin check: a browser sends `Origin` with every POST, so a POST from a page of another
//!   origin (any web page the user happens to have open can aim at `localhost`) is refused,
//!   unless `--cors-origin` allows that origin; non-browser clients send no `Origin` and pass;
//! - CORS headers and preflight answers for the allowed origins;
//! - the body, read whole here: a `Content-Length` above the limit is refused before a byte is
//!   read (so `Expect: 100-continue` gets its 413 without the upload), a chunked body is counted
//!   as it comes, and the whole read has a deadline (a client that stalls mid-body gets 408).
//!
//! Slow headers are the connection's business: [`crate::serve`] sets hyper's header read timeout.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::error::ApiError;
use crate::AppState;

pub async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    let cors = origin.as_deref().filter(|o| state.config.allows_origin(o)).map(str::to_owned);
    if req.method() == Method::OPTIONS {
        return preflight(cors.as_deref());
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Some(origin) = origin.as_deref() {
            if cors.is_none() && !same_origin(origin, req.headers()) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "invalid_request_error",
                    format!(
                        "requests from the web page at {origin} are not allowed; start the server with \
                         `--cors-origin {origin}` to allow them"
                    ),
                )
                .code("cross_origin_request")
                .into_response();
            }
        }
    }

    let (parts, body) = req.into_parts();
    let limit = state.config.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(limit).into_response();
    }
    let bytes = match tokio::time::timeout(state.config.body_timeout, read_body(body, limit, declared)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!("the request body did not arrive within {:?}", state.config.body_timeout),
            )
            .code("request_timeout")
            .into_response()
        }
    };
    let mut resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if let Some(origin) = cors {
        allow_origin(resp.headers_mut(), &origin);
    }
    resp
}

/// The body, refused as soon as it grows past `limit`; `declared` (its `Content-Length`, already
/// checked against the limit) sizes the buffer once instead of doubling it as it fills.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")).code("invalid_body"))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

/// Whether `origin` is this server as the browser reached it (the chat page's own requests):
/// `http://` plus the `Host` the request was sent to.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|h| origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(h)))
}

fn preflight(cors: Option<&str>) -> Response {
    let Some(origin) = cors else {
        // No CORS headers: the browser refuses the request it asked about.
        return StatusCode::NO_CONTENT.into_response();
    };
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    allow_origin(h, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    resp
}

fn allow_origin(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}
