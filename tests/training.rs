//! Training through the binary (tiny model, real DialogSum rows, CPU): the loss falls for both
//! methods, a killed run resumes exactly, and SIGKILLs during checkpoint writes leave a stage
//! that finishes with the same weights as an uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{shared, Sandbox};

fn pipeline(s: &Sandbox, train: &str) {
    let model = crate::models::tiny_model();
    s.write(
        "p.yaml",
        format!(
            "name: train\nstages:\n  data: {{kind: load, path: {}}}\n  rows: {{kind: subsample, input: data.train, n: 24, seed: 2}}\n  tokens: {{kind: tokenize, input: rows, model: {m}, max_source_tokens: 256}}\n{train}",
            shared("dialogsum").display(),
            m = model.display()
        ),
    );
}

/// (step, loss) of a training artifact's loss curve.
pub fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("training/losses.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect()
}

/// The artifact folder of output `output` of stage `stage` in the latest run.
pub fn artifact(s: &Sandbox, stage: &str, output: &str) -> PathBuf {
    let audit = s.ok(&["audit", "latest"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(audit.stdout.split(':').next().unwrap()).unwrap()).unwrap();
    let st = m["stages"].as_array().unwrap().iter().find(|x| x["id"] == stage).unwrap();
    s.cache().join("artifacts").join(st["outputs"][output]["digest"].as_str().unwrap())
}

/// A training stage `id` of `kind` on the tiny model, with extra params.
fn stage(extra: &str, kind: &str, id: &str) -> String {
    format!(
        "  {id}: {{kind: {kind}, train: tokens, model: {}, device: cpu, batch_tokens: 1024, {extra}}}\n",
        crate::models::tiny_model().display()
    )
}

#[test]
fn loss_falls_over_50_steps_for_both_methods() {
    let s = Sandbox::new();
    let stages = stage("max_steps: 50, lr: 0.001, checkpoint_every: 0", "train-full", "full")
        + &stage("max_steps: 50, lr: 0.005, checkpoint_every: 0, lora: {r: 8, alpha: 16}", "train-lora", "lora");
    pipeline(&s, &stages);
    let out = s.ok(&["run", "p.yaml"]);
    assert!(out.stdout.contains("trainable model parameters: 4310016 of 4310016 (100.00%)"), "{}", out.stdout);
    for (id, output) in [("full", "model"), ("lora", "adapter")] {
        let l = losses(&artifact(&s, id, output));
        assert_eq!(l.len(), 50);
        let mean = |xs: &[(u64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
        let (first, last) = (mean(&l[..10]), mean(&l[40..]));
        assert!(last < first * 0.9, "{id}: loss {first:.3} → {last:.3}");
    }
    let adapter = artifact(&s, "lora", "adapter");
    assert!(adapter.join("adapter_model.safetensors").is_file() && adapter.join("adapter_config.json").is_file());
}

#[test]
fn packed_training_learns_and_keeps_unpacked_cache_keys() {
    // Several dialogues per row (`pack`), both methods, on DialogSum rows: the loss falls as
    // unpacked training's does. Leaving `pack` out keeps the recipe of runs from before it.
    let s = Sandbox::new();
    let stages = stage("max_steps: 40, lr: 0.001, checkpoint_every: 0, pack: true", "train-full", "full")
        + &stage("max_steps: 40, lr: 0.005, checkpoint_every: 0, pack: true", "train-lora", "lora")
        + &stage("max_steps: 40, lr: 0.001, checkpoint_every: 0, pack: false", "train-full", "unpacked");
    pipeline(&s, &stages);
    s.ok(&["run", "p.yaml"]);
    let mean = |xs: &[(u64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
    for (id, output) in [("full", "model"), ("lora", "adapter"), ("unpacked", "model")] {
        let l = losses(&artifact(&s, id, output));
        assert_eq!(l.len(), 40, "{id}");
        let (first, last) = (mean(&l[..8]), mean(&l[32..]));
        assert!(last < first * 0.9, "{id}: loss {first:.3} → {last:.3}");
    }
    let (packed, unpacked) = (losses(&artifact(&s, "full", "model")), losses(&artifact(&s, "unpacked", "model")));
    let (a, b) = (mean(&packed[32..]), mean(&unpacked[32..]));
    assert!((a - b).abs() < 0.15 * b, "steps 33-40: packed {a:.3}, unpacked {b:.3}");
    // `pack: false` is the recipe without the field.
    let keys = |s: &Sandbox| s.ok(&["plan", "p.yaml"]).stdout;
    let planned = keys(&s);
    pipeline(&s, &stages.replace(", pack: false", ""));
    assert_eq!(keys(&s), planned);
}

fn run_until_killed(s: &Sandbox, until: impl Fn(&Sandbox) -> bool, limit: Duration) -> bool {
    let mut child = s.cmd(&["run", "p.yaml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if until(s) || t0.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn latest_checkpoint(s: &Sandbox) -> Option<String> {
    let work = s.cache().join("work");
    std::fs::read_dir(work).ok()?.flatten().find_map(|e| std::fs::read_to_string(e.path().join("latest")).ok())
}

#[test]
fn a_killed_run_resumes_exactly() {
    let train = stage("max_steps: 20, lr: 0.001, checkpoint_every: 10", "train-full", "full");
    let straight = Sandbox::new();
    pipeline(&straight, &train);
    straight.ok(&["run", "p.yaml"]);
    let want = artifact(&straight, "full", "model");

    let s = Sandbox::new();
    pipeline(&s, &train);
    assert!(
        run_until_killed(&s, |s| latest_checkpoint(s).as_deref() == Some("ckpt-10"), Duration::from_secs(300)),
        "killed"
    );
    assert_eq!(latest_checkpoint(&s).as_deref(), Some("ckpt-10"));
    s.ok(&["run", "p.yaml"]);
    let got = artifact(&s, "full", "model");
    let (a, b) = (losses(&want), losses(&got));
    assert_eq!(a.len(), 20);
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!((la - lb).abs() < 1e-6, "step {sa}: {la} vs {lb}");
    }
    assert_eq!(
        std::fs::read(want.join("model.safetensors")).unwrap(),
        std::fs::read(got.join("model.safetensors")).unwrap(),
        "same final weights"
    );
}

#[test]
fn sigkills_during_checkpoint_writes_leave_a_resumable_stage() {
    // A checkpoint after every step: kills land in the middle of writing one.
    let train = stage("max_steps: 6, lr: 0.001, checkpoint_every: 1, dropout: 0.0", "train-full", "full");
    let straight = Sandbox::new();
    pipeline(&straight, &train);
    straight.ok(&["run", "p.yaml"]);
    let want = std::fs::read(artifact(&straight, "full", "model").join("model.safetensors")).unwrap();

    let s = Sandbox::new();
    pipeline(&s, &train);
    let mut kills = 0;
    let mut tmp_seen = 0;
    // Kill as soon as a checkpoint is being written (its `.tmp` folder exists), several times.
    while kills < 4 {
        let writing = |s: &Sandbox| {
            std::fs::read_dir(s.cache().join("work")).ok().into_iter().flatten().flatten().any(|k| {
                std::fs::read_dir(k.path())
                    .ok()
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
        };
        if !run_until_killed(&s, writing, Duration::from_secs(300)) {
            break;
        }
        kills += 1;
        if writing(&s) {
            tmp_seen += 1;
        }
        s.ok(&["cache", "verify"]);
    }
    assert!(kills > 0 && tmp_seen > 0, "kills {kills}, mid-write {tmp_seen}");
    s.ok(&["run", "p.yaml"]);
    let got = std::fs::read(artifact(&s, "full", "model").join("model.safetensors")).unwrap();
    assert_eq!(got, want, "same weights as an uninterrupted run");
}

#[test]
fn a_loss_that_stays_non_finite_stops_the_stage_and_keeps_the_last_good_checkpoint() {
    let s = Sandbox::new();
    // An absurd learning rate: the weights blow up and the loss stops being finite.
    pipeline(
        &s,
        &stage(
            "max_steps: 40, lr: 1.0e12, grad_clip: 0.0, checkpoint_every: 1, nonfinite_patience: 3",
            "train-full",
            "full",
        ),
    );
    let out = s.run(&["run", "p.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("loss was not finite for 3 consecutive steps; the last good checkpoint is kept in"),
        "{}",
        out.stderr
    );
    assert!(latest_checkpoint(&s).is_some(), "a checkpoint of the last finite step remains");
}

#[test]
fn training_on_the_cpu_reproduces_bit_exactly() {
    let s = Sandbox::new();
    pipeline(&s, &stage("max_steps: 6, lr: 0.001, checkpoint_every: 3", "train-full", "full"));
    s.ok(&["run", "p.yaml"]);
    let out = s.ok(&["audit", "latest", "--reproduce", "full"]);
    assert!(out.stdout.contains("reproduced bit-exactly"), "{}", out.stdout);
    assert!(
        out.stdout.contains("timing record (expected to differ): full.model/training/throughput.csv"),
        "{}",
        out.stdout
    );
}

/// The dtype of every tensor in a safetensors file (its JSON header).
fn safetensors_dtypes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.iter().filter(|(k, _)| *k != "__metadata__").map(|(_, v)| v["dtype"].as_str().unwrap().to_owned()).collect()
}

/// The fp32 values of the first F32 tensor in a safetensors file.
fn first_f32_tensor(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = header.values().find(|v| v["dtype"] == "F32").unwrap();
    let [a, b] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize + 8 + n);
    bytes[a..b].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn bf16_training_tracks_fp32_and_keeps_fp32_weights() {
    // The mixed precision CUDA runs by default, here on the CPU: products in bf16, the loss,
    // weights and optimizer in fp32; and bf16 weights over fp32 masters (`bf16_weights`). Same
    // data, same seed, no dropout.
    let s = Sandbox::new();
    let common = "max_steps: 30, lr: 0.001, checkpoint_every: 0, dropout: 0.0";
    let lora = "max_steps: 30, lr: 0.005, checkpoint_every: 0, dropout: 0.0, dtype: bf16";
    let stages = stage(&format!("{common}, dtype: fp32"), "train-full", "fp32")
        + &stage(&format!("{common}, dtype: bf16"), "train-full", "bf16")
        + &stage(&format!("{common}, dtype: bf16, bf16_weights: true"), "train-full", "bf16w")
        + &stage(lora, "train-lora", "lora")
        + &stage(&format!("{lora}, bf16_weights: true"), "train-lora", "lora-bf16w");
    pipeline(&s, &stages);
    s.ok(&["run", "p.yaml"]);
    let fp32 = losses(&artifact(&s, "fp32", "model"));
    assert_eq!(fp32.len(), 30);
    let mean = |xs: &[(u64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
    for id in ["bf16", "bf16w"] {
        let dir = artifact(&s, id, "model");
        let b = losses(&dir);
        // The first step sees the same weights: only bf16 rounding differs.
        let first = (fp32[0].1 - b[0].1).abs() / fp32[0].1;
        assert!(first > 0.0 && first < 0.005, "{id} step 1: fp32 {} vs {}", fp32[0].1, b[0].1);
        let (late_a, late_b) = (mean(&fp32[20..]), mean(&b[20..]));
        assert!((late_a - late_b).abs() / late_a < 0.01, "{id} steps 21-30: fp32 {late_a:.4} vs {late_b:.4}");
        assert!(late_b < mean(&b[..10]) * 0.9, "{id}: the loss falls");
        let weights = dir.join("model.safetensors");
        assert!(safetensors_dtypes(&weights).iter().all(|d| d == "F32"), "{id}: fp32 master weights");
        // Master weights, not bf16 values widened: some have bits below bf16's 8.
        assert!(first_f32_tensor(&weights).iter().any(|w| w.to_bits() & 0xffff != 0), "{id}: fp32 values");
    }
    for id in ["lora", "lora-bf16w"] {
        let l = losses(&artifact(&s, id, "adapter"));
        assert!(mean(&l[20..]) < mean(&l[..10]) * 0.9, "{id}: the bf16 LoRA loss falls");
    }
}

#[test]
fn bad_training_params_are_refused_before_anything_runs() {
    for (params, kind, id, says) in [
        ("dtype: fp16", "train-full", "full", "fp16 overflows in T5 and training has no loss scaling; use bf16"),
        ("dtype: fp32, bf16_weights: true", "train-lora", "lora", "bf16_weights: needs bf16 compute"),
        ("pad_to_multiple_of: 0", "train-lora", "lora", "pad_to_multiple_of"),
        ("pad_labels_to_multiple_of: 0", "train-full", "full", "pad_labels_to_multiple_of: must be at least 1"),
        (
            "pack: true, pad_to_multiple_of: 64",
            "train-full",
            "full",
            "pad_to_multiple_of: has no effect with `pack: true`",
        ),
    ] {
        let s = Sandbox::new();
        pipeline(&s, &stage(&format!("max_steps: 2, {params}"), kind, id));
        let out = s.run(&["run", "p.yaml"]);
        assert_eq!(out.code, 1, "{params}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{params}: {}", out.stderr);
    }
}

#[test]
fn runtime_options_that_change_numbers_enter_model_keys_and_every_manifest() {
    let s = Sandbox::new();
    pipeline(&s, &stage("max_steps: 2, checkpoint_every: 0", "train-lora", "lora"));
    s.ok(&["run", "p.yaml"]);
    // The manifest records the options the run ran with.
    let audit = s.ok(&["audit", "latest"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(audit.stdout.split(':').next().unwrap()).unwrap()).unwrap();
    assert_eq!(m["runtime_options"]["attention"], "auto");
    assert_eq!(m["runtime_options"]["cudnn_attention"], false);
    assert_eq!(m["runtime_options"]["cuda_alloc_conf"], "expandable_segments:True");
    // Another attention backend misses the training stage only, and `plan` names the option.
    let plan = s.ok(&["plan", "p.yaml", "--attention", "explicit"]).stdout;
    let lines: Vec<&str> = plan.lines().filter(|l| l.contains("  miss  ") || l.contains("  hit   ")).collect();
    assert_eq!(lines.len(), 4, "{plan}");
    assert!(lines[..3].iter().all(|l| l.contains("  hit   ")), "{plan}");
    assert!(lines[3].ends_with("runtime option attention: default → explicit"), "{plan}");
    // The environment sets it as the flag does; profiling changes no key.
    let via_env = s.cmd(&["plan", "p.yaml"]).env("SUMFLOW_ATTENTION", "explicit").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&via_env.stdout), plan);
    assert!(s.ok(&["plan", "p.yaml", "--profile"]).stdout.contains("0 of 4 stages would run"));
    let out = s.run(&["plan", "p.yaml", "--attention", "flash"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("invalid value 'flash' for '--attention <ATTENTION>'"), "{}", out.stderr);
}

/// Item 4: a checkpoint whose files no longer match their digests (cut short, or overwritten
/// with other weights) is discarded with a warning, never resumed from: the stage starts over
/// and caches what an uninterrupted run makes.
#[test]
fn a_damaged_checkpoint_is_discarded_and_the_stage_starts_over() {
    let train = stage("max_steps: 8, lr: 0.001, checkpoint_every: 2, dropout: 0.0", "train-full", "full");
    let straight = Sandbox::new();
    pipeline(&straight, &train);
    straight.ok(&["run", "p.yaml"]);
    let want = std::fs::read(artifact(&straight, "full", "model").join("model.safetensors")).unwrap();

    for damage in ["cut short", "other weights"] {
        let s = Sandbox::new();
        pipeline(&s, &train);
        assert!(run_until_killed(&s, |s| latest_checkpoint(s).is_some(), Duration::from_secs(300)), "killed");
        let work = std::fs::read_dir(s.cache().join("work")).unwrap().next().unwrap().unwrap().path();
        let ckpt = work.join(latest_checkpoint(&s).unwrap().trim());
        let weights = ckpt.join("trainable.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        match damage {
            "cut short" => bytes.truncate(bytes.len() / 2),
            _ => {
                let n = bytes.len();
                bytes[n - 4] ^= 0x40;
            }
        }
        std::fs::write(&weights, bytes).unwrap();
        let out = s.ok(&["run", "p.yaml"]);
        assert!(
            out.stderr.contains(&format!(
                "  warn  full: checkpoint discarded ({} does not match its recorded digest); training starts over",
                weights.display()
            )),
            "{damage}: {}",
            out.stderr
        );
        let got = std::fs::read(artifact(&s, "full", "model").join("model.safetensors")).unwrap();
        assert!(got == want, "{damage}: the weights differ from an uninterrupted run's");
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(s.ok(&["audit", "latest"]).stdout.split(':').next().unwrap()).unwrap(),
        )
        .unwrap();
        let warnings = m["stages"].as_array().unwrap().iter().find(|x| x["id"] == "full").unwrap()["warnings"].clone();
        assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{damage}: the manifest keeps the warning");
    }
}

/// Item 6: a LoRA rank larger than the projections it adapts is refused naming the field.
#[test]
fn a_lora_rank_larger_than_the_model_is_refused() {
    let s = Sandbox::new();
    pipeline(&s, &stage("max_steps: 2, lora: {r: 100}", "train-lora", "lora"));
    let out = s.run(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("        error: lora.r: 100 is larger than the projections it adapts (64 wide)\n"),
        "{}",
        out.stderr
    );
}
