//! The cache through the binary: hits, keys that ignore formatting, reruns of exactly the
//! downstream stages, `--frozen`, SIGKILL mid-write, concurrent runs, corruption found by
//! `cache verify` and `audit` and repaired by a forced run.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{lab_results, Sandbox};

fn lab_yaml(every: u32) -> String {
    format!(
        "name: lab\nvars:\n  results: {}\nstages:\n  results: {{kind: load, path: \"${{results}}\"}}\n  quick: {{kind: subsample, input: results.all, every: {every}}}\n  scores:\n    kind: score\n    input: results.all\n    references: human_baseline_summaries\n    predictions: [original_model_summaries, peft_model_summaries]\n    baseline: original_model_summaries\n  quick-scores: {{kind: score, input: quick, references: human_baseline_summaries, predictions: [peft_model_summaries], bootstrap: 50}}\n",
        lab_results()
    )
}

/// The latest manifest's stage outcomes and output digests, by stage id.
fn latest(s: &Sandbox) -> serde_json::Value {
    let out = s.ok(&["audit", "latest"]);
    let path = out.stdout.split(':').next().unwrap().to_string();
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn outcomes(m: &serde_json::Value) -> Vec<(String, String)> {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["outcome"].as_str().unwrap().to_string()))
        .collect()
}

fn digests(m: &serde_json::Value) -> Vec<String> {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["outputs"].as_object().unwrap().values().map(|o| o["digest"].to_string()).collect::<Vec<_>>())
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn second_run_is_all_hits_with_byte_identical_outputs() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    let first = s.ok(&["run", "p.yaml"]);
    let m1 = latest(&s);
    let second = s.ok(&["run", "p.yaml"]);
    let m2 = latest(&s);
    assert!(second.stderr.contains("4 stages, 4 cached, 0 to run"), "{}", second.stderr);
    assert!(outcomes(&m2).iter().all(|(_, o)| o == "hit"));
    assert_eq!(digests(&m1), digests(&m2));
    assert_eq!(first.stdout, second.stdout, "same summaries from the cache");
    // Rerunning a stage by force reproduces it bit for bit.
    s.ok(&["run", "p.yaml", "--force", "scores"]);
    let m3 = latest(&s);
    assert_eq!(outcomes(&m3)[2], ("scores".to_string(), "ran".to_string()));
    assert_eq!(digests(&m1), digests(&m3));
}

#[test]
fn key_ignores_formatting_order_comments_and_spelled_out_defaults() {
    let s = Sandbox::new();
    s.write("a.yaml", format!("name: lab\nstages:\n  results: {{kind: load, path: {}}}\n  scores: {{kind: score, input: results, references: human_baseline_summaries, predictions: [peft_model_summaries]}}\n", lab_results()));
    s.write(
        "b.yaml",
        format!(
            "# the same pipeline, written differently\nname: lab\nstages:\n  results:\n    path: {}\n    kind: load\n    empty_text: error   # the default\n  scores:\n    predictions:\n      - peft_model_summaries\n    references: human_baseline_summaries\n    use_stemmer: true\n    bootstrap: 1000\n    metrics: [rouge1, rouge2, rougeL, rougeLsum]\n    input: results.all\n    kind: score\n",
            lab_results()
        ),
    );
    s.ok(&["run", "a.yaml"]);
    let out = s.ok(&["run", "b.yaml"]);
    assert!(out.stderr.contains("2 cached, 0 to run"), "{}", out.stderr);
}

#[test]
fn changed_param_reruns_only_its_downstream_stages() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    s.ok(&["run", "p.yaml"]);
    s.write("p.yaml", lab_yaml(50));
    let plan = s.ok(&["plan", "p.yaml"]);
    assert!(plan.stdout.contains("every: 100 → 50"), "{}", plan.stdout);
    assert!(plan.stdout.contains("input quick.all changed:"), "{}", plan.stdout);
    assert!(plan.stdout.contains("2 of 4 stages would run"), "{}", plan.stdout);
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["plan", "p.yaml", "--format", "json"]).stdout).unwrap();
    let status: Vec<&str> = json.as_array().unwrap().iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["hit", "miss", "hit", "miss"]);
    s.ok(&["run", "p.yaml"]);
    assert_eq!(
        outcomes(&latest(&s)),
        pairs(&[("results", "hit"), ("quick", "ran"), ("scores", "hit"), ("quick-scores", "ran")])
    );
}

#[test]
fn changed_input_file_reruns_the_load_and_what_reads_it() {
    let s = Sandbox::new();
    let csv = std::fs::read_to_string(lab_results()).unwrap();
    s.write("r.csv", &csv);
    s.write("p.yaml", lab_yaml(100).replace(&lab_results(), "r.csv"));
    s.ok(&["run", "p.yaml"]);
    // Same bytes rewritten (new mtime): still a hit, by content.
    s.write("r.csv", &csv);
    assert!(s.ok(&["plan", "p.yaml"]).stdout.contains("0 of 4 stages would run"));
    s.write("r.csv", csv.replacen("Ms. Dawson", "Mr. Dawson", 1));
    let plan = s.ok(&["plan", "p.yaml"]);
    assert!(plan.stdout.contains("file path changed:"), "{}", plan.stdout);
    assert!(plan.stdout.contains("4 of 4 stages would run"), "{}", plan.stdout);
}

#[test]
fn frozen_fails_when_any_stage_would_run() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    let out = s.run(&["run", "p.yaml", "--frozen"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--frozen: 4 stage(s) would run: results (never run)"), "{}", out.stderr);
    assert_eq!(s.entries(), 0);
    s.ok(&["run", "p.yaml"]);
    s.ok(&["run", "p.yaml", "--frozen"]);
}

#[test]
fn a_failing_stage_exits_nonzero_and_keeps_what_finished() {
    let s = Sandbox::new();
    s.write(
        "p.yaml",
        lab_yaml(100).replace(
            "references: human_baseline_summaries\n    predictions",
            "references: human_summary\n    predictions",
        ),
    );
    let out = s.run(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("FAIL  scores (score)"), "{}", out.stderr);
    assert!(
        out.stderr.contains("no column `human_summary` (found: unnamed_0, human_baseline_summaries,"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("error: 1 stage failed: scores"), "{}", out.stderr);
    // results, quick and quick-scores finished and are cached.
    assert_eq!(s.entries(), 3);
    s.ok(&["cache", "verify"]);
}

#[test]
fn sigkill_mid_write_leaves_a_verifiable_cache_that_the_next_run_repairs() {
    let s = Sandbox::new();
    // Loading all of DialogSum writes ~15 MB of Parquet: a wide window to be killed in.
    let data = crate::common::shared("dialogsum");
    let yaml = format!(
        "name: kill\nstages:\n  data: {{kind: load, path: {}}}\n  few: {{kind: subsample, input: data.test, every: 10}}\n  results: {{kind: load, path: {}}}\n  scores: {{kind: score, input: results, references: human_baseline_summaries, predictions: [peft_model_summaries], bootstrap: 100}}\n",
        data.display(),
        lab_results()
    );
    s.write("p.yaml", &yaml);
    let mut killed_mid_write = 0;
    let mut delay = 5;
    loop {
        let mut child = s.cmd(&["run", "p.yaml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        if std::fs::read_dir(s.cache().join("tmp")).is_ok_and(|d| d.count() > 0) {
            killed_mid_write += 1;
        }
        let verify = s.run(&["cache", "verify"]);
        assert_eq!(verify.code, 0, "after a kill at {delay} ms:\n{}{}", verify.stdout, verify.stderr);
        if finished {
            break;
        }
        delay += 15;
    }
    assert!(killed_mid_write > 0, "no kill landed while outputs were being written");
    // The next run completes what was left, and the result equals a clean run's.
    s.ok(&["run", "p.yaml"]);
    let repaired = digests(&latest(&s));
    let clean = Sandbox::new();
    clean.write("p.yaml", &yaml);
    clean.ok(&["run", "p.yaml"]);
    assert_eq!(repaired, digests(&latest(&clean)));
}

#[test]
fn concurrent_runs_on_one_cache_are_safe() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    let children: Vec<_> = (0..3)
        .map(|_| s.cmd(&["run", "p.yaml"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert!(outputs.iter().all(|o| o.status.success()));
    let waited =
        outputs.iter().filter(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for the cache lock")).count();
    assert!(waited >= 1, "the later runs waited for the first");
    // Each stage ran exactly once overall: the waiting runs found everything cached.
    let ran: usize = outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).matches("  ran   ").count()).sum();
    assert_eq!(ran, 4);
    s.ok(&["cache", "verify"]);
}

#[test]
fn a_lock_left_by_a_dead_process_is_taken_over() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    // A lock file whose holder is long gone (nobody holds the OS lock on it).
    std::fs::create_dir_all(s.cache()).unwrap();
    std::fs::write(s.cache().join("lock"), "999999999").unwrap();
    let out = s.ok(&["run", "p.yaml"]);
    assert!(!out.stderr.contains("waiting"), "{}", out.stderr);
}

#[test]
fn verify_and_audit_find_a_flipped_byte_and_a_forced_run_repairs_it() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    s.ok(&["run", "p.yaml"]);
    let m = latest(&s);
    let scores = &m["stages"][2]["outputs"]["metrics"]["digest"];
    let file = s.cache().join("artifacts").join(scores.as_str().unwrap()).join("metrics.json");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&file, bytes).unwrap();

    let verify = s.run(&["cache", "verify"]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stderr.contains(&format!("artifacts/{}: content hashes to", scores.as_str().unwrap())),
        "{}",
        verify.stderr
    );
    let audit = s.run(&["audit", "latest"]);
    assert_eq!(audit.code, 1);
    assert!(
        audit.stderr.contains("scores.metrics:") && audit.stderr.contains("metrics.json changed"),
        "{}",
        audit.stderr
    );

    s.ok(&["run", "p.yaml", "--force", "scores"]);
    s.ok(&["cache", "verify"]);
}

#[test]
fn gc_removes_what_no_entry_references() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    s.ok(&["run", "p.yaml"]);
    // Forget the entry of `quick`: its artifact becomes an orphan. Add scratch left behind.
    let m = latest(&s);
    std::fs::remove_file(s.cache().join("index").join(format!("{}.json", m["stages"][1]["key"].as_str().unwrap())))
        .unwrap();
    s.write("cache/tmp/leftover/y", "partial");
    let verify = s.ok(&["cache", "verify"]);
    assert!(
        verify.stdout.contains("3 entries, 4 artifacts re-hashed; 1 unreferenced artifacts, 1 scratch folders"),
        "{}",
        verify.stdout
    );
    let gc = s.ok(&["cache", "gc"]);
    assert!(gc.stdout.contains("removed 1 unreferenced artifacts"), "{}", gc.stdout);
    assert!(s.ok(&["cache", "verify"]).stdout.contains("0 unreferenced artifacts, 0 scratch folders"));
    let plan = s.ok(&["plan", "p.yaml"]);
    assert!(plan.stdout.contains("cached outputs are gone"), "{}", plan.stdout);
    s.ok(&["run", "p.yaml"]);
    assert_eq!(s.ok(&["cache", "ls"]).stdout.lines().count(), 4);
}

#[test]
fn audit_reproduce_reruns_a_stage_into_scratch_and_compares() {
    let s = Sandbox::new();
    s.write("p.yaml", lab_yaml(100));
    s.ok(&["run", "p.yaml"]);
    let out = s.ok(&["audit", "latest", "--reproduce", "scores"]);
    assert!(
        out.stdout.contains("stage `scores` of run") && out.stdout.contains("reproduced bit-exactly (2 files)"),
        "{}",
        out.stdout
    );
    // The real cache is untouched: still the same entries, and nothing left in scratch.
    assert_eq!(s.entries(), 4);
    assert_eq!(std::fs::read_dir(s.cache().join("tmp")).unwrap().count(), 0);
    // A changed pipeline file cannot reproduce the old run.
    s.write("p.yaml", lab_yaml(50));
    let out = s.run(&["audit", "latest", "--reproduce", "scores"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("changed since run"), "{}", out.stderr);
}
