//! `minigpt4 train --stage 1|2 --data MANIFEST... --out DIR`: trains the projection.

use anyhow::Result;
use clap::Args;
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};
use minigpt4_train::distributed;
use minigpt4_train::{Progress, TrainOptions};

#[derive(Args)]
pub struct TrainArgs {
    /// A preset name or a model file (TOML); its projection file need not exist yet.
    #[arg(long, short, default_value = "tiny")]
    pub model: String,
    #[command(flatten)]
    pub options: TrainOptions,
    /// No progress bars or status lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Returns whether the run finished.
///
/// Under `mpirun`/`srun` (a launcher's variables set) this process is one rank of a
/// data-parallel run: rank 0 prints and writes, the others stay silent, and an error on any
/// rank ends the whole job (`MPI_Abort`) instead of leaving the others waiting.
pub fn run(args: TrainArgs) -> Result<bool> {
    let spec = ModelSpec::resolve(&args.model, &minigpt4_home())?;
    let mut o = args.options;
    o.device = candle_core::Device::cuda_if_available(0)?;
    o.ranks = distributed::from_environment(&o.device)?;
    let root = o.ranks.is_root();
    let quiet = args.quiet || !root;
    o.progress = if quiet { Progress::Quiet } else { Progress::Auto };
    if o.ranks.size() > 1 && !quiet {
        eprintln!("data-parallel training: {}", o.ranks.describe());
    }

    let r = match minigpt4_train::train(&spec, &o) {
        Ok(r) => r,
        Err(e) if o.ranks.size() > 1 => {
            // One write, so that ranks failing together do not interleave their lines.
            let line = format!("error (rank {} of {}): {e:#}\n", o.ranks.rank(), o.ranks.size());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            o.ranks.abort(2)
        }
        Err(e) => return Err(e),
    };
    if quiet {
        return Ok(r.projection.is_some() || o.features_only);
    }
    if o.features_only {
        eprintln!(
            "{} train records, {} distinct images: {} features computed, {} from cache, {} skipped, in {:.1}s",
            r.records,
            r.images,
            r.features_computed,
            r.features_reused,
            r.skipped_images.len(),
            r.feature_seconds
        );
        return Ok(true);
    }
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
    if r.ranks > 1 {
        let pct = |s: f64| 100.0 * s / r.train_seconds.max(1e-9);
        eprintln!(
            "{} ranks; gradient all-reduce {:.2}s of {:.1}s ({:.1}%), waiting for the slowest rank {:.2}s ({:.1}%)",
            r.ranks,
            r.all_reduce_seconds,
            r.train_seconds,
            pct(r.all_reduce_seconds),
            r.wait_seconds,
            pct(r.wait_seconds)
        );
    }
    if let Some(p) = &r.projection {
        eprintln!("projection: {}  (use it with --projection {})", p.display(), p.display());
        eprintln!("log: {}  plot: {}", o.out.join("log.csv").display(), o.out.join("loss.png").display());
    }
    Ok(r.projection.is_some())
}
