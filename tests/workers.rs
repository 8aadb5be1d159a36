//! Model stages in worker processes: the runner never loads libtorch, a worker that dies fails
//! its stage only, and the runner refuses to start model stages without a worker binary.

use std::path::Path;

use crate::common::{shared, Sandbox};

/// A pipeline with CPU stages (run by the runner), and two model stages (each in a worker).
fn pipeline(s: &Sandbox, model: &Path) {
    s.write(
        "p.yaml",
        format!(
            "name: workers\nstages:\n  data: {{kind: load, path: {data}}}\n  few: {{kind: subsample, input: data.test, n: 12, seed: 1}}\n  tokens: {{kind: tokenize, input: few, model: {m}}}\n  doomed: {{kind: generate, input: few, model: {m}, device: cpu, max_new_tokens: 5}}\n  fine: {{kind: generate, input: few, model: {m}, device: cpu, max_new_tokens: 4}}\n",
            data = shared("dialogsum").display(),
            m = model.display()
        ),
    );
}

#[test]
fn without_the_worker_binary_model_stages_are_refused_before_anything_runs() {
    let s = Sandbox::new();
    let model = s.path().join("m");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        s.write(&format!("m/{f}"), "{}");
    }
    pipeline(&s, &model);
    let out = s.cmd(&["run", "p.yaml"]).env("SUMFLOW_WORKER", s.path().join("gone")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "error: model stages run in `{}`, which is not there: build it (`make build`), or set SUMFLOW_WORKER to its path\n",
        s.path().join("gone").display()
    );
    assert!(stderr.ends_with(&want), "{stderr}");
    assert_eq!(s.entries(), 0, "nothing ran");
}

/// In the build the runner ships in, without the `torch` feature (`make build`; `make test` runs
/// this file again in that build). With the feature, torch-sys's static initializers bring
/// libtorch into every binary of the package, though the runner never calls it.
#[cfg(all(target_os = "linux", not(feature = "torch")))]
#[test]
fn the_runner_binary_does_not_link_libtorch() {
    let out = std::process::Command::new("ldd").arg(env!("CARGO_BIN_EXE_sumflow")).output().unwrap();
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{libs}");
    assert!(!libs.contains("libtorch") && !libs.contains("libc10"), "{libs}");
}

/// A worker that aborts (here: killed by SIGABRT as it starts, after a line on stderr as
/// libtorch's aborts write) fails its stage, naming how it died and what it said last; the
/// other stages, the other worker's among them, finish and stay cached.
#[cfg(feature = "torch")]
#[test]
fn a_worker_that_aborts_fails_its_stage_only() {
    let s = Sandbox::new();
    pipeline(&s, crate::models::tiny_model());
    let wrapper = crate::common::aborting_worker(&s, "abort-worker.sh", "doomed");
    let out = s.cmd(&["run", "p.yaml", "--jobs", "1"]).env("SUMFLOW_WORKER", &wrapper).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failed = "  FAIL  doomed (generate)";
    let at = stderr.find(failed).unwrap_or_else(|| panic!("{stderr}"));
    let report: Vec<&str> = stderr[at..].lines().skip(1).take(3).collect();
    assert_eq!(
        report,
        [
            "        error: its worker process died (signal: 6 (SIGABRT))",
            "        caused by: its stderr ended with:",
            "    terminate called after throwing an instance of 'c10::Error'",
        ],
        "{stderr}"
    );
    assert!(stderr.contains("  ran   fine (generate)"), "{stderr}");
    assert!(stderr.ends_with("error: 1 stage failed: doomed\n"), "{stderr}");
    // Everything but the aborted stage is cached: a rerun with the real worker runs it alone.
    let again = s.ok(&["run", "p.yaml"]);
    assert!(again.stderr.contains("workers: 5 stages, 4 cached, 1 to run"), "{}", again.stderr);
    assert!(again.stdout.contains("doomed: 12 predictions"), "{}", again.stdout);
}
