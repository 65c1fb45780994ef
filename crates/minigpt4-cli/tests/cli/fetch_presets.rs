//! `minigpt4 fetch PRESET` against a loopback HTTP server that plays both LAVIS's file host and
//! the Hugging Face Hub (the endpoints hf-hub calls: `/{repo}/resolve/{rev}/{file}` with the
//! etag / x-repo-commit / Content-Range headers, and `/api/models/{repo}/revision/{rev}`).
//! No other network.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const LLAMA2: &str = "meta-llama/Llama-2-7b-chat-hf";
const DELTA7B: &str = "lmsys/vicuna-7b-delta-v0";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    auth: Option<String>,
    status: u16,
}

#[derive(Default)]
struct State {
    /// URL path → body.
    files: HashMap<String, Vec<u8>>,
    /// Paths whose first download (any GET but the `bytes=0-0` probe) is cut after half the body.
    cut_once: HashSet<String>,
    /// Every request but LAVIS ones needs `Authorization: Bearer <this>`.
    hub_token: Option<String>,
    seen: Vec<Seen>,
}

struct Server {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start(state: State) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Self { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests for paths ending with `suffix`.
    fn seen_for(&self, suffix: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path.ends_with(suffix)).collect()
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    let mut st = state.lock().unwrap();
    let is_hub = !path.starts_with("/lavis/");
    let mut respond = |status: u16, extra: Vec<(String, String)>, body: &[u8], cut: bool, st: &mut State| {
        st.seen.push(Seen { path: path.clone(), range: range.clone(), auth: auth.clone(), status });
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            401 => "Unauthorized",
            404 => "Not Found",
            416 => "Range Not Satisfiable",
            _ => "Other",
        };
        let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        if cut {
            conn.write_all(&body[..body.len() / 2])?;
            conn.flush()?;
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        conn.write_all(body)?;
        conn.flush()
    };
    if is_hub {
        if let Some(tok) = st.hub_token.clone() {
            if auth.as_deref() != Some(&format!("Bearer {tok}")) {
                return respond(
                    401,
                    vec![("X-Error-Code".into(), "GatedRepo".into())],
                    b"Access restricted",
                    false,
                    &mut st,
                );
            }
        }
    }
    if path.starts_with("/api/models/") {
        // /api/models/{org}/{name}/revision/{rev}
        let repo = path.trim_start_matches("/api/models/").split("/revision/").next().unwrap_or("").to_string();
        let prefix = format!("/{repo}/resolve/main/");
        let siblings: Vec<serde_json::Value> = st
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|f| serde_json::json!({ "rfilename": f }))
            .chain([serde_json::json!({ "rfilename": ".gitattributes" })])
            .collect();
        if siblings.len() == 1 {
            return respond(404, vec![], b"Repository not found", false, &mut st);
        }
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(200, vec![], body.as_bytes(), false, &mut st);
    }
    let Some(body) = st.files.get(&path).cloned() else {
        return respond(404, vec![], b"not found", false, &mut st);
    };
    let mut extra = Vec::new();
    if is_hub {
        // The Hub's etag is the sha256 for LFS files (the weights), the git blob id otherwise.
        let sha = hex(&Sha256::digest(&body));
        let etag = if path.ends_with(".safetensors") { sha } else { sha[..40].to_string() };
        extra.push(("ETag".to_string(), format!("\"{etag}\"")));
        extra.push(("X-Repo-Commit".to_string(), COMMIT.to_string()));
    }
    let probe = range.as_deref() == Some("bytes=0-0");
    let cut = !probe && st.cut_once.remove(&path);
    match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() { body.len() - 1 } else { b.parse().unwrap() };
            if a >= body.len() {
                extra.push(("Content-Range".into(), format!("bytes */{}", body.len())));
                return respond(416, extra, b"", false, &mut st);
            }
            extra.push(("Content-Range".into(), format!("bytes {a}-{b}/{}", body.len())));
            respond(206, extra, &body[a..=b], cut, &mut st)
        }
        None => respond(200, extra, &body, cut, &mut st),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

/// A safetensors file of random f32 tensors.
fn random_safetensors(seed: u64, names: &[&str], rows: usize) -> Vec<u8> {
    let cols = 64;
    let data: Vec<Vec<u8>> =
        names.iter().enumerate().map(|(i, _)| random_bytes(seed * 100 + i as u64, rows * cols * 4)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| {
            (n.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, cols], d).unwrap())
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The served files: the two LAVIS checkpoints, a tiny Llama-2 in the Hub layout (two shards),
/// and a tiny Vicuna delta repository.
fn published() -> State {
    let mut files = HashMap::new();
    files.insert("/lavis/eva_vit_g.pth".to_string(), random_bytes(1, 300_000));
    files.insert("/lavis/blip2_pretrained_flant5xxl.pth".to_string(), random_bytes(2, 200_000));
    let hub = |repo: &str, f: &str| format!("/{repo}/resolve/main/{f}");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_hidden_layers": 1, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-5, "vocab_size": 300, "max_position_embeddings": 128
    })
    .to_string();
    let shard1 = random_safetensors(3, &["model.embed_tokens.weight", "model.norm.weight"], 400);
    let shard2 = random_safetensors(4, &["lm_head.weight"], 600);
    let index = serde_json::json!({
        "metadata": { "total_size": shard1.len() + shard2.len() },
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors"
        }
    })
    .to_string();
    for (f, body) in [
        ("config.json", config.clone().into_bytes()),
        ("generation_config.json", br#"{"bos_token_id": 1, "eos_token_id": 2}"#.to_vec()),
        ("tokenizer.json", br#"{"version": "1.0", "model": {"type": "BPE"}}"#.to_vec()),
        ("tokenizer_config.json", br#"{"add_bos_token": true}"#.to_vec()),
        ("model.safetensors.index.json", index.into_bytes()),
        ("model-00001-of-00002.safetensors", shard1),
        ("model-00002-of-00002.safetensors", shard2),
        // Not asked for: the preset needs the safetensors only.
        ("pytorch_model-00001-of-00002.bin", b"not wanted".to_vec()),
    ] {
        files.insert(hub(LLAMA2, f), body);
    }
    for (f, body) in [
        ("config.json", config.into_bytes()),
        ("pytorch_model.bin", random_bytes(5, 150_000)),
        ("tokenizer.model", random_bytes(6, 5_000)),
        ("special_tokens_map.json", b"{}".to_vec()),
    ] {
        files.insert(hub(DELTA7B, f), body);
    }
    State { files, ..Default::default() }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minigpt4-cli-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fetch(server: &Server, home: &Path, preset: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_minigpt4"));
    cmd.args(["fetch", preset])
        .env("MINIGPT4_HOME", home)
        .env("HF_HOME", home.join("hf-home"))
        .env("HF_ENDPOINT", &server.url)
        .env("MINIGPT4_LAVIS_ENDPOINT", format!("{}/lavis", server.url))
        .env_remove("HF_TOKEN")
        .env_remove("MINIGPT4_FETCH_SHA256")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn served(server: &Server, path: &str) -> Vec<u8> {
    server.state.lock().unwrap().files[path].clone()
}

/// Files (relative paths) under `dir`, recursively, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

const LLAMA2_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

#[test]
fn fetch_llama2_preset_puts_every_file_where_the_preset_loads_it() {
    let server = Server::start(published());
    let home = tmpdir("llama2");
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let dir = home.join("models/minigpt4-llama2-7b");
    let mut expected: Vec<String> = LLAMA2_FILES.iter().map(|f| format!("Llama-2-7b-chat-hf/{f}")).collect();
    expected.extend([".lock".to_string(), "eva_vit_g.pth".to_string()]);
    expected.sort();
    assert_eq!(tree(&dir), expected, "only the preset's files, no .part, no hf cache left\n{err}");
    assert_eq!(std::fs::read(dir.join("eva_vit_g.pth")).unwrap(), served(&server, "/lavis/eva_vit_g.pth"));
    for f in LLAMA2_FILES {
        let got = std::fs::read(dir.join("Llama-2-7b-chat-hf").join(f)).unwrap();
        assert_eq!(got, served(&server, &format!("/{LLAMA2}/resolve/main/{f}")), "{f}");
    }
    // What is left: the projection, from the Google Drive link, to this exact path.
    let proj = dir.join("pretrained_minigpt4_llama2_7b.pth");
    assert!(err.contains(&proj.display().to_string()) && err.contains("drive.google.com"), "{err}");
    assert!(!err.contains("convert"), "no delta for Llama-2\n{err}");
    assert!(server.seen_for("blip2_pretrained_flant5xxl.pth").is_empty(), "the Llama-2 preset has no Q-Former");

    // Again: everything is there, nothing is asked of the network.
    let before = server.seen().len();
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.seen().len(), before, "complete files are skipped without a request");
    assert!(text(&out.stderr).contains("0 fetched, 8 already there"), "{}", text(&out.stderr));
}

#[test]
fn fetch_vicuna_preset_fetches_the_delta_and_says_how_to_apply_it() {
    let server = Server::start(published());
    let home = tmpdir("vicuna");
    let out = fetch(&server, &home, "minigpt4-vicuna-7b", &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let dir = home.join("models/minigpt4-vicuna-7b");
    assert_eq!(
        tree(&dir),
        [
            ".lock",
            "blip2_pretrained_flant5xxl.pth",
            "eva_vit_g.pth",
            "vicuna-7b-delta-v0/config.json",
            "vicuna-7b-delta-v0/pytorch_model.bin",
            "vicuna-7b-delta-v0/special_tokens_map.json",
            "vicuna-7b-delta-v0/tokenizer.model",
        ],
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("blip2_pretrained_flant5xxl.pth")).unwrap(),
        served(&server, "/lavis/blip2_pretrained_flant5xxl.pth")
    );
    assert_eq!(
        std::fs::read(dir.join("vicuna-7b-delta-v0/pytorch_model.bin")).unwrap(),
        served(&server, &format!("/{DELTA7B}/resolve/main/pytorch_model.bin"))
    );
    let convert = format!(
        "minigpt4 convert --base LLAMA_DIR --delta {} --out {}",
        dir.join("vicuna-7b-delta-v0").display(),
        dir.join("vicuna-7b").display()
    );
    assert!(err.contains(&convert), "{err}");
    assert!(err.contains(&dir.join("pretrained_minigpt4_7b.pth").display().to_string()), "{err}");
}

#[test]
fn a_cut_download_resumes_with_a_range_request_on_the_next_run() {
    let mut state = published();
    let shard = format!("/{LLAMA2}/resolve/main/model-00002-of-00002.safetensors");
    state.cut_once.insert("/lavis/eva_vit_g.pth".to_string());
    state.cut_once.insert(shard.clone());
    let server = Server::start(state);
    let home = tmpdir("resume");
    let dir = home.join("models/minigpt4-llama2-7b");

    // 1. EVA is cut halfway: the run fails, the half is kept as .part, no eva_vit_g.pth.
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("run the fetch again to resume"), "{err}");
    assert!(!dir.join("eva_vit_g.pth").exists());
    let kept = std::fs::metadata(dir.join("eva_vit_g.pth.part")).unwrap().len();
    assert_eq!(kept, 150_000, "the bytes received before the cut");

    // 2. EVA resumes from there; then the second shard is cut (inside hf-hub's download).
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let eva = server.seen_for("eva_vit_g.pth");
    assert_eq!(eva.len(), 2, "{eva:?}");
    assert_eq!(eva[0].range, None);
    assert_eq!(eva[1].range.as_deref(), Some("bytes=150000-"), "{eva:?}");
    assert_eq!(eva[1].status, 206);
    assert_eq!(std::fs::read(dir.join("eva_vit_g.pth")).unwrap(), served(&server, "/lavis/eva_vit_g.pth"));
    assert!(!dir.join("eva_vit_g.pth.part").exists());
    assert!(!dir.join("Llama-2-7b-chat-hf/model-00002-of-00002.safetensors").exists());

    // 3. The shard resumes too, byte-identical in the end.
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = served(&server, &shard);
    let downloads: Vec<Seen> = server
        .seen_for("model-00002-of-00002.safetensors")
        .into_iter()
        .filter(|s| s.range.as_deref() != Some("bytes=0-0"))
        .collect();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(downloads[0].range.as_deref(), Some("bytes=0-"));
    assert_eq!(downloads[1].range.as_deref(), Some(format!("bytes={}-", body.len() / 2).as_str()), "{downloads:?}");
    assert_eq!(std::fs::read(dir.join("Llama-2-7b-chat-hf/model-00002-of-00002.safetensors")).unwrap(), body);
    assert!(!dir.join(".hf-cache").exists());
}

#[test]
fn a_wrong_sha256_is_refused_and_the_download_removed() {
    let server = Server::start(published());
    let home = tmpdir("sha");
    let dir = home.join("models/minigpt4-llama2-7b");
    let zeros = "0".repeat(64);

    // A LAVIS file with a pinned sum it does not have.
    let pin = format!("eva_vit_g.pth={zeros}");
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[("MINIGPT4_FETCH_SHA256", &pin)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sha256 mismatch") && err.contains(&zeros), "{err}");
    assert!(!dir.join("eva_vit_g.pth").exists() && !dir.join("eva_vit_g.pth.part").exists(), "{:?}", tree(&dir));

    // The right sum passes.
    let right = hex(&Sha256::digest(served(&server, "/lavis/eva_vit_g.pth")));
    let shard = "model-00001-of-00002.safetensors";
    let pins = format!("eva_vit_g.pth={right},{shard}={zeros}");
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[("MINIGPT4_FETCH_SHA256", &pins)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(dir.join("eva_vit_g.pth").is_file());
    // A Hub file with a wrong pin: refused, and the downloaded blob is gone too.
    assert!(err.contains("sha256 mismatch") && err.contains(shard), "{err}");
    assert!(!dir.join("Llama-2-7b-chat-hf").join(shard).exists());
    let shard_size = served(&server, &format!("/{LLAMA2}/resolve/main/{shard}")).len() as u64;
    let left: Vec<String> = tree(&dir)
        .into_iter()
        .filter(|f| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() == shard_size))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Without the wrong pin it completes (the shard is checked against its LFS etag).
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_gated_model_without_a_token_is_explained_and_with_one_is_served() {
    let mut state = published();
    state.hub_token = Some("hf_testtoken".to_string());
    let server = Server::start(state);
    let home = tmpdir("gated");

    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("HTTP 401") && err.contains("this model is gated") && err.contains("set HF_TOKEN"), "{err}");
    assert!(err.contains(&format!("{}/{LLAMA2}", server.url)), "the page to accept the licence on\n{err}");

    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[("HF_TOKEN", "hf_testtoken")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hub: Vec<Seen> =
        server.seen().into_iter().filter(|s| !s.path.starts_with("/lavis/") && s.status != 401).collect();
    assert!(!hub.is_empty());
    assert!(hub.iter().all(|s| s.auth.as_deref() == Some("Bearer hf_testtoken")), "{hub:?}");
    assert!(server.seen_for("eva_vit_g.pth").iter().all(|s| s.auth.is_none()), "the token goes to the Hub only");

    // A token the Hub refuses is named as the cause.
    let home = tmpdir("gated-bad");
    let out = fetch(&server, &home, "minigpt4-llama2-7b", &[("HF_TOKEN", "hf_wrong")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("with the token from HF_TOKEN"), "{err}");
}

#[test]
fn fetch_without_a_preset_name_or_with_an_unknown_one() {
    let server = Server::start(published());
    let home = tmpdir("unknown");
    let out = fetch(&server, &home, "minigpt4-vicuna-70b", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("minigpt4-llama2-7b") && err.contains("tiny"), "{err}");
    assert!(server.seen().is_empty());
}

#[test]
fn a_preset_with_missing_files_points_at_fetch() {
    let home = tmpdir("hint");
    let img = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures/images/cat.jpg");
    let out = Command::new(env!("CARGO_BIN_EXE_minigpt4"))
        .args(["describe", "--model", "minigpt4-llama2-7b"])
        .arg(&img)
        .env("MINIGPT4_HOME", &home)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("pretrained_minigpt4_llama2_7b.pth") && err.contains("`minigpt4 fetch minigpt4-llama2-7b`"),
        "{err}"
    );
}
