//! Autoregressive generation over a cached decoder: sampling, greedy decoding and beam search, with
//! the stopping rules and streaming behaviour MiniGPT-4's demo relies on.
//!
//! The reference calls Hugging Face `generate` from `conversation.py`; this module reproduces the
//! parts of it that change what the user sees: the order of the logits processors, top-p/top-k
//! semantics, beam scoring and how the context is capped. Bit-exact agreement with PyTorch sampling
//! is not a goal (the random streams differ), agreement of the distributions is.
//!
//! Logits are post-processed on the host in `f32` (`to_vec1`): vocabularies here are at most
//! ~150k entries, so this costs far less than the forward pass that produced them.

use std::borrow::Cow;
use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// The most beams accepted; the reference demo's slider also stops at 10.
pub const MAX_BEAMS: usize = 10;

/// A decoder that generation can drive: the LLM (with its KV cache) behind MiniGPT-4.
pub trait Decoder {
    /// Per-sequence decoding state (the KV cache).
    ///
    /// Beam search clones a parent's cache for each child and then appends to the clones
    /// independently, so cloning must behave like a deep copy: appending to one clone must not
    /// change another. The LLaMA cache writes into preallocated buffers in place (`slice_set`)
    /// and copies a buffer that a clone shares before writing to it.
    type Cache: Clone;

    fn new_cache(&self) -> Result<Self::Cache>;

    /// Embeddings of token ids, shape `[1, T, D]`.
    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor>;

    /// Appends `embeds` `[1, T, D]` at the cache's current position; returns the logits of the
    /// LAST position as a 1-D tensor `[V]` (any float dtype; it is converted to `f32`).
    fn forward_embeds(&self, embeds: &Tensor, cache: &mut Self::Cache) -> Result<Tensor>;
}

/// Decoding parameters. Defaults are those of the MiniGPT-4 reference demo.
///
/// Deserializing fills missing fields from [`Default`], so a request only names what it changes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens (stop tokens included).
    pub max_new_tokens: usize,
    /// Softmax temperature for sampling; `0` means greedy decoding. Ignored by beam search.
    pub temperature: f64,
    /// Nucleus sampling mass in `(0, 1]`; `1.0` disables it. Ignored by greedy and beam search.
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens; `0` disables it. Ignored by greedy and beam search.
    pub top_k: usize,
    /// Hugging Face repetition penalty over the generated ids; `1.0` disables it.
    pub repetition_penalty: f32,
    /// `1` samples (or decodes greedily); `2..=10` runs deterministic beam search.
    pub num_beams: usize,
    /// Beam hypotheses are ranked by `sum(logprob) / len^length_penalty`.
    pub length_penalty: f32,
    /// Seed for sampling; `None` seeds from the operating system.
    pub seed: Option<u64>,
    /// Cap on prompt positions plus `max_new_tokens`; the oldest prompt positions are dropped.
    pub max_context: usize,
    /// Generation stops when the decoded text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Generation stops when the generated ids end with one of these sequences.
    pub stop_token_sequences: Vec<Vec<u32>>,
    /// Generation stops when one of these ids is generated.
    pub eos_token_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 300,
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
            repetition_penalty: 1.05,
            num_beams: 1,
            length_penalty: 1.0,
            seed: None,
            max_context: 2000,
            stop_strings: Vec::new(),
            stop_token_sequences: Vec::new(),
            eos_token_ids: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// Checks every field's range; the message names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<()> {
        fn bad(msg: String) -> Result<()> {
            Err(Error::Generation(msg))
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.max_new_tokens >= self.max_context {
            return bad(format!(
                "max_new_tokens ({}) must be smaller than max_context ({}) so that at least one \
                 prompt position fits",
                self.max_new_tokens, self.max_context
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature must be a finite number >= 0 (0 = greedy), got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be a finite number > 0 (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        if !(1..=MAX_BEAMS).contains(&self.num_beams) {
            return bad(format!("num_beams must be between 1 and {MAX_BEAMS}, got {}", self.num_beams));
        }
        if !self.length_penalty.is_finite() {
            return bad(format!("length_penalty must be finite, got {}", self.length_penalty));
        }
        // An empty stop string or sequence would match before anything is generated.
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop_strings must not contain an empty string".into());
        }
        if self.stop_token_sequences.iter().any(Vec::is_empty) {
            return bad("stop_token_sequences must not contain an empty sequence".into());
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An EOS id, a stop token sequence or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// The outcome of [`generate`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Every generated id, including the EOS id or stop token sequence that ended generation (so
    /// its length is the number of tokens the model produced). For beam search: the chosen
    /// hypothesis.
    pub token_ids: Vec<u32>,
    /// The answer: decoded text with the EOS id, any stop token sequence and everything from the
    /// first stop string on removed. Not stripped. When streaming, the pieces passed to `on_text`
    /// concatenate to exactly this (see [`generate`]).
    pub text: String,
    pub finish_reason: FinishReason,
    /// Prompt positions actually fed to the decoder, after the context cap.
    pub prompt_len: usize,
}

/// Generates a continuation of `prompt_embeds` `[1, T, D]`.
///
/// `decode` turns generated ids into text (supplied by the caller so this module does not depend on
/// the tokenizer type); it is never given an EOS id. `on_text` receives streamed text pieces and
/// returns `ControlFlow::Break(())` to cancel.
///
/// Decoding: `temperature == 0` is greedy, otherwise sampling after Hugging Face's processors in
/// their order (repetition penalty, temperature, top-k, top-p). `num_beams > 1` runs deterministic
/// beam search (see [`GenerationConfig`] for what it ignores).
///
/// Streaming: the whole generated id list is decoded every step and the new stable suffix is
/// emitted. Held back until it is resolved: a trailing suffix that could begin a stop string, the
/// text of trailing ids that could begin a stop token sequence, trailing U+FFFD (an incomplete UTF-8
/// character) and trailing whitespace (tokenizer clean-up may still remove a space before
/// punctuation). The held tail is flushed when generation ends, so the pieces concatenate to
/// [`Generation::text`] as long as `decode` of a longer id list extends `decode` of a shorter one
/// apart from such tails (true of SentencePiece and byte-level BPE tokenizers). Beam search emits
/// the final text once, at the end, and cannot be cancelled part-way.
///
/// Context: like `conversation.py`, when `T + max_new_tokens > max_context` only the last
/// `max_context - max_new_tokens` prompt positions are kept.
pub fn generate<D: Decoder>(
    model: &D,
    prompt_embeds: &Tensor,
    cfg: &GenerationConfig,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    cfg.validate()?;
    let prompt = cap_context(prompt_embeds, cfg)?;
    let prompt_len = prompt.dim(1)?;
    let stops = Stops { strings: &cfg.stop_strings, sequences: &cfg.stop_token_sequences, eos: &cfg.eos_token_ids };
    let decode_ids = |ids: &[u32]| -> Result<String> {
        if ids.is_empty() {
            Ok(String::new())
        } else {
            decode(ids)
        }
    };
    if cfg.num_beams > 1 {
        beam_search(model, &prompt, prompt_len, cfg, &stops, &decode_ids, on_text)
    } else {
        sample(model, &prompt, prompt_len, cfg, &stops, &decode_ids, on_text)
    }
}

fn cap_context(embeds: &Tensor, cfg: &GenerationConfig) -> Result<Tensor> {
    let (b, t, _) = embeds.dims3().map_err(|_| {
        Error::Internal(format!("prompt embeddings must have shape [1, T, D], got {:?}", embeds.dims()))
    })?;
    if b != 1 {
        return Err(Error::Internal(format!("prompt embeddings must hold one sequence (batch 1), got batch {b}")));
    }
    if t == 0 {
        return Err(Error::Generation("the prompt is empty".into()));
    }
    if t + cfg.max_new_tokens <= cfg.max_context {
        return Ok(embeds.clone());
    }
    let keep = cfg.max_context.checked_sub(cfg.max_new_tokens).filter(|&k| k >= 1).ok_or_else(|| {
        Error::Generation(format!(
            "max_context ({}) leaves no room for the prompt after max_new_tokens ({})",
            cfg.max_context, cfg.max_new_tokens
        ))
    })?;
    tracing::warn!(
        prompt_len = t,
        kept = keep,
        max_context = cfg.max_context,
        "the conversation exceeds the context limit; dropping its oldest positions"
    );
    Ok(embeds.narrow(1, t - keep, keep)?)
}

/// The stopping rules, shared by the sampling and beam paths.
struct Stops<'a> {
    strings: &'a [String],
    sequences: &'a [Vec<u32>],
    eos: &'a [u32],
}

impl Stops<'_> {
    fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// Length of the (longest) stop sequence the ids end with.
    fn sequence_match(&self, ids: &[u32]) -> Option<usize> {
        self.sequences.iter().filter(|s| ids.ends_with(s)).map(Vec::len).max()
    }

    /// How many trailing ids could be the start of a stop sequence; their text is held back.
    fn held_tokens(&self, ids: &[u32]) -> usize {
        self.sequences.iter().filter_map(|s| (1..s.len()).rev().find(|&l| ids.ends_with(&s[..l]))).max().unwrap_or(0)
    }

    /// Byte position of the earliest stop string in `text`.
    fn find_string(&self, text: &str) -> Option<usize> {
        self.strings.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    fn cut_at_string(&self, mut text: String) -> String {
        if let Some(pos) = self.find_string(&text) {
            text.truncate(pos);
        }
        text
    }

    /// Length of the prefix of `text` that can be shown now: without the longest suffix that is a
    /// proper prefix of a stop string, then without trailing whitespace and U+FFFD.
    fn stable_len(&self, text: &str) -> usize {
        let mut end = text.len();
        for s in self.strings {
            // Proper prefixes of `s`, longest first, cut on character boundaries.
            let longest = s.char_indices().map(|(i, _)| i).filter(|&i| i > 0).rev().find(|&l| text.ends_with(&s[..l]));
            if let Some(l) = longest {
                end = end.min(text.len() - l);
            }
        }
        text[..end].trim_end_matches(|c: char| c.is_whitespace() || c == char::REPLACEMENT_CHARACTER).len()
    }
}

/// Emits the stable part of the decoded text as it grows.
struct Streamer<'s, 'a> {
    stops: &'s Stops<'a>,
    emitted: String,
}

impl Streamer<'_, '_> {
    fn push(&mut self, visible: &str, on_text: &mut dyn FnMut(&str) -> ControlFlow<()>) -> ControlFlow<()> {
        let stable = &visible[..self.stops.stable_len(visible)];
        if stable.len() > self.emitted.len() && stable.starts_with(self.emitted.as_str()) {
            let piece = &stable[self.emitted.len()..];
            self.emitted.push_str(piece);
            return on_text(piece);
        }
        ControlFlow::Continue(())
    }

    /// Flushes what was held back. Generation is over, so a `Break` here has nothing to stop.
    fn finish(&mut self, text: &str, on_text: &mut dyn FnMut(&str) -> ControlFlow<()>) {
        match text.strip_prefix(self.emitted.as_str()) {
            Some("") => {}
            Some(rest) => {
                let _ = on_text(rest);
            }
            None => tracing::warn!(
                "the tokenizer's decoding changed already streamed text; the streamed pieces \
                 differ from the final answer"
            ),
        }
    }
}

fn sample<D: Decoder>(
    model: &D,
    prompt: &Tensor,
    prompt_len: usize,
    cfg: &GenerationConfig,
    stops: &Stops<'_>,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    let greedy = cfg.temperature == 0.0;
    let mut rng = match cfg.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::try_from_os_rng()
            .map_err(|e| Error::Internal(format!("cannot seed the sampler from the operating system: {e}")))?,
    };
    let mut cache = model.new_cache()?;
    let mut logits = model.forward_embeds(prompt, &mut cache)?;
    let mut ids: Vec<u32> = Vec::with_capacity(cfg.max_new_tokens);
    let mut streamer = Streamer { stops, emitted: String::new() };
    // Decoded text of `ids` before the newest token: the answer if that token turns out to be EOS.
    let mut text_before = String::new();
    let done =
        |ids: Vec<u32>, text: String, finish_reason| Generation { token_ids: ids, text, finish_reason, prompt_len };

    loop {
        let mut scores = logits_to_vec(&logits, ids.len())?;
        apply_repetition_penalty(&mut scores, &ids, cfg.repetition_penalty);
        let next = if greedy { argmax(&scores) } else { sample_token(scores, cfg, &mut rng)? };
        ids.push(next);

        if stops.is_eos(next) {
            streamer.finish(&text_before, on_text);
            return Ok(done(ids, text_before, FinishReason::Stop));
        }
        if let Some(len) = stops.sequence_match(&ids) {
            let text = stops.cut_at_string(decode(&ids[..ids.len() - len])?);
            streamer.finish(&text, on_text);
            return Ok(done(ids, text, FinishReason::Stop));
        }
        let mut full = decode(&ids)?;
        if let Some(pos) = stops.find_string(&full) {
            full.truncate(pos);
            streamer.finish(&full, on_text);
            return Ok(done(ids, full, FinishReason::Stop));
        }
        let held = stops.held_tokens(&ids);
        let visible: Cow<str> =
            if held == 0 { Cow::Borrowed(&full) } else { Cow::Owned(decode(&ids[..ids.len() - held])?) };
        if streamer.push(&visible, on_text).is_break() {
            let text = std::mem::take(&mut streamer.emitted);
            return Ok(done(ids, text, FinishReason::Cancelled));
        }
        if ids.len() >= cfg.max_new_tokens {
            streamer.finish(&full, on_text);
            return Ok(done(ids, full, FinishReason::Length));
        }
        text_before = full;
        let embeds = model.embed_tokens(&[next])?;
        logits = model.forward_embeds(&embeds, &mut cache)?;
    }
}

fn logits_to_vec(logits: &Tensor, step: usize) -> Result<Vec<f32>> {
    let vocab = logits.dims().last().copied().unwrap_or(0);
    if vocab == 0 || logits.elem_count() != vocab {
        return Err(Error::Internal(format!(
            "the decoder must return the logits of one position, shape [V], got {:?}",
            logits.dims()
        )));
    }
    let v = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if v.iter().any(|x| x.is_nan()) {
        return Err(Error::Internal(format!("the decoder produced NaN logits at generation step {step}")));
    }
    Ok(v)
}

/// Hugging Face `RepetitionPenaltyLogitsProcessor`: each id that occurs in `generated` has its score
/// divided by `penalty` when positive and multiplied when negative. HF gathers and scatters per id,
/// so an id that occurs many times is penalized once.
pub(crate) fn apply_repetition_penalty(scores: &mut [f32], generated: &[u32], penalty: f32) {
    if penalty == 1.0 || generated.is_empty() {
        return;
    }
    let mut unique = generated.to_vec();
    unique.sort_unstable();
    unique.dedup();
    for id in unique {
        if let Some(s) = scores.get_mut(id as usize) {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// First index of the maximum, like `torch.argmax`.
pub(crate) fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_token(mut scores: Vec<f32>, cfg: &GenerationConfig, rng: &mut StdRng) -> Result<u32> {
    let t = cfg.temperature as f32;
    if t != 1.0 {
        scores.iter_mut().for_each(|s| *s /= t);
    }
    top_k_filter(&mut scores, cfg.top_k);
    if cfg.top_p < 1.0 {
        top_p_filter(&mut scores, cfg.top_p)?;
    }
    let probs = softmax(&scores).ok_or_else(all_masked)?;
    let r: f64 = rng.random();
    let mut cum = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = i;
            cum += p;
            if r < cum {
                return Ok(i as u32);
            }
        }
    }
    // Rounding can leave the total an ulp below `r`.
    Ok(last as u32)
}

fn all_masked() -> Error {
    Error::Internal("every token has probability 0 (all logits are -inf)".into())
}

/// Probabilities in `f64`. A `+inf` score (a huge logit over a tiny temperature) takes all the mass,
/// which is the limit the softmax approaches. `None` when every score is `-inf`.
pub(crate) fn softmax(scores: &[f32]) -> Option<Vec<f64>> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f64> = if max == f32::INFINITY {
        scores.iter().map(|&s| if s == f32::INFINITY { 1.0 } else { 0.0 }).collect()
    } else if max == f32::NEG_INFINITY {
        return None;
    } else {
        scores.iter().map(|&s| ((s - max) as f64).exp()).collect()
    };
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= total);
    Some(p)
}

/// Hugging Face `TopKLogitsWarper`: removes every score below the k-th largest (ties with it stay).
pub(crate) fn top_k_filter(scores: &mut [f32], k: usize) {
    if k == 0 || k >= scores.len() {
        return;
    }
    let mut sorted = scores.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    scores.iter_mut().filter(|s| **s < kth).for_each(|s| *s = f32::NEG_INFINITY);
}

/// Indices of the `n` largest scores, best first, ties broken by lower index.
fn top_indices(scores: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(scores.len());
    let desc = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if n == 0 {
        return Vec::new();
    }
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, desc);
        idx.truncate(n);
    }
    idx.sort_unstable_by(desc);
    idx
}

/// Hugging Face `TopPLogitsWarper`: keeps the smallest set of most likely tokens whose probability
/// adds up to at least `top_p` (HF removes a token when the ascending cumulative probability up to
/// and including it is `<= 1 - top_p`, which is the same set), and always the most likely one.
pub(crate) fn top_p_filter(scores: &mut [f32], top_p: f64) -> Result<()> {
    let probs = softmax(scores).ok_or_else(all_masked)?;
    // The nucleus is usually a handful of tokens: rank a growing head of the vocabulary instead of
    // sorting all of it every step.
    let mut n = 64;
    let keep = loop {
        let head = top_indices(scores, n);
        let mut cum = 0.0;
        let mut count = None;
        for (rank, &i) in head.iter().enumerate() {
            if rank > 0 && cum >= top_p {
                count = Some(rank);
                break;
            }
            cum += probs[i];
        }
        match count {
            Some(c) => break head[..c].to_vec(),
            None if head.len() == scores.len() => break head,
            None => n *= 8,
        }
    };
    let mut kept = vec![false; scores.len()];
    keep.iter().for_each(|&i| kept[i] = true);
    scores.iter_mut().zip(kept).filter(|(_, k)| !k).for_each(|(s, _)| *s = f32::NEG_INFINITY);
    Ok(())
}

/// Log-probabilities in `f32`, computed through `f64`.
fn log_softmax(scores: &[f32]) -> Result<Vec<f32>> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return Err(Error::Internal(format!("cannot normalise logits whose maximum is {max}")));
    }
    let lse = scores.iter().map(|&s| ((s - max) as f64).exp()).sum::<f64>().ln() + max as f64;
    Ok(scores.iter().map(|&s| (s as f64 - lse) as f32).collect())
}

/// A finished beam hypothesis.
struct Hypothesis {
    ids: Vec<u32>,
    /// The answer text, once known (beams ended by a stop string are decoded when found).
    text: Option<String>,
    /// How many leading ids to decode when `text` is `None` (drops EOS / the stop sequence).
    text_ids: usize,
    score: f64,
    stopped: bool,
}

/// Hugging Face `BeamHypotheses`: the best `capacity` finished hypotheses by length-penalised score.
struct Hypotheses {
    capacity: usize,
    length_penalty: f64,
    list: Vec<Hypothesis>,
}

impl Hypotheses {
    fn score(&self, sum_logprobs: f64, len: usize) -> f64 {
        // An EOS as the very first token has no generated length; HF would divide by zero.
        sum_logprobs / (len.max(1) as f64).powf(self.length_penalty)
    }

    fn worst(&self) -> f64 {
        self.list.iter().map(|h| h.score).fold(f64::INFINITY, f64::min)
    }

    fn add(&mut self, hyp: Hypothesis) {
        if self.list.len() < self.capacity || hyp.score > self.worst() {
            self.list.push(hyp);
            if self.list.len() > self.capacity {
                if let Some(w) = (0..self.list.len()).min_by(|&a, &b| self.list[a].score.total_cmp(&self.list[b].score))
                {
                    self.list.remove(w);
                }
            }
        }
    }

    /// HF's `early_stopping=False` rule: done once full and the best live beam, scored at the
    /// current length, cannot beat the worst finished hypothesis. With a positive length penalty a
    /// live beam could still overtake later; HF accepts that and so do we.
    fn is_done(&self, best_live_sum: f64, cur_len: usize) -> bool {
        self.list.len() >= self.capacity && self.worst() >= self.score(best_live_sum, cur_len)
    }
}

struct Beam<C> {
    ids: Vec<u32>,
    sum_logprobs: f64,
    cache: C,
    logits: Tensor,
}

/// Deterministic beam search, like Hugging Face with `do_sample=False, num_beams=k`.
///
/// Per step every live beam proposes its `2k` best next tokens by log-softmax with the repetition
/// penalty applied to the log-probabilities (HF applies its processors after `log_softmax` in beam
/// search); the `2k` best candidates overall are visited in order. A candidate that ends its beam
/// (EOS, a stop token sequence or a stop string in its decoded text) becomes a finished hypothesis if
/// it ranks among the first `k`, scored `sum(logprob) / len^length_penalty` where `len` counts the
/// generated ids without a final EOS (at least 1). The first `k` candidates that do not end become
/// the next live beams, each with its own clone of its parent's cache. Search ends per
/// [`Hypotheses::is_done`] or at `max_new_tokens`, when the live beams join the finished ones (as HF's
/// `finalize`); the best-scoring hypothesis wins. Temperature, top-k, top-p and the seed are unused.
fn beam_search<D: Decoder>(
    model: &D,
    prompt: &Tensor,
    prompt_len: usize,
    cfg: &GenerationConfig,
    stops: &Stops<'_>,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    let k = cfg.num_beams;
    let mut cache = model.new_cache()?;
    let logits = model.forward_embeds(prompt, &mut cache)?;
    // All k beams start identical; HF masks k-1 of them with -1e9 at the first step, which is one beam.
    let mut live = vec![Beam { ids: Vec::new(), sum_logprobs: 0.0, cache, logits }];
    let mut finished =
        Hypotheses { capacity: k, length_penalty: cfg.length_penalty as f64, list: Vec::with_capacity(k + 1) };
    let mut done = false;
    // The live beams at max_new_tokens: not forwarded again, so kept without logits.
    let mut last_live: Vec<(Vec<u32>, f64)> = Vec::new();

    for step in 0..cfg.max_new_tokens {
        let mut candidates: Vec<(f64, usize, u32)> = Vec::with_capacity(live.len() * 2 * k);
        for (b, beam) in live.iter().enumerate() {
            let mut lp = log_softmax(&logits_to_vec(&beam.logits, step)?)?;
            apply_repetition_penalty(&mut lp, &beam.ids, cfg.repetition_penalty);
            for t in top_indices(&lp, 2 * k) {
                candidates.push((beam.sum_logprobs + lp[t] as f64, b, t as u32));
            }
        }
        candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        candidates.truncate(2 * k);

        let mut next: Vec<(f64, usize, u32)> = Vec::with_capacity(k);
        for (rank, &(sum, b, t)) in candidates.iter().enumerate() {
            let mut ids = live[b].ids.clone();
            ids.push(t);
            let eos = stops.is_eos(t);
            // (ids to decode for the answer, the answer when already known)
            let ending = if eos {
                Some((ids.len() - 1, None))
            } else if let Some(len) = stops.sequence_match(&ids) {
                Some((ids.len() - len, None))
            } else if !stops.strings.is_empty() {
                let text = decode(&ids)?;
                stops.find_string(&text).map(|pos| (ids.len(), Some(text[..pos].to_string())))
            } else {
                None
            };
            match ending {
                Some((text_ids, text)) => {
                    if rank < k {
                        let len = if eos { ids.len() - 1 } else { ids.len() };
                        let score = finished.score(sum, len);
                        finished.add(Hypothesis { ids, text, text_ids, score, stopped: true });
                    }
                }
                None => {
                    next.push((sum, b, t));
                    if next.len() == k {
                        break;
                    }
                }
            }
        }

        let cur_len = step + 1;
        let Some(&(best_live, _, _)) = next.first() else {
            live.clear();
            break;
        };
        if finished.is_done(best_live, cur_len) {
            done = true;
            break;
        }
        if cur_len == cfg.max_new_tokens {
            last_live = next
                .iter()
                .map(|&(sum, b, t)| {
                    let mut ids = live[b].ids.clone();
                    ids.push(t);
                    (ids, sum)
                })
                .collect();
            break;
        }
        let mut new_live = Vec::with_capacity(next.len());
        for &(sum, b, t) in &next {
            let parent = &live[b];
            let mut cache = parent.cache.clone();
            let logits = model.forward_embeds(&model.embed_tokens(&[t])?, &mut cache)?;
            let mut ids = parent.ids.clone();
            ids.push(t);
            new_live.push(Beam { ids, sum_logprobs: sum, cache, logits });
        }
        live = new_live;
    }

    if !done {
        for (ids, sum) in last_live {
            let score = finished.score(sum, ids.len());
            let text_ids = ids.len();
            finished.add(Hypothesis { ids, text: None, text_ids, score, stopped: false });
        }
    }
    let best = finished
        .list
        .into_iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .ok_or_else(|| Error::Internal("beam search finished without a hypothesis".into()))?;
    let text = match best.text {
        Some(t) => t,
        None => stops.cut_at_string(decode(&best.ids[..best.text_ids])?),
    };
    if !text.is_empty() {
        let _ = on_text(&text);
    }
    Ok(Generation {
        token_ids: best.ids,
        text,
        finish_reason: if best.stopped { FinishReason::Stop } else { FinishReason::Length },
        prompt_len,
    })
}

/// The decoder of every MiniGPT-4 (the trait lives here, with the generation it serves).
impl Decoder for minigpt4_models::llama::Llama {
    type Cache = minigpt4_models::llama::LlamaCache;

    fn new_cache(&self) -> Result<Self::Cache> {
        Ok(minigpt4_models::llama::Llama::new_cache(self))
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        self.embed(ids)
    }

    fn forward_embeds(&self, embeds: &Tensor, cache: &mut Self::Cache) -> Result<Tensor> {
        self.forward_last(embeds, cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once_per_id() {
        let mut s = vec![2.0, -1.0, 3.0, 0.5];
        apply_repetition_penalty(&mut s, &[0, 1, 0, 0, 1, 99], 2.0);
        assert_eq!(s, vec![1.0, -2.0, 3.0, 0.5]);
    }

    #[test]
    fn top_k_keeps_ties_with_the_kth() {
        let mut s = vec![1.0, 3.0, 2.0, 2.0, 0.0];
        top_k_filter(&mut s, 2);
        let ninf = f32::NEG_INFINITY;
        assert_eq!(s, vec![ninf, 3.0, 2.0, 2.0, ninf]);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_the_mass() {
        let ln = |p: f64| p.ln() as f32;
        let base = vec![ln(0.1), ln(0.5), ln(0.3), ln(0.1)];
        let kept = |top_p: f64| {
            let mut s = base.clone();
            top_p_filter(&mut s, top_p).unwrap();
            (0..4).filter(|&i| s[i].is_finite()).collect::<Vec<_>>()
        };
        assert_eq!(kept(0.4), vec![1]);
        assert_eq!(kept(0.75), vec![1, 2]);
        assert_eq!(kept(0.85), vec![0, 1, 2]);
        assert_eq!(kept(1e-9), vec![1]);
        // A vocabulary larger than the first ranked head (64) with a flat distribution.
        let mut flat = vec![0.0f32; 1000];
        top_p_filter(&mut flat, 0.5).unwrap();
        assert_eq!(flat.iter().filter(|s| s.is_finite()).count(), 500);
    }

    #[test]
    fn softmax_gives_infinite_scores_all_the_mass() {
        let p = softmax(&[0.0, f32::INFINITY, 1.0]).unwrap();
        assert_eq!(p, vec![0.0, 1.0, 0.0]);
        assert!(softmax(&[f32::NEG_INFINITY; 3]).is_none());
    }

    #[test]
    fn stable_len_holds_stop_prefixes_whitespace_and_replacement_chars() {
        let strings = vec!["###".to_string(), "<|im_end|>".to_string()];
        let stops = Stops { strings: &strings, sequences: &[], eos: &[] };
        assert_eq!(stops.stable_len("Hello ##"), "Hello".len());
        assert_eq!(stops.stable_len("Hello <|im"), "Hello".len());
        assert_eq!(stops.stable_len("Hello #x"), "Hello #x".len());
        assert_eq!(stops.stable_len("caf\u{FFFD}"), "caf".len());
        assert_eq!(stops.stable_len("a b\n"), "a b".len());
    }

    #[test]
    fn held_tokens_counts_a_partial_stop_sequence() {
        let seqs = vec![vec![7, 8, 9], vec![5]];
        let stops = Stops { strings: &[], sequences: &seqs, eos: &[] };
        assert_eq!(stops.held_tokens(&[1, 7, 8]), 2);
        assert_eq!(stops.held_tokens(&[1, 7]), 1);
        assert_eq!(stops.held_tokens(&[7, 8, 1]), 0);
        assert_eq!(stops.sequence_match(&[1, 7, 8, 9]), Some(3));
        assert_eq!(stops.sequence_match(&[1, 5]), Some(1));
    }

    #[test]
    fn hypotheses_keep_the_best_and_apply_length_penalty() {
        let mut h = Hypotheses { capacity: 2, length_penalty: 1.0, list: Vec::new() };
        // Scores -2, -1, then -10 (rejected, the list is full) and -1.5 (evicts -2).
        for (sum, len) in [(-4.0, 2), (-3.0, 3), (-10.0, 1), (-1.5, 1)] {
            let score = h.score(sum, len);
            h.add(Hypothesis { ids: vec![], text: None, text_ids: 0, score, stopped: true });
        }
        let mut scores: Vec<f64> = h.list.iter().map(|x| x.score).collect();
        scores.sort_by(f64::total_cmp);
        assert_eq!(scores, vec![-1.5, -1.0]);
        assert!(h.is_done(-5.0, 2));
        assert!(!h.is_done(-2.0, 2));
    }
}
