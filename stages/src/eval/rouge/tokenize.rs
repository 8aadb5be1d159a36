//! rouge_score's default tokenizer: lowercase, every run of characters other than `a-z0-9`
//! becomes a space, split on whitespace, Porter-stem tokens longer than 3 characters.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::porter;

/// Tokenizes like `rouge_score.tokenizers.DefaultTokenizer(use_stemmer)`, memoizing stems.
#[derive(Clone, Default)]
pub struct Tokenizer {
    use_stemmer: bool,
    stems: Arc<RwLock<HashMap<String, String>>>,
}

impl Tokenizer {
    /// A tokenizer that stems (`use_stemmer=True`) or not.
    pub fn new(use_stemmer: bool) -> Self {
        Tokenizer { use_stemmer, stems: Arc::default() }
    }

    /// The tokens of `text`.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        // After lowercasing, anything outside a-z0-9 separates tokens (non-ASCII letters too).
        lower
            .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
            .filter(|t| !t.is_empty())
            .map(|t| if self.use_stemmer && t.len() > 3 { self.stem(t) } else { t.to_string() })
            // rouge_score drops tokens that are not `^[a-z0-9]+$` after stemming.
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
            .collect()
    }

    fn stem(&self, token: &str) -> String {
        if let Some(s) = self.stems.read().expect("stem cache poisoned").get(token) {
            return s.clone();
        }
        let s = porter::stem(token);
        self.stems.write().expect("stem cache poisoned").insert(token.to_string(), s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_rouge_score() {
        let t = Tokenizer::new(false);
        assert_eq!(
            t.tokenize("#Person1# teaches #Person2#'s system."),
            ["person1", "teaches", "person2", "s", "system"]
        );
        assert_eq!(t.tokenize("Ünïcode—dash\r\nnew"), ["n", "code", "dash", "new"]);
        assert!(t.tokenize("  !!! ").is_empty());
    }

    #[test]
    fn stems_only_long_tokens() {
        let t = Tokenizer::new(true);
        assert_eq!(t.tokenize("The cats are running fast"), ["the", "cat", "are", "run", "fast"]);
        assert_eq!(t.tokenize("was has"), ["was", "has"]);
    }
}
