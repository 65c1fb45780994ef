//! The `minigpt4` binary driven as a user would, on the tiny random-weight fixture model
//! (it loads in milliseconds; its text is gibberish but made of real tokens).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minigpt4-core/tests/fixtures")
}

fn model(variant: &str) -> String {
    fixtures().join(format!("minigpt4/{variant}/model.toml")).display().to_string()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minigpt4-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn minigpt4(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_minigpt4"))
        .args(args)
        .env("MINIGPT4_HOME", tmpdir("home"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const FAST: &[&str] = &["--temperature", "0", "--max-new-tokens", "8"];

#[test]
fn describe_a_directory_with_a_corrupt_file_reports_it_and_goes_on() {
    let dir = tmpdir("batch");
    std::fs::copy(fixtures().join("images/cat.jpg"), dir.join("a_cat.jpg")).unwrap();
    std::fs::copy(fixtures().join("images/logo_rgba.png"), dir.join("c_logo.png")).unwrap();
    std::fs::write(dir.join("b_broken.jpg"), b"this is not a jpeg").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image, not picked up").unwrap();
    let d = dir.display().to_string();
    let m = model("qformer");
    let mut args = vec!["describe", "--model", &m, "--json", &d];
    args.extend(FAST);
    let out = minigpt4(&args, None);
    assert_eq!(out.status.code(), Some(1), "one image failed: exit 1\n{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{}", text(&out.stdout));
    assert!(lines[0]["path"].as_str().unwrap().ends_with("a_cat.jpg"));
    assert!(lines[0]["text"].is_string() && lines[0]["tokens"].as_u64().unwrap() > 0);
    assert!(lines[1]["error"].as_str().unwrap().contains("b_broken.jpg"), "{}", lines[1]);
    assert!(lines[2]["text"].is_string(), "the batch went on after the bad file");
}

#[test]
fn describe_one_image_streams_and_succeeds() {
    let img = fixtures().join("images/cat.jpg").display().to_string();
    let m = model("merge4");
    let mut args = vec!["describe", "--model", &m, &img];
    args.extend(FAST);
    let out = minigpt4(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).trim().is_empty());
}

#[test]
fn chat_through_a_pipe() {
    let dir = tmpdir("chat");
    let transcript = dir.join("t.json");
    let img = fixtures().join("images/cat.jpg");
    let script = format!(
        "/image {}\nWhat is in the picture?\n/task grounding\nAnd the colour?\n/task none\n/task segment\n/save {}\n/reset\n/help\n/quit\n",
        img.display(),
        transcript.display()
    );
    let m = model("qformer");
    let mut args = vec!["chat", "--model", &m];
    args.extend(FAST);
    let out = minigpt4(&args, Some(&script));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("(image added") && stdout.contains("(conversation reset)") && stdout.contains("/image PATH")
    );
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&transcript).unwrap()).unwrap();
    let messages = saved["conversation"]["messages"].as_array().unwrap();
    // image + question, answer, question, answer
    assert_eq!(messages.len(), 4, "{saved}");
    assert!(messages[0]["text"].as_str().unwrap().contains("<ImageHere>"));
    // /task puts MiniGPT-v2's identifier in front of the questions that follow.
    assert_eq!(messages[2]["text"], "[grounding] And the colour?", "{saved}");
    assert!(stdout.contains("(questions now start with [grounding])") && stdout.contains("(no task identifier)"));
    assert!(text(&out.stderr).contains("unknown task `segment`"));
    assert_eq!(saved["images"].as_array().unwrap().len(), 1);
}

#[test]
fn model_file_errors_name_the_part_the_file_and_the_shapes() {
    let dir = tmpdir("models");
    let base = fixtures().join("minigpt4/merge4");
    let toml = std::fs::read_to_string(base.join("model.toml")).unwrap();
    let abs = |s: &str| s.replace("\"../../", &format!("\"{}/../../", base.display()));

    // A missing part.
    let missing = dir.join("missing.toml");
    std::fs::write(&missing, abs(&toml).replace("minigpt4_proj.pth", "gone.safetensors")).unwrap();
    let img = fixtures().join("images/cat.jpg").display().to_string();
    let out = minigpt4(&["describe", "--model", missing.to_str().unwrap(), &img], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("projection") && err.contains("gone.safetensors"), "{err}");

    // A projection of the wrong shape (the Q-Former variant's, 32 → 64, where 128 → 64 is needed).
    let wrong = dir.join("wrong.toml");
    let qproj = fixtures().join("minigpt4/qformer/minigpt4_proj.pth");
    std::fs::write(&wrong, abs(&toml).replace("\"minigpt4_proj.pth\"", &format!("{:?}", qproj.display().to_string())))
        .unwrap();
    let out = minigpt4(&["describe", "--model", wrong.to_str().unwrap(), &img], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("llama_proj.weight") && err.contains("[64, 32]") && err.contains("[64, 128]"), "{err}");
    assert!(err.contains("minigpt4_proj.pth"), "names the file: {err}");

    // Not a model file nor a preset.
    let out = minigpt4(&["describe", "--model", "no-such-model", &img], None);
    let err = text(&out.stderr);
    assert!(err.contains("no-such-model") && err.contains("minigpt4-vicuna-7b"), "{err}");

    // A typo in the file.
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, abs(&toml).replace("[adapter]", "[adaptor]")).unwrap();
    let out = minigpt4(&["describe", "--model", typo.to_str().unwrap(), &img], None);
    assert!(text(&out.stderr).contains("adaptor"), "{}", text(&out.stderr));
}

#[test]
fn printing_into_a_closed_pipe_stops_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_minigpt4"))
        .args(["data", "sources"])
        .env("MINIGPT4_HOME", tmpdir("pipe-home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the child gets to write, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn bench_json_runs_every_part_on_the_fixture_model() {
    // Smoke test only: one repetition, tiny sizes, no timing is checked.
    let img = fixtures().join("images/cat.jpg").display().to_string();
    let m = model("merge4");
    let args = [
        "bench",
        "--json",
        "--model",
        &m,
        "--image",
        &img,
        "--reps",
        "1",
        "--warmup",
        "0",
        "--prefill",
        "8,16",
        "--decode-prompt",
        "8",
        "--decode-tokens",
        "4",
        "--new-tokens",
        "4",
        "--train-batch",
        "2",
        "--train-positions",
        "200",
        "--threads",
        "1",
    ];
    let out = minigpt4(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("one JSON object on stdout");
    assert_eq!(v["threads"], 1);
    let median = |x: &serde_json::Value| x["median"].as_f64().unwrap_or(-1.0);
    let prefill = v["llm"]["prefill"].as_array().unwrap();
    assert_eq!(prefill.len(), 2);
    assert_eq!(prefill[1]["prompt_ids"].as_array().unwrap().len(), 16);
    assert!(median(&prefill[0]["tokens_per_s"]) > 0.0);
    assert_eq!(v["llm"]["decode"]["generated_ids"].as_array().unwrap().len(), 5, "first token + 4 decoded");
    assert!(median(&v["vision"]["encoder_s"]) > 0.0);
    let e = &v["e2e"];
    assert!(median(&e["first_token_s"]) > 0.0 && median(&e["total_s"]) >= median(&e["first_token_s"]));
    assert!(e["peak_rss_bytes"].as_u64().unwrap() > 0 && e["model_bytes"].as_u64().unwrap() > 0);
    assert_eq!(e["prompt_segments"].as_array().unwrap().len(), 2);
    let t = &v["train"];
    assert!(median(&t["step_s"]) > 0.0 && t["losses"][0].as_f64().unwrap().is_finite());
    assert_eq!(t["sequences"].as_array().unwrap().len(), 2);
}

#[test]
fn describe_with_a_minigptv2_task_gives_json_boxes_and_a_drawing() {
    // The random-weight MiniGPT-v2 fixture (EVA at 112 px, LoRA from its checkpoint): its answers
    // are noise, so what is checked is the plumbing: the task identifier in the prompt, `boxes`
    // in the JSON, and a drawn PNG of the image's size (box parsing and drawing are tested on
    // known answers in grounding.rs).
    let dir = tmpdir("v2");
    let img = fixtures().join("images/cat.jpg").display().to_string();
    let m = fixtures().join("lora/model.toml").display().to_string();
    let drawn = dir.join("cat.boxes.png");
    let d = drawn.display().to_string();
    let mut args = vec!["describe", "--model", &m, "--task", "grounding", "--json", "--draw", &d, &img];
    args.extend(FAST);
    let out = minigpt4(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["prompt"], "[grounding] Describe this image in detail.");
    assert!(line["boxes"].is_array() && line["text"].is_string() && line["answer"].is_string(), "{line}");
    let (w, h) = image::image_dimensions(&drawn).unwrap();
    assert_eq!((w, h), image::image_dimensions(fixtures().join("images/cat.jpg")).unwrap());

    let out = minigpt4(&["describe", "--model", &m, "--task", "segment", &img], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expected one of: grounding, refer, detection, identify, vqa"),
        "{}",
        text(&out.stderr)
    );
}
