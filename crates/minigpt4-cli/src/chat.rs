//! `minigpt4 chat [IMAGE]`: a multi-turn conversation on stdin/stdout, streamed. Works the same
//! whether stdin is a terminal or a pipe.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::Args;
use minigpt4_core::grounding::Task;
use minigpt4_core::pipeline::Pipeline;
use minigpt4_core::template::Conversation;

use crate::{GenArgs, ModelArgs};

#[derive(Args)]
pub struct ChatArgs {
    /// An image to start the conversation with.
    pub image: Option<PathBuf>,
    /// MiniGPT-v2's task identifier, put in front of every question (change it with /task).
    #[arg(long, value_name = "grounding|refer|detection|identify|vqa")]
    pub task: Option<Task>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
}

const HELP: &str = "commands: /image PATH (add an image), /reset (forget everything), \
/task grounding|refer|detection|identify|vqa|none (MiniGPT-v2's task identifier for the next questions), \
/save FILE (transcript as JSON), /help, /quit";

struct Session<'a> {
    pipeline: &'a Pipeline,
    conv: Conversation,
    images: Vec<Tensor>,
    image_paths: Vec<PathBuf>,
}

impl Session<'_> {
    fn add_image(&mut self, path: PathBuf) -> Result<()> {
        let bytes = minigpt4_core::image::read_file(&path, &self.pipeline.limits)?;
        let embeds = self.pipeline.image_embeds(&bytes, &path.display().to_string())?;
        self.conv.add_image();
        self.images.push(embeds);
        self.image_paths.push(path);
        Ok(())
    }

    fn reset(&mut self) {
        self.conv.reset();
        self.images.clear();
        self.image_paths.clear();
    }

    fn save(&self, file: &str) -> Result<()> {
        let json = serde_json::json!({
            "template": self.pipeline.template,
            "images": self.image_paths,
            "conversation": self.conv,
        });
        std::fs::write(file, serde_json::to_string_pretty(&json)?).with_context(|| file.to_string())?;
        Ok(())
    }
}

pub fn run(args: ChatArgs) -> Result<bool> {
    let pipeline = args.model.load()?;
    let cfg = args.gen.config(&pipeline)?;
    let mut s = Session {
        pipeline: &pipeline,
        conv: Conversation::new(pipeline.template),
        images: vec![],
        image_paths: vec![],
    };
    if let Some(img) = args.image {
        s.add_image(img)?;
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("{HELP}");
    }
    let mut ok = true;
    let mut task = args.task;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (cmd, rest) = line.split_once(' ').map_or((line, ""), |(c, r)| (c, r.trim()));
        match cmd {
            "/quit" | "/exit" => break,
            "/help" => println!("{HELP}"),
            "/reset" => {
                s.reset();
                println!("(conversation reset)");
            }
            "/image" if !rest.is_empty() => match s.add_image(PathBuf::from(rest)) {
                Ok(()) => println!("(image added: {rest})"),
                Err(e) => {
                    ok = false;
                    eprintln!("error: {e:#}");
                }
            },
            "/task" if rest == "none" => {
                task = None;
                println!("(no task identifier)");
            }
            "/task" if !rest.is_empty() => match rest.parse::<Task>() {
                Ok(t) => {
                    task = Some(t);
                    println!("(questions now start with {})", t.tag());
                }
                Err(e) => eprintln!("error: {e}"),
            },
            "/save" if !rest.is_empty() => match s.save(rest) {
                Ok(()) => println!("(saved {rest})"),
                Err(e) => {
                    ok = false;
                    eprintln!("error: {e:#}");
                }
            },
            c if c.starts_with('/') => eprintln!("unknown command `{line}`; {HELP}"),
            _ => {
                if s.images.is_empty() {
                    eprintln!("note: no image yet; add one with /image PATH");
                }
                match task {
                    Some(t) => s.conv.ask(&t.ask(line)),
                    None => s.conv.ask(line),
                }
                let result = pipeline.respond(&s.conv, &s.images, &cfg, &mut |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                    ControlFlow::Continue(())
                });
                println!();
                match result {
                    Ok(g) => s.conv.answer(&g.text),
                    Err(e) => {
                        ok = false;
                        s.conv.answer("");
                        eprintln!("error: {e:#}");
                    }
                }
            }
        }
    }
    Ok(ok)
}
