//! `minigpt4 serve`: one axum server with an OpenAI-compatible chat API and a web chat page.
//!
//! - `POST /v1/chat/completions`: OpenAI request and response shapes, `stream: true` as
//!   server-sent events; images as `image_url` parts holding `data:` URLs.
//! - `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`.
//! - `GET /`: the chat page (HTML, CSS and JS built into the binary).
//!
//! Generation runs on blocking threads, at most [`ServeConfig::workers`] at a time, with
//! [`ServeConfig::queue`] more requests waiting; beyond that a request gets 429 at once. A
//! client that goes away cancels its generation. Shutdown (the future given to [`serve`]) stops
//! accepting connections, lets running generations finish for [`ServeConfig::shutdown_grace`],
//! then cancels them.

pub mod api;
pub mod chat;
pub mod error;
mod guard;
mod page;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use minigpt4_core::pipeline::Pipeline;
use serde_json::json;
use tokio::sync::{watch, Semaphore};

pub use error::{ApiError, ApiResult};

/// What the server allows and how it schedules work. [`ServeConfig::new`] gives the defaults of
/// `minigpt4 serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The id `/v1/models` lists and responses carry. Requests may name any model: there is one.
    pub model_id: String,
    /// Generations running at once.
    pub workers: usize,
    /// Requests admitted to wait for a worker; one more gets 429.
    pub queue: usize,
    /// Largest request body; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when a request names none (cut to what the context has room for).
    pub default_max_tokens: usize,
    /// Prompt positions (image tokens included) plus generated tokens. `None`: 2000 (the
    /// reference demo's cap) or the LLM's trained context when that is smaller.
    pub max_context: Option<usize>,
    /// How long running generations may go on after shutdown begins before they are cancelled.
    pub shutdown_grace: Duration,
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_secs: u64,
    /// Waits this long before passing on each streamed piece of text: slows generation down
    /// for tests and demos. `None` in normal use.
    pub throttle: Option<Duration>,
    /// A connection must send a request's headers within this, or it is closed (also an idle
    /// kept-alive connection waiting for its next request).
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this, or it gets 408.
    pub body_timeout: Duration,
    /// Web origins (`https://app.example`, or `*`) whose pages may call the API: they get CORS
    /// headers, and their POSTs are not refused. The chat page served here needs none.
    pub cors_origins: Vec<String>,
}

impl ServeConfig {
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            workers: 1,
            queue: 8,
            max_body_bytes: 20 * 1024 * 1024,
            max_images: 8,
            max_tokens: 1024,
            default_max_tokens: 300,
            max_context: None,
            shutdown_grace: Duration::from_secs(10),
            retry_after_secs: 1,
            throttle: None,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(60),
            cors_origins: Vec::new(),
        }
    }

    /// Whether a page from `origin` may call the API (see [`ServeConfig::cors_origins`]).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    }
}

/// Shared by every handler: the model, the limits and the scheduling state.
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub config: ServeConfig,
    /// The effective context cap (see [`ServeConfig::max_context`]).
    pub max_context: usize,
    created: u64,
    /// One permit per worker: held while a request's images are encoded and its answer generated.
    workers: Arc<Semaphore>,
    /// One permit per worker plus queue slot: held from admission to the end of the work.
    admission: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    /// Set when the shutdown grace is over: running generations stop at their next piece.
    cancel: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(pipeline: Arc<Pipeline>, config: ServeConfig) -> Arc<Self> {
        let trained = pipeline.model.llm.config().max_position_embeddings;
        let max_context = config.max_context.unwrap_or(2000).min(trained.max(2));
        let workers = config.workers.max(1);
        Arc::new(Self {
            pipeline,
            max_context,
            created: unix_now(),
            workers: Arc::new(Semaphore::new(workers)),
            admission: Arc::new(Semaphore::new(workers + config.queue)),
            shutdown: watch::channel(false).0,
            cancel: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            config: ServeConfig { workers, ..config },
        })
    }

    /// The largest `max_tokens` a request may name: the configured cap, less than the context.
    pub fn max_tokens_limit(&self) -> usize {
        self.config.max_tokens.min(self.max_context.saturating_sub(1)).max(1)
    }

    /// Generations running now.
    pub fn busy(&self) -> usize {
        self.config.workers - self.workers.available_permits()
    }

    /// Requests admitted but waiting for a worker.
    pub fn queued(&self) -> usize {
        let admitted = self.config.workers + self.config.queue - self.admission.available_permits();
        admitted.saturating_sub(self.busy())
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stops admitting requests (503), wakes the queued ones with 503, and cancels running
    /// generations once the grace period is over.
    pub fn begin_shutdown(self: &Arc<Self>) {
        if self.shutdown.send_replace(true) {
            return;
        }
        tracing::info!(busy = self.busy(), queued = self.queued(), "shutting down");
        let grace = self.config.shutdown_grace;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if !grace.is_zero() {
                tokio::time::sleep(grace).await;
            }
            if me.busy() > 0 {
                tracing::warn!(busy = me.busy(), "cancelling the generations still running");
            }
            me.cancel.store(true, Ordering::SeqCst);
        });
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Resolves when shutdown begins.
    pub(crate) async fn shutdown_started(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(crate) fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("chatcmpl-{:08x}{:06x}", rand::random::<u32>(), n & 0xff_ffff)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(page::index))
        .route("/assets/app.js", get(page::script))
        .route("/assets/style.css", get(page::style))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), guard::guard))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then shuts down gracefully (see
/// [`AppState::begin_shutdown`]) and returns once every connection is closed.
///
/// Our own accept loop rather than `axum::serve`, which gives hyper no timer: without one a
/// connection that never finishes its headers stays open for ever (1,000 of them held 1,000
/// sockets and tasks past a minute). Here hyper closes it after [`ServeConfig::header_timeout`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&state));
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener is fine, so wait a moment instead of spinning or giving up.
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let st = Arc::clone(&state);
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(st.config.header_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = st.shutdown_started() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    state.begin_shutdown();
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let shutting_down = state.is_shutting_down();
    let body = json!({
        "status": if shutting_down { "shutting_down" } else { "ok" },
        "model": state.config.model_id,
        "template": state.pipeline.template.name(),
        "workers": state.config.workers,
        "busy": state.busy(),
        "queued": state.queued(),
        "queue_capacity": state.config.queue,
        "limits": {
            "max_body_bytes": state.config.max_body_bytes,
            "max_images": state.config.max_images,
            "max_image_pixels": state.pipeline.limits.max_pixels,
            "max_tokens": state.max_tokens_limit(),
            "default_max_tokens": state.config.default_max_tokens,
            "max_context": state.max_context,
        },
    });
    let status = if shutting_down { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, Json(body)).into_response()
}

fn model_object(state: &AppState) -> serde_json::Value {
    json!({
        "id": state.config.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "minigpt4-rs",
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    if id == state.config.model_id {
        Ok(Json(model_object(&state)))
    } else {
        Err(ApiError::not_found(format!(
            "the model `{id}` does not exist; this server serves `{}`",
            state.config.model_id
        ))
        .param("model")
        .code("model_not_found"))
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}; this server has POST /v1/chat/completions, GET /v1/models, GET /health and the chat page at /",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("method {method} is not allowed on {}", uri.path()),
    )
    .code("method_not_allowed")
}
