//! `minigpt4 convert`: a model's originals to GGUF + safetensors + model.toml, or a Vicuna delta
//! applied to LLaMA.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use minigpt4_core::convert::{apply_delta, convert};
use minigpt4_core::llama::Quantize;
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};

#[derive(Args)]
pub struct ConvertArgs {
    /// The model to convert: a preset name or a model file. Writes `llm.gguf` (loads in
    /// llama.cpp too), `vision.safetensors` and `model.toml` into --out.
    #[arg(long, short, conflicts_with_all = ["base", "delta"], required_unless_present = "delta")]
    pub model: Option<String>,
    /// The LLM's storage in the GGUF [the model file's `quantize`, else q8_0 over 1 B parameters].
    #[arg(long, value_name = "none|f16|q8_0|q4_0|q4_k")]
    pub quantize: Option<Quantize>,
    /// The vision side's storage on disk (it is computed in f32 either way).
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub vision_dtype: String,
    /// With --delta: the original LLaMA, a Hugging Face folder (safetensors or .bin shards).
    #[arg(long, requires = "delta", value_name = "LLAMA_DIR")]
    pub base: Option<PathBuf>,
    /// With --base: lmsys' Vicuna delta (`vicuna-7b-delta-v0`, `vicuna-13b-delta-v0`). Writes the
    /// merged Vicuna as a Hugging Face folder.
    #[arg(long, requires = "base", value_name = "DELTA_DIR")]
    pub delta: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ConvertArgs) -> Result<bool> {
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut progress = |what: &str, done: usize, total: usize| {
        if bar.length() != Some(total as u64) {
            bar.set_length(total as u64);
        }
        bar.set_message(what.to_string());
        bar.set_position(done as u64);
    };
    match (&a.model, &a.base, &a.delta) {
        (None, Some(base), Some(delta)) => {
            let result = apply_delta(base, delta, &a.out, &mut progress);
            bar.finish_and_clear();
            result.with_context(|| format!("applying {} to {}", delta.display(), base.display()))?;
            eprintln!("merged model written to {} in {:.1}s", a.out.display(), started.elapsed().as_secs_f32());
        }
        (Some(model), None, None) => {
            let spec = ModelSpec::resolve(model, &minigpt4_home())?;
            let dtype = if a.vision_dtype == "f32" { candle_core::DType::F32 } else { candle_core::DType::F16 };
            let result = convert(&spec, a.quantize, dtype, &a.out, &mut progress);
            bar.finish_and_clear();
            let c = result.with_context(|| format!("converting model `{model}`"))?;
            eprintln!("converted in {:.1}s (LLM: {}):", started.elapsed().as_secs_f32(), c.quantize.name());
            for p in [&c.llm, &c.vision, &c.model_file] {
                eprintln!("  {}", p.display());
            }
            if !c.projection_included {
                eprintln!(
                    "the projection {} is not there yet: model.toml points at it; put it there or pass --projection",
                    spec.projection.weights.display()
                );
            }
            println!("{}", c.model_file.display());
        }
        _ => bail!("give --model, or --base and --delta"),
    }
    Ok(true)
}
