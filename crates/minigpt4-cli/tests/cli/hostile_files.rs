//! The release binary on the files that used to crash or exhaust it (rebuilt by the fuzz crate's
//! generators): every one ends with a clear error naming the file, exit status 2 (an error;
//! never a panic's 101 or an abort's 134), within seconds and 1 GB of memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use minigpt4_fuzz::build::{self, Gguf, GgufValue, Pickle};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minigpt4-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Peak resident memory of the children waited for so far, in MB.
fn children_peak_rss_mb() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn minigpt4(args: &[&str], home: &Path) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_minigpt4")).args(args).env("MINIGPT4_HOME", home).output().unwrap();
    (out, t.elapsed())
}

/// `what` fails cleanly: exit 2, an `error:` line naming `file`, no panic text.
fn assert_clean_error(what: &str, out: &Output, took: Duration, file: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: status {:?}\n{err}", out.status);
    assert!(err.contains("error:") && err.contains(file), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
}

/// A model file like the fixture's, with one part replaced by `path`.
fn model_with(dir: &Path, part: &str, path: &Path) -> PathBuf {
    let src = fixtures().join("minigpt4/qformer");
    let text = std::fs::read_to_string(src.join("model.toml")).unwrap();
    let abs = |rel: &str| src.join(rel).display().to_string();
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        let line = match line.split_once(" = \"") {
            Some((key, value)) if key == "weights" || key == "config" => {
                let value = value.trim_end_matches('"');
                let v = if section == part && key == "weights" { path.display().to_string() } else { abs(value) };
                format!("{key} = \"{v}\"")
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let p = dir.join(format!("model-{part}.toml"));
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn hostile_checkpoints_end_in_clear_errors() {
    let dir = tmpdir("checkpoints");
    let mut rng = StdRng::seed_from_u64(11);
    let mut files: Vec<(String, Vec<u8>, &str)> = Vec::new();

    let valid = Gguf::tiny_llama(&mut rng, true);
    let with_kv = |key: &str, v: GgufValue| {
        let mut g = valid.clone();
        g.kvs.retain(|(k, _)| k != key);
        g.kvs.push((key.into(), v));
        g.encode()
    };
    files.push(("alignment0.gguf".into(), with_kv("general.alignment", GgufValue::U32(0)), "llm"));
    files.push(("blocks.gguf".into(), with_kv("llama.block_count", GgufValue::U64(1 << 62)), "llm"));
    files.push(("blocks32.gguf".into(), with_kv("llama.block_count", GgufValue::U32(u32::MAX)), "llm"));
    let mut g = valid.clone();
    g.tensors[0].dims = Vec::new();
    files.push(("embd0.gguf".into(), g.encode(), "llm"));
    let mut g = valid.clone();
    g.tensors[2].dims = vec![1 << 32, 1 << 32, 4];
    files.push(("wrap.gguf".into(), g.encode(), "llm"));
    let mut g = valid.clone();
    let at = g.tensors.last().unwrap().offset as usize;
    g.data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    files.push(("nan.gguf".into(), g.encode(), "llm"));

    let (recs, storages) = build::state_dict(&mut rng);
    let mut short = Pickle::default();
    short
        .proto()
        .empty_dict()
        .mark()
        .str("w")
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .int(0)
        .tuple()
        .reduce()
        .setitems()
        .stop();
    files.push(("short.pth".into(), build::torch_zip(short.ops, &storages, false), "projection"));
    let mut nested = Pickle::default();
    nested.proto();
    nested.ops.extend(std::iter::repeat_n(b'(', 1_000_000));
    nested.ops.extend(std::iter::repeat_n(b't', 1_000_000));
    nested.stop();
    files.push(("nested.pth".into(), build::torch_zip(nested.ops, &storages, false), "projection"));
    let mut laughs = Pickle::default();
    laughs.proto().empty_list().put(0);
    for _ in 0..40 {
        laughs.mark().get(0).get(0).appends();
    }
    laughs.stop();
    files.push(("laughs.pth".into(), build::torch_zip(laughs.ops, &storages, false), "projection"));
    files.push(("bomb.pth".into(), build::zip_bomb_pth(256), "projection"));
    let mut payload = Pickle::default();
    payload.proto().global("collections", "OrderedDict").empty_tuple().reduce().mark();
    build::tensor_record(&mut payload, &recs[0]);
    payload.str("x").global("os", "system").mark().str("touch /tmp/minigpt4-pwned").tuple().reduce().setitems().stop();
    files.push(("payload.pth".into(), build::torch_zip(payload.ops, &storages, false), "projection"));
    let mut nan = storages.clone();
    nan[0][..4].copy_from_slice(&f32::NAN.to_le_bytes());
    files.push(("nan.pth".into(), build::torch_zip(build::state_dict_pickle(&recs, true), &nan, false), "projection"));

    let image = fixtures().join("images/cat.jpg").display().to_string();
    for (name, bytes, part) in &files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let p = path.display().to_string();
        let (out, took) = minigpt4(&["inspect", &p], &dir);
        // `inspect` reads a GGUF's header only; the header may be fine.
        if out.status.code() != Some(0) {
            assert_clean_error(&format!("inspect {name}"), &out, took, name);
        }
        let model = model_with(&dir, part, &path);
        let (out, took) =
            minigpt4(&["describe", "--model", &model.display().to_string(), &image, "--max-new-tokens", "4"], &dir);
        assert_clean_error(&format!("describe with {name}"), &out, took, name);
    }
    assert!(!Path::new("/tmp/minigpt4-pwned").exists(), "the pickle ran code");
    let peak = children_peak_rss_mb();
    eprintln!("{} hostile files: peak RSS of any run {peak:.0} MB", files.len());
    assert!(peak < 1024.0, "a run peaked at {peak:.0} MB");
}

#[test]
fn hostile_image_paths_end_in_clear_errors() {
    let dir = tmpdir("images");
    let model = fixtures().join("minigpt4/qformer/model.toml").display().to_string();
    // A 4.5 GB (sparse) file, a FIFO nobody writes to, a device that never ends.
    let big = dir.join("big.jpg");
    std::fs::File::create(&big).unwrap().set_len(4_500_000_000).unwrap();
    let fifo = dir.join("fifo.jpg");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, name) in [
        (big.display().to_string(), "big.jpg"),
        (fifo.display().to_string(), "fifo.jpg"),
        ("/dev/zero".to_string(), "/dev/zero"),
    ] {
        let (out, took) = minigpt4(&["describe", "--model", &model, &path, "--max-new-tokens", "2"], &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{name}: {:?}\n{err}", out.status);
        assert!(err.contains(name) && !err.contains("panicked"), "{name}: {err}");
        assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
    }
    assert!(children_peak_rss_mb() < 1024.0);
}
