#!/usr/bin/env python3
"""How far can a model's frozen image features (tiny-dinov2 by default, MODEL= to choose) name a held-out tuxpaint stamp?

A ceiling for any projection, measured without the LLM: each held-out stamp's cached adapter
tokens (DINOv2-S + merge 4, what the projection sees) are matched to the 867 training stamps, and a
guess counts when the caption it picks contains the held-out caption's main noun (the eval's
keyword-hit rule, approximated here in Python). Reported:

  vocabulary   held-out nouns that occur in any training caption (no encoder can do better
               by naming a training noun)
  kNN-1/5      nearest training stamp(s), centred cosine of the mean token
  whitened     nearest training stamp after PCA whitening (256 components)
  logreg       multinomial logistic regression from the mean token to the training nouns

    scripts/probe_features.py WORK_DIR     (WORK_DIR of scripts/train-default.sh)

Needs numpy, scikit-learn and safetensors, and `minigpt4` (or MINIGPT4=...). Training never reads
the held-out split, so the held-out stamps' features are computed here by a throwaway one-step run
in WORK_DIR/probe on a copy of the manifest that marks every record as train; the recipe's
folders are not touched.
"""
import json, os, re, subprocess, sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

STOP = set("a an the this that these those some any each every another other its it his her their my our your no "
           "many several few all both there here what one two three four five six seven eight nine ten very more".split())
BOUNDARIES = set("with from in on at under over near by for to into onto inside outside behind above below beside "
                 "between against without during like about around through across among along upon and or but that "
                 "which who whose where while is are was were has have can will".split())
MEDIA = set("drawing rendering render photograph photo picture image illustration cartoon sketch painting clip-art "
            "clipart icon silhouette closeup close-up".split())
PARTITIVES = set("pair group bunch set kind sort type couple piece slice handful stack pile herd flock collection "
                 "lot lots".split())


def main_noun(caption):
    """crates/minigpt4-train/src/keyword.rs's rule, without its participle step."""
    c = caption.lower().replace("\u2019", "'")
    c = re.split(r'[,;:!?()\[\]"]|\.(?:\s|$)| - |--', c)[0]
    words = c.split()
    for i, w in enumerate(words[:6]):
        if w in MEDIA and i + 1 < len(words) and words[i + 1] == "of":
            words = words[i + 2:]
            break
    phrase = []
    for w in words:
        if w in BOUNDARIES:
            break
        phrase.append(w)
    if phrase and phrase[-1] == "emoji":
        phrase.pop()
    head, tail = (phrase[:phrase.index("of")], phrase[phrase.index("of") + 1:]) if "of" in phrase else (phrase, [])
    nounlike = lambda w: re.fullmatch(r"[a-z][a-z'\-]+", w) and w not in STOP
    h = [w for w in head if nounlike(w)]
    if h and h[-1] not in PARTITIVES:
        return h[-1]
    t = [w for w in tail if nounlike(w)]
    return t[-1] if t else (h[-1] if h else None)


def forms(n):
    f = {n, n + "s", n + "es"}
    if n.endswith("y"):
        f.add(n[:-1] + "ies")
    if n.endswith("s"):
        f.add(n[:-1])
    return f


def names(caption, noun):
    words = set(re.findall(r"[a-z][a-z'\-]*", caption.lower()))
    words |= {p for w in words for p in w.split("-")}
    return bool(words & forms(noun))


def image_key(data):
    """crates/minigpt4-train/src/features.rs: FNV-1a-64 of the file's bytes, then its length."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}-{len(data):x}"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = Path(sys.argv[1]).resolve()
    data = work / "data" / "tuxpaint"
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    everything = probe / "tuxpaint-all.jsonl"
    with open(data / "manifest.jsonl") as src, open(everything, "w") as dst:
        for line in src:
            r = json.loads(line)
            r["image"] = str(data / r["image"])
            r["split"] = "train"
            dst.write(json.dumps(r) + "\n")
    subprocess.run([os.environ.get("MINIGPT4", "minigpt4"), "train", "--stage", "1", "--model", os.environ.get("MODEL", "tiny-dinov2"),
                    "--data", str(everything), "--out", str(probe / "run"), "--cache-dir", str(work / "cache"),
                    "--steps", "1", "--batch", "1", "--quiet", "--resume"], check=True)
    # The fingerprint of the encoder the run used: older fingerprints' folders may hold stale
    # features under the same image keys.
    fingerprint = json.loads((probe / "run" / "config.json").read_text())["encoder_fingerprint"]
    cache = work / "cache" / "features" / fingerprint
    records = []
    for line in open(data / "manifest.jsonl"):
        r = json.loads(line)
        f = cache / f"{image_key((data / r['image']).read_bytes())}.safetensors"
        if f.exists():  # not there: an image the trainer reported and skipped
            r["x"] = load_file(f)["features"][0].mean(0)
            records.append(r)
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] == "heldout" and main_noun(r["caption"])]
    X = np.stack([r["x"] for r in train]).astype(np.float64)
    Y = np.stack([r["x"] for r in held]).astype(np.float64)
    nouns = [main_noun(r["caption"]) for r in held]

    def hits(picked):  # picked[i]: indices of training records guessed for held-out i
        return sum(any(names(train[j]["caption"], n) for j in p) for p, n in zip(picked, nouns))

    rows = [("vocabulary", sum(any(names(t["caption"], n) for t in train) for n in nouns))]
    mu = X.mean(0)
    A = (X - mu) / np.linalg.norm(X - mu, axis=1, keepdims=True)
    B = (Y - mu) / np.linalg.norm(Y - mu, axis=1, keepdims=True)
    order = np.argsort(-(B @ A.T), axis=1)
    rows += [("kNN-1", hits(order[:, :1])), ("kNN-5", hits(order[:, :5]))]
    pca = PCA(n_components=256, whiten=True, random_state=0).fit(X)
    A, B = pca.transform(X), pca.transform(Y)
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    rows.append(("whitened kNN-1", hits((B @ A.T).argmax(1)[:, None])))
    labelled = [i for i, r in enumerate(train) if main_noun(r["caption"])]
    sd = X.std(0) + 1e-6
    clf = LogisticRegression(C=0.1, max_iter=2000).fit((X[labelled] - mu) / sd,
                                                     [main_noun(train[i]["caption"]) for i in labelled])
    guess = clf.predict((Y - mu) / sd)
    rows.append(("logreg", sum(g in forms(n) or n in forms(g) for g, n in zip(guess, nouns))))
    print(f"{len(train)} training stamps, {len(held)} held-out stamps with a main noun")
    print("| probe | held-out stamps named |\n|---|---:|")
    for name, h in rows:
        print(f"| {name} | {h}/{len(held)} ({100 * h / len(held):.1f}%) |")


if __name__ == "__main__":
    main()
