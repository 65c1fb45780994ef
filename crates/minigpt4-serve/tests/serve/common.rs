//! A real server on 127.0.0.1 (port 0) around the tiny random-weight fixture model, and a small
//! raw HTTP/1.1 client (so the tests can send malformed bytes, read server-sent events as they
//! come and hang up mid-stream).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use candle_core::Device;
use minigpt4_core::generate::{generate, FinishReason, GenerationConfig};
use minigpt4_core::model_file::ModelSpec;
use minigpt4_core::pipeline::Pipeline;
use minigpt4_core::template::Conversation;
use minigpt4_serve::{AppState, ServeConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every request of the tests must answer within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub fn core_fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures").join(rel)
}

/// The tiny Q-Former MiniGPT-4 (random weights, gibberish answers, real tokens), loaded once.
pub fn pipeline() -> Arc<Pipeline> {
    static P: OnceLock<Arc<Pipeline>> = OnceLock::new();
    P.get_or_init(|| {
        let spec = ModelSpec::from_file(&core_fixture("minigpt4/qformer/model.toml")).expect("fixture model file");
        Arc::new(Pipeline::load(&spec, &Device::Cpu).expect("loading the fixture model"))
    })
    .clone()
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(core_fixture(&format!("images/{name}"))).unwrap()
}

pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn cat_url() -> String {
    data_url("image/jpeg", &image_bytes("cat.jpg"))
}

/// A user message with an image and a question.
pub fn image_question(url: &str, question: &str) -> Value {
    json!({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": question},
    ]})
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

pub fn config() -> ServeConfig {
    ServeConfig::new("fixture-qformer")
}

pub async fn start(config: ServeConfig) -> Server {
    let state = AppState::new(pipeline(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(minigpt4_serve::serve(listener, Arc::clone(&state), async move {
        let _ = rx.await;
    }));
    Server { addr, state, stop: Some(tx), handle }
}

impl Server {
    /// Begins graceful shutdown.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) {
        self.begin_stop();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the server did not shut down within 30 s")
            .unwrap()
            .unwrap();
    }

    pub async fn wait_stopped(self, within: Duration) -> std::io::Result<()> {
        tokio::time::timeout(within, self.handle).await.expect("the server did not stop in time").unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        request(self.addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"").await
    }

    pub async fn chat(&self, body: &Value) -> Resp {
        self.post("/v1/chat/completions", body).await
    }

    /// Polls /health until no generation runs and nothing waits.
    pub async fn wait_idle(&self, within: Duration) -> Duration {
        let t = std::time::Instant::now();
        loop {
            if self.state.busy() == 0 && self.state.queued() == 0 {
                return t.elapsed();
            }
            assert!(t.elapsed() < within, "the server still had work after {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the OpenAI error shape and returns the `error` object.
    pub fn openai_error(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: status; body {}", self.text());
        assert!(
            self.header("content-type").is_some_and(|c| c.starts_with("application/json")),
            "{what}: content type {:?}",
            self.header("content-type")
        );
        let v = self.json();
        let e = v.get("error").unwrap_or_else(|| panic!("{what}: no `error` in {v}"));
        let msg = e["message"].as_str().unwrap_or_else(|| panic!("{what}: no error.message in {v}"));
        assert!(!msg.is_empty(), "{what}: empty message");
        assert!(e["type"].is_string(), "{what}: error.type in {v}");
        for k in ["param", "code"] {
            assert!(e.get(k).is_some_and(|p| p.is_null() || p.is_string()), "{what}: error.{k} in {v}");
        }
        e.clone()
    }

    /// The `data:` payloads of a complete SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        parse_sse(&self.text())
    }
}

pub fn parse_sse(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

fn head(method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" || len > 0 {
        h.push_str(&format!("Content-Length: {len}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// One request on a fresh connection; the body is written while the answer is read (a server
/// may answer before reading all of an oversized body).
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut raw = head(method, path, headers, body.len()).into_bytes();
    raw.extend_from_slice(body);
    request_raw(addr, raw).await
}

pub async fn request_raw(addr: SocketAddr, raw: Vec<u8>) -> Resp {
    tokio::time::timeout(REQUEST_TIMEOUT, async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&raw).await;
            let _ = wr.flush().await;
            wr
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A reset after the answer (the server did not read all of the body) ends it.
                Err(_) if !buf.is_empty() => break,
                Err(e) => panic!("reading the response: {e}"),
            }
        }
        drop(writer.await);
        parse_response(&buf)
    })
    .await
    .expect("request timed out")
}

/// Status, headers and the length of the head of an HTTP response.
type Head = (u16, Vec<(String, String)>, usize);

fn split_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    Some((status, headers, end + 4))
}

fn parse_response(buf: &[u8]) -> Resp {
    let (status, headers, start) =
        split_head(buf).unwrap_or_else(|| panic!("no HTTP response head in {:?}", String::from_utf8_lossy(buf)));
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut d = Dechunker::default();
        d.feed(&buf[start..]);
        d.out
    } else {
        buf[start..].to_vec()
    };
    Resp { status, headers, body }
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Default)]
pub struct Dechunker {
    raw: Vec<u8>,
    pub out: Vec<u8>,
    pub done: bool,
}

impl Dechunker {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let line = String::from_utf8_lossy(&self.raw[..eol]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                self.done = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.out.extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }
}

/// A streaming response read event by event.
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    rd: OwnedReadHalf,
    _wr: tokio::net::tcp::OwnedWriteHalf,
    chunks: Dechunker,
    consumed: usize,
}

impl EventStream {
    pub async fn open(addr: SocketAddr, body: &Value) -> EventStream {
        let body = body.to_string();
        let raw = head("POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.len()) + &body;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        let (status, headers, start) = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                if let Some(h) = split_head(&buf) {
                    return h;
                }
                let n = rd.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the response head");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("no response head in time");
        let mut chunks = Dechunker::default();
        chunks.feed(&buf[start..]);
        EventStream { status, headers, rd, _wr: wr, chunks, consumed: 0 }
    }

    /// The next `data:` payload, or `None` at the end of the response.
    pub async fn next(&mut self) -> Option<String> {
        let mut chunk = [0u8; 16384];
        loop {
            let text = &self.chunks.out[self.consumed..];
            if let Some(pos) = text.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&text[..pos]).to_string();
                self.consumed += pos + 2;
                if let Some(d) = parse_sse(&format!("{block}\n\n")).into_iter().next() {
                    return Some(d);
                }
                continue;
            }
            if self.chunks.done {
                return None;
            }
            let n = tokio::time::timeout(REQUEST_TIMEOUT, self.rd.read(&mut chunk))
                .await
                .expect("no event in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.chunks.feed(&chunk[..n]);
        }
    }
}

/// A seed with which the fixture model, asked `question` (text only) at the server's default
/// settings, writes at least `tokens` tokens without stopping: slow requests for the queue and
/// cancellation tests.
pub fn long_running_seed(question: &str, tokens: usize) -> u64 {
    let p = pipeline();
    let mut conv = Conversation::new(p.template);
    conv.ask(question);
    let embeds = p.prompt_embeds(&conv, &[]).unwrap();
    for seed in 0..200u64 {
        let cfg =
            p.with_stops(GenerationConfig { max_new_tokens: tokens, seed: Some(seed), ..GenerationConfig::default() });
        let g = generate(&p.model.llm, &embeds, &cfg, &|ids| p.tokenizer.decode(ids, true), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        if g.finish_reason == FinishReason::Length {
            return seed;
        }
    }
    panic!("no seed in 0..200 makes the fixture model write {tokens} tokens");
}
