//! Captioning metrics as the COCO caption evaluation (`pycocoevalcap` 1.2) computes them:
//! BLEU-1..4 and CIDEr-D over PTB-style tokens.
//!
//! * [`tokenize`]: `pycocoevalcap`'s `PTBTokenizer` runs Stanford's Java `PTBTokenizer`
//!   (CoreNLP 3.4.1, `-preserveLines -lowerCase`) and then drops the tokens in its
//!   `PUNCTUATIONS` list. Java is not available here, so this is a re-implementation of the
//!   part that matters for captions: lower-case; split words from the punctuation around them
//!   (`dog.` → `dog .`, `cat,` → `cat ,`, `"hi"` → `` `` hi '' ``); keep `-` `.` `&` `/` `'`
//!   inside words (`old-fashioned`, `3.5`, `u.s.`, `at&t`, `o'clock`), `,` and `:` between
//!   digits (`1,000`, `10:30`); split the clitics `n't` `'s` `'re` `'ve` `'ll` `'d` `'m`
//!   (`don't` → `do n't`, `cat's` → `cat 's`) and `cannot` → `can not`; brackets become
//!   `-lrb-` `-rrb-` `-lsb-` `-rsb-` `-lcb-` `-rcb-`; every other symbol is a token of its own.
//!   Then the `PUNCTUATIONS` tokens are removed: `''` `'` ``` `` ``` `` ` `` `.` `?` `!` `,` `:` `-`
//!   `--` `...` `;`. As in the real pipeline, the bracket tokens survive: the Java tokenizer
//!   lower-cases `-LRB-` to `-lrb-` before the Python filter looks for `-LRB-`.
//!   Known differences from CoreNLP: its full abbreviation list (here: tokens with an inner
//!   period and a few titles keep their final period), its ptb3 escaping of `/` and `*`
//!   (here kept as they are), `gonna`-style splits, and Unicode normalisation beyond curly
//!   quotes, dashes and the ellipsis character.
//! * [`bleu`]: `Bleu(4)` — modified n-gram precisions clipped by the largest count in any
//!   reference, the "closest" effective reference length (ties go to the shorter reference),
//!   corpus brevity penalty `exp(1 − r/c)` when `c < r`, and the scorer's smoothing: each
//!   precision is `(correct + 1e-15) / (guessed + 1e-9)`; BLEU-n is the geometric mean of the
//!   first n.
//! * [`cider_d`]: `Cider()` — which is CIDEr-D: n-grams 1..4 as TF-IDF vectors with document
//!   frequencies over the evaluated images' references and idf `log(#images) − log(max(1, df))`;
//!   per n the clipped cosine `Σ min(h, r)·r / (|h||r|)`, times the Gaussian length penalty
//!   `e^(−δ²/2σ²)` with σ = 6; the mean over n, averaged over references, ×10; the corpus score
//!   is the mean over images. Like the reference code, δ is the difference in *bigram* counts
//!   (its `length` counts n-grams of index 1).
//!
//! Both scorers take whitespace-separated token strings (what [`normalize`] returns) and follow
//! the reference code's arithmetic order, so they agree with it to the last bit or nearly.

use std::collections::HashMap;

/// The tokens `pycocoevalcap`'s `PTBTokenizer` drops after tokenizing.
pub const PUNCTUATIONS: [&str; 17] =
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"];

/// Titles that keep their period as PTB abbreviations do (`mr.` stays one token).
const ABBREVIATIONS: [&str; 12] = ["mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "co"];

/// Clitics split off the end of a word (after lower-casing).
const CLITICS: [&str; 6] = ["'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Caption text → PTB tokens with the punctuation tokens removed (see the module docs).
pub fn tokenize(text: &str) -> Vec<String> {
    let text: String = text
        .replace('\n', " ")
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{2032}' => '\'',
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{2033}' => '"',
            '\u{2013}' | '\u{2014}' | '\u{2212}' => '-',
            c => c,
        })
        .collect::<String>()
        .replace('\u{2026}', "...");
    let mut out = Vec::new();
    for chunk in text.split_whitespace() {
        lex_chunk(chunk, &mut out);
    }
    out.retain(|t| !PUNCTUATIONS.contains(&t.as_str()));
    out
}

/// [`tokenize`], joined by single spaces: the form the scorers read.
pub fn normalize(text: &str) -> String {
    tokenize(text).join(" ")
}

fn lex_chunk(chunk: &str, out: &mut Vec<String>) {
    let c: Vec<char> = chunk.chars().collect();
    let n = c.len();
    let alnum = |i: usize| i < n && c[i].is_alphanumeric();
    let digit = |i: usize| i < n && c[i].is_numeric();
    let mut i = 0;
    while i < n {
        let ch = c[i];
        if ch.is_alphanumeric() {
            let mut j = i + 1;
            while j < n {
                let x = c[j];
                // Joiners stay inside a word when letters or digits stand on both sides.
                let keep = x.is_alphanumeric()
                    || (matches!(x, '-' | '&' | '/' | '\'' | '.') && c[j - 1].is_alphanumeric() && alnum(j + 1))
                    || (matches!(x, ',' | ':') && digit(j - 1) && digit(j + 1));
                if !keep {
                    break;
                }
                j += 1;
            }
            let mut word: String = c[i..j].iter().collect();
            // A final period stays on abbreviations: `u.s.`, `e.g.`, `mr.`.
            let single_period = j < n && c[j] == '.' && (j + 1 == n || c[j + 1] != '.');
            if single_period && (word.contains('.') || ABBREVIATIONS.contains(&word.as_str())) {
                word.push('.');
                j += 1;
            }
            push_word(word, out);
            i = j;
        } else if ch == '.' {
            let mut j = i;
            while j < n && c[j] == '.' {
                j += 1;
            }
            out.push(if j - i >= 3 { "...".into() } else { ".".repeat(j - i) });
            i = j;
        } else if ch == '-' {
            let mut j = i;
            while j < n && c[j] == '-' {
                j += 1;
            }
            out.push(if j - i >= 2 { "--".into() } else { "-".into() });
            i = j;
        } else if ch == '"' {
            // Opening or closing double quote: `` or '' (both dropped).
            out.push(if i == 0 || !c[i - 1].is_alphanumeric() { "``".into() } else { "''".into() });
            i += 1;
        } else if ch == '\'' || ch == '`' {
            let mut j = i;
            while j < n && (c[j] == '\'' || c[j] == '`') {
                j += 1;
            }
            out.push(c[i..j].iter().collect());
            i = j;
        } else {
            out.push(
                match ch {
                    '(' => "-lrb-",
                    ')' => "-rrb-",
                    '[' => "-lsb-",
                    ']' => "-rsb-",
                    '{' => "-lcb-",
                    '}' => "-rcb-",
                    _ => "",
                }
                .to_string(),
            );
            if out.last().is_some_and(|t| t.is_empty()) {
                *out.last_mut().expect("just pushed") = ch.to_string();
            }
            i += 1;
        }
    }
}

/// Splits clitics off a word and pushes the pieces.
fn push_word(word: String, out: &mut Vec<String>) {
    if word == "cannot" {
        out.push("can".into());
        out.push("not".into());
        return;
    }
    if let Some(stem) = word.strip_suffix("n't").filter(|s| !s.is_empty()) {
        out.push(stem.to_string());
        out.push("n't".into());
        return;
    }
    for cl in CLITICS {
        if let Some(stem) = word.strip_suffix(cl).filter(|s| !s.is_empty()) {
            out.push(stem.to_string());
            out.push(cl.to_string());
            return;
        }
    }
    out.push(word);
}

/// N-gram counts of a token string in the order Python's `precook` inserts them (n = 1..=4,
/// left to right, first occurrence), so sums over them run in the reference's order.
struct Counts {
    /// `(n-gram joined by spaces, n, count)`.
    grams: Vec<(String, usize, usize)>,
    index: HashMap<(usize, String), usize>,
    words: usize,
}

impl Counts {
    fn new(s: &str, max_n: usize) -> Self {
        let words: Vec<&str> = s.split_whitespace().collect();
        let mut c = Counts { grams: Vec::new(), index: HashMap::new(), words: words.len() };
        for k in 1..=max_n {
            for w in words.windows(k) {
                let key = (k, w.join(" "));
                match c.index.get(&key) {
                    Some(&i) => c.grams[i].2 += 1,
                    None => {
                        c.index.insert(key.clone(), c.grams.len());
                        c.grams.push((key.1, k, 1));
                    }
                }
            }
        }
        c
    }

    fn get(&self, n: usize, gram: &str) -> usize {
        self.index.get(&(n, gram.to_string())).map_or(0, |&i| self.grams[i].2)
    }
}

/// BLEU-1..4 of a corpus and of each image (`bleu_list` of the reference code).
#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    pub corpus: [f64; 4],
    pub per_image: Vec<[f64; 4]>,
}

const SMALL: f64 = 1e-9;
const TINY: f64 = 1e-15;

/// `Bleu(4).compute_score` on `candidates[i]` against `references[i]` (token strings).
pub fn bleu(candidates: &[&str], references: &[Vec<&str>]) -> Bleu {
    assert_eq!(candidates.len(), references.len(), "one candidate per image");
    const N: usize = 4;
    let (mut total_test, mut total_ref) = (0usize, 0usize);
    let (mut guess, mut correct) = ([0usize; N], [0usize; N]);
    let mut per_image = Vec::with_capacity(candidates.len());
    for (cand, refs) in candidates.iter().zip(references) {
        let refs: Vec<Counts> = refs.iter().map(|r| Counts::new(r, N)).collect();
        let test = Counts::new(cand, N);
        let testlen = test.words;
        // "closest": min over (|len − testlen|, len), ties to the shorter reference.
        let reflen = refs.iter().map(|r| (r.words.abs_diff(testlen), r.words)).min().map_or(0, |(_, l)| l);
        let mut g = [0usize; N];
        let mut k_correct = [0usize; N];
        for (k, gk) in g.iter_mut().enumerate() {
            *gk = (testlen + 1).saturating_sub(k + 1);
        }
        for (gram, n, count) in &test.grams {
            let max_ref = refs.iter().map(|r| r.get(*n, gram)).max().unwrap_or(0);
            k_correct[n - 1] += max_ref.min(*count);
        }
        total_test += testlen;
        total_ref += reflen;
        for k in 0..N {
            guess[k] += g[k];
            correct[k] += k_correct[k];
        }
        per_image.push(bleu_from(&k_correct, &g, testlen, reflen));
    }
    Bleu { corpus: bleu_from(&correct, &guess, total_test, total_ref), per_image }
}

fn bleu_from(correct: &[usize; 4], guess: &[usize; 4], testlen: usize, reflen: usize) -> [f64; 4] {
    let mut out = [0.0; 4];
    let mut b = 1.0f64;
    for k in 0..4 {
        b *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = b.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        for o in &mut out {
            *o *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// CIDEr-D of a corpus (the mean) and of each image.
#[derive(Clone, Debug, PartialEq)]
pub struct Cider {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// One sentence as `counts2vec` returns it: per n, the TF-IDF weights (in insertion order, with
/// a lookup), the norms, and the bigram count used as its "length".
struct TfIdf {
    vec: [Vec<(String, f64)>; 4],
    index: [HashMap<String, f64>; 4],
    norm: [f64; 4],
    length: usize,
}

/// `Cider().compute_score` (n = 4, σ = 6) on `candidates[i]` against `references[i]`.
pub fn cider_d(candidates: &[&str], references: &[Vec<&str>]) -> Cider {
    assert_eq!(candidates.len(), references.len(), "one candidate per image");
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    let crefs: Vec<Vec<Counts>> = references.iter().map(|rs| rs.iter().map(|r| Counts::new(r, N)).collect()).collect();
    let ctest: Vec<Counts> = candidates.iter().map(|c| Counts::new(c, N)).collect();
    if ctest.is_empty() {
        return Cider { corpus: f64::NAN, per_image: Vec::new() };
    }
    // Document frequency: in how many images' reference sets each n-gram occurs.
    let mut df: HashMap<(usize, &str), f64> = HashMap::new();
    for refs in &crefs {
        let mut seen: std::collections::HashSet<(usize, &str)> = std::collections::HashSet::new();
        for r in refs {
            for (g, n, _) in &r.grams {
                seen.insert((*n, g.as_str()));
            }
        }
        for k in seen {
            *df.entry(k).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (crefs.len() as f64).ln();
    let to_vec = |c: &Counts| -> TfIdf {
        let mut v = TfIdf { vec: Default::default(), index: Default::default(), norm: [0.0; N], length: 0 };
        for (g, n, tf) in &c.grams {
            let d = df.get(&(*n, g.as_str())).copied().unwrap_or(0.0).max(1.0).ln();
            let w = *tf as f64 * (ref_len - d);
            v.vec[n - 1].push((g.clone(), w));
            v.index[n - 1].insert(g.clone(), w);
            v.norm[n - 1] += w.powi(2);
            if *n == 2 {
                v.length += tf;
            }
        }
        for x in &mut v.norm {
            *x = x.sqrt();
        }
        v
    };
    let sim = |h: &TfIdf, r: &TfIdf| -> [f64; N] {
        let delta = h.length as f64 - r.length as f64;
        let mut val = [0.0; N];
        for (n, v) in val.iter_mut().enumerate() {
            for (g, hw) in &h.vec[n] {
                let rw = r.index[n].get(g).copied().unwrap_or(0.0);
                *v += hw.min(rw) * rw;
            }
            if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
                *v /= h.norm[n] * r.norm[n];
            }
            *v *= std::f64::consts::E.powf(-(delta.powi(2)) / (2.0 * SIGMA.powi(2)));
        }
        val
    };
    let mut per_image = Vec::with_capacity(ctest.len());
    for (test, refs) in ctest.iter().zip(&crefs) {
        let h = to_vec(test);
        let mut score = [0.0; N];
        for r in refs {
            let s = sim(&h, &to_vec(r));
            for n in 0..N {
                score[n] += s[n];
            }
        }
        let mut avg = score.iter().sum::<f64>() / N as f64;
        avg /= refs.len() as f64;
        avg *= 10.0;
        per_image.push(avg);
    }
    let corpus = per_image.iter().sum::<f64>() / per_image.len() as f64;
    Cider { corpus, per_image }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> String {
        normalize(s)
    }

    #[test]
    fn ptb_punctuation_is_split_and_dropped() {
        assert_eq!(tok("A frog."), "a frog");
        assert_eq!(tok("An old-fashioned clothespin."), "an old-fashioned clothespin");
        assert_eq!(
            tok("a clip-art drawing of the 4 of spades playing card, filed under recreation, games, cards, ornamental"),
            "a clip-art drawing of the 4 of spades playing card filed under recreation games cards ornamental"
        );
        assert_eq!(tok("This shell is hundreds of years old!"), "this shell is hundreds of years old");
        assert_eq!(tok("\"Hello,\" she said -- twice..."), "hello she said twice");
        assert_eq!(tok("A European coin of 2 euros (2 €)."), "a european coin of 2 euros -lrb- 2 € -rrb-");
        assert_eq!(
            tok("The dog's bone; it doesn't bite: 1,000 times at 10:30"),
            "the dog 's bone it does n't bite 1,000 times at 10:30"
        );
        assert_eq!(tok("It costs $3.50 in the U.S. today"), "it costs $ 3.50 in the u.s. today");
        assert_eq!(tok("Mr. Smith's cats' toys"), "mr. smith 's cats toys");
        assert_eq!(tok("I cannot see\nthe \u{201c}moon\u{201d}\u{2026}"), "i can not see the moon");
        assert_eq!(tok("What? No! - end"), "what no end");
        assert_eq!(tok(""), "");
        assert_eq!(tok("  ...  "), "");
    }

    #[test]
    fn bleu_of_an_exact_match_is_one_and_of_nothing_is_zero() {
        let b = bleu(&["a red apple on a table"], &[vec!["a red apple on a table"]]);
        for x in b.corpus {
            assert!((x - 1.0).abs() < 1e-9, "{x}");
        }
        let b = bleu(&["green"], &[vec!["a red apple"]]);
        assert!(b.corpus[0] < 1e-6);
    }

    #[test]
    fn cider_of_a_single_image_is_zero() {
        // log(1 image) − log(df = 1) = 0: every weight vanishes.
        let c = cider_d(&["a frog"], &[vec!["a frog"]]);
        assert_eq!(c.corpus, 0.0);
    }
}
