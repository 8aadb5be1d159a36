//! Moving artifacts between the local cache and a remote: pushes (objects first, in parallel,
//! skipping those the remote has; records last) and pulls (objects re-hashed as they stream in,
//! artifacts checked whole before they enter the cache), with a progress bar of bytes, rate
//! and ETA on a terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{object_path, record, Remote};
use crate::cache::{tree_digest, Cache, Entry};
use crate::error::Error;

/// Transfers at once.
const PARALLEL: usize = 8;
/// Files above this go up in parts of this size.
const PART: usize = 16 << 20;

/// What a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Records written (those already there are not counted).
    pub records: usize,
    /// Objects uploaded.
    pub uploaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Objects the remote already had.
    pub present: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl PushReport {
    /// The line `push` and `run --push` print.
    pub fn summary(&self, remote: &str) -> String {
        format!(
            "pushed {} objects ({}) and {} records to remote `{remote}` in {:.2}s; {} objects were there",
            self.uploaded,
            indicatif::HumanBytes(self.bytes),
            self.records,
            self.elapsed.as_secs_f64(),
            self.present
        )
    }
}

/// What a pull of one stage's record came to.
#[derive(Debug)]
pub enum PullOutcome {
    /// Its outputs are in the local cache, with its entry.
    Pulled(Entry),
    /// It could not be pulled (the error names object, stage and remote); nothing of it entered
    /// the cache.
    Refused(Error),
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("  {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// One file to move: where it is (or goes) locally, its digest and size.
struct Job {
    local: PathBuf,
    digest: String,
    size: u64,
}

impl Remote {
    /// Uploads the outputs of `entries` (each checked against its digest first) and then their
    /// records.
    pub fn push(&self, cache: &Cache, entries: &[Entry]) -> Result<PushReport, Error> {
        let t0 = Instant::now();
        let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
        let mut records = Vec::new();
        for entry in entries {
            // A record must be what its key names (pullers check): an entry written under
            // another key scheme stays here.
            if record::recipe_key(entry) != entry.key {
                continue;
            }
            let mut record = entry.clone();
            for (name, out) in record.outputs.iter_mut() {
                let dir = cache.artifact(&out.digest);
                let tree = tree_digest(&dir).map_err(|e| Error::io(&dir, e))?;
                if tree.digest != out.digest {
                    return Err(Error::Cache {
                        path: dir,
                        message: format!(
                            "`{}.{name}` no longer hashes to its digest: not pushed (`sumflow cache verify --repair`)",
                            entry.stage
                        ),
                    });
                }
                out.files = tree.files.clone();
                out.sizes = tree.sizes.clone();
                for (rel, digest) in &tree.files {
                    jobs.entry(digest.clone()).or_insert(Job {
                        local: dir.join(rel),
                        digest: digest.clone(),
                        size: tree.sizes[rel],
                    });
                }
            }
            records.push(record);
        }
        let objects = jobs.len();
        // What the remote lacks (an object of the wrong size is damaged: it is replaced).
        let sizes: BTreeMap<String, u64> = jobs.iter().map(|(digest, job)| (digest.clone(), job.size)).collect();
        let lacking = self.missing_objects(&sizes)?;
        let missing: Vec<Job> = jobs.into_values().filter(|job| lacking.contains(&job.digest)).collect();
        let mut report = PushReport { present: objects - missing.len(), ..PushReport::default() };
        let total: u64 = missing.iter().map(|j| j.size).sum();
        report.uploaded = missing.len();
        report.bytes = total;
        let progress = bar(total, &format!("push → {}", self.name()));
        self.rt.block_on(async {
            futures::stream::iter(missing)
                .map(|job| {
                    let progress = &progress;
                    async move { self.upload(&job, progress).await }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<()>>()
                .await
        })?;
        progress.finish_and_clear();
        for record in &records {
            report.records += usize::from(self.put_record(record)?);
        }
        report.elapsed = t0.elapsed();
        Ok(report)
    }

    async fn upload(&self, job: &Job, progress: &ProgressBar) -> Result<(), Error> {
        let path = object_path(&job.digest);
        let io = |e| Error::io(&job.local, e);
        if job.size as usize <= PART {
            let bytes = tokio::fs::read(&job.local).await.map_err(io)?;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| self.error(&format!("writing {path}"), e))?;
            progress.inc(job.size);
            return Ok(());
        }
        let upload = self.store.put_multipart(&path).await.map_err(|e| self.error(&format!("writing {path}"), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = tokio::fs::File::open(&job.local).await.map_err(io)?;
        let mut buf = vec![0u8; PART];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARALLEL / 2).await {
                let _ = writer.abort().await;
                return Err(self.error(&format!("writing {path}"), e));
            }
            writer.write(&buf[..n]);
            progress.inc(n as u64);
        }
        writer.finish().await.map_err(|e| self.error(&format!("writing {path}"), e))?;
        Ok(())
    }

    /// Downloads the outputs of each `(stage id, record)` into the local cache and writes its
    /// entry; a stage whose objects fail is refused, the others go on.
    pub fn pull(&self, cache: &Cache, records: &[(String, Entry)]) -> Result<Vec<PullOutcome>, Error> {
        // Per stage, the outputs the local cache lacks (an intact local artifact is kept).
        let mut wanted: Vec<Vec<(String, PathBuf)>> = Vec::new();
        let mut jobs: Vec<(usize, Job)> = Vec::new();
        for (i, (_, entry)) in records.iter().enumerate() {
            let mut outputs = Vec::new();
            for (name, out) in &entry.outputs {
                let local = cache.artifact(&out.digest);
                if tree_digest(&local).is_ok_and(|t| t.digest == out.digest) {
                    continue;
                }
                let dir = cache.scratch(&format!("pull-{}", &out.digest[..16]))?;
                for (rel, digest) in &out.files {
                    let size = out.sizes[rel];
                    jobs.push((i, Job { local: dir.join(rel), digest: digest.clone(), size }));
                }
                outputs.push((name.clone(), dir));
            }
            wanted.push(outputs);
        }
        let total: u64 = jobs.iter().map(|(_, j)| j.size).sum();
        let progress = bar(total, &format!("pull ← {}", self.name()));
        let results: Vec<(usize, Result<(), Error>)> = self.rt.block_on(async {
            futures::stream::iter(jobs)
                .map(|(i, job)| {
                    let progress = &progress;
                    let stage = &records[i].0;
                    async move { (i, self.download(&job, stage, progress).await) }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await
        });
        progress.finish_and_clear();
        let mut failed: BTreeMap<usize, Error> = BTreeMap::new();
        for (i, result) in results {
            if let Err(e) = result {
                failed.entry(i).or_insert(e);
            }
        }
        let mut outcomes = Vec::new();
        for (i, (stage, entry)) in records.iter().enumerate() {
            let outcome = match failed.remove(&i) {
                Some(e) => Err(e),
                None => self.adopt(cache, stage, entry, &wanted[i]),
            };
            outcomes.push(match outcome {
                Ok(()) => PullOutcome::Pulled(entry.clone()),
                Err(e) => {
                    for (_, dir) in &wanted[i] {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    PullOutcome::Refused(e)
                }
            });
        }
        Ok(outcomes)
    }

    /// Moves a stage's downloaded outputs into the cache (each checked whole against its
    /// digest) and writes its entry.
    fn adopt(&self, cache: &Cache, stage: &str, entry: &Entry, outputs: &[(String, PathBuf)]) -> Result<(), Error> {
        for (name, dir) in outputs {
            let digest = &entry.outputs[name].digest;
            if !cache.adopt(dir, digest)? {
                return Err(Error::Remote {
                    remote: self.name().to_string(),
                    message: format!(
                        "stage `{stage}`: output `{name}` as the record lists it does not hash to {}: refused",
                        &digest[..12]
                    ),
                });
            }
        }
        cache.put_entry(entry)
    }

    /// Streams one object to its file, hashing as it goes; an object that does not hash to
    /// its name is refused (and its partial file removed).
    async fn download(&self, job: &Job, stage: &str, progress: &ProgressBar) -> Result<(), Error> {
        let path = object_path(&job.digest);
        let io = |e| Error::io(&job.local, e);
        if let Some(parent) = job.local.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let got = self.store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::Remote {
                remote: self.name().to_string(),
                message: format!("object {path} of stage `{stage}` is missing"),
            },
            e => self.error(&format!("reading {path} (stage `{stage}`)"), e),
        })?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(&job.local).await.map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(&format!("reading {path} (stage `{stage}`)"), e))?;
            // No more than the record says: a runaway object does not fill the disk.
            received += chunk.len() as u64;
            if received > job.size {
                drop(file);
                let _ = tokio::fs::remove_file(&job.local).await;
                return Err(Error::Remote {
                    remote: self.name().to_string(),
                    message: format!(
                        "object {path} of stage `{stage}` is larger than its record says ({} bytes): refused",
                        job.size
                    ),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
            progress.inc(chunk.len() as u64);
            self.downloaded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        file.sync_all().await.map_err(io)?;
        let got = hasher.finalize().to_hex().to_string();
        if got != job.digest {
            let _ = tokio::fs::remove_file(&job.local).await;
            return Err(Error::Remote {
                remote: self.name().to_string(),
                message: format!(
                    "object {path} of stage `{stage}` is corrupted (its bytes hash to {}): refused",
                    &got[..12]
                ),
            });
        }
        Ok(())
    }

    /// Which of `digests` the remote lacks, or holds with another size than given.
    pub fn missing_objects(&self, objects: &BTreeMap<String, u64>) -> Result<BTreeSet<String>, Error> {
        let store = &self.store;
        let found: Vec<Option<String>> = self.rt.block_on(async {
            futures::stream::iter(objects.iter())
                .map(|(digest, size)| async move {
                    match store.head(&object_path(digest)).await {
                        Ok(meta) if meta.size == *size => Ok(None),
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(Some(digest.clone())),
                        Err(e) => Err(self.error(&format!("reading cas/{digest}"), e)),
                    }
                })
                .buffer_unordered(PARALLEL * 4)
                .try_collect()
                .await
        })?;
        Ok(found.into_iter().flatten().collect())
    }
}
