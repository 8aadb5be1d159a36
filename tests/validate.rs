//! `sumflow validate` and `run` on invalid pipeline files: each error names the field, points at
//! file:line:column, exits non-zero, and nothing runs. The tests write their own inputs, and
//! what the user sees is checked as exact text (insta snapshots in `tests/snapshots/`).

use crate::common::Sandbox;

/// A sandbox with a small results table (`r.csv`) to load.
fn sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write("r.csv", "id,ref,a,b\n1,the cat sat,the cat,a dog\n2,it rained,it rained,sun\n");
    s
}

/// Writes `yaml`, validates it, and returns stderr (asserting failure and an empty cache).
fn invalid(yaml: &str) -> String {
    let s = sandbox();
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

/// A pipeline that loads `r.csv` as `results`, then `stages`.
fn with_results(stages: &str) -> String {
    format!("name: t\nvars:\n  results: r.csv\nstages:\n  results: {{kind: load, path: \"${{results}}\"}}\n{stages}")
}

#[test]
fn unknown_key_points_at_it() {
    let err = invalid(&with_results("  quick: {kind: subsample, input: results, every: 100, evry: 3}\n"));
    insta::assert_snapshot!("unknown_key", err);
}

#[test]
fn unknown_top_level_key() {
    insta::assert_snapshot!("unknown_top_level_key", invalid("name: t\nstage:\n  a: {kind: load, path: x.csv}\n"));
}

#[test]
fn unknown_kind_lists_the_known_ones() {
    // The list depends on the build (model stages come with the `torch` feature).
    let err = invalid(&with_results("  s: {kind: sscore}\n"));
    let known = if cfg!(feature = "torch") {
        "generate, join, load, make-model, report, score, subsample, tokenize, train-full, train-lora"
    } else {
        "join, load, report, score, subsample, tokenize"
    };
    insta::assert_snapshot!("unknown_kind", err.replace(known, "…"));
}

#[test]
fn missing_kind() {
    insta::assert_snapshot!("missing_kind", invalid(&with_results("  s: {input: results}\n")));
}

#[test]
fn reference_to_a_missing_stage() {
    let err = invalid(&with_results("  quick: {kind: subsample, input: reslts.all, every: 100}\n"));
    insta::assert_snapshot!("missing_stage", err);
}

#[test]
fn reference_to_a_missing_output() {
    let err = invalid(&with_results("  quick: {kind: subsample, input: results.train, every: 100}\n"));
    insta::assert_snapshot!("missing_output", err);
}

#[test]
fn ambiguous_reference_to_a_multi_output_stage() {
    let s = sandbox();
    for split in ["train", "validation", "test"] {
        s.write(&format!("d/{split}.csv"), "id,dialogue,summary\n1,hi,hello\n");
    }
    s.write(
        "p.yaml",
        "name: t\nstages:\n  data: {kind: load, path: d}\n  q: {kind: subsample, input: data, every: 2}\n",
    );
    let out = s.run(&["validate", "p.yaml"]);
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("ambiguous_output", out.stderr);
}

#[test]
fn cycle_is_named_stage_by_stage() {
    let err = invalid(
        "name: t\nstages:\n  a: {kind: subsample, input: c, every: 2}\n  b: {kind: subsample, input: a, every: 2}\n  c: {kind: subsample, input: b, every: 2}\n",
    );
    insta::assert_snapshot!("cycle", err);
}

#[test]
fn input_of_the_wrong_type() {
    let err = invalid(&with_results(
        "  scores: {kind: score, input: results, references: ref, predictions: [a]}\n  q: {kind: subsample, input: scores, every: 2}\n",
    ));
    insta::assert_snapshot!("wrong_input_type", err);
}

#[test]
fn missing_required_param() {
    let err = invalid(&with_results("  scores: {kind: score, input: results, predictions: [b]}\n"));
    insta::assert_snapshot!("missing_param", err);
}

#[test]
fn param_of_the_wrong_type() {
    insta::assert_snapshot!(
        "wrong_param_type",
        invalid(&with_results("  q: {kind: subsample, input: results, every: lots}\n"))
    );
}

#[test]
fn stage_checks_run_before_anything() {
    let err = invalid(&with_results(
        "  q: {kind: subsample, input: results, every: 2, n: 5}\n  s: {kind: score, input: results, references: ref, predictions: [a], baseline: z}\n",
    ));
    insta::assert_snapshot!("stage_checks", err);
}

#[test]
fn unknown_var_and_unknown_set() {
    let s = sandbox();
    s.write("p.yaml", "name: t\nvars:\n  data: x.csv\nstages:\n  a: {kind: load, path: \"${dta}/f.csv\"}\n");
    insta::assert_snapshot!("unknown_var", s.run(&["validate", "p.yaml"]).stderr);
    insta::assert_snapshot!("unknown_set", s.run(&["validate", "p.yaml", "--set", "dat=y"]).stderr);
}

#[test]
fn yaml_syntax_error_has_a_location() {
    insta::assert_snapshot!("yaml_syntax", invalid("name: t\nstages:\n  a: {kind: load, path: x.csv\n  b: 1\n"));
}

#[test]
fn bad_stage_id() {
    insta::assert_snapshot!("bad_stage_id", invalid("name: t\nstages:\n  ../x: {kind: load, path: r.csv}\n"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = invalid(&with_results(
        "  a: {kind: nope}\n  b: {kind: subsample, input: zz, every: 1}\n  c: {kind: score, input: results}\n",
    ));
    assert!(err.ends_with("p.yaml: 3 errors found; nothing was run\n"), "{err}");
}

#[test]
fn shipped_pipelines_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = Sandbox::new();
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        // Lock files sit beside their pipelines.
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut cmd = s.cmd(&["validate", path.to_str().unwrap()]);
        let out = cmd.current_dir(root).output().unwrap();
        // The runner checks model stages without libtorch, in every build.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", path.display());
    }
}

/// Item 7: what YAML lets through silently is an error here, or works as written: a stage id or
/// var given twice, vars that refer to themselves or to each other in a circle, an unterminated
/// `${`, a `load` path that does not exist; while merge keys, a byte-order mark and vars built
/// from other vars work.
#[test]
fn pipeline_files_say_what_yaml_would_let_through() {
    let err = invalid(&with_results(
        "  quick: {kind: subsample, input: results, every: 10}\n  quick: {kind: score, input: results, references: ref, predictions: [a]}\n",
    ));
    insta::assert_snapshot!("duplicate_stage", err);
    let err = invalid("name: t\nvars:\n  a: r.csv\n  a: x.csv\nstages:\n  r: {kind: load, path: \"${a}\"}\n");
    insta::assert_snapshot!("duplicate_var", err);
    let err = invalid("name: t\nvars:\n  a: \"${a}/x\"\nstages:\n  r: {kind: load, path: \"${a}\"}\n");
    insta::assert_snapshot!("var_refers_to_itself", err);
    let err = invalid(
        "name: t\nvars:\n  a: \"${b}\"\n  b: \"${c}.csv\"\n  c: \"${a}\"\nstages:\n  r: {kind: load, path: \"${a}\"}\n",
    );
    insta::assert_snapshot!("vars_in_a_circle", err);
    let err = invalid("name: t\nstages:\n  r: {kind: load, path: \"${results\"}\n");
    insta::assert_snapshot!("unterminated_var", err);
    let err = invalid("name: t\nstages:\n  r: {kind: load, path: nowhere.csv}\n");
    insta::assert_snapshot!("missing_file", err);

    let s = sandbox();
    s.write(
        "p.yaml",
        "\u{feff}name: t\nvars:\n  dir: .\n  file: \"${dir}/r.csv\"\nstages:\n  r: &load {kind: load, path: \"${file}\"}\n  again: {<<: *load, id_column: id}\n",
    );
    let out = s.ok(&["run", "p.yaml"]);
    assert!(out.stdout.contains("again: all: 2 rows"), "{}", out.stdout);
}

/// Items 6 and 8: params that change nothing, mean nothing or ask for unbounded memory are
/// refused before anything runs, each naming its field.
#[test]
fn params_out_of_range_are_refused_naming_the_field() {
    let err = invalid(&with_results(
        "  s0: {kind: score, input: results, references: ref, predictions: [a, a], bootstrap: 0}\n  s1: {kind: score, input: results, references: ref, predictions: [a], bootstrap: 4294967295}\n  q: {kind: subsample, input: results, n: 0}\n",
    ));
    insta::assert_snapshot!("params_out_of_range", err);
}

/// Items 6 and 8 for the model stages.
#[cfg(feature = "torch")]
#[test]
fn model_params_out_of_range_are_refused_naming_the_field() {
    let s = sandbox();
    s.write("m/config.json", "{}");
    s.write("m/model.safetensors", "");
    s.write("m/tokenizer.json", "{}");
    let train = "kind: train-lora, train: tok, model: m";
    let generate = "kind: generate, input: results, model: m";
    let yaml = with_results(&format!(
        "  tok: {{kind: tokenize, input: results, model: m, source_column: a, target_column: ref, max_source_tokens: 100000}}\n  t1: {{{train}, grad_clip: -1, batch_tokens: 0, max_batch_rows: 0, weight_decay: -0.1, max_steps: 0, nonfinite_patience: 0, lora: {{alpha: 0}}}}\n  t2: {{{train}, grad_clip: .nan, lr: .inf}}\n  g1: {{{generate}, max_new_tokens: 9223372036854775000, decoding: {{strategy: beam, num_beams: 100000}}}}\n  g2: {{{generate}, decoding: {{strategy: sample, temperature: 0, top_k: -1}}}}\n"
    ));
    s.write("p.yaml", &yaml);
    let out = s.run(&["validate", "p.yaml"]);
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("model_params_out_of_range", out.stderr);
}
