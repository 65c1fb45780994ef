//! `minigpt4 serve` (the release binary, in its own process so its memory can be read from
//! /proc) against the clients that used to hurt it: a 20 MB text body, a huge or expect-continue
//! `Content-Length`, a thousand connections that stall mid-headers, a body that stalls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../minigpt4-core/tests/fixtures/minigpt4/qformer/model.toml")
        .display()
        .to_string()
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let home = std::env::temp_dir().join(format!("minigpt4-hostile-server-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minigpt4"))
        .args(["serve", "--model", &model(), "--port", "0"])
        .args(extra)
        .env("MINIGPT4_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before serving").unwrap();
        if let Some(rest) = line.split("on http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// (current, peak) resident set of `pid` in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sends `head` and `body`, then reads the whole answer (the server closes or answers).
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
}

fn health(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let a = exchange(addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"");
    assert_eq!(status_of(&a), 200, "{a}");
    t.elapsed()
}

#[test]
fn a_20_mb_text_body_is_refused_in_milliseconds_with_flat_memory() {
    let server = start(&[]);
    let pid = server.child.id();
    health(server.addr);
    let (before, _) = rss_mb(pid);
    // Inside the default 20 MiB body limit, far beyond any context.
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(4_180_000));
    assert!(body.len() > 20_900_000 && body.len() < 20 * 1024 * 1024, "{}", body.len());
    let t = Instant::now();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let a = exchange(server.addr, &head, body.as_bytes());
    let took = t.elapsed();
    assert_eq!(status_of(&a), 400, "{a}");
    assert!(a.contains("context_length_exceeded"), "{a}");
    let (after, peak) = rss_mb(pid);
    eprintln!("20.9 MB text: answered in {took:?}; RSS {before:.0} MB before, {after:.0} MB after, peak {peak:.0} MB");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(peak - before < 100.0, "RSS grew from {before:.0} MB to a peak of {peak:.0} MB");
    assert!(after - before < 100.0, "RSS stayed at {after:.0} MB (from {before:.0} MB)");
}

#[test]
fn a_body_too_large_is_refused_before_it_is_sent() {
    let server = start(&[]);
    for len in ["9223372036854775808", "31457280"] {
        // With `Expect: 100-continue` a client waits for "100 Continue" before uploading: it
        // must get the 413 instead, without sending a byte of the body.
        let t = Instant::now();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
        );
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("an answer without the body");
        let a = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(status_of(&a), 413, "Content-Length {len}: {a}");
        assert!(!a.contains("100 Continue"), "{a}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    health(server.addr);
}

#[test]
fn stalled_connections_are_closed_by_the_timeouts_while_health_stays_fast() {
    let server = start(&["--header-timeout", "2", "--body-timeout", "2"]);
    let pid = server.child.id();
    let (before, _) = rss_mb(pid);
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl").unwrap();
            s
        })
        .collect();
    // A body that stops half-way gets 408 once the body deadline passes.
    let slow_body = std::thread::spawn({
        let addr = server.addr;
        move || {
            exchange(addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n", b"{\"messages\":")
        }
    });
    for _ in 0..5 {
        let t = health(server.addr);
        assert!(t < Duration::from_millis(500), "/health took {t:?} with 1,000 stalled connections");
    }
    let (during, _) = rss_mb(pid);
    // Every stalled connection is closed by the server: reading it ends (EOF or reset).
    let mut closed = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        closed += 1;
    }
    let took = opened.elapsed();
    assert_eq!(closed, 1000);
    assert!(took < Duration::from_secs(8), "closing 1,000 stalled connections took {took:?}");
    let a = slow_body.join().unwrap();
    assert_eq!(status_of(&a), 408, "{a}");
    let (after, _) = rss_mb(pid);
    eprintln!("1,000 stalled connections closed within {took:?}; RSS {before:.0} → {during:.0} → {after:.0} MB");
    assert!(health(server.addr) < Duration::from_millis(500));
}
