#!/usr/bin/env python3
"""Build the tokenizer fixtures used by `crates/minigpt4-core/tests/core/tokenizer.rs`.

Two tiny tokenizers, each written twice -- as a Hugging Face `tokenizer.json` and as a GGUF file
holding only the tokenizer metadata the way llama.cpp's converter writes it -- plus `cases.json`
with the ids Hugging Face `tokenizers` produces for a set of awkward texts. The Rust tests check
that both loaders reproduce those ids exactly.

* `spm`: a SentencePiece BPE model with byte fallback (LLaMA / Vicuna style), also kept as the
  `tokenizer.model` SentencePiece wrote (LLaMA and the Vicuna deltas ship only that). The HF side
  is built like `transformers`' `LlamaConverter` with `legacy=True` (the form of the published Llama-2 and
  Vicuna `tokenizer.json` files): BPE with merges derived from the piece scores, a
  `Prepend("▁") + Replace(" ", "▁")` normalizer and a `Replace/ByteFallback/Fuse/Strip` decoder.
  Its ids are also checked here against `sentencepiece` itself, so the fixture cannot drift away
  from the real SentencePiece segmentation.
* `gpt2`: a byte-level BPE shaped like SmolLM2's (`Digits` + `ByteLevel` pre-tokenizer,
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` as ids 0..2), written to GGUF with pre-tokenizer
  `smollm` as llama.cpp does for SmolLM2.

Needs: sentencepiece, tokenizers, gguf, transformers (only for `generate_merges`-style ordering,
replicated below). Run from the repository root:

    python scripts/make_tokenizer_fixtures.py
"""

import json
import os
import shutil
import sys
import tempfile

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "minigpt4-core", "tests", "fixtures", "tokenizer")

SENTENCES = [
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you.",
    "Please answer my questions about the picture in as much detail as you can.",
    "The image shows a small grey cat sitting on a wooden table next to a cup of coffee.",
    "A red rocket is standing on the launch pad while the sky behind it turns orange.",
    "Describe this image in detail. Take a look at this image and describe what you notice.",
    "Could you describe the contents of this image for me? Please provide a detailed description.",
    "There are three apples, two bananas and 12 oranges in the basket on the left side.",
    "The camera is old and black, with a silver lens and a leather strap around the body.",
    "In the background you can see mountains, trees, a river and a few white clouds.",
    "The logo is a blue circle with the letters of the company name written inside it.",
    "Human: What is in the picture?###Assistant: It is a photo of a cat sleeping on a sofa.",
    "She said: \"this is the best coffee in town\" and smiled at the people around her.",
    "Numbers like 2024, 3.14 and 1000000 appear in the text, as do dates like 12/05/2023.",
    "    Indented lines, tabs\tand multiple   spaces are kept as they are written.",
    "The quick brown fox jumps over the lazy dog while the dog keeps sleeping in the sun.",
]


def corpus_lines():
    # Enough repetitions with small variations that BPE learns stable merges.
    for rep in range(30):
        for i, s in enumerate(SENTENCES):
            yield s if (rep + i) % 3 else s.lower()


CASES = [
    "Hello world",
    "hello world",
    " leading space",
    "  two leading spaces",
    "multiple   spaces  inside   the text",
    "trailing space ",
    " ",
    "   ",
    "\n",
    "line one\nline two\n\nend\n",
    "tabs\tand\ttabs",
    "emoji 😀 and 🐱 cats",
    "日本語のテキスト",
    "Ελληνικά γράμματα",
    "naïve café — déjà vu",
    "<s>inside",
    "text<s>[INST] more</s> after",
    "</s>",
    "<s> spaced </s>",
    "###",
    "a###",
    "Hello###Human: hi###Assistant: ",
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.###Human: <Img>",
    "</Img> Describe this image in detail.###Assistant: ",
    "Numbers 12345 and 3.14 and 007",
    "<tag> user defined",
    "a<tag>b",
    "<unk> literal",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<Img>",
    "</Img> What is this?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "",
]


def spm_fixture(work):
    prefix = os.path.join(work, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus_lines())),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        # LLaMA's settings: no normalisation, whitespace kept verbatim, digits split.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        user_defined_symbols=["<tag>"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    proto = sp_pb2.ModelProto()
    with open(prefix + ".model", "rb") as f:
        proto.ParseFromString(f.read())
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}

    # Merges as transformers' SentencePieceExtractor orders them when given the scores
    # (LlamaConverter): every split of a piece into two pieces of the vocabulary, ordered by the
    # merged piece's score (highest first, stable in piece id), then by the halves' ids.
    merges = []
    for merged, score, _ in pieces:
        local = []
        for k in range(1, len(merged)):
            left, right = merged[:k], merged[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    merges = [(l, r) for l, r, _ in merges]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # Control pieces (and unk, which transformers registers as a special token) are special added
    # tokens; user-defined pieces are added but not special.
    added = []
    for i, (piece, _, typ) in enumerate(pieces):
        if typ in (2, 3):
            added.append(AddedToken(piece, special=True, normalized=False))
        elif typ == 4:
            added.append(AddedToken(piece, special=False, normalized=False))
    tok.add_tokens([t for t in added if not t.special])
    tok.add_special_tokens([t for t in added if t.special])

    # The converted BPE must segment exactly like SentencePiece wherever SentencePiece sees the
    # same input (it does not parse special tokens inside text).
    for text in CASES:
        if any(s in text for s in ("<s>", "</s>", "<unk>", "<tag>")):
            continue
        hf = tok.encode(text, add_special_tokens=False).ids
        ref = sp.encode(text)
        if hf != ref:
            sys.exit(f"spm: HF-style BPE disagrees with sentencepiece on {text!r}:\n  hf {hf}\n  sp {ref}")

    # GGUF metadata as llama.cpp's convert_hf_to_gguf.py writes it for a SentencePiece vocab.
    def token_type(piece_id, typ):
        if sp.IsUnknown(piece_id):
            return gguf.TokenType.UNKNOWN
        if sp.IsControl(piece_id):
            return gguf.TokenType.CONTROL
        if sp.IsUnused(piece_id):
            return gguf.TokenType.UNUSED
        if sp.IsByte(piece_id):
            return gguf.TokenType.BYTE
        if typ == 4:
            return gguf.TokenType.USER_DEFINED
        return gguf.TokenType.NORMAL

    w = gguf.GGUFWriter(os.path.join(OUT, "spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([token_type(i, t) for i, (_, _, t) in enumerate(pieces)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok.save(os.path.join(OUT, "spm", "tokenizer.json"))
    # The SentencePiece model itself, as LLaMA and lmsys' Vicuna deltas publish it (no
    # tokenizer.json there): `Tokenizer::from_sentencepiece` must give the same ids.
    shutil.copyfile(prefix + ".model", os.path.join(OUT, "spm", "tokenizer.model"))
    return tok


def gpt2_fixture():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = data["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens)

    w = gguf.GGUFWriter(os.path.join(OUT, "gpt2.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok.save(os.path.join(OUT, "gpt2", "tokenizer.json"))
    # SmolLM2's tokenizer_config names its bos/eos this way; the Rust loader reads it.
    with open(os.path.join(OUT, "gpt2", "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False}, f, indent=1)
    return tok


def main():
    os.makedirs(os.path.join(OUT, "spm"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "gpt2"), exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        spm_tok = spm_fixture(work)
    gpt2_tok = gpt2_fixture()

    cases = []
    for text in CASES:
        entry = {"text": text}
        for name, tok in (("spm", spm_tok), ("gpt2", gpt2_tok)):
            ids = tok.encode(text, add_special_tokens=False).ids
            entry[name] = {
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        cases.append(entry)
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
