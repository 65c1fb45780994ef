//! `minigpt4 describe IMAGE|DIR...`

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use minigpt4_core::template::Conversation;

use crate::{GenArgs, ModelArgs};

#[derive(Args)]
pub struct DescribeArgs {
    /// Image files or directories of images.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[arg(long, default_value = "Describe this image in detail.")]
    pub prompt: String,
    /// One JSON line per image: path, prompt, text, timings (or error).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp"];

/// Files as given, directories expanded to their image files (sorted, not recursive).
fn expand(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// Returns whether every image was described.
pub fn run(args: DescribeArgs) -> Result<bool> {
    let files = expand(&args.inputs);
    if files.is_empty() {
        anyhow::bail!("no images found in {:?}", args.inputs);
    }
    let pipeline = args.model.load()?;
    let cfg = args.gen.config(&pipeline)?;
    let stream = files.len() == 1 && !args.json;
    let mut all_ok = true;
    for file in &files {
        let started = Instant::now();
        let result = describe_one(&pipeline, file, &args.prompt, &cfg, stream);
        let total_s = started.elapsed().as_secs_f64();
        match result {
            Ok((text, first_token_s, tokens)) => {
                if args.json {
                    let line = serde_json::json!({
                        "path": file, "prompt": args.prompt, "text": text,
                        "tokens": tokens, "first_token_s": first_token_s, "total_s": total_s,
                    });
                    println!("{line}");
                } else if stream {
                    println!();
                } else {
                    println!("{}: {text}", file.display());
                }
            }
            Err(e) => {
                all_ok = false;
                if args.json {
                    println!("{}", serde_json::json!({"path": file, "prompt": args.prompt, "error": format!("{e:#}")}));
                } else {
                    eprintln!("error: {}: {e:#}", file.display());
                }
            }
        }
    }
    Ok(all_ok)
}

fn describe_one(
    pipeline: &minigpt4_core::pipeline::Pipeline,
    file: &Path,
    prompt: &str,
    cfg: &minigpt4_core::generate::GenerationConfig,
    stream: bool,
) -> Result<(String, Option<f64>, usize)> {
    let started = Instant::now();
    let bytes = minigpt4_core::image::read_file(file, &pipeline.limits)?;
    let image = pipeline.image_embeds(&bytes, &file.display().to_string())?;
    let mut conv = Conversation::new(pipeline.template);
    conv.add_image();
    conv.ask(prompt);
    let mut first = None;
    let mut out = std::io::stdout();
    let generation = pipeline.respond(&conv, &[image], cfg, &mut |piece| {
        first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        ControlFlow::Continue(())
    })?;
    Ok((generation.text, first, generation.token_ids.len()))
}
