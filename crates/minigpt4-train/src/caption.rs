//! Stage-1 caption processing, as LAVIS's `BlipCaptionProcessor.pre_caption` does it:
//! lower-case, `[.!"()*#:;~]` → space, runs of two or more whitespace characters → one space,
//! trailing newlines and surrounding spaces stripped, at most `max_words` words (split on single
//! spaces). The training text is then the caption plus `\n` (MiniGPT-4's stage-1 `end_sym`),
//! truncated to 32 tokens after tokenizing.

/// LAVIS's default word limit for captions.
pub const MAX_WORDS: usize = 50;

/// Text the stage-1 target ends with (the reference's `end_sym`).
pub const STAGE1_END: &str = "\n";

/// `pre_caption(caption, max_words)` of LAVIS.
pub fn pre_caption(caption: &str, max_words: usize) -> String {
    // re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    let lowered: String = caption
        .to_lowercase()
        .chars()
        .map(|c| if matches!(c, '.' | '!' | '"' | '(' | ')' | '*' | '#' | ':' | ';' | '~') { ' ' } else { c })
        .collect();
    // re.sub(r"\s{2,}", " ", caption): only runs of two or more change; a lone \t or \n stays.
    let mut collapsed = String::with_capacity(lowered.len());
    let chars: Vec<char> = lowered.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j - i >= 2 {
                collapsed.push(' ');
            } else {
                collapsed.push(chars[i]);
            }
            i = j;
        } else {
            collapsed.push(chars[i]);
            i += 1;
        }
    }
    // caption.rstrip("\n").strip(" ")
    let stripped = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = stripped.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        stripped.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_and_replaces_punctuation() {
        assert_eq!(pre_caption("A Cat: sitting (on) a *mat*!", 50), "a cat sitting on a mat");
        assert_eq!(pre_caption("\"Quoted\" #tag ~wave; done.", 50), "quoted tag wave done");
    }

    #[test]
    fn keeps_other_punctuation() {
        // Commas, apostrophes, hyphens and question marks are not in the class.
        assert_eq!(pre_caption("It's a well-known dog, isn't it?", 50), "it's a well-known dog, isn't it?");
    }

    #[test]
    fn collapses_only_runs_of_whitespace() {
        assert_eq!(pre_caption("a  b   c", 50), "a b c");
        // A single tab or newline inside the text is left alone, as in Python's re.sub(r"\s{2,}").
        assert_eq!(pre_caption("a\tb", 50), "a\tb");
        assert_eq!(pre_caption("a\nb\n", 50), "a\nb");
        assert_eq!(pre_caption("a \n b", 50), "a b");
    }

    #[test]
    fn strips_edges() {
        assert_eq!(pre_caption("  hello world.  ", 50), "hello world");
        assert_eq!(pre_caption("...", 50), "");
    }

    #[test]
    fn limits_words() {
        let long: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        let out = pre_caption(&long.join(" "), 50);
        assert_eq!(out.split(' ').count(), 50);
        assert!(out.ends_with("w49"));
        assert_eq!(pre_caption("one two three", 2), "one two");
    }

    #[test]
    fn unicode_lowercase() {
        assert_eq!(pre_caption("ÉLAN Über", 50), "élan über");
    }
}
