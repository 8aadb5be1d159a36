//! Training on several devices: `devices: 2` runs a training stage in two worker processes that
//! meet through a c10d store on 127.0.0.1 and sum their gradients over Gloo, each on its share of
//! every batch and each keeping half of the optimizer's state (ZeRO stage 1). Against one process on the same data and seed — with dropout off, since ranks
//! draw their own masks by design — the per-step losses agree within 1e-5 and the final weights
//! within 1e-4 (a tenth of one step's update at lr 1e-3; measured: 2e-5 after 6 steps, summation
//! order being all that differs), and the run is a cache hit for the other: `devices` is how a
//! stage runs, not what it computes.

use std::path::{Path, PathBuf};

use crate::common::{shared, Sandbox};
use crate::training::{artifact, losses};

/// The tiny test model with dropout off, in the sandbox.
pub fn without_dropout(s: &Sandbox) -> PathBuf {
    let dir = s.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(crate::models::tiny_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["dropout_rate"] = 0.0.into();
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// A pipeline training `kind` for 6 steps on 24 DialogSum rows, on `devices` processes.
fn pipeline(s: &Sandbox, model: &Path, kind: &str, extra: &str, devices: usize) {
    s.write(
        "p.yaml",
        format!(
            "name: dp\nstages:\n  data: {{kind: load, path: {data}}}\n  rows: {{kind: subsample, input: data.train, n: 24, seed: 2}}\n  tokens: {{kind: tokenize, input: rows, model: {m}, max_source_tokens: 256}}\n  train: {{kind: {kind}, train: tokens, model: {m}, device: cpu, batch_tokens: 2048, max_steps: 6, lr: 0.001, checkpoint_every: 0, devices: {devices}{extra}}}\n",
            data = shared("dialogsum").display(),
            m = model.display()
        ),
    );
}

/// Trains on one process and on two, each in a sandbox (and cache) of its own.
fn one_and_two(kind: &str, extra: &str) -> [Sandbox; 2] {
    [1, 2].map(|devices| {
        let s = Sandbox::new();
        let model = without_dropout(&s);
        pipeline(&s, &model, kind, extra, devices);
        s.ok(&["run", "p.yaml"]);
        s
    })
}

/// Loads `adapter` onto `model` with PEFT and counts its tensors that hold the file's values.
const PEFT_LOAD: &str = r#"
import sys, torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import T5ForConditionalGeneration
model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(sys.argv[1]), sys.argv[2])
state = model.state_dict()
saved = load_file(sys.argv[2] + "/adapter_model.safetensors")
same = sum(torch.equal(state[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
print(f"{same} of {len(saved)}")
"#;

/// The figures the last run's manifest records for stage `train`.
fn train_stats(s: &Sandbox) -> serde_json::Value {
    let manifest = std::fs::read_to_string(s.ok(&["audit", "latest"]).stdout.split(':').next().unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["stages"].as_array().unwrap().iter().find(|s| s["id"] == "train").unwrap()["stats"].clone()
}

fn assert_same_training(kind: &str, extra: &str, output: &str, weights: &str, tolerance: f64) -> [Sandbox; 2] {
    let [one, two] = one_and_two(kind, extra);
    let (a, b) = (artifact(&one, "train", output), artifact(&two, "train", output));
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 6, "{la:?}");
    for ((step, x), (_, y)) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5, "step {step}: one process {x}, two ranks {y}");
    }
    let differences = sumflow_stages::tools::weight_differences(&a.join(weights), &b.join(weights)).unwrap();
    let (worst, largest) =
        differences.iter().fold(("", 0.0f64), |w, (n, d)| if *d > w.1 { (n.as_str(), *d) } else { w });
    assert!(largest <= tolerance, "{kind}: {worst} differs by {largest:e}");
    // The manifest says how it ran; the other way of running it is a cache hit.
    let (single, train) = (train_stats(&one), train_stats(&two));
    // Recorded by the stage once the two ranks met: it did run as two.
    assert_eq!(train["devices"], 2.0);
    assert!(train["collective_seconds"].as_f64().unwrap() > 0.0);
    // Each rank keeps half the optimizer's state (its slice of the moments; a slice may hold
    // one padding element).
    let (whole, half) = (single["optimizer_state_mb"].as_f64().unwrap(), train["optimizer_state_mb"].as_f64().unwrap());
    assert!(
        whole > 0.0 && (half * 2.0 - whole).abs() <= 16e-6,
        "{kind}: one process {whole} MB, each of two ranks {half} MB"
    );
    let model = two.path().join("m");
    pipeline(&two, &model, kind, extra, 1);
    let again = two.ok(&["run", "p.yaml"]);
    assert!(again.stderr.contains("dp: 4 stages, 4 cached, 0 to run"), "{}", again.stderr);
    [one, two]
}

#[test]
fn full_fine_tuning_on_two_ranks_is_one_process_s() {
    assert_same_training("train-full", "", "model", "model.safetensors", 1e-4);
}

#[test]
fn lora_on_two_ranks_is_one_process_s() {
    let [_, two] = assert_same_training(
        "train-lora",
        ", lora: {r: 4, alpha: 8, dropout: 0.0}",
        "adapter",
        "adapter_model.safetensors",
        1e-4,
    );
    // The adapter the two ranks wrote loads in PEFT, every tensor as written.
    let adapter = artifact(&two, "train", "adapter");
    let out = std::process::Command::new(crate::common::venv_bin("python"))
        .args(["-c", PEFT_LOAD, two.path().join("m").to_str().unwrap(), adapter.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let (same, all) = said.trim().split_once(" of ").unwrap();
    assert_eq!(same, all, "{said}");
    assert!(all.parse::<usize>().unwrap() > 0, "{said}");
}

#[test]
fn devices_is_refused_where_a_stage_runs_on_one() {
    let s = Sandbox::new();
    s.write(
        "p.yaml",
        format!(
            "name: dp\nstages:\n  data: {{kind: load, path: {}}}\n  rows: {{kind: subsample, input: data.train, n: 4, devices: 2}}\n  more: {{kind: subsample, input: data.train, n: 4}}\n",
            shared("dialogsum").display()
        ),
    );
    let out = s.run(&["validate", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "stages.rows.devices: `subsample` runs on one device (`devices:` is for train-full, train-lora and generate)"
        ),
        "{}",
        out.stderr
    );
}

/// A rank killed mid-run (SIGKILL, as the out-of-memory killer sends): the stage fails at once,
/// naming the rank and how it died, the other rank is stopped, the last checkpoint (the ranks'
/// sharded moments gathered) is kept, and the next run resumes from it and finishes with the
/// losses of a run never interrupted.
#[test]
fn a_rank_killed_mid_run_fails_the_stage_naming_it_and_the_rerun_resumes() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let forty_steps = |s: &Sandbox| {
        let model = without_dropout(s);
        pipeline(s, &model, "train-full", "", 2);
        let text = std::fs::read_to_string(s.path().join("p.yaml"))
            .unwrap()
            .replace("max_steps: 6", "max_steps: 40")
            .replace("checkpoint_every: 0", "checkpoint_every: 2");
        s.write("p.yaml", text);
    };
    let s = Sandbox::new();
    forty_steps(&s);
    let mut runner = s.cmd(&["run", "p.yaml"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while crate::training::latest_checkpoint(&s).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The runner's two workers; rank 1 started second.
    let pgrep = std::process::Command::new("pgrep")
        .args(["-P", &runner.id().to_string(), "-f", "sumflow-worker stage train"])
        .output()
        .unwrap();
    let mut pids: Vec<u32> =
        String::from_utf8_lossy(&pgrep.stdout).split_whitespace().map(|p| p.parse().unwrap()).collect();
    pids.sort();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let killed = Instant::now();
    std::process::Command::new("kill").args(["-KILL", &pids[1].to_string()]).status().unwrap();
    let status = runner.wait().unwrap();
    let settled = killed.elapsed();
    let mut stderr = String::new();
    runner.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(settled < Duration::from_secs(10), "the stage took {settled:?} to fail");
    let at = stderr.find("  FAIL  train (train-full)").unwrap_or_else(|| panic!("{stderr}"));
    let report: Vec<&str> = stderr[at..].lines().skip(1).take(2).collect();
    assert_eq!(
        report,
        ["        error: rank 1 of 2 failed", "        caused by: its worker process died (signal: 9 (SIGKILL))"],
        "{stderr}"
    );
    let kept = crate::training::latest_checkpoint(&s).expect("the checkpoint is kept");
    // The rerun resumes from it (the plan says so) and finishes the 40 steps.
    let again = s.ok(&["run", "p.yaml"]);
    assert!(again.stdout.contains("train: 40 steps"), "{}\n{}", again.stdout, kept);
    let step: u64 = kept.trim_start_matches("ckpt-").parse().unwrap();
    assert!(step >= 2, "{kept}");
    let uninterrupted = Sandbox::new();
    forty_steps(&uninterrupted);
    uninterrupted.ok(&["run", "p.yaml"]);
    let resumed = losses(&artifact(&s, "train", "model"));
    let straight = losses(&artifact(&uninterrupted, "train", "model"));
    assert_eq!(resumed.len(), 40);
    for ((n, x), (_, y)) in resumed.iter().zip(&straight) {
        assert!((x - y).abs() <= 1e-6, "step {n} (resumed after step {step}): {x} against {y}");
    }
}

/// `generate` on two ranks: the distinct dialogues dealt out between them, gathered back in row
/// order — the same predictions as one process, file for file (the artifact's digest).
#[test]
fn generate_on_two_ranks_makes_one_process_s_predictions() {
    let [one, two] = [1, 2].map(|devices| {
        let s = Sandbox::new();
        s.write(
            "p.yaml",
            format!(
                "name: gen\nstages:\n  data: {{kind: load, path: {}}}\n  few: {{kind: subsample, input: data.test, every: 10}}\n  gen: {{kind: generate, input: few, model: {}, device: cpu, max_new_tokens: 12, devices: {devices}}}\n",
                shared("dialogsum").display(),
                crate::models::tiny_model().display()
            ),
        );
        let out = s.ok(&["run", "p.yaml"]);
        assert!(out.stdout.contains("gen: 150 predictions"), "{}", out.stdout);
        let manifest = std::fs::read_to_string(s.ok(&["audit", "latest"]).stdout.split(':').next().unwrap()).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        let gen = manifest["stages"].as_array().unwrap().iter().find(|s| s["id"] == "gen").unwrap().clone();
        (s, gen)
    });
    assert_eq!(two.1["stats"]["devices"], 2.0, "the stage ran as two ranks");
    assert_eq!(one.1["stats"]["dialogues"], two.1["stats"]["dialogues"]);
    assert_eq!(one.1["outputs"]["predictions"]["digest"], two.1["outputs"]["predictions"]["digest"]);
}
