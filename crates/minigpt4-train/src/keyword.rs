//! The "main noun" of a reference caption and whether a generated description names it: a
//! coarse, deterministic check that a description is about the right thing, complementary to
//! BLEU and CIDEr (which reward wording).
//!
//! [`main_noun`] takes the head noun of the caption's first noun phrase:
//!
//! 1. lower-case; cut at the first `,` `;` `:` `!` `?` `(` `)` `[` `]` `"`, ` - `, `--` or
//!    sentence period (a `.` followed by a space or the end; `u.s.` and `3.5` stay);
//! 2. drop boilerplate prefixes "<up to 4 words> MEDIUM of", where MEDIUM is a word like
//!    drawing, rendering, photograph, picture, image, illustration ([`MEDIA`]): "a clip-art
//!    drawing of", "a 3D rendering of", "a flat Noto-style drawing of", "a photograph of",
//!    "a simple image of" (repeatedly);
//! 3. keep the words before the first preposition (other than "of"), conjunction, relative
//!    pronoun or auxiliary ([`BOUNDARIES`]: with, from, in, on, for, and, that, is, …);
//! 4. drop a final "emoji" (the emoji sources' boilerplate);
//! 5. split at the first "of" into head and tail ("the flag | of algeria"). In the head, a
//!    participle (a word ending in -ing or -ed, stem of 3+ letters with a vowel) that follows a
//!    noun-like word ends the phrase ("a spider | playing soccer", "a church | building");
//! 6. the main noun is the head's last noun-like word — English compounds are head-final, so
//!    "a chemistry flask" → flask, "a lion face emoji" → face. When the head has none
//!    ("the 4 | of spades playing card") or it is a quantity word like pair, group, kind
//!    ([`PARTITIVES`]: "a pair | of shoes"), the tail's last noun-like word is taken instead
//!    (card, shoes).
//!
//! A word is noun-like when it is made of letters (inner `-` and `'` allowed), has at least two
//! of them, is not a determiner, pronoun, quantifier or number word ([`STOP`]) and is not a
//! participle that follows another noun-like word (step 5). Captions with no noun-like word
//! ("Two.") have no main noun and are left out of the hit rate.
//!
//! [`keyword_hit`]: the description, tokenized like the metrics ([`crate::metrics::tokenize`]),
//! with hyphenated tokens also split into their parts, contains the noun or one of its simple
//! singular/plural forms ([`forms`]: -s, -es, -y/-ies, -f/-ves and a few irregular pairs such as
//! man/men, child/children, mouse/mice).

/// Words that name how an image was made; "… MEDIUM of" prefixes are dropped.
pub const MEDIA: [&str; 17] = [
    "drawing",
    "rendering",
    "render",
    "photograph",
    "photo",
    "picture",
    "image",
    "illustration",
    "cartoon",
    "sketch",
    "painting",
    "clip-art",
    "clipart",
    "icon",
    "silhouette",
    "closeup",
    "close-up",
];

/// Words that end the first noun phrase ("of" is handled on its own).
pub const BOUNDARIES: [&str; 48] = [
    "with", "from", "in", "on", "at", "under", "over", "near", "by", "for", "to", "into", "onto", "inside", "outside",
    "behind", "above", "below", "beside", "between", "against", "without", "during", "like", "about", "around",
    "through", "across", "among", "along", "upon", "and", "or", "but", "that", "which", "who", "whose", "where",
    "while", "is", "are", "was", "were", "has", "have", "can", "will",
];

/// Never a main noun: determiners, pronouns, quantifiers, number words.
pub const STOP: [&str; 52] = [
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "some",
    "any",
    "each",
    "every",
    "another",
    "other",
    "its",
    "it",
    "his",
    "her",
    "their",
    "my",
    "our",
    "your",
    "no",
    "many",
    "several",
    "few",
    "all",
    "both",
    "there",
    "here",
    "what",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "hundred",
    "hundreds",
    "thousand",
    "thousands",
    "dozen",
    "first",
    "second",
    "third",
    "very",
    "more",
];

/// Head words that only measure what follows "of": "a pair of shoes" → shoes.
pub const PARTITIVES: [&str; 18] = [
    "pair",
    "group",
    "bunch",
    "set",
    "kind",
    "sort",
    "type",
    "couple",
    "piece",
    "slice",
    "handful",
    "stack",
    "pile",
    "herd",
    "flock",
    "collection",
    "lot",
    "lots",
];

/// Irregular singular/plural pairs accepted by [`forms`].
const IRREGULAR: [(&str, &str); 9] = [
    ("man", "men"),
    ("woman", "women"),
    ("child", "children"),
    ("person", "people"),
    ("mouse", "mice"),
    ("goose", "geese"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("ox", "oxen"),
];

fn is_participle(w: &str) -> bool {
    let stem = w.strip_suffix("ing").or_else(|| w.strip_suffix("ed"));
    stem.is_some_and(|s| s.chars().count() >= 3 && s.chars().any(|c| "aeiouy".contains(c)))
}

fn is_wordlike(w: &str) -> bool {
    let letters = w.chars().filter(|c| c.is_alphabetic()).count();
    letters >= 2
        && w.chars().all(|c| c.is_alphabetic() || c == '-' || c == '\'')
        && w.chars().next().is_some_and(char::is_alphabetic)
        && !STOP.contains(&w)
}

/// Lower-cased caption text up to its first clause break (step 1).
fn first_clause(caption: &str) -> String {
    let text: String = caption
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' => '\'',
            '\u{201c}' | '\u{201d}' => '"',
            '\u{2013}' | '\u{2014}' => '-',
            c => c,
        })
        .collect();
    let chars: Vec<char> = text.chars().collect();
    let mut end = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let prev = if i > 0 { Some(chars[i - 1]) } else { None };
        let stop = match c {
            ',' | ';' | ':' | '!' | '?' | '(' | ')' | '[' | ']' | '"' | '\u{2026}' => true,
            '.' => next.is_none_or(char::is_whitespace),
            '-' => next == Some('-') || (prev.is_none_or(char::is_whitespace) && next.is_none_or(char::is_whitespace)),
            _ => false,
        };
        if stop {
            end = i;
            break;
        }
    }
    chars[..end].iter().collect()
}

/// The caption's main noun (see the module docs), lower-case; `None` when it has none.
pub fn main_noun(caption: &str) -> Option<String> {
    let clause = first_clause(caption);
    let mut words: Vec<&str> = clause
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .collect();
    // Step 2: "<≤4 words> MEDIUM of" prefixes.
    loop {
        let found = (0..words.len().min(5)).find(|&m| {
            MEDIA.contains(&words[m])
                && words.get(m + 1) == Some(&"of")
                && words[..m].iter().all(|w| *w != "of" && !BOUNDARIES.contains(w))
        });
        match found {
            Some(m) => words.drain(..m + 2),
            None => break,
        };
    }
    // Step 3.
    if let Some(b) = words.iter().position(|w| BOUNDARIES.contains(w)) {
        words.truncate(b);
    }
    // Step 4.
    if words.len() > 1 && matches!(words.last(), Some(&"emoji" | &"emojis")) {
        words.pop();
    }
    // Step 5.
    let (mut head, tail) = match words.iter().position(|w| *w == "of") {
        Some(o) => (words[..o].to_vec(), words[o + 1..].iter().take_while(|w| **w != "of").copied().collect()),
        None => (words.clone(), Vec::new()),
    };
    let mut seen_noun = false;
    for (i, w) in head.iter().enumerate() {
        if is_participle(w) && seen_noun {
            head.truncate(i);
            break;
        }
        if is_wordlike(w) && !is_participle(w) {
            seen_noun = true;
        }
    }
    // Step 6.
    let last = |ws: &[&str]| ws.iter().rev().find(|w| is_wordlike(w)).map(|w| w.to_string());
    match last(&head) {
        Some(n) if !(PARTITIVES.contains(&n.as_str()) && last(&tail).is_some()) => Some(n),
        _ => last(&tail),
    }
}

/// The noun and its simple singular/plural variants.
pub fn forms(noun: &str) -> Vec<String> {
    let mut v = vec![noun.to_string()];
    let mut add = |s: String| {
        if !s.is_empty() && !v.contains(&s) {
            v.push(s);
        }
    };
    let consonant_y =
        noun.len() >= 2 && noun.ends_with('y') && !noun[..noun.len() - 1].ends_with(|c: char| "aeiou".contains(c));
    // Plurals.
    if consonant_y {
        add(format!("{}ies", &noun[..noun.len() - 1]));
    }
    if ["s", "x", "z", "ch", "sh", "o"].iter().any(|e| noun.ends_with(e)) {
        add(format!("{noun}es"));
    }
    if let Some(s) = noun.strip_suffix("fe") {
        add(format!("{s}ves"));
    } else if let Some(s) = noun.strip_suffix('f') {
        add(format!("{s}ves"));
    }
    add(format!("{noun}s"));
    // Singulars.
    if let Some(s) = noun.strip_suffix("ies") {
        add(format!("{s}y"));
    }
    if let Some(s) = noun.strip_suffix("ves") {
        add(format!("{s}f"));
        add(format!("{s}fe"));
    }
    if let Some(s) = noun.strip_suffix("es") {
        add(s.to_string());
    }
    if let Some(s) = noun.strip_suffix('s').filter(|_| !noun.ends_with("ss")) {
        add(s.to_string());
    }
    for (sg, pl) in IRREGULAR {
        if noun == sg {
            add(pl.to_string());
        }
        if noun == pl {
            add(sg.to_string());
        }
    }
    v
}

/// Whether `description` names `noun` (see the module docs).
pub fn keyword_hit(noun: &str, description: &str) -> bool {
    let forms = forms(noun);
    crate::metrics::tokenize(description).iter().any(|t| {
        forms.iter().any(|f| f == t) || (t.contains('-') && t.split('-').any(|p| forms.iter().any(|f| f == p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noun(c: &str) -> Option<String> {
        main_noun(c)
    }

    #[test]
    fn main_nouns_of_real_captions() {
        let cases = [
            // openclipart
            ("a clip-art drawing of the 4 of spades playing card, filed under recreation, games, cards, ornamental", "card"),
            ("a clip-art drawing of a chemistry flask, filed under science", "flask"),
            ("a clip-art drawing of a bored dog, filed under animals, mammals, dogs", "dog"),
            ("a clip-art drawing of the flag of algeria, filed under signs and symbols, flags, africa", "flag"),
            ("a clip-art drawing of a 67-pointed star, filed under shapes, stars", "star"),
            ("a clip-art drawing of a capsized sailing illustration, filed under transportation, boating", "illustration"),
            ("a clip-art drawing of a church building, filed under buildings", "church"),
            ("a clip-art drawing of 70 a icon, filed under computer, icons", "icon"),
            // tuxpaint
            ("A frog.", "frog"),
            ("An old-fashioned clothespin.", "clothespin"),
            ("A spiny lobster, from the Hawaiian islands.", "lobster"),
            ("A spider playing soccer.", "spider"),
            ("A glass of water.", "glass"),
            ("A box for trash that can be recycled.", "box"),
            ("This shell is hundreds of years old!", "shell"),
            ("A man in a suit.", "man"),
            ("The sign for the letter N in American Sign Language.", "sign"),
            ("The letter s.", "letter"),
            ("A European coin of 2 euros (2 €).", "coin"),
            ("The Eiffel tower in Paris.", "tower"),
            // emoji
            ("a 3D rendering of a lion face emoji, from the animals and nature category", "face"),
            ("a 3D rendering of a grinning face emoji, from the smileys and emotion category", "face"),
            ("a 3D rendering of a flag of Georgia emoji, from the flags category", "flag"),
            ("a flat Noto-style drawing of a father christmas emoji with medium skin tone, from the people and body category", "christmas"),
            // easy-vqa
            ("a simple image of a blue triangle", "triangle"),
            // gcompris
            ("a photograph of the Bent Pyramid", "pyramid"),
            ("a photograph of the Great Pyramid of Giza", "pyramid"),
            ("a photograph of solar panels", "panels"),
            ("a photograph of the sea floor, seen underwater", "floor"),
            ("a photograph illustrating the music of Scotland and Ireland", "photograph"),
            // partitives
            ("A pair of red shoes.", "shoes"),
        ];
        for (caption, want) in cases {
            assert_eq!(noun(caption).as_deref(), Some(want), "{caption}");
        }
        assert_eq!(noun("Two."), None);
        assert_eq!(noun(""), None);
        assert_eq!(noun("a photograph of 42"), None);
    }

    #[test]
    fn plural_and_singular_forms_hit() {
        assert!(keyword_hit("frog", "Two green frogs on a leaf."));
        assert!(keyword_hit("card", "A playing card: the four of spades"));
        assert!(keyword_hit("panels", "a solar panel on a roof"));
        assert!(keyword_hit("box", "several boxes"));
        assert!(keyword_hit("butterfly", "butterflies in a field"));
        assert!(keyword_hit("leaf", "autumn leaves"));
        assert!(keyword_hit("man", "two men talking"));
        assert!(keyword_hit("face", "a lion-face sticker"));
        assert!(keyword_hit("pyramid", "The Pyramid."));
        assert!(!keyword_hit("frog", "a toad"));
        assert!(!keyword_hit("cat", "a catalogue of concatenated things"));
        assert!(!keyword_hit("glass", "a glas"));
        assert!(!keyword_hit("card", ""));
    }
}
