//! T5-style tokenizers (the tokenizers crate): training a Unigram tokenizer on text for
//! `make-model` — T5's special ids (pad 0, eos 1, unk 2) and 100 sentinels — and loading one.

// Training a tokenizer and reading tokens back are for the model stages (the `torch` feature).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::Path;

use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::unicode::NFKC;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::StageError;

/// T5's padding token (id 0).
pub const PAD: &str = "<pad>";
/// T5's end-of-sequence token (id 1).
pub const EOS: &str = "</s>";
/// T5's unknown token (id 2).
pub const UNK: &str = "<unk>";
/// Number of `<extra_id_N>` sentinels.
pub const SENTINELS: usize = 100;

fn tk_err(what: &str, source: impl Into<tokenizers::Error>) -> StageError {
    StageError::Tokenizer { context: what.to_string(), source: source.into() }
}

/// Trains a Unigram tokenizer with `vocab_size` pieces (special tokens included) on `texts`;
/// the sentinels `<extra_id_99>` … `<extra_id_0>` follow, as in T5's vocabulary.
pub fn train(texts: &[String], vocab_size: u32) -> Result<Tokenizer, StageError> {
    let specials: Vec<AddedToken> = [PAD, EOS, UNK].iter().map(|t| AddedToken::from(*t, true)).collect();
    let trainer = UnigramTrainer::builder()
        .vocab_size(vocab_size)
        .special_tokens(specials)
        .unk_token(Some(UNK.to_string()))
        .show_progress(false)
        .build()
        .map_err(|e| tk_err("unigram trainer", e))?;
    let mut tokenizer = Tokenizer::new(Unigram::default());
    tokenizer
        .with_normalizer(Some(NFKC))
        .with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)))
        .with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    tokenizer.train(&mut trainer, texts.iter()).map_err(|e| tk_err("training the tokenizer", e))?;
    let eos_id = tokenizer.token_to_id(EOS).ok_or_else(|| tk_err("tokenizer", "no </s> after training"))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {EOS}"))
        .and_then(|b| b.try_pair(format!("$A {EOS} $B {EOS}")))
        .map_err(|e| tk_err("post-processor", e))?
        .special_tokens(vec![(EOS, eos_id)])
        .build()
        .map_err(|e| tk_err("post-processor", e))?;
    tokenizer.with_post_processor(Some(post));
    let sentinels: Vec<AddedToken> =
        (0..SENTINELS).rev().map(|i| AddedToken::from(format!("<extra_id_{i}>"), true)).collect();
    tokenizer.add_special_tokens(&sentinels);
    Ok(tokenizer)
}

/// Loads `tokenizer.json`, which must have a vocabulary.
pub fn load(path: &Path) -> Result<Tokenizer, StageError> {
    let t = Tokenizer::from_file(path)
        .map_err(|source| StageError::Tokenizer { context: path.display().to_string(), source })?;
    if t.get_vocab_size(true) == 0 {
        return Err(StageError::data(path.display().to_string(), "the tokenizer has no vocabulary"));
    }
    Ok(t)
}

/// Writes `tokenizer.json`.
pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<(), StageError> {
    tokenizer.save(path, false).map_err(|source| StageError::Tokenizer { context: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_has_t5_special_ids_and_appends_eos() {
        let texts: Vec<String> = (0..200)
            .map(|i| {
                format!("#Person1#: Hello, how are you doing today number {i}? #Person2#: I'm fine, thanks for asking.")
            })
            .collect();
        let t = train(&texts, 300).unwrap();
        assert_eq!([t.token_to_id(PAD), t.token_to_id(EOS), t.token_to_id(UNK)], [Some(0), Some(1), Some(2)]);
        let last = t.get_vocab_size(true) as u32 - 1;
        assert_eq!(t.token_to_id("<extra_id_0>"), Some(last));
        assert_eq!(t.token_to_id("<extra_id_99>"), Some(last - 99));
        let enc = t.encode("Hello, how are you?", true).unwrap();
        assert_eq!(*enc.get_ids().last().unwrap(), 1);
        assert_eq!(t.decode(enc.get_ids(), true).unwrap(), "Hello, how are you?");
    }
}
