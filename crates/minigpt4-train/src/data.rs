//! Training samples from JSONL manifests: only `split = "train"` records are used; held-out
//! records are counted and never touched (their images are not opened, their text is not used).
//!
//! * Stage 1: `[BOS] + image tokens + caption`, the caption through [`pre_caption`] with `\n`
//!   appended, at most `max_txt_len` (32) tokens; the loss is on the caption tokens.
//! * Stage 2: the template's conversation with the image and one of [`INSTRUCTIONS`] chosen at
//!   random (seeded, per epoch and position), target = description + the template's end text, at
//!   most `max_txt_len` (160) tokens; everything before the target is masked. A record's `turns`
//!   give one more stage-2 sample each, with their own instruction and answer.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use minigpt4_core::template::{self, Conversation, TemplateKind};
use minigpt4_core::tokenizer::Tokenizer;
use minigpt4_data::{Manifest, Record, Split};
use serde::{Deserialize, Serialize};

use crate::caption::{pre_caption, STAGE1_END};
use crate::io::Digest;

/// MiniGPT-4's stage-2 instructions (`prompts/alignment.txt`).
pub const INSTRUCTIONS: [&str; 4] = [
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    #[serde(rename = "1")]
    One,
    #[serde(rename = "2")]
    Two,
    /// MiniGPT-v2's multi-task stage: stage 2's instruction data, with LoRA on the decoder
    /// trained next to the projection.
    #[serde(rename = "3")]
    Three,
}

impl Stage {
    pub fn number(self) -> u8 {
        match self {
            Stage::One => 1,
            Stage::Two => 2,
            Stage::Three => 3,
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "1" => Ok(Stage::One),
            "2" => Ok(Stage::Two),
            "3" => Ok(Stage::Three),
            _ => bail!("stage must be 1, 2 or 3, not `{s}`"),
        }
    }
}

/// The training records of some manifests.
#[derive(Debug, Default)]
pub struct TrainRecords {
    /// Only `Split::Train` records.
    pub records: Vec<Record>,
    /// Manifest lines that could not be read (`file:line: reason`).
    pub skipped_lines: Vec<String>,
    /// How many held-out records were left alone.
    pub heldout: usize,
}

/// Reads the manifests and keeps the training split. A manifest that cannot be opened is an
/// error; a bad line is reported and skipped.
pub fn read_train_records(manifests: &[PathBuf]) -> Result<TrainRecords> {
    let mut out = TrainRecords::default();
    for path in manifests {
        let m = Manifest::read(path).with_context(|| format!("reading manifest {}", path.display()))?;
        out.skipped_lines.extend(m.skipped.iter().map(|e| e.to_string()));
        for r in m.records {
            match r.split {
                Split::Train => out.records.push(r),
                Split::Heldout => out.heldout += 1,
            }
        }
    }
    assert!(out.records.iter().all(|r| r.split == Split::Train), "a held-out record reached training");
    Ok(out)
}

/// How a sample's prompt is made.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Stage 1: BOS alone before the image, nothing after.
    Bos,
    /// Stage 2: one of [`INSTRUCTIONS`], drawn when the sample is used.
    RandomInstruction,
    /// Stage 2 from a record's turn: fixed token segments around the image.
    Fixed(Vec<Vec<u32>>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Index into the list of images (see [`Texts::build`]).
    pub image: usize,
    pub prompt: Prompt,
    pub target: Vec<u32>,
}

/// One token sequence ready to embed: `before`, the image tokens, `after`, then `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub image: usize,
    pub before: Vec<u32>,
    pub after: Vec<u32>,
    pub target: Vec<u32>,
}

impl Sequence {
    /// Positions before the target (masked from the loss).
    pub fn prompt_len(&self, image_tokens: usize) -> usize {
        self.before.len() + image_tokens + self.after.len()
    }

    /// Length of the model input: the whole sequence except its last token (which has nothing
    /// to predict).
    pub fn input_len(&self, image_tokens: usize) -> usize {
        self.prompt_len(image_tokens) + self.target.len() - 1
    }

    /// Positions that carry a label: every target token.
    pub fn target_tokens(&self) -> usize {
        self.target.len()
    }

    /// The label of every input position: `Some(token)` where position `p` must predict the
    /// target token at `p + 1`, `None` on prompt positions.
    pub fn labels(&self, image_tokens: usize) -> Vec<Option<u32>> {
        let p = self.prompt_len(image_tokens);
        (0..self.input_len(image_tokens))
            .map(|i| if i + 1 >= p { Some(self.target[i + 1 - p]) } else { None })
            .collect()
    }
}

/// Turns records into samples for one stage, with the tokenizer and template of the model.
pub struct Texts {
    pub stage: Stage,
    pub tokenizer: Tokenizer,
    pub template: TemplateKind,
    pub bos: Option<u32>,
    pub max_txt_len: usize,
    pub max_words: usize,
    /// Token segments of the prompt for each of [`INSTRUCTIONS`].
    pub instruction_segments: Vec<Vec<Vec<u32>>>,
}

impl Texts {
    pub fn new(
        stage: Stage,
        tokenizer: Tokenizer,
        template: TemplateKind,
        bos: Option<u32>,
        max_txt_len: usize,
        max_words: usize,
    ) -> Result<Self> {
        if stage == Stage::One && bos.is_none() {
            bail!("stage 1 puts BOS before the image, but neither the tokenizer nor the LLM config names a BOS token");
        }
        if max_txt_len == 0 {
            bail!("the target length limit must be at least 1 token");
        }
        let mut t = Self { stage, tokenizer, template, bos, max_txt_len, max_words, instruction_segments: Vec::new() };
        t.instruction_segments = INSTRUCTIONS.iter().map(|i| t.prompt_segments(i)).collect::<Result<_>>()?;
        Ok(t)
    }

    /// The template's prompt for an image followed by `instruction`, cut around the image.
    pub fn prompt_segments(&self, instruction: &str) -> Result<Vec<Vec<u32>>> {
        let mut conv = Conversation::new(self.template);
        conv.add_image();
        conv.ask(instruction.trim());
        let segs = conv.tokenize(&self.tokenizer)?;
        if segs.len() != 2 {
            bail!("instruction `{instruction}` holds an image placeholder of its own");
        }
        Ok(segs)
    }

    /// The stage-1 target of a caption: `pre_caption(caption) + "\n"`, at most `max_txt_len`
    /// tokens. `None` when nothing is left of the caption.
    pub fn stage1_target(&self, caption: &str) -> Result<Option<Vec<u32>>> {
        let text = pre_caption(caption, self.max_words);
        if text.trim().is_empty() {
            return Ok(None);
        }
        let mut ids = self.tokenizer.encode(&format!("{text}{STAGE1_END}"), false)?;
        ids.truncate(self.max_txt_len);
        Ok(Some(ids))
    }

    /// The stage-2 target of an answer: the answer plus the template's end text, at most
    /// `max_txt_len` tokens.
    pub fn stage2_target(&self, answer: &str) -> Result<Option<Vec<u32>>> {
        let answer = answer.trim();
        if answer.is_empty() {
            return Ok(None);
        }
        let mut ids = self.tokenizer.encode(&format!("{answer}{}", self.template.end_text()), false)?;
        ids.truncate(self.max_txt_len);
        Ok(Some(ids))
    }

    /// Samples of `records`; `image_of[i]` is record `i`'s image index, `None` when its image was
    /// unusable. Returns the samples and a reason for every record or turn left out.
    pub fn build(&self, records: &[Record], image_of: &[Option<usize>]) -> Result<(Vec<Sample>, Vec<String>)> {
        let mut samples = Vec::new();
        let mut skipped = Vec::new();
        for (r, img) in records.iter().zip(image_of) {
            assert_eq!(r.split, Split::Train, "a held-out record reached training");
            let Some(image) = *img else { continue };
            match self.stage {
                Stage::One => match self.stage1_target(&r.caption)? {
                    Some(target) => samples.push(Sample { image, prompt: Prompt::Bos, target }),
                    None => skipped.push(format!(
                        "{}: caption `{}` is empty after processing",
                        r.image.display(),
                        r.caption
                    )),
                },
                Stage::Two | Stage::Three => {
                    match self.stage2_target(&r.caption)? {
                        Some(target) => samples.push(Sample { image, prompt: Prompt::RandomInstruction, target }),
                        None => skipped.push(format!("{}: empty description", r.image.display())),
                    }
                    for (k, turn) in r.turns.iter().enumerate() {
                        let instruction = turn.instruction.trim();
                        match self.stage2_target(&turn.answer)? {
                            Some(target) if !instruction.is_empty() && template::count_images(instruction) == 0 => {
                                let segs = self.prompt_segments(instruction)?;
                                samples.push(Sample { image, prompt: Prompt::Fixed(segs), target });
                            }
                            _ => skipped.push(format!(
                                "{}: turn {} has an empty or unusable instruction or answer",
                                r.image.display(),
                                k + 1
                            )),
                        }
                    }
                }
            }
        }
        Ok((samples, skipped))
    }

    /// The sequence of `sample` as drawn at (`epoch`, `position`) of a run seeded with `seed`.
    pub fn sequence(&self, sample: &Sample, seed: u64, epoch: u64, position: u64) -> Sequence {
        let (before, after) = match &sample.prompt {
            Prompt::Bos => (vec![self.bos.expect("checked in new")], vec![]),
            Prompt::RandomInstruction => {
                let k = instruction_index(seed, epoch, position);
                let s = &self.instruction_segments[k];
                (s[0].clone(), s[1].clone())
            }
            Prompt::Fixed(s) => (s[0].clone(), s[1].clone()),
        };
        Sequence { image: sample.image, before, after, target: sample.target.clone() }
    }
}

/// A digest of the samples (images and tokens), stored in checkpoints so that resuming on other
/// data is detected.
pub fn samples_digest(samples: &[Sample], image_keys: &[String]) -> String {
    let mut d = Digest::default();
    for s in samples {
        d.update_str(&image_keys[s.image]);
        match &s.prompt {
            Prompt::Bos => d.update_str("bos"),
            Prompt::RandomInstruction => d.update_str("random"),
            Prompt::Fixed(segs) => {
                for seg in segs {
                    d.update(&seg.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
                }
                d.update_str("fixed")
            }
        };
        d.update(&s.target.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
    }
    d.hex()
}

/// SplitMix64: a small, fixed, portable generator (the data order and the initial projection
/// must not change with a dependency's version).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2⁻³² for any n < 2³²).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed for one purpose, derived from the run's seed.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut g = SplitMix64::new(seed);
    let mut h = g.next_u64();
    for &p in parts {
        h = SplitMix64::new(h ^ p.wrapping_mul(0x2545_f491_4f6c_dd1d)).next_u64();
    }
    h
}

/// Which instruction the sample at (`epoch`, `position`) gets.
pub fn instruction_index(seed: u64, epoch: u64, position: u64) -> usize {
    SplitMix64::new(derive_seed(seed, &[2, epoch, position])).below(INSTRUCTIONS.len())
}

/// The order samples are drawn in: epoch after epoch, each a seeded shuffle of all samples. A
/// position in this stream is all the state a resumed run needs.
pub struct DataOrder {
    seed: u64,
    n: usize,
    cached: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(seed: u64, n: usize) -> Self {
        assert!(n > 0, "no samples");
        Self { seed, n, cached: None }
    }

    /// Fisher–Yates shuffle of `0..n` for `epoch`.
    pub fn permutation(seed: u64, n: usize, epoch: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(derive_seed(seed, &[1, epoch]));
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = rng.below(i + 1);
            p.swap(i, j);
        }
        p
    }

    /// (epoch, position in epoch, sample index) of the `g`-th sample drawn.
    pub fn at(&mut self, g: u64) -> (u64, u64, usize) {
        let n = self.n as u64;
        let (epoch, pos) = (g / n, g % n);
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.cached = Some((epoch, Self::permutation(self.seed, self.n, epoch)));
        }
        let idx = self.cached.as_ref().expect("just set").1[pos as usize];
        (epoch, pos, idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_and_complete() {
        let a = DataOrder::permutation(7, 100, 0);
        assert_eq!(a, DataOrder::permutation(7, 100, 0));
        assert_ne!(a, DataOrder::permutation(7, 100, 1));
        assert_ne!(a, DataOrder::permutation(8, 100, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn order_crosses_epochs() {
        let mut o = DataOrder::new(3, 5);
        let first: Vec<usize> = (0..5).map(|g| o.at(g).2).collect();
        assert_eq!(first, DataOrder::permutation(3, 5, 0));
        assert_eq!(o.at(7), (1, 2, DataOrder::permutation(3, 5, 1)[2]));
    }

    #[test]
    fn instructions_are_all_used() {
        let mut seen = [0usize; 4];
        for p in 0..400 {
            seen[instruction_index(1, 0, p)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 60), "{seen:?}");
        assert_eq!(instruction_index(1, 3, 9), instruction_index(1, 3, 9));
    }

    #[test]
    fn labels_cover_exactly_the_target() {
        let s = Sequence { image: 0, before: vec![1, 5], after: vec![6], target: vec![10, 11, 12] };
        let n_img = 4;
        // Sequence: [1 5 I I I I 6 10 11 12]; input drops the last token.
        assert_eq!(s.input_len(n_img), 9);
        let l = s.labels(n_img);
        assert_eq!(l, vec![None, None, None, None, None, None, Some(10), Some(11), Some(12)]);
    }
}
