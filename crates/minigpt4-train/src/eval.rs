//! Evaluation of a projection on held-out captions: generate a description of every image
//! (greedy), score the descriptions against the records' captions with BLEU-4, CIDEr-D
//! ([`crate::metrics`]) and the keyword hit rate ([`crate::keyword`]), and write
//!
//! * `DIR/eval-<label>.json` — settings, counts, metrics and every item (image, reference,
//!   generated text or error, main noun, hit, per-image BLEU-4 and CIDEr-D);
//! * `DIR/eval.json` — the same for the run just finished;
//! * `DIR/eval.md` — one table row per `eval-*.json` in `DIR` (label | images | BLEU-4 |
//!   CIDEr-D | keyword hit rate, in the order the runs finished; running a label again replaces
//!   its row) plus a few examples per label. It is rebuilt from the JSON files on every run, so
//!   evaluating `random`, `stage1` and `stage1+2` into one folder gives one three-row table.
//!
//! Records: the manifests in the order given, lines in file order, only the chosen split;
//! `limit` takes the first N of those (broken images count towards N). One reference per
//! record: its caption. An image that cannot be read or decoded is reported, listed with its
//! error and left out of the scores.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use minigpt4_core::generate::GenerationConfig;
use minigpt4_core::image;
use minigpt4_core::model_file::ModelSpec;
use minigpt4_core::pipeline::{FrozenParts, Pipeline};
use minigpt4_core::projector::Projector;
use minigpt4_core::template::Conversation;
use minigpt4_data::{Manifest, Record, Split};
use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::keyword;
use crate::metrics;
use crate::model;
use crate::progress::Progress;

pub const EVAL_FORMAT: &str = "minigpt4-eval/1";

/// The prompt `minigpt4 describe` uses by default.
pub const DEFAULT_PROMPT: &str = "Describe this image in detail.";

/// Where the projection comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProjectionSource {
    /// The model file's `[projection] weights`.
    Model { path: PathBuf },
    /// A projection or training checkpoint given on the command line.
    File { path: PathBuf },
    /// Untrained: `minigpt4 train`'s initialisation for this seed ([`model::random_projection`]).
    Random { seed: u64 },
}

impl ProjectionSource {
    pub fn describe(&self) -> String {
        match self {
            ProjectionSource::Model { path } | ProjectionSource::File { path } => path.display().to_string(),
            ProjectionSource::Random { seed } => format!("random (seed {seed})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub data: Vec<PathBuf>,
    /// `None`: every record.
    pub split: Option<Split>,
    pub limit: Option<usize>,
    pub prompt: String,
    pub max_new_tokens: usize,
    /// `None`: the model file's projection; see [`ProjectionSource`].
    pub projection: Option<PathBuf>,
    pub random_projection: Option<u64>,
    /// Row name in the table; also names `eval-<label>.json`.
    pub label: String,
    pub out: PathBuf,
    pub progress: Progress,
    pub device: Device,
}

impl EvalOptions {
    pub fn new(data: Vec<PathBuf>, out: impl Into<PathBuf>, label: impl Into<String>) -> Self {
        Self {
            data,
            split: Some(Split::Heldout),
            limit: None,
            prompt: DEFAULT_PROMPT.into(),
            max_new_tokens: 32,
            projection: None,
            random_projection: None,
            label: label.into(),
            out: out.into(),
            progress: Progress::Auto,
            device: Device::Cpu,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub model: String,
    pub projection: ProjectionSource,
    pub data: Vec<PathBuf>,
    /// "heldout", "train" or "all".
    pub split: String,
    pub limit: Option<usize>,
    pub prompt: String,
    pub max_new_tokens: usize,
    /// Always "greedy" (temperature 0, no repetition penalty, one beam).
    pub decoding: String,
    pub template: String,
    pub device: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Readable records in the manifests, every split.
    pub records: usize,
    /// Of those, in the chosen split.
    pub in_split: usize,
    /// Taken for evaluation (after `limit`).
    pub selected: usize,
    /// Described and scored.
    pub scored: usize,
    /// Images that could not be read or decoded (skipped).
    pub failed: usize,
    /// Manifest lines that could not be read.
    pub skipped_lines: usize,
    /// Scored items whose caption has a main noun (the hit rate's denominator).
    pub with_keyword: usize,
    pub keyword_hits: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Corpus BLEU-1..4.
    pub bleu: [f64; 4],
    pub bleu4: f64,
    pub cider_d: f64,
    /// `None` when no caption had a main noun.
    pub keyword_hit_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub image: PathBuf,
    pub source: String,
    pub reference: String,
    /// The description, stripped; absent when the image failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reference's main noun ([`keyword::main_noun`]).
    pub keyword: Option<String>,
    pub keyword_hit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bleu4: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cider_d: Option<f64>,
    pub tokens: usize,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub format: String,
    pub label: String,
    /// When the run finished (milliseconds since the Unix epoch); orders the table's rows.
    pub finished_unix_ms: u64,
    pub seconds: f64,
    pub settings: Settings,
    pub counts: Counts,
    /// `None` when no image could be described.
    pub metrics: Option<Metrics>,
    pub skipped_lines: Vec<String>,
    pub items: Vec<Item>,
}

/// The records to evaluate and what was left out.
#[derive(Debug, Default)]
pub struct Selection {
    pub records: Vec<Record>,
    pub total: usize,
    pub in_split: usize,
    pub skipped_lines: Vec<String>,
}

/// Reads the manifests (in order) and keeps the first `limit` records of `split`.
pub fn select_records(data: &[PathBuf], split: Option<Split>, limit: Option<usize>) -> Result<Selection> {
    if data.is_empty() {
        bail!("no data: pass --data MANIFEST.jsonl");
    }
    let mut s = Selection::default();
    for path in data {
        let m = Manifest::read(path).with_context(|| format!("reading manifest {}", path.display()))?;
        s.skipped_lines.extend(m.skipped.iter().map(|e| e.to_string()));
        s.total += m.records.len();
        for r in m.records {
            if split.is_none_or(|want| r.split == want) {
                let r = Record { image: std::path::absolute(&r.image).unwrap_or(r.image), ..r };
                s.in_split += 1;
                if limit.is_none_or(|l| s.records.len() < l) {
                    s.records.push(r);
                }
            }
        }
    }
    Ok(s)
}

/// Loads the model with the projection `opts` asks for (a random one stays in memory).
pub fn load_pipeline(spec: &ModelSpec, opts: &EvalOptions) -> Result<(Pipeline, ProjectionSource)> {
    let mut spec = spec.clone();
    let source = match (&opts.projection, opts.random_projection) {
        (Some(_), Some(_)) => bail!("give either a projection file or a random-projection seed, not both"),
        (Some(p), None) => ProjectionSource::File { path: std::path::absolute(p).unwrap_or_else(|_| p.clone()) },
        (None, Some(seed)) => ProjectionSource::Random { seed },
        (None, None) => ProjectionSource::Model { path: spec.projection.weights.clone() },
    };
    let context = || format!("loading model `{}`", spec.name.as_deref().unwrap_or("?"));
    let pipeline = match &source {
        ProjectionSource::Model { path } if !path.exists() => bail!(
            "the model's projection {} does not exist: pass --projection FILE (what `minigpt4 train` writes) \
             or --random-projection SEED (the untrained baseline)",
            path.display()
        ),
        ProjectionSource::Model { .. } => Pipeline::load(&spec, &opts.device).with_context(context)?,
        ProjectionSource::File { path } => {
            spec.projection.weights = path.clone();
            Pipeline::load(&spec, &opts.device).with_context(context)?
        }
        ProjectionSource::Random { seed } => {
            let parts = FrozenParts::load(&spec, &opts.device).with_context(context)?;
            let (in_dim, out_dim) = parts.projection_dims();
            let (w, b) = model::random_projection(in_dim, out_dim, *seed, &opts.device)?;
            Pipeline::new(parts, Projector::from_tensors(w, b)?)?
        }
    };
    Ok((pipeline, source))
}

/// Greedy decoding with the template's stops.
pub fn generation_config(pipeline: &Pipeline, max_new_tokens: usize) -> Result<GenerationConfig> {
    let cfg = pipeline.with_stops(GenerationConfig {
        max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        repetition_penalty: 1.0,
        num_beams: 1,
        seed: Some(0),
        ..GenerationConfig::default()
    });
    cfg.validate()?;
    Ok(cfg)
}

/// Soft-prompt tokens of one image, without the pipeline's per-content cache (an evaluation
/// sees every image once; the cache would only grow).
fn image_tokens(pipeline: &Pipeline, path: &Path) -> Result<Tensor> {
    let bytes = image::read_file(path, &pipeline.limits)?;
    let pixels =
        image::preprocess(&bytes, &path.display().to_string(), &pipeline.image, &pipeline.limits, pipeline.device())?;
    Ok(pipeline.model.encode_image(&pixels.unsqueeze(0)?)?)
}

/// Describes each record's image; failures become items with an error.
pub fn describe_all(
    pipeline: &Pipeline,
    records: &[Record],
    prompt: &str,
    cfg: &GenerationConfig,
    progress: Progress,
) -> Vec<Item> {
    let bar = progress.bar(records.len() as u64, "eval");
    let every = (records.len() / 10).max(1);
    let mut failed = 0;
    let mut items = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let started = Instant::now();
        let result = (|| -> Result<(String, usize)> {
            let img = image_tokens(pipeline, &r.image)?;
            let mut conv = Conversation::new(pipeline.template);
            conv.add_image();
            conv.ask(prompt);
            let g = pipeline.respond(&conv, &[img], cfg, &mut |_| ControlFlow::Continue(()))?;
            Ok((g.text.trim().to_string(), g.token_ids.len()))
        })();
        let keyword = keyword::main_noun(&r.caption);
        let mut item = Item {
            image: r.image.clone(),
            source: r.source.clone(),
            reference: r.caption.clone(),
            generated: None,
            error: None,
            keyword_hit: None,
            keyword,
            bleu4: None,
            cider_d: None,
            tokens: 0,
            seconds: 0.0,
        };
        match result {
            Ok((text, tokens)) => {
                item.keyword_hit = item.keyword.as_deref().map(|k| keyword::keyword_hit(k, &text));
                item.generated = Some(text);
                item.tokens = tokens;
            }
            Err(e) => {
                failed += 1;
                let msg = format!("{e:#}");
                // Reported even when quiet: a skipped image changes what the scores mean.
                let line = if msg.contains(&r.image.display().to_string()) {
                    format!("warning: skipped {msg}")
                } else {
                    format!("warning: skipped {}: {msg}", r.image.display())
                };
                if progress.is_terminal() {
                    bar.println(line);
                } else {
                    eprintln!("{line}");
                }
                item.error = Some(msg);
            }
        }
        item.seconds = started.elapsed().as_secs_f64();
        items.push(item);
        bar.inc(1);
        if failed > 0 {
            bar.set_message(format!("{failed} failed"));
        }
        if (i + 1) % every == 0 || i + 1 == records.len() {
            progress.line(&bar, &format!("eval: {}/{} images ({failed} failed)", i + 1, records.len()));
        }
    }
    bar.finish_and_clear();
    items
}

/// Scores the described items (BLEU and CIDEr-D on [`metrics::normalize`]d text, one
/// reference each) and fills in their per-image scores.
pub fn score(items: &mut [Item]) -> (Option<Metrics>, Counts) {
    let mut counts = Counts::default();
    let scored: Vec<usize> = (0..items.len()).filter(|&i| items[i].generated.is_some()).collect();
    counts.scored = scored.len();
    counts.failed = items.len() - scored.len();
    for &i in &scored {
        if let Some(hit) = items[i].keyword_hit {
            counts.with_keyword += 1;
            counts.keyword_hits += usize::from(hit);
        }
    }
    if scored.is_empty() {
        return (None, counts);
    }
    let cands: Vec<String> =
        scored.iter().map(|&i| metrics::normalize(items[i].generated.as_deref().unwrap_or(""))).collect();
    let refs: Vec<String> = scored.iter().map(|&i| metrics::normalize(&items[i].reference)).collect();
    let cand_refs: Vec<&str> = cands.iter().map(String::as_str).collect();
    let ref_lists: Vec<Vec<&str>> = refs.iter().map(|r| vec![r.as_str()]).collect();
    let bleu = metrics::bleu(&cand_refs, &ref_lists);
    let cider = metrics::cider_d(&cand_refs, &ref_lists);
    for (k, &i) in scored.iter().enumerate() {
        items[i].bleu4 = Some(bleu.per_image[k][3]);
        items[i].cider_d = Some(cider.per_image[k]);
    }
    let m = Metrics {
        bleu: bleu.corpus,
        bleu4: bleu.corpus[3],
        cider_d: cider.corpus,
        keyword_hit_rate: (counts.with_keyword > 0).then(|| counts.keyword_hits as f64 / counts.with_keyword as f64),
    };
    (Some(m), counts)
}

/// A label as a file-name part: letters, digits and `. _ + -`, everything else `_`.
pub fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') { c } else { '_' })
        .collect()
}

/// Runs the evaluation and writes `eval.json`, `eval-<label>.json` and `eval.md` in `opts.out`.
/// `model` is how the user named the model (preset or file), for the record.
pub fn evaluate(spec: &ModelSpec, model: &str, opts: &EvalOptions) -> Result<EvalReport> {
    if opts.label.trim().is_empty() {
        bail!("the label must not be empty");
    }
    let started = Instant::now();
    let selection = select_records(&opts.data, opts.split, opts.limit)?;
    for l in &selection.skipped_lines {
        opts.progress.warn(None, &format!("skipped manifest line {l}"));
    }
    if selection.records.is_empty() {
        bail!(
            "no {} records in {} ({} records in all)",
            split_name(opts.split),
            opts.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            selection.total
        );
    }
    let (pipeline, projection) = load_pipeline(spec, opts)?;
    let cfg = generation_config(&pipeline, opts.max_new_tokens)?;
    let mut items = describe_all(&pipeline, &selection.records, &opts.prompt, &cfg, opts.progress);
    let (metrics, mut counts) = score(&mut items);
    counts.records = selection.total;
    counts.in_split = selection.in_split;
    counts.selected = selection.records.len();
    counts.skipped_lines = selection.skipped_lines.len();
    let report = EvalReport {
        format: EVAL_FORMAT.into(),
        label: opts.label.clone(),
        finished_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        seconds: started.elapsed().as_secs_f64(),
        settings: Settings {
            model: model.to_string(),
            projection,
            data: opts.data.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect(),
            split: split_name(opts.split).into(),
            limit: opts.limit,
            prompt: opts.prompt.clone(),
            max_new_tokens: opts.max_new_tokens,
            decoding: "greedy".into(),
            template: pipeline.template.name().into(),
            device: format!("{:?}", opts.device),
        },
        counts,
        metrics,
        skipped_lines: selection.skipped_lines,
        items,
    };
    write_outputs(&opts.out, &report, opts.progress)?;
    Ok(report)
}

pub fn split_name(split: Option<Split>) -> &'static str {
    match split {
        Some(Split::Heldout) => "heldout",
        Some(Split::Train) => "train",
        None => "all",
    }
}

/// Writes the report's JSON files and rebuilds `eval.md` from every `eval-*.json` in `out`.
pub fn write_outputs(out: &Path, report: &EvalReport, progress: Progress) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_vec_pretty(report)?;
    write_atomic(&out.join(format!("eval-{}.json", file_label(&report.label))), &json)?;
    write_atomic(&out.join("eval.json"), &json)?;
    let mut warn = |m: String| progress.warn(None, &m);
    let reports = read_reports(out, &mut warn)?;
    write_atomic(&out.join("eval.md"), markdown(&reports).as_bytes())
}

/// Every `eval-*.json` in `dir`, in the order the runs finished (unreadable ones reported).
pub fn read_reports(dir: &Path, warn: &mut dyn FnMut(String)) -> Result<Vec<EvalReport>> {
    let mut reports = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("eval-") && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    for p in paths {
        match std::fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice::<EvalReport>(&b)?))
        {
            Ok(r) if r.format == EVAL_FORMAT => reports.push(r),
            Ok(r) => warn(format!("{}: unknown format `{}`, left out of eval.md", p.display(), r.format)),
            Err(e) => warn(format!("{}: {e}, left out of eval.md", p.display())),
        }
    }
    reports.sort_by(|a, b| a.finished_unix_ms.cmp(&b.finished_unix_ms).then_with(|| a.label.cmp(&b.label)));
    Ok(reports)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The table alone: header and one row per report.
pub fn table(reports: &[EvalReport]) -> String {
    let mut s = String::from("| label | images | BLEU-4 | CIDEr-D | keyword hit rate |\n|---|---:|---:|---:|---:|\n");
    for r in reports {
        let c = &r.counts;
        let images = if c.failed > 0 { format!("{} ({} failed)", c.scored, c.failed) } else { c.scored.to_string() };
        let (bleu, cider, hit) = match &r.metrics {
            Some(m) => (
                format!("{:.4}", m.bleu4),
                format!("{:.4}", m.cider_d),
                m.keyword_hit_rate
                    .map_or("–".into(), |h| format!("{:.1}% ({}/{})", 100.0 * h, c.keyword_hits, c.with_keyword)),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        s.push_str(&format!("| {} | {images} | {bleu} | {cider} | {hit} |\n", cell(&r.label)));
    }
    s
}

/// `eval.md`: the table, what each row was run with, and a few examples per label.
pub fn markdown(reports: &[EvalReport]) -> String {
    let mut s = String::from("# Evaluation\n\n");
    s.push_str(&table(reports));
    s.push_str(
        "\nBLEU-4 and CIDEr-D as in pycocoevalcap (PTB-style tokens, punctuation removed, one reference per image: the \
         record's caption); keyword hit rate: share of descriptions naming the caption's main noun. Greedy decoding. \
         Rebuilt from the `eval-*.json` files in this folder.\n\n",
    );
    for r in reports {
        let st = &r.settings;
        s.push_str(&format!(
            "- `{}`: model `{}`, projection {}, split {} of {} ({} of {} records{}), prompt \"{}\", up to {} new tokens\n",
            r.label,
            st.model,
            st.projection.describe(),
            st.split,
            st.data.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", "),
            r.counts.selected,
            r.counts.in_split,
            st.limit.map(|l| format!(", limit {l}")).unwrap_or_default(),
            st.prompt,
            st.max_new_tokens
        ));
    }
    s.push_str("\n## Examples\n");
    for r in reports {
        s.push_str(&format!("\n### {}\n\n| image | reference | generated |\n|---|---|---|\n", cell(&r.label)));
        for it in r.items.iter().filter(|i| i.generated.is_some()).take(3) {
            let name = it.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                cell(&name),
                cell(&it.reference),
                cell(it.generated.as_deref().unwrap_or(""))
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use minigpt4_data::manifest;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures").join(rel)
    }

    fn rec(image: &str, split: Split) -> Record {
        Record { image: image.into(), caption: format!("a {image}"), turns: vec![], source: "t".into(), split }
    }

    #[test]
    fn records_come_in_manifest_order_filtered_by_split_then_limited() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        manifest::write(&a, &[rec("z.png", Split::Heldout), rec("t.png", Split::Train), rec("y.png", Split::Heldout)])
            .unwrap();
        manifest::write(&b, &[rec("x.png", Split::Heldout)]).unwrap();
        let names = |s: &Selection| {
            s.records.iter().map(|r| r.image.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>()
        };
        let s = select_records(&[b.clone(), a.clone()], Some(Split::Heldout), None).unwrap();
        assert_eq!(names(&s), ["x.png", "z.png", "y.png"]);
        assert_eq!((s.total, s.in_split), (4, 3));
        assert!(s.records.iter().all(|r| r.image.is_absolute() && r.image.starts_with(dir.path())));
        let s = select_records(&[a.clone(), b.clone()], Some(Split::Heldout), Some(2)).unwrap();
        assert_eq!(names(&s), ["z.png", "y.png"]);
        assert_eq!(s.in_split, 3);
        let s = select_records(&[a], None, None).unwrap();
        assert_eq!(names(&s), ["z.png", "t.png", "y.png"]);
    }

    #[test]
    fn random_projection_is_the_training_start() {
        let spec = ModelSpec::from_file(&fixture("minigpt4/merge4/model.toml")).unwrap();
        let mut o = EvalOptions::new(vec![], "/nonexistent", "random");
        o.random_projection = Some(7);
        let (p, source) = load_pipeline(&spec, &o).unwrap();
        assert_eq!(source, ProjectionSource::Random { seed: 7 });
        let (in_dim, out_dim) = (p.model.projector.in_dim(), p.model.projector.out_dim());
        let (w, b) = model::random_projection(in_dim, out_dim, 7, &Device::Cpu).unwrap();
        let same = |x: &Tensor, y: &Tensor| {
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap() == y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(p.model.projector.weight(), &w));
        assert!(same(p.model.projector.bias().unwrap(), &b));
        o.random_projection = Some(8);
        let (p8, _) = load_pipeline(&spec, &o).unwrap();
        assert!(!same(p8.model.projector.weight(), &w));
    }

    #[test]
    fn labels_become_safe_file_names() {
        assert_eq!(file_label("stage1+2"), "stage1+2");
        assert_eq!(file_label("runs/s1 final"), "runs_s1_final");
    }
}
