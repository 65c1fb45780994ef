#!/usr/bin/env python3
"""Reference BLEU-1..4 and CIDEr-D scores from pycocoevalcap for the Rust metric tests.

Writes crates/minigpt4-train/tests/fixtures/metrics/coco.json. Each case is a small corpus of
already-tokenized (lower-case, punctuation-free) candidate/reference strings, scored with
pycocoevalcap's own scorers:

* ``Bleu(4).compute_score(gts, res, verbose=0)``: corpus BLEU-1..4 (option "closest") and the
  per-image BLEU-1..4 lists,
* ``Cider().compute_score(gts, res)``: corpus CIDEr-D (n = 4, sigma = 6, clipping, Gaussian length
  penalty, x10, document frequency over the corpus's references) and the per-image scores.

The PTB tokenizer is not called (it needs Java); the inputs are what it would output.

    /opt/fx/bin/pip install pycocoevalcap==1.2
    /opt/fx/bin/python scripts/make_metric_fixtures.py
"""

import json
import pathlib

import pycocoevalcap
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/minigpt4-train/tests/fixtures/metrics/coco.json"

# (candidate, [references]) per image. Varied on purpose: exact matches, partial overlap,
# nothing in common, empty and one-word candidates, repeated words (clipping), long
# candidates (length penalties), several references (closest reference length, ties).
MAIN = [
    ("a frog", ["a frog"]),
    ("a green frog sitting on a leaf", ["a frog"]),
    ("an old fashioned clothespin", ["an old-fashioned clothespin"]),
    ("a wooden clothes peg", ["an old-fashioned clothespin"]),
    ("a clip-art drawing of the 4 of spades playing card", ["a clip-art drawing of the 4 of spades playing card filed under recreation games cards ornamental"]),
    ("a playing card", ["a clip-art drawing of the king of clubs playing card filed under recreation games cards bordered"]),
    ("a 3d rendering of a lion face emoji", ["a 3d rendering of a lion face emoji from the animals and nature category"]),
    ("a cartoon cat", ["a 3d rendering of a grinning face emoji from the smileys and emotion category"]),
    ("a photograph of a pyramid in the desert", ["a photograph of the bent pyramid"]),
    ("a photograph of the bent pyramid", ["a photograph of the bent pyramid"]),
    ("a a a a a a", ["a simple image of a blue triangle"]),
    ("a simple image of a blue triangle", ["a simple image of a blue triangle"]),
    ("a simple image of a red circle", ["a simple image of a blue triangle"]),
    ("triangle", ["a simple image of a blue triangle"]),
    ("", ["a giraffe"]),
    ("the the the giraffe giraffe", ["a giraffe"]),
    ("this is a picture of a brown hat on a table next to a window with a view of the sea and some boats in the harbour on a sunny day",
     ["a brown hat"]),
    ("a yellow lemon", ["a yellow lemon"]),
    ("a glass of water on a table", ["a glass of water"]),
    ("the eiffel tower in paris at night", ["the eiffel tower in paris"]),
    ("a man in a suit", ["a man in a suit"]),
    ("a spider playing soccer with a ball", ["a spider playing soccer"]),
]

MULTI_REF = [
    ("a cat on a mat", ["a cat sits on the mat", "there is a cat on the mat", "cat"]),
    ("a dog", ["a small dog runs", "the dog", "dogs are playing in a park"]),
    ("two birds on a branch", ["a bird", "birds on a tree branch in spring"]),
    ("a red car parked", ["a red car", "a car parked on the street", "a red car parked next to a house"]),
    # Equally close references (4 and 6 words for 5): the shorter one counts.
    ("a big old brown dog", ["a big brown dog and cat", "big old brown dog"]),
]

CASES = {
    "main": MAIN,
    "multi_ref": MULTI_REF,
    # One image: CIDEr's idf is log(1) - log(df) = 0 everywhere, so every score is 0.
    "single": [("a frog on a rock", ["a frog"])],
    # Every candidate shorter than its reference: the brevity penalty bites.
    "short": [("a", ["a red apple"]), ("apple", ["a green apple on a table"]), ("red", ["a red ball"])],
    # Everything matches: BLEU-4 and per-image scores near 1.
    "exact": [(r, [r]) for r in ["a red apple on a table", "a blue bird in the sky", "a black cat on a chair"]],
}


def score(pairs):
    gts = {str(i): refs for i, (_, refs) in enumerate(pairs)}
    res = {str(i): [cand] for i, (cand, _) in enumerate(pairs)}
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    return {
        "candidates": [c for c, _ in pairs],
        "references": [r for _, r in pairs],
        "bleu": [float(b) for b in bleu],
        "bleu_per_image": [[float(x) for x in xs] for xs in bleu_per_image],
        "cider": float(cider),
        "cider_per_image": [float(x) for x in cider_per_image],
    }


def main():
    out = {
        "generator": "scripts/make_metric_fixtures.py",
        "pycocoevalcap": getattr(pycocoevalcap, "__version__", "1.2"),
        "cases": {name: score(pairs) for name, pairs in CASES.items()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    for name, c in out["cases"].items():
        print(f"{name:10} BLEU-4 {c['bleu'][3]:.6f}  CIDEr-D {c['cider']:.6f}  ({len(c['candidates'])} images)")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
