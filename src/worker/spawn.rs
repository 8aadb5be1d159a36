//! The runner's end: start the workers for a stage (one, or one per device), hand each its job,
//! relay rank 0's progress, and settle the stage from what they said and how they exited.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use sumflow_stages::{Progress, Ranks};

use super::{binary, Job, Message};
use crate::error::{Error, WorkerError};
use crate::run::gpus::Gpu;
use crate::run::memory::GpuSampler;

/// Lines of a dead worker's stderr its stage's error shows.
const TAIL: usize = 12;

/// How long the ranks of a stage wait for each other (to meet, in a collective) before it fails.
pub const RANK_TIMEOUT_S: u64 = 300;

/// What a stage that finished in a worker recorded.
#[derive(Debug)]
pub struct Ran {
    /// Its figures (the worker's peak resident memory among them, and the GPU's when sampled).
    pub stats: BTreeMap<String, f64>,
    /// Its warnings.
    pub warnings: Vec<String>,
    /// libtorch, CUDA and GPU facts as the worker found them (empty for a stage run here).
    pub runtime: BTreeMap<String, String>,
}

/// The worker binary, or why it cannot be used; asked before anything runs.
pub fn check_binary() -> Result<(), Error> {
    let path = binary();
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::WorkerMissing { path })
    }
}

/// One worker process and what it said.
struct Worker {
    rank: usize,
    child: Child,
    /// Kept open while it runs: a worker whose stdin closes exits (the runner is gone).
    stdin: Option<std::process::ChildStdin>,
}

impl Worker {
    fn start(job: &Job, rank: usize) -> Result<Worker, Error> {
        let path = binary();
        let mut child = Command::new(&path)
            .args(["stage", &job.stage_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&path, e))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut text = serde_json::to_string(job).expect("jobs serialize");
        text.push('\n');
        // A worker that died at once closed the pipe: its exit status says why.
        let _ = stdin.write_all(text.as_bytes()).and_then(|_| stdin.flush());
        Ok(Worker { rank, child, stdin: Some(stdin) })
    }
}

/// Runs `job` in `devices` workers (ranks meeting on 127.0.0.1 when more than one); rank 0's
/// progress is relayed, and its outputs are the stage's. `sample_gpu`: measure rank 0's GPU
/// memory on `gpu`. When a rank fails, the others are stopped and the stage fails, naming it.
pub fn run(
    job: &Job,
    devices: usize,
    progress: &dyn Progress,
    gpu: Option<&Gpu>,
    sample_gpu: bool,
) -> Result<Ran, Error> {
    check_binary()?;
    let world = devices.max(1);
    let port = if world > 1 { free_port()? } else { 0 };
    let mut workers = Vec::with_capacity(world);
    for rank in 0..world {
        let mut job = job.clone();
        if world > 1 {
            let host = "127.0.0.1".to_string();
            job.ranks = Some(Ranks {
                rank,
                world,
                host,
                port,
                timeout_s: RANK_TIMEOUT_S,
                prefix: String::new(),
                key: String::new(),
            });
        }
        match Worker::start(&job, rank) {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop(&mut workers);
                return Err(e);
            }
        }
    }
    let sampler = if sample_gpu { GpuSampler::start(gpu, workers[0].child.id()) } else { None };
    let said = std::thread::scope(|scope| {
        let readers: Vec<_> = workers
            .iter_mut()
            .map(|w| {
                let (rank, stdout, stderr) =
                    (w.rank, w.child.stdout.take().expect("piped"), w.child.stderr.take().expect("piped"));
                let log = move |line: &str| {
                    if world > 1 {
                        progress.log(&format!("rank {rank}: {line}"));
                    } else {
                        progress.log(line);
                    }
                };
                let tail = scope.spawn(move || {
                    let mut tail = VecDeque::with_capacity(TAIL);
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        log(&line);
                        if tail.len() == TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                    tail
                });
                let last = scope.spawn(move || relay(stdout, (rank == 0).then_some(progress), &log));
                (last, tail)
            })
            .collect();
        let exits = wait_all(&mut workers);
        let said: Vec<_> = readers
            .into_iter()
            .map(|(last, tail)| (last.join().unwrap_or(None), tail.join().unwrap_or_default()))
            .collect();
        (exits, said)
    });
    let gpu_mb = sampler.map(GpuSampler::stop);
    let (exits, said) = said;
    // The rank that failed, of those not stopped by the runner: one that died rather than one
    // that reported an error (its peers' collectives fail when it dies), else the first.
    let failures: Vec<(usize, ExitStatus)> =
        exits.iter().filter(|(_, status, stopped)| !status.success() && !stopped).map(|(r, s, _)| (*r, *s)).collect();
    let died = |rank: usize| !matches!(said[rank].0, Some(Message::Failed(_)));
    let failed = failures.iter().find(|(rank, _)| died(*rank)).or(failures.first()).copied();
    match failed {
        None => match said.into_iter().next() {
            Some((Some(Message::Done { mut stats, warnings, runtime }), _)) => {
                if let Some(mb) = gpu_mb {
                    stats.insert("peak_gpu_mb".into(), mb);
                }
                Ok(Ran { stats, warnings, runtime })
            }
            _ => Err(Error::WorkerDied { status: exits[0].1.to_string(), stderr: None }),
        },
        Some((rank, status)) => {
            let (last, tail) = &said[rank];
            let e = match last {
                Some(Message::Failed(chain)) => Error::Worker(WorkerError::from_chain(chain.clone())),
                _ => Error::WorkerDied {
                    status: status.to_string(),
                    stderr: WorkerError::stderr_tail(tail.iter().cloned().collect()),
                },
            };
            Err(if world > 1 { Error::Rank { rank, world, source: Box::new(e) } } else { e })
        }
    }
}

/// Reads a worker's messages to the end: relays them to `progress` (rank 0's), shows stray
/// lines with `log`, and returns the last `done` or `failed`.
fn relay(stdout: std::process::ChildStdout, progress: Option<&dyn Progress>, log: &dyn Fn(&str)) -> Option<Message> {
    let mut last = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        match (serde_json::from_str::<Message>(&line), progress) {
            (Ok(end @ (Message::Done { .. } | Message::Failed(_))), _) => last = Some(end),
            (Ok(Message::Total(n)), Some(p)) => p.set_total(n),
            (Ok(Message::Inc(n)), Some(p)) => p.inc(n),
            (Ok(Message::Status(s)), Some(p)) => p.message(&s),
            (Ok(Message::Warn(w)), Some(p)) => p.warn(&w),
            (Ok(_), None) => {}
            // Something in the worker wrote to stdout: show it like its stderr.
            (Err(_), _) => log(&line),
        }
    }
    last
}

/// Waits for every worker; once one fails, stops the others. Each worker's rank, exit status,
/// and whether the runner stopped it, in the order they ended.
fn wait_all(workers: &mut [Worker]) -> Vec<(usize, ExitStatus, bool)> {
    let mut exits: Vec<(usize, ExitStatus, bool)> = Vec::new();
    let mut stopped = vec![false; workers.len()];
    while exits.len() < workers.len() {
        let failed = exits.iter().any(|(_, status, _)| !status.success());
        for (i, w) in workers.iter_mut().enumerate() {
            if exits.iter().any(|(rank, ..)| *rank == w.rank) {
                continue;
            }
            match w.child.try_wait() {
                Ok(Some(status)) => {
                    w.stdin.take();
                    exits.push((w.rank, status, stopped[i]));
                }
                Ok(None) if failed => {
                    let _ = w.child.kill();
                    stopped[i] = true;
                }
                Ok(None) => {}
                Err(_) => {
                    let _ = w.child.kill();
                    stopped[i] = true;
                }
            }
        }
        if exits.len() < workers.len() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    exits
}

/// Stops workers already started (another failed to start).
fn stop(workers: &mut [Worker]) {
    for w in workers {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

/// A port free on 127.0.0.1 for rank 0's store (taken again if someone binds it meanwhile:
/// then the stage fails naming the address, and a rerun picks another).
fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    let port = listener.local_addr().map_err(|e| Error::io("127.0.0.1:0", e))?.port();
    Ok(port)
}

/// Hands this command line to the worker (the model commands) and exits as it does.
pub fn forward() -> Result<ExitCode, Error> {
    check_binary()?;
    let path = binary();
    let status = Command::new(&path).args(std::env::args_os().skip(1)).status().map_err(|e| Error::io(&path, e))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            return Err(Error::WorkerDied { status: status.to_string(), stderr: None });
        }
    })
}
