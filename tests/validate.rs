//! `sumflow validate` and `run` on invalid pipeline files: each error names the field, points at
//! file:line:column, exits non-zero, and nothing runs.

use crate::common::{lab_results, Sandbox};

/// Writes `yaml`, validates it, and returns stderr (asserting failure and an empty cache).
fn invalid(yaml: &str) -> String {
    let s = Sandbox::new();
    s.write("p.yaml", yaml);
    let out = s.run(&["validate", "p.yaml"]);
    assert_eq!(out.code, 1, "expected failure:\n{}", out.stdout);
    // `run` refuses the same file before running anything.
    let run = s.run(&["run", "p.yaml"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, out.stderr);
    assert_eq!(s.entries(), 0, "nothing may run");
    out.stderr
}

fn contains(stderr: &str, parts: &[&str]) {
    for p in parts {
        assert!(stderr.contains(p), "missing {p:?} in:\n{stderr}");
    }
}

fn lab(stages: &str) -> String {
    format!(
        "name: t\nvars:\n  results: {}\nstages:\n  results: {{kind: load, path: \"${{results}}\"}}\n{stages}",
        lab_results()
    )
}

#[test]
fn unknown_key_points_at_it() {
    let err = invalid(&lab("  quick: {kind: subsample, input: results, every: 100, evry: 3}\n"));
    contains(&err, &["stages.quick.evry: unknown field `evry`", "p.yaml:6:56", "^^^^"]);
}

#[test]
fn unknown_top_level_key() {
    let err = invalid("name: t\nstage:\n  a: {kind: load, path: x.csv}\n");
    contains(&err, &["unknown field `stage`", "p.yaml:2:1"]);
}

#[test]
fn unknown_kind_lists_the_known_ones() {
    let err = invalid(&lab("  s: {kind: sscore}\n"));
    // The list depends on the build (model stages come with the `torch` feature).
    contains(&err, &["stages.s.kind: unknown kind `sscore` (known: ", "load, ", "score, subsample, ", "p.yaml:6:13"]);
}

#[test]
fn missing_kind() {
    let err = invalid(&lab("  s: {input: results}\n"));
    contains(&err, &["stages.s: missing `kind`", "p.yaml:6:3"]);
}

#[test]
fn reference_to_a_missing_stage() {
    let err = invalid(&lab("  quick: {kind: subsample, input: reslts.all, every: 100}\n"));
    contains(&err, &["stages.quick.input: no stage `reslts` (stages: results, quick)", "p.yaml:6:28"]);
}

#[test]
fn reference_to_a_missing_output() {
    let err = invalid(&lab("  quick: {kind: subsample, input: results.train, every: 100}\n"));
    contains(&err, &["stage `results` has no output `train` (outputs: all)"]);
}

#[test]
fn ambiguous_reference_to_a_multi_output_stage() {
    let dir = crate::common::shared("dialogsum");
    let yaml = format!(
        "name: t\nstages:\n  data: {{kind: load, path: {}}}\n  q: {{kind: subsample, input: data, every: 2}}\n",
        dir.display()
    );
    let err = invalid(&yaml);
    contains(&err, &["stage `data` has outputs train, validation, test: say which, e.g. `data.train`"]);
}

#[test]
fn cycle_is_named_stage_by_stage() {
    let err = invalid("name: t\nstages:\n  a: {kind: subsample, input: c, every: 2}\n  b: {kind: subsample, input: a, every: 2}\n  c: {kind: subsample, input: b, every: 2}\n");
    assert!(
        ["a → b → c → a", "b → c → a → b", "c → a → b → c"].iter().any(|c| err.contains(c)),
        "cycle not named:\n{err}"
    );
}

#[test]
fn input_of_the_wrong_type() {
    let err = invalid(&lab(
        "  scores: {kind: score, input: results, references: a, predictions: [b]}\n  q: {kind: subsample, input: scores, every: 2}\n",
    ));
    contains(&err, &["stages.q.input: `scores` is a metrics but `input` takes a table", "p.yaml:7:"]);
}

#[test]
fn missing_required_param() {
    let err = invalid(&lab("  scores: {kind: score, input: results, predictions: [b]}\n"));
    contains(&err, &["stages.scores: missing field `references`", "p.yaml:6:3"]);
}

#[test]
fn param_of_the_wrong_type() {
    let err = invalid(&lab("  q: {kind: subsample, input: results, every: lots}\n"));
    contains(&err, &["stages.q.every: invalid type: string \"lots\", expected u64"]);
}

#[test]
fn stage_checks_run_before_anything() {
    let err = invalid(&lab(
        "  q: {kind: subsample, input: results, every: 2, n: 5}\n  s: {kind: score, input: results, references: r, predictions: [a], baseline: z}\n",
    ));
    contains(
        &err,
        &[
            "stages.q: give exactly one of `every`, `n` and `fraction`",
            "stages.s.baseline: `z` is not one of `predictions`",
        ],
    );
}

#[test]
fn unknown_var_and_unknown_set() {
    let s = Sandbox::new();
    s.write("p.yaml", "name: t\nvars:\n  data: x.csv\nstages:\n  a: {kind: load, path: \"${dta}/f.csv\"}\n");
    let out = s.run(&["validate", "p.yaml"]);
    contains(&out.stderr, &["stages.a.path: unknown var `${dta}` (vars: [\"data\"])", "p.yaml:5:25"]);
    let out = s.run(&["validate", "p.yaml", "--set", "dat=y"]);
    contains(&out.stderr, &["--set dat=y: the pipeline has no var `dat`"]);
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let err = invalid("name: t\nstages:\n  a: {kind: load, path: x.csv\n  b: 1\n");
    contains(&err, &["p.yaml:", "error:"]);
}

#[test]
fn bad_stage_id() {
    let err = invalid("name: t\nstages:\n  ../x: {kind: load, path: x.csv}\n");
    contains(&err, &["stage id `../x` may hold only letters, digits, `_` and `-`"]);
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = invalid(&lab(
        "  a: {kind: nope}\n  b: {kind: subsample, input: zz, every: 1}\n  c: {kind: score, input: results}\n",
    ));
    assert!(err.contains("3 errors found; nothing was run"), "{err}");
}

#[test]
fn shipped_pipelines_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = Sandbox::new();
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let mut cmd = s.cmd(&["validate", path.to_str().unwrap()]);
        let out = cmd.current_dir(root).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Without the `torch` feature, model stages are named as needing it, and nothing else.
        let torch_only = !cfg!(feature = "torch")
            && stderr.lines().filter(|l| l.starts_with("error:")).all(|l| l.contains("needs libtorch"));
        assert!(out.status.success() || torch_only, "{}: {stderr}", path.display());
    }
}
