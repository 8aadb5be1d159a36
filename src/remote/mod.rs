//! Remotes: a cache shared through an object store (S3 and S3-compatible servers, GCS, Azure,
//! WebDAV, a local or NFS folder). The layout, as Bazel's remote cache has it:
//!
//! ```text
//! cas/<blake3>      one file of an artifact, named by the blake3 of its bytes
//! ac/<key>.json     a stage run's record: its cache entry, naming the objects of its outputs
//! ```
//!
//! A push uploads every object first and writes the record last, create-if-absent, so a reader
//! never meets a record whose objects are missing (a push killed halfway leaves objects only,
//! which the next push reuses). A pull re-hashes every object as it streams in, checks the
//! assembled artifact's tree digest, and only then moves it into the local cache: an object
//! that does not hash to its name is refused and named, and nothing of it is kept. A record
//! is checked before it is used (its key, digests, and paths that stay inside their artifact).

mod config;
mod gc;
mod record;
mod store;
mod transfer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

pub use config::{resolve, RemoteSpec};
pub use gc::RemoteGc;
pub use record::{is_digest, is_safe_path};
pub use transfer::{PullOutcome, PushReport};

use crate::cache::Entry;
use crate::error::Error;

/// How long `check` waits for the remote's first answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest record read (records are a few KiB).
const MAX_RECORD: u64 = 16 << 20;

/// An open remote.
pub struct Remote {
    spec: RemoteSpec,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    /// Bytes downloaded so far (objects only).
    downloaded: AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("name", &self.spec.name).finish()
    }
}

/// What the remote holds for a key.
#[derive(Debug)]
pub enum Lookup {
    /// No record.
    Absent,
    /// A record that passed the checks.
    Found(Entry),
    /// A record that did not (the error says why): it is not used.
    Refused(Error),
}

/// `cas/<digest>`.
fn object_path(digest: &str) -> ObjectPath {
    ObjectPath::from(format!("cas/{digest}"))
}

/// `ac/<key>.json`.
fn record_path(key: &str) -> ObjectPath {
    ObjectPath::from(format!("ac/{key}.json"))
}

/// What an object store error says about the remote.
enum Failure {
    /// No connection, or no answer in time.
    Unreachable,
    /// The credentials were refused.
    Denied,
    /// Anything else.
    Other,
}

fn classify(e: &object_store::Error) -> Failure {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(http) = c.downcast_ref::<HttpError>() {
            if matches!(
                http.kind(),
                HttpErrorKind::Connect | HttpErrorKind::Timeout | HttpErrorKind::Request | HttpErrorKind::Interrupted
            ) {
                return Failure::Unreachable;
            }
        }
        cause = c.source();
    }
    let text = e.to_string();
    if matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
        || text.contains("403 Forbidden")
        || text.contains("401 Unauthorized")
    {
        return Failure::Denied;
    }
    Failure::Other
}

impl Remote {
    /// Opens the remote `spec` names (nothing is sent yet).
    pub fn open(spec: RemoteSpec) -> Result<Remote, Error> {
        let store = store::open(&spec).map_err(|message| Error::Remote { remote: spec.name.clone(), message })?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
            Error::Remote { remote: spec.name.clone(), message: format!("cannot start its I/O runtime: {e}") }
        })?;
        Ok(Remote { spec, store, rt, downloaded: AtomicU64::new(0) })
    }

    /// What messages call it.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Bytes of objects downloaded so far.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    /// An error about this remote from an object store error: what was being done, and the
    /// error in brief (its innermost cause's first line, and an S3-style error code where the
    /// body has one), with a word on credentials where they were refused.
    fn error(&self, what: &str, e: object_store::Error) -> Error {
        let mut innermost: &dyn std::error::Error = &e;
        while let Some(next) = innermost.source() {
            innermost = next;
        }
        let text = innermost.to_string();
        let code = text.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next());
        let first = text.lines().next().unwrap_or_default().split(": <?xml").next().unwrap_or_default();
        let mut brief: String = first.chars().take(200).collect();
        if let Some(code) = code {
            brief.push_str(&format!(" ({code})"));
        }
        let remote = self.spec.name.clone();
        match classify(&e) {
            Failure::Unreachable => Error::RemoteUnreachable { remote, message: format!("{what}: {brief}") },
            Failure::Denied => Error::Remote {
                remote,
                message: format!(
                    "{what}: it refused the credentials (the backend's environment: AWS_*, GOOGLE_*, AZURE_*): {brief}"
                ),
            },
            Failure::Other => Error::Remote { remote, message: format!("{what}: {brief}") },
        }
    }

    /// Checks that the remote answers and accepts our credentials (one listing request, 15 s
    /// at most).
    pub fn check(&self) -> Result<(), Error> {
        let listed = self.rt.block_on(async {
            let mut list = self.store.list(Some(&ObjectPath::from("ac")));
            tokio::time::timeout(CHECK_TIMEOUT, list.try_next()).await
        });
        match listed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.error("cannot list its records", e)),
            Err(_) => Err(Error::RemoteUnreachable {
                remote: self.spec.name.clone(),
                message: format!("no answer in {} s", CHECK_TIMEOUT.as_secs()),
            }),
        }
    }

    /// The record of `key`: absent, found (and checked: its key, its recipe's hash, digests,
    /// sizes, paths that stay in their artifact, and the outputs `expected` names, if given),
    /// or refused. `Err` is the remote failing, not the record.
    pub fn record(&self, key: &str, expected: Option<&[String]>) -> Result<Lookup, Error> {
        let path = record_path(key);
        let got = self.rt.block_on(async {
            let got = self.store.get(&path).await?;
            if got.meta.size > MAX_RECORD {
                return Ok(None);
            }
            got.bytes().await.map(Some)
        });
        let refused = |message: String| {
            Lookup::Refused(Error::Remote {
                remote: self.spec.name.clone(),
                message: format!("record {path} refused: {message}"),
            })
        };
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(refused(format!("larger than {} MiB", MAX_RECORD >> 20))),
            Err(object_store::Error::NotFound { .. }) => return Ok(Lookup::Absent),
            Err(e) => return Err(self.error(&format!("reading {path}"), e)),
        };
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => return Ok(refused(format!("not a sumflow record ({e})"))),
        };
        match record::check(&entry, key, expected) {
            Ok(()) => Ok(Lookup::Found(entry)),
            Err(message) => Ok(refused(message)),
        }
    }

    /// Writes `entry`'s record unless a valid one is there (another push of the same key
    /// wins: both name the same recipe); one that fails the checks is replaced. Returns whether
    /// it wrote.
    fn put_record(&self, entry: &Entry) -> Result<bool, Error> {
        let path = record_path(&entry.key);
        let payload = PutPayload::from(serde_json::to_vec_pretty(entry).expect("entries serialize"));
        let write = |mode: PutMode| {
            self.rt
                .block_on(self.store.put_opts(&path, payload.clone(), mode.into()))
                .map(|_| true)
                .map_err(|e| self.error(&format!("writing {path}"), e))
        };
        match self.rt.block_on(self.store.put_opts(&path, payload.clone(), PutMode::Create.into())) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => match self.record(&entry.key, None)? {
                Lookup::Found(_) => Ok(false),
                Lookup::Absent | Lookup::Refused(_) => write(PutMode::Overwrite),
            },
            // A store without create-if-absent (WebDAV): look first, then write.
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                match self.record(&entry.key, None)? {
                    Lookup::Found(_) => Ok(false),
                    Lookup::Absent | Lookup::Refused(_) => write(PutMode::Overwrite),
                }
            }
            Err(e) => Err(self.error(&format!("writing {path}"), e)),
        }
    }
}
