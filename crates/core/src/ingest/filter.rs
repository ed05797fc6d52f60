//! The sensitive-word filter: Aho–Corasick over a word list, ASCII case-insensitive, leftmost
//! longest match; finds or masks every listed word or phrase in one pass over the text.
//!
//! It matches substrings as written: it does not see through spacing or look-alike characters,
//! and a listed word inside a longer word matches too.

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

pub struct WordFilter {
    matcher: Option<AhoCorasick>,
    words: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot read word list {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build the word filter: {0}")]
    Build(String),
}

impl WordFilter {
    pub fn empty() -> Self {
        WordFilter {
            matcher: None,
            words: 0,
        }
    }

    /// One word or phrase per line; blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Self, FilterError> {
        let text = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_words(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
    }

    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Self, FilterError> {
        let words: Vec<&str> = words.into_iter().filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            return Ok(Self::empty());
        }
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&words)
            .map_err(|e| FilterError::Build(e.to_string()))?;
        Ok(WordFilter {
            matcher: Some(matcher),
            words: words.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.words
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    pub fn contains_match(&self, text: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(text))
    }

    /// The text with every character of every match replaced by `*`, or `None` when nothing
    /// matched.
    pub fn mask(&self, text: &str) -> Option<String> {
        let m = self.matcher.as_ref()?;
        let mut out = String::new();
        let mut last = 0;
        let mut matched = false;
        for found in m.find_iter(text) {
            matched = true;
            out.push_str(&text[last..found.start()]);
            out.extend(text[found.start()..found.end()].chars().map(|_| '*'));
            last = found.end();
        }
        if !matched {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_masks_case_insensitively() {
        let f = WordFilter::from_words(["badword", "very bad", "坏话"]).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.contains_match("this is a BadWord!"));
        assert!(!f.contains_match("all fine"));
        assert_eq!(
            f.mask("a BADWORD and very bad 坏话").unwrap(),
            "a ******* and ******** **"
        );
        assert_eq!(f.mask("clean"), None);
    }

    #[test]
    fn reads_a_word_file() {
        let dir = std::env::temp_dir().join(format!("roomcast-words-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("words.txt");
        std::fs::write(&p, "# comment\n\nspam\n  scam  \n").unwrap();
        let f = WordFilter::from_file(&p).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.contains_match("a SCAM"));
        assert!(WordFilter::from_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
