//! Parity with the Python reference implementations on real data: ROUGE against
//! `rouge_score` 0.1.2 on every pair of the lab's results file, and the Porter stemmer against
//! NLTK on every distinct token of DialogSum. Python is the workspace's `.venv` (the test command
//! builds it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::data::load::read_table;
use crate::eval::rouge::tokenize::Tokenizer;
use crate::eval::rouge::{porter, RougeScorer, RougeType};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn data(rel: &str) -> PathBuf {
    root().join("../shared/data").join(rel)
}

fn python(script: &str, args: &[&Path]) -> String {
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root().join("python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): build the venv with `make test`", python.display()));
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rouge_matches_rouge_score_on_all_4500_lab_pairs() {
    let path = data("lab-results/dialogue-summary-training-results.csv");
    let models = ["original_model_summaries", "instruct_model_summaries", "peft_model_summaries"];
    let mut args: Vec<&Path> = vec![&path, Path::new("human_baseline_summaries")];
    args.extend(models.iter().map(Path::new));
    let expected = python("rouge_reference.py", &args);

    let table = read_table(&path, None).unwrap();
    let refs = table.column("human_baseline_summaries", "lab").unwrap();
    let scorer = RougeScorer::new(&RougeType::ALL, true);
    let mut checked = 0;
    for line in expected.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let model = v["model"].as_str().unwrap();
        let row = v["row"].as_u64().unwrap() as usize;
        let preds = table.column(model, "lab").unwrap();
        let got = scorer.score(&refs[row], &preds[row]);
        for (t, s) in RougeType::ALL.iter().zip(&got) {
            let want = v[t.name()].as_f64().unwrap();
            assert!(s.fmeasure == want, "{model} row {row} {}: {} vs python {want}", t.name(), s.fmeasure);
        }
        checked += 1;
    }
    assert_eq!(checked, 4500);
}

#[test]
fn porter_matches_nltk_on_every_dialogsum_token() {
    let files: Vec<PathBuf> =
        ["train", "validation", "test"].iter().map(|s| data(&format!("dialogsum/{s}.csv"))).collect();
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let expected = python("porter_reference.py", &args);

    // The same token set, found independently by sumflow's tokenizer.
    let tokenizer = Tokenizer::new(false);
    let mut ours = BTreeSet::new();
    for f in &files {
        let table = read_table(f, None).unwrap();
        for col in ["dialogue", "summary", "topic"] {
            for text in table.column(col, "dialogsum").unwrap() {
                ours.extend(tokenizer.tokenize(text));
            }
        }
    }
    let mut theirs = BTreeSet::new();
    let mut mismatches = Vec::new();
    for line in expected.lines() {
        let (token, stem) = line.split_once('\t').unwrap();
        theirs.insert(token.to_string());
        if porter::stem(token) != stem {
            mismatches.push(format!("{token}: {} vs nltk {stem}", porter::stem(token)));
        }
    }
    assert_eq!(ours, theirs, "token sets differ");
    assert!(theirs.len() > 20_000, "only {} tokens", theirs.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} stems differ: {:?}",
        mismatches.len(),
        theirs.len(),
        &mismatches[..mismatches.len().min(20)]
    );
}

/// Long texts, where ROUGE-L's table no longer fits a quadratic budget: thousands of words on one
/// line (ROUGE-Lsum's LCS read back through the whole of them) and many sentences, from
/// DialogSum's dialogues and summaries, scored as rouge_score scores them.
#[test]
fn long_texts_score_as_rouge_score_does() {
    let train = read_table(&data("dialogsum/train.csv"), None).unwrap();
    let dialogues = train.column("dialogue", "train").unwrap();
    let summaries = train.column("summary", "train").unwrap();
    let one_line = |texts: &[String]| texts.join(" ").replace(['\n', '\r'], " ");
    let rows = [
        // ~4,000 words each, on one line.
        (one_line(&dialogues[..30]), one_line(&dialogues[15..45])),
        // Summaries as sentences, against dialogues as sentences.
        (summaries[..200].join("\n"), dialogues[..12].join("\n")),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["reference", "prediction"]).unwrap();
    for (r, p) in &rows {
        w.write_record([r, p]).unwrap();
    }
    w.flush().unwrap();
    let expected = python("rouge_reference.py", &[&path, Path::new("reference"), Path::new("prediction")]);
    let scorer = RougeScorer::new(&RougeType::ALL, true);
    for line in expected.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = v["row"].as_u64().unwrap() as usize;
        let got = scorer.score(&rows[row].0, &rows[row].1);
        for (t, s) in RougeType::ALL.iter().zip(&got) {
            assert_eq!(s.fmeasure, v[t.name()].as_f64().unwrap(), "row {row} {}", t.name());
        }
    }
    assert!(rows[0].0.split_whitespace().count() > 3000);
}
