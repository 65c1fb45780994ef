//! The request body of `POST /v1/chat/completions`, parsed and checked into what a worker
//! needs: the conversation in the model's template, the image bytes and the decoding settings.
//! Everything here is cheap and runs before a request is admitted; images are decoded by the
//! worker (see [`crate::chat`]).

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use minigpt4_core::generate::{GenerationConfig, MAX_BEAMS};
use minigpt4_core::grounding::Task;
use minigpt4_core::template::{Conversation, TemplateKind, IMAGE_PLACEHOLDER};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// The OpenAI chat-completions request, plus `num_beams`, `repetition_penalty` and `top_k`.
/// Unknown fields are refused (as OpenAI does) so a misspelt parameter is not silently ignored;
/// fields this server cannot honour are accepted only at their neutral values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<RawMessage>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // Extensions (the web page's controls).
    pub num_beams: Option<u64>,
    /// MiniGPT-v2's task identifier (`grounding`, `refer`, `detection`, `identify`, `vqa`), put
    /// in front of the last user message's text; boxes in the answer come back in `boxes`.
    pub task: Option<String>,
    pub repetition_penalty: Option<f64>,
    pub top_k: Option<u64>,
    // OpenAI parameters accepted only where they change nothing.
    pub user: Option<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub functions: Option<Vec<Value>>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
    pub store: Option<bool>,
    pub metadata: Option<Value>,
    pub service_tier: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub function_call: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// One image of the request: its bytes and where it came from (`messages[0].content[1]`).
#[derive(Debug)]
pub struct ImageInput {
    pub bytes: Vec<u8>,
    pub param: String,
}

/// A checked request, ready for a worker.
#[derive(Debug)]
pub struct Prepared {
    pub conv: Conversation,
    pub images: Vec<ImageInput>,
    /// Decoding settings without the template's stops; `max_new_tokens` is set by the worker
    /// once the prompt length is known.
    pub gen: GenerationConfig,
    /// `max_tokens` as the request gave it.
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// What the request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_images: usize,
    pub max_tokens: usize,
}

/// The most `stop` strings, as OpenAI allows.
pub const MAX_STOPS: usize = 4;

/// Parses the body; the error names the JSON path of a wrong field (`param`).
pub fn parse_request(body: &[u8]) -> ApiResult<ChatRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; send a JSON object such as {\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}",
        )
        .code("invalid_json"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<ChatRequest, _> = serde_path_to_error::deserialize(&mut de);
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(if inner.is_syntax() || inner.is_eof() {
                ApiError::invalid(format!("the request body is not valid JSON: {inner}")).code("invalid_json")
            } else if path == "." {
                ApiError::invalid(format!("the request body must be a JSON object: {inner}")).code("invalid_request")
            } else {
                ApiError::invalid(format!("invalid `{path}`: {inner}")).param(path).code("invalid_value")
            });
        }
    };
    de.end().map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")).code("invalid_json"))?;
    Ok(req)
}

/// Builds the conversation and the decoding settings, refusing what cannot be honoured.
pub fn prepare(mut req: ChatRequest, template: TemplateKind, limits: RequestLimits) -> ApiResult<Prepared> {
    check_unsupported(&req)?;
    if let Some(task) = &req.task {
        let task: Task = task.parse().map_err(|e: String| ApiError::invalid(e).param("task").code("invalid_value"))?;
        tag_last_question(&mut req.messages, task)?;
    }
    let (conv, images) = build_conversation(&req.messages, template, limits.max_images)?;
    let gen = generation_config(&req)?;

    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => None,
        Some(0) => {
            return Err(ApiError::invalid("max_tokens must be at least 1").param("max_tokens").code("invalid_value"))
        }
        Some(m) if m > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(format!(
                "max_tokens is {m}, above this server's limit of {}",
                limits.max_tokens
            ))
            .param("max_tokens")
            .code("invalid_value"))
        }
        Some(m) => Some(m as usize),
    };
    let include_usage = req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let stream = req.stream.unwrap_or(false);
    if req.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options is only allowed when stream is true")
            .param("stream_options")
            .code("invalid_value"));
    }
    Ok(Prepared { conv, images, gen, max_tokens, stream, include_usage })
}

/// Puts `task`'s identifier in front of the last user message's text (its first text part).
fn tag_last_question(messages: &mut [RawMessage], task: Task) -> ApiResult<()> {
    let Some((i, m)) = messages.iter_mut().enumerate().rev().find(|(_, m)| m.role == "user") else {
        return Err(ApiError::invalid("task needs a user message to apply to").param("task").code("invalid_value"));
    };
    let text = match &mut m.content {
        Value::String(s) => Some(s),
        Value::Array(parts) => parts
            .iter_mut()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .find_map(|p| match p.get_mut("text") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            }),
        _ => None,
    };
    match text {
        Some(s) => *s = task.ask(s),
        None => {
            return Err(ApiError::invalid(format!(
                "task needs text in messages[{i}] to put `{}` in front of",
                task.tag()
            ))
            .param(format!("messages[{i}].content"))
            .code("invalid_value"))
        }
    }
    Ok(())
}

fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).param(param).code("unsupported_parameter")
}

fn check_unsupported(req: &ChatRequest) -> ApiResult<()> {
    if let Some(n) = req.n {
        if n != 1 {
            return Err(unsupported("n", format!("n must be 1: this server returns one choice per request (got {n})")));
        }
    }
    for (name, v) in [("frequency_penalty", req.frequency_penalty), ("presence_penalty", req.presence_penalty)] {
        if let Some(v) = v {
            if v != 0.0 {
                return Err(unsupported(name, format!("{name} is not supported (got {v}); use repetition_penalty")));
            }
        }
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(unsupported("logprobs", "logprobs are not supported by this server"));
    }
    if req.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(unsupported("logit_bias", "logit_bias is not supported by this server"));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) || req.functions.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(unsupported("tools", "tools and function calling are not supported by this server"));
    }
    let none = |v: &Option<Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s == "none" || s == "auto",
        _ => false,
    };
    if !none(&req.tool_choice) {
        return Err(unsupported("tool_choice", "tools and function calling are not supported by this server"));
    }
    if !none(&req.function_call) {
        return Err(unsupported("function_call", "tools and function calling are not supported by this server"));
    }
    if let Some(f) = &req.response_format {
        if !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text") {
            return Err(unsupported(
                "response_format",
                "response_format other than {\"type\": \"text\"} is not supported by this server",
            ));
        }
    }
    Ok(())
}

fn generation_config(req: &ChatRequest) -> ApiResult<GenerationConfig> {
    let bad = |param: &str, msg: String| ApiError::invalid(msg).param(param).code("invalid_value");
    let mut cfg = GenerationConfig::default();
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad("temperature", format!("temperature must be between 0 and 2 (0 = greedy), got {t}")));
        }
        cfg.temperature = t;
    }
    if let Some(p) = req.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(bad("top_p", format!("top_p must be between 0 and 1, got {p}")));
        }
        if p == 0.0 {
            // OpenAI accepts 0: only the most likely token survives, i.e. greedy decoding.
            cfg.temperature = 0.0;
            cfg.top_p = 1.0;
        } else {
            cfg.top_p = p;
        }
    }
    if let Some(k) = req.top_k {
        cfg.top_k = usize::try_from(k).map_err(|_| bad("top_k", format!("top_k is too large: {k}")))?;
    }
    if let Some(r) = req.repetition_penalty {
        if !(r.is_finite() && r > 0.0 && r <= 10.0) {
            return Err(bad("repetition_penalty", format!("repetition_penalty must be in (0, 10] (1 = off), got {r}")));
        }
        cfg.repetition_penalty = r as f32;
    }
    if let Some(b) = req.num_beams {
        if !(1..=MAX_BEAMS as u64).contains(&b) {
            return Err(bad("num_beams", format!("num_beams must be between 1 and {MAX_BEAMS}, got {b}")));
        }
        cfg.num_beams = b as usize;
    }
    cfg.seed = req.seed.map(|s| s as u64);
    let stops: Vec<String> = match &req.stop {
        None => vec![],
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOPS {
        return Err(bad("stop", format!("at most {MAX_STOPS} stop sequences are allowed, got {}", stops.len())));
    }
    if stops.iter().any(String::is_empty) {
        return Err(bad("stop", "stop sequences must not be empty".into()));
    }
    cfg.stop_strings = stops;
    Ok(cfg)
}

/// The conversation in the model's template. A system (or developer) message replaces the
/// template's system text. Each user message's images come first, in order, then its text
/// (text parts joined by a line break), as in the MiniGPT-4 demo where the image is uploaded
/// before the question.
fn build_conversation(
    messages: &[RawMessage],
    template: TemplateKind,
    max_images: usize,
) -> ApiResult<(Conversation, Vec<ImageInput>)> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must hold at least one message")
            .param("messages")
            .code("invalid_value"));
    }
    let mut conv = Conversation::new(template);
    let mut system: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        match m.role.as_str() {
            "system" | "developer" => {
                let parts = parse_content(&m.content, &at, false)?;
                system.push(join_text(&parts));
            }
            "user" => {
                let parts = parse_content(&m.content, &at, true)?;
                let text = join_text(&parts);
                let n_images = parts.iter().filter(|p| matches!(p, Part::Image(..))).count();
                if text.trim().is_empty() && n_images == 0 {
                    return Err(ApiError::invalid(format!("{at} has no content: send text, an image or both"))
                        .param(format!("{at}.content"))
                        .code("invalid_value"));
                }
                for p in parts {
                    if let Part::Image(bytes, param) = p {
                        if images.len() == max_images {
                            return Err(ApiError::invalid(format!(
                                "too many images: this server takes at most {max_images} per request"
                            ))
                            .param(param)
                            .code("too_many_images"));
                        }
                        conv.add_image();
                        images.push(ImageInput { bytes, param });
                    }
                }
                if !text.trim().is_empty() {
                    conv.ask(text.trim());
                }
            }
            "assistant" => {
                let has = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
                if has(&m.tool_calls) || has(&m.function_call) {
                    return Err(unsupported(
                        &format!("{at}.tool_calls"),
                        "tool calls are not supported by this server",
                    ));
                }
                let parts = parse_content(&m.content, &at, false)?;
                conv.answer(join_text(&parts).trim());
            }
            "tool" | "function" => {
                return Err(ApiError::invalid(format!(
                    "{at}.role `{}` is not supported: this server has no tools",
                    m.role
                ))
                .param(format!("{at}.role"))
                .code("unsupported_parameter"))
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "{at}.role `{}` is unknown; expected system, developer, user or assistant",
                    truncate(other, 40)
                ))
                .param(format!("{at}.role"))
                .code("invalid_value"))
            }
        }
        let _ = &m.name;
    }
    if !system.is_empty() {
        conv.system = system.join("\n");
    }
    match messages.last().map(|m| m.role.as_str()) {
        Some("user") => {}
        Some(role) => {
            return Err(ApiError::invalid(format!(
                "the last message must be the user's (role `user`), got role `{role}`"
            ))
            .param(format!("messages[{}].role", messages.len() - 1))
            .code("invalid_value"))
        }
        None => unreachable!("checked non-empty above"),
    }
    Ok((conv, images))
}

enum Part {
    Text(String),
    Image(Vec<u8>, String),
}

fn join_text(parts: &[Part]) -> String {
    let texts: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            Part::Image(..) => None,
        })
        .collect();
    texts.join("\n")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn checked_text(s: &str, param: &str) -> ApiResult<String> {
    if s.contains(IMAGE_PLACEHOLDER) {
        return Err(ApiError::invalid(format!(
            "{param} contains `{IMAGE_PLACEHOLDER}`, which stands for an image in the prompt; send images as image_url parts"
        ))
        .param(param)
        .code("invalid_value"));
    }
    Ok(s.to_string())
}

/// A message's content: a string or an array of `text` / `image_url` parts.
fn parse_content(content: &Value, at: &str, images_allowed: bool) -> ApiResult<Vec<Part>> {
    let param = format!("{at}.content");
    let bad = |param: String, msg: String| ApiError::invalid(msg).param(param).code("invalid_value");
    match content {
        Value::String(s) => Ok(vec![Part::Text(checked_text(s, &param)?)]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(bad(param.clone(), format!("{param} is an empty array")));
            }
            let mut parts = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                let p = format!("{param}[{j}]");
                let ty = item.get("type").and_then(Value::as_str).ok_or_else(|| {
                    bad(p.clone(), format!("{p} must be an object with a string `type` (text or image_url)"))
                })?;
                match ty {
                    "text" => {
                        let t = item
                            .get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad(format!("{p}.text"), format!("{p}.text must be a string")))?;
                        parts.push(Part::Text(checked_text(t, &format!("{p}.text"))?));
                    }
                    "image_url" if images_allowed => {
                        let url = match item.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(Value::Object(o)) => o.get("url").and_then(Value::as_str).ok_or_else(|| {
                                bad(format!("{p}.image_url.url"), format!("{p}.image_url.url must be a string"))
                            })?,
                            _ => {
                                return Err(bad(
                                    format!("{p}.image_url"),
                                    format!("{p}.image_url must be an object {{\"url\": \"data:image/png;base64,…\"}}"),
                                ))
                            }
                        };
                        let bytes = decode_image_url(url, &format!("{p}.image_url.url"))?;
                        parts.push(Part::Image(bytes, p));
                    }
                    "image_url" => {
                        return Err(bad(p.clone(), format!("{p}: only user messages may hold images")));
                    }
                    other => {
                        return Err(ApiError::invalid(format!(
                            "{p}: content part type `{}` is not supported (expected text or image_url)",
                            truncate(other, 40)
                        ))
                        .param(format!("{p}.type"))
                        .code("unsupported_parameter"))
                    }
                }
            }
            Ok(parts)
        }
        other => Err(bad(
            param.clone(),
            format!("{param} must be a string or an array of content parts, got {}", kind_of(other)),
        )),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The bytes of a `data:image/…;base64,…` URL. Remote URLs are refused: this server fetches
/// nothing.
pub fn decode_image_url(url: &str, param: &str) -> ApiResult<Vec<u8>> {
    let bad = |code: &'static str, msg: String| ApiError::invalid(msg).param(param).code(code);
    let lower: String = url.chars().take(8).collect::<String>().to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(bad(
            "remote_image_not_supported",
            format!(
                "remote image URLs are not fetched by this server ({}); send the image inline as a data URL (data:image/jpeg;base64,…)",
                truncate(url, 80)
            ),
        ));
    }
    let Some(rest) = url.get(..5).filter(|s| s.eq_ignore_ascii_case("data:")).map(|_| &url[5..]) else {
        return Err(bad(
            "invalid_image_url",
            format!("{param} must be a data URL (data:image/png;base64,…), got `{}`", truncate(url, 40)),
        ));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(bad("invalid_image_url", format!("{param} is a malformed data URL: no comma before the data")));
    };
    let mut fields = meta.split(';');
    let mime = fields.next().unwrap_or("").trim().to_ascii_lowercase();
    if !fields.any(|f| f.trim().eq_ignore_ascii_case("base64")) {
        return Err(bad("invalid_image_url", format!("{param} must be base64-encoded (data:image/png;base64,…)")));
    }
    if !(mime.is_empty() || mime.starts_with("image/") || mime == "application/octet-stream") {
        return Err(bad(
            "invalid_image_url",
            format!("{param} has media type `{}`, not an image", truncate(&mime, 40)),
        ));
    }
    let cleaned;
    let data = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        cleaned = data.chars().filter(|c| !c.is_ascii_whitespace()).collect::<String>();
        cleaned.as_str()
    } else {
        data
    };
    let bytes =
        BASE64.decode(data).map_err(|e| bad("invalid_image_url", format!("{param} holds invalid base64: {e}")))?;
    if bytes.is_empty() {
        return Err(bad("invalid_image", format!("{param} holds an empty image")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(decode_image_url("data:image/png;base64,AAEC", "p").unwrap(), vec![0, 1, 2]);
        assert_eq!(decode_image_url("DATA:image/png;base64,AAE", "p").unwrap(), vec![0, 1]);
        assert_eq!(decode_image_url("data:;base64,AA\nEC", "p").unwrap(), vec![0, 1, 2]);
        for bad in [
            "https://example.com/cat.jpg",
            "HTTP://x",
            "file:///etc/passwd",
            "data:image/png,abc",
            "data:text/plain;base64,AAEC",
            "data:image/png;base64",
            "data:image/png;base64,***",
            "data:image/png;base64,",
            "",
            "dat",
            "dataé:",
        ] {
            let e = decode_image_url(bad, "p").unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
    }

    #[test]
    fn images_come_before_the_question() {
        let body = br#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":[
            {"type":"text","text":"What is it?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAEC"}}]},
            {"role":"assistant","content":"A cat."},{"role":"user","content":"Sure?"}]}"#;
        let p = prepare(
            parse_request(body).unwrap(),
            TemplateKind::VicunaV0,
            RequestLimits { max_images: 4, max_tokens: 100 },
        )
        .unwrap();
        assert_eq!(p.images.len(), 1);
        assert_eq!(p.images[0].param, "messages[1].content[1]");
        assert_eq!(
            p.conv.prompt(),
            "S###Human: <Img><ImageHere></Img> What is it?###Assistant: A cat.###Human: Sure?###Assistant: "
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_request(br#"{"messages":[],"temperature":"hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse_request(br#"{"messages":[{"role":5}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse_request(br#"{"messages":[]} x"#).unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
        let e = parse_request(br#"{"messages":[], "bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
    }
}
