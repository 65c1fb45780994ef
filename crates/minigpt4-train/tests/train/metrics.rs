//! BLEU-1..4 and CIDEr-D against pycocoevalcap 1.2 (`scripts/make_metric_fixtures.py`), on
//! pre-tokenized corpora: corpus and per-image scores.
//!
//! Tolerance: 1e-12 relative (plus 1e-15 absolute for zeros). The scorers follow the Python
//! code's operation order; what can still differ is numpy's `log` (its own SIMD code, not libm)
//! and the summation order of `np.mean`, a few ulp at most: the largest difference measured on
//! these fixtures is 2.6e-16 relative.

use std::path::PathBuf;

use minigpt4_train::metrics::{bleu, cider_d};
use serde_json::Value;

const REL: f64 = 1e-12;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= REL * a.abs().max(b.abs()) + 1e-15
}

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics/coco.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn bleu_and_cider_d_match_pycocoevalcap() {
    let fx = fixture();
    let cases = fx["cases"].as_object().unwrap();
    assert!(cases.len() >= 5);
    let mut worst: f64 = 0.0;
    for (name, case) in cases {
        let cands: Vec<&str> = case["candidates"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let refs: Vec<Vec<&str>> = case["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rs| rs.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect())
            .collect();
        let b = bleu(&cands, &refs);
        let c = cider_d(&cands, &refs);
        let mut check = |what: String, ours: f64, theirs: f64| {
            assert!(close(ours, theirs), "{name}: {what}: ours {ours:e}, pycocoevalcap {theirs:e}");
            if theirs != 0.0 {
                worst = worst.max(((ours - theirs) / theirs).abs());
            }
        };
        for k in 0..4 {
            check(format!("BLEU-{}", k + 1), b.corpus[k], f(&case["bleu"][k]));
            for (i, per) in b.per_image.iter().enumerate() {
                check(format!("BLEU-{} of image {i}", k + 1), per[k], f(&case["bleu_per_image"][k][i]));
            }
        }
        check("CIDEr-D".into(), c.corpus, f(&case["cider"]));
        assert_eq!(c.per_image.len(), cands.len());
        for (i, s) in c.per_image.iter().enumerate() {
            check(format!("CIDEr-D of image {i}"), *s, f(&case["cider_per_image"][i]));
        }
    }
    eprintln!("largest relative difference from pycocoevalcap: {worst:e}");
}

#[test]
fn the_fixture_is_not_trivial() {
    // The comparison above must be able to fail: the cases spread over the score range.
    let fx = fixture();
    let main = &fx["cases"]["main"];
    assert!(main["candidates"].as_array().unwrap().len() >= 20);
    let per: Vec<f64> = main["cider_per_image"].as_array().unwrap().iter().map(f).collect();
    assert!(per.contains(&0.0) && per.iter().any(|&x| x > 5.0));
    let b4 = f(&main["bleu"][3]);
    assert!(b4 > 0.1 && b4 < 0.9, "{b4}");
}
