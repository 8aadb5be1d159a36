//! The lab's last step as shipped: `pipelines/lab-results.yaml`, `sumflow score` on the same
//! file, reference modes on DialogSum's multi-reference test split, and `sumflow graph`.

use std::path::Path;

use crate::common::{lab_results, shared, Sandbox};

const MODELS: [&str; 3] = ["original_model_summaries", "instruct_model_summaries", "peft_model_summaries"];

/// `sumflow score --format json` of a table in the lab's layout (baseline: the original model).
fn score_lab_layout(s: &Sandbox, table: &Path) -> serde_json::Value {
    let mut args = vec!["score", table.to_str().unwrap(), "--references", "human_baseline_summaries", "--predictions"];
    args.extend(MODELS);
    args.extend(["--baseline", MODELS[0], "--format", "json"]);
    serde_json::from_str(&s.ok(&args).stdout).unwrap()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Mean rouge1 .. rougeLsum of each model in a metrics.json / `score --format json` document.
fn means(report: &serde_json::Value) -> Vec<Vec<f64>> {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            ["rouge1", "rouge2", "rougeL", "rougeLsum"]
                .iter()
                .map(|k| m["scores"][k]["mean"].as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn lab_results_pipeline_reproduces_the_labs_table() {
    let s = Sandbox::new();
    // (Its lock goes to the sandbox: tests leave the repository as it is.)
    let lock = s.path().join("lab-results.lock");
    let mut cmd = s.cmd(&["run", "pipelines/lab-results.yaml", "--lock", lock.to_str().unwrap()]);
    let out = cmd.current_dir(repo()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Absolute percentage improvement over original_model_summaries"), "{stdout}");

    // The lab's figures (rouge1): original 0.2334, full fine-tune 0.4216, PEFT 0.4081 — it
    // aggregates with a bootstrap median, we report the plain mean; they agree to 0.001.
    let metrics = std::fs::read_dir(s.cache().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path().join("metrics.json"))
        .find(|p| p.is_file() && std::fs::read_to_string(p).unwrap().contains("\"pairs\": 1500"))
        .expect("the full scores artifact");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(metrics).unwrap()).unwrap();
    let m = means(&report);
    for (got, want) in m.iter().map(|r| r[0]).zip([0.2334, 0.4216, 0.4081]) {
        assert!((got - want).abs() < 1e-3, "rouge1 {got} vs lab {want}");
    }
    assert_eq!(report["protocol"]["pairs"], 1500);
    assert_eq!(report["protocol"]["use_stemmer"], true);
    let improvement = report["improvements"][0]["scores"]["rouge1"]["mean"].as_f64().unwrap();
    assert!((improvement - 100.0 * (m[1][0] - m[0][0])).abs() < 1e-9);
    let ci = &report["models"][0]["scores"]["rouge1"];
    assert!(ci["low"].as_f64().unwrap() < m[0][0] && m[0][0] < ci["high"].as_f64().unwrap());
}

#[test]
fn score_cli_gives_the_pipelines_numbers() {
    let s = Sandbox::new();
    let results = lab_results();
    let mut args = vec!["score", results.as_str(), "--references", "human_baseline_summaries", "--predictions"];
    args.extend(MODELS);
    args.extend(["--baseline", MODELS[0], "--format", "json"]);
    let cli: serde_json::Value = serde_json::from_str(&s.ok(&args).stdout).unwrap();

    s.write("p.yaml", format!("name: t\nstages:\n  r: {{kind: load, path: {results}}}\n  s: {{kind: score, input: r, references: human_baseline_summaries, predictions: [{}], baseline: {}}}\n", MODELS.join(", "), MODELS[0]));
    s.ok(&["run", "p.yaml"]);
    let metrics = std::fs::read_dir(s.cache().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path().join("metrics.json"))
        .find(|p| p.is_file())
        .unwrap();
    let stage: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(metrics).unwrap()).unwrap();
    assert_eq!(cli, stage, "the CLI and the stage compute the same report");

    let table = s.ok(&args[..args.len() - 2]).stdout;
    assert!(table.contains("original_model_summaries  0.2333"), "{table}");
}

#[test]
fn reference_modes_on_dialogsums_three_references() {
    // Each test dialogue has three human summaries; predict the first one for all three rows.
    let s = Sandbox::new();
    let test = std::fs::read_to_string(shared("dialogsum/test.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(test.as_bytes());
    let mut writer = csv::Writer::from_path(s.path().join("t.csv")).unwrap();
    writer.write_record(["id", "dialogue", "summary", "prediction"]).unwrap();
    let mut first = String::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.unwrap();
        if i % 3 == 0 {
            first = row[2].to_string();
        }
        writer.write_record([&row[0], &row[1], &row[2], &first]).unwrap();
    }
    writer.flush().unwrap();
    let score = |mode: &str| -> serde_json::Value {
        let out = s.ok(&[
            "score",
            "t.csv",
            "--references",
            "summary",
            "--predictions",
            "prediction",
            "--group-by",
            "dialogue",
            "--reference-mode",
            mode,
            "--format",
            "json",
        ]);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let (avg, max, firstm) = (score("avg"), score("max"), score("first"));
    assert_eq!(max["protocol"]["examples"], 500);
    assert_eq!(max["protocol"]["pairs"], 1500);
    assert_eq!(firstm["protocol"]["pairs"], 500);
    assert_eq!(means(&max)[0], [1.0; 4], "the best reference is the prediction itself");
    assert_eq!(means(&firstm)[0], [1.0; 4]);
    let a = means(&avg)[0][0];
    assert!(a > 0.33 && a < 0.9, "avg mixes the exact match with two other summaries: {a}");
    // avg over groups of three equals scoring the 1,500 rows one by one.
    let rows = s.ok(&["score", "t.csv", "--references", "summary", "--predictions", "prediction", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&rows.stdout).unwrap();
    assert!((means(&rows)[0][0] - a).abs() < 1e-12);
    // `max` needs groups.
    let out =
        s.run(&["score", "t.csv", "--references", "summary", "--predictions", "prediction", "--reference-mode", "max"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--group-by: reference modes `max` and `first` need `group_by`"), "{}", out.stderr);
}

#[test]
fn graph_renders_dot_and_mermaid() {
    let s = Sandbox::new();
    let mut cmd = s.cmd(&["graph", "pipelines/lab-results.yaml"]);
    let dot = String::from_utf8(cmd.current_dir(repo()).output().unwrap().stdout).unwrap();
    assert!(dot.starts_with("digraph \"lab-results\""), "{dot}");
    assert!(dot.contains("\"results\" -> \"scores\" [label=\"all\"];"), "{dot}");
    let mut cmd = s.cmd(&["graph", "pipelines/lab-results.yaml", "--format", "mermaid"]);
    let mermaid = String::from_utf8(cmd.current_dir(repo()).output().unwrap().stdout).unwrap();
    assert!(mermaid.contains("  s1[\"quick<br/>(subsample)\"]\n"), "{mermaid}");
    assert!(mermaid.contains("  s1 -->|all| s3\n"), "{mermaid}");
}

/// The lab pipeline's quick variant, offline: tiny model, every 100th row, a few steps.
#[cfg(feature = "torch")]
#[test]
fn the_lab_pipeline_runs_offline_end_to_end() {
    let s = Sandbox::new();
    let model = crate::models::tiny_model().display().to_string();
    let data = shared("dialogsum").display().to_string();
    let sets = |extra: &[String]| -> Vec<String> {
        let mut v = vec!["run".to_string(), repo().join("pipelines/dialogsum-flan-t5.yaml").display().to_string()];
        for kv in [
            format!("model={model}"),
            format!("data={data}"),
            "subsample=100".into(),
            "max_steps=4".into(),
            "max_new_tokens=8".into(),
            "device=cpu".into(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        {
            v.push("--set".into());
            v.push(kv);
        }
        v
    };
    let run = |extra: &[String]| {
        let args = sets(extra);
        s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let first = run(&[]);
    assert!(first.stderr.contains("15 ran, 0 cached"), "{}", first.stderr);
    assert!(first.stdout.contains("report: ") && first.stdout.contains("report.html"), "{}", first.stdout);
    assert!(first.stdout.contains("== scores (score) =="), "{}", first.stdout);
    assert!(first.stdout.contains("Absolute percentage improvement over original_model_summaries"), "{}", first.stdout);
    assert!(first.stdout.contains("results: 15 rows"), "{}", first.stdout);

    // Everything cached the second time.
    let second = run(&[]);
    assert!(second.stderr.contains("0 ran, 15 cached"), "{}", second.stderr);

    // `sumflow score` on the results table reproduces the pipeline's scores.
    let audit = s.ok(&["audit", "latest"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(audit.stdout.split(':').next().unwrap()).unwrap()).unwrap();
    let digest = |id: &str, out: &str| {
        m["stages"].as_array().unwrap().iter().find(|x| x["id"] == id).unwrap()["outputs"][out]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let results = s.cache().join("artifacts").join(digest("results", "all")).join("table.parquet");
    let cli = score_lab_layout(&s, &results);
    let stage: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.cache().join("artifacts").join(digest("scores", "metrics")).join("metrics.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(means(&cli), means(&stage));

    // A new LoRA rank reruns only the LoRA branch: its training, generation, the join, the scores.
    let third = run(&["lora_r=8".to_string()]);
    let ran: Vec<&str> = third
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  ran   "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut ran = ran;
    ran.sort();
    assert_eq!(ran, ["lora", "peft", "peft-vs-full", "report", "results", "scores"], "{}", third.stderr);

    // The new report tells, stage by stage, what ran now and what came from the cache, with the
    // time and peak memory of the run that made each; and it plots ROUGE-1 by topic.
    let html = third.stdout.lines().find_map(|l| l.strip_prefix("report: ")).expect("the report's path");
    let dir = Path::new(html).parent().unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let row = |id: &str| {
        md.lines().find(|l| l.starts_with(&format!("| {id} |"))).unwrap_or_else(|| panic!("no row for {id}:\n{md}"))
    };
    assert!(md.contains("## Stages"), "{md}");
    for (id, how) in [("full", "cached"), ("instruct", "cached"), ("lora", "ran"), ("peft", "ran")] {
        let cells: Vec<&str> = row(id).split('|').map(str::trim).collect();
        assert_eq!(cells[3], how, "{}", row(id));
        let seconds: f64 = cells[4].trim_end_matches(" s").parse().unwrap();
        assert!(seconds > 0.0, "{}", row(id));
        let mb: f64 = cells[5].trim_end_matches(" MB").parse().unwrap_or_else(|_| panic!("{}", row(id)));
        assert!(mb > 10.0, "a training or generation stage holds a model: {}", row(id));
        // Where a model stage's time went: parts that add up to no more than the stage's time.
        let parts = cells[6].split("seconds: ").nth(1).unwrap_or_else(|| panic!("no time parts: {}", row(id)));
        let part = |name: &str| -> f64 {
            parts.split(", ").find_map(|p| p.strip_prefix(name)).map_or(0.0, |v| v.trim().parse().unwrap())
        };
        let named = if id == "full" || id == "lora" { "steps " } else { "generating " };
        assert!(part("loading ") > 0.0 && part(named) > 0.0, "{}", row(id));
        let sum: f64 =
            ["loading ", "steps ", "validation ", "checkpoints ", "saving ", "generating "].map(part).iter().sum();
        assert!(sum <= seconds + 0.02, "parts {sum} s in a {seconds} s stage: {}", row(id));
    }
    // Upstream of the report: load, 3 subsamples, 2 tokenizes, 2 trainings, 3 generates, the join.
    assert!(md.contains("12 stages upstream: 3 ran in this run"), "{md}");
    let topics = std::fs::read_to_string(dir.join("topics.svg")).unwrap();
    assert!(topics.contains("<svg") && topics.contains("ROUGE-1 by topic"), "{topics}");
}

#[test]
fn the_report_opens_in_chromium_and_is_not_blank() {
    let s = Sandbox::new();
    // (Its lock goes to the sandbox: tests leave the repository as it is.)
    let lock = s.path().join("lab-results.lock");
    let mut cmd = s.cmd(&["run", "pipelines/lab-results.yaml", "--lock", lock.to_str().unwrap()]);
    let out = cmd.current_dir(repo()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = stdout.lines().find_map(|l| l.strip_prefix("report: ")).expect("the report's path").to_string();
    let dir = Path::new(&html).parent().unwrap();
    for f in ["report.html", "report.md", "results.csv", "rouge.svg", "lengths.svg", "metrics.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("Absolute percentage improvement over original_model_summaries"));
    assert!(page.contains("0.4214 ["), "the full fine-tune's rouge1 is in the table");
    // `sumflow score` on the report's results.csv reproduces the report's numbers.
    let scored = score_lab_layout(&s, &dir.join("results.csv"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(means(&scored), means(&report));

    // Headless Chromium renders it; the screenshot has content (not one flat colour).
    let page = crate::common::chromium(&s, &format!("file://{html}"));
    assert!(page.ink > 0.01, "{:.4} of the pixels are not white: the page looks blank", page.ink);
    assert!(page.dom.contains("<h2 id=\"summary-lengths\">Summary lengths</h2>"), "{}", page.dom);
}

/// The keys of the lab-results pipeline's `load`, `subsample` and `score` stages, as they were
/// before the stages crate was reorganized (`sumflow plan --format json`): caches made before
/// it still hit.
#[test]
fn the_lab_results_cache_keys_stay_what_they_were() {
    let s = Sandbox::new();
    let mut cmd = s.cmd(&["plan", "pipelines/lab-results.yaml", "--format", "json"]);
    let out = cmd.current_dir(repo()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<(&str, &str)> =
        plans.as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap(), p["key"].as_str().unwrap())).collect();
    assert_eq!(
        keys[..4],
        [
            ("results", "78db18eadaaee2444dd4ead20a77787498a9207f32cde9b7247fa747e2005634"),
            ("quick", "6daabe91c1a64958fd19b261e77abc7aff2c69aad915722613f486d7ac0b7638"),
            ("scores", "fb0db00eb690727841c6c598a639d6cccddb2738de0c495067a96993b566f7a2"),
            ("quick-scores", "b3e168a510f2fa05bab9c08a16a85b163b3c9110019c7b40617d23868b80f228"),
        ]
    );
}

/// The lab pipeline states its execution settings once, in `defaults:`; every stage's cache key
/// is the one the pipeline had when each stage stated them (`tests/fixtures/`), so caches made
/// before the rewrite still hit. Checked offline (tiny model) and with a LoRA rank changed.
#[cfg(feature = "torch")]
#[test]
fn the_lab_pipelines_defaults_leave_every_cache_key_as_it_was() {
    let s = Sandbox::new();
    let model = crate::models::tiny_model().display().to_string();
    let data = shared("dialogsum").display().to_string();
    let keys = |file: &Path, extra: &str| -> Vec<(String, String)> {
        let sets = [format!("model={model}"), format!("data={data}"), "subsample=100".into(), extra.to_string()];
        let mut args = vec!["plan".to_string(), file.display().to_string(), "--format".into(), "json".into()];
        for kv in sets {
            args.extend(["--set".to_string(), kv]);
        }
        let out = s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let plans: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        plans
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap().into(), p["key"].as_str().unwrap().into()))
            .collect()
    };
    let today = repo().join("pipelines/dialogsum-flan-t5.yaml");
    let inline = repo().join("tests/fixtures/dialogsum-flan-t5-inline.yaml");
    for extra in ["epochs=1", "lora_r=8", "device=cpu"] {
        let (a, b) = (keys(&today, extra), keys(&inline, extra));
        assert_eq!(a.len(), 15);
        assert_eq!(a, b, "--set {extra}");
    }
    // The rewrite states each setting once.
    let text = std::fs::read_to_string(&today).unwrap();
    for setting in [
        "dtype: \"${train_dtype}\"",
        "dtype: \"${gen_dtype}\"",
        "bf16_weights: \"${bf16_weights}\"",
        "pad_to_multiple_of: \"${pad_to_multiple_of}\"",
        "max_new_tokens: \"${max_new_tokens}\"",
    ] {
        assert_eq!(text.matches(setting).count(), 1, "{setting}");
    }
}
