//! Several machines through torchrun. `torchrun --no-python … sumflow run PIPELINE.yaml` starts
//! one runner per rank; rank 0 runs the pipeline and owns the cache, and the other ranks take
//! part in its distributed stages (`train-full`, `train-lora`, `generate`) only, each with one
//! device, the whole torchrun world together.
//!
//! ```text
//! rank 0: sumflow run ─ sumflow-worker lead ── announces each distributed stage's job ──┐
//!                     └ sumflow-worker stage ID (rank 0) ─┐                              │
//!                                                         ├ c10d store of torchrun's agent
//! rank r: sumflow run ─ sumflow-worker follow ── runs each announced job as rank r ──────┘
//! ```
//!
//! The runner has no libtorch, so the store is reached through worker processes: rank 0's
//! `lead` worker puts each job under `sumflow/job/<n>` in torchrun's agent store (the keys of
//! this attempt, `/worker/attempt_<restart>`), and `done` when the run ends; the other ranks'
//! `follow` workers wait for them in turn. Rank 0 runs distributed stages one at a time (each
//! takes every rank). The ranks meet per stage under `…/sumflow/stage<n>`, where rank 0 refuses
//! ranks whose sumflow version or stage key differ from its own. A rank whose stage fails says
//! so there (rank 0 through its `lead` worker), so that no rank waits for it. The other ranks
//! read the stage's inputs at rank 0's paths: its cache must be on a path every machine shares.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sumflow_stages::Ranks;

use super::spawn::{Ran, RANK_TIMEOUT_S};
use super::{binary, Job};
use crate::error::{chain, Error};

/// What torchrun told this process: its rank and where the world's store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torchrun {
    /// `RANK`.
    pub rank: usize,
    /// `WORLD_SIZE`.
    pub world: usize,
    /// `LOCAL_RANK`: this rank's GPU on its machine.
    pub local_rank: usize,
    /// `MASTER_ADDR`: where torchrun's agent serves its store.
    pub addr: String,
    /// `MASTER_PORT`.
    pub port: u16,
    /// `TORCHELASTIC_RESTART_COUNT`: the attempt whose keys this run uses.
    pub restart: u64,
}

impl Torchrun {
    /// This process's place in a torchrun world, when torchrun started it
    /// (`TORCHELASTIC_RUN_ID` is set); an error naming the variable when one is missing or bad.
    pub fn from_env() -> Result<Option<Torchrun>, Error> {
        if std::env::var_os("TORCHELASTIC_RUN_ID").is_none() {
            return Ok(None);
        }
        fn var(name: &str) -> Result<String, Error> {
            std::env::var(name).map_err(|_| Error::Torchrun(format!("{name} is not set (torchrun sets it)")))
        }
        fn number<T: std::str::FromStr>(name: &str) -> Result<T, Error> {
            let text = var(name)?;
            text.parse().map_err(|_| Error::Torchrun(format!("{name}={text} is not a number")))
        }
        // Rank 0's workers come and go, one per stage: the store must outlive them.
        if var("TORCHELASTIC_USE_AGENT_STORE")? != "True" {
            return Err(Error::Torchrun(
                "TORCHELASTIC_USE_AGENT_STORE is not True: sumflow meets in the store of torchrun's agent".into(),
            ));
        }
        Ok(Some(Torchrun {
            rank: number("RANK")?,
            world: number("WORLD_SIZE")?,
            local_rank: number("LOCAL_RANK")?,
            addr: var("MASTER_ADDR")?,
            port: number("MASTER_PORT")?,
            restart: number("TORCHELASTIC_RESTART_COUNT")?,
        }))
    }

    /// The keys of this attempt in the agent's store, as torch.distributed's workers use them.
    fn prefix(&self) -> String {
        format!("/worker/attempt_{}", self.restart)
    }

    /// Rank `rank`'s place in distributed stage `n`, whose key it computes as `key`.
    fn ranks(&self, rank: usize, n: usize, key: &str) -> Ranks {
        Ranks {
            rank,
            world: self.world,
            host: self.addr.clone(),
            port: self.port,
            timeout_s: RANK_TIMEOUT_S,
            prefix: format!("{}/sumflow/stage{n}", self.prefix()),
            key: key.to_string(),
        }
    }
}

/// What rank 0's runner asks of its `lead` worker, one JSON line each; it answers `ok` or why not.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum Lead {
    /// Announce the next distributed stage.
    Job(Box<Job>),
    /// Distributed stage `stage` failed on rank 0 (`why`): the others stop waiting for it.
    Failed { stage: usize, why: String },
}

/// Rank 0's side: its `lead` worker, which announces each distributed stage to the others.
#[derive(Debug)]
pub struct World {
    torchrun: Torchrun,
    leader: Mutex<Leader>,
}

#[derive(Debug)]
struct Leader {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: BufReader<ChildStdout>,
    /// Distributed stages announced so far.
    next: usize,
}

impl World {
    /// Starts rank 0's `lead` worker.
    pub fn lead(torchrun: Torchrun) -> Result<World, Error> {
        let path = binary();
        let mut child = Command::new(&path)
            .arg("lead")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&path, e))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().expect("piped"));
        let leader = Leader { child, stdin, replies: BufReader::new(stdout), next: 0 };
        Ok(World { torchrun, leader: Mutex::new(leader) })
    }

    /// This rank's GPU on its machine (`LOCAL_RANK`): rank 0's GPU stages run there.
    pub fn local_gpu(&self) -> usize {
        self.torchrun.local_rank
    }

    /// Runs distributed stage `job` (key `key`) with `run` as rank 0 of the world, once the
    /// other ranks were told to join it. One at a time.
    pub fn run(&self, job: &Job, key: &str, run: impl FnOnce(&Job) -> Result<Ran, Error>) -> Result<Ran, Error> {
        let mut leader = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        let mut job = job.clone();
        let stage = leader.next;
        job.ranks = Some(self.torchrun.ranks(0, stage, key));
        leader.ask(&Lead::Job(Box::new(job.clone())))?;
        leader.next += 1;
        let ran = run(&job);
        if let Err(e) = &ran {
            // Ranks still waiting to meet, or for rank 0's part, stop at once. If this fails
            // too, they wait out their timeout.
            let _ = leader.ask(&Lead::Failed { stage, why: chain(e).join(": ") });
        }
        ran
    }
}

impl Leader {
    fn ask(&mut self, lead: &Lead) -> Result<(), Error> {
        let mut line = serde_json::to_string(lead).expect("requests serialize");
        line.push('\n');
        let stdin = self.stdin.as_mut().expect("open until dropped");
        let mut reply = String::new();
        let sent = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush());
        let read = sent.and_then(|_| self.replies.read_line(&mut reply));
        match (read, reply.trim()) {
            (Ok(_), "ok") => Ok(()),
            (Ok(_), "") | (Err(_), _) => {
                Err(Error::Torchrun("the worker telling the other ranks which stage to join has died".into()))
            }
            (Ok(_), said) => Err(Error::Torchrun(said.to_string())),
        }
    }
}

impl Drop for Leader {
    /// The run is over: closing the worker's stdin tells the other ranks (`done`).
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// A rank other than 0: validate the same pipeline (`keys`: its stages' keys as this rank
/// computes them), then run the distributed stages rank 0 announces, as rank `torchrun.rank`,
/// until it says the run is over. Exits as the `follow` worker does.
pub fn follow(torchrun: &Torchrun, keys: BTreeMap<String, String>) -> Result<ExitCode, Error> {
    super::spawn::check_binary()?;
    let path = binary();
    let mut child = Command::new(&path).arg("follow").stdin(Stdio::piped()).spawn().map_err(|e| Error::io(&path, e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut line = serde_json::to_string(&keys).expect("keys serialize");
    line.push('\n');
    // Kept open while it runs: if this runner dies, the worker sees end of file and exits.
    let _ = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush());
    let status = child.wait().map_err(|e| Error::io(&path, e))?;
    drop(stdin);
    eprintln!("rank {} of {}: {}", torchrun.rank, torchrun.world, if status.success() { "done" } else { "failed" });
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => return Err(Error::WorkerDied { status: status.to_string(), stderr: None }),
    })
}

/// The workers' ends, with libtorch (the store is c10d's).
#[cfg(feature = "torch")]
pub mod serve {
    use std::collections::BTreeMap;
    use std::io::{BufRead, Read, Write};
    use std::process::ExitCode;
    use std::time::Duration;

    use sumflow_stages::tools::{report_failure, Store};
    use sumflow_stages::NoProgress;

    use super::{Job, Lead, Torchrun};
    use crate::error::{chain, Error};

    fn store(torchrun: &Torchrun) -> Result<Store, Error> {
        let timeout = Duration::from_secs(super::RANK_TIMEOUT_S);
        Ok(Store::client(&torchrun.addr, torchrun.port, &torchrun.prefix(), timeout)?)
    }

    fn torchrun() -> Result<Torchrun, Error> {
        Torchrun::from_env()?.ok_or_else(|| Error::Torchrun("this process was not started by torchrun".into()))
    }

    fn job_key(n: usize) -> String {
        format!("sumflow/job/{n}")
    }

    /// `sumflow-worker lead`: for each request on stdin, a job goes to the store as the next
    /// one, or a stage's failure under that stage's keys, and `ok` comes back; at end of file
    /// (the run is over, or the runner died), `done`. It stops at the first request it cannot
    /// carry out, saying why: the runner's next request then fails.
    pub fn lead() -> ExitCode {
        let result = (|| -> Result<(), Error> {
            let t = torchrun()?;
            let store = store(&t)?;
            let mut n = 0;
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| Error::io("stdin", e))?;
                let lead: Lead = serde_json::from_str(&line)
                    .map_err(|e| Error::Torchrun(format!("a request from the runner: {e}")))?;
                match lead {
                    Lead::Job(job) => {
                        let text = serde_json::to_vec(&job).expect("jobs serialize");
                        store.set(&job_key(n), &text)?;
                        n += 1;
                    }
                    Lead::Failed { stage, why } => report_failure(&t.ranks(0, stage, ""), &why)?,
                }
                println!("ok");
                let _ = std::io::stdout().flush();
            }
            Ok(store.set(&job_key(n), b"done")?)
        })();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("{}", chain(&e).join(": "));
                ExitCode::FAILURE
            }
        }
    }

    /// `sumflow-worker follow`: this rank's stage keys on stdin (one JSON line, the pipe then
    /// kept open), then every job rank 0 announces, run as this rank, until `done`. A stage that
    /// fails here fails on rank 0 too (its collectives do); as there, the next stages go on,
    /// and the exit status says whether any failed.
    pub fn follow() -> ExitCode {
        let mut stdin = std::io::BufReader::new(std::io::stdin());
        let mut line = String::new();
        let _ = stdin.read_line(&mut line);
        std::thread::spawn(move || {
            let _ = stdin.read_to_end(&mut Vec::new());
            std::process::exit(3);
        });
        let show = crate::error::report;
        let result = (|| -> Result<bool, Error> {
            let keys: BTreeMap<String, String> =
                serde_json::from_str(&line).map_err(|e| Error::Torchrun(format!("this rank's stage keys: {e}")))?;
            let t = torchrun()?;
            let store = store(&t)?;
            let mut all_ran = true;
            for n in 0.. {
                let text = store.wait(&job_key(n))?;
                if text == b"done" {
                    break;
                }
                let ran = match serde_json::from_slice::<Job>(&text) {
                    Ok(job) => run_as(&t, n, job, &keys),
                    Err(e) => refuse(&t, n, e),
                };
                if let Err(e) = ran {
                    show(&e);
                    // Rank 0 stops waiting for this rank, to meet or for its part.
                    let _ = report_failure(&t.ranks(t.rank, n, ""), &chain(&e).join(": "));
                    all_ran = false;
                }
            }
            Ok(all_ran)
        })();
        match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                show(&e);
                ExitCode::FAILURE
            }
        }
    }

    /// Rank 0's job `n` is not one this worker reads (another sumflow wrote it): meet rank 0
    /// anyway, under a key no job has, so that rank 0 refuses this rank at once, naming both
    /// versions.
    fn refuse(t: &Torchrun, n: usize, e: serde_json::Error) -> Result<(), Error> {
        sumflow_stages::tools::meet(&t.ranks(t.rank, n, "(unreadable job)"))?;
        Err(Error::Torchrun(format!("rank 0's job {n} is not one this worker reads: {e}")))
    }

    /// Runs rank 0's `job` (distributed stage `n`) as this rank: its own key, its own GPU,
    /// outputs into a scratch folder nobody reads (rank 0 writes the stage's).
    fn run_as(t: &Torchrun, n: usize, mut job: Job, keys: &BTreeMap<String, String>) -> Result<(), Error> {
        eprintln!("rank {} of {}: {} ({})", t.rank, t.world, job.stage_id, job.kind);
        for (slot, (path, _)) in &job.inputs {
            if !path.exists() {
                return Err(Error::Torchrun(format!(
                    "stage `{}`: input `{slot}` is rank 0's {}, which this machine cannot read: the other ranks \
                     read rank 0's cache, so it must be on a path every machine shares (`--cache`)",
                    job.stage_id,
                    path.display()
                )));
            }
        }
        let key = keys.get(&job.stage_id).map_or("(not planned here)", String::as_str);
        job.ranks = Some(t.ranks(t.rank, n, key));
        job.gpu = job.gpu.map(|_| t.local_rank);
        let scratch = std::env::temp_dir().join(format!("sumflow-rank{}-{}-stage{n}", t.rank, std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        job.output_root = scratch.clone();
        // Rank 0's runner shows the stage's progress.
        let ran = super::super::serve::run(job, &NoProgress).map(|_| ());
        let _ = std::fs::remove_dir_all(&scratch);
        ran
    }
}
