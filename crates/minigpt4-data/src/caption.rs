//! Small text rules shared by the importers: names to words, articles, tidy sentences.

/// Turns a file or resource name into words: the extension is dropped, `_`, `-`, `.` and
/// camelCase boundaries become spaces, runs of spaces collapse, and the result is lower-case.
/// `"screwDriver2"` → `"screw driver 2"`, `"northern_harrier.webp"` → `"northern harrier"`.
pub fn words(name: &str) -> String {
    let stem = match name.rsplit_once('.') {
        Some((s, ext)) if !s.is_empty() && ext.len() <= 4 && ext.chars().all(|c| c.is_ascii_alphanumeric()) => s,
        _ => name,
    };
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in stem.chars() {
        if matches!(c, '_' | '-' | '.' | '+' | ' ') {
            out.push(' ');
        } else {
            if let Some(p) = prev {
                let camel = p.is_lowercase() && c.is_uppercase();
                let digit = (p.is_alphabetic() && c.is_ascii_digit()) || (p.is_ascii_digit() && c.is_alphabetic());
                if camel || digit {
                    out.push(' ');
                }
            }
            out.extend(c.to_lowercase());
        }
        prev = Some(c);
    }
    squash(&out)
}

/// Collapses whitespace runs to single spaces and trims.
pub fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Drops trailing number words (`"scissors 2"` → `"scissors"`), keeping at least one word.
pub fn strip_numbering(s: &str) -> String {
    let mut w: Vec<&str> = s.split_whitespace().collect();
    while w.len() > 1 && w.last().is_some_and(|t| t.chars().all(|c| c.is_ascii_digit())) {
        w.pop();
    }
    w.join(" ")
}

/// Puts "a" or "an" before a noun phrase unless it already has a determiner, is a number, or
/// looks plural. `"bored dog"` → `"a bored dog"`, `"apple"` → `"an apple"`, `"clouds"` → `"clouds"`.
pub fn with_article(phrase: &str) -> String {
    let p = phrase.trim();
    let first = p.split_whitespace().next().unwrap_or("").to_lowercase();
    let last = p.split_whitespace().last().unwrap_or("").to_lowercase();
    const DET: &[&str] = &[
        "a", "an", "the", "some", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many",
        "several", "this", "that", "these", "those", "my", "his", "her", "our", "their", "its", "no",
    ];
    if p.is_empty() || DET.contains(&first.as_str()) || first.starts_with(|c: char| c.is_ascii_digit()) {
        return p.to_string();
    }
    let plural = last.len() > 3
        && last.ends_with('s')
        && !["ss", "us", "is", "ys"].iter().any(|e| last.ends_with(e))
        && !["bus", "gas", "lens", "chess", "species", "series", "news", "rhinoceros", "cactus", "iris"]
            .contains(&last.as_str());
    if plural {
        return p.to_string();
    }
    format!("{} {p}", article(&first))
}

/// "a" or "an" for a word, by its sound as far as spelling tells.
pub fn article(word: &str) -> &'static str {
    let w = word.to_lowercase();
    let an_exceptions = ["hour", "honest", "honor", "honour", "heir"];
    let a_exceptions = ["uni", "use", "usu", "uti", "eu", "one", "once", "ure", "uro", "ewe"];
    if an_exceptions.iter().any(|e| w.starts_with(e)) {
        return "an";
    }
    if a_exceptions.iter().any(|e| w.starts_with(e)) {
        return "a";
    }
    if w.len() == 1 && "aefhilmnorsx".contains(&w) {
        return "an"; // letters said with a vowel sound: "an x"
    }
    if w.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Upper-cases the first letter and ends with a full stop unless it ends with `.`, `!` or `?`.
pub fn sentence(s: &str) -> String {
    let s = squash(s);
    let mut c = s.chars();
    let mut out = match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => return s,
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_from_names() {
        assert_eq!(words("screwDriver2"), "screw driver 2");
        assert_eq!(words("northern_harrier.webp"), "northern harrier");
        assert_eq!(words("IndiaGate.webp"), "india gate");
        assert_eq!(words("greatPyramidOfGiza.webp"), "great pyramid of giza");
        assert_eq!(words("measuring_tape"), "measuring tape");
        assert_eq!(strip_numbering(&words("scissors4")), "scissors");
    }

    #[test]
    fn articles() {
        assert_eq!(with_article("bored dog"), "a bored dog");
        assert_eq!(with_article("apple"), "an apple");
        assert_eq!(with_article("clouds"), "clouds");
        assert_eq!(with_article("glass"), "a glass");
        assert_eq!(with_article("bus"), "a bus");
        assert_eq!(with_article("unicorn"), "a unicorn");
        assert_eq!(with_article("hour glass"), "an hour glass");
        assert_eq!(with_article("the moon"), "the moon");
        assert_eq!(with_article("3 apples"), "3 apples");
    }

    #[test]
    fn sentences() {
        assert_eq!(sentence("a cat"), "A cat.");
        assert_eq!(sentence("Really?"), "Really?");
    }
}
