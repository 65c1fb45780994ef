//! `minigpt4 describe IMAGE|DIR...`

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use minigpt4_core::grounding::{self, Grounded, Task};
use minigpt4_core::template::Conversation;

use crate::{GenArgs, ModelArgs};

#[derive(Args)]
pub struct DescribeArgs {
    /// Image files or directories of images.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[arg(long, default_value = "Describe this image in detail.")]
    pub prompt: String,
    /// One JSON line per image: path, prompt, text, boxes (in image pixels), timings (or error).
    #[arg(long)]
    pub json: bool,
    /// MiniGPT-v2's task identifier, put in front of the prompt; answers with boxes
    /// (`<p>label</p>{<x1><y1><x2><y2>}`) are parsed into `boxes`.
    #[arg(long, value_name = "grounding|refer|detection|identify|vqa")]
    pub task: Option<Task>,
    /// Write the image with the answer's boxes and labels drawn: a PNG file for one image, a
    /// folder (`<name>.boxes.png` each) for several.
    #[arg(long, value_name = "OUT")]
    pub draw: Option<PathBuf>,
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
    let prompt = match args.task {
        Some(t) => t.ask(&args.prompt),
        None => args.prompt.clone(),
    };
    if let Some(out) = args.draw.as_ref().filter(|_| files.len() > 1) {
        std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    }
    let stream = files.len() == 1 && !args.json;
    let mut all_ok = true;
    for file in &files {
        let started = Instant::now();
        let result = describe_one(&pipeline, file, &prompt, &cfg, stream);
        let total_s = started.elapsed().as_secs_f64();
        let result = result.and_then(|(answer, first_token_s, tokens)| {
            // The image is decoded again only when its size matters: for boxes, or to draw.
            let image = match args.draw.is_some() || grounding::has_markup(&answer) {
                true => Some(minigpt4_core::image::load_rgb_file(file, &pipeline.limits)?),
                false => None,
            };
            let (w, h) = image.as_ref().map_or((0, 0), |i| i.dimensions());
            let grounded = grounding::parse_answer(&answer, w, h);
            for w in &grounded.warnings {
                eprintln!("warning: {}: a box in the answer was left out: {w}", file.display());
            }
            if let (Some(out), Some(image)) = (&args.draw, &image) {
                draw(image, &grounded, file, out, files.len() > 1)?;
            }
            Ok((answer, grounded, first_token_s, tokens))
        });
        match result {
            Ok((answer, grounded, first_token_s, tokens)) => {
                if args.json {
                    let line = serde_json::json!({
                        "path": file, "prompt": prompt, "text": grounded.text, "boxes": grounded.boxes,
                        "answer": answer, "tokens": tokens, "first_token_s": first_token_s, "total_s": total_s,
                    });
                    println!("{line}");
                } else if stream {
                    println!();
                } else {
                    println!("{}: {answer}", file.display());
                }
            }
            Err(e) => {
                all_ok = false;
                if args.json {
                    println!("{}", serde_json::json!({"path": file, "prompt": prompt, "error": format!("{e:#}")}));
                } else {
                    eprintln!("error: {}: {e:#}", file.display());
                }
            }
        }
    }
    Ok(all_ok)
}

/// The image with `grounded`'s boxes drawn, at `out` (or `out/<name>.boxes.png` for several images).
fn draw(image: &image::RgbImage, grounded: &Grounded, file: &Path, out: &Path, several: bool) -> Result<()> {
    let path = if several {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        out.join(format!("{stem}.boxes.png"))
    } else {
        out.to_path_buf()
    };
    let drawn = grounding::draw_boxes(image, &grounded.boxes);
    let mut png = Vec::new();
    drawn.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    minigpt4_core::files::write_atomic(&path, &png).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
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
