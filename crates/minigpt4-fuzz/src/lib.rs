//! Fuzzing on stable Rust (no nightly toolchain, so no cargo-fuzz) for every parser minigpt4 runs
//! on what a user hands it: GGUF models, safetensors and `.pth` checkpoints (zip and legacy),
//! images of every supported format, and chat requests with data-URL images.
//!
//! Each input comes from a seed and its index alone, so a finding is replayed with
//! `minigpt4-fuzz TARGET --seed S --replay I`. An input is either a fresh structure-aware build
//! (a valid file with one field given a hostile value, see [`build`]) or a byte mutation of one
//! from the target's corpus (see [`mutate`]). The parsers are the real ones, called as the CLI
//! and server call them (files are written to a scratch folder and opened by path). A panic is
//! caught and counted as a crash; an abort (stack overflow, out of memory) ends the process,
//! which `scripts/fuzz.sh` reports with the index it reached.

pub mod build;
pub mod mutate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use minigpt4_core::image::{ImageConfig, Limits};
use minigpt4_core::tokenizer::Tokenizer;
use minigpt4_core::weights::Weights;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gguf,
    Safetensors,
    Pth,
    Image,
    Request,
}

impl Target {
    pub const ALL: [Target; 5] = [Target::Gguf, Target::Safetensors, Target::Pth, Target::Image, Target::Request];

    pub fn name(self) -> &'static str {
        match self {
            Target::Gguf => "gguf",
            Target::Safetensors => "safetensors",
            Target::Pth => "pth",
            Target::Image => "image",
            Target::Request => "request",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// What one input did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Parsed (and loaded, for models) without error.
    Accepted,
    /// Refused with an error, as it should be for broken input.
    Refused,
    /// The parser panicked: a crash.
    Panicked(String),
}

/// One target's generator and parser.
pub struct Harness {
    pub target: Target,
    scratch: PathBuf,
    corpus: Vec<Vec<u8>>,
    tokenizer: Tokenizer,
}

/// Images a fuzzed request or image may decode: small, so each input stays cheap (the default
/// limits' 64 Mpx are tested on their own).
const LIMITS: Limits = Limits { max_pixels: 1 << 20, max_bytes: 1 << 24 };

impl Harness {
    /// `scratch`: a folder for the files the model parsers open by path (best on tmpfs).
    pub fn new(target: Target, scratch: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(scratch)?;
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let corpus: Vec<Vec<u8>> = (0..16)
            .map(|i| match target {
                Target::Gguf => build::Gguf::tiny_llama(&mut rng, i % 2 == 1).encode(),
                Target::Safetensors => build::safetensors(&mut rng, false),
                Target::Pth => build::pth(&mut rng, false),
                Target::Image => build::image(&mut rng),
                Target::Request => build::request(&mut rng, false),
            })
            .collect();
        let tokenizer = Tokenizer::from_json_bytes(include_bytes!(
            "../../minigpt4-core/tests/fixtures/tokenizer/gpt2/tokenizer.json"
        ))
        .map_err(std::io::Error::other)?;
        Ok(Self { target, scratch: scratch.to_path_buf(), corpus, tokenizer })
    }

    /// Input `i` of the run seeded `seed`: the same bytes every time.
    pub fn input(&self, seed: u64, i: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i);
        if rng.random_bool(0.3) {
            return match self.target {
                Target::Gguf => {
                    let quantized = rng.random_bool(0.5);
                    let mut g = build::Gguf::tiny_llama(&mut rng, quantized);
                    for _ in 0..rng.random_range(1..3) {
                        g.corrupt(&mut rng);
                    }
                    g.encode()
                }
                Target::Safetensors => build::safetensors(&mut rng, true),
                Target::Pth => build::pth(&mut rng, true),
                Target::Image => {
                    if rng.random_bool(0.1) {
                        build::png_claiming(rng.random(), rng.random())
                    } else {
                        build::image(&mut rng)
                    }
                }
                Target::Request => build::request(&mut rng, true),
            };
        }
        let a = &self.corpus[rng.random_range(0..self.corpus.len())];
        let b = &self.corpus[rng.random_range(0..self.corpus.len())];
        mutate::mutate(&mut rng, a, b)
    }

    /// Runs the target's parser on `bytes`, catching a panic.
    pub fn run_one(&self, bytes: &[u8]) -> Outcome {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.parse(bytes))) {
            Ok(true) => Outcome::Accepted,
            Ok(false) => Outcome::Refused,
            Err(p) => Outcome::Panicked(
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            ),
        }
    }

    /// Whether the input was accepted; an error is a refusal.
    fn parse(&self, bytes: &[u8]) -> bool {
        let file = |ext: &str| {
            let p = self.scratch.join(format!("input.{ext}"));
            std::fs::write(&p, bytes).map(|_| p)
        };
        match self.target {
            Target::Gguf => {
                let Ok(p) = file("gguf") else { return false };
                let header = minigpt4_core::llama::read_gguf(&p).and_then(|(_, ct)| Tokenizer::from_gguf(&ct));
                let model = minigpt4_core::llama::Llama::load_gguf(&p, &Device::Cpu);
                header.is_ok() && model.is_ok()
            }
            Target::Safetensors | Target::Pth => {
                let Ok(p) = file(if self.target == Target::Pth { "pth" } else { "safetensors" }) else { return false };
                let Ok(w) = Weights::open(&p, &Device::Cpu, DType::F32) else { return false };
                w.names().iter().all(|n| w.get_any(n).is_ok())
            }
            Target::Image => {
                let cfg = ImageConfig::clip(16);
                minigpt4_core::image::preprocess(bytes, "fuzz", &cfg, &LIMITS, &Device::Cpu).is_ok()
            }
            Target::Request => self.request(bytes),
        }
    }

    /// The server's path for a request body, up to the prompt's token ids.
    fn request(&self, bytes: &[u8]) -> bool {
        use minigpt4_serve::api;
        let Ok(req) = api::parse_request(bytes) else { return false };
        let limits = api::RequestLimits { max_images: 8, max_tokens: 64 };
        let Ok(prepared) = api::prepare(req, minigpt4_core::template::TemplateKind::ChatMl, limits) else {
            return false;
        };
        let images_ok =
            prepared.images.iter().all(|img| minigpt4_core::image::load_rgb(&img.bytes, &img.param, &LIMITS).is_ok());
        images_ok && prepared.conv.tokenize(&self.tokenizer).is_ok()
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: u64,
    pub accepted: u64,
    pub refused: u64,
    /// (input index, panic message) of each crash.
    pub crashes: Vec<(u64, String)>,
    /// The slowest input and its time.
    pub slowest: (u64, Duration),
    pub elapsed: Duration,
}

/// Runs inputs `start..start + count` of `seed`, calling `progress` every 1,000 inputs with
/// the index reached. Panic messages are kept out of stderr while it runs.
pub fn run(h: &Harness, seed: u64, start: u64, count: u64, mut progress: impl FnMut(u64, &Report)) -> Report {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let began = Instant::now();
    let mut report = Report::default();
    for i in start..start + count {
        let input = h.input(seed, i);
        let t = Instant::now();
        match h.run_one(&input) {
            Outcome::Accepted => report.accepted += 1,
            Outcome::Refused => report.refused += 1,
            Outcome::Panicked(msg) => report.crashes.push((i, msg)),
        }
        let took = t.elapsed();
        if took > report.slowest.1 {
            report.slowest = (i, took);
        }
        report.inputs += 1;
        if report.inputs % 1000 == 0 {
            progress(i, &report);
        }
    }
    report.elapsed = began.elapsed();
    std::panic::set_hook(hook);
    report
}
