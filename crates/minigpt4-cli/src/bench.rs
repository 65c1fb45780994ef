//! `minigpt4 bench`: our side of `scripts/bench.sh` (the peers are Python scripts next to it).
//!
//! Parts, each with warm-up runs and repetitions (median, quartiles, min–max):
//!
//! * `llm`: prefill tokens/s at several prompt lengths (one `forward_last` over the prompt from an
//!   empty cache, embedding lookup included) and greedy decode tokens/s (one `forward_last` per
//!   token plus a host-side argmax, after an untimed prefill). The prompt token ids are in the
//!   output so a peer can feed the very same ids.
//! * `vision`: the vision encoder on one preprocessed image (what onnxruntime is compared with),
//!   and the whole image → soft-prompt path (decode, resize, encoder, adapter, projection).
//! * `e2e`: `describe` of one image as the CLI does it (image cache cleared every time): time to
//!   the first streamed text, total time for a fixed number of new tokens (greedy, no stop
//!   rule, so every run makes exactly that many), model load time, peak RSS and the size of the
//!   model's files.
//! * `train`: one stage-2 optimizer step (`batch_loss`, backward, AdamW) on a batch of real
//!   image features and template-wrapped instructions, every row `--train-positions` long.
//!
//! When a model file's projection does not exist yet (before its first training run), a
//! random one of the right shape is written under `$MINIGPT4_HOME/cache/bench/`: speed does not
//! depend on its values.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use clap::{Args, ValueEnum};
use minigpt4_core::generate::GenerationConfig;
use minigpt4_core::model_file::ModelSpec;
use minigpt4_core::pipeline::{FrozenParts, Pipeline};
use minigpt4_core::projector::Projector;
use minigpt4_core::template::Conversation;
use minigpt4_train::data::{Sequence, Stage, Texts};
use minigpt4_train::optim::{AdamW, AdamWConfig};
use minigpt4_train::trainer::batch_loss;
use serde_json::{json, Value};

#[derive(Args)]
pub struct BenchArgs {
    /// A preset name or a model file (TOML).
    #[arg(long, short, default_value = "tiny")]
    pub model: String,
    /// How a dense LLM's matrices are held (none, f16, q8_0, q4_0, q4_k) [the model file's, else
    /// q8_0 above 1 B parameters on the CPU].
    #[arg(long, value_name = "none|f16|q8_0|q4_0|q4_k")]
    pub quantize: Option<minigpt4_core::llama::Quantize>,
    /// Projection to use; default: the model's, or a random one of the right shape when the
    /// model has none yet (speed does not depend on its values).
    #[arg(long)]
    pub projection: Option<PathBuf>,
    /// Which parts to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "llm,vision,e2e,train")]
    pub parts: Vec<Part>,
    /// Timed repetitions of every measurement.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Compute threads (sets RAYON_NUM_THREADS); 0 keeps RAYON_NUM_THREADS or all cores.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Prompt lengths for the prefill measurement (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub prefill: Vec<usize>,
    /// Prompt length before the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub decode_prompt: usize,
    /// Tokens generated in the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Image for the vision and e2e parts; default: a synthetic 640×480 picture.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Question for the e2e part.
    #[arg(long, default_value = "Describe this image in detail.")]
    pub prompt: String,
    /// New tokens per e2e `describe` (greedy, no stop rule).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Samples per training step.
    #[arg(long, default_value_t = 4)]
    pub train_batch: usize,
    /// Positions of every training row (image tokens included).
    #[arg(long, default_value_t = 130)]
    pub train_positions: usize,
    /// Timed training steps [--reps].
    #[arg(long)]
    pub train_reps: Option<usize>,
    /// Print every measurement as one JSON object on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Llm,
    Vision,
    E2e,
    Train,
}

/// Median, quartiles and range of repeated timings.
fn stats(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    json!({
        "median": q(0.5), "q1": q(0.25), "q3": q(0.75),
        "min": v.first().copied().unwrap_or(f64::NAN), "max": v.last().copied().unwrap_or(f64::NAN),
        "n": v.len(), "values": values,
    })
}

/// `f(rep)` `warmup` times untimed, then `reps` times; returns what each timed call returned.
/// Progress goes to stderr: a line updated in place on a terminal, one line per measurement
/// otherwise.
fn repeat<T>(what: &str, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
    let tty = std::io::stderr().is_terminal();
    let show = |msg: String| {
        if tty {
            eprint!("\r  {what}: {msg}    ");
            let _ = std::io::stderr().flush();
        }
    };
    if !tty {
        eprintln!("  {what}: {warmup} warm-up + {reps} timed runs…");
    }
    for i in 0..warmup {
        show(format!("warm-up {}/{warmup}", i + 1));
        f()?;
    }
    let mut out = Vec::with_capacity(reps);
    for i in 0..reps {
        show(format!("{}/{reps}     ", i + 1));
        out.push(f()?);
    }
    if tty {
        eprintln!("\r  {what}: done ({reps} runs)      ");
    }
    Ok(out)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t0 = Instant::now();
    let r = f()?;
    Ok((t0.elapsed().as_secs_f64(), r))
}

/// `VmHWM` (peak resident set) of this process, in bytes.
fn peak_rss() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

fn proc_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resets `VmHWM` to the current RSS (Linux: `5` into `/proc/self/clear_refs`), so a part's peak
/// is its own and not an earlier part's. Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn argmax(logits: &Tensor) -> Result<u32> {
    let v = logits.to_vec1::<f32>()?;
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// English text, tokenized and repeated until `n` ids.
fn prompt_ids(p: &Pipeline, n: usize) -> Result<Vec<u32>> {
    const TEXT: &str = "The photograph shows a small wooden boat tied to a pier on a calm lake at sunrise. \
        Mist rises from the water, pine trees line the far shore, and a heron stands in the shallows \
        near a row of weathered posts. The sky turns from deep blue to orange above the hills. ";
    let unit = p.tokenizer.encode(TEXT, false)?;
    Ok(unit.iter().copied().cycle().take(n).collect())
}

/// The spec to benchmark and where its projection comes from: its file, or (when the model has
/// none yet) `minigpt4 train`'s random start for seed 0, held in memory.
fn resolve(args: &BenchArgs) -> Result<(ModelSpec, String, bool)> {
    let spec =
        crate::ModelArgs { model: args.model.clone(), projection: args.projection.clone(), quantize: args.quantize }
            .spec()?;
    if args.projection.is_some() || spec.projection.weights.exists() {
        let source = spec.projection.weights.display().to_string();
        return Ok((spec, source, false));
    }
    eprintln!("{} does not exist; using a random projection", spec.projection.weights.display());
    Ok((spec, "random (the model's projection file does not exist yet)".into(), true))
}

fn model_files(spec: &ModelSpec) -> Value {
    let mut files: Vec<&Path> = vec![&spec.vision.weights];
    files.extend(spec.vision.config.as_deref());
    files.extend(spec.adapter.weights.as_deref());
    files.extend(spec.adapter.config.as_deref());
    files.push(&spec.projection.weights);
    files.push(&spec.llm.weights);
    files.extend(spec.llm.config.as_deref());
    files.extend(spec.llm.tokenizer.as_deref());
    let mut total = 0u64;
    let list: Vec<Value> = files
        .iter()
        .map(|f| {
            let size = dir_or_file_size(f);
            total += size;
            json!({"path": f, "bytes": size})
        })
        .collect();
    json!({"files": list, "total_bytes": total})
}

fn dir_or_file_size(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| dir_or_file_size(&e.path())).sum()
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// A synthetic 640×480 photo-sized PNG (smooth gradients and a few shapes).
fn synthetic_image() -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        let r = (x * 255 / 639) as u8;
        let g = (y * 255 / 479) as u8;
        let inside = (x as i64 - 320).pow(2) + (y as i64 - 240).pow(2) < 120 * 120;
        image::Rgb([r, g, if inside { 220 } else { 60 }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

struct Ctx<'a> {
    args: &'a BenchArgs,
    spec: ModelSpec,
    device: Device,
    image: (Vec<u8>, String),
    pipeline: Option<Pipeline>,
    load_s: f64,
    /// The model has no projection file yet: a random one stands in.
    random_projection: bool,
}

impl Ctx<'_> {
    /// Loads the pipeline unless an earlier part did.
    fn load(&mut self) -> Result<()> {
        if self.pipeline.is_none() {
            eprintln!("loading model {}…", self.spec.name.as_deref().unwrap_or(&self.args.model));
            let (s, p) = timed(|| {
                if !self.random_projection {
                    return Ok(Pipeline::load(&self.spec, &self.device)?);
                }
                let parts = FrozenParts::load(&self.spec, &self.device)?;
                let (i, o) = parts.projection_dims();
                let (w, b) = minigpt4_train::model::random_projection(i, o, 0, &self.device)?;
                Ok(Pipeline::new(parts, Projector::from_tensors(w, b)?)?)
            })?;
            eprintln!("loaded in {s:.2}s");
            self.load_s = s;
            self.pipeline = Some(p);
        }
        Ok(())
    }
}

pub fn run(args: BenchArgs) -> Result<bool> {
    if args.threads > 0 {
        // Before any thread pool exists: rayon and candle's matmuls both read it.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let device = Device::Cpu;
    let (spec, projection, random_projection) = resolve(&args)?;
    let image = match &args.image {
        Some(p) => (std::fs::read(p).with_context(|| p.display().to_string())?, p.display().to_string()),
        None => (synthetic_image()?, "synthetic 640x480 PNG".to_string()),
    };
    let mut out = json!({
        "tool": "minigpt4",
        "version": env!("CARGO_PKG_VERSION"),
        "model": args.model,
        "projection": projection,
        "projection_file": spec.projection.weights,
        "model_files": model_files(&spec),
        "threads": candle_core::utils::get_num_threads(),
        "reps": args.reps,
        "warmup": args.warmup,
        "image": image.1,
    });
    let mut ctx = Ctx { args: &args, spec, device, image, pipeline: None, load_s: 0.0, random_projection };
    for part in [Part::Llm, Part::Vision, Part::E2e, Part::Train] {
        if !args.parts.contains(&part) {
            continue;
        }
        let (key, value) = match part {
            Part::Llm => ("llm", bench_llm(&mut ctx)?),
            Part::Vision => ("vision", bench_vision(&mut ctx)?),
            Part::E2e => ("e2e", bench_e2e(&mut ctx)?),
            Part::Train => {
                ctx.pipeline = None; // training loads its own (dense) copy
                ("train", bench_train(&mut ctx)?)
            }
        };
        out[key] = value;
    }
    if args.json {
        println!("{out}");
    } else {
        print_summary(&out);
    }
    Ok(true)
}

fn bench_llm(ctx: &mut Ctx) -> Result<Value> {
    let (warmup, reps) = (ctx.args.warmup, ctx.args.reps);
    let (prefill_lens, decode_prompt, decode_tokens) =
        (ctx.args.prefill.clone(), ctx.args.decode_prompt, ctx.args.decode_tokens);
    eprintln!("[llm] prefill {prefill_lens:?} tokens, decode {decode_tokens} tokens after {decode_prompt}");
    ctx.load()?;
    let p = ctx.pipeline.as_ref().expect("loaded");
    let llm = &p.model.llm;
    let mut prefill = Vec::new();
    for &n in &prefill_lens {
        let ids = prompt_ids(p, n)?;
        let secs = repeat(&format!("prefill {n}"), warmup, reps, || {
            let mut cache = llm.new_cache();
            let (s, logits) = timed(|| Ok(llm.forward_last(&llm.embed(&ids)?, &mut cache)?))?;
            argmax(&logits)?;
            Ok(s)
        })?;
        let tps: Vec<f64> = secs.iter().map(|s| n as f64 / s).collect();
        prefill.push(json!({"tokens": n, "seconds": stats(&secs), "tokens_per_s": stats(&tps), "prompt_ids": ids}));
    }
    let ids = prompt_ids(p, decode_prompt)?;
    let mut generated = Vec::new();
    let secs = repeat(&format!("decode {decode_tokens}"), warmup, reps, || {
        let mut cache = llm.new_cache();
        let mut next = argmax(&llm.forward_last(&llm.embed(&ids)?, &mut cache)?)?;
        let mut got = vec![next];
        let t0 = Instant::now();
        for _ in 0..decode_tokens {
            next = argmax(&llm.forward_last(&llm.embed(&[next])?, &mut cache)?)?;
            got.push(next);
        }
        let s = t0.elapsed().as_secs_f64();
        generated = got;
        Ok(s)
    })?;
    let tps: Vec<f64> = secs.iter().map(|s| decode_tokens as f64 / s).collect();
    Ok(json!({
        "weights": ctx.spec.llm.weights,
        "quantized": llm.is_quantized(),
        "prefill": prefill,
        "decode": {
            "prompt_tokens": decode_prompt, "new_tokens": decode_tokens, "prompt_ids": ids,
            "generated_ids": generated, "seconds": stats(&secs), "tokens_per_s": stats(&tps),
        },
    }))
}

fn bench_vision(ctx: &mut Ctx) -> Result<Value> {
    let (warmup, reps) = (ctx.args.warmup, ctx.args.reps);
    let (bytes, what) = ctx.image.clone();
    eprintln!("[vision] {what}");
    ctx.load()?;
    let p = ctx.pipeline.as_ref().expect("loaded");
    let pixels = minigpt4_core::image::preprocess(&bytes, &what, &p.image, &p.limits, p.device())?.unsqueeze(0)?;
    let mut shape = Vec::new();
    let enc = repeat("encoder", warmup, reps, || {
        let (s, t) = timed(|| Ok(p.model.vision.forward(&pixels)?))?;
        shape = t.dims().to_vec();
        Ok(s)
    })?;
    let full = repeat("image → soft prompt", warmup, reps, || {
        p.clear_image_cache();
        let (s, _) = timed(|| Ok(p.image_embeds(&bytes, &what)?))?;
        Ok(s)
    })?;
    Ok(json!({
        "image_size": p.image.size,
        "encoder_output_shape": shape,
        "encoder_s": stats(&enc),
        "image_to_embeds_s": stats(&full),
        "weights": ctx.spec.vision.weights,
    }))
}

fn bench_e2e(ctx: &mut Ctx) -> Result<Value> {
    let (warmup, reps, new_tokens) = (ctx.args.warmup, ctx.args.reps, ctx.args.new_tokens);
    let (bytes, what) = ctx.image.clone();
    let prompt = ctx.args.prompt.clone();
    eprintln!("[e2e] describe {what}: {new_tokens} new tokens, greedy");
    let had_pipeline = ctx.pipeline.is_some();
    let rss_reset = if had_pipeline { reset_peak_rss() } else { false };
    ctx.load()?;
    let rss_after_load = proc_status_kb("VmRSS:").map(|kb| kb * 1024);
    let p = ctx.pipeline.as_ref().expect("loaded");
    // Greedy and no stop rule (not even EOS): every run generates exactly `new_tokens`.
    let cfg = GenerationConfig {
        max_new_tokens: new_tokens,
        temperature: 0.0,
        repetition_penalty: 1.0,
        seed: Some(0),
        ..GenerationConfig::default()
    };
    cfg.validate()?;
    let segments = {
        let mut conv = Conversation::new(p.template);
        conv.add_image();
        conv.ask(&prompt);
        conv.tokenize(&p.tokenizer)?
    };
    let mut text = String::new();
    let runs = repeat("describe", warmup, reps, || {
        p.clear_image_cache();
        let t0 = Instant::now();
        let image = p.image_embeds(&bytes, &what)?;
        let encoded = t0.elapsed().as_secs_f64();
        let mut conv = Conversation::new(p.template);
        conv.add_image();
        conv.ask(&prompt);
        let mut first = None;
        let g = p.respond(&conv, &[image], &cfg, &mut |_| {
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            ControlFlow::Continue(())
        })?;
        let total = t0.elapsed().as_secs_f64();
        if g.token_ids.len() != new_tokens {
            bail!("generated {} tokens, expected {new_tokens}", g.token_ids.len());
        }
        text = g.text;
        Ok((first.unwrap_or(total), total, encoded, g.prompt_len))
    })?;
    let col = |f: fn(&(f64, f64, f64, usize)) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let decode_tps: Vec<f64> = runs.iter().map(|r| (new_tokens - 1) as f64 / (r.1 - r.0).max(1e-9)).collect();
    let rss = peak_rss();
    let files = model_files(&ctx.spec);
    let size = files["total_bytes"].as_u64().unwrap_or(0);
    Ok(json!({
        "prompt": prompt,
        "prompt_segments": segments,
        "image_size": p.image.size,
        "merge": ctx.spec.adapter.merge,
        "llm_weights": ctx.spec.llm.weights,
        "prompt_positions": runs.first().map(|r| r.3),
        "new_tokens": new_tokens,
        "load_s": ctx.load_s,
        "first_token_s": stats(&col(|r| r.0)),
        "total_s": stats(&col(|r| r.1)),
        "image_encode_s": stats(&col(|r| r.2)),
        "decode_tokens_per_s": stats(&decode_tps),
        "peak_rss_bytes": rss,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_scope": if had_pipeline && !rss_reset { "process (includes earlier parts)" } else { "load + describe" },
        "model_bytes": size,
        "rss_over_model_size": rss.map(|r| r as f64 / size.max(1) as f64),
        "text": text,
    }))
}

fn bench_train(ctx: &mut Ctx) -> Result<Value> {
    let warmup = ctx.args.warmup;
    let reps = ctx.args.train_reps.unwrap_or(ctx.args.reps);
    let (batch, positions) = (ctx.args.train_batch, ctx.args.train_positions);
    eprintln!("[train] stage-2 step, batch {batch} × {positions} positions");
    let rss_reset = reset_peak_rss();
    let start = match ctx.random_projection {
        true => minigpt4_train::model::Start::Random(0),
        false => minigpt4_train::model::Start::File(&ctx.spec.projection.weights),
    };
    let (load_s, (mut frozen, w0, b0)) = timed(|| minigpt4_train::model::load(&ctx.spec, &ctx.device, start))?;
    // Real features of the benchmark image (what the feature cache would hold), for every row.
    let (bytes, what) = &ctx.image;
    let px = minigpt4_core::image::preprocess(bytes, what, &frozen.image, &frozen.limits, &ctx.device)?.unsqueeze(0)?;
    let feat = frozen.image_features(&px)?;
    frozen.vision = None;
    let (_, n_img, d_a) = feat.dims3()?;
    let feats = Tensor::cat(&vec![feat; batch], 0)?;

    let texts =
        Texts::new(Stage::Two, frozen.tokenizer.clone(), frozen.template, frozen.bos(), usize::MAX, usize::MAX)?;
    let description = "The image shows a busy street market on a sunny afternoon. Wooden stalls covered with striped \
        awnings sell fruit, vegetables, flowers and spices, and shoppers carry baskets between them. In the \
        foreground a vendor in a blue apron weighs oranges on an old brass scale while a child watches. Behind \
        the stalls stand tall brick buildings with green shutters and balconies full of plants, and a church \
        tower rises above the rooftops against a clear sky. The light is warm and the shadows are long.";
    let target_all = texts.stage2_target(description)?.context("empty target")?;
    let mut seqs = Vec::with_capacity(batch);
    for i in 0..batch {
        let segs = &texts.instruction_segments[i % texts.instruction_segments.len()];
        let prompt_len = segs[0].len() + n_img + segs[1].len();
        // input_len = prompt_len + target_len - 1
        let want = (positions + 1).checked_sub(prompt_len).filter(|&t| t >= 2).with_context(|| {
            format!("--train-positions {positions} leaves no room for a target after a {prompt_len}-position prompt")
        })?;
        if want > target_all.len() {
            bail!("--train-positions {positions} is longer than the benchmark's description allows");
        }
        seqs.push(Sequence {
            image: 0,
            before: segs[0].clone(),
            after: segs[1].clone(),
            target: target_all[..want].to_vec(),
        });
    }
    // The load's own peak (the vision encoder ran once), then the training steps' own.
    let load_peak = peak_rss();
    let rss_after_load = proc_status_kb("VmRSS:").map(|kb| kb * 1024);
    let steps_reset = rss_reset && reset_peak_rss();
    let weight = Var::from_tensor(&w0)?;
    let bias = Var::from_tensor(&b0)?;
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        vec![("weight".into(), weight.clone(), true), ("bias".into(), bias.clone(), false)],
    )?;
    let mut losses = Vec::new();
    let secs = repeat("train step", warmup, reps, || {
        let (s, loss) = timed(|| {
            let (w, b) = (weight.as_tensor().clone(), bias.as_tensor().clone());
            let (loss, _) = batch_loss(&frozen.llm, &seqs, &feats, &w, &b)?;
            let grads = loss.backward()?;
            let gw = grads.get(&w).context("no gradient reached the projection weight")?.clone();
            let gb = grads.get(&b).context("no gradient reached the projection bias")?.clone();
            opt.update(&[gw, gb], 3e-5)?;
            Ok(loss.to_scalar::<f32>()?)
        })?;
        losses.push(loss);
        Ok(s)
    })?;
    let sps: Vec<f64> = secs.iter().map(|s| batch as f64 / s).collect();
    let steps_peak = peak_rss();
    let rss = if steps_reset { load_peak.max(steps_peak) } else { steps_peak };
    let seq_json: Vec<Value> =
        seqs.iter().map(|s| json!({"before": s.before, "after": s.after, "target": s.target})).collect();
    Ok(json!({
        "stage": 2,
        "llm_weights": ctx.spec.llm.weights,
        "batch": batch,
        "positions": positions,
        "image_tokens": n_img,
        "feature_dim": d_a,
        "hidden_size": frozen.llm.hidden_size(),
        "labelled_positions": seqs.iter().map(|s| s.target.len()).sum::<usize>(),
        "load_s": load_s,
        "step_s": stats(&secs),
        "samples_per_s": stats(&sps),
        "losses": losses,
        "peak_rss_bytes": rss,
        "peak_rss_scope": if rss_reset { "load + training" } else { "process" },
        "peak_rss_load_bytes": load_peak,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_steps_bytes": if steps_reset { steps_peak } else { None },
        "sequences": seq_json,
    }))
}

fn med(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

fn print_summary(out: &Value) {
    println!("minigpt4 bench: model {}, {} threads, {} reps", out["model"], out["threads"], out["reps"]);
    if let Some(l) = out.get("llm") {
        for p in l["prefill"].as_array().into_iter().flatten() {
            println!("  prefill {:>4} tokens: {:8.1} tokens/s", p["tokens"], med(&p["tokens_per_s"]));
        }
        let d = &l["decode"];
        println!("  decode {:>5} tokens: {:8.1} tokens/s", d["new_tokens"], med(&d["tokens_per_s"]));
    }
    if let Some(v) = out.get("vision") {
        println!(
            "  vision encoder:      {:8.3} s (image → soft prompt {:.3} s)",
            med(&v["encoder_s"]),
            med(&v["image_to_embeds_s"])
        );
    }
    if let Some(e) = out.get("e2e") {
        println!(
            "  describe:            first token {:.3} s, {} tokens in {:.3} s, peak RSS {:.0} MB ({:.2}× the model files)",
            med(&e["first_token_s"]),
            e["new_tokens"],
            med(&e["total_s"]),
            e["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            e["rss_over_model_size"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(t) = out.get("train") {
        println!(
            "  train step:          {:.3} s/step, {:.2} samples/s, peak RSS {:.0} MB",
            med(&t["step_s"]),
            med(&t["samples_per_s"]),
            t["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6
        );
    }
}
