//! Training settings: the flags a user gives, the stage defaults that fill the rest,
//! and the check that a resumed run keeps every setting that changes its result.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::data::Stage;
use crate::distributed::Ranks;
use crate::optim::AdamWConfig;
use crate::progress::Progress;
use crate::schedule::LrSchedule;
use crate::warm_start::WarmStart;

/// Everything that determines a run's result, saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub stage: Stage,
    /// JSONL manifests (absolute paths).
    pub data: Vec<PathBuf>,
    /// Optimizer steps in the whole run.
    pub steps: usize,
    /// Samples per micro-batch (one LLM forward).
    pub batch: usize,
    /// Micro-batches per optimizer step; a step sees `batch × grad_accum` samples.
    pub grad_accum: usize,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    pub seed: u64,
    /// Target tokens kept per sample (32 in stage 1, 160 in stage 2).
    pub max_txt_len: usize,
    /// Caption words kept in stage 1 (LAVIS `max_words`).
    pub max_words: usize,
    /// Starting projection (a stage-1 result, a MiniGPT-4 `.pth`); random when absent.
    pub init: Option<PathBuf>,
    /// How the projection starts without `init` (older checkpoints: random).
    #[serde(default)]
    pub warm_start: WarmStart,
    /// The class table `--warm-start classes` reads (TSV with a `noun` column, one row per class).
    #[serde(default)]
    pub class_names: Option<PathBuf>,
    /// LoRA on the decoder, trained with the projection (stage 3, or `--lora`).
    #[serde(default)]
    pub lora: Option<LoraSettings>,
    /// Checkpoint every this many steps (does not change the result).
    pub save_every: usize,
    /// Checkpoints kept (the newest); 0 keeps all (does not change the result).
    pub keep_checkpoints: usize,
}

/// A trained LoRA adapter's shape (MiniGPT-v2: r = 64, α = 16 on q_proj and v_proj). A model
/// file's `[llm] lora` is the start when there is one, else a fresh adapter (PEFT's init: `A`
/// Kaiming-uniform, `B` zero, so training starts at the base model).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
}

/// What the caller asks for; `None` means "the stage default", or on `resume` "what the
/// checkpoint says". The flags of `minigpt4 train` are these fields (declared once, here; the
/// CLI flattens them), the rest are for library callers and tests.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainOptions {
    /// 1: alignment on image–caption pairs; 2: instruction tuning; 3: MiniGPT-v2's multi-task
    /// stage, instruction data with LoRA trained too (taken from the checkpoint with --resume).
    #[arg(long, value_name = "1|2|3")]
    pub stage: Option<Stage>,
    /// Train a LoRA adapter on the decoder's q_proj and v_proj with the projection (stage 3
    /// always does).
    #[arg(long)]
    pub lora: bool,
    /// LoRA rank of a fresh adapter [64].
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA α (scale α / r) [16, or the model file's lora_alpha].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// JSONL manifests ({"image","caption","turns","source","split"}); only split "train" is read.
    #[arg(long, num_args = 1.., value_name = "MANIFEST")]
    pub data: Vec<PathBuf>,
    /// Run directory: projection.safetensors, checkpoints/, log.csv, loss.png, config.json.
    #[arg(long, required_unless_present = "features_only", default_value = ".", hide_default_value = true)]
    pub out: PathBuf,
    /// Only fill the feature cache (--cache-dir) for the training records and stop; under
    /// mpirun each rank encodes its own share of the records.
    #[arg(long)]
    pub features_only: bool,
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
    #[arg(long = "warmup")]
    pub warmup_steps: Option<usize>,
    /// AdamW weight decay, applied to the weight, not the bias [0.05].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Seeds the initial projection, the data order and the stage-2 instruction draws [42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Target tokens kept per sample [stage 1: 32, stage 2: 160].
    #[arg(long)]
    pub max_txt_len: Option<usize>,
    /// Starting projection: a stage-1 projection/checkpoint or a MiniGPT-4 .pth [random].
    #[arg(long, value_name = "PROJECTION")]
    pub init: Option<PathBuf>,
    /// Starting projection when there is no --init: `random` (MiniGPT-4's), `nouns`, a closed-form
    /// ridge fit of each image's mean feature onto its caption noun's embedding, or `classes`
    /// (a classifier encoder): each class's probability mapped onto its noun's embedding, or
    /// `classes+nouns`: that, refined toward the training captions' nouns by a ridge fit [random].
    #[arg(long, value_name = "random|nouns|classes|classes+nouns")]
    pub warm_start: Option<WarmStart>,
    /// `--warm-start classes`: the class table (TSV with a `noun` column, one row per class, in
    /// class order), e.g. assets/tiny/imagenet_classes.tsv.
    #[arg(long, value_name = "TSV")]
    pub class_names: Option<PathBuf>,
    /// Checkpoint every N steps [steps/10, at most 1000].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Checkpoints to keep, newest first; 0 keeps all [3].
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Continue from the newest checkpoint in --out (exactly as if never stopped; starts fresh
    /// when there is none).
    #[arg(long)]
    pub resume: bool,
    /// Feature cache root [$MINIGPT4_HOME/cache].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Images per vision-encoder pass while filling the feature cache.
    #[arg(long, default_value_t = 8)]
    pub feature_batch: usize,
    /// Features kept in memory up to this many bytes, else read from the cache per batch.
    #[arg(skip = 1usize << 30)]
    pub feature_memory: usize,
    #[arg(skip = Progress::Auto)]
    pub progress: Progress,
    #[arg(skip = Device::Cpu)]
    pub device: Device,
    /// The ranks of a data-parallel run (one process alone unless started by mpirun).
    #[arg(skip)]
    pub ranks: Ranks,
    /// Stops after this many steps in total without finishing the run, as a crash would (for
    /// testing resume).
    #[arg(skip)]
    pub stop_after: Option<usize>,
}

impl TrainOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            stage: None,
            lora: false,
            lora_r: None,
            lora_alpha: None,
            data: Vec::new(),
            out: out.into(),
            steps: None,
            batch: None,
            grad_accum: None,
            lr: None,
            min_lr: None,
            warmup_lr: None,
            warmup_steps: None,
            weight_decay: None,
            seed: None,
            max_txt_len: None,
            init: None,
            warm_start: None,
            class_names: None,
            save_every: None,
            keep_checkpoints: None,
            resume: false,
            cache_dir: None,
            feature_batch: 8,
            feature_memory: 1 << 30,
            progress: Progress::Auto,
            device: Device::Cpu,
            ranks: Ranks::default(),
            stop_after: None,
            features_only: false,
        }
    }
}

fn absolute(p: &PathBuf) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
}

/// Stage defaults (MiniGPT-4's `train_configs/minigpt4_stage{1,2}_pretrain.yaml`, scaled to a CPU):
///
/// | | stage 1 | stage 2 |
/// |---|---|---|
/// | steps | 20,000 | 1,000 |
/// | batch × grad-accum | 32 × 8 (= 256) | 12 × 1 |
/// | lr: warm-up start → peak → floor | 1e-6 → 1e-4 → 8e-5 | 1e-6 → 3e-5 → 1e-5 |
/// | warm-up steps | steps / 4 (5,000 of 20,000) | min(200, steps / 5) |
/// | target tokens | 32 | 160 |
///
/// AdamW β = (0.9, 0.999), ε = 1e-8, weight decay 0.05 (weight only), seed 42, a checkpoint
/// every steps / 10 (at most 1,000), the newest 3 kept.
pub fn resolve(o: &TrainOptions, previous: Option<&TrainConfig>) -> Result<TrainConfig> {
    let stage =
        o.stage.or(previous.map(|p| p.stage)).ok_or_else(|| anyhow::anyhow!("--stage is required (1, 2 or 3)"))?;
    let data: Vec<PathBuf> = if o.data.is_empty() {
        previous.map(|p| p.data.clone()).unwrap_or_default()
    } else {
        o.data.iter().map(absolute).collect()
    };
    if data.is_empty() {
        bail!("no training data: pass --data MANIFEST.jsonl");
    }
    let (steps_d, batch_d, accum_d, lr_d, min_d, txt_d) = match stage {
        Stage::One => (20_000, 32, 8, 1e-4, 8e-5, 32),
        Stage::Two => (1_000, 12, 1, 3e-5, 1e-5, 160),
        // MiniGPT-v2's finetune config: lr 1e-5 down to 1e-6.
        Stage::Three => (1_000, 12, 1, 1e-5, 1e-6, 160),
    };
    let pick = |given: Option<usize>, prev: Option<usize>, default: usize| given.or(prev).unwrap_or(default);
    let pickf = |given: Option<f64>, prev: Option<f64>, default: f64| given.or(prev).unwrap_or(default);
    let steps = pick(o.steps, previous.map(|p| p.steps), steps_d);
    let warmup_d = match stage {
        Stage::One => steps / 4,
        Stage::Two | Stage::Three => 200.min(steps / 5),
    };
    let lora = match previous {
        Some(p) => p.lora,
        None if o.lora || stage == Stage::Three => {
            Some(LoraSettings { r: o.lora_r.unwrap_or(64), alpha: o.lora_alpha.unwrap_or(16.0) })
        }
        None => None,
    };
    if previous.is_none() && lora.is_none() && (o.lora_r.is_some() || o.lora_alpha.is_some()) {
        bail!("--lora-r and --lora-alpha are for LoRA training: add --lora (or --stage 3)");
    }
    if lora.is_some_and(|l| l.r == 0 || !(l.alpha > 0.0 && l.alpha.is_finite())) {
        bail!("--lora-r must be at least 1 and --lora-alpha positive");
    }
    let ps = previous.map(|p| p.schedule);
    let cfg = TrainConfig {
        stage,
        data,
        steps,
        batch: pick(o.batch, previous.map(|p| p.batch), batch_d),
        grad_accum: pick(o.grad_accum, previous.map(|p| p.grad_accum), accum_d),
        schedule: LrSchedule {
            warmup_lr: pickf(o.warmup_lr, ps.map(|s| s.warmup_lr), 1e-6),
            lr: pickf(o.lr, ps.map(|s| s.lr), lr_d),
            min_lr: pickf(o.min_lr, ps.map(|s| s.min_lr), min_d),
            warmup_steps: pick(o.warmup_steps, ps.map(|s| s.warmup_steps), warmup_d),
            total_steps: steps,
        },
        adamw: AdamWConfig {
            weight_decay: pickf(o.weight_decay, previous.map(|p| p.adamw.weight_decay), 0.05),
            ..previous.map(|p| p.adamw).unwrap_or_default()
        },
        seed: o.seed.or(previous.map(|p| p.seed)).unwrap_or(42),
        max_txt_len: pick(o.max_txt_len, previous.map(|p| p.max_txt_len), txt_d),
        max_words: previous.map(|p| p.max_words).unwrap_or(crate::caption::MAX_WORDS),
        init: o.init.as_ref().map(absolute).or(previous.and_then(|p| p.init.clone())),
        warm_start: o.warm_start.or(previous.map(|p| p.warm_start)).unwrap_or_default(),
        class_names: o.class_names.as_ref().map(absolute).or(previous.and_then(|p| p.class_names.clone())),
        save_every: pick(o.save_every, previous.map(|p| p.save_every), (steps / 10).clamp(1, 1000)),
        keep_checkpoints: pick(o.keep_checkpoints, previous.map(|p| p.keep_checkpoints), 3),
        lora,
    };
    if cfg.init.is_some() && cfg.warm_start != WarmStart::Random {
        bail!("--init and --warm-start both choose the starting projection; pass one");
    }
    if cfg.warm_start.uses_classes() != cfg.class_names.is_some() {
        bail!("--warm-start classes[+nouns] needs --class-names FILE, and --class-names is only for it");
    }
    if cfg.steps == 0 || cfg.batch == 0 || cfg.grad_accum == 0 || cfg.save_every == 0 {
        bail!("--steps, --batch, --grad-accum and --save-every must be at least 1");
    }
    let s = cfg.schedule;
    if !(s.lr > 0.0 && s.lr.is_finite() && s.min_lr >= 0.0 && s.warmup_lr >= 0.0) {
        bail!("learning rates must be finite, the peak positive and the others non-negative");
    }
    if !(0.0..1.0).contains(&cfg.adamw.weight_decay) {
        bail!("--weight-decay must be in [0, 1)");
    }
    if let Some(p) = previous {
        let diffs = differences(p, &cfg);
        if !diffs.is_empty() {
            bail!(
                "--resume with settings that differ from the checkpoint's ({}); a resumed run must keep them to continue exactly. \
                 Drop those flags, or start a new run in another --out",
                diffs.join("; ")
            );
        }
    }
    Ok(cfg)
}

/// The result-changing settings where `b` differs from `a` (checkpointing settings may change).
pub fn differences(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let mut d = Vec::new();
    let mut cmp = |name: &str, x: String, y: String| {
        if x != y {
            d.push(format!("{name}: {x} → {y}"));
        }
    };
    cmp("stage", format!("{:?}", a.stage), format!("{:?}", b.stage));
    cmp("data", format!("{:?}", a.data), format!("{:?}", b.data));
    cmp("steps", a.steps.to_string(), b.steps.to_string());
    cmp("batch", a.batch.to_string(), b.batch.to_string());
    cmp("grad-accum", a.grad_accum.to_string(), b.grad_accum.to_string());
    cmp("lr schedule", format!("{:?}", a.schedule), format!("{:?}", b.schedule));
    cmp("adamw", format!("{:?}", a.adamw), format!("{:?}", b.adamw));
    cmp("seed", a.seed.to_string(), b.seed.to_string());
    cmp("max-txt-len", a.max_txt_len.to_string(), b.max_txt_len.to_string());
    cmp("max-words", a.max_words.to_string(), b.max_words.to_string());
    cmp("init", format!("{:?}", a.init), format!("{:?}", b.init));
    cmp("warm-start", format!("{:?}", a.warm_start), format!("{:?}", b.warm_start));
    cmp("class-names", format!("{:?}", a.class_names), format!("{:?}", b.class_names));
    cmp("lora", format!("{:?}", a.lora), format!("{:?}", b.lora));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_defaults() {
        let mut o = TrainOptions::new("/tmp/x");
        o.data = vec!["/nonexistent/m.jsonl".into()];
        o.stage = Some(Stage::One);
        let c = resolve(&o, None).unwrap();
        assert_eq!((c.steps, c.batch, c.grad_accum, c.max_txt_len), (20_000, 32, 8, 32));
        assert_eq!(
            c.schedule,
            LrSchedule { warmup_lr: 1e-6, lr: 1e-4, min_lr: 8e-5, warmup_steps: 5000, total_steps: 20_000 }
        );
        o.stage = Some(Stage::Two);
        let c = resolve(&o, None).unwrap();
        assert_eq!((c.steps, c.batch, c.grad_accum, c.max_txt_len), (1000, 12, 1, 160));
        assert_eq!(
            c.schedule,
            LrSchedule { warmup_lr: 1e-6, lr: 3e-5, min_lr: 1e-5, warmup_steps: 200, total_steps: 1000 }
        );
        assert_eq!(c.adamw, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 });
        o.steps = Some(100);
        assert_eq!(resolve(&o, None).unwrap().schedule.warmup_steps, 20);
    }

    #[test]
    fn resume_keeps_settings_and_refuses_changes() {
        let mut o = TrainOptions::new("/tmp/x");
        o.data = vec!["/nonexistent/m.jsonl".into()];
        o.stage = Some(Stage::Two);
        o.steps = Some(50);
        o.lr = Some(1e-3);
        let first = resolve(&o, None).unwrap();
        let mut again = TrainOptions::new("/tmp/x");
        again.resume = true;
        assert_eq!(resolve(&again, Some(&first)).unwrap(), first);
        again.save_every = Some(7);
        assert_eq!(resolve(&again, Some(&first)).unwrap().save_every, 7);
        again.lr = Some(2e-3);
        let err = resolve(&again, Some(&first)).unwrap_err().to_string();
        assert!(err.contains("lr schedule"), "{err}");
    }
}
