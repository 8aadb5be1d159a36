//! The cache lock: an OS file lock on `lock` (the kernel releases it when its holder dies, even
//! by SIGKILL, so a dead run's lock is taken over at once, never waited on), with the holder's
//! PID written inside for the message a waiting run prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::error::Error;

/// Held while a run uses the cache; released on drop.
pub struct CacheLock {
    _file: Option<File>,
}

impl CacheLock {
    /// Takes the lock at `path`, calling `waiting(holder_pid)` once if another live run has it.
    pub fn acquire(path: &Path, waiting: &dyn Fn(&str)) -> Result<CacheLock, Error> {
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if !told {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        waiting(holder.trim());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        // We hold it: record who we are (a previous holder's PID may still be written here).
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(CacheLock { _file: Some(file) })
    }

    /// A shared lock at `path`, for a run that writes no artifact (`--frozen`): runs like it
    /// share the cache, while a run that writes waits for them (and they for it). On a cache
    /// that cannot be written and has no lock file, no run can write either: no lock is needed.
    pub fn shared(path: &Path, waiting: &dyn Fn(&str)) -> Result<CacheLock, Error> {
        let io = |e| Error::io(path, e);
        let mut file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path) {
            Ok(file) => file,
            Err(e) if super::read_only(&e) => match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheLock { _file: None }),
                Err(e) => return Err(io(e)),
            },
            Err(e) => return Err(io(e)),
        };
        let mut told = false;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(CacheLock { _file: Some(file) }),
                Err(TryLockError::WouldBlock) => {
                    if !told {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        waiting(holder.trim());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
    }
}
