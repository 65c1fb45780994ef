//! Conversation templates: how a chat with images is written as one prompt string, where
//! generation stops, and how the prompt is cut into token segments around the images.
//!
//! The semantics follow the MiniGPT-4 reference (`minigpt4/conversation/conversation.py`): the
//! "SINGLE" separator style renders `system + sep`, then every message as `role + text + sep`,
//! and a message still waiting for its text (the assistant's, during generation) as `role` alone.
//! An image is a user message `<Img><ImageHere></Img>`; the question that follows it is joined to
//! it with a space.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Where an image's embeddings are spliced into the prompt.
pub const IMAGE_PLACEHOLDER: &str = "<ImageHere>";

/// The user message that stands for one uploaded image.
pub const IMAGE_MESSAGE: &str = "<Img><ImageHere></Img>";

const IMAGE_END: &str = "</Img>";

/// System text of the MiniGPT-4 Vicuna and Llama-2 variants.
pub const MINIGPT4_SYSTEM: &str = "Give the following image: <Img>ImageContent</Img>. You will be able \
to see the image once I provide it to you. Please answer my questions.";

/// System text of the ChatML (SmolLM2) template: short, because every token of it is paid for at
/// every turn by a small model.
pub const CHATML_SYSTEM: &str =
    "You are a helpful assistant. You can see the images the user shares and answer questions about them.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TemplateKind {
    /// MiniGPT-4 with Vicuna v0: `###Human: … ###Assistant: `.
    #[serde(rename = "vicuna_v0")]
    VicunaV0,
    /// MiniGPT-4 with Llama-2-chat: `<s>[INST] … [/INST] `.
    #[serde(rename = "llama2")]
    Llama2,
    /// ChatML, as SmolLM2-Instruct speaks it.
    #[serde(rename = "chatml")]
    ChatMl,
    /// MiniGPT-v2: `<s>[INST] … [/INST]`, no system text.
    #[serde(rename = "minigptv2")]
    MiniGptV2,
}

impl TemplateKind {
    pub const ALL: [TemplateKind; 4] =
        [TemplateKind::VicunaV0, TemplateKind::Llama2, TemplateKind::ChatMl, TemplateKind::MiniGptV2];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TemplateKind::VicunaV0 => "vicuna_v0",
            TemplateKind::Llama2 => "llama2",
            TemplateKind::ChatMl => "chatml",
            TemplateKind::MiniGptV2 => "minigptv2",
        }
    }

    pub fn default_system(self) -> &'static str {
        match self {
            TemplateKind::VicunaV0 | TemplateKind::Llama2 => MINIGPT4_SYSTEM,
            TemplateKind::ChatMl => CHATML_SYSTEM,
            TemplateKind::MiniGptV2 => "",
        }
    }

    /// (user, assistant) role prefixes.
    pub fn roles(self) -> (&'static str, &'static str) {
        match self {
            TemplateKind::VicunaV0 => ("Human: ", "Assistant: "),
            TemplateKind::Llama2 => ("<s>[INST] ", " [/INST] "),
            TemplateKind::ChatMl => ("<|im_start|>user\n", "<|im_start|>assistant\n"),
            TemplateKind::MiniGptV2 => ("<s>[INST] ", " [/INST]"),
        }
    }

    /// Written after the system text and after every finished message.
    pub fn sep(self) -> &'static str {
        match self {
            TemplateKind::VicunaV0 => "###",
            TemplateKind::Llama2 | TemplateKind::MiniGptV2 => "",
            TemplateKind::ChatMl => "<|im_end|>\n",
        }
    }

    /// What the model writes to end its answer; stage-2 training appends it to the target.
    pub fn end_text(self) -> &'static str {
        match self {
            TemplateKind::VicunaV0 => "###",
            TemplateKind::Llama2 | TemplateKind::MiniGptV2 => "</s>",
            TemplateKind::ChatMl => "<|im_end|>",
        }
    }

    /// Text at which generation stops. The Llama-2 variants also stop at `###`: the reference
    /// cuts every answer there anyway, so stopping early changes nothing but the time spent.
    pub fn stop_strings(self) -> &'static [&'static str] {
        match self {
            TemplateKind::VicunaV0 => &["###"],
            TemplateKind::Llama2 | TemplateKind::MiniGptV2 => &["</s>", "###"],
            TemplateKind::ChatMl => &["<|im_end|>", "<|endoftext|>"],
        }
    }

    /// Whether the first prompt segment starts with BOS. The reference tokenizes it with
    /// `add_special_tokens=True` (LLaMA adds `<s>`); a ChatML prompt already opens with
    /// `<|im_start|>`, which is SmolLM2's BOS, so adding one would double it.
    pub fn add_bos(self) -> bool {
        !matches!(self, TemplateKind::ChatMl)
    }

    /// The system block as it opens the prompt.
    fn render_system(self, system: &str) -> String {
        match self {
            // SmolLM2's own chat template writes no system turn when there is no system text.
            TemplateKind::ChatMl if system.is_empty() => String::new(),
            TemplateKind::ChatMl => format!("<|im_start|>system\n{system}{}", self.sep()),
            _ => format!("{system}{}", self.sep()),
        }
    }
}

impl TemplateKind {
    /// The template as a Hugging Face / llama.cpp Jinja chat template (`tokenizer.chat_template`),
    /// for text messages: it renders `messages` (with an optional leading `system` message,
    /// else this template's default system text) exactly as [`Conversation::prompt`] does.
    pub fn jinja(self) -> String {
        let lit = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'").replace('\n', "\\n"));
        let (user, assistant) = self.roles();
        let sep = lit(self.sep());
        let system = match self {
            TemplateKind::ChatMl => format!(
                "{{%- if ns.system -%}}{{{{ {} + ns.system + {sep} }}}}{{%- endif -%}}",
                lit("<|im_start|>system\n")
            ),
            _ => format!("{{{{ ns.system + {sep} }}}}"),
        };
        format!(
            "{{%- set ns = namespace(system={default}) -%}}\
             {{%- for m in messages -%}}{{%- if m['role'] == 'system' -%}}{{%- set ns.system = m['content'] -%}}{{%- endif -%}}{{%- endfor -%}}\
             {system}\
             {{%- for m in messages -%}}\
             {{%- if m['role'] == 'user' -%}}{{{{ {user} }}}}{{%- elif m['role'] == 'assistant' -%}}{{{{ {assistant} }}}}{{%- endif -%}}\
             {{%- if m['role'] != 'system' and m['content'] -%}}{{{{ m['content'] + {sep} }}}}{{%- endif -%}}\
             {{%- endfor -%}}\
             {{%- if add_generation_prompt -%}}{{{{ {assistant} }}}}{{%- endif -%}}",
            default = lit(self.default_system()),
            user = lit(user),
            assistant = lit(assistant),
        )
    }
}

impl fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TemplateKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match key.as_str() {
            "vicuna_v0" | "vicuna" => TemplateKind::VicunaV0,
            "llama2" | "llama_2" => TemplateKind::Llama2,
            "chatml" => TemplateKind::ChatMl,
            "minigptv2" | "minigpt_v2" => TemplateKind::MiniGptV2,
            _ => {
                return Err(Error::Prompt(format!(
                    "unknown template `{s}` (expected one of: vicuna_v0, llama2, chatml, minigptv2)"
                )))
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub text: String,
}

/// A chat in progress: template, system text and the messages so far. Serialises as a
/// transcript (`{"template": "vicuna_v0", "system": …, "messages": [{"role", "text"}]}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub template: TemplateKind,
    pub system: String,
    #[serde(default)]
    pub messages: Vec<Message>,
}

impl Conversation {
    /// An empty conversation with the template's default system text.
    pub fn new(template: TemplateKind) -> Self {
        Self { template, system: template.default_system().to_string(), messages: Vec::new() }
    }

    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = system.into();
        self
    }

    /// Adds an image as its own user message (the reference's `upload_img`); its embeddings go
    /// where its `<ImageHere>` stands. Images count in the order they are added.
    pub fn add_image(&mut self) {
        self.push(Role::User, IMAGE_MESSAGE.to_string());
    }

    /// Adds a user question. Right after an image it joins the image's message with a space
    /// (`<Img><ImageHere></Img> question`), otherwise it is a new message.
    pub fn ask(&mut self, text: &str) {
        match self.messages.last_mut() {
            Some(last) if last.role == Role::User && last.text.ends_with(IMAGE_END) => {
                last.text.push(' ');
                last.text.push_str(text);
            }
            _ => self.push(Role::User, text.to_string()),
        }
    }

    /// Records the assistant's answer (already cleaned with [`answer_from_output`]).
    pub fn answer(&mut self, text: &str) {
        self.push(Role::Assistant, text.to_string());
    }

    /// The prompt to generate from: the transcript, ending with the assistant's role so the
    /// model writes the answer next. When the last message is already an answer the transcript
    /// is returned as it stands.
    pub fn prompt(&self) -> String {
        self.prompt_with_text_spans().0
    }

    /// [`Conversation::prompt`] and the byte ranges in it that are the system text and the
    /// messages' text (what a user or client wrote), ascending. Only the rest is the
    /// template's markup, where control tokens are real.
    pub fn prompt_with_text_spans(&self) -> (String, Vec<Range<usize>>) {
        let (user, assistant) = self.template.roles();
        let sep = self.template.sep();
        let mut spans = Vec::new();
        let mut out = self.template.render_system(&self.system);
        if !self.system.is_empty() {
            // Every template renders the system text as `…{system}{sep}`.
            let at = out.len() - sep.len() - self.system.len();
            spans.push(at..at + self.system.len());
        }
        for m in &self.messages {
            out.push_str(match m.role {
                Role::User => user,
                Role::Assistant => assistant,
            });
            // The reference writes an empty message as its role alone, like a pending one.
            if !m.text.is_empty() {
                spans.push(out.len()..out.len() + m.text.len());
                out.push_str(&m.text);
                out.push_str(sep);
            }
        }
        if self.messages.last().is_none_or(|m| m.role == Role::User) {
            out.push_str(assistant);
        }
        (out, spans)
    }

    /// Token ids of the prompt's pieces between images (see [`tokenize_segments`]), with the
    /// system and message text tokenized as plain text: a control token's string in it
    /// (`<|im_start|>`, `</s>`) stays characters, so nobody can forge a turn by typing one.
    pub fn tokenize(&self, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
        let (prompt, spans) = self.prompt_with_text_spans();
        let add_bos = self.template.add_bos();
        let mut offset = 0;
        split_on_images(&prompt)
            .into_iter()
            .enumerate()
            .map(|(i, seg)| {
                let end = offset + seg.len();
                let local: Vec<Range<usize>> = spans
                    .iter()
                    .filter(|r| r.start < end && r.end > offset)
                    .map(|r| r.start.max(offset) - offset..r.end.min(end) - offset)
                    .collect();
                offset = end + IMAGE_PLACEHOLDER.len();
                tok.encode_with_literals(seg, &local, add_bos && i == 0)
            })
            .collect()
    }

    /// Forgets all messages (and so all images); template and system text stay.
    pub fn reset(&mut self) {
        self.messages.clear();
    }

    /// How many images the prompt refers to, i.e. how many `<ImageHere>` it holds.
    pub fn num_images(&self) -> usize {
        self.messages.iter().map(|m| count_images(&m.text)).sum()
    }

    /// The last answer, if the assistant spoke last.
    pub fn last_answer(&self) -> Option<&str> {
        self.messages.last().filter(|m| m.role == Role::Assistant).map(|m| m.text.as_str())
    }

    fn push(&mut self, role: Role, text: String) {
        self.messages.push(Message { role, text });
    }
}

/// The answer in a raw generation, cleaned as the reference does: the text before the first
/// stop string, after the last `Assistant:` (a model sometimes repeats its role), trimmed.
pub fn answer_from_output(kind: TemplateKind, text: &str) -> String {
    let end = kind.stop_strings().iter().filter_map(|s| text.find(s)).min().unwrap_or(text.len());
    let text = &text[..end];
    let text = text.rsplit("Assistant:").next().unwrap_or(text);
    text.trim().to_string()
}

/// When generation must stop: stop strings (for decoded text) and the token sequences they
/// encode to (for ids), plus EOS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSequences {
    pub strings: Vec<String>,
    /// Each a sequence whose appearance at the end of the generated ids ends generation.
    pub token_seqs: Vec<Vec<u32>>,
}

impl StopSequences {
    /// The template's stop strings with every way `tok` spells them: alone (with whatever the
    /// tokenizer puts in front of a text, such as SentencePiece's `▁`) and as the continuation of
    /// preceding text. LLaMA spells `###` as `[835]` alone and `[2277, 29937]` after a word; both
    /// must stop generation.
    pub fn for_template(kind: TemplateKind, tok: &Tokenizer) -> Result<Self> {
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        let mut add = |seq: Vec<u32>| {
            if !seq.is_empty() && !seqs.contains(&seq) {
                seqs.push(seq);
            }
        };
        if let Some(eos) = tok.eos_id() {
            add(vec![eos]);
        }
        for stop in kind.stop_strings() {
            add(tok.encode(stop, false)?);
            // Text the stop string can follow in an answer: a word, punctuation, a digit, a
            // space, a line break.
            for ctx in ["a", "the", ".", "1", " ", "\n"] {
                let head = tok.encode(ctx, false)?;
                let full = tok.encode(&format!("{ctx}{stop}"), false)?;
                // Only when the context tokenizes the same on its own; otherwise the split point
                // between context and stop string is not a token boundary.
                if let Some(tail) = full.strip_prefix(head.as_slice()) {
                    add(tail.to_vec());
                }
            }
        }
        Ok(Self { strings: kind.stop_strings().iter().map(|s| s.to_string()).collect(), token_seqs: seqs })
    }

    /// The length of the stop sequence `ids` ends with, if any (the longest when several do).
    pub fn match_tokens(&self, ids: &[u32]) -> Option<usize> {
        self.token_seqs.iter().filter(|s| ids.ends_with(s)).map(|s| s.len()).max()
    }

    /// Byte offset of the earliest stop string in `text`.
    pub fn find_in_text(&self, text: &str) -> Option<usize> {
        self.strings.iter().filter_map(|s| text.find(s.as_str())).min()
    }
}

/// The prompt cut at every `<ImageHere>`: one more piece than there are images.
pub fn split_on_images(prompt: &str) -> Vec<&str> {
    prompt.split(IMAGE_PLACEHOLDER).collect()
}

pub fn count_images(text: &str) -> usize {
    text.matches(IMAGE_PLACEHOLDER).count()
}

/// Fails unless the prompt has exactly one `<ImageHere>` per supplied image.
pub fn check_image_count(prompt: &str, n_images: usize) -> Result<()> {
    let n = count_images(prompt);
    if n == n_images {
        Ok(())
    } else {
        Err(Error::Prompt(format!(
            "the prompt has {n} image placeholder{} ({IMAGE_PLACEHOLDER}) but {n_images} image{} \
             were supplied",
            if n == 1 { "" } else { "s" },
            if n_images == 1 { "" } else { "s" },
        )))
    }
}

/// Token ids of each piece of the prompt between images, each piece tokenized on its own as
/// the reference does; BOS (when `add_bos`) only in front of the first. Image `i`'s embeddings go
/// between piece `i` and piece `i + 1`.
pub fn tokenize_segments(tok: &Tokenizer, prompt: &str, add_bos: bool) -> Result<Vec<Vec<u32>>> {
    split_on_images(prompt).into_iter().enumerate().map(|(i, seg)| tok.encode(seg, add_bos && i == 0)).collect()
}
