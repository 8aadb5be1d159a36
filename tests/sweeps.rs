//! Sweeps: `matrix:` expansion and naming, fan-out and fan-in, what `plan` and a grown sweep
//! run, the errors a sweep can have, `defaults:`, `exp show` / `exp diff`, and the shipped
//! LoRA sweep's quick variant end to end (with libtorch).
//!
//! Without libtorch the sweep picks model columns of the lab's results table: `pick@MODEL`
//! keeps one column (`join`), `pick-scores` scores each pick (fan-out), `gathered` joins every
//! pick back into one table (fan-in, `pick@*`), scored and reported as a sweep.

use std::path::Path;

use serde_json::Value;

use crate::common::{lab_results, Sandbox};

/// The picking sweep over `models` (a YAML list).
fn pick_pipeline(models: &str) -> String {
    format!(
        r#"name: pick
vars:
  results: {results}
  models: {models}
stages:
  results: {{kind: load, path: "${{results}}"}}
  pick:
    kind: join
    matrix: {{model: "${{models}}"}}
    name: "${{item.model}}"
    input: results.all
    on: unnamed_0
    columns: {{unnamed_0: unnamed_0, human_baseline_summaries: human_baseline_summaries, prediction: "${{item.model}}"}}
  pick-scores:
    kind: score
    input: pick
    references: human_baseline_summaries
    predictions: [prediction]
  gathered:
    kind: join
    input: results.all
    on: unnamed_0
    columns: {{unnamed_0: unnamed_0, human_baseline_summaries: human_baseline_summaries}}
    add:
      "pick@*": {{from: "pick@*"}}
  scores:
    kind: score
    input: gathered
    references: human_baseline_summaries
    predictions: ["pick@*"]
  report:
    kind: report
    input: gathered
    title: Picked columns
    models: ["pick@*"]
    sweep: {{"pick@*": "${{item}}"}}
    examples: []
"#,
        results = lab_results()
    )
}

const ALL: &str = "[original_model_summaries, instruct_model_summaries, peft_model_summaries]";

/// The stage ids and plan statuses of `plan --format json`.
fn plan(s: &Sandbox, args: &[&str]) -> Vec<(String, String)> {
    let mut full = vec!["plan"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "json"]);
    let out = s.ok(&full);
    let plans: Value = serde_json::from_str(&out.stdout).unwrap();
    plans
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p["status"].as_str().unwrap().to_string()))
        .collect()
}

/// The stages a run's stderr says ran, sorted.
fn ran(stderr: &str) -> Vec<String> {
    let mut ran: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  ran   "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    ran.sort();
    ran
}

/// The means `scores` recorded in the latest manifest: "metric:column" → mean.
fn recorded(s: &Sandbox, stage: &str) -> serde_json::Map<String, Value> {
    let manifest = latest_manifest(s);
    let record = manifest["stages"].as_array().unwrap().iter().find(|x| x["id"] == stage).unwrap().clone();
    record["stats"].as_object().unwrap().clone()
}

fn latest_manifest(s: &Sandbox) -> Value {
    let mut runs: Vec<_> = std::fs::read_dir(s.cache().join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    serde_json::from_str(&std::fs::read_to_string(runs.last().unwrap()).unwrap()).unwrap()
}

#[test]
fn a_matrix_expands_fans_out_and_gathers() {
    let s = Sandbox::new();
    let p = s.write("p.yaml", pick_pipeline(ALL));
    let p = p.to_str().unwrap();
    let out = s.ok(&["validate", p]);
    assert_eq!(out.stdout, format!("{p}: valid pipeline `pick` with 10 stages\n"));
    let ids: Vec<String> = plan(&s, &[p]).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        [
            "results",
            "pick@original_model_summaries",
            "pick@instruct_model_summaries",
            "pick@peft_model_summaries",
            "pick-scores@original_model_summaries",
            "pick-scores@instruct_model_summaries",
            "pick-scores@peft_model_summaries",
            "gathered",
            "scores",
            "report",
        ]
    );
    let run = s.ok(&["run", p]);
    assert!(run.stderr.contains("10 ran, 0 cached"), "{}", run.stderr);

    // Each fanned-out score saw its own pick: the same means as the gathered score's column,
    // and as the lab-results pipeline's score of that model column (the lab's figures).
    let gathered = recorded(&s, "scores");
    for model in ["original_model_summaries", "instruct_model_summaries", "peft_model_summaries"] {
        let own = recorded(&s, &format!("pick-scores@{model}"));
        for metric in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
            assert_eq!(
                own[&format!("{metric}:prediction")],
                gathered[&format!("{metric}:pick@{model}")],
                "{model} {metric}"
            );
        }
    }
    assert_eq!(gathered["rouge1:pick@instruct_model_summaries"].as_f64().unwrap().to_string()[..6], *"0.4214");

    // The manifest says which combination each expansion is.
    let manifest = latest_manifest(&s);
    let pick =
        manifest["stages"].as_array().unwrap().iter().find(|x| x["id"] == "pick-scores@peft_model_summaries").unwrap();
    assert_eq!(
        pick["sweep"],
        serde_json::json!({"base": "pick-scores", "suffix": "peft_model_summaries", "item": {"model": "peft_model_summaries"}})
    );

    // The report's sweep section: a row per combination, its value, each metric; the best
    // marked. (Rendering in Chromium: `the_quick_lora_sweep_runs_offline_end_to_end`.)
    let html = run.stdout.lines().find_map(|l| l.strip_prefix("report: ")).unwrap();
    let md = std::fs::read_to_string(Path::new(html).with_file_name("report.md")).unwrap();
    let section = md.split("## Sweep over model\n").nth(1).expect("a sweep section").split("\n## ").next().unwrap();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| pick@")).collect();
    assert_eq!(rows.len(), 3, "{section}");
    assert!(
        rows[1].starts_with("| pick@instruct_model_summaries (best rouge1) | instruct_model_summaries | 0.4214 ["),
        "{section}"
    );
    for svg in ["sweep-rouge1-model.svg", "sweep-rougeLsum-model.svg"] {
        let plot = std::fs::read_to_string(Path::new(html).with_file_name(svg)).unwrap();
        assert!(plot.contains("<svg") && plot.contains("model"), "{svg}");
    }
}

#[test]
fn growing_a_sweep_runs_only_the_new_combinations_chain() {
    let s = Sandbox::new();
    let p = s.write("p.yaml", pick_pipeline("[original_model_summaries]"));
    let p = p.to_str().unwrap();
    // A matrix of one value is a sweep of one: its expansion is named like any other.
    let first = s.ok(&["run", p]);
    assert_eq!(
        ran(&first.stderr),
        [
            "gathered",
            "pick-scores@original_model_summaries",
            "pick@original_model_summaries",
            "report",
            "results",
            "scores"
        ]
    );
    // `--set` grows it; `plan` shows each expansion's hit or miss, and the run does just that.
    let grown = ["--set", "models=[original_model_summaries, peft_model_summaries]"];
    let mut args = vec![p];
    args.extend_from_slice(&grown);
    let statuses = plan(&s, &args);
    let status = |id: &str| statuses.iter().find(|(i, _)| i == id).map(|(_, st)| st.as_str()).unwrap();
    assert_eq!(status("pick@original_model_summaries"), "hit");
    assert_eq!(status("pick-scores@original_model_summaries"), "hit");
    assert_eq!(status("pick@peft_model_summaries"), "miss");
    assert_eq!(status("pick-scores@peft_model_summaries"), "miss");
    let mut run = vec!["run"];
    run.extend_from_slice(&args);
    let second = s.ok(&run);
    assert_eq!(
        ran(&second.stderr),
        ["gathered", "pick-scores@peft_model_summaries", "pick@peft_model_summaries", "report", "scores"]
    );

    // `exp diff` names what changed between the two runs; `exp show` lines the runs up.
    let diff = s.ok(&["exp", "diff", "latest"]);
    let lines: Vec<&str> = diff.stdout.lines().collect();
    assert_eq!(
        lines[1..8],
        [
            "vars:",
            "  models: original_model_summaries → original_model_summaries, peft_model_summaries",
            "stages whose keys differ:",
            "  gathered",
            "  pick-scores@peft_model_summaries (new)",
            "  pick@peft_model_summaries (new)",
            "  report",
        ]
    );
    let rouge1 = recorded(&s, "scores")["rouge1:pick@peft_model_summaries"].as_f64().unwrap();
    assert!(
        diff.stdout.contains(&format!("\n  scores pick@peft_model_summaries rouge1: - → {rouge1:.4}\n")),
        "{}",
        diff.stdout
    );
    let shown = s.ok(&["exp", "show", "--by", "run", "--format", "csv"]);
    let header = shown.stdout.lines().next().unwrap();
    assert_eq!(header, "run,started,pipeline,status,models,rouge1 pick-scores@original_model_summaries:prediction,rouge1 pick-scores@peft_model_summaries:prediction,rouge1 pick@original_model_summaries,rouge1 pick@peft_model_summaries");
    assert_eq!(shown.stdout.lines().count(), 3);
}

#[test]
fn exp_show_lists_each_combination_with_its_scores() {
    let s = Sandbox::new();
    let p = s.write("p.yaml", pick_pipeline(ALL));
    s.ok(&["run", p.to_str().unwrap()]);
    let scores = recorded(&s, "scores");
    let f = |metric: &str, model: &str| format!("{:.4}", scores[&format!("{metric}:pick@{model}")].as_f64().unwrap());
    let shown = s.ok(&["exp", "show", p.to_str().unwrap(), "--sort", "rouge1", "--format", "md"]);
    let lines: Vec<&str> = shown.stdout.lines().filter(|l| l.starts_with("| pick@")).collect();
    let row = |model: &str| {
        format!(
            "| pick@{model} | {model} | {} | {} | {} | {} |",
            f("rouge1", model),
            f("rouge2", model),
            f("rougeL", model),
            f("rougeLsum", model)
        )
    };
    // Sorted by rouge1, best first: full fine-tuning, LoRA, the original model.
    assert_eq!(lines, [row("instruct_model_summaries"), row("peft_model_summaries"), row("original_model_summaries")]);
    assert_eq!(shown.stdout.lines().next().unwrap(), "| column | model | rouge1 | rouge2 | rougeL | rougeLsum |");
    // Another pipeline's name filters every run out.
    let other = s.write("other.yaml", "name: other\nstages: {}\n");
    let none = s.run(&["exp", "show", other.to_str().unwrap()]);
    assert_eq!(none.code, 1);
    assert!(none.stderr.contains("no runs recorded"), "{}", none.stderr);
}

/// Validates `yaml` (after the lab results table's `results` stage) and returns stderr, which
/// must be an error.
fn refused(stages: &str) -> String {
    let s = Sandbox::new();
    let yaml = format!(
        "name: t\nvars:\n  results: {}\nstages:\n  results: {{kind: load, path: \"${{results}}\"}}\n{stages}",
        lab_results()
    );
    s.write("p.yaml", yaml);
    let out = s.run(&["validate", "p.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(s.entries(), 0);
    out.stderr
}

#[test]
fn an_empty_matrix_is_refused_at_its_line_and_column() {
    let err = refused("  q:\n    kind: subsample\n    input: results.all\n    matrix: {}\n    every: 2\n");
    assert!(
        err.starts_with("error: stages.q.matrix: is empty: give at least one key and its values\n  ┌─ p.yaml:9:5\n"),
        "{err}"
    );
    let err = refused(
        "  q:\n    kind: subsample\n    input: results.all\n    matrix: {every: []}\n    every: \"${item.every}\"\n",
    );
    assert!(err.starts_with("error: stages.q.matrix.every: has no values\n  ┌─ p.yaml:9:14\n"), "{err}");
}

#[test]
fn two_combinations_of_one_name_are_refused() {
    let err = refused(
        "  q:\n    kind: subsample\n    input: results.all\n    matrix: {every: [2, 3]}\n    name: same\n    every: \"${item.every}\"\n",
    );
    assert!(
        err.starts_with("error: stages.q.name: two combinations are both named `q@same` (every: 2 and every: 3): name them apart with `${item.KEY}`\n   ┌─ p.yaml:10:5\n"),
        "{err}"
    );
}

#[test]
fn item_outside_a_sweep_is_refused() {
    let err = refused("  q: {kind: subsample, input: results.all, every: \"${item.every}\"}\n");
    assert!(
        err.starts_with("error: stages.q.every: `${item…}` is defined only in a stage with `matrix:`, or in an entry that gathers `STAGE@*`\n  ┌─ p.yaml:6:44\n"),
        "{err}"
    );
    let err = refused(
        "  q:\n    kind: subsample\n    input: results.all\n    matrix: {every: [2]}\n    every: \"${item.evry}\"\n",
    );
    assert!(err.starts_with("error: stages.q: `${item.evry}`: the sweep has no `evry` (its keys: every)\n"), "{err}");
}

#[test]
fn gathering_what_is_not_swept_and_reading_two_sweeps_are_refused() {
    let err = refused("  s: {kind: score, input: results.all, references: r, predictions: [\"results@*\"]}\n");
    assert!(err.starts_with("error: stages.s.predictions[0]: `results@*`: `results` is not a swept stage (a stage with `matrix:`, or one that reads it)\n"), "{err}");
    let two = "  a: {kind: subsample, input: results.all, matrix: {every: [2, 3]}, every: \"${item.every}\"}\n  b: {kind: subsample, input: results.all, matrix: {n: [5]}, n: \"${item.n}\"}\n  j: {kind: join, input: a, add: {x: {from: b}}}\n";
    let err = refused(two);
    assert!(
        err.starts_with("error: stages.j: reads two different sweeps, `a` and `b`: gather one of them with `b@*`\n"),
        "{err}"
    );
    let err = refused("  a@b: {kind: subsample, input: results.all, every: 2}\n");
    assert!(err.contains("`@` names the expansions of a sweep"), "{err}");
}

#[test]
fn a_default_is_merged_under_each_stage_of_its_kind_and_its_errors_point_at_it() {
    let s = Sandbox::new();
    let yaml = |every: &str| {
        format!(
            "name: t\nvars:\n  results: {}\ndefaults:\n  subsample: {{input: results.all, every: {every}}}\nstages:\n  results: {{kind: load, path: \"${{results}}\"}}\n  a: {{kind: subsample}}\n  b: {{kind: subsample, every: 50}}\n",
            lab_results()
        )
    };
    let p = s.write("p.yaml", yaml("100"));
    let run = s.ok(&["run", p.to_str().unwrap()]);
    assert!(run.stdout.contains("a: 15 rows kept") && run.stdout.contains("b: 30 rows kept"), "{}", run.stdout);
    // The same pipeline with each stage stating it: the same keys.
    let inline = s.write(
        "inline.yaml",
        format!(
            "name: t\nvars:\n  results: {}\nstages:\n  results: {{kind: load, path: \"${{results}}\"}}\n  a: {{kind: subsample, input: results.all, every: 100}}\n  b: {{kind: subsample, input: results.all, every: 50}}\n",
            lab_results()
        ),
    );
    assert!(plan(&s, &[inline.to_str().unwrap()]).iter().all(|(_, st)| st == "hit"));

    s.write("p.yaml", yaml("lots"));
    let out = s.run(&["validate", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("error: defaults.subsample.every (for stage `a`): invalid type: string \"lots\", expected u64\n  ┌─ p.yaml:5:35\n"),
        "{}",
        out.stderr
    );
    s.write("p.yaml", "name: t\ndefaults:\n  subsampel: {every: 2}\nstages: {}\n");
    let out = s.run(&["validate", "p.yaml"]);
    assert!(out.stderr.starts_with("error: defaults.subsampel: no stage kind `subsampel` (known: "), "{}", out.stderr);
    assert!(out.stderr.contains("p.yaml:3:3"), "{}", out.stderr);
}

/// The shipped sweep's quick variant: two ranks × two target sets on a tiny model, a few steps.
#[cfg(feature = "torch")]
#[test]
fn the_quick_lora_sweep_runs_offline_end_to_end() {
    let s = Sandbox::new();
    let model = crate::models::tiny_model().display().to_string();
    let data = crate::common::shared("dialogsum").display().to_string();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = repo.join("pipelines/lora-sweep.yaml").display().to_string();
    let mut args = vec!["run".to_string(), file.clone()];
    for kv in [
        format!("model={model}"),
        format!("data={data}"),
        "subsample=100".into(),
        "max_steps=3".into(),
        "max_new_tokens=8".into(),
        "device=cpu".into(),
        "ranks=[4, 8]".into(),
        "lrs=[1e-3]".into(),
    ] {
        args.push("--set".into());
        args.push(kv);
    }
    let run = s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.stderr.contains("18 ran, 0 cached"), "{}", run.stderr);
    let combos = ["r4-lr1e-3-q_v", "r4-lr1e-3-q_k_v_o", "r8-lr1e-3-q_v", "r8-lr1e-3-q_k_v_o"];
    for c in combos {
        assert!(run.stdout.contains(&format!("lora@{c}: 3 steps")), "{c}: {}", run.stdout);
        assert!(run.stdout.contains(&format!("peft@{c}: 15 predictions")), "{c}: {}", run.stdout);
    }

    // `exp show`: a row per combination, with its values and ROUGE as the score stage has them.
    let scores = recorded(&s, "scores");
    let shown = s.ok(&["exp", "show", &file, "--format", "csv"]);
    let lines: Vec<&str> = shown.stdout.lines().collect();
    assert_eq!(lines[0], "column,r,lr,targets,rouge1,rouge2,rougeL,rougeLsum");
    assert_eq!(lines.len(), 6, "{}", shown.stdout);
    for (c, (r, targets)) in combos.iter().zip([(4, "q, v"), (4, "q, k, v, o"), (8, "q, v"), (8, "q, k, v, o")]) {
        let f = |m: &str| format!("{:.4}", scores[&format!("{m}:peft@{c}")].as_f64().unwrap());
        let want = format!(
            "peft@{c},{r},0.001,\"{targets}\",{},{},{},{}",
            f("rouge1"),
            f("rouge2"),
            f("rougeL"),
            f("rougeLsum")
        );
        assert!(lines.contains(&want.as_str()), "{want}\n{}", shown.stdout);
    }

    // The report's sweep section, rendered by headless Chromium.
    let html = run.stdout.lines().find_map(|l| l.strip_prefix("report: ")).unwrap();
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("Sweep over r, targets"), "lr has one value: not a varied param");
    for c in combos {
        assert!(page.contains(&format!("peft@{c}")), "{c}");
    }
    assert!(page.contains("(best rouge1"), "the best combination is marked");
    // Opened at the section's anchor, the screenshot is the sweep's table and plots: inked, and
    // not the page's top.
    let top = crate::common::chromium(&s, &format!("file://{html}"));
    let sweep = crate::common::chromium(&s, &format!("file://{html}#sweep-over-r-targets"));
    assert!(sweep.ink > 0.01, "{:.4} of the pixels are not white: the section looks blank", sweep.ink);
    assert_ne!(sweep.pixels, top.pixels, "the anchor scrolled to the section");
    assert!(sweep.dom.contains("<h2 id=\"sweep-over-r-targets\">Sweep over r, targets</h2>"));
    assert!(sweep.dom.contains("4 combinations; ROUGE F-measure"));
    assert_eq!(sweep.dom.matches("<svg").count(), top.dom.matches("<svg").count());
    assert!(sweep.dom.matches("<svg").count() >= 8, "two plots (r, targets) per metric");
}
