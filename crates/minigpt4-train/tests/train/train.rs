//! Training on the tiny fixture MiniGPT-4 (EVA-style ViT 56 px → merge-4 → Linear(128 → 64) →
//! 2-layer LLaMA, template `llama2`), with small manifests over the fixture images.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use minigpt4_core::image;
use minigpt4_core::llama::Mode;
use minigpt4_core::model_file::ModelSpec;
use minigpt4_core::pipeline::Pipeline;
use minigpt4_core::template::Conversation;
use minigpt4_data::manifest::{self, Record, Split, Turn};
use minigpt4_train::data::{Prompt, Sequence, Texts, INSTRUCTIONS};
use minigpt4_train::features::{self, FeatureCache};
use minigpt4_train::trainer::batch_loss;
use minigpt4_train::warm_start::WarmStart;
use minigpt4_train::{io, keyword, Progress, Stage, TrainOptions, Trainer};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures").join(rel)
}

fn spec() -> ModelSpec {
    ModelSpec::from_file(&fixture("minigpt4/merge4/model.toml")).unwrap()
}

const IMAGES: [(&str, &str); 6] = [
    ("cat.jpg", "A cat sitting on a wooden floor."),
    ("coffee.jpg", "A cup of coffee (with foam) on a saucer!"),
    ("rocket.jpg", "A rocket launching into the sky: smoke and fire."),
    ("camera_gray.png", "A black and white photo of a man with a camera."),
    ("noise.png", "Colourful random noise."),
    ("logo_rgba.png", "A logo with a transparent background."),
];

fn record(image: impl Into<PathBuf>, caption: &str, split: Split) -> Record {
    Record { image: image.into(), caption: caption.into(), turns: vec![], source: "test".into(), split }
}

fn train_records(n: usize) -> Vec<Record> {
    IMAGES.iter().take(n).map(|(f, c)| record(fixture(&format!("images/{f}")), c, Split::Train)).collect()
}

fn write_manifest(dir: &Path, name: &str, records: &[Record]) -> PathBuf {
    let p = dir.join(name);
    manifest::write(&p, records).unwrap();
    p
}

fn options(dir: &Path, stage: Stage, data: PathBuf, out: &str) -> TrainOptions {
    let mut o = TrainOptions::new(dir.join(out));
    o.stage = Some(stage);
    o.data = vec![data];
    o.cache_dir = Some(dir.join("cache"));
    o.progress = Progress::Quiet;
    o.steps = Some(6);
    o.batch = Some(2);
    o.grad_accum = Some(2);
    o.seed = Some(7);
    o.warmup_steps = Some(2);
    o.lr = Some(1e-3);
    o
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn load_st(p: &Path) -> io::Loaded {
    io::load_safetensors(p, &Device::Cpu).unwrap()
}

#[test]
fn gradient_reaches_only_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(4));
    let o = options(dir.path(), Stage::One, data, "run");
    let mut t = Trainer::prepare(&spec(), &o).unwrap();
    assert_eq!(t.opt.params.len(), 2, "only llama_proj.weight and llama_proj.bias are trained");

    // Frozen outputs before: LLM logits for fixed embeddings, vision+adapter features of an image.
    let llm_in = t.frozen.llm.embed(&[1, 40, 41, 42, 43, 44]).unwrap();
    let logits_before = bits(&t.frozen.llm.forward_all(&llm_in, Mode::Inference).unwrap());
    let bytes = std::fs::read(fixture("images/cat.jpg")).unwrap();
    let px = image::preprocess(&bytes, "cat", &t.frozen.image, &t.frozen.limits, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let feats_before = bits(&t.frozen.image_features(&px).unwrap());
    let (w0, b0) = (bits(t.weight().as_tensor()), bits(t.bias().as_tensor()));

    for _ in 0..2 {
        t.step().unwrap();
    }

    assert_eq!(bits(&t.frozen.llm.forward_all(&llm_in, Mode::Inference).unwrap()), logits_before, "LLM changed");
    assert_eq!(bits(&t.frozen.image_features(&px).unwrap()), feats_before, "vision/adapter changed");
    assert_ne!(bits(t.weight().as_tensor()), w0, "projection weight did not move");
    assert_ne!(bits(t.bias().as_tensor()), b0, "projection bias did not move");
}

/// The right-padded batch gives the token-weighted mean of the per-sample losses (and the same
/// gradient): padding and masking leak nothing.
#[test]
fn batched_loss_equals_per_sample_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(3));
    let o = options(dir.path(), Stage::Two, data, "run");
    let mut t = Trainer::prepare(&spec(), &o).unwrap();
    let seqs = t.draw(0, 3);
    let lens: Vec<usize> = seqs.iter().map(|s| s.target.len()).collect();
    assert!(lens.iter().any(|&l| l != lens[0]), "want ragged lengths: {lens:?}");
    let feats = Tensor::cat(&seqs.iter().map(|s| t.features.get(s.image).unwrap()).collect::<Vec<_>>(), 0).unwrap();
    let w = candle_core::Var::from_tensor(t.weight().as_tensor()).unwrap();
    let b = candle_core::Var::from_tensor(t.bias().as_tensor()).unwrap();
    let (loss, n) = batch_loss(&t.frozen.llm, &seqs, &feats, w.as_tensor(), b.as_tensor()).unwrap();
    let g = loss.backward().unwrap();
    let gw_batch = g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();

    let (mut sum, mut count) = (0f64, 0usize);
    let mut gw_sum: Option<Tensor> = None;
    for (i, s) in seqs.iter().enumerate() {
        let (l, k) = batch_loss(
            &t.frozen.llm,
            std::slice::from_ref(s),
            &feats.narrow(0, i, 1).unwrap(),
            w.as_tensor(),
            b.as_tensor(),
        )
        .unwrap();
        sum += f64::from(l.to_scalar::<f32>().unwrap()) * k as f64;
        count += k;
        let weighted = (l * k as f64).unwrap();
        let gi = weighted.backward().unwrap().get(w.as_tensor()).unwrap().clone();
        gw_sum = Some(match gw_sum {
            None => gi,
            Some(a) => (a + gi).unwrap(),
        });
    }
    assert_eq!(n, count);
    let batched = f64::from(loss.to_scalar::<f32>().unwrap());
    println!("batched {batched} vs per-sample {}", sum / count as f64);
    assert!((batched - sum / count as f64).abs() < 1e-5, "{batched} vs {}", sum / count as f64);
    let gw_single = (gw_sum.unwrap() / count as f64).unwrap().to_vec2::<f32>().unwrap();
    let worst =
        gw_batch.iter().flatten().zip(gw_single.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "gradient differs by {worst}");
    let _ = t.step().unwrap();
}

#[test]
fn loss_falls_when_overfitting_a_small_subset() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(4));
    let mut o = options(dir.path(), Stage::One, data, "run");
    o.steps = Some(20);
    o.batch = Some(4);
    o.grad_accum = Some(1);
    o.lr = Some(1e-2);
    o.min_lr = Some(1e-3);
    o.warmup_steps = Some(0);
    let r = minigpt4_train::train(&spec(), &o).unwrap();
    let losses: Vec<f64> = r.losses.iter().map(|l| l.1).collect();
    println!("losses: {losses:.3?}");
    println!("{} steps, {:.3}s, {:.1} samples/s", r.steps_this_session, r.train_seconds, r.samples_per_second);
    assert_eq!(losses.len(), 20);
    // The fixture LLM is random (its loss on any text is about ln 512 = 6.24); only the four
    // soft image tokens can move, so the floor is high, but the loss must fall steadily and
    // clearly below what a uniform guess gives.
    let first = losses[0];
    let last = losses[15..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.9 * first, "loss did not fall enough: {first:.3} → {last:.3}");
    assert!(last < (512f64).ln() - 0.5, "loss {last:.3} is not clearly below uniform");
    assert!(losses.windows(5).all(|w| w[4] < w[0]), "loss is not falling steadily");
    for f in ["projection.safetensors", "log.csv", "loss.png", "config.json"] {
        assert!(dir.path().join("run").join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(dir.path().join("run/log.csv")).unwrap();
    assert!(csv.starts_with("step,loss,lr,samples_per_s,elapsed_s\n"));
    assert_eq!(csv.lines().count(), 21);
}

#[test]
fn resume_after_a_kill_gives_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(5));
    let mut full = options(dir.path(), Stage::Two, data.clone(), "full");
    full.save_every = Some(3);
    full.keep_checkpoints = Some(0);
    let a = minigpt4_train::train(&spec(), &full).unwrap();
    assert_eq!(a.steps_done, 6);

    // Killed after step 4: the step-3 checkpoint is the newest, step 4 is lost.
    let mut killed = options(dir.path(), Stage::Two, data.clone(), "resumed");
    killed.save_every = Some(3);
    killed.keep_checkpoints = Some(0);
    killed.stop_after = Some(4);
    let b = minigpt4_train::train(&spec(), &killed).unwrap();
    assert!(b.interrupted && b.projection.is_none());
    assert!(!dir.path().join("resumed/projection.safetensors").exists());

    // Without --resume the directory is refused; with it, the run continues from step 3.
    let mut again = TrainOptions::new(dir.path().join("resumed"));
    again.progress = Progress::Quiet;
    again.cache_dir = Some(dir.path().join("cache"));
    let err = minigpt4_train::train(&spec(), &{
        let mut x = again.clone();
        x.stage = Some(Stage::Two);
        x.data = vec![data.clone()];
        x
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
    again.resume = true;
    let mut changed = again.clone();
    changed.lr = Some(5e-4);
    let err = minigpt4_train::train(&spec(), &changed).unwrap_err().to_string();
    assert!(err.contains("lr schedule"), "{err}");
    let c = minigpt4_train::train(&spec(), &again).unwrap();
    assert_eq!(c.resumed_from, Some(3));
    assert_eq!(c.steps_this_session, 3);
    assert_eq!(c.features_computed, 0, "features must come from the cache");

    let fa = load_st(&dir.path().join("full/projection.safetensors"));
    let fc = load_st(&dir.path().join("resumed/projection.safetensors"));
    for n in ["llama_proj.weight", "llama_proj.bias"] {
        assert_eq!(bits(fa.tensor(n).unwrap()), bits(fc.tensor(n).unwrap()), "{n} differs after resume");
    }
    let ca = load_st(&dir.path().join("full/checkpoints/step-00000006.safetensors"));
    let cc = load_st(&dir.path().join("resumed/checkpoints/step-00000006.safetensors"));
    for n in ca.tensors.keys() {
        assert_eq!(bits(ca.tensor(n).unwrap()), bits(cc.tensor(n).unwrap()), "{n} differs after resume");
    }
    // The log has each step once, with the same losses.
    let la: Vec<(usize, f64)> = a.losses.clone();
    assert_eq!(la, c.losses);
}

#[test]
fn bad_images_and_lines_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    // The same bytes under another name: skipped with the same reason, not given the first one's key.
    let corrupt_copy = dir.path().join("corrupt-copy.jpg");
    std::fs::copy(&corrupt, &corrupt_copy).unwrap();
    let mut records = train_records(3);
    records.push(record(&corrupt, "a broken picture", Split::Train));
    records.push(record(&corrupt_copy, "the same broken picture", Split::Train));
    records.push(record(dir.path().join("missing.png"), "a picture that is not there", Split::Train));
    records.push(record(fixture("images/huge_header.png"), "claims to be enormous", Split::Train));
    records.push(record(fixture("images/small.bmp"), "...!!!", Split::Train));
    let data = write_manifest(dir.path(), "m.jsonl", &records);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"image\": \"x.png\", \"caption\": \"unterminated\n");
    text.push_str("{\"image\": \"y.png\", \"caption\": \"   \", \"source\": \"t\", \"split\": \"train\"}\n");
    std::fs::write(&data, text).unwrap();

    let mut o = options(dir.path(), Stage::One, data, "run");
    o.steps = Some(2);
    let r = minigpt4_train::train(&spec(), &o).unwrap();
    println!("lines: {:?}\nimages: {:?}\nsamples: {:?}", r.skipped_lines, r.skipped_images, r.skipped_samples);
    assert_eq!(r.skipped_lines.len(), 2);
    let skipped: Vec<&PathBuf> = r.skipped_images.iter().map(|(p, _)| p).collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(skipped.contains(&&corrupt));
    assert!(skipped.contains(&&corrupt_copy));
    assert!(skipped.contains(&&dir.path().join("missing.png")));
    assert_eq!(r.skipped_samples.len(), 1, "the all-punctuation caption");
    assert_eq!(r.samples, 3);
    assert!(r.projection.is_some());
}

#[test]
fn heldout_split_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("heldout-corrupt.png");
    std::fs::write(&corrupt, b"garbage").unwrap();
    let readable = dir.path().join("heldout-readable.jpg");
    std::fs::copy(fixture("images/rocket.jpg"), &readable).unwrap();
    let mut records = train_records(2);
    records.push(record(dir.path().join("heldout-missing.png"), "never read", Split::Heldout));
    records.push(record(&corrupt, "never read either", Split::Heldout));
    records.push(record(&readable, "a held-out rocket", Split::Heldout));
    let data = write_manifest(dir.path(), "m.jsonl", &records);
    let o = options(dir.path(), Stage::Two, data, "run");
    let r = minigpt4_train::train(&spec(), &o).unwrap();
    assert_eq!(r.heldout_records, 3);
    assert_eq!(r.records, 2);
    assert!(r.skipped_images.is_empty(), "{:?}", r.skipped_images);
    assert_eq!(r.images, 2);
    // No feature was computed for the held-out images.
    let fp = features::encoder_fingerprint(&spec(), &minigpt4_core::image::ImageConfig::clip(56)).unwrap();
    let cache = FeatureCache::new(&dir.path().join("cache"), &fp);
    assert!(cache.dir.is_dir());
    let key = features::image_key(&std::fs::read(&readable).unwrap());
    assert!(!cache.path(&key).exists(), "a held-out image was encoded");
    assert_eq!(std::fs::read_dir(&cache.dir).unwrap().count(), 2);
}

#[test]
fn feature_cache_is_reused_and_keyed_by_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(3));
    let mut o = options(dir.path(), Stage::One, data.clone(), "a");
    o.steps = Some(1);
    let a = minigpt4_train::train(&spec(), &o).unwrap();
    assert_eq!((a.features_computed, a.features_reused), (3, 0));
    o.out = dir.path().join("b");
    o.stage = Some(Stage::Two);
    let b = minigpt4_train::train(&spec(), &o).unwrap();
    assert_eq!((b.features_computed, b.features_reused), (0, 3), "stage 2 reuses stage 1's features");

    // Cached features equal a fresh computation.
    let p = Pipeline::load(&spec(), &Device::Cpu).unwrap();
    let bytes = std::fs::read(fixture("images/cat.jpg")).unwrap();
    let px = image::preprocess(&bytes, "cat", &p.image, &p.limits, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let fresh = p.model.image_features(&px).unwrap();
    let fp = features::encoder_fingerprint(&spec(), &p.image).unwrap();
    let cached =
        FeatureCache::new(&dir.path().join("cache"), &fp).load(&features::image_key(&bytes), &Device::Cpu).unwrap();
    assert_eq!(bits(&fresh), bits(&cached));

    // A copy of the encoder elsewhere keeps the fingerprint; changed weights change it.
    let copy = dir.path().join("vision.safetensors");
    std::fs::copy(&spec().vision.weights, &copy).unwrap();
    let mut moved = spec();
    moved.vision.weights = copy.clone();
    assert_eq!(features::encoder_fingerprint(&moved, &p.image).unwrap(), fp);
    let mut bytes = std::fs::read(&copy).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&copy, bytes).unwrap();
    assert_ne!(features::encoder_fingerprint(&moved, &p.image).unwrap(), fp);
    let mut resized = p.image;
    resized.size = 42;
    assert_ne!(features::encoder_fingerprint(&spec(), &resized).unwrap(), fp);

    // A truncated cache file is recomputed, not trusted.
    let cache = FeatureCache::new(&dir.path().join("cache"), &fp);
    let entry = cache.path(&features::image_key(&std::fs::read(fixture("images/cat.jpg")).unwrap()));
    let full = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &full[..full.len() - 10]).unwrap();
    o.out = dir.path().join("c");
    let c = minigpt4_train::train(&spec(), &o).unwrap();
    assert_eq!((c.features_computed, c.features_reused), (1, 2));
}

#[test]
fn stage2_masks_exactly_the_prompt() {
    let p = Pipeline::load(&spec(), &Device::Cpu).unwrap();
    let texts = Texts::new(Stage::Two, p.tokenizer.clone(), p.template, p.tokenizer.bos_id(), 160, 50).unwrap();
    let mut r = record("x.png", "A red square on a white background.", Split::Train);
    r.turns = vec![Turn { instruction: "What colour is the square?".into(), answer: "Red.".into() }];
    let (samples, skipped) = texts.build(&[r], &[Some(0)]).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].prompt, Prompt::RandomInstruction);
    let n_img = 4;
    let mut seen = std::collections::HashSet::new();
    for pos in 0..40u64 {
        let seq: Sequence = texts.sequence(&samples[0], 7, 0, pos);
        // The prompt is the template's conversation with one of the four instructions.
        let k = INSTRUCTIONS.iter().position(|i| {
            let mut conv = Conversation::new(p.template);
            conv.add_image();
            conv.ask(i);
            let segs =
                minigpt4_core::template::tokenize_segments(&p.tokenizer, &conv.prompt(), p.template.add_bos()).unwrap();
            segs == vec![seq.before.clone(), seq.after.clone()]
        });
        seen.insert(k.expect("prompt is not one of the instructions"));
        let labels = seq.labels(n_img);
        let prompt_len = seq.before.len() + n_img + seq.after.len();
        for (i, l) in labels.iter().enumerate() {
            // Input position i predicts sequence token i + 1: masked exactly while that token is prompt.
            assert_eq!(l.is_none(), i + 1 < prompt_len, "position {i}");
        }
        let predicted: Vec<u32> = labels.iter().flatten().copied().collect();
        assert_eq!(predicted, seq.target);
    }
    assert_eq!(seen.len(), 4, "all four instructions are drawn");
    let text = p.tokenizer.decode(&samples[0].target, false).unwrap();
    assert!(text.ends_with("</s>") && text.contains("A red square"), "{text}");
    let Prompt::Fixed(segs) = &samples[1].prompt else { panic!("turn sample") };
    let prompt = p.tokenizer.decode(&segs[1], false).unwrap();
    assert!(prompt.contains("What colour is the square?") && prompt.contains("[/INST]"), "{prompt}");
    assert_eq!(p.tokenizer.decode(&samples[1].target, false).unwrap().trim(), "Red.</s>");
}

#[test]
fn stage1_sequence_is_bos_image_caption() {
    let p = Pipeline::load(&spec(), &Device::Cpu).unwrap();
    let texts = Texts::new(Stage::One, p.tokenizer.clone(), p.template, p.tokenizer.bos_id(), 32, 50).unwrap();
    let long = "A Very (long) caption: ".to_string() + &"word ".repeat(80);
    let (samples, _) = texts
        .build(
            &[record("x.png", "A Cat: on a MAT!", Split::Train), record("y.png", &long, Split::Train)],
            &[Some(0), Some(1)],
        )
        .unwrap();
    let seq = texts.sequence(&samples[0], 1, 0, 0);
    assert_eq!(seq.before, vec![p.tokenizer.bos_id().unwrap()]);
    assert!(seq.after.is_empty());
    assert_eq!(seq.target, p.tokenizer.encode("a cat on a mat\n", false).unwrap());
    assert!(samples[1].target.len() <= 32);
    assert_eq!(
        samples[1].target,
        p.tokenizer.encode(&format!("a very long caption {}", "word ".repeat(80).trim()), false).unwrap()[..32]
            .to_vec()
    );
    assert_eq!(seq.labels(4).iter().filter(|l| l.is_some()).count(), seq.target.len());
}

#[test]
fn init_from_pth_and_stage1_result_and_output_loads_in_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(2));
    // A MiniGPT-4 .pth checkpoint as the starting point.
    let pth = fixture("minigpt4/merge4/minigpt4_proj.pth");
    let mut o = options(dir.path(), Stage::One, data.clone(), "s1");
    o.init = Some(pth.clone());
    o.steps = Some(1);
    let t = Trainer::prepare(&spec(), &o).unwrap();
    let reference = Pipeline::load(&spec(), &Device::Cpu).unwrap();
    assert_eq!(bits(t.weight().as_tensor()), bits(reference.model.projector.weight()));
    drop(t);
    minigpt4_train::train(&spec(), &o).unwrap();

    // Stage 2 from stage 1's projection.
    let s1 = dir.path().join("s1/projection.safetensors");
    let mut o2 = options(dir.path(), Stage::Two, data, "s2");
    o2.init = Some(s1.clone());
    o2.steps = Some(1);
    let t2 = Trainer::prepare(&spec(), &o2).unwrap();
    assert_eq!(bits(t2.weight().as_tensor()), bits(load_st(&s1).tensor("llama_proj.weight").unwrap()));
    drop(t2);
    minigpt4_train::train(&spec(), &o2).unwrap();

    // The result (and a checkpoint) work as the model's projection.
    for p in [dir.path().join("s2/projection.safetensors"), dir.path().join("s2/checkpoints/step-00000001.safetensors")]
    {
        let mut s = spec();
        s.projection.weights = p.clone();
        let pipe = Pipeline::load(&s, &Device::Cpu).unwrap();
        assert_eq!(pipe.model.projector.weight().dims(), &[64, 128]);
        assert_eq!(bits(pipe.model.projector.weight()), bits(load_st(&p).tensor("llama_proj.weight").unwrap()));
    }
}

#[test]
fn nouns_warm_start_points_each_training_image_at_its_caption_noun() {
    let dir = tempfile::tempdir().unwrap();
    let records = train_records(6);
    let data = write_manifest(dir.path(), "m.jsonl", &records);
    let mut o = options(dir.path(), Stage::One, data, "run");
    o.warm_start = Some(WarmStart::Nouns);
    let t = Trainer::prepare(&spec(), &o).unwrap();
    let init = load_st(&dir.path().join("run/projection-init.safetensors"));
    assert_eq!(init.meta("init").unwrap(), "nouns");
    let (w, b) = (t.weight().as_tensor(), t.bias().as_tensor());
    assert_eq!(bits(w), bits(init.tensor("llama_proj.weight").unwrap()));

    // Six images with six different nouns: the fit is nearly exact, and each image's mean
    // projected token is nearest (cosine) to its own noun's embedding.
    let nouns: Vec<String> = records.iter().map(|r| keyword::main_noun(&r.caption).unwrap()).collect();
    assert_eq!(nouns.iter().collect::<std::collections::HashSet<_>>().len(), 6, "{nouns:?}");
    let unit =
        |v: Tensor| -> Tensor { v.broadcast_div(&v.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()).unwrap() };
    let embeds: Vec<Tensor> = nouns
        .iter()
        .map(|n| {
            let ids = t.frozen.tokenizer.encode(&format!(" {n}"), false).unwrap();
            t.frozen.llm.embed(&ids).unwrap().squeeze(0).unwrap().mean(0).unwrap()
        })
        .collect();
    let embeds = unit(Tensor::stack(&embeds, 0).unwrap());
    for (i, s) in t.samples.iter().enumerate() {
        let pooled = t.features.get(s.image).unwrap().mean(1).unwrap();
        let pred = unit(pooled.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap());
        let sims = pred.matmul(&embeds.t().unwrap()).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let best = sims.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(best, i, "image {i} ({}) points at `{}`: {sims:?}", nouns[i], nouns[best]);
    }

    // The start is chosen once: --init and --warm-start together are refused.
    let mut both = options(dir.path(), Stage::One, dir.path().join("m.jsonl"), "run2");
    both.warm_start = Some(WarmStart::Nouns);
    both.init = Some(dir.path().join("run/projection-init.safetensors"));
    let err = Trainer::prepare(&spec(), &both).err().unwrap().to_string();
    assert!(err.contains("--warm-start"), "{err}");
}

/// The MiniGPT-v2 fixture: EVA at 112 px, merge-4, and a LoRA adapter on the decoder from its
/// checkpoint (scripts/make_lora_fixtures.py).
fn v2_spec() -> ModelSpec {
    ModelSpec::from_file(&fixture("lora/model.toml")).unwrap()
}

#[test]
fn stage_3_trains_lora_and_projection_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_manifest(dir.path(), "m.jsonl", &train_records(4));
    let mut full = options(dir.path(), Stage::Three, data.clone(), "full");
    full.save_every = Some(3);
    full.keep_checkpoints = Some(0);
    let a = minigpt4_train::train(&v2_spec(), &full).unwrap();
    assert_eq!(a.steps_done, 6);
    let (first, last) = (a.losses[0].1, a.losses[a.losses.len() - 1].1);
    assert!(last < first, "the loss goes down: {first} → {last}");

    // The adapter trained: it moved away from the checkpoint's, and the PEFT folder it was
    // written to loads back as a model file's `[llm] lora` with the trained projection.
    let start = minigpt4_core::lora::LoraAdapter::open(&fixture("lora/minigptv2.pth"), 16.0, &Device::Cpu).unwrap();
    let trained = minigpt4_core::lora::LoraAdapter::open(&dir.path().join("full/lora"), 16.0, &Device::Cpu).unwrap();
    assert_eq!(trained.pairs.len(), start.pairs.len());
    for (key, p) in &start.pairs {
        let t = &trained.pairs[key];
        assert_eq!(t.scale, p.scale);
        let moved = (&t.b - &p.b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(moved > 0.0, "{key:?}: lora_B did not change");
    }
    let mut spec = v2_spec();
    spec.projection.weights = dir.path().join("full/projection.safetensors");
    spec.llm.lora = Some(dir.path().join("full/lora"));
    let p = Pipeline::load(&spec, &Device::Cpu).unwrap();
    assert!(p.image_embeds(&std::fs::read(fixture("images/cat.jpg")).unwrap(), "cat.jpg").is_ok());

    // Killed after step 4 and resumed from step 3: the same adapter and projection, bit for bit.
    let mut killed = options(dir.path(), Stage::Three, data.clone(), "resumed");
    killed.save_every = Some(3);
    killed.keep_checkpoints = Some(0);
    killed.stop_after = Some(4);
    assert!(minigpt4_train::train(&v2_spec(), &killed).unwrap().interrupted);
    let mut again = TrainOptions::new(dir.path().join("resumed"));
    again.progress = Progress::Quiet;
    again.cache_dir = Some(dir.path().join("cache"));
    again.resume = true;
    let c = minigpt4_train::train(&v2_spec(), &again).unwrap();
    assert_eq!(c.resumed_from, Some(3));
    for f in ["lora/adapter_model.safetensors", "projection.safetensors", "checkpoints/step-00000006.safetensors"] {
        let (x, y) = (load_st(&dir.path().join("full").join(f)), load_st(&dir.path().join("resumed").join(f)));
        assert_eq!(x.tensors.len(), y.tensors.len(), "{f}");
        for (n, t) in &x.tensors {
            assert_eq!(bits(t), bits(&y.tensors[n]), "{f}: {n} differs after resume");
        }
    }
    // The checkpoint is itself a MiniGPT-v2-layout file: projection and adapter in one.
    let ckpt = dir.path().join("full/checkpoints/step-00000006.safetensors");
    let from_ckpt = minigpt4_core::lora::LoraAdapter::open(&ckpt, 16.0, &Device::Cpu).unwrap();
    for (key, p) in &trained.pairs {
        assert_eq!(bits(&from_ckpt.pairs[key].a), bits(&p.a));
    }
}
