//! Runs a pipeline: plans it, then executes the misses in dependency order on worker threads
//! (at most `jobs` at once, one GPU stage per GPU, each pinned to its own), committing each stage's outputs to the
//! cache as it finishes. A failed stage's descendants are skipped; independent stages go on,
//! and everything that finished stays cached. It reports through [`Reporter`] and never prints.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sumflow_stages::{panic_message, ArtifactKind, Progress, Resource, RuntimeOptions, StageContext, StageRecord};

use crate::cache::{Cache, CacheLock, Entry, Stamp};
use crate::error::{chain, Error};
use crate::pipeline::{Pipeline, StageNode};
use crate::remote::{Lookup, PullOutcome, Remote};
use crate::run::gpus::{self, Gpu};
use crate::run::lockfile::LockFile;
use crate::run::memory;
use crate::run::plan::{self, Selection, StagePlan, Status};
use crate::worker::spawn::Ran;
use crate::worker::torchrun::World;
use crate::worker::{self, Job};

/// What a run takes from a remote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pull {
    /// Nothing: the remote is not asked.
    #[default]
    Off,
    /// For each local miss, the remote's record; outputs are downloaded only where a stage
    /// that runs reads them, or nothing reads them (final stages: the results).
    Needed,
    /// Every output of every stage the remote has (`--pull-all`).
    All,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages to force and to restrict to.
    pub selection: Selection,
    /// Stages running at once.
    pub jobs: usize,
    /// The GPUs to pin GPU stages to, one stage per GPU at once (one at a time when empty).
    pub gpus: Vec<Gpu>,
    /// Fail instead of running anything.
    pub frozen: bool,
    /// With `frozen`: the lock the plan's keys must equal (its path, for messages).
    pub locked: Option<Arc<(PathBuf, LockFile)>>,
    /// The remote to pull from, and what to pull.
    pub remote: Option<Arc<Remote>>,
    /// What to take from `remote`.
    pub pull: Pull,
    /// The process's runtime options, handed to every stage.
    pub runtime: RuntimeOptions,
    /// Under torchrun (this is rank 0): the world the distributed stages run on.
    pub world: Option<Arc<World>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            selection: Selection::default(),
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            gpus: gpus::visible(),
            frozen: false,
            locked: None,
            remote: None,
            pull: Pull::Off,
            runtime: RuntimeOptions::default(),
            world: None,
        }
    }
}

/// What happened to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Outputs came from the cache (the local one, or pulled from the remote into it).
    Hit,
    /// The remote has its outputs and nothing here needed them: they were left there.
    Remote,
    /// It ran and its outputs were committed.
    Ran,
    /// It failed.
    Failed(Failure),
    /// It did not run: an input failed, or `--only` left it out.
    Skipped(String),
}

/// Why a stage failed: the error, its sources kept.
#[derive(Debug, Clone)]
pub struct Failure(Arc<Error>);

impl Failure {
    /// The error's message and its causes', outermost first.
    pub fn chain(&self) -> Vec<String> {
        chain(self.0.as_ref())
    }
}

impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.chain() == other.chain()
    }
}

impl Eq for Failure {}

impl std::fmt::Display for Failure {
    /// The whole chain on one line, each cause after a colon.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.chain().join(": "))
    }
}

/// The result of one stage in a run.
#[derive(Debug, Clone)]
pub struct StageRun {
    /// What happened.
    pub outcome: Outcome,
    /// The recipe key.
    pub key: String,
    /// Time spent running (zero for hits).
    pub duration: Duration,
    /// The cache entry, for hits and successful runs.
    pub entry: Option<Entry>,
    /// libtorch, CUDA and GPU facts from the worker that ran it (empty otherwise).
    pub runtime: BTreeMap<String, String>,
}

/// Events for the reporter, in the order they happen.
pub enum Event<'a> {
    /// The plan is made: these stages hit, these will run.
    Planned(&'a [StagePlan]),
    /// Stage `i` started.
    Started(usize),
    /// Stage `i` finished (with its outcome).
    Finished(usize, &'a StageRun),
}

/// Where the executor's events and stages' progress go.
pub trait Reporter: Sync {
    /// An event.
    fn event(&self, p: &Pipeline, e: Event);
    /// A progress sink for stage `i`.
    fn progress(&self, p: &Pipeline, i: usize) -> Box<dyn Progress + '_>;
    /// Another run holds the cache lock; we wait.
    fn waiting_for_lock(&self, holder: &str);
    /// Something the user should know that is not about one stage (a remote that cannot be
    /// reached, an object refused).
    fn notice(&self, _text: &str) {}
}

/// Runs `p` against `cache`; returns every stage's result in `p.stages` order.
pub fn run(p: &Pipeline, cache: &Cache, opts: &RunOptions, reporter: &dyn Reporter) -> Result<Vec<StageRun>, Error> {
    let waiting = |holder: &str| reporter.waiting_for_lock(holder);
    // A frozen run writes no artifact: it shares the cache (read-only ones too) with its kind
    // (unless it pulls).
    let _lock = if opts.frozen && opts.pull == Pull::Off {
        CacheLock::shared(&cache.path("lock"), &waiting)?
    } else {
        let lock = CacheLock::acquire(&cache.path("lock"), &waiting)?;
        cache.clear_scratch()?;
        lock
    };
    let mut plans = plan::plan(p, cache, &opts.selection, &opts.runtime)?;
    if let Some(locked) = &opts.locked {
        locked.1.check(&locked.0, p, &plans)?;
    }
    if let (Some(remote), true) = (&opts.remote, opts.pull != Pull::Off) {
        pull(p, cache, &mut plans, remote, opts, reporter)?;
    }
    reporter.event(p, Event::Planned(&plans));
    if opts.frozen {
        let misses: Vec<String> = plans
            .iter()
            .filter(|s| s.status == Status::Miss)
            .map(|s| format!("{} ({})", s.id, s.reasons.join("; ")))
            .collect();
        if !misses.is_empty() {
            return Err(Error::Frozen(format!("{} stage(s) would run: {}", misses.len(), misses.join(", "))));
        }
    }
    if plans.iter().zip(&p.stages).any(|(s, node)| s.status == Status::Miss && node.stage.needs_libtorch()) {
        worker::spawn::check_binary()?;
    }

    let mut runs: Vec<Option<StageRun>> = plans
        .iter()
        .map(|s| match s.status {
            Status::Hit => Some(StageRun {
                outcome: Outcome::Hit,
                key: s.key.clone(),
                duration: Duration::ZERO,
                entry: s.entry.clone(),
                runtime: BTreeMap::new(),
            }),
            Status::Remote => Some(StageRun {
                outcome: Outcome::Remote,
                key: s.key.clone(),
                duration: Duration::ZERO,
                entry: s.entry.clone(),
                runtime: BTreeMap::new(),
            }),
            Status::Skipped => Some(StageRun {
                outcome: Outcome::Skipped("not selected".into()),
                key: s.key.clone(),
                duration: Duration::ZERO,
                entry: None,
                runtime: BTreeMap::new(),
            }),
            Status::Miss => None,
        })
        .collect();
    for (i, r) in runs.iter().enumerate() {
        if let Some(r) = r {
            reporter.event(p, Event::Finished(i, r));
        }
    }

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, Result<(Entry, BTreeMap<String, String>), Error>, Duration)>();
        let mut running = 0;
        // Free GPU slots: an index into `opts.gpus`, or `None` for the one slot of a machine
        // without GPUs. Popped from the end, so the first GPU is taken first.
        let mut free_gpus: Vec<Option<usize>> =
            if opts.gpus.is_empty() { vec![None] } else { (0..opts.gpus.len()).rev().map(Some).collect() };
        let mut gpu_of: Vec<Option<Option<usize>>> = vec![None; p.stages.len()];
        let mut started = vec![false; p.stages.len()];
        loop {
            // Skip stages whose inputs failed; start those whose inputs are ready.
            for &i in &p.order {
                if runs[i].is_some() || started[i] {
                    continue;
                }
                let node = &p.stages[i];
                if let Some(bad) = node.inputs.iter().find(|b| {
                    matches!(runs[b.stage].as_ref().map(|r| &r.outcome), Some(Outcome::Failed(_) | Outcome::Skipped(_)))
                }) {
                    let run = StageRun {
                        outcome: Outcome::Skipped(format!("input `{}` did not run", p.stages[bad.stage].id)),
                        key: plans[i].key.clone(),
                        duration: Duration::ZERO,
                        entry: None,
                        runtime: BTreeMap::new(),
                    };
                    reporter.event(p, Event::Finished(i, &run));
                    runs[i] = Some(run);
                    continue;
                }
                let ready = node.inputs.iter().all(|b| runs[b.stage].as_ref().is_some_and(|r| r.entry.is_some()));
                let gpu = node.resource == Resource::Gpu;
                if !ready || running >= opts.jobs.max(1) || (gpu && free_gpus.is_empty()) {
                    continue;
                }
                let slot = if gpu { free_gpus.pop() } else { None };
                gpu_of[i] = slot;
                let pinned = slot.flatten().map(|g| &opts.gpus[g]);
                let inputs: BTreeMap<String, (PathBuf, ArtifactKind)> = node
                    .inputs
                    .iter()
                    .map(|b| {
                        let entry = runs[b.stage].as_ref().and_then(|r| r.entry.as_ref()).expect("ready");
                        (b.field.clone(), (cache.artifact(&entry.outputs[&b.output].digest), b.kind))
                    })
                    .collect();
                let upstream = upstream(p, i, &runs);
                started[i] = true;
                running += 1;
                // A stage that starts alone gets a peak-memory mark of its own.
                if running == 1 {
                    memory::reset_peak();
                }
                reporter.event(p, Event::Started(i));
                let tx = tx.clone();
                let plan = &plans[i];
                scope.spawn(move || {
                    let t0 = Instant::now();
                    let world = opts.world.as_deref();
                    let result = run_stage(p, i, plan, inputs, upstream, cache, &opts.runtime, pinned, world, reporter);
                    let _ = tx.send((i, result, t0.elapsed()));
                });
            }
            if running == 0 {
                break;
            }
            let (i, result, duration) = rx.recv().expect("a worker is running");
            running -= 1;
            if let Some(slot) = gpu_of[i].take() {
                free_gpus.push(slot);
            }
            let run = match result {
                Ok((entry, runtime)) => {
                    StageRun { outcome: Outcome::Ran, key: plans[i].key.clone(), duration, entry: Some(entry), runtime }
                }
                Err(e) => StageRun {
                    outcome: Outcome::Failed(Failure(Arc::new(e))),
                    key: plans[i].key.clone(),
                    duration,
                    entry: None,
                    runtime: BTreeMap::new(),
                },
            };
            reporter.event(p, Event::Finished(i, &run));
            runs[i] = Some(run);
        }
    });

    let runs: Vec<StageRun> = runs.into_iter().map(|r| r.expect("every stage settled")).collect();
    for run in &runs {
        if let (Outcome::Hit | Outcome::Ran, Some(entry)) = (&run.outcome, &run.entry) {
            cache.set_history(entry)?;
        }
    }
    Ok(runs)
}

/// Asks the remote for every local miss, then downloads what this run needs of what it has:
/// the outputs stages that run will read, and those nothing reads (the results), or all with
/// [`Pull::All`]. A stage whose objects are refused is computed instead (its inputs are then
/// needed in turn); under `--frozen` that fails the run.
fn pull(
    p: &Pipeline,
    cache: &Cache,
    plans: &mut [StagePlan],
    remote: &Remote,
    opts: &RunOptions,
    reporter: &dyn Reporter,
) -> Result<(), Error> {
    for (plan, node) in plans.iter_mut().zip(&p.stages) {
        if plan.status != Status::Miss || opts.selection.force.contains(&plan.id) {
            continue;
        }
        let outputs: Vec<String> = node.outputs.iter().map(|o| o.name.clone()).collect();
        match remote.record(&plan.key, Some(&outputs)) {
            Ok(Lookup::Found(record)) => {
                plan.status = Status::Remote;
                plan.reasons = vec![format!("on remote `{}`", remote.name())];
                plan.entry = Some(record);
            }
            Ok(Lookup::Absent) => {}
            Ok(Lookup::Refused(e)) | Err(e) if opts.frozen => return Err(e),
            // A record that cannot be trusted: the stage is computed here.
            Ok(Lookup::Refused(e)) => reporter.notice(&format!("{e}; computing `{}` here", plan.id)),
            // The remote went away: nothing more is asked of it.
            Err(e) => {
                reporter.notice(&format!("{e}; computing locally"));
                break;
            }
        }
    }
    loop {
        let needed: Vec<usize> = (0..plans.len())
            .filter(|&i| plans[i].status == Status::Remote)
            .filter(|&i| {
                // Final: nothing reads it, or `--only` asked for it.
                let mut readers = p.dependents(i).peekable();
                opts.pull == Pull::All
                    || readers.peek().is_none()
                    || opts.selection.only.contains(&plans[i].id)
                    || readers.any(|j| plans[j].status == Status::Miss)
            })
            .collect();
        if needed.is_empty() {
            return Ok(());
        }
        let records: Vec<(String, Entry)> =
            needed.iter().map(|&i| (plans[i].id.clone(), plans[i].entry.clone().expect("a record"))).collect();
        for (&i, outcome) in needed.iter().zip(remote.pull(cache, &records)?) {
            match outcome {
                PullOutcome::Pulled(entry) => {
                    plans[i].status = Status::Hit;
                    plans[i].reasons.clear();
                    plans[i].entry = Some(entry);
                }
                PullOutcome::Refused(e) if opts.frozen => return Err(e),
                PullOutcome::Refused(e) => {
                    reporter.notice(&format!("{e}; computing `{}` here", plans[i].id));
                    plans[i].status = Status::Miss;
                    plans[i].reasons = vec![format!("its remote copy was refused ({e})")];
                    plans[i].entry = None;
                }
            }
        }
        plan::check_consumed_hits(p, cache, plans);
    }
}

/// How the stages upstream of stage `i` (its inputs, theirs, …) went, in pipeline order.
fn upstream(p: &Pipeline, i: usize, runs: &[Option<StageRun>]) -> Vec<StageRecord> {
    let mut seen = vec![false; p.stages.len()];
    let mut stack: Vec<usize> = p.stages[i].inputs.iter().map(|b| b.stage).collect();
    while let Some(j) = stack.pop() {
        if !std::mem::replace(&mut seen[j], true) {
            stack.extend(p.stages[j].inputs.iter().map(|b| b.stage));
        }
    }
    (0..p.stages.len())
        .filter(|&j| seen[j])
        .filter_map(|j| {
            let run = runs[j].as_ref()?;
            let entry = run.entry.as_ref()?;
            Some(StageRecord {
                id: entry.stage.clone(),
                kind: entry.kind.clone(),
                cached: run.outcome == Outcome::Hit,
                seconds: entry.duration_s,
                stats: entry.stats.clone(),
            })
        })
        .collect()
}

/// Runs one stage into a scratch folder — in a worker process if it needs libtorch, here
/// otherwise — and commits its outputs.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    p: &Pipeline,
    i: usize,
    plan: &StagePlan,
    inputs: BTreeMap<String, (PathBuf, ArtifactKind)>,
    upstream: Vec<StageRecord>,
    cache: &Cache,
    runtime: &RuntimeOptions,
    gpu: Option<&Gpu>,
    world: Option<&World>,
    reporter: &dyn Reporter,
) -> Result<(Entry, BTreeMap<String, String>), Error> {
    let node = &p.stages[i];
    // The local files the key covers must be the versions it was computed from, before the
    // stage reads them and after (a file rewritten meanwhile would cache one version's output
    // under the other's key).
    let unchanged = || -> Result<(), Error> {
        for (path, stamp) in &plan.files {
            if Stamp::of(path)? != *stamp {
                return Err(Error::InputChanged { path: path.clone() });
            }
        }
        Ok(())
    };
    unchanged()?;
    let scratch = cache.scratch(&plan.key)?;
    let progress = reporter.progress(p, i);
    let work_dir = cache.work_dir(&plan.key);
    let t0 = Instant::now();
    let result = if node.stage.needs_libtorch() {
        let job = Job {
            version: worker::version(),
            stage_id: node.id.clone(),
            kind: node.stage.kind().to_string(),
            params: node.params.canonical.clone(),
            inputs,
            output_root: scratch.clone(),
            work_dir,
            gpu: gpu.map(|g| g.cuda),
            runtime: runtime.clone(),
            upstream,
            ranks: None,
        };
        let sample_gpu = node.resource == Resource::Gpu;
        match world {
            // Under torchrun a distributed stage takes every rank, one device each.
            Some(world) if node.stage.distributed() => {
                world.run(&job, &plan.key, |job| worker::spawn::run(job, 1, progress.as_ref(), gpu, sample_gpu))
            }
            _ => worker::spawn::run(&job, node.devices, progress.as_ref(), gpu, sample_gpu),
        }
    } else {
        let ctx = StageContext::new(&node.id, inputs, scratch.clone(), work_dir, progress.as_ref(), runtime)
            .with_upstream(upstream)
            .on_gpu(gpu.map(|g| g.cuda));
        run_here(node, &ctx, gpu)
    };
    // A file that changed underneath explains whatever the stage made of it (a torn row, say).
    let ran = match unchanged().and(result) {
        Ok(ran) => ran,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
    };
    let entry = Entry {
        key: plan.key.clone(),
        pipeline: p.name.clone(),
        stage: node.id.clone(),
        kind: node.stage.kind().to_string(),
        recipe: plan.recipe.json.clone(),
        outputs: BTreeMap::new(),
        created: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        duration_s: t0.elapsed().as_secs_f64(),
        stats: ran.stats,
        warnings: ran.warnings,
    };
    Ok((cache.commit(&scratch, &node.outputs, entry)?, ran.runtime))
}

/// Runs a stage in this process (one that does not need libtorch); a panic becomes an error.
fn run_here(node: &StageNode, ctx: &StageContext, gpu: Option<&Gpu>) -> Result<Ran, Error> {
    // A GPU stage has its GPU to itself (or, without a pin, the one GPU stage running).
    let sampler =
        if node.resource == Resource::Gpu { memory::GpuSampler::start(gpu, std::process::id()) } else { None };
    let result = match catch_unwind(AssertUnwindSafe(|| node.stage.run(&node.params, ctx))) {
        Ok(ran) => ran.map_err(Error::from),
        Err(panic) => Err(Error::Panicked(panic_message(panic.as_ref()))),
    };
    let gpu_mb = sampler.map(memory::GpuSampler::stop);
    result?;
    if let Some(mb) = memory::peak_mb() {
        ctx.record("peak_rss_mb", mb);
    }
    if let Some(mb) = gpu_mb {
        ctx.record("peak_gpu_mb", mb);
    }
    Ok(Ran { stats: ctx.stats(), warnings: ctx.warnings(), runtime: BTreeMap::new() })
}
