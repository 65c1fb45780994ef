//! Text ⇄ token ids for the LLM, from a Hugging Face `tokenizer.json`, a SentencePiece
//! `tokenizer.model`, or the vocabulary a GGUF file carries in its metadata.
//!
//! All sources end up as a [`tokenizers::Tokenizer`], built so that the ids are the ones Hugging
//! Face produces for the same model:
//!
//! * GGUF `tokenizer.ggml.model = "llama"` (SentencePiece BPE: LLaMA, Vicuna, Llama-2) is rebuilt
//!   the way `transformers`' `LlamaConverter` builds the published Llama-2/Vicuna `tokenizer.json`
//!   files (`legacy = true`): a BPE whose merges come from the piece scores, byte fallback, a
//!   `▁` dummy prefix on every piece of text (also after a special token — what SentencePiece and
//!   llama.cpp do) and a decoder that undoes it. A SentencePiece `tokenizer.model` (what LLaMA
//!   and lmsys' Vicuna deltas ship) is read by hand and built the same way.
//! * GGUF `"gpt2"` (byte-level BPE: SmolLM2, Llama-3, Qwen2…) gets vocabulary and merges from the
//!   metadata and the pre-tokenizer named by `tokenizer.ggml.pre`. candle's own
//!   `TokenizerFromGguf` is not used: for pre-tokenizers it does not know (SmolLM2's `smollm`) it
//!   falls back to a byte-level pre-tokenizer that adds a prefix space, which changes every id of
//!   a prompt, and it reads the unknown-token id from a key llama.cpp does not write.
//!
//! [`Tokenizer::encode`] never lets the underlying tokenizer insert special tokens (templates put
//! them in the text, where they are recognised as their ids), and adds BOS only when asked.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// SentencePiece's stand-in for a space.
const SPIECE_SPACE: &str = "▁";

/// What a decoder writes for bytes that are not (yet) valid UTF-8.
const REPLACEMENT: char = '\u{FFFD}';

// llama.cpp token types (`llama_token_type`), as stored in `tokenizer.ggml.token_type`.
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

// Pre-tokenizer regexes of the byte-level families, as in their `tokenizer.json` files.
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Fallback names for BOS / EOS when no config file says which tokens they are, tried in order
/// among the tokenizer's special tokens.
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|im_start|>", "<|endoftext|>"];
const EOS_NAMES: &[&str] = &["</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "<|endoftext|>"];

/// `inner` with special tokens' strings read as ordinary text.
fn plain_text_twin(inner: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    let mut plain = inner.clone();
    plain.set_encode_special_tokens(true);
    plain
}

/// Special added tokens, longest string first.
fn special_tokens(inner: &tokenizers::Tokenizer) -> Arc<[(String, u32)]> {
    let mut v: Vec<(String, u32)> = inner
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special && !t.content.is_empty())
        .map(|(id, t)| (t.content, id))
        .collect();
    v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    v.into()
}

/// A tokenizer plus the facts about it the rest of the crate needs (BOS, EOS, vocabulary size).
///
/// Cheap to clone: the vocabulary is shared.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// The same tokenizer with special tokens read as plain text (`encode_special_tokens`), for
    /// text a user wrote (see [`Tokenizer::encode_with_literals`]); built the first time a
    /// prompt needs it (a control token typed in user text is rare), not at every load.
    plain: Arc<std::sync::OnceLock<tokenizers::Tokenizer>>,
    /// Special tokens' strings and ids, longest first (the order a match is tried in).
    specials: Arc<[(String, u32)]>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos_default: bool,
    vocab_size: usize,
    /// The longest vocabulary entry in UTF-8 bytes (see [`Tokenizer::max_token_bytes`]).
    max_token_bytes: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos_default", &self.add_bos_default)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// BOS and EOS are resolved, for each separately, from the first of these that names them:
    /// 1. a sibling `tokenizer_config.json`: `bos_token` / `eos_token` (a string or an
    ///    `{"content": …}` object; an explicit `null` means the model has none);
    /// 2. a sibling `config.json`: `bos_token_id` / `eos_token_id` (a number, or a list whose first
    ///    entry is taken);
    /// 3. the tokenizer's special added tokens, by name: BOS `<s>`, `<|begin_of_text|>`, `<bos>`,
    ///    `<|im_start|>`, `<|endoftext|>`; EOS `</s>`, `<|end_of_text|>`, `<eos>`, `<|im_end|>`,
    ///    `<|endoftext|>` (first present wins).
    ///
    /// [`Tokenizer::add_bos_default`] comes from `add_bos_token` in `tokenizer_config.json`, else
    /// from whether the file's post-processor inserts BOS.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tokenizer_config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json_if_present(&dir.join("config.json"))?;
        Ok(Self::from_hf(inner, tokenizer_config.as_ref(), model_config.as_ref()))
    }

    /// Loads a `tokenizer.json` held in memory; BOS/EOS come from its special tokens by name (rule
    /// 3 of [`Tokenizer::from_file`]).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        Ok(Self::from_hf(inner, None, None))
    }

    /// Wraps an already built tokenizer; BOS/EOS are found by name as in [`Tokenizer::from_file`]
    /// rule 3.
    pub fn from_tokenizers(inner: tokenizers::Tokenizer) -> Self {
        Self::from_hf(inner, None, None)
    }

    fn from_hf(
        inner: tokenizers::Tokenizer,
        tokenizer_config: Option<&serde_json::Value>,
        model_config: Option<&serde_json::Value>,
    ) -> Self {
        let bos = resolve_special(&inner, tokenizer_config, model_config, "bos", BOS_NAMES);
        let eos = resolve_special(&inner, tokenizer_config, model_config, "eos", EOS_NAMES);
        let add_bos_default = match tokenizer_config.and_then(|c| c.get("add_bos_token")) {
            Some(serde_json::Value::Bool(b)) => *b,
            _ => match (bos, inner.encode_fast("a", true)) {
                (Some(bos), Ok(enc)) => enc.get_ids().first() == Some(&bos),
                _ => false,
            },
        };
        let vocab_size = hf_vocab_size(&inner);
        Self::assemble(inner, bos, eos, add_bos_default, vocab_size)
    }

    /// The wrapper and what is derived from the inner tokenizer once (its special tokens, its
    /// longest entry).
    fn assemble(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos_default: bool,
        vocab_size: usize,
    ) -> Self {
        Self {
            max_token_bytes: longest_entry(&inner),
            plain: Arc::default(),
            specials: special_tokens(&inner),
            inner: Arc::new(inner),
            bos,
            eos,
            add_bos_default,
            vocab_size,
        }
    }

    /// Builds the tokenizer embedded in a GGUF file's metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let model = meta_str(ct, "tokenizer.ggml.model")?;
        let tokens = meta_strings(ct, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(Error::Tokenizer("GGUF `tokenizer.ggml.tokens` is empty".into()));
        }
        let types = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => {
                one_per_token(value_ints(v, "tokenizer.ggml.token_type")?, "tokenizer.ggml.token_type", tokens.len())?
            }
            None => vec![1; tokens.len()],
        };
        let bos = meta_token_id(ct, "tokenizer.ggml.bos_token_id", tokens.len())?;
        let eos = meta_token_id(ct, "tokenizer.ggml.eos_token_id", tokens.len())?;
        let unk = meta_token_id(ct, "tokenizer.ggml.unknown_token_id", tokens.len())?;
        let add_bos = meta_bool(ct, "tokenizer.ggml.add_bos_token")?;

        let mut inner = match model.as_str() {
            "llama" => {
                let scores = gguf_scores(ct, tokens.len())?;
                let add_space_prefix = meta_bool(ct, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                build_spm(&tokens, &scores, &types, unk, add_space_prefix)?
            }
            "gpt2" => build_byte_level(ct, &tokens)?,
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF tokenizer model `{other}` is not supported (supported: `llama` \
                     SentencePiece BPE, `gpt2` byte-level BPE)"
                )))
            }
        };
        register_added_tokens(&mut inner, &tokens, &types, [bos, eos])?;

        Ok(Self::assemble(inner, bos, eos, add_bos.unwrap_or(model == "llama"), tokens.len()))
    }

    /// Loads a tokenizer file by its name: a SentencePiece `*.model` (LLaMA, lmsys' Vicuna
    /// deltas) through [`Tokenizer::from_sentencepiece`], anything else as a Hugging Face
    /// `tokenizer.json` through [`Tokenizer::from_file`].
    pub fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "model") {
            Self::from_sentencepiece(path)
        } else {
            Self::from_file(path)
        }
    }

    /// The tokenizer of a Hugging Face model folder: its `tokenizer.json`, else its SentencePiece
    /// `tokenizer.model` (what the original LLaMA conversion and lmsys' Vicuna deltas ship).
    /// Returns the path it chose; when neither is there, `tokenizer.json`, so the error names it.
    pub fn hf_dir_file(dir: &Path) -> PathBuf {
        let json = dir.join("tokenizer.json");
        let model = dir.join("tokenizer.model");
        if !json.exists() && model.exists() {
            model
        } else {
            json
        }
    }

    /// Loads a SentencePiece `tokenizer.model` (a serialized `ModelProto`) of a BPE model with
    /// byte fallback (LLaMA, Vicuna, Llama-2), built as [`Tokenizer::from_gguf`] builds a GGUF
    /// `"llama"` vocabulary -- the tokenizer `transformers`' `LlamaConverter` makes of the same
    /// file. Like `LlamaConverter`, only the pieces, scores, types and `add_dummy_prefix` are
    /// read; the normalizer rules are not (LLaMA's are `identity`).
    ///
    /// BOS and EOS are resolved as in [`Tokenizer::from_file`] (sibling `tokenizer_config.json`,
    /// then `config.json`, then `<s>` / `</s>` among the control pieces);
    /// [`Tokenizer::add_bos_default`] is `add_bos_token` of `tokenizer_config.json`, else true
    /// (`LlamaTokenizer`'s default).
    pub fn from_sentencepiece(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len > MAX_SPM_BYTES {
            return Err(Error::Tokenizer(format!(
                "{}: {len} bytes, more than a SentencePiece model may have ({MAX_SPM_BYTES})",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let model = parse_spm_model(&bytes).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // Absent, `model_type` is UNIGRAM (the proto's default, what sentencepiece itself then
        // runs); LLaMA's files record BPE. A file cut inside its pieces lacks the trainer_spec
        // that follows them and is refused here.
        let model_type = model.model_type.unwrap_or(1);
        if model_type != SPM_MODEL_BPE {
            let name = match model_type {
                1 if model.model_type.is_none() => "UNIGRAM (no trainer_spec: a truncated file?)",
                1 => "UNIGRAM",
                3 => "WORD",
                4 => "CHAR",
                _ => "unknown",
            };
            return Err(Error::Tokenizer(format!(
                "{}: SentencePiece model type {model_type} {name} is not supported (only BPE: LLaMA, Vicuna)",
                path.display()
            )));
        }
        let (tokens, scores, types) = model.pieces;
        let mut inner = build_spm(&tokens, &scores, &types, None, model.add_dummy_prefix)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tokenizer_config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json_if_present(&dir.join("config.json"))?;
        let (tc, mc) = (tokenizer_config.as_ref(), model_config.as_ref());
        // Resolved once before the pieces are registered (so a configured BOS/EOS typed NORMAL
        // still becomes special, as in `from_gguf`) and once after (the `<s>`/`</s>` fallback
        // looks among the special tokens).
        let configured = [
            resolve_special(&inner, tc, mc, "bos", &[]).filter(|&id| (id as usize) < tokens.len()),
            resolve_special(&inner, tc, mc, "eos", &[]).filter(|&id| (id as usize) < tokens.len()),
        ];
        register_added_tokens(&mut inner, &tokens, &types, configured)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // Tokens added after training (Vicuna v0's `[PAD]` = 32000), as transformers' slow
        // tokenizer reads them from `added_tokens.json`; they must continue the ids.
        let mut added: Vec<(String, u32)> = match read_json_if_present(&dir.join("added_tokens.json"))? {
            Some(serde_json::Value::Object(m)) => {
                m.into_iter().filter_map(|(t, id)| id.as_u64().map(|id| (t, id as u32))).collect()
            }
            _ => Vec::new(),
        };
        added.sort_by_key(|(_, id)| *id);
        let mut vocab_size = tokens.len();
        for (text, id) in added {
            if inner.token_to_id(&text) == Some(id) {
                continue;
            }
            if id as usize != vocab_size {
                return Err(Error::Tokenizer(format!(
                    "{}: added token {text:?} has id {id}, but the next free id is {vocab_size}",
                    dir.join("added_tokens.json").display()
                )));
            }
            inner
                .add_special_tokens(vec![AddedToken::from(text, true).normalized(false)])
                .map_err(tok_err("added_tokens.json"))?;
            vocab_size += 1;
        }
        let bos = resolve_special(&inner, tc, mc, "bos", &["<s>"]);
        let eos = resolve_special(&inner, tc, mc, "eos", &["</s>"]);
        let add_bos_default = tc.and_then(|c| c.get("add_bos_token")).and_then(|b| b.as_bool()).unwrap_or(true);
        Ok(Self::assemble(inner, bos, eos, add_bos_default, vocab_size))
    }

    /// Token ids for `text`, with BOS in front when `add_bos`. Special tokens written in the text
    /// (`<s>`, `<|im_start|>`…) become their ids; nothing else is added.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.push(
                self.bos.ok_or_else(|| Error::Tokenizer("BOS requested but this tokenizer has no BOS token".into()))?,
            );
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids for `text` in which the byte ranges `literal` (ascending, not overlapping) are
    /// plain text: a special token's string written there (`<|im_start|>assistant` typed by a
    /// user) is tokenized character by character, never as the control token, so a user cannot
    /// forge a turn of the template. Outside those ranges special tokens are recognised as in
    /// [`Tokenizer::encode`].
    ///
    /// When no literal range holds a special token's string this is exactly `encode` (the ids
    /// of every reference prompt). Otherwise the text is cut at the special tokens found outside
    /// the ranges, as `tokenizers` cuts at every special token, and each piece between them is
    /// encoded with special tokens read as text.
    pub fn encode_with_literals(&self, text: &str, literal: &[Range<usize>], add_bos: bool) -> Result<Vec<u32>> {
        let injected = literal
            .iter()
            .any(|r| text.get(r.clone()).is_some_and(|t| self.specials.iter().any(|(s, _)| t.contains(s.as_str()))));
        if !injected {
            return self.encode(text, add_bos);
        }
        let mut ids = Vec::new();
        if add_bos {
            ids.push(
                self.bos.ok_or_else(|| Error::Tokenizer("BOS requested but this tokenizer has no BOS token".into()))?,
            );
        }
        let plain = self.plain.get_or_init(|| plain_text_twin(&self.inner));
        let encode_plain = |piece: &str, ids: &mut Vec<u32>| -> Result<()> {
            if !piece.is_empty() {
                let enc =
                    plain.encode_fast(piece, false).map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Ok(())
        };
        let (mut start, mut i) = (0, 0);
        let mut ranges = literal.iter().peekable();
        while i < text.len() {
            while ranges.peek().is_some_and(|r| r.end <= i) {
                ranges.next();
            }
            if let Some(r) = ranges.peek().filter(|r| r.start <= i) {
                i = r.end;
                continue;
            }
            match self.specials.iter().find(|(s, _)| text[i..].starts_with(s.as_str())) {
                Some((s, id)) => {
                    encode_plain(&text[start..i], &mut ids)?;
                    ids.push(*id);
                    i += s.len();
                    start = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        encode_plain(&text[start..], &mut ids)?;
        Ok(ids)
    }

    /// Text for `ids`; with `skip_special` special tokens (BOS, EOS, chat markers) are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.vocab_size
            )));
        }
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model's own tokenizer puts BOS in front of a sequence (GGUF
    /// `tokenizer.ggml.add_bos_token`, HF `add_bos_token`); a hint for callers, `encode` never
    /// acts on it.
    pub fn add_bos_default(&self) -> bool {
        self.add_bos_default
    }

    /// One past the largest token id.
    /// An upper bound on the text bytes one token stands for: the longest vocabulary entry in
    /// UTF-8 bytes. A byte-level BPE entry spells each byte it covers with one character of at
    /// least one byte, a SentencePiece entry spells a space as the 3-byte `▁` and a fallback byte
    /// as `<0xNN>`, so no token covers more text than its entry is long. A text longer than
    /// `n × max_token_bytes()` bytes therefore has more than `n` tokens, known without
    /// tokenizing it (the server refuses an over-long prompt that way).
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is a special token (left out by `decode(…, skip_special = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// An incremental detokenizer for streaming generation.
    pub fn stream(&self, skip_special: bool) -> TokenStream {
        TokenStream::new(self.clone(), skip_special)
    }
}

/// Turns generated ids into text one id at a time, yielding only complete UTF-8 text.
///
/// A character can be split across tokens (byte-fallback `<0xE2><0x82><0xAC>`, byte-level BPE),
/// and SentencePiece decoders drop the leading space of whatever they decode first, so decoding
/// each id alone is wrong. The stream re-decodes a short window: the ids of the last piece it
/// emitted (for context) plus the ids since, and yields the difference once it no longer ends in
/// an incomplete character. Whenever the ids decode to valid UTF-8, the concatenation of
/// everything [`TokenStream::push`] and [`TokenStream::finish`] return equals
/// `decode(all ids)`; for invalid byte sequences the replacement characters may differ in number.
#[derive(Debug, Clone)]
pub struct TokenStream {
    tok: Tokenizer,
    skip_special: bool,
    /// The window: `ids[..read]` decoded to `prefix` and were already emitted.
    ids: Vec<u32>,
    read: usize,
    prefix: String,
}

impl TokenStream {
    pub fn new(tok: Tokenizer, skip_special: bool) -> Self {
        Self { tok, skip_special, ids: Vec::new(), read: 0, prefix: String::new() }
    }

    /// Adds one id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        if id as usize >= self.tok.vocab_size {
            return Err(Error::Tokenizer(format!(
                "token id {id} is outside the vocabulary ({} tokens)",
                self.tok.vocab_size
            )));
        }
        self.ids.push(id);
        self.advance(false)
    }

    /// Returns whatever is still held back (an incomplete character at the end of generation
    /// comes out as U+FFFD, as `decode` would write it).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        self.advance(true)
    }

    /// Forgets all state, as if newly created.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
        self.prefix.clear();
    }

    fn advance(&mut self, flush: bool) -> Result<Option<String>> {
        let full = self.tok.decode(&self.ids, self.skip_special)?;
        if !flush && full.ends_with(REPLACEMENT) {
            return Ok(None);
        }
        let new = match full.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // A byte-fallback run that turned invalid across the window start re-decodes the
            // already emitted part differently; what was emitted cannot be taken back, so the new
            // ids are decoded on their own.
            None => self.tok.decode(&self.ids[self.read..], self.skip_special)?,
        };
        if new.is_empty() && !flush {
            return Ok(None);
        }
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tok.decode(&self.ids, self.skip_special)?;
        Ok((!new.is_empty()).then_some(new))
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json

fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}

fn resolve_special(
    inner: &tokenizers::Tokenizer,
    tokenizer_config: Option<&serde_json::Value>,
    model_config: Option<&serde_json::Value>,
    which: &str,
    names: &[&str],
) -> Option<u32> {
    if let Some(v) = tokenizer_config.and_then(|c| c.get(format!("{which}_token"))) {
        let content = match v {
            serde_json::Value::Null => return None,
            serde_json::Value::String(s) => Some(s.as_str()),
            serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()),
            _ => None,
        };
        if let Some(id) = content.and_then(|c| inner.token_to_id(c)) {
            return Some(id);
        }
    }
    if let Some(v) = model_config.and_then(|c| c.get(format!("{which}_token_id"))) {
        let id = match v {
            serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()),
            other => other.as_u64(),
        };
        if let Some(id) = id.and_then(|id| u32::try_from(id).ok()) {
            if inner.id_to_token(id).is_some() {
                return Some(id);
            }
        }
    }
    let added = inner.get_added_tokens_decoder();
    names.iter().find_map(|name| added.iter().find(|(_, t)| t.special && t.content == *name).map(|(id, _)| *id))
}

fn hf_vocab_size(inner: &tokenizers::Tokenizer) -> usize {
    let model_max = inner.get_vocab(false).values().copied().max();
    let added_max = inner.get_added_tokens_decoder().keys().copied().max();
    model_max.max(added_max).map_or(0, |m| m as usize + 1)
}

// ---------------------------------------------------------------------------------------------
// GGUF

impl Tokenizer {
    /// The `tokenizer.ggml.*` metadata llama.cpp reads (and [`Tokenizer::from_gguf`] reads back):
    /// the inverse of `from_gguf`, as llama.cpp's `convert_hf_to_gguf.py` writes it.
    ///
    /// * A SentencePiece BPE (byte fallback, `▁` for spaces: LLaMA, Vicuna, Llama-2) becomes
    ///   `"llama"`: pieces, scores and types. `tokenizer.json` keeps no scores; the piece order
    ///   stands in for them (score −id), which is the order SentencePiece's LLaMA vocabulary is
    ///   sorted in and the order `from_gguf` rebuilds its merges from.
    /// * A byte-level BPE becomes `"gpt2"`: tokens, merges and the `tokenizer.ggml.pre` name of
    ///   its pre-tokenizer (gpt2, smollm, llama-bpe, qwen2); any other pre-tokenizer is an error,
    ///   since llama.cpp would split text differently and the ids would not match.
    ///
    /// `model_vocab` is the LLM's embedding rows: llama.cpp wants one token per row, so ids the
    /// tokenizer does not use are written as unused `[PAD{id}]` pieces.
    pub fn gguf_metadata(&self, model_vocab: usize) -> Result<Vec<(String, gguf_file::Value)>> {
        use gguf_file::Value;
        let json = |what: &str, v: std::result::Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| Error::Tokenizer(format!("reading the tokenizer's {what}: {e}")))
        };
        let model = json("model", serde_json::to_value(self.inner.get_model()))?;
        let normalizer = json("normalizer", serde_json::to_value(self.inner.get_normalizer()))?;
        let pre = json("pre-tokenizer", serde_json::to_value(self.inner.get_pre_tokenizer()))?;
        if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
            return Err(Error::Tokenizer(format!(
                "only BPE tokenizers can be written to GGUF (this one is {})",
                model.get("type").unwrap_or(&serde_json::Value::Null)
            )));
        }
        if self.vocab_size > model_vocab {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {} tokens, more than the model's {model_vocab} embedding rows",
                self.vocab_size
            )));
        }
        let n = model_vocab;
        let mut tokens: Vec<Option<String>> = vec![None; n];
        for (t, id) in self.inner.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = Some(t);
            }
        }
        let added = self.inner.get_added_tokens_decoder();
        let unk = model.get("unk_token").and_then(|u| u.as_str()).and_then(|u| self.inner.token_to_id(u));
        let spm = model.get("byte_fallback").and_then(|b| b.as_bool()) == Some(true);
        let token_type = |id: u32, text: &str| -> i32 {
            match added.get(&id) {
                Some(a) if a.special => TYPE_CONTROL as i32,
                Some(_) => TYPE_USER_DEFINED as i32,
                None if Some(id) == unk => TYPE_UNKNOWN as i32,
                None if spm && is_byte_piece(text) => 6, // LLAMA_TOKEN_TYPE_BYTE
                None => 1,                               // LLAMA_TOKEN_TYPE_NORMAL
            }
        };
        let mut md: Vec<(String, Value)> = Vec::new();
        let (mut texts, mut types, mut scores) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for (id, t) in tokens.into_iter().enumerate() {
            // An id nothing maps to (a gap before an added token) is kept as an unused piece.
            let (text, ty) = match t {
                Some(t) => {
                    let ty = token_type(id as u32, &t);
                    (t, ty)
                }
                None => (format!("[PAD{id}]"), 5), // LLAMA_TOKEN_TYPE_UNUSED
            };
            scores.push(Value::F32(if ty == 1 { -(id as f32) } else { 0.0 }));
            texts.push(Value::String(text));
            types.push(Value::I32(ty));
        }
        if spm {
            let space_prefix = serde_json::to_string(&normalizer).unwrap_or_default().contains("Prepend")
                || pre.get("type").and_then(|t| t.as_str()) == Some("Metaspace")
                    && pre.get("prepend_scheme").and_then(|p| p.as_str()) != Some("never");
            md.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
            md.push(("tokenizer.ggml.tokens".into(), Value::Array(texts)));
            md.push(("tokenizer.ggml.scores".into(), Value::Array(scores)));
            md.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
            md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(space_prefix)));
        } else {
            let merges = model
                .get("merges")
                .and_then(|m| m.as_array())
                .ok_or_else(|| Error::Tokenizer("the BPE model has no merges".into()))?
                .iter()
                .map(|m| match m {
                    serde_json::Value::String(s) => Some(Value::String(s.clone())),
                    serde_json::Value::Array(p) => match p.as_slice() {
                        [a, b] => Some(Value::String(format!("{} {}", a.as_str()?, b.as_str()?))),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::Tokenizer("a BPE merge is neither \"a b\" nor [a, b]".into()))?;
            md.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
            md.push(("tokenizer.ggml.pre".into(), Value::String(gguf_pre_name(&pre)?.into())));
            md.push(("tokenizer.ggml.tokens".into(), Value::Array(texts)));
            md.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
            md.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
        }
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.unknown_token_id", unk),
        ] {
            if let Some(id) = id {
                md.push((key.into(), Value::U32(id)));
            }
        }
        md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(self.add_bos_default)));
        md.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
        Ok(md)
    }
}

/// `<0x0A>`: SentencePiece's byte-fallback pieces.
fn is_byte_piece(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

fn split_regex(v: &serde_json::Value) -> Option<String> {
    v.get("pattern").and_then(|p| p.get("Regex")).and_then(|r| r.as_str()).map(str::to_string)
}

/// llama.cpp's name for a byte-level pre-tokenizer (`tokenizer.ggml.pre`), the inverse of the
/// table in `build_byte_level`.
fn gguf_pre_name(pre: &serde_json::Value) -> Result<&'static str> {
    let kind = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_string();
    let parts: Vec<&serde_json::Value> = match kind(pre).as_str() {
        "Sequence" => {
            pre.get("pretokenizers").and_then(|p| p.as_array()).map(|a| a.iter().collect()).unwrap_or_default()
        }
        _ => vec![pre],
    };
    let byte_level_regex =
        |v: &serde_json::Value| kind(v) == "ByteLevel" && v.get("use_regex").and_then(|u| u.as_bool()) != Some(false);
    let name = match parts.as_slice() {
        [b] if byte_level_regex(b) => Some("gpt-2"),
        [d, b]
            if kind(d) == "Digits"
                && d.get("individual_digits").and_then(|i| i.as_bool()) == Some(true)
                && byte_level_regex(b) =>
        {
            Some("smollm")
        }
        [s, b] if kind(s) == "Split" && kind(b) == "ByteLevel" => match split_regex(s).as_deref() {
            Some(REGEX_LLAMA3) => Some("llama-bpe"),
            Some(REGEX_QWEN2) => Some("qwen2"),
            _ => None,
        },
        _ => None,
    };
    name.ok_or_else(|| {
        Error::Tokenizer(format!(
            "this byte-level pre-tokenizer has no llama.cpp name (known: gpt2, smollm, llama-bpe, qwen2): {pre}"
        ))
    })
}

fn meta<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata.get(key).ok_or_else(|| Error::Tokenizer(format!("GGUF metadata has no `{key}`")))
}

fn meta_str(ct: &gguf_file::Content, key: &str) -> Result<String> {
    meta(ct, key)?.to_string().cloned().map_err(|_| Error::Tokenizer(format!("GGUF `{key}` is not a string")))
}

fn meta_strings(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>> {
    let arr = meta(ct, key)?.to_vec().map_err(|_| Error::Tokenizer(format!("GGUF `{key}` is not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string().cloned().map_err(|_| Error::Tokenizer(format!("GGUF `{key}`[{i}] is not a string")))
        })
        .collect()
}

fn meta_bool(ct: &gguf_file::Content, key: &str) -> Result<Option<bool>> {
    ct.metadata
        .get(key)
        .map(|v| v.to_bool().map_err(|_| Error::Tokenizer(format!("GGUF `{key}` is not a bool"))))
        .transpose()
}

fn value_int(v: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value as V;
    Some(match *v {
        V::U8(x) => x.into(),
        V::I8(x) => x.into(),
        V::U16(x) => x.into(),
        V::I16(x) => x.into(),
        V::U32(x) => x.into(),
        V::I32(x) => x.into(),
        V::U64(x) => i64::try_from(x).ok()?,
        V::I64(x) => x,
        _ => return None,
    })
}

fn value_ints(v: &gguf_file::Value, key: &str) -> Result<Vec<i64>> {
    let arr = v.to_vec().map_err(|_| Error::Tokenizer(format!("GGUF `{key}` is not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| value_int(x).ok_or_else(|| Error::Tokenizer(format!("GGUF `{key}`[{i}] is not an integer"))))
        .collect()
}

/// A token id from the metadata; absent is fine, out of range is an error. Negative ids are how
/// some converters write "none".
fn meta_token_id(ct: &gguf_file::Content, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    let Some(v) = ct.metadata.get(key) else {
        return Ok(None);
    };
    let id = value_int(v).ok_or_else(|| Error::Tokenizer(format!("GGUF `{key}` is not an integer")))?;
    if id < 0 {
        return Ok(None);
    }
    if id as u64 >= n_tokens as u64 {
        return Err(Error::Tokenizer(format!("GGUF `{key}` = {id} is outside the vocabulary ({n_tokens} tokens)")));
    }
    Ok(Some(id as u32))
}

/// The vocabulary map; a string listed twice keeps its first id, as llama.cpp's lookup does.
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    vocab
}

fn tok_err(what: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Tokenizer(format!("{what}: {e}"))
}

/// `tokenizer.ggml.scores`, one per token.
fn gguf_scores(ct: &gguf_file::Content, n_tokens: usize) -> Result<Vec<f32>> {
    Ok(match ct.metadata.get("tokenizer.ggml.scores") {
        Some(v) => {
            let arr =
                v.to_vec().map_err(|_| Error::Tokenizer("GGUF `tokenizer.ggml.scores` is not an array".into()))?;
            let scores = arr
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.to_f32()
                        .map_err(|_| Error::Tokenizer(format!("GGUF `tokenizer.ggml.scores`[{i}] is not a float")))
                })
                .collect::<Result<Vec<_>>>()?;
            one_per_token(scores, "tokenizer.ggml.scores", n_tokens)?
        }
        // Without scores the piece order stands in for them, as in a score-sorted vocabulary.
        None => (0..n_tokens).map(|i| -(i as f32)).collect(),
    })
}

/// SentencePiece BPE (GGUF `tokenizer.ggml.model = "llama"`, or a `tokenizer.model`), rebuilt as
/// `transformers`' `LlamaConverter` does: `scores` and `types` one per token, `types` in
/// llama.cpp's numbering (the same as SentencePiece's `Type`), `add_space_prefix` SentencePiece's
/// `add_dummy_prefix`.
fn build_spm(
    tokens: &[String],
    scores: &[f32],
    types: &[i64],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let vocab = vocab_map(tokens);
    let merges = spm_merges(tokens, scores, &vocab);

    let unk_token = unk
        .or_else(|| types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| i as u32))
        .map(|id| tokens[id as usize].clone())
        .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_string()));
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = unk_token {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(tok_err("building the SentencePiece BPE model"))?;

    let replace_space = Replace::new(" ", SPIECE_SPACE).map_err(tok_err("normalizer"))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(SPIECE_SPACE.into()).into(), replace_space.into()]).into()
    } else {
        replace_space.into()
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPIECE_SPACE, " ").map_err(tok_err("decoder"))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        // Undo the dummy prefix of the first piece only (Fuse has joined the pieces by now).
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_normalizer(Some(normalizer)).map_err(tok_err("normalizer"))?;
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// BPE merges from SentencePiece pieces: every split of a piece into two pieces of the
/// vocabulary, ordered by the merged piece's score (highest first, then by piece id), then by the
/// halves' ids -- the order `transformers`' `SentencePieceExtractor` produces from scores.
fn spm_merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Merges {
    let mut merges: Vec<(f32, u32, u32, u32, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (k, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(k);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((scores[id], id as u32, l, r, left, right));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    merges.into_iter().map(|(_, _, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn build_byte_level(ct: &gguf_file::Content, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let merges = meta_strings(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            // Byte-level symbols never contain a real space, so the first space separates the pair.
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("GGUF `tokenizer.ggml.merges`[{i}] = {m:?} is not a pair")))
        })
        .collect::<Result<Merges>>()?;

    let pre = match ct.metadata.get("tokenizer.ggml.pre") {
        Some(_) => meta_str(ct, "tokenizer.ggml.pre")?,
        // Files written before llama.cpp recorded the pre-tokenizer are GPT-2 style.
        None => "gpt2".to_string(),
    };
    let byte_level = |use_regex: bool| ByteLevel::new(false, true, use_regex);
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(tok_err("pre-tokenizer"))?
            .into())
    };
    let mut normalizer: Option<NormalizerWrapper> = None;
    let mut ignore_merges = false;
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "gpt2" | "gpt-2" | "mpt" | "olmo" => byte_level(true).into(),
        // Digits one by one, then GPT-2's regex (SmolLM2's `tokenizer.json`).
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            PreTokenizerSequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => {
            ignore_merges = true;
            PreTokenizerSequence::new(vec![split(REGEX_LLAMA3)?, byte_level(false).into()]).into()
        }
        "qwen2" => {
            normalizer = Some(NFC.into());
            PreTokenizerSequence::new(vec![split(REGEX_QWEN2)?, ByteLevel::new(false, false, false).into()]).into()
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (supported: gpt2, smollm, starcoder, \
                 llama-bpe, qwen2); ids would not match the model's own tokenizer"
            )))
        }
    };

    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tok_err("building the byte-level BPE model"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    if let Some(n) = normalizer {
        inner.with_normalizer(Some(n)).map_err(tok_err("normalizer"))?;
    }
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// Control and unknown tokens become special added tokens, user-defined ones plain added tokens
/// (both matched verbatim in text, as `transformers` and llama.cpp do). BOS and EOS are special
/// even when a converter typed them as normal, provided they look like markup (`<…>`), so a
/// misconfigured id cannot turn an ordinary word into a special token.
fn register_added_tokens(
    inner: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i64],
    bos_eos: [Option<u32>; 2],
) -> Result<()> {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    let mut seen = HashSet::new();
    for (i, (tok, &ty)) in tokens.iter().zip(types).enumerate() {
        // A string listed twice maps to its first id (see `vocab_map`).
        if tok.is_empty() || !seen.insert(tok.as_str()) {
            continue;
        }
        let forced = bos_eos.contains(&Some(i as u32)) && tok.len() > 2 && tok.starts_with('<') && tok.ends_with('>');
        if ty == TYPE_CONTROL || ty == TYPE_UNKNOWN || forced {
            special.push(AddedToken::from(tok.clone(), true).normalized(false));
        } else if ty == TYPE_USER_DEFINED {
            plain.push(AddedToken::from(tok.clone(), false).normalized(false));
        }
    }
    inner.add_tokens(plain).map_err(tok_err("adding user-defined tokens"))?;
    inner.add_special_tokens(special).map_err(tok_err("adding special tokens"))?;
    // Added tokens whose text is already in the model vocabulary keep their ids; anything else
    // would have been given a new id past the vocabulary, which the model cannot embed.
    let added = inner.get_added_tokens_decoder();
    if let Some((id, t)) = added.iter().find(|(id, _)| **id as usize >= tokens.len()) {
        return Err(Error::Tokenizer(format!(
            "GGUF added token {:?} got id {id}, outside the vocabulary ({} tokens)",
            t.content,
            tokens.len()
        )));
    }
    Ok(())
}

/// The longest vocabulary entry (added tokens included) in UTF-8 bytes, at least 1.
fn longest_entry(inner: &tokenizers::Tokenizer) -> usize {
    inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1)
}

/// `values` when the GGUF array `key` has one entry per token.
fn one_per_token<T>(values: Vec<T>, key: &str, tokens: usize) -> Result<Vec<T>> {
    if values.len() != tokens {
        return Err(Error::Tokenizer(format!(
            "GGUF `{key}` has {} entries but there are {tokens} tokens",
            values.len()
        )));
    }
    Ok(values)
}

// ---------------------------------------------------------------------------------------------
// SentencePiece tokenizer.model
//
// A serialized `ModelProto` (sentencepiece_model.proto), read by hand: the format is small and a
// protobuf dependency would be for these few fields. Every length is checked against the bytes
// left and every count is capped, so a hostile file is an error, never a panic or a huge
// allocation.

/// The largest `tokenizer.model` read: LLaMA's is 500 KB, Gemma's 256k-piece one about 4 MB.
const MAX_SPM_BYTES: u64 = 64 << 20;
/// The most pieces a model may have (the largest published vocabularies are ~260k).
const MAX_SPM_PIECES: usize = 1 << 20;
/// `TrainerSpec.ModelType.BPE`.
const SPM_MODEL_BPE: u64 = 2;

/// What [`Tokenizer::from_sentencepiece`] needs of a `ModelProto`.
struct SpmModel {
    /// Pieces, scores and types (`SentencePiece.Type`: 1 NORMAL, 2 UNKNOWN, 3 CONTROL,
    /// 4 USER_DEFINED, 5 UNUSED, 6 BYTE -- llama.cpp's `llama_token_type` uses the same numbers).
    pieces: (Vec<String>, Vec<f32>, Vec<i64>),
    /// `TrainerSpec.model_type` (1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR) when the file records it.
    model_type: Option<u64>,
    /// `NormalizerSpec.add_dummy_prefix` (default true).
    add_dummy_prefix: bool,
}

/// A protobuf field: its number and value (varint, fixed32/64 as their bits, or the bytes of a
/// length-delimited field).
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

struct ProtoReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The message being read, for messages (`ModelProto`, `pieces[17]`, …).
    what: String,
}

impl<'a> ProtoReader<'a> {
    fn new(data: &'a [u8], what: String) -> Self {
        Self { data, pos: 0, what }
    }

    fn bad(&self, msg: impl std::fmt::Display) -> String {
        format!("not a SentencePiece model: {} at byte {}: {msg}", self.what, self.pos)
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.data.get(self.pos) else { return Err(self.bad("truncated varint")) };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.bad("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(self.bad(format!("field of {n} bytes with {left} left")));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next field, or `None` at the end of the message.
    fn field(&mut self) -> std::result::Result<Option<(u64, Field<'a>)>, String> {
        if self.pos == self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(self.bad("field number 0"));
        }
        let value = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.bad(format!("length {n}")))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            // 3/4 are the deprecated groups, which sentencepiece_model.proto does not use.
            w => return Err(self.bad(format!("field {number} has wire type {w}"))),
        };
        Ok(Some((number, value)))
    }
}

/// Parses a serialized `ModelProto`: field 1 `pieces` (repeated `SentencePiece {1: piece,
/// 2: score, 3: type}`), field 2 `trainer_spec` (its field 3 `model_type`), field 3
/// `normalizer_spec` (its field 3 `add_dummy_prefix`); every other field is skipped by its wire
/// type, as a protobuf reader does.
fn parse_spm_model(data: &[u8]) -> std::result::Result<SpmModel, String> {
    let mut r = ProtoReader::new(data, "ModelProto".into());
    let (mut tokens, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    let mut model_type = None;
    let mut add_dummy_prefix = true;
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Field::Bytes(b)) => {
                if tokens.len() == MAX_SPM_PIECES {
                    return Err(r.bad(format!("more than {MAX_SPM_PIECES} pieces")));
                }
                let (piece, score, ty) = parse_spm_piece(b, tokens.len())?;
                tokens.push(piece);
                scores.push(score);
                types.push(ty);
            }
            (2, Field::Bytes(b)) => {
                let mut t = ProtoReader::new(b, "trainer_spec".into());
                while let Some((n, v)) = t.field()? {
                    if let (3, Field::Varint(x)) = (n, v) {
                        model_type = Some(x);
                    }
                }
            }
            (3, Field::Bytes(b)) => {
                let mut t = ProtoReader::new(b, "normalizer_spec".into());
                while let Some((n, v)) = t.field()? {
                    if let (3, Field::Varint(x)) = (n, v) {
                        add_dummy_prefix = x != 0;
                    }
                }
            }
            (1..=3, _) => return Err(r.bad(format!("field {number} is not a message"))),
            _ => {}
        }
    }
    if tokens.is_empty() {
        return Err(r.bad("no pieces"));
    }
    Ok(SpmModel { pieces: (tokens, scores, types), model_type, add_dummy_prefix })
}

/// One `SentencePiece` message: piece, score (0 when absent), type (NORMAL when absent).
fn parse_spm_piece(data: &[u8], index: usize) -> std::result::Result<(String, f32, i64), String> {
    let mut r = ProtoReader::new(data, format!("pieces[{index}]"));
    let (mut piece, mut score, mut ty) = (None, 0f32, 1i64);
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Field::Bytes(b)) => {
                let s = std::str::from_utf8(b).map_err(|_| r.bad("piece is not UTF-8"))?;
                piece = Some(s.to_string());
            }
            (2, Field::Fixed32(bits)) => {
                score = f32::from_bits(bits);
                if !score.is_finite() {
                    return Err(r.bad("score is not finite"));
                }
            }
            (3, Field::Varint(t)) => {
                if !(1..=6).contains(&t) {
                    return Err(r.bad(format!("type {t} is none of 1..=6 (NORMAL … BYTE)")));
                }
                ty = t as i64;
            }
            (1..=3, _) => return Err(r.bad(format!("field {number} has the wrong wire type"))),
            _ => {}
        }
    }
    let piece = piece.ok_or_else(|| r.bad("no piece string"))?;
    Ok((piece, score, ty))
}
