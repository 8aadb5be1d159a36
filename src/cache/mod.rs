//! The content-addressed cache. Layout under the cache root:
//!
//! ```text
//! artifacts/<digest>/   one stage output; the folder's name is the blake3 of its files
//! index/<key>.json      recipe key → the artifacts a stage run produced (written last)
//! history/<pipeline>/<stage>.json   the last entry of each stage id, for `plan` diffs
//! runs/<run-id>.json    one manifest per run
//! tmp/                  outputs being written (cleared at the start of each run)
//! work/<key>/           scratch a stage keeps across failed attempts (checkpoints)
//! files.json            memoized file digests by (path, size, mtime, inode)
//! lock                  held (OS file lock) while a run writes
//! ```
//!
//! A stage's outputs are written under `tmp/`, fsynced, hashed and renamed into
//! `artifacts/`; only then is `index/<key>.json` written (temp + fsync + rename). A process
//! killed at any point leaves at most orphans that `cache gc` removes, never a broken entry.

mod files;
mod key;
mod lock;
mod maintain;
mod store;

pub use files::{read_only, FileDigests, Stamp};
pub use key::{input_digest, Recipe};
pub use lock::CacheLock;
pub use maintain::{gc, ls, verify, GcReport, VerifyReport};
pub use store::{atomic_write, Cache, Entry, OutputRecord};
pub use sumflow_stages::tools::{tree_digest, TreeDigest};
