//! `minigpt4 eval --data MANIFEST... [--label NAME] [--out DIR]`: describes held-out images and
//! scores the descriptions (BLEU-4, CIDEr-D, keyword hit rate); see `minigpt4_train::eval`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use minigpt4_data::Split;
use minigpt4_train::eval::{self, EvalOptions, ProjectionSource, DEFAULT_PROMPT};
use minigpt4_train::Progress;

#[derive(Args)]
pub struct EvalArgs {
    /// JSONL manifests ({"image","caption","turns","source","split"}); the caption is the reference.
    #[arg(long, required = true, num_args = 1.., value_name = "MANIFEST")]
    pub data: Vec<PathBuf>,
    /// Records of this split only.
    #[arg(long, default_value = "heldout", value_parser = ["heldout", "train", "all"])]
    pub split: String,
    /// A preset name or a model file (TOML).
    #[arg(long, short, default_value = "tiny")]
    pub model: String,
    /// How a dense LLM's matrices are held (none, f16, q8_0, q4_0, q4_k) [the model file's, else
    /// q8_0 above 1 B parameters on the CPU].
    #[arg(long, value_name = "none|f16|q8_0|q4_0|q4_k")]
    pub quantize: Option<minigpt4_core::llama::Quantize>,
    /// Use this projection instead of the model's (a `minigpt4 train` projection or checkpoint).
    #[arg(long, conflicts_with = "random_projection")]
    pub projection: Option<PathBuf>,
    /// Use an untrained projection, initialised as `minigpt4 train --seed SEED` starts (the baseline).
    #[arg(long, value_name = "SEED")]
    pub random_projection: Option<u64>,
    /// Evaluate the first N records of the split (manifests in the order given, lines in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Folder for eval.json, eval-<label>.json and eval.md (rows of earlier labels are kept).
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
    /// Row name in the table [random, the projection's run folder or file name, or the model].
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar or status lines (skipped images are still reported).
    #[arg(long, short)]
    pub quiet: bool,
}

fn default_label(args: &EvalArgs) -> String {
    if args.random_projection.is_some() {
        return "random".into();
    }
    if let Some(p) = &args.projection {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // runs/s1/projection.safetensors → s1
        if stem == "projection" {
            if let Some(dir) = p.parent().and_then(|d| d.file_name()) {
                return dir.to_string_lossy().into_owned();
            }
        }
        return stem;
    }
    args.model.clone()
}

/// Returns whether any image could be scored.
pub fn run(args: EvalArgs) -> Result<bool> {
    let spec = crate::ModelArgs { model: args.model.clone(), projection: None, quantize: args.quantize }.spec()?;
    let mut o =
        EvalOptions::new(args.data.clone(), &args.out, args.label.clone().unwrap_or_else(|| default_label(&args)));
    o.split = match args.split.as_str() {
        "heldout" => Some(Split::Heldout),
        "train" => Some(Split::Train),
        _ => None,
    };
    o.limit = args.limit;
    o.prompt = args.prompt.clone();
    o.max_new_tokens = args.max_new_tokens;
    o.projection = args.projection.clone();
    o.random_projection = args.random_projection;
    o.progress = if args.quiet { Progress::Quiet } else { Progress::Auto };
    o.device = candle_core::Device::cuda_if_available(0)?;

    if !args.quiet {
        let what = match (&o.projection, o.random_projection) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(seed)) => ProjectionSource::Random { seed }.describe(),
            (None, None) => "the model's".into(),
        };
        eprintln!("evaluating `{}` with projection {what}…", o.label);
    }
    let report = eval::evaluate(&spec, &args.model, &o)?;
    let c = &report.counts;
    if c.failed > 0 {
        eprintln!("{} of {} images failed and were skipped (errors in eval.json)", c.failed, c.selected);
    }
    if !args.quiet {
        eprintln!(
            "described {} of {} images in {:.1}s ({} records in the {} split, {} in all); results in {}",
            c.scored,
            c.selected,
            report.seconds,
            c.in_split,
            report.settings.split,
            c.records,
            args.out.display()
        );
    }
    let all = eval::read_reports(&args.out, &mut |m| eprintln!("warning: {m}"))?;
    print!("{}", eval::table(&all));
    Ok(report.metrics.is_some())
}
