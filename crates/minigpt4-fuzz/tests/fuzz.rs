//! Short seeded fuzz runs of every target (the long ones are `scripts/fuzz.sh`), and the inputs
//! that broke the parsers before, rebuilt by the generators: each must now be a clear error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use minigpt4_core::weights::Weights;
use minigpt4_fuzz::build::{self, Gguf, GgufValue, Pickle};
use minigpt4_fuzz::{run, Harness, Target};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minigpt4-fuzz-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A few seconds per target: no crash, and the generators reach both sides (some inputs load,
/// most are refused), so the parsers are exercised past their first check.
#[test]
fn short_seeded_runs_find_no_crash() {
    for target in Target::ALL {
        let h = Harness::new(target, &scratch(target.name())).unwrap();
        let n = if target == Target::Gguf { 3_000 } else { 20_000 };
        let r = run(&h, 7, 0, n, |_, _| {});
        eprintln!(
            "{}: {} inputs in {:.1?}: {} accepted, {} refused",
            target.name(),
            r.inputs,
            r.elapsed,
            r.accepted,
            r.refused
        );
        assert!(r.crashes.is_empty(), "{}: crashes {:?}", target.name(), r.crashes);
        assert!(r.accepted > 0 && r.refused > 0, "{}: {} accepted, {} refused", target.name(), r.accepted, r.refused);
    }
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Loads a checkpoint the way the CLI does and returns the error text (it must fail).
fn weights_error(path: &std::path::Path) -> String {
    let t = Instant::now();
    let res = Weights::open(path, &Device::Cpu, DType::F32).and_then(|w| {
        for n in w.names() {
            w.get_any(&n)?;
        }
        Ok(())
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{}: took {:?}", path.display(), t.elapsed());
    res.expect_err(&format!("{} must be refused", path.display())).to_string()
}

fn gguf_error(path: &std::path::Path) -> String {
    let t = Instant::now();
    let res = minigpt4_core::llama::Llama::load_gguf(path, &Device::Cpu);
    assert!(t.elapsed() < Duration::from_secs(5), "{}: took {:?}", path.display(), t.elapsed());
    match res {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_gguf_files_that_broke_the_loader_are_errors() {
    let dir = scratch("gguf-replay");
    let mut rng = StdRng::seed_from_u64(1);
    let valid = Gguf::tiny_llama(&mut rng, true);
    let ok = write(&dir, "valid.gguf", &valid.encode());
    minigpt4_core::llama::Llama::load_gguf(&ok, &Device::Cpu).expect("the untouched file loads");

    let set_kv = |g: &mut Gguf, key: &str, v: GgufValue| {
        g.kvs.retain(|(k, _)| k != key);
        g.kvs.push((key.into(), v));
    };
    let mut cases: Vec<(&str, Gguf, &str)> = Vec::new();
    let mut g = valid.clone();
    set_kv(&mut g, "general.alignment", GgufValue::U32(0));
    cases.push(("alignment 0", g, ""));
    let mut g = valid.clone();
    g.tensors[0].dims = Vec::new();
    cases.push(("token_embd with 0 dims", g, "token_embd"));
    for (name, count) in [("block_count 2^62", 1u64 << 62), ("block_count u32::MAX", u32::MAX as u64)] {
        let mut g = valid.clone();
        set_kv(&mut g, "llama.block_count", GgufValue::U64(count));
        cases.push((name, g, ""));
    }
    let mut g = valid.clone();
    g.tensors[2].dims = vec![1 << 32, 1 << 32, 1 << 2];
    cases.push(("dims that wrap", g, ""));
    let mut g = valid.clone();
    g.tensors[1].dims = vec![1 << 40];
    cases.push(("a tensor past the end of the file", g, "past the end"));
    let mut g = valid.clone();
    set_kv(&mut g, "llama.context_length", GgufValue::U32(u32::MAX));
    set_kv(&mut g, "llama.attention.key_length", GgufValue::U32(1 << 31));
    cases.push(("context and head sizes of 2^32", g, "out of range"));
    let mut g = valid.clone();
    let norm = g.tensors.iter().position(|t| t.name == "output_norm.weight").unwrap();
    let at = g.tensors[norm].offset as usize;
    g.data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    cases.push(("NaN weights", g, "output_norm.weight` holds NaN"));
    for (name, g, needle) in cases {
        let p = write(&dir, "hostile.gguf", &g.encode());
        let e = gguf_error(&p);
        assert!(e.contains("hostile.gguf") || !needle.is_empty(), "{name}: {e}");
        assert!(e.contains(needle), "{name}: {e}");
    }
}

#[test]
fn the_pth_files_that_broke_the_loader_are_errors() {
    let dir = scratch("pth-replay");
    let mut rng = StdRng::seed_from_u64(2);
    let (recs, storages) = build::state_dict(&mut rng);
    for (layout, bytes) in [
        ("zip", build::torch_zip(build::state_dict_pickle(&recs, true), &storages, false)),
        ("legacy", build::torch_legacy(build::state_dict_pickle(&recs, false), &storages)),
    ] {
        let p = write(&dir, &format!("valid-{layout}.pth"), &bytes);
        let w = Weights::open(&p, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(w.get_any("llama_proj.weight").unwrap().dims(), &[4, 8], "{layout}");
    }

    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    // Short argument tuples for `_rebuild_tensor_v2` (candle panicked in Vec::remove).
    for n in 0..4 {
        let mut p = Pickle::default();
        p.proto().empty_dict().mark().str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
        for _ in 0..n {
            p.int(0);
        }
        p.tuple().reduce().setitems().stop();
        cases.push((format!("{n}-argument rebuild"), p.ops, "tensor record"));
    }
    // A million nested tuples in a small file (candle overflowed the stack).
    let mut p = Pickle::default();
    p.proto();
    p.ops.extend(std::iter::repeat_n(b'(', 1_000_000));
    p.ops.extend(std::iter::repeat_n(b't', 1_000_000));
    p.stop();
    cases.push(("a million nested tuples".into(), p.ops, "larger than any state dict"));
    // Billion laughs: a list appended to itself 40 times through the memo (doubled memory
    // 40 times in candle).
    let mut p = Pickle::default();
    p.proto().empty_list().put(0);
    for _ in 0..40 {
        p.mark().get(0).get(0).appends();
    }
    p.stop();
    cases.push(("billion laughs".into(), p.ops, "nested"));
    // Code next to a real tensor (candle dropped it silently).
    let mut p = Pickle::default();
    p.proto().global("collections", "OrderedDict").empty_tuple().reduce().mark();
    build::tensor_record(&mut p, &recs[0]);
    p.str("payload").global("os", "system").mark().str("touch /tmp/pwned").tuple().reduce().setitems().stop();
    cases.push(("os.system next to a tensor".into(), p.ops, "os.system"));
    // A storage record that claims more than its entry holds.
    let mut big = recs.clone();
    big[0].numel = 1 << 40;
    cases.push(("a storage of 2^40 elements".into(), build::state_dict_pickle(&big, false), ""));
    for (name, pickle, needle) in cases {
        for (layout, bytes) in [
            ("zip", build::torch_zip(pickle.clone(), &storages, false)),
            ("legacy", build::torch_legacy(pickle, &storages)),
        ] {
            let p = write(&dir, "hostile.pth", &bytes);
            eprintln!("{name} ({layout})");
            let e = weights_error(&p);
            assert!(e.contains("hostile.pth"), "{name} ({layout}): {e}");
            assert!(e.contains(needle), "{name} ({layout}): {e}");
        }
    }
    // A deflated storage inflating 64 MiB of zeros from a few KB is refused before inflating.
    let p = write(&dir, "bomb.pth", &build::zip_bomb_pth(64));
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    let e = weights_error(&p);
    assert!(e.contains("zip bomb"), "{e}");
    // NaN in the weights.
    let mut nan = storages.clone();
    nan[1][..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = write(&dir, "nan.pth", &build::torch_zip(build::state_dict_pickle(&recs, false), &nan, false));
    assert!(weights_error(&p).contains("`llama_proj.bias` holds NaN"));
}

#[test]
fn hostile_safetensors_and_images_are_errors() {
    let dir = scratch("st-replay");
    let mut rng = StdRng::seed_from_u64(3);
    let ok = write(&dir, "valid.safetensors", &build::safetensors(&mut rng, false));
    Weights::open(&ok, &Device::Cpu, DType::F32).unwrap();
    // A header length of 2^62, and NaN in the data.
    let mut bytes = build::safetensors(&mut rng, false);
    bytes[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    weights_error(&write(&dir, "hostile.safetensors", &bytes));
    let mut bytes = build::safetensors(&mut rng, false);
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert!(weights_error(&write(&dir, "inf.safetensors", &bytes)).contains("holds NaN or infinite"));

    // A PNG claiming 100,000 × 100,000 pixels is refused from its header, at once.
    let t = Instant::now();
    let e = minigpt4_core::image::load_rgb(&build::png_claiming(100_000, 100_000), "huge.png", &Default::default())
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(100) && e.to_string().contains("huge.png"), "{e}");
}

/// Found by the fuzzer: a GGUF claiming a context of 2^32 − 1 positions made the loader build
/// RoPE tables for all of them (32 GB; it ran out of memory or for minutes). The tables are
/// capped now: the file loads at once, and a sequence past the cap is an error.
#[test]
fn a_huge_context_length_loads_at_once() {
    let dir = scratch("context");
    let mut rng = StdRng::seed_from_u64(4);
    let mut g = Gguf::tiny_llama(&mut rng, false);
    g.kvs.retain(|(k, _)| k != "llama.context_length");
    g.kvs.push(("llama.context_length".into(), GgufValue::U32(u32::MAX)));
    let p = write(&dir, "context.gguf", &g.encode());
    let t = Instant::now();
    let (llm, _) = minigpt4_core::llama::Llama::load_gguf(&p, &Device::Cpu).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(llm.config().max_position_embeddings, u32::MAX as usize);
}
