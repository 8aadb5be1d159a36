//! Several machines through torchrun, played by two torchrun commands on 127.0.0.1
//! (`--nnodes 2 --node-rank 0|1`, one process each, each with a sandbox of its own as a machine
//! would have): rank 0 runs the pipeline, rank 1 joins its training stages, and they give one
//! process's losses and weights (dropout off; the tolerances of `distributed`). A rank whose
//! pipeline differs is refused when the ranks meet, naming both keys.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{aborting_worker, shared, venv_bin, Sandbox};
use crate::distributed::without_dropout;
use crate::training::{artifact, losses};

/// The quick lab's training stages on 24 rows, 6 steps each; `lr` for the full fine-tune.
fn pipeline(s: &Sandbox, model: &Path, lr: &str) {
    let train = |id: &str, kind: &str, lr: &str, extra: &str| {
        format!(
            "  {id}: {{kind: {kind}, train: tokens, model: {m}, device: cpu, batch_tokens: 2048, max_steps: 6, lr: {lr}, checkpoint_every: 0{extra}}}\n",
            m = model.display()
        )
    };
    s.write(
        "p.yaml",
        format!(
            "name: tr\nstages:\n  data: {{kind: load, path: {data}}}\n  rows: {{kind: subsample, input: data.train, n: 24, seed: 2}}\n  tokens: {{kind: tokenize, input: rows, model: {m}, max_source_tokens: 256}}\n{full}{lora}",
            data = shared("dialogsum").display(),
            m = model.display(),
            full = train("full", "train-full", lr, ""),
            lora = train("lora", "train-lora", "0.001", ", lora: {r: 4, alpha: 8, dropout: 0.0}"),
        ),
    );
}

/// `torchrun … --node-rank NODE … sumflow run p.yaml` in `s`, started.
fn torchrun(s: &Sandbox, node: usize, port: u16) -> std::process::Child {
    let mut command = Command::new(venv_bin("python"));
    if let Some(worker) = s.path().join("worker.sh").exists().then(|| s.path().join("worker.sh")) {
        command.env("SUMFLOW_WORKER", worker);
    }
    command
        .args(["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"])
        .arg(format!("--node-rank={node}"))
        .args(["--master-addr=127.0.0.1", &format!("--master-port={port}"), "--no-python"])
        .args([env!("CARGO_BIN_EXE_sumflow"), "run", "--lock", "run.lock", "p.yaml"])
        .current_dir(s.path())
        .env("SUMFLOW_CACHE", s.cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the two nodes to the end: node 0's output, node 1's. A sandbox's `worker.sh`, if it has
/// one, is its node's worker.
fn two_nodes(node0: &Sandbox, node1: &Sandbox) -> [Output; 2] {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children = [torchrun(node0, 0, port), torchrun(node1, 1, port)];
    // Both read at once: neither blocks on a full pipe while the other waits for it.
    let waits = children.map(|c| std::thread::spawn(move || c.wait_with_output().unwrap()));
    waits.map(|w| w.join().unwrap())
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn two_torchrun_nodes_train_as_one_process() {
    let (node0, node1) = two_machines("0.001", "0.001");
    let one = Sandbox::new();
    pipeline(&one, &node0.path().join("m"), "0.001");
    let [out0, out1] = two_nodes(&node0, &node1);
    let (stderr0, stderr1) = (text(&out0.stderr), text(&out1.stderr));
    assert!(out0.status.success(), "{}\n{stderr0}\n{stderr1}", text(&out0.stdout));
    assert!(out1.status.success(), "{stderr1}");
    assert!(stderr0.contains("rank 0 of 2: running tr; distributed stages on all 2 ranks"), "{stderr0}");
    let mut said: Vec<&str> = stderr1.lines().filter(|l| l.starts_with("rank 1 of 2")).collect();
    // The two training stages are independent: rank 0 runs them one at a time, either first.
    if let Some(middle) = said.get_mut(1..3) {
        middle.sort();
    }
    assert_eq!(
        said,
        [
            "rank 1 of 2: joining rank 0's distributed stages",
            "rank 1 of 2: full (train-full)",
            "rank 1 of 2: lora (train-lora)",
            "rank 1 of 2: done"
        ],
        "{stderr1}"
    );
    assert_eq!(stats(&node0, "full")["devices"], 2.0);
    assert_eq!(stats(&node0, "lora")["devices"], 2.0);
    one.ok(&["run", "p.yaml"]);
    for (stage, output, weights) in
        [("full", "model", "model.safetensors"), ("lora", "adapter", "adapter_model.safetensors")]
    {
        let (a, b) = (artifact(&one, stage, output), artifact(&node0, stage, output));
        let (la, lb) = (losses(&a), losses(&b));
        assert_eq!(la.len(), 6, "{la:?}");
        for ((step, x), (_, y)) in la.iter().zip(&lb) {
            assert!((x - y).abs() <= 1e-5, "{stage} step {step}: one process {x}, torchrun {y}");
        }
        let differences = sumflow_stages::tools::weight_differences(&a.join(weights), &b.join(weights)).unwrap();
        let largest = differences.iter().map(|(_, d)| *d).fold(0.0f64, f64::max);
        assert!(largest <= 1e-4, "{stage}: weights differ by {largest:e}");
    }
    // Rank 1 wrote nothing of its own: rank 0 owns the cache.
    assert_eq!(node1.entries(), 0);
}

/// A stage's figures in the sandbox's latest manifest.
fn stats(s: &Sandbox, stage: &str) -> serde_json::Value {
    let manifest = std::fs::read_to_string(s.ok(&["audit", "latest"]).stdout.split(':').next().unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["stages"].as_array().unwrap().iter().find(|x| x["id"] == stage).unwrap()["stats"].clone()
}

/// The first 12 characters of stage `stage`'s key in `s`'s plan.
fn short_key(s: &Sandbox, stage: &str) -> String {
    let plan: serde_json::Value = serde_json::from_str(&s.ok(&["plan", "--format", "json", "p.yaml"]).stdout).unwrap();
    let stages = plan["stages"].as_array().or(plan.as_array()).unwrap().clone();
    let key = stages.iter().find(|x| x["id"] == stage).unwrap()["key"].as_str().unwrap().to_string();
    key[..12].to_string()
}

/// Two "machines" with the pipeline, the full fine-tune at lr `lr0` on node 0 and `lr1` on
/// node 1, and the base model where both find it.
fn two_machines(lr0: &str, lr1: &str) -> (Sandbox, Sandbox) {
    let (node0, node1) = (Sandbox::new(), Sandbox::new());
    let model = without_dropout(&node0);
    pipeline(&node0, &model, lr0);
    pipeline(&node1, &model, lr1);
    (node0, node1)
}

#[test]
fn a_rank_whose_pipeline_differs_is_refused_when_the_ranks_meet() {
    let (node0, node1) = two_machines("0.001", "0.002");
    let (key0, key1) = (short_key(&node0, "full"), short_key(&node1, "full"));
    assert_ne!(key0, key1);
    let [out0, out1] = two_nodes(&node0, &node1);
    let (stderr0, stderr1) = (text(&out0.stderr), text(&out1.stderr));
    assert!(!out0.status.success() && !out1.status.success(), "{stderr0}\n{stderr1}");
    let version = env!("CARGO_PKG_VERSION");
    let refusal = format!(
        "rank 1 runs sumflow {version}, stage key {key1} and rank 0 sumflow {version}, stage key {key0}: every rank must run the same sumflow on the same pipeline"
    );
    let at = stderr0.find("  FAIL  full (train-full)").unwrap_or_else(|| panic!("{stderr0}"));
    let report: Vec<&str> = stderr0[at..].lines().skip(1).take(1).collect();
    assert_eq!(report, [format!("        error: distributed: {refusal}")], "{stderr0}");
    assert!(stderr1.contains(&format!("error: distributed: {refusal}")), "{stderr1}");
    // The stage both ranks agree on still ran.
    assert!(stderr0.contains("  ran   lora (train-lora)"), "{stderr0}");
}

/// Rank 0's stage fails before the ranks meet (its worker killed by SIGABRT as it starts): the
/// other rank, waiting to meet, is told at once and fails the stage naming rank 0 and why —
/// not after the 300 s the ranks wait for each other — and the next stage runs on both.
#[test]
fn a_stage_that_fails_on_rank_0_before_the_ranks_meet_fails_at_once_on_the_others() {
    let (node0, node1) = two_machines("0.001", "0.001");
    aborting_worker(&node0, "worker.sh", "full");
    let t0 = std::time::Instant::now();
    let [out0, out1] = two_nodes(&node0, &node1);
    let took = t0.elapsed();
    let (stderr0, stderr1) = (text(&out0.stderr), text(&out1.stderr));
    assert!(!out0.status.success() && !out1.status.success(), "{stderr0}\n{stderr1}");
    assert!(took < std::time::Duration::from_secs(120), "took {took:?}");
    let at = stderr0.find("  FAIL  full (train-full)").unwrap_or_else(|| panic!("{stderr0}"));
    let report: Vec<&str> = stderr0[at..].lines().skip(1).take(1).collect();
    assert_eq!(report, ["        error: its worker process died (signal: 6 (SIGABRT))"], "{stderr0}");
    assert!(
        stderr1.contains("error: distributed: rank 0 failed: its worker process died (signal: 6 (SIGABRT))"),
        "{stderr1}"
    );
    assert!(stderr0.contains("  ran   lora (train-lora)"), "{stderr0}");
}
