//! The worker's end (`sumflow-worker stage ID`): read the job, run the stage in this process,
//! and say how it goes as JSON lines on stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Mutex;

use sumflow_stages::{panic_message, Progress, Registry, StageContext};

use super::{version, Job, Message};
use crate::error::{chain, Error};
use crate::run::memory;

/// Serves one job from stdin; exits 0 when the stage finished, 1 when it failed.
pub fn serve() -> ExitCode {
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    if let Err(e) = stdin.read_line(&mut line) {
        return failed(vec![format!("reading the job: {e}")]);
    }
    // The runner holds our stdin open while it waits: end of file means it is gone, and so is
    // whoever wanted this stage's outputs.
    std::thread::spawn(move || {
        let _ = stdin.read_to_end(&mut Vec::new());
        std::process::exit(3);
    });
    let job: Job = match serde_json::from_str(&line) {
        Ok(job) => job,
        Err(e) => return failed(vec![format!("the job is not one this worker reads: {e}")]),
    };
    if job.version != version() {
        return failed(vec![format!(
            "this worker is sumflow {} and the runner sumflow {}: build them together (`make build`)",
            version(),
            job.version
        )]);
    }
    match run(job, &Lines(Mutex::new(std::io::stdout()))) {
        Ok(done) => {
            send(&done);
            ExitCode::SUCCESS
        }
        Err(e) => failed(chain(&e)),
    }
}

/// Runs `job` in this process, its progress to `progress`: `done`, with its figures.
pub(super) fn run(job: Job, progress: &dyn Progress) -> Result<Message, Error> {
    #[cfg(feature = "torch")]
    let registry = Registry::with_libtorch();
    #[cfg(not(feature = "torch"))]
    let registry = Registry::builtin();
    let stage = registry
        .get(&job.kind)
        .ok_or_else(|| Error::Usage(format!("this worker has no stage of kind `{}`", job.kind)))?;
    let raw = serde_yaml::to_value(&job.params).expect("JSON values are YAML values");
    let params = stage.parse(raw).map_err(|e| Error::Usage(format!("params: {}: {}", e.field, e.message)))?;
    if params.canonical != job.params {
        return Err(Error::Usage("the worker reads the stage's params differently from the runner".into()));
    }
    let ctx = StageContext::new(&job.stage_id, job.inputs, job.output_root, job.work_dir, progress, &job.runtime)
        .with_upstream(job.upstream)
        .on_gpu(job.gpu)
        .with_ranks(job.ranks);
    match catch_unwind(AssertUnwindSafe(|| stage.run(&params, &ctx))) {
        Ok(ran) => ran?,
        Err(panic) => return Err(Error::Panicked(panic_message(panic.as_ref()))),
    }
    if let Some(mb) = memory::peak_mb() {
        ctx.record("peak_rss_mb", mb);
    }
    #[cfg(feature = "torch")]
    let runtime = sumflow_stages::tools::describe_runtime();
    #[cfg(not(feature = "torch"))]
    let runtime = sumflow_stages::tools::describe_gpus();
    Ok(Message::Done { stats: ctx.stats(), warnings: ctx.warnings(), runtime })
}

fn failed(chain: Vec<String>) -> ExitCode {
    send(&Message::Failed(chain));
    ExitCode::FAILURE
}

fn send(message: &Message) {
    let mut text = serde_json::to_string(message).expect("messages serialize");
    text.push('\n');
    let mut out = std::io::stdout().lock();
    // A runner that is gone reads nothing; the stdin watcher ends the process.
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Progress as message lines on stdout.
struct Lines(Mutex<std::io::Stdout>);

impl Lines {
    fn send(&self, message: Message) {
        let _guard = self.0.lock().expect("stdout lock");
        send(&message);
    }
}

impl Progress for Lines {
    fn set_total(&self, total: u64) {
        self.send(Message::Total(total));
    }
    fn inc(&self, n: u64) {
        self.send(Message::Inc(n));
    }
    fn message(&self, msg: &str) {
        self.send(Message::Status(msg.to_string()));
    }
    fn warn(&self, msg: &str) {
        self.send(Message::Warn(msg.to_string()));
    }
}
