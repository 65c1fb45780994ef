//! `minigpt4 train --stage 1|2 --data MANIFEST... --out DIR`: trains the projection.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};
use minigpt4_train::{Progress, Stage, TrainOptions};

#[derive(Args)]
pub struct TrainArgs {
    /// 1: alignment on image–caption pairs; 2: instruction tuning (taken from the checkpoint with --resume).
    #[arg(long, value_parser = ["1", "2"])]
    pub stage: Option<String>,
    /// JSONL manifests ({"image","caption","turns","source","split"}); only split "train" is read.
    #[arg(long, num_args = 1.., value_name = "MANIFEST")]
    pub data: Vec<PathBuf>,
    /// A preset name or a model file (TOML); its projection file need not exist yet.
    #[arg(long, short, default_value = "tiny")]
    pub model: String,
    /// Run directory: projection.safetensors, checkpoints/, log.csv, loss.png, config.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps [stage 1: 20000, stage 2: 1000].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Samples per forward pass [stage 1: 32, stage 2: 12].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Forward passes per optimizer step [stage 1: 8, stage 2: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [stage 1: 1e-4, stage 2: 3e-5].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine [stage 1: 8e-5, stage 2: 1e-5].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Learning rate at the start of the warm-up [1e-6].
    #[arg(long)]
    pub warmup_lr: Option<f64>,
    /// Warm-up steps [stage 1: steps/4, stage 2: min(200, steps/5)].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay, applied to the weight, not the bias [0.05].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Seeds the initial projection, the data order and the stage-2 instruction draws [42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Target tokens kept per sample [stage 1: 32, stage 2: 160].
    #[arg(long)]
    pub max_txt_len: Option<usize>,
    /// Checkpoint every N steps [steps/10, at most 1000].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Checkpoints to keep, newest first; 0 keeps all [3].
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Continue from the newest checkpoint in --out (exactly as if never stopped).
    #[arg(long)]
    pub resume: bool,
    /// Starting projection: a stage-1 projection/checkpoint or a MiniGPT-4 .pth [random].
    #[arg(long, value_name = "PROJECTION")]
    pub init: Option<PathBuf>,
    /// Starting projection when there is no --init: `random` (MiniGPT-4's), `nouns`, a closed-form
    /// ridge fit of each image's mean feature onto its caption noun's embedding, or `classes`
    /// (a classifier encoder): each class's probability mapped onto its noun's embedding, or
    /// `classes+nouns`: that, refined toward the training captions' nouns by a ridge fit [random].
    #[arg(long, value_name = "HOW", value_parser = ["random", "nouns", "classes", "classes+nouns"])]
    pub warm_start: Option<String>,
    /// `--warm-start classes`: the class table (TSV with a `noun` column, one row per class, in
    /// class order), e.g. assets/tiny/imagenet_classes.tsv.
    #[arg(long, value_name = "TSV")]
    pub class_names: Option<PathBuf>,
    /// Feature cache root [$MINIGPT4_HOME/cache].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Images per vision-encoder pass while filling the feature cache.
    #[arg(long, default_value_t = 8)]
    pub feature_batch: usize,
    /// No progress bars or status lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Returns whether the run finished.
pub fn run(args: TrainArgs) -> Result<bool> {
    let spec = ModelSpec::resolve(&args.model, &minigpt4_home())?;
    let mut o = TrainOptions::new(&args.out);
    o.stage = args.stage.as_deref().map(str::parse::<Stage>).transpose()?;
    o.data = args.data;
    o.steps = args.steps;
    o.batch = args.batch;
    o.grad_accum = args.grad_accum;
    o.lr = args.lr;
    o.min_lr = args.min_lr;
    o.warmup_lr = args.warmup_lr;
    o.warmup_steps = args.warmup;
    o.weight_decay = args.weight_decay;
    o.seed = args.seed;
    o.max_txt_len = args.max_txt_len;
    o.save_every = args.save_every;
    o.keep_checkpoints = args.keep_checkpoints;
    o.resume = args.resume;
    o.init = args.init;
    o.warm_start = args.warm_start.as_deref().map(str::parse).transpose()?;
    o.class_names = args.class_names;
    o.cache_dir = args.cache_dir;
    o.feature_batch = args.feature_batch;
    o.progress = if args.quiet { Progress::Quiet } else { Progress::Auto };
    o.device = candle_core::Device::cuda_if_available(0)?;

    let r = minigpt4_train::train(&spec, &o)?;
    if !args.quiet {
        eprintln!(
            "{} train records ({} held-out left alone), {} images ({} features computed, {} from cache), {} samples",
            r.records, r.heldout_records, r.images, r.features_computed, r.features_reused, r.samples
        );
        let skipped = r.skipped_lines.len() + r.skipped_images.len() + r.skipped_samples.len();
        if skipped > 0 {
            eprintln!(
                "skipped: {} manifest lines, {} images, {} samples (reasons above)",
                r.skipped_lines.len(),
                r.skipped_images.len(),
                r.skipped_samples.len()
            );
        }
        if let Some((step, loss)) = r.losses.last() {
            eprintln!(
                "step {step}: loss {loss:.4}; {} steps in {:.1}s ({:.2} samples/s){}",
                r.steps_this_session,
                r.train_seconds,
                r.samples_per_second,
                r.resumed_from.map(|s| format!(", resumed from step {s}")).unwrap_or_default()
            );
        }
        if let Some(p) = &r.projection {
            eprintln!("projection: {}  (use it with --projection {})", p.display(), p.display());
            eprintln!("log: {}  plot: {}", args.out.join("log.csv").display(), args.out.join("loss.png").display());
        }
    }
    Ok(r.projection.is_some())
}
