//! Parity with the Python reference implementations on real data: ROUGE against
//! `rouge_score` 0.1.2 on every pair of the lab's results file, and the Porter stemmer against
//! NLTK on every distinct token of DialogSum. Python comes from `$SUMFLOW_PYTHON`, else the
//! workspace's `.venv` (the test command builds it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sumflow_stages::load::read_table;
use sumflow_stages::rouge::{porter, RougeScorer, RougeType, Tokenizer};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn data(rel: &str) -> PathBuf {
    root().join("../shared/data").join(rel)
}

fn python(script: &str, args: &[&Path]) -> String {
    let python =
        std::env::var_os("SUMFLOW_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
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
