//! The training loop: only `llama_proj` is a `Var`; the LLM runs in `Mode::Differentiable` so
//! gradients reach its input embeddings (and through them the projection) while its own
//! weights, plain tensors, get none.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var, D};
use minigpt4_core::llama::{Llama, Mode};
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};

use crate::checkpoint::{self, Checkpoint, BIAS, WEIGHT};
use crate::config::{self, TrainConfig, TrainOptions};
use crate::data::{self, DataOrder, Sample, Sequence, Texts};
use crate::distributed::{self, Ranks};
use crate::features::{self, FeatureCache, FeatureStore};
use crate::io::Digest;
use crate::log::{CsvLog, Row};
use crate::model::{self, Frozen};
use crate::optim::AdamW;
use crate::plot;
use crate::progress::Progress;
use crate::warm_start::{self, WarmStart};

/// Mean cross-entropy over the target tokens of a right-padded batch, and how many tokens
/// that is. `features` `[B, N, d_a]` are the cached adapter outputs of `seqs`' images (same
/// order), `weight`/`bias` the projection.
///
/// Each row is `embed(before) · proj(image) · embed(after) · embed(target[..-1])`, padded on
/// the right with zero vectors to the longest row. With right padding the causal mask already
/// keeps padding from influencing real positions, and padded positions carry no label.
pub fn batch_loss(
    llm: &Llama,
    seqs: &[Sequence],
    features: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<(Tensor, usize)> {
    let device = llm.device();
    let img = features.broadcast_matmul(&weight.t()?)?.broadcast_add(bias)?.to_dtype(llm.dtype())?;
    let (b, n_img, d) = img.dims3()?;
    if b != seqs.len() {
        bail!("{} feature rows for {} sequences", b, seqs.len());
    }
    let t_max = seqs.iter().map(|s| s.input_len(n_img)).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(b);
    let (mut positions, mut labels) = (Vec::new(), Vec::new());
    for (i, s) in seqs.iter().enumerate() {
        let mut parts = Vec::with_capacity(5);
        if !s.before.is_empty() {
            parts.push(llm.embed(&s.before)?);
        }
        parts.push(img.narrow(0, i, 1)?);
        if !s.after.is_empty() {
            parts.push(llm.embed(&s.after)?);
        }
        let target_in = &s.target[..s.target.len().saturating_sub(1)];
        if !target_in.is_empty() {
            parts.push(llm.embed(target_in)?);
        }
        let len = s.input_len(n_img);
        if len < t_max {
            parts.push(Tensor::zeros((1, t_max - len, d), llm.dtype(), device)?);
        }
        rows.push(Tensor::cat(&parts, 1)?);
        for (p, l) in s.labels(n_img).into_iter().enumerate() {
            if let Some(id) = l {
                positions.push((i * t_max + p) as u32);
                labels.push(id);
            }
        }
    }
    if labels.is_empty() {
        bail!("a batch without target tokens");
    }
    let x = Tensor::cat(&rows, 0)?;
    let picked = llm.forward_at(&x, &positions, Mode::Differentiable)?.to_dtype(candle_core::DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
    let ids = Tensor::new(labels.as_slice(), device)?.unsqueeze(1)?;
    let loss = logp.gather(&ids, 1)?.neg()?.mean_all()?;
    Ok((loss, labels.len()))
}

/// What a run did.
#[derive(Debug, Default)]
pub struct TrainReport {
    pub out: PathBuf,
    /// `DIR/projection.safetensors` once the run finished.
    pub projection: Option<PathBuf>,
    pub steps_done: usize,
    pub resumed_from: Option<usize>,
    /// Stopped by `stop_after` before the end.
    pub interrupted: bool,
    /// (step, loss) of every step in the log, including earlier sessions of a resumed run.
    pub losses: Vec<(usize, f64)>,
    pub records: usize,
    pub heldout_records: usize,
    pub images: usize,
    pub samples: usize,
    pub features_computed: usize,
    pub features_reused: usize,
    pub skipped_lines: Vec<String>,
    pub skipped_images: Vec<(PathBuf, String)>,
    pub skipped_samples: Vec<String>,
    /// Wall time of the steps run in this session and their throughput.
    pub train_seconds: f64,
    /// Of `train_seconds`, the time spent summing gradients over ranks (0 in one process) and,
    /// before that, waiting for the slowest rank.
    pub all_reduce_seconds: f64,
    pub wait_seconds: f64,
    /// Ranks that trained (1 in one process).
    pub ranks: usize,
    pub steps_this_session: usize,
    pub samples_per_second: f64,
    pub feature_seconds: f64,
}

pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub seconds: f64,
    /// Of `seconds`, waiting for the other ranks to finish their shares.
    pub wait_seconds: f64,
    /// Of `seconds`, the all-reduce of the gradients.
    pub all_reduce_seconds: f64,
    /// Target tokens of the global batch (every rank's share).
    pub target_tokens: usize,
}

pub struct Trainer {
    pub frozen: Frozen,
    pub config: TrainConfig,
    pub out: PathBuf,
    pub texts: Texts,
    pub samples: Vec<Sample>,
    pub features: FeatureStore,
    pub image_keys: Vec<String>,
    pub opt: AdamW,
    /// Optimizer steps done.
    pub step: usize,
    pub samples_seen: u64,
    order: DataOrder,
    progress: Progress,
    stop_after: Option<usize>,
    elapsed_before: f64,
    data_digest: String,
    encoder_fingerprint: String,
    llm_digest: String,
    log: CsvLog,
    ranks: Ranks,
    /// The decoder's weights, named in a trained adapter's config.
    base_llm: PathBuf,
    pub report: TrainReport,
}

fn llm_digest(spec: &ModelSpec) -> Result<String> {
    let mut d = Digest::default();
    features::digest_file(&mut d, &spec.llm.weights)?;
    for p in spec.llm.config.iter().chain(&spec.llm.tokenizer).chain(&spec.llm.lora) {
        features::digest_file(&mut d, p)?;
    }
    d.update_str(spec.template.name());
    Ok(d.hex())
}

/// Prepares the run directory: the checkpoint to resume from (with `resume`), else a check
/// that the directory holds no other run.
fn open_run(
    out: &Path,
    resume: bool,
    device: &candle_core::Device,
    progress: &Progress,
    ranks: &Ranks,
) -> Result<Option<Checkpoint>> {
    if ranks.is_root() {
        checkpoint::remove_stale_temporaries(out);
    }
    if !resume {
        if !checkpoint::list(out).is_empty() || out.join("projection.safetensors").exists() {
            bail!(
                "{} already holds a training run; pass --resume to continue it, or choose another --out",
                out.display()
            );
        }
        return Ok(None);
    }
    let mut warn = |m: String| progress.warn(None, &m);
    let c = checkpoint::latest(out, device, &mut warn);
    if c.is_none() {
        progress.warn(None, &format!("--resume: no checkpoint in {}, starting from the beginning", out.display()));
    }
    Ok(c)
}

/// The cached features of the records' images.
struct RecordImages {
    extraction: features::Extraction,
    /// Distinct usable images, by content.
    keys: Vec<String>,
    /// Each record's image in `keys`, `None` when it was skipped.
    of_record: Vec<Option<usize>>,
}

/// The frozen image side as feature extraction uses it.
struct Encoder<'a> {
    encode: &'a dyn Fn(&Tensor) -> minigpt4_core::Result<Tensor>,
    image: &'a minigpt4_core::image::ImageConfig,
    limits: &'a minigpt4_core::image::Limits,
}

/// Makes sure every distinct image of `records` has its features in `cache` (computing what is
/// missing), and numbers the usable ones by content.
///
/// With several ranks, each encodes the images of its own share of the records (every
/// `size`-th distinct image) into the cache, which must be on a file system all ranks share,
/// and the ranks then swap the images' keys ([`gather_extraction`]).
fn cache_image_features(
    records: &[minigpt4_data::Record],
    encoder: &Encoder,
    cache: &FeatureCache,
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<RecordImages> {
    let progress = opts.progress;
    let ranks = &opts.ranks;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut index_of: HashMap<PathBuf, usize> = HashMap::new();
    for r in records {
        if !index_of.contains_key(&r.image) {
            index_of.insert(r.image.clone(), paths.len());
            paths.push(r.image.clone());
        }
    }
    let extract = |paths: &[PathBuf], progress: &Progress| {
        features::extract(
            encoder.encode,
            paths,
            cache,
            encoder.image,
            encoder.limits,
            &opts.device,
            opts.feature_batch,
            progress,
        )
    };
    let t0 = Instant::now();
    let extraction = if ranks.size() == 1 {
        extract(&paths, &progress)?
    } else {
        let mine: Vec<usize> = (ranks.rank()..paths.len()).step_by(ranks.size()).collect();
        let own = extract(&mine.iter().map(|&i| paths[i].clone()).collect::<Vec<_>>(), &progress)?;
        gather_extraction(ranks, &paths, &mine, own, cache)?
    };
    report.feature_seconds = t0.elapsed().as_secs_f64();
    for (p, why) in &extraction.skipped {
        progress.warn(None, &format!("skipped image {}: {why}", p.display()));
    }
    report.skipped_images = extraction.skipped.clone();
    report.features_computed = extraction.computed;
    report.features_reused = extraction.reused;

    let mut keys: Vec<String> = Vec::new();
    let mut key_index: HashMap<String, usize> = HashMap::new();
    let path_image: Vec<Option<usize>> = extraction
        .keys
        .iter()
        .map(|k| {
            k.as_ref().map(|k| {
                *key_index.entry(k.clone()).or_insert_with(|| {
                    keys.push(k.clone());
                    keys.len() - 1
                })
            })
        })
        .collect();
    let of_record = records.iter().map(|r| path_image[index_of[&r.image]]).collect();
    Ok(RecordImages { extraction, keys, of_record })
}

/// Every image's key from every rank's share (a rank only read its own images), so that all ranks
/// number the images alike. Keys travel as fixed-width byte slots, zero where an image was
/// skipped; each rank reports (on rank 0) the images the others could not use.
fn gather_extraction(
    ranks: &Ranks,
    paths: &[PathBuf],
    mine: &[usize],
    own: features::Extraction,
    cache: &FeatureCache,
) -> Result<features::Extraction> {
    const SLOT: usize = 48;
    let mut slots = vec![0u8; paths.len() * SLOT];
    for (&i, key) in mine.iter().zip(&own.keys) {
        if let Some(k) = key {
            anyhow::ensure!(k.len() < SLOT && !k.is_empty(), "image key {k:?} does not fit its slot");
            slots[i * SLOT..i * SLOT + k.len()].copy_from_slice(k.as_bytes());
        }
    }
    ranks.max_u8(&mut slots)?;
    let mut counts = [own.computed as f64, own.reused as f64];
    ranks.sum_f64(&mut counts)?;
    let mut all = features::Extraction {
        computed: counts[0] as usize,
        reused: counts[1] as usize,
        skipped: own.skipped,
        ..Default::default()
    };
    for (i, slot) in slots.chunks_exact(SLOT).enumerate() {
        let key = std::str::from_utf8(slot).context("an image key from another rank")?.trim_end_matches('\0');
        if !key.is_empty() {
            all.keys.push(Some(key.to_string()));
        } else {
            all.keys.push(None);
            if i % ranks.size() != ranks.rank() {
                let why = format!("not usable (reported by rank {})", i % ranks.size());
                all.skipped.push((paths[i].clone(), why));
            }
        }
    }
    all.shape = match own.shape {
        Some(s) => Some(s),
        None => all.keys.iter().flatten().next().and_then(|k| cache.probe(k)),
    };
    Ok(all)
}

/// Refuses to resume `c` when what its steps were computed from has changed.
fn check_resume(c: &Checkpoint, data_digest: &str, fingerprint: &str, llm_digest: &str) -> Result<()> {
    let mut why = Vec::new();
    if c.data_digest != data_digest {
        why.push("the training samples (manifests, images or tokenizer) changed");
    }
    if c.encoder_fingerprint != fingerprint {
        why.push("the vision encoder / adapter changed");
    }
    if c.llm_digest != llm_digest {
        why.push("the LLM or template changed");
    }
    if !why.is_empty() {
        bail!("cannot resume from {}: {}", c.path.display(), why.join("; "));
    }
    Ok(())
}

/// What a warm start fits the projection to.
struct WarmStartContext<'a> {
    spec: &'a ModelSpec,
    records: &'a [minigpt4_data::Record],
    image_of: &'a [Option<usize>],
    features: &'a FeatureStore,
}

/// The projection a `--warm-start` computes (and records as the run's start), from the cached
/// features and the frozen LLM's embeddings; `start` gives the dtype (and is returned unchanged
/// when the warm start is `random`).
fn warm_start_projection(
    config: &TrainConfig,
    ctx: &WarmStartContext,
    frozen: &Frozen,
    init_record: Option<&Path>,
    progress: &Progress,
    start: (&Tensor, &Tensor),
) -> Result<(Tensor, Tensor)> {
    let (weight0, bias0) = start;
    let (records, image_of, features) = (ctx.records, ctx.image_of, ctx.features);
    Ok(if config.warm_start == WarmStart::Nouns {
        let t = Instant::now();
        let targets = warm_start::noun_targets(records, image_of, features, &frozen.llm, &frozen.tokenizer)?;
        let f = warm_start::fit_nouns(&targets)?;
        let meta = [("init".to_string(), "nouns".to_string()), ("records".to_string(), f.records.to_string())].into();
        if let Some(path) = init_record {
            checkpoint::save_projection(path, &f.weight, &f.bias, meta)?;
        }
        progress.status(&format!(
            "warm start: ridge fit of {} images onto {} caption nouns in {:.1}s",
            f.records,
            f.distinct_nouns,
            t.elapsed().as_secs_f64()
        ));
        (f.weight.to_dtype(weight0.dtype())?, f.bias.to_dtype(bias0.dtype())?)
    } else if config.warm_start.uses_classes() {
        let table = config.class_names.as_ref().expect("checked by the config");
        let nouns = warm_start::read_class_nouns(table)?;
        // The class slots are the first columns; a classifier next to another encoder leaves
        // that encoder's columns at zero for the refit (or stage 2) to fill.
        let Some((slots, classes)) = model::class_slots(ctx.spec)? else {
            bail!("--warm-start classes needs a classifier: an efficientnet_lite encoder with the `classes` adapter, or a [classifier]");
        };
        if nouns.len() != classes {
            bail!("{} names {} classes, but the classifier has {classes}", table.display(), nouns.len());
        }
        let (d_llm, d_in) = weight0.dims2()?;
        let rest = d_in - slots * classes;
        let (w, mut b) = warm_start::fit_classes(&nouns, slots, &frozen.llm, &frozen.tokenizer)?;
        let mut w = Tensor::cat(&[&w, &Tensor::zeros((d_llm, rest), w.dtype(), w.device())?], 1)?;
        progress.status(&format!("warm start: {} class nouns from {}", nouns.len(), table.display()));
        if config.warm_start == WarmStart::ClassesNouns {
            let targets = warm_start::noun_targets(records, image_of, features, &frozen.llm, &frozen.tokenizer)?;
            let f = warm_start::refit_toward(&w, &targets)?;
            progress.status(&format!(
                "warm start: refined on {} images' caption nouns ({} distinct)",
                f.records, f.distinct_nouns
            ));
            (w, b) = (f.weight, f.bias);
        }
        let meta = [
            ("init".to_string(), format!("{:?}", config.warm_start)),
            ("classes".to_string(), nouns.len().to_string()),
        ]
        .into();
        if let Some(path) = init_record {
            checkpoint::save_projection(path, &w, &b, meta)?;
        }
        (w.to_dtype(weight0.dtype())?, b.to_dtype(bias0.dtype())?)
    } else {
        (weight0.clone(), bias0.clone())
    })
}

/// AdamW over the projection starting at `weight`/`bias`, with the moments, step, samples seen
/// and elapsed time of `resume` when there is one.
fn optimizer(
    config: &TrainConfig,
    weight: &Tensor,
    bias: &Tensor,
    lora: Vec<(String, Var)>,
    resume: Option<&Checkpoint>,
) -> Result<(AdamW, usize, u64, f64)> {
    let mut params =
        vec![(WEIGHT.into(), Var::from_tensor(weight)?, true), (BIAS.into(), Var::from_tensor(bias)?, false)];
    // LoRA matrices decay like the projection's weight (LAVIS decays every parameter of 2 or more
    // dimensions).
    params.extend(lora.into_iter().map(|(name, var)| (name, var, true)));
    let mut opt = AdamW::new(config.adamw, params)?;
    let Some(c) = resume else { return Ok((opt, 0, 0, 0.0)) };
    if c.samples_seen != (c.step * config.batch * config.grad_accum) as u64 {
        bail!("{}: {} samples seen does not match {} steps", c.path.display(), c.samples_seen, c.step);
    }
    opt.step = c.step;
    for (name, (m, v)) in [(WEIGHT, &c.weight_moments), (BIAS, &c.bias_moments)] {
        let p = opt.param_mut(name).expect("the optimizer holds weight and bias");
        (p.exp_avg, p.exp_avg_sq) = (m.clone(), v.clone());
    }
    for (name, _, m, v) in &c.lora {
        let p = opt
            .param_mut(name)
            .with_context(|| format!("{}: `{name}` is not a LoRA matrix of this decoder", c.path.display()))?;
        (p.exp_avg, p.exp_avg_sq) = (m.clone(), v.clone());
    }
    Ok((opt, c.step, c.samples_seen, c.elapsed_s))
}

impl Trainer {
    /// Everything before the first step: settings, model, data, feature cache, optimizer (and
    /// the checkpoint to resume from).
    pub fn prepare(spec: &ModelSpec, opts: &TrainOptions) -> Result<Self> {
        let progress = opts.progress;
        let out = opts.out.clone();
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let device = &opts.device;

        let ranks = opts.ranks.clone();
        let resume_from = open_run(&out, opts.resume, device, &progress, &ranks)?;
        // No rank writes before every rank has checked the run directory.
        ranks.barrier()?;
        let config = config::resolve(opts, resume_from.as_ref().map(|c| &c.config))?;
        distributed::check_batch(config.batch, ranks.size())?;

        // The projection to start from: a checkpoint to resume, `--init`, or a random start for
        // the seed (also written to the run directory, as the record of where it began).
        let start = match (&resume_from, &config.init) {
            (Some(c), _) => model::Start::File(&c.path),
            (None, Some(init)) => model::Start::File(init),
            (None, None) => model::Start::Random(config.seed),
        };
        // A trained adapter must stay a side product (a merged one would take no gradient): the
        // decoder is loaded without it and the adapter added as variables below.
        let mut load_spec = spec.clone();
        if config.lora.is_some() {
            load_spec.llm.lora = None;
        }
        let (mut frozen, weight0, bias0) = model::load(&load_spec, device, start)?;
        let (out_dim, in_dim) = weight0.dims2()?;
        // Where the run began, kept in the run directory (a warm start below replaces it).
        let init_record = out.join("projection-init.safetensors");
        if let (model::Start::Random(seed), true) = (start, ranks.is_root()) {
            model::write_random_projection(&init_record, in_dim, out_dim, seed, device)?;
        }

        // Data: the training split only.
        let train = data::read_train_records(&config.data)?;
        let mut report = TrainReport {
            out: out.clone(),
            heldout_records: train.heldout,
            records: train.records.len(),
            ..Default::default()
        };
        for l in &train.skipped_lines {
            progress.warn(None, &format!("skipped manifest line {l}"));
        }
        report.skipped_lines = train.skipped_lines.clone();

        // Features of every distinct image, cached on disk.
        let fingerprint = features::encoder_fingerprint(spec, &frozen.image)?;
        let cache_root = opts.cache_dir.clone().unwrap_or_else(|| minigpt4_home().join("cache"));
        let cache = FeatureCache::new(&cache_root, &fingerprint);
        let encoder = Encoder { encode: &|px| frozen.image_features(px), image: &frozen.image, limits: &frozen.limits };
        let images = cache_image_features(&train.records, &encoder, &cache, opts, &mut report)?;
        let (extraction, image_keys, image_of) = (images.extraction, images.keys, images.of_record);

        let texts = Texts::new(
            config.stage,
            frozen.tokenizer.clone(),
            frozen.template,
            frozen.bos(),
            config.max_txt_len,
            config.max_words,
        )?;
        let (samples, skipped_samples) = texts.build(&train.records, &image_of)?;
        for s in &skipped_samples {
            progress.warn(None, &format!("skipped sample {s}"));
        }
        report.skipped_samples = skipped_samples;
        if samples.is_empty() {
            bail!(
                "no usable training samples in {} ({} train records, {} images skipped, {} samples skipped)",
                config.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                train.records.len(),
                report.skipped_images.len(),
                report.skipped_samples.len()
            );
        }
        let used: HashSet<usize> = samples.iter().map(|s| s.image).collect();
        report.images = used.len();
        report.samples = samples.len();
        let shape = extraction.shape.clone().context("no image features")?;
        let features = FeatureStore::new(
            FeatureCache::new(&cache_root, &fingerprint),
            image_keys.clone(),
            &shape,
            device,
            opts.feature_memory,
        )?;

        let data_digest = data::samples_digest(&samples, &image_keys);
        let llm_digest = llm_digest(spec)?;
        if let Some(c) = &resume_from {
            check_resume(c, &data_digest, &fingerprint, &llm_digest)?;
        }

        let (weight0, bias0) = match (&resume_from, &config.init, config.warm_start) {
            (None, None, warm) if warm != WarmStart::Random => {
                let ctx = WarmStartContext { spec, records: &train.records, image_of: &image_of, features: &features };
                let record = ranks.is_root().then_some(init_record.as_path());
                warm_start_projection(&config, &ctx, &frozen, record, &progress, (&weight0, &bias0))?
            }
            _ => (weight0, bias0),
        };
        let lora_vars = match config.lora {
            Some(settings) => {
                let saved = resume_from.as_ref().map(|c| c.lora.as_slice());
                let adapter = crate::lora::start(&frozen.llm, spec, settings, config.seed, saved, device)?;
                frozen.llm.add_trainable_lora(&adapter)?
            }
            None => Vec::new(),
        };
        let (opt, step, samples_seen, elapsed_before) =
            optimizer(&config, &weight0, &bias0, lora_vars, resume_from.as_ref())?;
        report.resumed_from = resume_from.as_ref().map(|c| c.step);
        let log = if ranks.is_root() { CsvLog::open(&out.join("log.csv"), step)? } else { CsvLog::detached() };
        report.ranks = ranks.size();

        let summary = serde_json::json!({
            "config": config,
            "model": spec,
            "projection_dims": [in_dim, out_dim],
            "encoder_fingerprint": fingerprint,
            "feature_cache": cache.dir,
            "data_digest": data_digest,
            "records": report.records,
            "heldout_records_ignored": report.heldout_records,
            "images": report.images,
            "samples": report.samples,
        });
        if ranks.is_root() {
            crate::io::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
        }

        Ok(Self {
            order: DataOrder::new(config.seed, samples.len()),
            frozen,
            out,
            texts,
            samples,
            features,
            image_keys,
            opt,
            step,
            samples_seen,
            progress,
            stop_after: opts.stop_after,
            elapsed_before,
            data_digest,
            encoder_fingerprint: fingerprint,
            llm_digest,
            log,
            ranks,
            base_llm: spec.llm.weights.clone(),
            report,
            config,
        })
    }

    pub fn weight(&self) -> &Var {
        &self.opt.param(WEIGHT).expect("the optimizer holds the weight").var
    }

    pub fn bias(&self) -> &Var {
        &self.opt.param(BIAS).expect("the optimizer holds the bias").var
    }

    /// The sequences of the `b` samples drawn from stream position `start`.
    pub fn draw(&mut self, start: u64, b: usize) -> Vec<Sequence> {
        (0..b as u64)
            .map(|i| {
                let (epoch, pos, idx) = self.order.at(start + i);
                self.texts.sequence(&self.samples[idx], self.config.seed, epoch, pos)
            })
            .collect()
    }

    /// One optimizer step: `grad_accum` micro-batches, gradients summed (each micro-batch loss
    /// divided by `grad_accum`), then AdamW.
    ///
    /// With several ranks, each micro-batch of the global sample order is split into contiguous
    /// shares (rank order) of about equal length in positions. A rank's loss is the sum of its tokens' cross-entropies divided by the
    /// target tokens of the *whole* micro-batch, so the sum over ranks of their gradients is the
    /// single-process gradient of the micro-batch mean (up to summation order); every rank then
    /// takes the same AdamW step from the same summed gradient.
    pub fn step(&mut self) -> Result<StepStats> {
        let t0 = Instant::now();
        let lr = self.config.schedule.at(self.step);
        let (b, k) = (self.config.batch, self.config.grad_accum);
        let params: Vec<Tensor> = self.opt.params.iter().map(|p| p.var.as_tensor().clone()).collect();
        let (w, bias) = (&params[0], &params[1]);
        let mut acc: Option<Vec<Tensor>> = None;
        let (mut loss_sum, mut tokens) = (0f64, 0usize);
        for micro in 0..k {
            // Every rank draws the whole micro-batch (tokenized text only) to know its token count.
            let mut seqs = self.draw(self.samples_seen + (micro * b) as u64, b);
            let micro_tokens = seqs.iter().map(Sequence::target_tokens).sum::<usize>();
            let n_img = self.features.tokens();
            let lengths: Vec<usize> = seqs.iter().map(|s| s.input_len(n_img)).collect();
            let (lo, hi) = distributed::share_by_cost(&lengths, self.ranks.rank(), self.ranks.size());
            let seqs: Vec<Sequence> = seqs.drain(lo..hi).collect();
            let feats = seqs.iter().map(|s| self.features.get(s.image)).collect::<Result<Vec<_>>>()?;
            let feats = Tensor::cat(&feats, 0)?;
            let (loss, n) = batch_loss(&self.frozen.llm, &seqs, &feats, w, bias)?;
            // n == micro_tokens in one process, where this is exactly loss / k.
            let scaled = (loss * (n as f64 / (micro_tokens * k) as f64))?;
            let grads = scaled.backward()?;
            let g = self
                .opt
                .params
                .iter()
                .zip(&params)
                .map(|(p, t)| grads.get(t).cloned().with_context(|| format!("no gradient reached {}", p.name)))
                .collect::<Result<Vec<_>>>()?;
            acc = Some(match acc {
                None => g,
                Some(a) => a.iter().zip(&g).map(|(a, g)| a + g).collect::<candle_core::Result<Vec<_>>>()?,
            });
            loss_sum += f64::from(scaled.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
            tokens += micro_tokens;
        }
        let mut grads = acc.expect("grad_accum ≥ 1");
        let (mut wait_seconds, mut all_reduce_seconds) = (0.0, 0.0);
        if self.ranks.size() > 1 {
            // Waiting for the slowest rank (uneven shares, a busy core) is timed apart from
            // the communication itself.
            let t_wait = Instant::now();
            self.ranks.barrier()?;
            wait_seconds = t_wait.elapsed().as_secs_f64();
            let t_reduce = Instant::now();
            // One all-reduce for every trained tensor together.
            let flat =
                Tensor::cat(&grads.iter().map(|g| g.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?, 0)?;
            let summed = self.ranks.all_reduce_sum(&flat)?;
            let mut at = 0;
            for g in grads.iter_mut() {
                let n = g.elem_count();
                *g = summed.narrow(0, at, n)?.reshape(g.shape())?;
                at += n;
            }
            let mut loss = [loss_sum];
            self.ranks.sum_f64(&mut loss)?;
            loss_sum = loss[0];
            all_reduce_seconds = t_reduce.elapsed().as_secs_f64();
        }
        if !loss_sum.is_finite() {
            bail!("the loss became {loss_sum} at step {} (lr {lr:e}); the last checkpoint is intact", self.step + 1);
        }
        self.opt.update(&grads, lr)?;
        self.step += 1;
        self.samples_seen += (b * k) as u64;
        Ok(StepStats {
            loss: loss_sum,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
            wait_seconds,
            all_reduce_seconds,
            target_tokens: tokens,
        })
    }

    /// Writes a checkpoint (rank 0; the others only return the path it has).
    pub fn checkpoint(&self, elapsed_s: f64) -> Result<PathBuf> {
        let path = checkpoint::checkpoint_path(&self.out, self.step);
        if !self.ranks.is_root() {
            return Ok(path);
        }
        let p = &self.opt.params;
        Checkpoint {
            path: path.clone(),
            step: self.step,
            samples_seen: self.samples_seen,
            elapsed_s,
            config: self.config.clone(),
            data_digest: self.data_digest.clone(),
            encoder_fingerprint: self.encoder_fingerprint.clone(),
            llm_digest: self.llm_digest.clone(),
            weight: p[0].var.as_tensor().clone(),
            bias: p[1].var.as_tensor().clone(),
            weight_moments: (p[0].exp_avg.clone(), p[0].exp_avg_sq.clone()),
            bias_moments: (p[1].exp_avg.clone(), p[1].exp_avg_sq.clone()),
            lora: p[2..]
                .iter()
                .map(|p| (p.name.clone(), p.var.as_tensor().clone(), p.exp_avg.clone(), p.exp_avg_sq.clone()))
                .collect(),
        }
        .save()?;
        checkpoint::prune(&self.out, self.config.keep_checkpoints);
        self.plot()?;
        Ok(path)
    }

    fn plot(&self) -> Result<()> {
        let pts: Vec<(usize, f64)> = self.log.rows.iter().map(|r| (r.step, r.loss)).collect();
        plot::loss_png(&self.out.join("loss.png"), &pts, &format!("stage {} training loss", self.config.stage.number()))
    }

    /// Runs the remaining steps, checkpointing every `save_every`, and writes the final
    /// projection, log and plot.
    pub fn run(mut self) -> Result<TrainReport> {
        // The encoder's work is in the cache now; free its memory for the LLM.
        self.frozen.vision = None;
        let total = self.config.steps;
        let bar = self.progress.bar(total as u64, "train");
        bar.set_position(self.step as u64);
        let session = Instant::now();
        let start_step = self.step;
        let print_every = (total / 20).max(1);
        let mut last_saved = self.step;
        while self.step < total {
            if self.stop_after == Some(self.step) {
                self.report.interrupted = true;
                break;
            }
            let s = self.step()?;
            self.report.all_reduce_seconds += s.all_reduce_seconds;
            self.report.wait_seconds += s.wait_seconds;
            let sps = (self.config.batch * self.config.grad_accum) as f64 / s.seconds.max(1e-9);
            let elapsed = self.elapsed_before + session.elapsed().as_secs_f64();
            self.log.push(Row { step: self.step, loss: s.loss, lr: s.lr, samples_per_s: sps, elapsed_s: elapsed })?;
            let avg = ((self.step - start_step) * self.config.batch * self.config.grad_accum) as f64
                / session.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {:.4} lr {:.2e} {avg:.1} samples/s", s.loss, s.lr));
            bar.set_position(self.step as u64);
            if !self.progress.is_terminal() && (self.step.is_multiple_of(print_every) || self.step == total) {
                self.progress.line(
                    &bar,
                    &format!("step {}/{total} loss {:.4} lr {:.2e} {:.1} samples/s", self.step, s.loss, s.lr, sps),
                );
            }
            if self.step.is_multiple_of(self.config.save_every) || self.step == total {
                let p = self.checkpoint(elapsed)?;
                last_saved = self.step;
                if self.step < total {
                    self.progress.line(&bar, &format!("checkpoint {}", p.display()));
                }
            }
        }
        bar.finish_and_clear();
        let secs = session.elapsed().as_secs_f64();
        self.report.steps_this_session = self.step - start_step;
        self.report.train_seconds = secs;
        self.report.samples_per_second =
            (self.report.steps_this_session * self.config.batch * self.config.grad_accum) as f64 / secs.max(1e-9);
        self.report.steps_done = self.step;
        self.report.losses = self.log.rows.iter().map(|r| (r.step, r.loss)).collect();
        if !self.report.interrupted {
            if last_saved != self.step {
                self.checkpoint(self.elapsed_before + secs)?;
            }
            let path = self.out.join("projection.safetensors");
            if self.ranks.is_root() {
                let meta = HashMap::from([
                    ("stage".to_string(), self.config.stage.number().to_string()),
                    ("steps".to_string(), self.step.to_string()),
                    ("seed".to_string(), self.config.seed.to_string()),
                ]);
                checkpoint::save_projection(&path, self.weight().as_tensor(), self.bias().as_tensor(), meta)?;
                if let Some(settings) = self.config.lora {
                    let adapter = self.frozen.llm.lora_adapter()?;
                    crate::lora::save_peft(&self.out.join("lora"), &adapter, settings, &self.base_llm)?;
                }
                self.plot()?;
            }
            self.report.projection = Some(path);
        }
        Ok(self.report)
    }
}

/// Prepares and runs a training run, or with `features_only` only fills the feature cache.
pub fn train(spec: &ModelSpec, opts: &TrainOptions) -> Result<TrainReport> {
    if opts.features_only {
        return cache_features(spec, opts);
    }
    let report = Trainer::prepare(spec, opts)?.run()?;
    // No rank leaves (and finalizes MPI) while rank 0 is still writing the last files.
    opts.ranks.barrier()?;
    Ok(report)
}

/// `train --features-only`: the features of every training record's image in the cache, with
/// the vision side alone loaded (no LLM). Under mpirun each rank encodes its share.
pub fn cache_features(spec: &ModelSpec, opts: &TrainOptions) -> Result<TrainReport> {
    let parts = minigpt4_core::pipeline::VisionParts::load(spec, &opts.device)
        .with_context(|| format!("loading the vision side of `{}`", spec.name.as_deref().unwrap_or("?")))?;
    let train = data::read_train_records(&opts.data)?;
    let mut report = TrainReport {
        heldout_records: train.heldout,
        records: train.records.len(),
        skipped_lines: train.skipped_lines,
        ranks: opts.ranks.size(),
        ..Default::default()
    };
    for l in &report.skipped_lines {
        opts.progress.warn(None, &format!("skipped manifest line {l}"));
    }
    let fingerprint = features::encoder_fingerprint(spec, &parts.image)?;
    let cache_root = opts.cache_dir.clone().unwrap_or_else(|| minigpt4_home().join("cache"));
    let cache = FeatureCache::new(&cache_root, &fingerprint);
    let limits = minigpt4_core::image::Limits::default();
    let encode = |px: &Tensor| {
        minigpt4_core::minigpt4::image_features(&parts.vision, &parts.adapter, parts.classifier.as_ref(), px)
    };
    let encoder = Encoder { encode: &encode, image: &parts.image, limits: &limits };
    let images = cache_image_features(&train.records, &encoder, &cache, opts, &mut report)?;
    report.images = images.keys.len();
    Ok(report)
}

/// Where a run's outputs are.
pub fn outputs(out: &Path) -> Vec<PathBuf> {
    ["projection.safetensors", "lora", "log.csv", "loss.png", "config.json", "checkpoints"]
        .iter()
        .map(|n| out.join(n))
        .collect()
}
