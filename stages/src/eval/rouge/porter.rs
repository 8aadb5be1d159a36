//! NLTK's Porter stemmer (`nltk.stem.PorterStemmer()`, default `NLTK_EXTENSIONS` mode), ported
//! rule for rule from `nltk/stem/porter.py` (3.x) so that stems match it exactly — ROUGE's
//! `use_stemmer` depends on it. Method names follow the Python ones.

type Word = Vec<char>;

const VOWELS: [char; 5] = ['a', 'e', 'i', 'o', 'u'];

fn is_vowel(c: char) -> bool {
    VOWELS.contains(&c)
}

/// NLTK's irregular forms: word → stem, checked before any rule.
const IRREGULAR: [(&str, &[&str]); 12] = [
    ("sky", &["sky", "skies"]),
    ("die", &["dying"]),
    ("lie", &["lying"]),
    ("tie", &["tying"]),
    ("news", &["news"]),
    ("inning", &["innings", "inning"]),
    ("outing", &["outings", "outing"]),
    ("canning", &["cannings", "canning"]),
    ("howe", &["howe"]),
    ("proceed", &["proceed"]),
    ("exceed", &["exceed"]),
    ("succeed", &["succeed"]),
];

/// Stems `word` exactly as `nltk.stem.PorterStemmer().stem(word)` does.
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((stem, _)) = IRREGULAR.iter().find(|(_, forms)| forms.contains(&lower.as_str())) {
        return stem.to_string();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Word = lower.chars().collect();
    w = step1a(&w);
    w = step1b(&w);
    w = step1c(&w);
    w = step2(&w);
    w = step3(&w);
    w = step4(&w);
    w = step5a(&w);
    w = step5b(&w);
    w.into_iter().collect()
}

fn is_consonant(word: &[char], mut i: usize) -> bool {
    if is_vowel(word[i]) {
        return false;
    }
    if word[i] == 'y' {
        let mut negate = false;
        while i > 0 && word[i] == 'y' {
            negate = !negate;
            i -= 1;
        }
        // Python: `(word[i] not in self.vowels) != negate`
        return is_vowel(word[i]) == negate;
    }
    true
}

fn consonant_flags(word: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(word.len());
    for (i, &ch) in word.iter().enumerate() {
        let flag = if is_vowel(ch) {
            false
        } else if ch == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(flag);
    }
    flags
}

/// Porter's m: the number of vowel-consonant sequences.
fn measure(stem: &[char]) -> usize {
    let flags = consonant_flags(stem);
    flags.windows(2).filter(|w| !w[0] && w[1]).count()
}

fn has_positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn contains_vowel(stem: &[char]) -> bool {
    !consonant_flags(stem).iter().all(|&c| c)
}

fn ends_double_consonant(word: &[char]) -> bool {
    let n = word.len();
    n >= 2 && word[n - 1] == word[n - 2] && is_consonant(word, n - 1)
}

fn ends_cvc(word: &[char]) -> bool {
    let n = word.len();
    (n >= 3
        && is_consonant(word, n - 3)
        && !is_consonant(word, n - 2)
        && is_consonant(word, n - 1)
        && !matches!(word[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(word, 0) && is_consonant(word, 1))
}

fn ends_with(word: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    word.len() >= n && word[word.len() - n..].iter().copied().eq(suffix.chars())
}

fn strip(word: &[char], suffix: &str) -> Word {
    word[..word.len() - suffix.chars().count()].to_vec()
}

fn with(mut stem: Word, replacement: &str) -> Word {
    stem.extend(replacement.chars());
    stem
}

/// A rule's condition on the stem left after removing the suffix.
type Condition<'a> = Option<&'a dyn Fn(&[char]) -> bool>;

/// A rule: (suffix, replacement, condition). Suffix `*d` means "ends in a double consonant".
type Rule<'a> = (&'a str, String, Condition<'a>);

/// The first rule whose suffix matches decides: it applies if its condition holds, else the
/// word is returned unchanged.
fn apply_rule_list(word: &[char], rules: &[Rule]) -> Word {
    for (suffix, replacement, condition) in rules {
        if *suffix == "*d" && ends_double_consonant(word) {
            let stem = word[..word.len() - 2].to_vec();
            return if condition.is_none_or(|c| c(&stem)) { with(stem, replacement) } else { word.to_vec() };
        }
        if ends_with(word, suffix) {
            let stem = strip(word, suffix);
            return if condition.is_none_or(|c| c(&stem)) { with(stem, replacement) } else { word.to_vec() };
        }
    }
    word.to_vec()
}

fn rules<'a>(list: &[(&'a str, &str, Condition<'a>)]) -> Vec<Rule<'a>> {
    list.iter().map(|(s, r, c)| (*s, r.to_string(), *c)).collect()
}

fn step1a(word: &[char]) -> Word {
    if ends_with(word, "ies") && word.len() == 4 {
        return with(strip(word, "ies"), "ie");
    }
    apply_rule_list(word, &rules(&[("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)]))
}

fn step1b(word: &[char]) -> Word {
    if ends_with(word, "ied") {
        let replacement = if word.len() == 4 { "ie" } else { "i" };
        return with(strip(word, "ied"), replacement);
    }
    if ends_with(word, "eed") {
        let stem = strip(word, "eed");
        return if measure(&stem) > 0 { with(stem, "ee") } else { word.to_vec() };
    }
    let mut intermediate = None;
    for suffix in ["ed", "ing"] {
        if ends_with(word, suffix) {
            let stem = strip(word, suffix);
            if contains_vowel(&stem) {
                intermediate = Some(stem);
                break;
            }
        }
    }
    let Some(stem) = intermediate else {
        return word.to_vec();
    };
    // Python reads `intermediate_stem[-1]`, which fails on an empty stem; a stem with a vowel
    // is never empty, so `last` always exists.
    let last = *stem.last().expect("a stem with a vowel is not empty");
    let not_lsz = move |_: &[char]| !matches!(last, 'l' | 's' | 'z');
    let add_e = |s: &[char]| measure(s) == 1 && ends_cvc(s);
    apply_rule_list(
        &stem,
        &[
            ("at", "ate".into(), None),
            ("bl", "ble".into(), None),
            ("iz", "ize".into(), None),
            ("*d", last.to_string(), Some(&not_lsz)),
            ("", "e".into(), Some(&add_e)),
        ],
    )
}

fn step1c(word: &[char]) -> Word {
    let nltk_condition = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rule_list(word, &rules(&[("y", "i", Some(&nltk_condition))]))
}

fn step2(word: &[char]) -> Word {
    if ends_with(word, "alli") && has_positive_measure(&strip(word, "alli")) {
        return step2(&with(strip(word, "alli"), "al"));
    }
    let m: Condition = Some(&has_positive_measure);
    let logi = |_: &[char]| has_positive_measure(&word[..word.len() - 3]);
    apply_rule_list(
        word,
        &rules(&[
            ("ational", "ate", m),
            ("tional", "tion", m),
            ("enci", "ence", m),
            ("anci", "ance", m),
            ("izer", "ize", m),
            ("bli", "ble", m),
            ("alli", "al", m),
            ("entli", "ent", m),
            ("eli", "e", m),
            ("ousli", "ous", m),
            ("ization", "ize", m),
            ("ation", "ate", m),
            ("ator", "ate", m),
            ("alism", "al", m),
            ("iveness", "ive", m),
            ("fulness", "ful", m),
            ("ousness", "ous", m),
            ("aliti", "al", m),
            ("iviti", "ive", m),
            ("biliti", "ble", m),
            ("fulli", "ful", m),
            ("logi", "log", Some(&logi)),
        ]),
    )
}

fn step3(word: &[char]) -> Word {
    let m: Condition = Some(&has_positive_measure);
    apply_rule_list(
        word,
        &rules(&[
            ("icate", "ic", m),
            ("ative", "", m),
            ("alize", "al", m),
            ("iciti", "ic", m),
            ("ical", "ic", m),
            ("ful", "", m),
            ("ness", "", m),
        ]),
    )
}

fn step4(word: &[char]) -> Word {
    let gt1 = |stem: &[char]| measure(stem) > 1;
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    let m: Condition = Some(&gt1);
    apply_rule_list(
        word,
        &rules(&[
            ("al", "", m),
            ("ance", "", m),
            ("ence", "", m),
            ("er", "", m),
            ("ic", "", m),
            ("able", "", m),
            ("ible", "", m),
            ("ant", "", m),
            ("ement", "", m),
            ("ment", "", m),
            ("ent", "", m),
            ("ion", "", Some(&ion)),
            ("ou", "", m),
            ("ism", "", m),
            ("ate", "", m),
            ("iti", "", m),
            ("ous", "", m),
            ("ive", "", m),
            ("ize", "", m),
        ]),
    )
}

fn step5a(word: &[char]) -> Word {
    if ends_with(word, "e") {
        let stem = strip(word, "e");
        if measure(&stem) > 1 || (measure(&stem) == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    word.to_vec()
}

fn step5b(word: &[char]) -> Word {
    let cond = |_: &[char]| measure(&word[..word.len() - 1]) > 1;
    apply_rule_list(word, &rules(&[("ll", "l", Some(&cond))]))
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn classic_porter_examples() {
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("controlling", "control"),
            ("upgrade", "upgrad"),
            ("software", "softwar"),
        ];
        for (word, expected) in cases {
            assert_eq!(stem(word), expected, "stem({word})");
        }
    }
}
