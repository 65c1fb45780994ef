//! `minigpt4 fetch PRESET`: the published MiniGPT-4 presets' files, put under
//! `$MINIGPT4_HOME/models/<preset>/` with the names the presets (`model_file.rs`) expect.
//!
//! | preset | LAVIS (plain HTTPS) | Hugging Face Hub | by hand (Google Drive) |
//! |---|---|---|---|
//! | `minigpt4-vicuna-7b` | `eva_vit_g.pth`, `blip2_pretrained_flant5xxl.pth` | `lmsys/vicuna-7b-delta-v0` → `vicuna-7b-delta-v0/` | `pretrained_minigpt4_7b.pth` |
//! | `minigpt4-vicuna-13b` | the same two | `lmsys/vicuna-13b-delta-v0` → `vicuna-13b-delta-v0/` | `pretrained_minigpt4.pth` |
//! | `minigpt4-llama2-7b` | `eva_vit_g.pth` | `meta-llama/Llama-2-7b-chat-hf` → `Llama-2-7b-chat-hf/` (gated) | `pretrained_minigpt4_llama2_7b.pth` |
//! | `minigpt4-v2` | `eva_vit_g.pth` | the same Llama-2-7b-chat | `minigptv2_checkpoint.pth` (projection + LoRA) |
//!
//! Vicuna v0 is a delta on top of the original LLaMA weights, which are not openly on the Hub:
//! the delta is fetched, and the user applies it (`minigpt4 convert --base … --delta … --out
//! models/<preset>/vicuna-7b`). The projections are published only behind Google Drive pages
//! linked from the MiniGPT-4 README: we say where to get each and where to put it.
//!
//! Every download resumes: the LAVIS files are written to `<name>.part` and continued with an
//! HTTP `Range` request; Hub files go through hf-hub, which resumes its own `.part` the same way.
//! A file appears under its final name only when complete (size checked, sha256 checked where
//! one is known, synced, renamed), so a file that is there is complete and is skipped without
//! asking the network. Environment:
//!
//! - `MINIGPT4_LAVIS_ENDPOINT`: base URL of the LAVIS files (default [`LAVIS_ENDPOINT`]).
//! - `HF_ENDPOINT`: the Hub (default `https://huggingface.co`); `HF_TOKEN`: a Hub token (else the
//!   one `huggingface-cli login` saved under `$HF_HOME`), needed for the gated Llama-2.
//! - `MINIGPT4_FETCH_SHA256`: `name=sha256[,name=sha256…]` pins the sha256 of files by name (the
//!   published sums are not known to us); a file that differs is refused and removed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use minigpt4_io::files::{fmt_size, lock_dir, remove_if_present, sha256_file, sync_dir};

/// Where LAVIS publishes EVA ViT-g and the BLIP-2 Q-Former.
pub const LAVIS_ENDPOINT: &str = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2";
pub const LAVIS_ENDPOINT_ENV: &str = "MINIGPT4_LAVIS_ENDPOINT";
pub const HF_DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const SHA256_ENV: &str = "MINIGPT4_FETCH_SHA256";
pub const MINIGPT4_README: &str = "https://github.com/Vision-CAIR/MiniGPT-4";

/// A file of LAVIS's BLIP-2 release, fetched as `<endpoint>/<name>`.
#[derive(Debug, Clone, Copy)]
pub struct LavisFile {
    pub name: &'static str,
    /// The published sum, when we know it (we do not yet; `MINIGPT4_FETCH_SHA256` pins one).
    pub sha256: Option<&'static str>,
}

pub const EVA_VIT_G: LavisFile = LavisFile { name: "eva_vit_g.pth", sha256: None };
pub const BLIP2_QFORMER: LavisFile = LavisFile { name: "blip2_pretrained_flant5xxl.pth", sha256: None };

/// Which files of a Hub repository are fetched.
#[derive(Debug, Clone, Copy)]
pub enum HubFiles {
    /// These, then the safetensors shards that `model.safetensors.index.json` (one of them) names.
    Sharded(&'static [&'static str]),
    /// Every file the repository lists but `.gitattributes` (and `.bin` weights when it also has
    /// safetensors).
    All,
}

#[derive(Debug, Clone, Copy)]
pub struct HubSource {
    pub repo: &'static str,
    pub revision: &'static str,
    /// Directory under `models/<preset>/`.
    pub dir: &'static str,
    pub files: HubFiles,
    /// For a delta: the directory (under `models/<preset>/`) the merged model goes to, which is
    /// what the preset loads.
    pub delta_for: Option<&'static str>,
}

/// A projection published only behind a web page: where to get it.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionSource {
    pub file: &'static str,
    /// The column of the checkpoint table in the MiniGPT-4 README.
    pub label: &'static str,
    pub url: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct PresetSource {
    pub preset: &'static str,
    pub lavis: &'static [LavisFile],
    pub hub: HubSource,
    pub projection: ProjectionSource,
}

const LLAMA2_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
];

/// Llama-2-7b-chat, the LLM of MiniGPT-4's Llama-2 variant and of MiniGPT-v2 (gated on the Hub).
const LLAMA2_7B_CHAT: HubSource = HubSource {
    repo: "meta-llama/Llama-2-7b-chat-hf",
    revision: "main",
    dir: "Llama-2-7b-chat-hf",
    files: HubFiles::Sharded(LLAMA2_FILES),
    delta_for: None,
};

/// The published presets and where their files come from.
pub const PRESET_SOURCES: [PresetSource; 4] = [
    PresetSource {
        preset: "minigpt4-vicuna-7b",
        lavis: &[EVA_VIT_G, BLIP2_QFORMER],
        hub: HubSource {
            repo: "lmsys/vicuna-7b-delta-v0",
            revision: "main",
            dir: "vicuna-7b-delta-v0",
            files: HubFiles::All,
            delta_for: Some("vicuna-7b"),
        },
        projection: ProjectionSource {
            file: "pretrained_minigpt4_7b.pth",
            label: "MiniGPT-4 (Vicuna 7B)",
            url: "https://drive.google.com/file/d/1RY9jV0dyqLX-o38LrumkKRh6Jtaop58R/view?usp=sharing",
        },
    },
    PresetSource {
        preset: "minigpt4-vicuna-13b",
        lavis: &[EVA_VIT_G, BLIP2_QFORMER],
        hub: HubSource {
            repo: "lmsys/vicuna-13b-delta-v0",
            revision: "main",
            dir: "vicuna-13b-delta-v0",
            files: HubFiles::All,
            delta_for: Some("vicuna-13b"),
        },
        projection: ProjectionSource {
            file: "pretrained_minigpt4.pth",
            label: "MiniGPT-4 (Vicuna 13B)",
            url: "https://drive.google.com/file/d/1a4zLvaiDBr-36pasffmgpvH5P7CKmpze/view?usp=share_link",
        },
    },
    PresetSource {
        preset: "minigpt4-llama2-7b",
        lavis: &[EVA_VIT_G],
        hub: LLAMA2_7B_CHAT,
        projection: ProjectionSource {
            file: "pretrained_minigpt4_llama2_7b.pth",
            label: "MiniGPT-4 (LLaMA-2 Chat 7B)",
            url: "https://drive.google.com/file/d/11nAPjEok8eAGGEG1N2vXo3kBLCg0WgUk/view?usp=sharing",
        },
    },
    PresetSource {
        preset: "minigpt4-v2",
        lavis: &[EVA_VIT_G],
        hub: LLAMA2_7B_CHAT,
        // The projection and the LoRA adapter (after stage 3), one file.
        projection: ProjectionSource {
            file: "minigptv2_checkpoint.pth",
            label: "MiniGPT-v2 (after stage 3)",
            url: "https://drive.google.com/file/d/1jAbxUiyl04SFJMN4sF1vvUU69Etuz4qa/view?usp=sharing",
        },
    },
];

pub fn preset_source(name: &str) -> Option<&'static PresetSource> {
    PRESET_SOURCES.iter().find(|s| s.preset == name)
}

/// Where the files come from and what is pinned; [`PresetFetchOptions::from_env`] reads the
/// environment (see the module docs), tests build it by hand.
#[derive(Debug, Clone, Default)]
pub struct PresetFetchOptions {
    pub lavis_endpoint: String,
    pub hf_endpoint: String,
    pub hf_token: Option<String>,
    /// Where the token came from, for messages (`HF_TOKEN`, or the token file's path).
    pub hf_token_source: Option<String>,
    /// `(file name, sha256)` pins that override (or add to) the table's.
    pub sha256: Vec<(String, String)>,
    /// Draw progress bars (on stderr, and only when it is a terminal).
    pub progress_bars: bool,
}

impl PresetFetchOptions {
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let (hf_token, hf_token_source) = match var("HF_TOKEN") {
            Some(t) => (Some(t), Some("HF_TOKEN".to_string())),
            None => {
                let cache = Cache::from_env();
                match cache.token() {
                    Some(t) => (Some(t), Some(cache.token_path().display().to_string())),
                    None => (None, None),
                }
            }
        };
        Ok(Self {
            lavis_endpoint: var(LAVIS_ENDPOINT_ENV).unwrap_or_else(|| LAVIS_ENDPOINT.to_string()),
            hf_endpoint: var("HF_ENDPOINT").unwrap_or_else(|| HF_DEFAULT_ENDPOINT.to_string()),
            hf_token,
            hf_token_source,
            sha256: var(SHA256_ENV).map(|v| parse_sha256_pins(&v)).transpose()?.unwrap_or_default(),
            progress_bars: true,
        })
    }

    fn pinned(&self, name: &str, table: Option<&str>) -> Option<String> {
        let base = name.rsplit('/').next().unwrap_or(name);
        self.sha256
            .iter()
            .rev()
            .find(|(n, _)| n == name || n == base)
            .map(|(_, s)| s.clone())
            .or_else(|| table.map(str::to_string))
    }
}

/// `name=sha256[,name=sha256…]` (whitespace allowed around the pieces).
pub fn parse_sha256_pins(text: &str) -> Result<Vec<(String, String)>> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, sum) = p
                .split_once('=')
                .map(|(n, s)| (n.trim(), s.trim().to_ascii_lowercase()))
                .ok_or_else(|| Error::Config(format!("{SHA256_ENV}: `{p}` is not name=sha256 (64 hex digits)")))?;
            if name.is_empty() || !is_sha256(&sum) {
                return Err(Error::Config(format!("{SHA256_ENV}: `{p}` is not name=sha256 (64 hex digits)")));
            }
            Ok((name.to_string(), sum))
        })
        .collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What [`fetch_preset`] did, and what the user still has to do.
#[derive(Debug, Clone, Default)]
pub struct PresetFetched {
    /// `models/<preset>/`.
    pub dir: PathBuf,
    pub fetched: Vec<PathBuf>,
    pub already_there: Vec<PathBuf>,
    /// Steps left to the user (apply the delta, download the projection), as text to print.
    pub next_steps: Vec<String>,
}

/// Fetches `preset`'s downloadable files into `home/models/<preset>/` (see the module docs),
/// reporting each step through `progress`.
pub fn fetch_preset(
    home: &Path,
    preset: &str,
    opts: &PresetFetchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<PresetFetched> {
    let source = preset_source(preset).ok_or_else(|| {
        Error::Config(format!(
            "`{preset}` is not a preset that can be fetched (these can: tiny, tiny-dinov2, {})",
            PRESET_SOURCES.iter().map(|s| s.preset).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let dir = home.join("models").join(preset);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let _lock = lock_dir(&dir, progress)?;
    let mut out = PresetFetched { dir: dir.clone(), ..Default::default() };

    let agent = lavis_agent();
    for file in source.lavis {
        let url = format!("{}/{}", opts.lavis_endpoint.trim_end_matches('/'), file.name);
        let dest = dir.join(file.name);
        if dest.is_file() {
            progress(&format!("{}: already there", dest.display()));
            out.already_there.push(dest);
            continue;
        }
        progress(&format!("{}: download {url}", file.name));
        download_url(&agent, &url, &dest, opts.pinned(file.name, file.sha256).as_deref(), opts, progress)?;
        progress(&format!("{}: done", dest.display()));
        out.fetched.push(dest);
    }

    fetch_hub(&dir, &source.hub, opts, progress, &mut out)?;
    out.next_steps = next_steps(source, &dir);
    Ok(out)
}

/// What is left to do by hand for `source` in `dir` (nothing for the parts already there).
pub fn next_steps(source: &PresetSource, dir: &Path) -> Vec<String> {
    let mut steps = Vec::new();
    if let Some(merged) = source.hub.delta_for {
        let merged = dir.join(merged);
        if !merged.join("config.json").is_file() {
            steps.push(format!(
                "The LLM: Vicuna v0 is published only as a delta ({}) on top of the original LLaMA \
                 weights, which are not openly on the Hub. Apply the delta to your own LLaMA \
                 checkpoint (Hugging Face layout) and put the result where the preset loads it:\n    \
                 minigpt4 convert --base LLAMA_DIR --delta {} --out {}",
                source.hub.repo,
                dir.join(source.hub.dir).display(),
                merged.display()
            ));
        }
    }
    let proj = dir.join(source.projection.file);
    if !proj.is_file() {
        steps.push(format!(
            "The projection: {} is published only on Google Drive, linked from the MiniGPT-4 README \
             ({MINIGPT4_README}, checkpoint \"{}\"):\n    {}\n  Download it and put it at\n    {}",
            source.projection.file,
            source.projection.label,
            source.projection.url,
            proj.display()
        ));
    }
    steps
}

// ---------------------------------------------------------------------------------------------
// LAVIS files: plain HTTPS GET with resume.

fn lavis_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(format!("minigpt4/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// GETs `url` into `dest` through `<dest>.part`, continuing a partial one with `Range`, then
/// checks the size (and the sha256 when `expected` is set), syncs and renames.
fn download_url(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    expected: Option<&str>,
    opts: &PresetFetchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let part = part_path(dest);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let start = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if start > 0 {
        progress(&format!("{name}: resuming after {} ({})", fmt_size(start), part.display()));
        req = req.header("Range", format!("bytes={start}-"));
    }
    let resp = req.call().map_err(|e| fail(dest, format!("GET {url}: {e}")))?;
    let status = resp.status().as_u16();
    let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (offset, total) = match status {
        200 => {
            if start > 0 {
                progress(&format!("{name}: the server sent the whole file instead of the rest; starting over"));
            }
            (0, header("content-length").and_then(|v| v.parse::<u64>().ok()))
        }
        206 if start > 0 => {
            let range = header("content-range").unwrap_or_default();
            match parse_content_range(&range) {
                Some((first, total)) if first == start => (start, total),
                _ => {
                    remove_if_present(&part)?;
                    return Err(fail(
                        dest,
                        format!(
                            "GET {url}: asked for the bytes from {start} on, the server answered \
                             `Content-Range: {range}`; the partial file was removed, run the fetch again"
                        ),
                    ));
                }
            }
        }
        416 if start > 0 => {
            // The partial file may already hold everything (cut after the last byte).
            let total = header("content-range").as_deref().and_then(parse_content_range).and_then(|(_, t)| t);
            if total == Some(start) {
                return finish_part(&part, dest, start, Some(start), expected, url);
            }
            remove_if_present(&part)?;
            return Err(fail(
                dest,
                format!(
                    "GET {url}: the partial download ({start} bytes) does not fit the file on the \
                     server; it was removed, run the fetch again"
                ),
            ));
        }
        s => {
            return Err(fail(
                dest,
                format!(
                    "GET {url}: HTTP {s}{}",
                    if s == 404 { format!(" (is {LAVIS_ENDPOINT_ENV} right?)") } else { String::new() }
                ),
            ))
        }
    };

    let file = if offset > 0 { File::options().append(true).open(&part) } else { File::create(&part) }
        .map_err(|e| Error::io(&part, e))?;
    let bar = bar(opts, total, offset, &name);
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = offset;
    loop {
        let k = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                let _ = w.flush().and_then(|_| w.get_ref().sync_all());
                return Err(fail(
                    dest,
                    format!(
                        "GET {url}: the connection failed after {} of {} ({e}); the {} downloaded are \
                         kept in {}: run the fetch again to resume",
                        fmt_size(n),
                        total.map(fmt_size).unwrap_or_else(|| "?".into()),
                        fmt_size(n),
                        part.display()
                    ),
                ));
            }
        };
        w.write_all(&buf[..k]).map_err(|e| Error::io(&part, e))?;
        n += k as u64;
        bar.set_position(n);
    }
    w.flush().map_err(|e| Error::io(&part, e))?;
    let file = w.into_inner().map_err(|e| Error::io(&part, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&part, e))?;
    drop(file);
    bar.finish_and_clear();
    finish_part(&part, dest, n, total, expected, url)
}

/// Checks a finished `.part` (size, sha256) and renames it to `dest`; a bad one is removed.
fn finish_part(
    part: &Path,
    dest: &Path,
    len: u64,
    total: Option<u64>,
    expected: Option<&str>,
    url: &str,
) -> Result<()> {
    if let Some(total) = total.filter(|&t| t != len) {
        remove_if_present(part)?;
        return Err(fail(
            dest,
            format!("GET {url}: got {len} bytes, expected {total}; the partial file was removed, run the fetch again"),
        ));
    }
    verify(part, dest, expected)?;
    fs::rename(part, dest).map_err(|e| Error::io(dest, e))?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Refuses (and removes) `file` when `expected` is set and its sha256 differs.
fn verify(file: &Path, dest: &Path, expected: Option<&str>) -> Result<()> {
    let Some(expected) = expected else { return Ok(()) };
    let (sha, len) = sha256_file(file)?;
    if !sha.eq_ignore_ascii_case(expected) {
        remove_if_present(file)?;
        return Err(Error::BadCheckpoint {
            file: dest.display().to_string(),
            msg: format!(
                "sha256 mismatch: expected {expected}, the download ({len} bytes) has {sha}. It was \
                 removed; run the fetch again to download it anew"
            ),
        });
    }
    Ok(())
}

/// `bytes FIRST-LAST/TOTAL` (or `bytes */TOTAL`) → (FIRST, TOTAL); TOTAL may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse::<u64>().ok();
    let first = match range.trim() {
        "*" => total?,
        r => r.split_once('-')?.0.trim().parse().ok()?,
    };
    Some((first, total))
}

// ---------------------------------------------------------------------------------------------
// Hub files, through hf-hub.
//
// hf-hub's sync API speaks the Hub's protocol for us: the `resolve/<revision>` URLs and
// `HF_ENDPOINT`, the token header (kept off redirects to other hosts, e.g. the LFS CDN), the
// `Range: bytes=0-0` probe that gives the size, the etag and the commit, and the download, which
// resumes a `<blob>.part` in its cache with `Range: bytes=N-`. What it does not do, and we do
// around it: it does not verify anything (no sha256, not even the size when a server answers a
// range request with the whole file, which it would append), and it keeps files in its own cache
// layout (blobs + symlinks) instead of at the paths a preset loads. So its cache lives in
// `models/<preset>/.hf-cache/` (same file system), each finished blob is checked against the
// probed size and, for LFS files (whose etag is their sha256) or pinned ones, the sha256, then
// synced and renamed to its place; the cache is removed once the repository is complete.

fn fetch_hub(
    dir: &Path,
    hub: &HubSource,
    opts: &PresetFetchOptions,
    progress: &mut dyn FnMut(&str),
    out: &mut PresetFetched,
) -> Result<()> {
    let target = dir.join(hub.dir);
    let cache_dir = dir.join(".hf-cache");
    let api = ApiBuilder::from_cache(Cache::new(cache_dir.clone()))
        .with_endpoint(opts.hf_endpoint.trim_end_matches('/').to_string())
        .with_token(opts.hf_token.clone())
        .with_progress(false)
        .with_user_agent("minigpt4", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| fail(&target, format!("the Hub client: {e}")))?;
    let repo = api.repo(Repo::with_revision(hub.repo.to_string(), RepoType::Model, hub.revision.to_string()));
    let ctx = HubCtx { api: &api, repo: &repo, hub, opts, target: &target, cache_dir: &cache_dir };

    let files: Vec<String> = match hub.files {
        HubFiles::Sharded(first) => {
            for f in first {
                ctx.fetch_file(f, progress, out)?;
            }
            let mut shards = Vec::new();
            for index in first.iter().filter(|f| f.ends_with(".index.json")) {
                shards.extend(index_shards(&target.join(index))?);
            }
            shards
        }
        HubFiles::All => {
            progress(&format!("{}: listing the files of {}", hub.dir, hub.repo));
            let info = repo.info().map_err(|e| ctx.error(None, e))?;
            let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
            let has_safetensors = names.iter().any(|n| n.ends_with(".safetensors"));
            names
                .into_iter()
                .filter(|n| n != ".gitattributes")
                .filter(|n| !(has_safetensors && (n.ends_with(".bin") || n.ends_with(".bin.index.json"))))
                .collect()
        }
    };
    for f in &files {
        ctx.fetch_file(f, progress, out)?;
    }
    let _ = fs::remove_dir_all(&cache_dir);
    Ok(())
}

struct HubCtx<'a> {
    api: &'a Api,
    repo: &'a ApiRepo,
    hub: &'a HubSource,
    opts: &'a PresetFetchOptions,
    target: &'a Path,
    cache_dir: &'a Path,
}

impl HubCtx<'_> {
    fn fetch_file(&self, file: &str, progress: &mut dyn FnMut(&str), out: &mut PresetFetched) -> Result<()> {
        if file.split('/').any(|c| c.is_empty() || c == "." || c == "..") || file.starts_with('/') {
            return Err(fail(self.target, format!("the Hub listed a file named `{file}`; refusing it")));
        }
        let dest = self.target.join(file);
        if dest.is_file() {
            progress(&format!("{}: already there", dest.display()));
            out.already_there.push(dest);
            return Ok(());
        }
        let url = self.repo.url(file);
        let meta = self.api.metadata(&url).map_err(|e| self.error(Some(file), e))?;
        let size = meta.size() as u64;
        progress(&format!("{}/{file}: download {url} ({})", self.hub.dir, fmt_size(size)));
        let bar = bar(self.opts, Some(size), 0, file);
        let pointer = self.repo.download_with_progress(file, bar.clone()).map_err(|e| {
            bar.abandon();
            self.error(Some(file), e)
        })?;
        bar.finish_and_clear();
        let blob = fs::canonicalize(&pointer).map_err(|e| Error::io(&pointer, e))?;
        let len = fs::metadata(&blob).map_err(|e| Error::io(&blob, e))?.len();
        if len != size {
            remove_if_present(&blob)?;
            return Err(fail(
                &dest,
                format!(
                    "{url}: got {len} bytes, expected {size} (the server did not continue where the \
                     partial download ended); it was removed, run the fetch again"
                ),
            ));
        }
        let etag = meta.etag().trim_matches('"').to_ascii_lowercase();
        let expected = self.opts.pinned(file, is_sha256(&etag).then_some(etag.as_str()));
        verify(&blob, &dest, expected.as_deref())?;
        File::open(&blob).and_then(|f| f.sync_all()).map_err(|e| Error::io(&blob, e))?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        fs::rename(&blob, &dest).map_err(|e| Error::io(&dest, e))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent);
        }
        let _ = fs::remove_file(&pointer);
        progress(&format!("{}: done", dest.display()));
        out.fetched.push(dest);
        Ok(())
    }

    /// An hf-hub error as a person can act on it; 401/403 explain gated models and tokens.
    fn error(&self, file: Option<&str>, e: ApiError) -> Error {
        let what = match file {
            Some(f) => format!("{}/{f}", self.hub.repo),
            None => self.hub.repo.to_string(),
        };
        let page = format!("{}/{}", self.opts.hf_endpoint.trim_end_matches('/'), self.hub.repo);
        let status = match &e {
            ApiError::RequestError(re) => match re.as_ref() {
                ureq::Error::StatusCode(s) => Some(*s),
                _ => None,
            },
            _ => None,
        };
        let msg = match (status, &self.opts.hf_token_source) {
            (Some(401 | 403), None) => format!(
                "the Hub answered HTTP {} for {what}: this model is gated: accept the licence on the \
                 Hub ({page}) and set HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens), \
                 then run the fetch again",
                status.unwrap_or_default()
            ),
            (Some(401 | 403), Some(src)) => format!(
                "the Hub answered HTTP {} for {what} with the token from {src}: this model is gated: \
                 accept the licence on the Hub ({page}) with the account of that token (access can take \
                 a while to be granted) and check the token may read it",
                status.unwrap_or_default()
            ),
            (Some(404), _) => format!("the Hub has no {what} (HTTP 404 from {page}; is HF_ENDPOINT right?)"),
            (_, _) if matches!(e, ApiError::IoError(_) | ApiError::RequestError(_)) => format!(
                "{what}: {e}. A partial download is kept in {} and continues when you run the fetch again",
                self.cache_dir.display()
            ),
            _ => format!("{what}: {e}"),
        };
        fail(self.target, msg)
    }
}

/// The shard files a `*.safetensors.index.json` names, sorted, once each.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |msg: String| Error::BadCheckpoint { file: index.display().to_string(), msg };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map`".into()))?;
    let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(bad("`weight_map` names no file".into()));
    }
    Ok(shards)
}

// ---------------------------------------------------------------------------------------------

fn bar(opts: &PresetFetchOptions, total: Option<u64>, pos: u64, name: &str) -> ProgressBar {
    if !opts.progress_bars {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(name.to_string());
    bar.set_position(pos);
    bar
}

/// A failed download, with what to do about it.
fn fail(path: &Path, msg: String) -> Error {
    Error::Fetch { path: path.to_path_buf(), msg }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes */200"), Some((200, Some(200))));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn sha256_pins() {
        let a = "a".repeat(64);
        let pins = parse_sha256_pins(&format!(" eva_vit_g.pth = {} ,x/y.json={a}", a.to_uppercase())).unwrap();
        assert_eq!(pins, [("eva_vit_g.pth".to_string(), a.clone()), ("x/y.json".to_string(), a.clone())]);
        assert!(parse_sha256_pins("eva_vit_g.pth=abc").is_err());
        let opts = PresetFetchOptions { sha256: pins, ..Default::default() };
        assert_eq!(opts.pinned("sub/eva_vit_g.pth", None), Some(a.clone()));
        assert_eq!(opts.pinned("other", Some("t")), Some("t".to_string()));
    }

    #[test]
    fn every_fetchable_preset_is_a_preset_and_names_its_files() {
        for s in &PRESET_SOURCES {
            let spec = crate::model_file::ModelSpec::preset(s.preset, Path::new("/h")).unwrap();
            let dir = Path::new("/h/models").join(s.preset);
            assert_eq!(spec.vision.weights, dir.join(EVA_VIT_G.name));
            assert_eq!(spec.projection.weights, dir.join(s.projection.file));
            let llm = dir.join(s.hub.delta_for.unwrap_or(s.hub.dir));
            assert_eq!(spec.llm.weights, llm, "{}", s.preset);
            if let Some(q) = &spec.adapter.weights {
                assert!(s.lavis.iter().any(|f| dir.join(f.name) == *q), "{}", s.preset);
            }
        }
    }
}
