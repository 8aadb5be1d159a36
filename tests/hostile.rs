//! What a careless or hostile user does to the runner and the cache, through the binary: a
//! data file rewritten while `load` reads it, `--force` over a damaged upstream output, a
//! garbled index entry, a read-only cache, a closed pipe, a 30,000-word ROUGE pair, an audit
//! that reruns stages from a relative cache. (Model-stage cases are in `models` and
//! `training`; pipeline-file cases in `validate`.)

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{lab_results, shared, Sandbox};

/// The latest manifest, as JSON.
fn latest(s: &Sandbox) -> serde_json::Value {
    let runs = s.cache().join("runs");
    let mut names: Vec<_> = std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    serde_json::from_str(&std::fs::read_to_string(names.last().unwrap()).unwrap()).unwrap()
}

/// The artifact folder of `stage`'s output `output` in the latest run.
fn artifact(s: &Sandbox, stage: &str, output: &str) -> std::path::PathBuf {
    let m = latest(s);
    let st = m["stages"].as_array().unwrap().iter().find(|x| x["id"] == stage).unwrap();
    s.cache().join("artifacts").join(st["outputs"][output]["digest"].as_str().unwrap())
}

/// A pipeline over the lab's results file: load, a subsample, and a score of the subsample.
fn small_lab(results: &str) -> String {
    format!(
        "name: lab\nstages:\n  results: {{kind: load, path: {results}}}\n  quick: {{kind: subsample, input: results, every: 10}}\n  scores: {{kind: score, input: quick, references: human_baseline_summaries, predictions: [peft_model_summaries], bootstrap: 50}}\n"
    )
}

/// Item 2: a CSV rewritten in place while `load` reads it. Each attempt rewrites it at another
/// moment of the run; whenever the rewrite lands while the file is read, the run fails naming
/// the file, and never does a key name one version while its output holds the other: after
/// every attempt `cache verify` and `audit` pass, and whatever is cached for the file as it is
/// now equals a clean run's output.
#[test]
fn a_file_rewritten_while_it_is_loaded_is_never_cached_under_the_wrong_key() {
    let s = Sandbox::new();
    // Two versions of a 34 MB file (DialogSum's train split three times, ids made unique),
    // differing in one dialogue.
    let mut reader = csv::Reader::from_path(shared("dialogsum/train.csv")).unwrap();
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(reader.headers().unwrap()).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    for copy in 0..3 {
        for row in &rows {
            let id = format!("{copy}-{}", &row[0]);
            writer.write_record(std::iter::once(id.as_str()).chain(row.iter().skip(1))).unwrap();
        }
    }
    let base = String::from_utf8(writer.into_inner().unwrap()).unwrap();
    // Each attempt writes a version never seen before (a cached version would be a hit, and
    // nothing would read the file).
    let version = |k: usize| format!("{base}extra-{k},#Person1#: Hello {k}.,A greeting {k}.,greeting\n");
    let clean = |text: &str| {
        let c = Sandbox::new();
        c.write("big.csv", text);
        c.write("p.yaml", "name: big\nstages:\n  data: {kind: load, path: big.csv, require: [summary]}\n");
        c.ok(&["run", "p.yaml"]);
        artifact(&c, "data", "all").file_name().unwrap().to_string_lossy().into_owned()
    };
    s.write("big.csv", version(0));
    s.write("p.yaml", "name: big\nstages:\n  data: {kind: load, path: big.csv, require: [summary]}\n");
    let mut refused = 0;
    // From before the file is hashed to after the stage has read it (seconds, in a debug build).
    for (k, delay) in [5u64, 400, 1200, 2500].into_iter().enumerate() {
        // A version no run has seen, then, while the run goes on, another one: in place (the
        // same inode, new bytes).
        std::fs::write(s.path().join("big.csv"), version(2 * k + 1)).unwrap();
        let child = s.cmd(&["run", "p.yaml"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let now = version(2 * k + 2);
        std::fs::write(s.path().join("big.csv"), &now).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(stderr.contains("big.csv changed while it was being read"), "{stderr}");
            refused += 1;
        }
        s.ok(&["cache", "verify"]);
        s.ok(&["audit", "latest"]);
        // What the cache holds for the file as it is now is that version's clean output.
        let rerun = s.ok(&["run", "p.yaml"]);
        assert_eq!(artifact(&s, "data", "all").file_name().unwrap().to_string_lossy(), clean(&now), "{}", rerun.stderr);
    }
    assert!(refused > 0, "no rewrite landed while the file was read");
}

/// Item 3: `--force` on a stage whose input's cached output is damaged recomputes that input
/// first and never consumes it; verify and audit report the truth before and after, and the
/// forced stage's output is a clean run's.
#[test]
fn force_over_a_damaged_upstream_output_recomputes_it_instead_of_consuming_it() {
    let s = Sandbox::new();
    s.write("p.yaml", small_lab(&lab_results()));
    s.ok(&["run", "p.yaml"]);
    let clean_scores = artifact(&s, "scores", "metrics");
    let quick = artifact(&s, "quick", "all");
    let mut bytes = std::fs::read(quick.join("table.parquet")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x20;
    std::fs::write(quick.join("table.parquet"), bytes).unwrap();
    // Both name the damage.
    let verify = s.run(&["cache", "verify"]);
    assert_eq!(verify.code, 1);
    assert!(verify.stderr.contains("quick.all") && verify.stderr.contains("is corrupted"), "{}", verify.stderr);
    assert!(s.run(&["audit", "latest"]).stderr.contains("quick.all:"), "audit names the damaged output");
    // The plan says why `quick` runs again.
    let plan = s.ok(&["plan", "p.yaml", "--force", "scores"]).stdout;
    assert!(plan.contains("its cached output `all` is damaged"), "{plan}");
    let out = s.ok(&["run", "p.yaml", "--force", "scores"]);
    assert!(
        out.stderr.contains("ran   quick (subsample)") && out.stderr.contains("ran   scores (score)"),
        "{}",
        out.stderr
    );
    assert_eq!(artifact(&s, "scores", "metrics"), clean_scores, "the same scores as before the damage");
    s.ok(&["cache", "verify"]);
    s.ok(&["audit", "latest"]);
    // Nothing good was left unreferenced for gc to take: everything is still a hit.
    s.ok(&["cache", "gc"]);
    assert!(s.ok(&["run", "p.yaml"]).stderr.contains("3 cached, 0 to run"));
}

/// Item 12: a garbled index entry stops runs with a pointer to `cache verify --repair`, which
/// removes it; the next run recomputes that stage.
#[test]
fn a_garbled_entry_is_repaired_by_verify() {
    let s = Sandbox::new();
    s.write("p.yaml", small_lab(&lab_results()));
    s.ok(&["run", "p.yaml"]);
    let key = latest(&s)["stages"][1]["key"].as_str().unwrap().to_string();
    let entry = s.cache().join("index").join(format!("{key}.json"));
    std::fs::write(&entry, "{\"key\": ").unwrap();
    let out = s.run(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "error: {}: not a sumflow cache entry (run `sumflow cache verify --repair`)",
            entry.display()
        )),
        "{}",
        out.stderr
    );
    let verify = s.run(&["cache", "verify"]);
    assert_eq!(verify.code, 1);
    assert!(verify.stderr.contains(&format!("index/{key}.json: unreadable")), "{}", verify.stderr);
    let repair = s.ok(&["cache", "verify", "--repair"]);
    assert!(repair.stdout.contains("repaired: removed 1 damaged files and folders"), "{}", repair.stdout);
    s.ok(&["cache", "verify"]);
    let rerun = s.ok(&["run", "p.yaml"]);
    assert!(rerun.stderr.contains("ran   quick (subsample)"), "{}", rerun.stderr);
}

/// Item 12: an all-hit `--frozen` run, `plan`, `audit` and `exp` work on a cache mounted read-only
/// (a bind mount in a user namespace of its own, as CI systems mount caches).
#[test]
fn read_only_uses_work_on_a_read_only_cache() {
    let s = Sandbox::new();
    s.write("p.yaml", small_lab(&lab_results()));
    s.ok(&["run", "p.yaml"]);
    let bin = env!("CARGO_BIN_EXE_sumflow");
    let cache = s.cache();
    let script = format!(
        "set -e; mount --bind {c} {c}; mount -o remount,bind,ro {c}; \
         touch {c}/probe 2>/dev/null && {{ echo 'the mount is writable'; exit 3; }}; \
         {bin} run p.yaml --frozen; {bin} plan p.yaml; {bin} audit latest; {bin} audit latest --reproduce scores; \
         {bin} exp show --format csv; {bin} exp diff latest latest",
        c = cache.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .current_dir(s.path())
        .env("SUMFLOW_CACHE", &cache)
        .output()
        .expect("unshare (util-linux)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("3 cached, 0 to run") && stderr.contains("cannot be written: no run manifest kept"),
        "{stderr}"
    );
    assert!(stdout.contains("0 of 3 stages would run") && stdout.contains("all 3 artifacts match"), "{stdout}");
    assert!(stdout.contains("reproduced bit-exactly"), "{stdout}");
    assert!(stdout.contains("\nrun,started,pipeline,status,rouge1 peft_model_summaries\n"), "{stdout}");
    assert!(stdout.contains("vars: the same\nstages whose keys differ: none\nscores: the same\n"), "{stdout}");
}

/// Item 10: a reader that closes the pipe early ends the command quietly.
#[test]
fn a_closed_pipe_ends_commands_quietly() {
    let s = Sandbox::new();
    s.write("p.yaml", small_lab(&lab_results()));
    s.ok(&["run", "p.yaml"]);
    for args in [&["stages"][..], &["cache", "ls"], &["graph", "p.yaml"]] {
        let mut child = s.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let status = child.wait().unwrap();
        assert_eq!((status.code(), stderr.as_str()), (Some(0), ""), "{args:?}");
    }
}

/// Item 8: ROUGE of one 30,000-word pair (rouge_score's table would take 3.6 GB; the old one
/// aborted at 100,000 words) runs in little memory.
#[test]
fn rouge_of_a_very_long_pair_runs_in_little_memory() {
    let s = Sandbox::new();
    let words: Vec<String> = (0..30_000u64).map(|i| format!("w{}", (i * 7919 + i / 3) % 997)).collect();
    let other: Vec<String> = (0..30_000u64).map(|i| format!("w{}", (i * 104_729 + i / 5) % 997)).collect();
    s.write("long.csv", format!("id,ref,pred\n1,{},{}\n", words.join(" "), other.join(" ")));
    s.write(
        "p.yaml",
        "name: long\nstages:\n  t: {kind: load, path: long.csv}\n  s: {kind: score, input: t, references: ref, predictions: [pred], bootstrap: 20}\n",
    );
    // The process's own footprint (libtorch included), from a short pair.
    s.write("short.csv", "id,ref,pred\n1,a b c,a c\n");
    s.write(
        "short.yaml",
        "name: short\nstages:\n  t: {kind: load, path: short.csv}\n  s: {kind: score, input: t, references: ref, predictions: [pred], bootstrap: 20}\n",
    );
    s.ok(&["run", "short.yaml"]);
    let base = latest(&s)["stages"][1]["stats"]["peak_rss_mb"].as_f64().unwrap();
    s.ok(&["run", "p.yaml"]);
    let m = latest(&s);
    let peak = m["stages"][1]["stats"]["peak_rss_mb"].as_f64().unwrap();
    assert!(peak - base < 100.0, "scoring a 30,000-word pair took {:.0} MB more than a short one", peak - base);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(artifact(&s, "s", "metrics").join("metrics.json")).unwrap())
            .unwrap();
    let l = metrics["models"][0]["scores"]["rougeL"]["mean"].as_f64().unwrap();
    assert!(l > 0.0 && l < 1.0, "{l}");
}

/// Item 13: `audit --reproduce` of every stage of the shipped lab-results pipeline, with the
/// cache given as a relative path (as `./cache`, the default, is).
#[test]
fn audit_reproduces_every_stage_of_the_shipped_example_from_a_relative_cache() {
    let s = Sandbox::new();
    let pipeline = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/lab-results.yaml");
    let text = std::fs::read_to_string(pipeline)
        .unwrap()
        .replace("../shared/data/lab-results/dialogue-summary-training-results.csv", &lab_results());
    s.write("lab-results.yaml", text);
    let relative = |args: &[&str]| {
        let out = s.cmd(args).env("SUMFLOW_CACHE", "cache").output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{args:?}:\n{stdout}\n{stderr}");
        stdout.into_owned()
    };
    relative(&["run", "lab-results.yaml"]);
    for stage in ["results", "quick", "scores", "quick-scores", "report"] {
        let out = relative(&["audit", "latest", "--reproduce", stage]);
        assert!(out.contains(&format!("stage `{stage}` of run")) && out.contains("reproduced bit-exactly"), "{out}");
    }
}
