//! Tokenizer parity: the GGUF-embedded vocabularies must give the ids Hugging Face gives.
//! Fixtures come from `scripts/make_tokenizer_fixtures.py`.

use crate::common::{self, TempDir};

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
    let dir = TempDir::new("tok-names");
    std::fs::write(dir.0.join("tokenizer.json"), &src).unwrap();
    let tok = Tokenizer::from_file(&dir.0.join("tokenizer.json")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));

    // config.json ids, eos given as a list.
    let dir = TempDir::new("tok-config");
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

#[test]
fn sentencepiece_model_matches_hf_ids() {
    let json = Tokenizer::from_file(&fixtures().join("spm/tokenizer.json")).unwrap();
    let model_path = fixtures().join("spm/tokenizer.model");
    let spm = Tokenizer::from_sentencepiece(&model_path).unwrap();
    check_parity("spm", &spm, "tokenizer.model");
    assert_eq!(spm.vocab_size(), json.vocab_size());
    assert_eq!(spm.max_token_bytes(), json.max_token_bytes());
    for id in 0..json.vocab_size() as u32 {
        assert_eq!(spm.id_to_token(id), json.id_to_token(id), "piece {id}");
        assert_eq!(spm.is_special(id), json.is_special(id), "piece {id}");
    }
    assert_eq!((spm.bos_id(), spm.eos_id()), (Some(1), Some(2)));
    assert!(spm.add_bos_default());
    assert!(!spm.is_special(spm.token_to_id("<tag>").unwrap()), "user-defined is not special");
    // The GGUF written from it is the same vocabulary.
    let md = spm.gguf_metadata(spm.vocab_size()).unwrap();
    assert_eq!(md.len(), json.gguf_metadata(json.vocab_size()).unwrap().len());

    // `open` dispatches on the name; a folder without tokenizer.json falls back to the model.
    check_parity("spm", &Tokenizer::open(&model_path).unwrap(), "open(tokenizer.model)");
    check_parity("spm", &Tokenizer::open(&fixtures().join("spm/tokenizer.json")).unwrap(), "open(tokenizer.json)");
    let dir = TempDir::new("tok-spm-only");
    std::fs::copy(&model_path, dir.0.join("tokenizer.model")).unwrap();
    assert_eq!(Tokenizer::hf_dir_file(&dir.0), dir.0.join("tokenizer.model"));
    std::fs::copy(fixtures().join("spm/tokenizer.json"), dir.0.join("tokenizer.json")).unwrap();
    assert_eq!(Tokenizer::hf_dir_file(&dir.0), dir.0.join("tokenizer.json"));
    assert_eq!(Tokenizer::hf_dir_file(Path::new("/nonexistent")), Path::new("/nonexistent/tokenizer.json"));

    // BOS/EOS and add_bos from sibling configs, as for tokenizer.json.
    std::fs::write(dir.0.join("tokenizer_config.json"), r#"{"bos_token": "</s>", "add_bos_token": false}"#).unwrap();
    std::fs::write(dir.0.join("config.json"), r#"{"eos_token_id": 0}"#).unwrap();
    let tok = Tokenizer::from_sentencepiece(&dir.0.join("tokenizer.model")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(2), Some(0)));
    assert!(!tok.add_bos_default());

    // Vicuna v0 adds `[PAD]` after the pieces (`added_tokens.json`): it takes the next id, is
    // special, and a GGUF for a model with one more embedding row lists it; an id that does not
    // continue the pieces is refused.
    let n = spm.vocab_size() as u32;
    std::fs::write(dir.0.join("added_tokens.json"), format!(r#"{{"[PAD]": {n}}}"#)).unwrap();
    let tok = Tokenizer::from_sentencepiece(&dir.0.join("tokenizer.model")).unwrap();
    assert_eq!((tok.vocab_size(), tok.token_to_id("[PAD]")), (n as usize + 1, Some(n)));
    assert!(tok.is_special(n));
    let md = tok.gguf_metadata(n as usize + 3).unwrap();
    let tokens = md.iter().find(|(k, _)| k == "tokenizer.ggml.tokens").unwrap().1.to_vec().unwrap().len();
    assert_eq!(tokens, n as usize + 3, "padded to the model's embedding rows");
    assert!(tok.gguf_metadata(n as usize).is_err(), "more tokens than embedding rows");
    std::fs::write(dir.0.join("added_tokens.json"), format!(r#"{{"[PAD]": {}}}"#, n + 5)).unwrap();
    let err = Tokenizer::from_sentencepiece(&dir.0.join("tokenizer.model")).unwrap_err().to_string();
    assert!(err.contains("next free id"), "{err}");
}

/// Protobuf bytes: a key, then the value as given (already encoded).
fn pb_field(number: u64, wire: u64, value: &[u8]) -> Vec<u8> {
    let mut out = pb_varint((number << 3) | wire);
    out.extend_from_slice(value);
    out
}

fn pb_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn pb_bytes(number: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = pb_varint(bytes.len() as u64);
    v.extend_from_slice(bytes);
    pb_field(number, 2, &v)
}

/// A `ModelProto` with the given pieces and trainer_spec.model_type.
fn pb_model(pieces: &[Vec<u8>], model_type: u64) -> Vec<u8> {
    let mut out: Vec<u8> = pieces.iter().flat_map(|p| pb_bytes(1, p)).collect();
    out.extend(pb_bytes(2, &pb_field(3, 0, &pb_varint(model_type))));
    out
}

fn pb_piece(piece: &[u8], score: f32, ty: u64) -> Vec<u8> {
    let mut p = pb_bytes(1, piece);
    p.extend(pb_field(2, 5, &score.to_le_bytes()));
    p.extend(pb_field(3, 0, &pb_varint(ty)));
    p
}

#[test]
fn hostile_sentencepiece_models_are_errors_not_crashes() {
    let dir = TempDir::new("tok-spm-hostile");
    let path = dir.0.join("tokenizer.model");
    let load = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        Tokenizer::from_sentencepiece(&path).map_err(|e| e.to_string())
    };
    let expect_err = |bytes: &[u8], what: &str| {
        let err = load(bytes).err().unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(err.contains("tokenizer.model"), "{what}: {err}");
        err
    };

    // Cut anywhere inside the pieces or the trainer_spec: an error naming the file. (A cut right
    // after the trainer_spec is a valid model without a normalizer_spec.)
    let real = std::fs::read(fixtures().join("spm/tokenizer.model")).unwrap();
    for keep in 0..real.len() - 20 {
        expect_err(&real[..keep], &format!("cut at {keep}"));
    }
    for keep in real.len() - 20..real.len() {
        let _ = load(&real[..keep]);
    }
    // Seeded random byte changes: never a panic.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut bytes = real.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = next() as u8;
        }
        let _ = load(&bytes);
    }
    for _ in 0..50 {
        let garbage: Vec<u8> = (0..next() % 512).map(|_| next() as u8).collect();
        let _ = load(&garbage);
    }

    let ok = [
        pb_piece(b"<unk>", 0.0, 2),
        pb_piece(b"<s>", 0.0, 3),
        pb_piece(b"</s>", 0.0, 3),
        pb_piece(b"a", -1.0, 1),
        pb_piece("▁".as_bytes(), -2.0, 1),
        pb_piece("▁a".as_bytes(), -0.5, 1),
    ];
    let tok = load(&pb_model(&ok, 2)).unwrap();
    assert_eq!(tok.encode("a", true).unwrap(), vec![1, 5], "the dummy prefix by default");

    let err = expect_err(&pb_model(&ok, 1), "unigram");
    assert!(err.contains("UNIGRAM"), "{err}");
    let no_trainer: Vec<u8> = ok.iter().flat_map(|p| pb_bytes(1, p)).collect();
    assert!(expect_err(&no_trainer, "no trainer_spec").contains("truncated"));
    expect_err(&[], "empty");
    assert!(expect_err(&pb_model(&[], 2), "no pieces").contains("no pieces"));
    let mut bad = ok.to_vec();
    bad.push(pb_piece(b"\xff\xfe", 0.0, 1));
    assert!(expect_err(&pb_model(&bad, 2), "not UTF-8").contains("UTF-8"));
    bad.pop();
    bad.push(pb_piece(b"b", 0.0, 9));
    assert!(expect_err(&pb_model(&bad, 2), "type 9").contains("type 9"));
    bad.pop();
    bad.push(pb_piece(b"b", f32::NAN, 1));
    assert!(expect_err(&pb_model(&bad, 2), "NaN score").contains("not finite"));
    // A length far past the end, a varint that never ends, a deprecated group.
    let mut huge = pb_varint((1 << 3) | 2);
    huge.extend(pb_varint(u64::MAX >> 1));
    assert!(expect_err(&huge, "huge length").contains("left"));
    assert!(expect_err(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], "long varint")
        .contains("varint"));
    expect_err(&pb_field(7, 3, &[]), "group");
    expect_err(&pb_field(1, 0, &[5]), "pieces as a varint");
    // Another field of ModelProto is skipped, whatever its wire type.
    let mut extra = pb_model(&ok, 2);
    extra.extend(pb_field(4, 1, &[0; 8]));
    extra.extend(pb_bytes(5, b"denormalizer"));
    extra.extend(pb_field(9, 5, &[0; 4]));
    assert!(load(&extra).is_ok());
    // add_dummy_prefix = false is read.
    let mut no_prefix = pb_model(&ok, 2);
    no_prefix.extend(pb_bytes(3, &pb_field(3, 0, &[0])));
    assert_eq!(load(&no_prefix).unwrap().encode("a", false).unwrap(), vec![3]);

    let err = Tokenizer::from_sentencepiece(Path::new("/nonexistent/tokenizer.model")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/tokenizer.model"), "{err}");
}
