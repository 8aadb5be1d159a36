//! Showing a run: a line per stage as it settles (hit, ran, failed, skipped), live progress
//! bars on a terminal (indicatif), and the stages' own summaries at the end.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sumflow_stages::Progress;

use crate::cache::Cache;
use crate::pipeline::Pipeline;
use crate::run::executor::{Event, Outcome, Reporter, StageRun};
use crate::run::plan::Status;

/// Reports to stderr: bars on a terminal, plain lines elsewhere (CI logs).
pub struct Console {
    multi: MultiProgress,
    tty: bool,
    bars: Mutex<HashMap<usize, ProgressBar>>,
}

impl Default for Console {
    fn default() -> Self {
        Console { multi: MultiProgress::new(), tty: std::io::stderr().is_terminal(), bars: Mutex::default() }
    }
}

impl Console {
    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    fn bar(&self, i: usize) -> Option<ProgressBar> {
        self.bars.lock().expect("bars lock").get(&i).cloned()
    }
}

fn label(p: &Pipeline, i: usize) -> String {
    format!("{} ({})", p.stages[i].id, p.stages[i].stage.kind())
}

impl Reporter for Console {
    fn event(&self, p: &Pipeline, e: Event) {
        match e {
            Event::Planned(plans) => {
                let hits = plans.iter().filter(|s| s.status == Status::Hit).count();
                let misses = plans.iter().filter(|s| s.status == Status::Miss).count();
                let remote = plans.iter().filter(|s| s.status == Status::Remote).count();
                let left = if remote > 0 { format!(", {remote} left on the remote") } else { String::new() };
                self.line(format!("{}: {} stages, {hits} cached{left}, {misses} to run", p.name, plans.len()));
            }
            Event::Started(i) => {
                if self.tty {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix} {wide_msg} [{elapsed}]")
                            .expect("valid template"),
                    );
                    bar.set_prefix(label(p, i));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars.lock().expect("bars lock").insert(i, bar);
                } else {
                    self.line(format!("  start {}", label(p, i)));
                }
            }
            Event::Finished(i, run) => {
                if let Some(bar) = self.bars.lock().expect("bars lock").remove(&i) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                let secs = run.duration.as_secs_f64();
                self.line(match &run.outcome {
                    Outcome::Hit => format!("  hit   {}", label(p, i)),
                    Outcome::Remote => format!("  hit   {}  (on the remote; not needed here)", label(p, i)),
                    Outcome::Ran => format!("  ran   {}  {secs:.2}s{}", label(p, i), peaks(run)),
                    Outcome::Failed(e) => {
                        let mut text = format!("  FAIL  {}  {secs:.2}s", label(p, i));
                        for (k, message) in e.chain().iter().enumerate() {
                            let prefix = if k == 0 { "error" } else { "caused by" };
                            text.push_str(&format!("\n        {prefix}: {message}"));
                        }
                        text
                    }
                    Outcome::Skipped(why) => format!("  skip  {}: {why}", label(p, i)),
                });
            }
        }
    }

    fn progress(&self, p: &Pipeline, i: usize) -> Box<dyn Progress + '_> {
        Box::new(StageProgress { console: self, i, id: p.stages[i].id.clone() })
    }

    fn waiting_for_lock(&self, holder: &str) {
        self.line(format!("waiting for the cache lock (held by pid {holder})…"));
    }

    fn notice(&self, text: &str) {
        self.line(format!("  note  {text}"));
    }
}

/// ", peak N MB" (and the GPU's) from what the executor recorded for a stage that ran.
fn peaks(run: &StageRun) -> String {
    let stats = run.entry.as_ref().map(|e| &e.stats);
    let get = |k: &str| stats.and_then(|s| s.get(k)).copied();
    match (get("peak_rss_mb"), get("peak_gpu_mb")) {
        (Some(cpu), Some(gpu)) => format!(", peak {cpu:.0} MB, GPU {gpu:.0} MB"),
        (Some(cpu), None) => format!(", peak {cpu:.0} MB"),
        _ => String::new(),
    }
}

struct StageProgress<'a> {
    console: &'a Console,
    i: usize,
    id: String,
}

impl Progress for StageProgress<'_> {
    fn set_total(&self, total: u64) {
        if let Some(bar) = self.console.bar(self.i) {
            // With a total, the rate and the time left mean something.
            bar.set_style(
                ProgressStyle::with_template(
                    "  {spinner} {prefix} {wide_msg} {pos}/{len} [{elapsed} < {eta}, {per_sec:.1}]",
                )
                .expect("valid template"),
            );
            bar.set_length(total);
        }
    }
    fn inc(&self, n: u64) {
        if let Some(bar) = self.console.bar(self.i) {
            bar.inc(n);
        }
    }
    fn message(&self, msg: &str) {
        if let Some(bar) = self.console.bar(self.i) {
            bar.set_message(msg.to_string());
        }
    }
    fn warn(&self, msg: &str) {
        self.console.line(format!("  warn  {}: {msg}", self.id));
    }
    fn log(&self, line: &str) {
        self.console.line(format!("  {}| {line}", self.id));
    }
}

/// The stages' own summaries (tables, row counts), in topological order.
pub fn summaries(p: &Pipeline, runs: &[StageRun], cache: &Cache) -> String {
    let mut out = String::new();
    for &i in &p.order {
        let node = &p.stages[i];
        // A remote hit's outputs stayed on the remote.
        let Some(entry) = runs[i].entry.as_ref().filter(|_| runs[i].outcome != Outcome::Remote) else { continue };
        let outputs: BTreeMap<String, std::path::PathBuf> =
            entry.outputs.iter().map(|(name, rec)| (name.clone(), cache.artifact(&rec.digest))).collect();
        if let Some(text) = node.stage.summary(&node.params, &outputs) {
            let text = text.trim_end();
            if text.contains('\n') {
                out.push_str(&format!("\n== {} ({}) ==\n{text}\n", node.id, node.stage.kind()));
            } else {
                out.push_str(&format!("{}: {text}\n", node.id));
            }
        }
    }
    out
}
