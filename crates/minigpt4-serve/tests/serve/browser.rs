//! The chat page in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core):
//! upload an image, ask, watch the answer stream in, screenshot, reset. The screenshot is left at
//! `<target>/tmp/minigpt4-serve-browser/chat.png`.
//!
//! Needs chromium, node and `npm ci` in tests/browser; when they are missing the test runs
//! `scripts/install-browser-test-deps.sh` (set MINIGPT4_NO_BROWSER_INSTALL=1 to not), and is
//! skipped with a loud message only if that cannot install them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn missing() -> Vec<String> {
    let mut m = vec![];
    if !chromium().exists() {
        m.push(format!("chromium ({})", chromium().display()));
    }
    if !Command::new("node").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        m.push("node".into());
    }
    if !browser_dir().join("node_modules/playwright-core/package.json").exists() {
        m.push("playwright-core (npm ci in tests/browser)".into());
    }
    m
}

/// Runs `tests/browser/<script>` with `args` under node (killed after 3 minutes), and returns the
/// JSON report it prints last; fails the test when the script fails.
fn run_node(script: &str, args: &[String]) -> serde_json::Value {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .env("CHROMIUM", chromium())
        .current_dir(browser_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting node");
    let limit = Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser script {script} ran over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("browser script {script} ({:.1?}): {stdout}{stderr}", started.elapsed());
    assert!(status.success(), "the browser script {script} failed: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Installs what the browser tests need when it is missing (see the module docs), or fails
/// saying what is missing.
fn require_browser() {
    if !missing().is_empty() && std::env::var_os("MINIGPT4_NO_BROWSER_INSTALL").is_none() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-browser-test-deps.sh");
        eprintln!("browser test: missing {:?}; running {}", missing(), script.display());
        let status = Command::new("bash").arg(&script).status();
        eprintln!("browser test: install script ended with {status:?}");
    }
    let missing = missing();
    assert!(
        missing.is_empty(),
        "cannot run the browser test: missing {}; run scripts/install-browser-test-deps.sh (apt-get chromium + npm ci), \
         or skip it knowingly with `cargo test -- --skip chat_page_in_headless_chromium`",
        missing.join(", ")
    );
}

#[test]
fn chat_page_in_headless_chromium() {
    require_browser();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(async {
        let mut cfg = config();
        // Slow enough that the page visibly receives the answer piece by piece.
        cfg.throttle = Some(Duration::from_millis(30));
        start(cfg).await
    });
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("minigpt4-serve-browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("chat.png");
    let _ = std::fs::remove_file(&shot);
    let image = core_fixture("images/cat.jpg");

    let report = run_node(
        "chat.mjs",
        &[format!("http://{}/", server.addr), image.display().to_string(), shot.display().to_string()],
    );
    assert_eq!(report["ok"], true);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot {} has {size} bytes", shot.display());
    eprintln!("screenshot: {}", shot.display());
    rt.block_on(server.stop());
}

#[test]
fn grounded_answer_boxes_drawn_over_the_image() {
    require_browser();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(start(config()));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("minigpt4-serve-browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("boxes.png");
    let _ = std::fs::remove_file(&shot);
    let image = core_fixture("images/cat.jpg");
    let decoded = minigpt4_core::image::load_rgb_file(&image, &Default::default()).unwrap();
    let args = [
        format!("http://{}/", server.addr),
        image.display().to_string(),
        decoded.width().to_string(),
        decoded.height().to_string(),
        shot.display().to_string(),
    ];
    let report = run_node("boxes.mjs", &args);
    assert_eq!(report["ok"], true);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 5_000, "screenshot {} has {size} bytes", shot.display());
    eprintln!("screenshot: {}", shot.display());
    rt.block_on(server.stop());
}
