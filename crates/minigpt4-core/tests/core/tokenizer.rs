//! Tokenizer parity: the GGUF-embedded vocabularies must give the ids Hugging Face gives.
//! Fixtures come from `scripts/make_tokenizer_fixtures.py`.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use minigpt4_core::tokenizer::Tokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn read_gguf(name: &str) -> gguf_file::Content {
    let path = fixtures().join(name);
    let mut f = std::fs::File::open(&path).unwrap();
    gguf_file::Content::read(&mut f).unwrap()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("minigpt4-tok-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_parity(kind: &str, tok: &Tokenizer, source: &str) {
    for case in cases() {
        let text = case["text"].as_str().unwrap();
        let expected = &case[kind];
        let want = ids_of(&expected["ids"]);
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "{kind} {source}: ids of {text:?}");
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            expected["decoded"].as_str().unwrap(),
            "{kind} {source}: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&got, true).unwrap(),
            expected["decoded_skip_special"].as_str().unwrap(),
            "{kind} {source}: decode(skip_special) of {text:?}"
        );
    }
}

#[test]
fn spm_gguf_matches_hf_ids() {
    let json = Tokenizer::from_file(&fixtures().join("spm/tokenizer.json")).unwrap();
    let gguf = Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap();
    check_parity("spm", &json, "tokenizer.json");
    check_parity("spm", &gguf, "gguf");
    assert_eq!(json.vocab_size(), gguf.vocab_size());
    for t in [&json, &gguf] {
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.eos_id(), Some(2));
        assert_eq!(t.token_to_id("<s>"), Some(1));
        assert_eq!(t.id_to_token(2).as_deref(), Some("</s>"));
        assert!(t.is_special(1) && t.is_special(2));
        assert!(!t.is_special(t.token_to_id("<tag>").unwrap()), "user-defined is not special");
        assert!(!t.is_special(t.token_to_id("<0x0A>").unwrap()));
    }
    assert!(gguf.add_bos_default());
}

#[test]
fn gpt2_gguf_matches_hf_ids() {
    let json = Tokenizer::from_file(&fixtures().join("gpt2/tokenizer.json")).unwrap();
    let gguf = Tokenizer::from_gguf(&read_gguf("gpt2.gguf")).unwrap();
    check_parity("gpt2", &json, "tokenizer.json");
    check_parity("gpt2", &gguf, "gguf");
    assert_eq!(json.vocab_size(), gguf.vocab_size());
    for t in [&json, &gguf] {
        // SmolLM2's convention: bos = <|im_start|>, eos = <|im_end|>, no automatic BOS.
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.eos_id(), Some(2));
        assert!(!t.add_bos_default());
        assert!(t.is_special(0) && t.is_special(2));
    }
}

#[test]
fn encode_adds_bos_only_when_asked() {
    let tok = Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap();
    let plain = tok.encode("Hello world", false).unwrap();
    let with = tok.encode("Hello world", true).unwrap();
    assert_eq!(with[0], 1);
    assert_eq!(&with[1..], &plain[..]);
    assert_eq!(tok.encode("", true).unwrap(), vec![1]);
    assert!(tok.encode("", false).unwrap().is_empty());
}

#[test]
fn bos_eos_from_sibling_configs() {
    let src = std::fs::read(fixtures().join("gpt2/tokenizer.json")).unwrap();

    // No config at all: found by name among the special tokens.
    let dir = TempDir::new("names");
    std::fs::write(dir.0.join("tokenizer.json"), &src).unwrap();
    let tok = Tokenizer::from_file(&dir.0.join("tokenizer.json")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));

    // config.json ids, eos given as a list.
    let dir = TempDir::new("config");
    std::fs::write(dir.0.join("tokenizer.json"), &src).unwrap();
    std::fs::write(dir.0.join("config.json"), r#"{"bos_token_id": 0, "eos_token_id": [0, 2]}"#).unwrap();
    let tok = Tokenizer::from_file(&dir.0.join("tokenizer.json")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(0), Some(0)));

    // tokenizer_config.json wins over config.json; an explicit null means none.
    std::fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"bos_token": null, "eos_token": {"content": "<|im_end|>", "special": true}}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_file(&dir.0.join("tokenizer.json")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (None, Some(2)));
    let err = tok.encode("hi", true).unwrap_err().to_string();
    assert!(err.contains("no BOS"), "{err}");

    // A broken sibling config is reported with its path.
    std::fs::write(dir.0.join("tokenizer_config.json"), "{not json").unwrap();
    let err = Tokenizer::from_file(&dir.0.join("tokenizer.json")).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let tok = Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap();
    let n = tok.vocab_size() as u32;
    assert!(tok.decode(&[5, n], false).is_err());
    assert!(tok.stream(false).push(n + 7).is_err());

    let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");

    let mut ct = read_gguf("spm.gguf");
    ct.metadata.insert("tokenizer.ggml.model".into(), gguf_file::Value::String("rwkv".into()));
    assert!(Tokenizer::from_gguf(&ct).unwrap_err().to_string().contains("rwkv"));

    let mut ct = read_gguf("spm.gguf");
    ct.metadata.insert("tokenizer.ggml.bos_token_id".into(), gguf_file::Value::U32(100_000));
    assert!(Tokenizer::from_gguf(&ct).is_err());

    let mut ct = read_gguf("spm.gguf");
    ct.metadata.insert("tokenizer.ggml.token_type".into(), gguf_file::Value::Array(vec![]));
    assert!(Tokenizer::from_gguf(&ct).is_err());

    let mut ct = read_gguf("gpt2.gguf");
    ct.metadata.insert("tokenizer.ggml.pre".into(), gguf_file::Value::String("mystery".into()));
    assert!(Tokenizer::from_gguf(&ct).unwrap_err().to_string().contains("mystery"));

    let mut ct = read_gguf("gpt2.gguf");
    ct.metadata.remove("tokenizer.ggml.merges");
    assert!(Tokenizer::from_gguf(&ct).unwrap_err().to_string().contains("merges"));
}

fn stream_all(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> (String, Vec<String>) {
    let mut stream = tok.stream(skip_special);
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(p) = stream.push(id).unwrap() {
            pieces.push(p);
        }
    }
    if let Some(p) = stream.finish().unwrap() {
        pieces.push(p);
    }
    (pieces.concat(), pieces)
}

#[test]
fn stream_concatenation_equals_decode() {
    let toks = [
        ("spm", Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap()),
        ("gpt2", Tokenizer::from_gguf(&read_gguf("gpt2.gguf")).unwrap()),
    ];
    for (kind, tok) in &toks {
        for case in cases() {
            let ids = ids_of(&case[*kind]["ids"]);
            for skip in [false, true] {
                let (text, pieces) = stream_all(tok, &ids, skip);
                assert_eq!(text, tok.decode(&ids, skip).unwrap(), "{kind} {:?}", case["text"]);
                for p in &pieces {
                    assert!(!p.contains('\u{FFFD}'), "{kind}: partial character streamed in {p:?}");
                }
            }
        }
    }
}

#[test]
fn stream_holds_split_characters() {
    let tok = Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap();
    // "€" = E2 82 AC, spelled as three byte-fallback tokens.
    let bytes: Vec<u32> = ["<0xE2>", "<0x82>", "<0xAC>"].iter().map(|b| tok.token_to_id(b).unwrap()).collect();
    let mut stream = tok.stream(false);
    assert_eq!(stream.push(bytes[0]).unwrap(), None);
    assert_eq!(stream.push(bytes[1]).unwrap(), None);
    assert_eq!(stream.push(bytes[2]).unwrap().as_deref(), Some("€"));
    assert_eq!(stream.finish().unwrap(), None);

    // An unfinished character at the end comes out on finish, as decode writes it.
    let mut stream = tok.stream(false);
    assert_eq!(stream.push(bytes[0]).unwrap(), None);
    assert_eq!(stream.finish().unwrap().as_deref(), Some("\u{FFFD}"));
}

#[test]
fn stream_random_ids_never_fails() {
    // Arbitrary id sequences (stray continuation bytes, specials, lone dummy prefixes) must never
    // error, and must reproduce decode exactly whenever decode yields valid text.
    for (name, tok) in [
        ("spm", Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap()),
        ("gpt2", Tokenizer::from_gguf(&read_gguf("gpt2.gguf")).unwrap()),
    ] {
        let n = tok.vocab_size() as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..300 {
            let len = 1 + round % 40;
            let ids: Vec<u32> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) % n) as u32
                })
                .collect();
            for skip in [false, true] {
                let (text, _) = stream_all(&tok, &ids, skip);
                let full = tok.decode(&ids, skip).unwrap();
                if !full.contains('\u{FFFD}') {
                    assert_eq!(text, full, "{name} ids {ids:?}");
                }
            }
        }
    }
}

/// Parity against the real SmolLM2 GGUF (`$MINIGPT4_SMOLLM2_GGUF`, else the default model's
/// fetched part): a few ids known from its Hugging Face tokenizer.
#[test]
fn smollm2_gguf_ids() {
    let path = common::default_part("MINIGPT4_SMOLLM2_GGUF", |p| &p.smollm2_gguf);
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let tok = Tokenizer::from_gguf(&ct).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    let ids = tok.encode("<|im_start|>user\nHi 123<|im_end|>\n", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[ids.len() - 2], 2);
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>user\nHi 123<|im_end|>\n");
}

/// `max_token_bytes` bounds the text one token covers, for both vocabulary kinds and both
/// sources: no text has fewer tokens than its bytes over that bound (the server's early refusal
/// of an over-long prompt relies on it).
#[test]
fn no_token_covers_more_text_than_max_token_bytes() {
    let toks = [
        Tokenizer::from_file(&fixtures().join("spm/tokenizer.json")).unwrap(),
        Tokenizer::from_gguf(&read_gguf("spm.gguf")).unwrap(),
        Tokenizer::from_file(&fixtures().join("gpt2/tokenizer.json")).unwrap(),
        Tokenizer::from_gguf(&read_gguf("gpt2.gguf")).unwrap(),
    ];
    let mut texts: Vec<String> = cases().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect();
    texts.extend(["          ".repeat(50), "ééééé€€€".repeat(40), "<|im_start|>".repeat(30), "aaaa".repeat(300)]);
    for tok in &toks {
        assert!(tok.max_token_bytes() >= 1);
        for text in &texts {
            let n = tok.encode(text, false).unwrap().len();
            assert!(
                n * tok.max_token_bytes() >= text.len(),
                "{} bytes in {n} tokens of at most {} bytes",
                text.len(),
                tok.max_token_bytes()
            );
        }
    }
}
