//! `minigpt4 train` as a user runs it, on the tiny fixture model: a run killed with SIGKILL in
//! the middle and resumed ends with the same projection, bit for bit, as a run never stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures").join(rel)
}

/// Manifest lines of four fixture images with captions, all in the training split.
pub(crate) fn captioned_lines() -> Vec<String> {
    [
        ("cat.jpg", "A cat sitting on a wooden floor."),
        ("coffee.jpg", "A cup of coffee on a saucer."),
        ("rocket.jpg", "A rocket launching into the sky."),
        ("noise.png", "Colourful random noise."),
    ]
    .iter()
    .map(|(f, c)| {
        format!(
            r#"{{"image": "{}", "caption": "{c}", "source": "t", "split": "train"}}"#,
            fixture(&format!("images/{f}")).display()
        )
    })
    .collect()
}

fn manifest(dir: &Path) -> PathBuf {
    let lines: Vec<String> = captioned_lines()
        .into_iter()
        .chain([
            r#"{"image": "does-not-exist.png", "caption": "held out", "source": "t", "split": "heldout"}"#.to_string()
        ])
        .collect();
    let p = dir.join("m.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn train(dir: &Path, out: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_minigpt4"));
    c.args(["train", "--stage", "1", "--model"])
        .arg(fixture("minigpt4/merge4/model.toml"))
        .arg("--data")
        .arg(manifest(dir))
        .arg("--out")
        .arg(dir.join(out))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--steps", "150", "--batch", "2", "--grad-accum", "2", "--save-every", "5", "--seed", "3", "--quiet"])
        .args(extra);
    c
}

fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

#[test]
fn killed_and_resumed_run_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let status = train(dir.path(), "full", &[]).status().unwrap();
    assert!(status.success());

    let mut child = train(dir.path(), "killed", &[]).spawn().unwrap();
    let ckpts = dir.path().join("killed/checkpoints");
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(&ckpts).map(|d| d.count()).unwrap_or(0);
        if n >= 2 || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it could be killed; make it longer");
    assert!(!dir.path().join("killed/projection.safetensors").exists());

    // Without --resume the directory is refused.
    let out = train(dir.path(), "killed", &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    let out = train(dir.path(), "killed", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        tensors(&dir.path().join("full/projection.safetensors")),
        tensors(&dir.path().join("killed/projection.safetensors"))
    );
    assert_eq!(
        tensors(&dir.path().join("full/checkpoints/step-00000150.safetensors")),
        tensors(&dir.path().join("killed/checkpoints/step-00000150.safetensors"))
    );
    let log = |run: &str| std::fs::read_to_string(dir.path().join(run).join("log.csv")).unwrap();
    let losses = |t: String| t.lines().map(|l| l.split(',').take(3).collect::<Vec<_>>().join(",")).collect::<Vec<_>>();
    assert_eq!(losses(log("full")), losses(log("killed")), "the resumed log has every step once, same values");
    assert!(dir.path().join("killed/loss.png").is_file());
}
