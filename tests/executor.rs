//! The executor with fake stages (no data, no libtorch): counting runs, failures, panics,
//! parallelism and the GPU slots (fake devices).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sumflow::cache::{self, Cache};
use sumflow::pipeline::{self, Pipeline};
use sumflow::run::executor::{self, Event, Outcome, Reporter, RunOptions};
use sumflow::run::gpus::Gpu;
use sumflow_stages::{
    ArtifactKind, InputRef, InputSlot, NoProgress, OutputDecl, Progress, Registry, Resource, Stage, StageContext,
    StageError,
};

use crate::common::Sandbox;

/// Runs per tag, so tests running in parallel do not see each other's counts.
static RUNS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn count(tag: &str) {
    *RUNS.lock().unwrap().get_or_insert_with(HashMap::new).entry(tag.to_string()).or_default() += 1;
}

fn runs(tag: &str) -> usize {
    RUNS.lock().unwrap().as_ref().and_then(|m| m.get(tag).copied()).unwrap_or(0)
}

/// A tag no other test uses. (A stack address, which these tags once were, comes back in a
/// later test on a reused thread stack, and its counts with it.)
fn unique_tag() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("t{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FakeParams {
    tag: String,
    #[serde(default)]
    input: Option<InputRef>,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    gpu: bool,
}

/// The devices held now, and every device a stage was pinned to (`None`: unpinned).
type Devices = (Vec<Option<usize>>, Vec<Option<usize>>);

/// How many fake stages ran at once, at most.
#[derive(Default)]
struct Concurrency {
    running: AtomicUsize,
    max_running: AtomicUsize,
    gpu_running: AtomicUsize,
    max_gpu: AtomicUsize,
    /// The devices GPU stages hold now, and every device a stage was pinned to.
    devices: Mutex<Devices>,
    /// A stage was pinned to a device another stage held.
    shared_device: std::sync::atomic::AtomicBool,
}

/// Writes its tag (plus its input's content) to `out/value`; can sleep, fail or panic.
struct Fake(Arc<Concurrency>);

impl Stage for Fake {
    type Params = FakeParams;
    const KIND: &'static str = "fake";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "test stage";

    fn inputs(&self, p: &FakeParams) -> Vec<InputSlot> {
        p.input
            .iter()
            .map(|r| InputSlot { field: "input".into(), reference: r.clone(), accepts: &[ArtifactKind::Table] })
            .collect()
    }
    fn outputs(&self, _: &FakeParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "out".into(), kind: ArtifactKind::Table }]
    }
    fn resource(&self, p: &FakeParams) -> Resource {
        if p.gpu {
            Resource::Gpu
        } else {
            Resource::Cpu
        }
    }
    fn run(&self, p: &FakeParams, ctx: &StageContext) -> Result<(), StageError> {
        count(&p.tag);
        let c = &self.0;
        let now = c.running.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_running.fetch_max(now, Ordering::SeqCst);
        if p.gpu {
            let g = c.gpu_running.fetch_add(1, Ordering::SeqCst) + 1;
            c.max_gpu.fetch_max(g, Ordering::SeqCst);
            let mut devices = c.devices.lock().unwrap();
            if devices.0.contains(&ctx.gpu) {
                c.shared_device.store(true, Ordering::SeqCst);
            }
            devices.0.push(ctx.gpu);
            devices.1.push(ctx.gpu);
        }
        std::thread::sleep(Duration::from_millis(p.sleep_ms));
        // Write part of the output before failing: none of it may reach the cache.
        let dir = ctx.output_dir("out")?;
        let upstream = match p.input {
            Some(_) => std::fs::read_to_string(ctx.input("input")?.join("value")).unwrap(),
            None => String::new(),
        };
        std::fs::write(dir.join("value"), format!("{upstream}{}", p.tag)).unwrap();
        c.running.fetch_sub(1, Ordering::SeqCst);
        if p.gpu {
            c.gpu_running.fetch_sub(1, Ordering::SeqCst);
            let mut devices = c.devices.lock().unwrap();
            let held = devices.0.iter().position(|d| *d == ctx.gpu).unwrap();
            devices.0.remove(held);
        }
        if p.panic {
            panic!("deliberate panic in {}", p.tag);
        }
        if p.fail {
            return Err(StageError::data("fake", "deliberate failure"));
        }
        Ok(())
    }
}

struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: &Pipeline, _: Event) {}
    fn progress(&self, _: &Pipeline, _: usize) -> Box<dyn Progress + '_> {
        Box::new(NoProgress)
    }
    fn waiting_for_lock(&self, _: &str) {}
}

struct Setup {
    sandbox: Sandbox,
    registry: Registry,
    concurrency: Arc<Concurrency>,
}

impl Setup {
    fn new() -> Setup {
        let concurrency = Arc::new(Concurrency::default());
        let mut registry = Registry::new();
        registry.add(Fake(concurrency.clone()));
        Setup { sandbox: Sandbox::new(), registry, concurrency }
    }

    fn run(&self, yaml: &str, opts: &RunOptions) -> Vec<Outcome> {
        let path = self.sandbox.write("p.yaml", yaml);
        let p = pipeline::load(&path, &[], &self.registry).unwrap();
        let cache = Cache::open(&self.sandbox.cache()).unwrap();
        executor::run(&p, &cache, opts, &Quiet).unwrap().into_iter().map(|r| r.outcome).collect()
    }
}

#[test]
fn second_run_executes_nothing_and_a_changed_param_reruns_only_downstream() {
    let s = Setup::new();
    let t = unique_tag();
    let yaml = |b: &str| {
        format!(
            "name: t\nstages:\n  a: {{kind: fake, tag: a{t}}}\n  b: {{kind: fake, tag: {b}{t}, input: a}}\n  c: {{kind: fake, tag: c{t}, input: b}}\n  d: {{kind: fake, tag: d{t}, input: a}}\n"
        )
    };
    let opts = RunOptions::default();
    assert_eq!(s.run(&yaml("b"), &opts), [const { Outcome::Ran }; 4]);
    assert_eq!(s.run(&yaml("b"), &opts), [const { Outcome::Hit }; 4]);
    assert_eq!([runs(&format!("a{t}")), runs(&format!("b{t}")), runs(&format!("c{t}"))], [1, 1, 1]);
    // b changes: b and c rerun; a and d are untouched.
    assert_eq!(s.run(&yaml("B"), &opts), [Outcome::Hit, Outcome::Ran, Outcome::Ran, Outcome::Hit]);
    assert_eq!(runs(&format!("a{t}")), 1);
    assert_eq!(runs(&format!("c{t}")), 2);
}

#[test]
fn a_failing_stage_leaves_no_artifact_and_skips_only_its_descendants() {
    let s = Setup::new();
    let t = unique_tag();
    let yaml = format!(
        "name: t\nstages:\n  ok: {{kind: fake, tag: ok{t}}}\n  bad: {{kind: fake, tag: bad{t}, fail: true}}\n  after: {{kind: fake, tag: after{t}, input: bad}}\n  boom: {{kind: fake, tag: boom{t}, panic: true}}\n"
    );
    let outcomes = s.run(&yaml, &RunOptions::default());
    assert_eq!(outcomes[0], Outcome::Ran);
    assert!(matches!(&outcomes[1], Outcome::Failed(e) if e.to_string().contains("deliberate failure")), "{outcomes:?}");
    assert!(matches!(&outcomes[2], Outcome::Skipped(e) if e.contains("bad")), "{outcomes:?}");
    assert!(
        matches!(&outcomes[3], Outcome::Failed(e) if e.to_string().contains("panicked") && e.to_string().contains("deliberate panic")),
        "{outcomes:?}"
    );
    // Only `ok` was committed; nothing of the failed stages is in the cache or its scratch.
    let cache = Cache::open(&s.sandbox.cache()).unwrap();
    assert_eq!(s.sandbox.entries(), 1);
    let report = cache::verify(&cache, false).unwrap();
    assert_eq!((report.artifacts, report.orphans, report.scratch), (1, 0, 0));
    assert!(report.problems.is_empty());
}

/// Four GPU stages that take 300 ms each and two CPU stages, on `gpus` fake devices.
fn gpu_sweep(gpus: usize) -> (Setup, Vec<Outcome>) {
    let s = Setup::new();
    let t = unique_tag();
    let mut yaml = "name: t\nstages:\n".to_string();
    for g in 1..=4 {
        yaml += &format!("  g{g}: {{kind: fake, tag: g{g}{t}, sleep_ms: 300, gpu: true}}\n");
    }
    yaml +=
        &format!("  c1: {{kind: fake, tag: c1{t}, sleep_ms: 300}}\n  c2: {{kind: fake, tag: c2{t}, sleep_ms: 300}}\n");
    let opts = RunOptions { jobs: 8, gpus: (0..gpus).map(Gpu::numbered).collect(), ..RunOptions::default() };
    let outcomes = s.run(&yaml, &opts);
    (s, outcomes)
}

#[test]
fn with_four_gpus_four_gpu_stages_overlap_each_on_its_own_device() {
    let (s, outcomes) = gpu_sweep(4);
    assert_eq!(outcomes, [const { Outcome::Ran }; 6]);
    let c = &s.concurrency;
    assert_eq!(c.max_gpu.load(Ordering::SeqCst), 4, "the four GPU stages ran at once");
    assert!(c.max_running.load(Ordering::SeqCst) > 4, "CPU stages ran beside them");
    assert!(!c.shared_device.load(Ordering::SeqCst), "no two stages held one device");
    let mut pinned = c.devices.lock().unwrap().1.clone();
    pinned.sort();
    assert_eq!(pinned, [Some(0), Some(1), Some(2), Some(3)]);
}

#[test]
fn with_one_gpu_gpu_stages_take_turns_beside_the_cpu_stages() {
    let (s, outcomes) = gpu_sweep(1);
    assert_eq!(outcomes, [const { Outcome::Ran }; 6]);
    let c = &s.concurrency;
    assert_eq!(c.max_gpu.load(Ordering::SeqCst), 1, "GPU stages never overlap");
    assert!(c.max_running.load(Ordering::SeqCst) >= 2, "CPU stages ran beside them");
    assert_eq!(c.devices.lock().unwrap().1, [Some(0); 4]);
}

#[test]
fn without_gpus_gpu_stages_take_turns_unpinned() {
    let (s, outcomes) = gpu_sweep(0);
    assert_eq!(outcomes, [const { Outcome::Ran }; 6]);
    assert_eq!(s.concurrency.max_gpu.load(Ordering::SeqCst), 1);
    assert_eq!(s.concurrency.devices.lock().unwrap().1, [None; 4]);
}

#[test]
fn force_and_only_select_stages() {
    let s = Setup::new();
    let t = unique_tag();
    let yaml = format!("name: t\nstages:\n  a: {{kind: fake, tag: a{t}}}\n  b: {{kind: fake, tag: b{t}, input: a}}\n  x: {{kind: fake, tag: x{t}}}\n");
    let only_b = RunOptions {
        selection: sumflow::run::plan::Selection { only: vec!["b".into()], force: vec![] },
        ..RunOptions::default()
    };
    let outcomes = s.run(&yaml, &only_b);
    assert_eq!(outcomes[..2], [Outcome::Ran, Outcome::Ran]);
    assert!(matches!(outcomes[2], Outcome::Skipped(_)));
    let force_a = RunOptions {
        selection: sumflow::run::plan::Selection { force: vec!["a".into()], only: vec![] },
        ..RunOptions::default()
    };
    // a reruns (same recipe, so b's key is unchanged and b stays a hit); x runs for the first time.
    assert_eq!(s.run(&yaml, &force_a), [Outcome::Ran, Outcome::Hit, Outcome::Ran]);
    assert_eq!(runs(&format!("a{t}")), 2);
}
