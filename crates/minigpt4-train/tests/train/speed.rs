//! Training steps timed part by part. `steps_on_fixture` runs with the other tests and checks
//! that every part ran and gave finite, non-trivial results (its times are printed, not judged:
//! speed is compared with PyTorch by `scripts/bench.sh`); `speed_on_model` is ignored unless
//! `MINIGPT4_BENCH_MODEL=model.toml` names a real model:
//!
//! ```sh
//! MINIGPT4_BENCH_MODEL=path/model.toml cargo test --release -p minigpt4-train --test train speed_on_model -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use minigpt4_core::llama::Mode;
use minigpt4_core::model_file::ModelSpec;
use minigpt4_data::manifest::{self, Record, Split};
use minigpt4_train::trainer::batch_loss;
use minigpt4_train::{Progress, Stage, TrainOptions, Trainer};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures").join(rel)
}

fn manifest(dir: &Path) -> PathBuf {
    let imgs = [
        "cat.jpg",
        "coffee.jpg",
        "rocket.jpg",
        "camera_gray.png",
        "noise.png",
        "logo_rgba.png",
        "gray.jpg",
        "cmyk.jpg",
    ];
    let records: Vec<Record> = imgs
        .iter()
        .map(|f| Record {
            image: fixture(&format!("images/{f}")),
            caption: format!(
                "A photograph of {} with some details that make the caption longer.",
                f.split('.').next().unwrap()
            ),
            turns: vec![],
            source: "speed".into(),
            split: Split::Train,
        })
        .collect();
    let p = dir.join("m.jsonl");
    manifest::write(&p, &records).unwrap();
    p
}

/// Runs `steps` training steps and times their parts; asserts that each part did its work.
fn measure(spec: &ModelSpec, stage: Stage, batch: usize, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = TrainOptions::new(dir.path().join("run"));
    o.stage = Some(stage);
    o.data = vec![manifest(dir.path())];
    o.cache_dir = Some(dir.path().join("cache"));
    o.progress = Progress::Quiet;
    o.steps = Some(steps + 1);
    o.batch = Some(batch);
    o.grad_accum = Some(1);
    let t0 = Instant::now();
    let mut t = Trainer::prepare(spec, &o).unwrap();
    let prep = t0.elapsed().as_secs_f64();
    println!(
        "stage {}: prepare {prep:.2}s ({} images encoded in {:.2}s, {:.3}s/image)",
        stage.number(),
        t.report.features_computed,
        t.report.feature_seconds,
        t.report.feature_seconds / t.report.features_computed.max(1) as f64
    );
    t.step().unwrap(); // warm-up
    let seqs = t.draw(0, batch);
    let n_img = t.features.get(0).unwrap().dim(1).unwrap();
    let len = seqs.iter().map(|s| s.input_len(n_img)).max().unwrap();
    let feats = Tensor::cat(&seqs.iter().map(|s| t.features.get(s.image).unwrap()).collect::<Vec<_>>(), 0).unwrap();
    let (w, b) = (t.weight().as_tensor().clone(), t.bias().as_tensor().clone());

    let t1 = Instant::now();
    let (loss, _) = batch_loss(&t.frozen.llm, &seqs, &feats, &w, &b).unwrap();
    let fwd = t1.elapsed().as_secs_f64();
    let loss_value = loss.to_scalar::<f32>().unwrap();
    assert!(loss_value.is_finite() && loss_value > 0.0, "stage {}: loss {loss_value}", stage.number());
    let t2 = Instant::now();
    let grads = loss.backward().unwrap();
    let bwd = t2.elapsed().as_secs_f64();
    let grad_w = grads.get(&w).expect("a gradient for the projection weight");
    let norm = grad_w.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    assert!(norm.is_finite() && norm > 0.0, "stage {}: |∂loss/∂W| = {norm}", stage.number());
    let x = Tensor::zeros((batch, len, t.frozen.llm.hidden_size()), candle_core::DType::F32, t.frozen.llm.device())
        .unwrap();
    let t3 = Instant::now();
    let _ = t.frozen.llm.forward_all(&x, Mode::Inference).unwrap();
    let inf = t3.elapsed().as_secs_f64();

    let before = t.weight().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let t4 = Instant::now();
    for _ in 0..steps {
        t.step().unwrap();
    }
    let after = t.weight().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(before, after, "stage {}: {steps} steps left the projection unchanged", stage.number());
    assert!(t.report.features_computed > 0 || stage == Stage::Two, "stage 1 encoded no image");
    let per = t4.elapsed().as_secs_f64() / steps as f64;
    println!(
        "stage {}: batch {batch} × {len} positions: {per:.3} s/step, {:.2} samples/s (differentiable forward {fwd:.3}s, backward {bwd:.3}s; inference forward {inf:.3}s)",
        stage.number(),
        batch as f64 / per
    );
}

#[test]
fn steps_on_fixture() {
    let spec = ModelSpec::from_file(&fixture("minigpt4/merge4/model.toml")).unwrap();
    measure(&spec, Stage::One, 8, 5);
    measure(&spec, Stage::Two, 4, 3);
}

#[test]
#[ignore = "needs MINIGPT4_BENCH_MODEL=model.toml"]
fn speed_on_model() {
    let path = std::env::var("MINIGPT4_BENCH_MODEL").expect("set MINIGPT4_BENCH_MODEL to a model file");
    let spec = ModelSpec::from_file(Path::new(&path)).unwrap();
    let batch = std::env::var("MINIGPT4_BENCH_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(4);
    let steps = std::env::var("MINIGPT4_BENCH_STEPS").ok().and_then(|b| b.parse().ok()).unwrap_or(2);
    measure(&spec, Stage::One, batch, steps);
    measure(&spec, Stage::Two, batch, steps);
}
