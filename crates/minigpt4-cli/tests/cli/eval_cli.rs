//! `minigpt4 eval` as a user runs it, on the tiny random-weight fixture model (merge-4 variant):
//! a manifest with a corrupt image, a baseline with a random projection and a second label
//! into the same folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Three held-out records (one a corrupt file), one training record and one bad line; image
/// paths relative to the manifest's folder.
fn manifest(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(fixtures().join("images/cat.jpg"), images.join("cat.jpg")).unwrap();
    std::fs::copy(fixtures().join("images/coffee.jpg"), images.join("coffee.jpg")).unwrap();
    std::fs::write(images.join("broken.png"), b"not a png at all").unwrap();
    let lines = [
        r#"{"image": "images/cat.jpg", "caption": "A cat sitting on a wooden floor.", "source": "t", "split": "heldout"}"#,
        r#"{"image": "images/broken.png", "caption": "A broken picture.", "source": "t", "split": "heldout"}"#,
        r#"{"image": "images/coffee.jpg", "caption": "A cup of coffee on a saucer.", "source": "t", "split": "heldout"}"#,
        r#"{"image": "images/cat.jpg", "caption": "Training only.", "source": "t", "split": "train"}"#,
        r#"{"image": "#,
    ];
    let p = dir.join("m.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn eval(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minigpt4"))
        .arg("eval")
        .arg("--model")
        .arg(fixtures().join("minigpt4/merge4/model.toml"))
        .arg("--data")
        .arg(dir.join("m.jsonl"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--max-new-tokens", "6", "--quiet"])
        .args(extra)
        .env("MINIGPT4_HOME", dir.join("home"))
        .output()
        .unwrap()
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The label column of the Markdown table's data rows.
fn table_labels(md: &str) -> Vec<String> {
    md.lines()
        .skip_while(|l| !l.starts_with("| label |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().to_string())
        .collect()
}

#[test]
fn eval_skips_a_corrupt_image_and_merges_labels_into_one_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    manifest(dir);
    let out = dir.join("out");

    let run = eval(dir, &["--label", "random", "--random-projection", "42"]);
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("broken.png"), "the corrupt image is reported: {stderr}");
    let r = json(&out.join("eval.json"));
    assert_eq!(r, json(&out.join("eval-random.json")));
    assert_eq!(r["label"], "random");
    let c = &r["counts"];
    assert_eq!(
        (c["records"].as_u64(), c["in_split"].as_u64(), c["selected"].as_u64()),
        (Some(4), Some(3), Some(3)),
        "{c}"
    );
    assert_eq!(
        (c["scored"].as_u64(), c["failed"].as_u64(), c["skipped_lines"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{c}"
    );
    assert_eq!(r["settings"]["projection"], serde_json::json!({"kind": "random", "seed": 42}));
    assert_eq!(r["settings"]["split"], "heldout");
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[1]["image"].as_str().unwrap().ends_with("broken.png"));
    assert!(items[1]["error"].is_string() && items[1]["generated"].is_null(), "{}", items[1]);
    for i in [0, 2] {
        assert!(items[i]["generated"].is_string() && items[i]["cider_d"].is_f64(), "{}", items[i]);
    }
    assert_eq!(items[0]["keyword"], "cat");
    assert_eq!(items[2]["keyword"], "cup");
    let m = &r["metrics"];
    for k in ["bleu4", "cider_d"] {
        let v = m[k].as_f64().unwrap_or_else(|| panic!("{k} in {m}"));
        assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
    }
    assert!(m["keyword_hit_rate"].as_f64().is_some_and(|h| (0.0..=1.0).contains(&h)), "{m}");
    assert_eq!(table_labels(&std::fs::read_to_string(out.join("eval.md")).unwrap()), ["random"]);
    let first_texts: Vec<Value> = items.iter().map(|i| i["generated"].clone()).collect();

    // A second label in the same folder: one table, two rows, in run order; stdout prints it.
    let proj = fixtures().join("minigpt4/merge4/minigpt4_proj.pth");
    let run = eval(dir, &["--label", "stage1", "--projection", proj.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let md = std::fs::read_to_string(out.join("eval.md")).unwrap();
    assert_eq!(table_labels(&md), ["random", "stage1"], "{md}");
    assert_eq!(table_labels(&text(&run.stdout)), ["random", "stage1"], "{}", text(&run.stdout));
    assert!(md.contains("2 (1 failed)"), "{md}");
    assert_eq!(json(&out.join("eval.json"))["label"], "stage1");
    assert!(out.join("eval-random.json").is_file() && out.join("eval-stage1.json").is_file());

    // The random baseline is reproducible, and evaluating a label again replaces its row.
    let run = eval(dir, &["--label", "random", "--random-projection", "42"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let again = json(&out.join("eval-random.json"));
    let texts: Vec<Value> = again["items"].as_array().unwrap().iter().map(|i| i["generated"].clone()).collect();
    assert_eq!(texts, first_texts);
    assert_eq!(table_labels(&std::fs::read_to_string(out.join("eval.md")).unwrap()), ["stage1", "random"]);
}

#[test]
fn eval_of_an_empty_split_is_an_error_that_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    manifest(dir);
    let run = eval(dir, &["--split", "train", "--limit", "0"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("no train records"), "{}", text(&run.stderr));
}
