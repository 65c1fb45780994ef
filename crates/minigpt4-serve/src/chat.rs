//! `POST /v1/chat/completions`: admission, the worker that encodes the images and generates, and
//! the two response forms (one JSON object, or server-sent events in OpenAI's chunk format).
//!
//! A request is parsed and checked first (400 on anything wrong), then admitted if a worker or a
//! queue slot is free (429 otherwise), then waits for a worker. The worker encodes the images,
//! builds the prompt and checks it against the context (400 again), reports `Ready`, and
//! generates. Its text goes through a channel; when the receiving side is gone (the client
//! disconnected, so axum dropped the response) the worker's callback returns `Break` and the
//! worker is free for the next request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use minigpt4_core::generate::FinishReason;
use minigpt4_core::grounding::{self, GroundedBox};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{self, Prepared, RequestLimits};
use crate::error::{ApiError, ApiResult};
use crate::{unix_now, AppState};

/// What a worker tells the handler.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The images are encoded and the prompt fits; generation starts.
    Ready {
        prompt_tokens: usize,
    },
    /// A streamed piece of the answer.
    Text(String),
    Done {
        text: String,
        /// MiniGPT-v2 boxes in the answer, in pixels of the conversation's last image.
        boxes: Vec<GroundedBox>,
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(ApiError),
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if state.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    // A web page on another origin may POST `text/plain` (a CORS "simple request", sent without a
    // preflight) to a server on this machine; `application/json` needs a preflight, which this
    // server never grants. So only JSON bodies are read.
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!("the request body must be JSON with `Content-Type: application/json` (got {content_type:?})"),
        )
        .code("unsupported_media_type"));
    }
    // The guard middleware has already read the body within the size limit and the deadline.
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.config.max_body_bytes)
        } else {
            ApiError::invalid(format!("could not read the request body: {e}")).code("invalid_body")
        }
    })?;
    let req = api::parse_request(&body)?;
    drop(body);
    let limits = RequestLimits { max_images: state.config.max_images, max_tokens: state.max_tokens_limit() };
    let prepared = api::prepare(req, state.pipeline.template, limits)?;
    // No token covers more text than the tokenizer's longest entry, so a prompt longer than that
    // many bytes per context position cannot fit: refused before it is tokenized (20 MB of text
    // took 2 GB to tokenize).
    let prompt_bytes = prepared.conv.prompt().len();
    let bound = state.max_context.saturating_mul(state.pipeline.tokenizer.max_token_bytes());
    if prompt_bytes > bound {
        return Err(ApiError::invalid(format!(
            "the conversation is {prompt_bytes} bytes of text, more than this server's context of {} positions can hold \
             (at most {} bytes a token); shorten the conversation",
            state.max_context,
            state.pipeline.tokenizer.max_token_bytes()
        ))
        .param("messages")
        .code("context_length_exceeded"));
    }

    let admission =
        Arc::clone(&state.admission).try_acquire_owned().map_err(|_| ApiError::busy(state.config.retry_after_secs))?;
    let worker = tokio::select! {
        permit = Arc::clone(&state.workers).acquire_owned() => permit.map_err(|_| ApiError::shutting_down())?,
        _ = state.shutdown_started() => return Err(ApiError::shutting_down()),
    };

    let (tx, mut rx) = mpsc::unbounded_channel();
    let st = Arc::clone(&state);
    let stream = prepared.stream;
    let include_usage = prepared.include_usage;
    tokio::task::spawn_blocking(move || {
        let _permits = (admission, worker);
        let job = std::panic::AssertUnwindSafe(|| run_job(&st, prepared, &tx));
        if std::panic::catch_unwind(job).is_err() {
            tracing::error!("a generation worker panicked");
            let _ = tx.send(WorkerEvent::Error(ApiError::server("internal error: the generation worker panicked")));
        }
    });

    let prompt_tokens = match rx.recv().await {
        Some(WorkerEvent::Ready { prompt_tokens }) => prompt_tokens,
        Some(WorkerEvent::Error(e)) => return Err(e),
        Some(other) => return Err(ApiError::server(format!("internal error: unexpected worker event {other:?}"))),
        None => return Err(ApiError::server("internal error: the generation worker stopped")),
    };
    let meta = ResponseMeta { id: state.new_id(), created: unix_now(), model: state.config.model_id.clone() };
    if stream {
        Ok(sse_response(meta, rx, include_usage, prompt_tokens).into_response())
    } else {
        collect(meta, rx).await.map(IntoResponse::into_response)
    }
}

/// Encodes the images, checks the prompt against the context, generates.
fn run_job(state: &AppState, p: Prepared, tx: &mpsc::UnboundedSender<WorkerEvent>) {
    let started = Instant::now();
    let pipeline = &*state.pipeline;
    let fail = |e: ApiError| {
        let _ = tx.send(WorkerEvent::Error(e));
    };
    let mut embeds = Vec::with_capacity(p.images.len());
    for img in &p.images {
        if tx.is_closed() {
            return;
        }
        match pipeline.image_embeds(&img.bytes, &img.param) {
            Ok(t) => embeds.push(t),
            Err(e) => return fail(ApiError::from_core(e, Some(format!("{}.image_url", img.param)))),
        }
    }
    // Counted from the token ids, before anything is embedded: a long text costs its ids (4 bytes
    // a token), not d_llm floats a token, when it is refused.
    let segments = match p.conv.tokenize(&pipeline.tokenizer) {
        Ok(s) => s,
        Err(e) => return fail(ApiError::from_core(e, Some("messages".into()))),
    };
    let text_tokens: usize = segments.iter().map(Vec::len).sum();
    let image_tokens: usize = embeds.iter().map(|e| e.dims().get(1).copied().unwrap_or(0)).sum();
    let prompt_tokens = text_tokens + image_tokens;

    let room = state.max_context.saturating_sub(prompt_tokens);
    let too_long = |what: String, param: &str| {
        ApiError::invalid(format!(
            "{what}: the conversation takes {prompt_tokens} prompt positions ({image_tokens} of them image tokens) and this \
             server's context is {} positions; shorten the conversation or lower max_tokens",
            state.max_context
        ))
        .param(param)
        .code("context_length_exceeded")
    };
    let max_new = match p.max_tokens {
        Some(m) if m > room => return fail(too_long(format!("max_tokens ({m}) does not fit"), "max_tokens")),
        Some(m) => m,
        None if room == 0 => return fail(too_long("the prompt fills the context".into(), "messages")),
        None => state.config.default_max_tokens.min(room),
    };
    let prompt = match pipeline.model.splice(&segments, &embeds) {
        Ok(t) => t,
        Err(e) => return fail(ApiError::from_core(e, Some("messages".into()))),
    };
    drop(segments);
    let mut cfg = pipeline.with_stops(p.gen);
    cfg.max_new_tokens = max_new;
    cfg.max_context = state.max_context;
    if let Err(e) = cfg.validate() {
        return fail(ApiError::from_core(e, None));
    }
    if tx.send(WorkerEvent::Ready { prompt_tokens }).is_err() {
        return;
    }

    let stream = p.stream;
    let mut started_text = false;
    let throttle = state.config.throttle;
    let mut on_text = |piece: &str| -> ControlFlow<()> {
        if let Some(d) = throttle {
            std::thread::sleep(d);
        }
        if tx.is_closed() || state.cancelled() {
            return ControlFlow::Break(());
        }
        if !stream {
            return ControlFlow::Continue(());
        }
        // The answer is trimmed; so is the start of the stream.
        let piece = if started_text { piece } else { piece.trim_start() };
        if piece.is_empty() {
            return ControlFlow::Continue(());
        }
        started_text = true;
        match tx.send(WorkerEvent::Text(piece.to_string())) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    };
    let result = pipeline.respond_to_embeds(&prompt, &cfg, &mut on_text);
    match result {
        Ok(g) if g.finish_reason == FinishReason::Cancelled => {
            if tx.is_closed() {
                tracing::info!(tokens = g.token_ids.len(), "client went away; generation cancelled");
            } else {
                fail(ApiError::shutting_down().code("cancelled"));
                tracing::info!(tokens = g.token_ids.len(), "generation cancelled by shutdown");
            }
        }
        Ok(g) => {
            let text = g.text;
            tracing::info!(
                prompt_tokens,
                completion_tokens = g.token_ids.len(),
                finish = ?g.finish_reason,
                secs = started.elapsed().as_secs_f32(),
                "answered"
            );
            let boxes = answer_boxes(&text, p.images.last(), &pipeline.limits);
            let _ = tx.send(WorkerEvent::Done {
                text,
                boxes,
                finish_reason: g.finish_reason,
                prompt_tokens,
                completion_tokens: g.token_ids.len(),
            });
        }
        Err(e) => fail(ApiError::server(format!("generation failed: {e}"))),
    }
}

/// The boxes of a grounded answer, in pixels of `image` (the conversation's last one, which the
/// answer is about); none without an image or box markup.
fn answer_boxes(
    text: &str,
    image: Option<&api::ImageInput>,
    limits: &minigpt4_core::image::Limits,
) -> Vec<GroundedBox> {
    let Some(image) = image.filter(|_| grounding::has_markup(text)) else { return Vec::new() };
    match minigpt4_core::image::load_rgb(&image.bytes, &image.param, limits) {
        Ok(img) => {
            let g = grounding::parse_answer(text, img.width(), img.height());
            for w in &g.warnings {
                tracing::warn!("a box in the answer was left out: {w}");
            }
            g.boxes
        }
        Err(e) => {
            tracing::warn!("boxes not read: {e}");
            Vec::new()
        }
    }
}

/// The assistant message: OpenAI's fields, plus `boxes` when the answer has any (a field OpenAI
/// clients ignore).
fn assistant_message(text: &str, boxes: &[GroundedBox]) -> Value {
    let mut m = json!({ "role": "assistant", "content": text, "refusal": null });
    if !boxes.is_empty() {
        m["boxes"] = json!(boxes);
    }
    m
}

struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

async fn collect(meta: ResponseMeta, mut rx: mpsc::UnboundedReceiver<WorkerEvent>) -> ApiResult<Json<Value>> {
    loop {
        match rx.recv().await {
            Some(WorkerEvent::Text(_)) | Some(WorkerEvent::Ready { .. }) => {}
            Some(WorkerEvent::Done { text, boxes, finish_reason, prompt_tokens, completion_tokens }) => {
                return Ok(Json(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "message": assistant_message(&text, &boxes),
                        "logprobs": null,
                        "finish_reason": finish_name(finish_reason),
                    }],
                    "usage": usage(prompt_tokens, completion_tokens),
                })));
            }
            Some(WorkerEvent::Error(e)) => return Err(e),
            None => return Err(ApiError::server("internal error: the generation worker stopped")),
        }
    }
}

struct SseState {
    meta: ResponseMeta,
    rx: mpsc::UnboundedReceiver<WorkerEvent>,
    include_usage: bool,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

impl SseState {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> SseEvent {
        let mut c = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        SseEvent::default().data(c.to_string())
    }

    fn end_with_error(&mut self, e: ApiError) {
        tracing::warn!(error = %e, "stream ended with an error");
        self.pending.push_back(SseEvent::default().data(e.body().to_string()));
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            if self.finished {
                return None;
            }
            match self.rx.recv().await {
                Some(WorkerEvent::Text(t)) => return Some(self.chunk(json!({ "content": t }), None)),
                Some(WorkerEvent::Ready { .. }) => {}
                Some(WorkerEvent::Done { boxes, finish_reason, prompt_tokens, completion_tokens, .. }) => {
                    let delta = if boxes.is_empty() { json!({}) } else { json!({ "boxes": boxes }) };
                    let last = self.chunk(delta, Some(finish_name(finish_reason)));
                    self.pending.push_back(last);
                    if self.include_usage {
                        let u = json!({
                            "id": self.meta.id,
                            "object": "chat.completion.chunk",
                            "created": self.meta.created,
                            "model": self.meta.model,
                            "system_fingerprint": null,
                            "choices": [],
                            "usage": usage(prompt_tokens, completion_tokens),
                        });
                        self.pending.push_back(SseEvent::default().data(u.to_string()));
                    }
                    self.pending.push_back(SseEvent::default().data("[DONE]"));
                    self.finished = true;
                }
                Some(WorkerEvent::Error(e)) => self.end_with_error(e),
                None => self.end_with_error(ApiError::server("internal error: the generation worker stopped")),
            }
        }
    }
}

fn sse_response(
    meta: ResponseMeta,
    rx: mpsc::UnboundedReceiver<WorkerEvent>,
    include_usage: bool,
    _prompt_tokens: usize,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut state = SseState { meta, rx, include_usage, pending: VecDeque::new(), finished: false };
    let first = state.chunk(json!({ "role": "assistant", "content": "" }), None);
    state.pending.push_back(first);
    let stream = futures_util::stream::unfold(state, |mut s| async move { s.next_event().await.map(|ev| (Ok(ev), s)) });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grounded_answers_carry_boxes_in_the_image_pixels() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../minigpt4-core/tests/fixtures/images/cat.jpg");
        let bytes = std::fs::read(path).unwrap();
        let limits = minigpt4_core::image::Limits::default();
        let decoded = minigpt4_core::image::load_rgb(&bytes, "cat.jpg", &limits).unwrap();
        let (w, h) = decoded.dimensions();
        let image = api::ImageInput { bytes, param: "messages[0].content[0]".into() };
        let boxes = answer_boxes("<p>a cat</p>{<0><0><50><100>} on a floor", Some(&image), &limits);
        assert_eq!(boxes.len(), 1);
        assert_eq!((boxes[0].x2, boxes[0].y2), (w as f32 / 2.0, h as f32));
        let m = assistant_message("<p>a cat</p>{<0><0><50><100>} on a floor", &boxes);
        assert_eq!(m["boxes"][0]["label"], "a cat");
        assert_eq!(m["content"], "<p>a cat</p>{<0><0><50><100>} on a floor");
        // Plain answers, or no image: no boxes, and the message has exactly OpenAI's fields.
        assert!(answer_boxes("A cat.", Some(&image), &limits).is_empty());
        assert!(answer_boxes("<p>a cat</p>{<0><0><50><100>}", None, &limits).is_empty());
        assert!(assistant_message("A cat.", &[]).get("boxes").is_none());
    }
}
