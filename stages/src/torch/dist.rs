//! Several processes training one model together, over PyTorch's c10d (what
//! `torch.distributed` drives from Python): a TCPStore to meet, and a Gloo process group for
//! the collectives, through the C++ shim `csrc/dist.cpp` (tch 0.24 binds none of it). Every
//! collective blocks until it is done; a peer that died or went silent past the group's timeout
//! comes back as an error, never a hang.

#![allow(unsafe_code)] // calls into the shim: handles, tensors and an error buffer

use std::ffi::{c_void, CString};
use std::os::raw::{c_char, c_int, c_longlong, c_uchar};
use std::time::Duration;

use tch::Tensor;

use crate::error::StageError;
use crate::runtime::Ranks;

extern "C" {
    fn sumflow_store_tcp(
        host: *const c_char,
        port: c_int,
        world_size: c_int,
        is_master: c_int,
        timeout_ms: c_longlong,
        prefix: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    fn sumflow_store_set(
        store: *mut c_void,
        key: *const c_char,
        data: *const c_uchar,
        n: usize,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sumflow_store_get(
        store: *mut c_void,
        key: *const c_char,
        out: *mut *mut c_uchar,
        out_len: *mut usize,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sumflow_store_check(store: *mut c_void, key: *const c_char, err: *mut c_char, len: usize) -> c_int;
    fn sumflow_dist_free(p: *mut c_void);
    fn sumflow_store_free(store: *mut c_void);
    fn sumflow_pg_gloo(
        store: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: c_longlong,
        hostname: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    fn sumflow_pg_allreduce(pg: *mut c_void, t: *mut c_void, op: c_int, err: *mut c_char, len: usize) -> c_int;
    fn sumflow_pg_broadcast(pg: *mut c_void, t: *mut c_void, root: c_int, err: *mut c_char, len: usize) -> c_int;
    fn sumflow_pg_allgather(pg: *mut c_void, output: *mut c_void, input: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn sumflow_pg_gather(
        pg: *mut c_void,
        output: *mut c_void,
        input: *mut c_void,
        root: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sumflow_pg_reduce_scatter(
        pg: *mut c_void,
        output: *mut c_void,
        input: *mut c_void,
        op: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sumflow_pg_free(pg: *mut c_void);
}

/// Runs a shim call with an error buffer; libtorch's message on failure.
fn call<T>(what: &str, f: impl FnOnce(*mut c_char, usize) -> (T, bool)) -> Result<T, StageError> {
    let mut buf = vec![0u8; 4096];
    let (value, ok) = f(buf.as_mut_ptr().cast(), buf.len());
    if ok {
        return Ok(value);
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    Err(StageError::Distributed(format!("{what}: {}", if text.is_empty() { "libtorch failed" } else { &text })))
}

fn cstr(s: &str) -> Result<CString, StageError> {
    CString::new(s).map_err(|_| StageError::Distributed(format!("a NUL byte in {s:?}")))
}

fn millis(d: Duration) -> c_longlong {
    d.as_millis().min(c_longlong::MAX as u128) as c_longlong
}

/// A c10d TCPStore: where the ranks meet and exchange a few keys.
pub struct Store(*mut c_void);

// SAFETY: c10d stores serialize their client calls.
unsafe impl Send for Store {}

impl Store {
    /// A client of `host:port`; rank 0 is also the server, and waits up to `timeout` for the
    /// `world` ranks to join. `timeout` also bounds every [`Store::get`].
    /// A non-empty `prefix` puts every key under it (torchrun's agent store: see [`Ranks`]).
    fn tcp(
        host: &str,
        port: u16,
        world: usize,
        master: bool,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Store, StageError> {
        let (host, prefix) = (cstr(host)?, cstr(prefix)?);
        let what = format!("meeting at {}:{port}", host.to_string_lossy());
        // SAFETY: C strings that outlive the call and a buffer of the length passed; null is
        // failure.
        let s = call(&what, |err, len| {
            let s = unsafe {
                sumflow_store_tcp(
                    host.as_ptr(),
                    c_int::from(port),
                    world as c_int,
                    c_int::from(master),
                    millis(timeout),
                    prefix.as_ptr(),
                    err,
                    len,
                )
            };
            (s, !s.is_null())
        })?;
        Ok(Store(s))
    }

    /// A client of the store someone else serves at `host:port` (torchrun's agent), its keys
    /// under `prefix`; `timeout` bounds connecting and each [`Store::get`].
    pub fn client(host: &str, port: u16, prefix: &str, timeout: Duration) -> Result<Store, StageError> {
        Store::tcp(host, port, 0, false, timeout, prefix)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), StageError> {
        let k = cstr(key)?;
        // SAFETY: a live handle, a C string and a byte slice that outlive the call.
        call(key, |err, len| {
            ((), unsafe { sumflow_store_set(self.0, k.as_ptr(), value.as_ptr(), value.len(), err, len) } == 0)
        })
    }

    /// The value of `key`, waiting however long it takes some rank to set it: an error only when
    /// the store is gone.
    pub fn wait(&self, key: &str) -> Result<Vec<u8>, StageError> {
        loop {
            match self.get(key) {
                Err(StageError::Distributed(e)) if e.contains("timeout") => continue,
                other => return other,
            }
        }
    }

    /// Whether `key` is set, at once.
    fn check(&self, key: &str) -> Result<bool, StageError> {
        let k = cstr(key)?;
        // SAFETY: a live handle and a C string that outlive the call.
        let mut set = false;
        call(key, |err, len| {
            let rc = unsafe { sumflow_store_check(self.0, k.as_ptr(), err, len) };
            set = rc == 1;
            ((), rc >= 0)
        })?;
        Ok(set)
    }

    /// The value rank `from` sets at `key`, waiting up to `limit` (none: as long as it takes) —
    /// unless some rank of `world` reports that it failed ([`report_failure`]) first: then an
    /// error naming it and why, at once, rather than a wait for a rank that will never come.
    fn wait_for(&self, key: &str, from: usize, world: usize, limit: Option<Duration>) -> Result<Vec<u8>, StageError> {
        let start = std::time::Instant::now();
        loop {
            if self.check(key)? {
                return self.get(key);
            }
            for rank in 0..world {
                if self.check(&failed_key(rank))? {
                    let why = String::from_utf8_lossy(&self.get(&failed_key(rank))?).into_owned();
                    return Err(StageError::Distributed(format!("rank {rank} failed: {why}")));
                }
            }
            if limit.is_some_and(|l| start.elapsed() > l) {
                return Err(StageError::Distributed(format!(
                    "rank {from} did not come within {} s (key {key})",
                    limit.unwrap_or_default().as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of `key`, waiting (up to the store's timeout) for some rank to set it.
    fn get(&self, key: &str) -> Result<Vec<u8>, StageError> {
        let k = cstr(key)?;
        let (mut out, mut n): (*mut c_uchar, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: a live handle and out-pointers to live locals; the shim mallocs `out`.
        call(key, |err, len| ((), unsafe { sumflow_store_get(self.0, k.as_ptr(), &mut out, &mut n, err, len) } == 0))?;
        // SAFETY: `out` holds `n` bytes malloc'd by the shim, freed once, here.
        let value = unsafe { std::slice::from_raw_parts(out, n).to_vec() };
        unsafe { sumflow_dist_free(out.cast()) };
        Ok(value)
    }
}

fn failed_key(rank: usize) -> String {
    format!("sumflow/failed/rank{rank}")
}

/// Tells the other ranks of the stage `ranks` describes that this one failed (`why`), so that
/// whoever waits for it — to meet, or for its share of the results — fails at once, naming it.
/// For ranks that meet in torchrun's store, which outlives them (a rank of `devices: N` that
/// fails is stopped with the others by the runner).
pub fn report_failure(ranks: &Ranks, why: &str) -> Result<(), StageError> {
    let store = Store::client(&ranks.host, ranks.port, &ranks.prefix, Duration::from_secs(ranks.timeout_s))?;
    store.set(&failed_key(ranks.rank), why.as_bytes())
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from `tcp` and is freed once (a group keeps its own reference).
        unsafe { sumflow_store_free(self.0) }
    }
}

/// The processes running one stage together, joined in a Gloo process group. Collectives must
/// be called in the same order on every rank, from one thread.
pub struct Group {
    pg: *mut c_void,
    store: Store,
    /// This process's rank, from 0.
    pub rank: usize,
    /// How many ranks there are.
    pub world: usize,
}

// SAFETY: the group is driven from one thread at a time.
unsafe impl Send for Group {}

impl Group {
    /// Joins the group `ranks` describes: meet in the store (rank 0 serves it, or torchrun's
    /// agent), check that every rank runs this same sumflow and computes the same stage key,
    /// and build the Gloo group (on `ranks.host`'s address when the ranks share a machine).
    pub fn join(ranks: &Ranks) -> Result<Group, StageError> {
        let timeout = Duration::from_secs(ranks.timeout_s);
        let torchrun = !ranks.prefix.is_empty();
        let store = meet(ranks)?;
        // Under torchrun each rank binds its own machine's address (or GLOO_SOCKET_IFNAME's).
        let host = cstr(if torchrun { "" } else { &ranks.host })?;
        // SAFETY: a live store handle and a C string that outlive the call; null is failure.
        let pg = call("the Gloo group", |err, len| {
            let pg = unsafe {
                sumflow_pg_gloo(store.0, ranks.rank as c_int, ranks.world as c_int, millis(timeout), host.as_ptr(), err, len)
            };
            (pg, !pg.is_null())
        })?;
        Ok(Group { pg, store, rank: ranks.rank, world: ranks.world })
    }

    /// Every rank's `bytes`, in rank order, for rank 0 (through the store; for results, not
    /// tensors); `None` for the others, which go on at once. Rank 0 waits as long as the others
    /// take: the runner stops it if one of them dies.
    pub fn gather(&self, name: &str, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, StageError> {
        let key = |rank: usize| format!("gather/{name}/rank{rank}");
        self.store.set(&key(self.rank), bytes)?;
        if self.rank != 0 {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(self.world);
        for rank in 0..self.world {
            all.push(self.store.wait_for(&key(rank), rank, self.world, None)?);
        }
        Ok(Some(all))
    }

    /// Sums `t` over all ranks, in place.
    pub fn sum(&self, t: &mut Tensor) -> Result<(), StageError> {
        self.all_reduce(t, 0)
    }

    /// The largest `t` of all ranks', in place.
    pub fn max(&self, t: &mut Tensor) -> Result<(), StageError> {
        self.all_reduce(t, 2)
    }

    fn all_reduce(&self, t: &mut Tensor, op: c_int) -> Result<(), StageError> {
        // SAFETY: a live handle and a tensor borrowed for the (blocking) call.
        call("all-reduce", |err, len| ((), unsafe { sumflow_pg_allreduce(self.pg, t.as_mut_ptr().cast(), op, err, len) } == 0))
    }

    /// Sums `input` (world × `part`'s length, contiguous) over the ranks and leaves this rank's
    /// slice of the sum (rank · length onwards) in `part`.
    pub fn sum_scattered(&self, part: &mut Tensor, input: &mut Tensor) -> Result<(), StageError> {
        // SAFETY: a live handle and tensors borrowed for the (blocking) call.
        call("reduce-scatter", |err, len| {
            let rc = unsafe { sumflow_pg_reduce_scatter(self.pg, part.as_mut_ptr().cast(), input.as_mut_ptr().cast(), 0, err, len) };
            ((), rc == 0)
        })
    }

    /// Every rank's `part`, in rank order, into `output` (world × `part`'s length, contiguous)
    /// on rank 0; the other ranks give `None` and receive nothing.
    pub fn gather_to_first(&self, output: Option<&mut Tensor>, part: &mut Tensor) -> Result<(), StageError> {
        let out = output.map_or(std::ptr::null_mut(), |t| t.as_mut_ptr().cast());
        // SAFETY: a live handle and tensors (or null) borrowed for the (blocking) call.
        call("gather", |err, len| {
            ((), unsafe { sumflow_pg_gather(self.pg, out, part.as_mut_ptr().cast(), 0, err, len) } == 0)
        })
    }

    /// Fills `output` (world × `part`'s length, contiguous) with every rank's `part`, in rank
    /// order. `part` may be this rank's slice of `output` (in place: Gloo gathers through a
    /// buffer of its own, NCCL takes `output + rank · length` as in place).
    pub fn gather_into(&self, output: &mut Tensor, part: &mut Tensor) -> Result<(), StageError> {
        // SAFETY: as for `sum_scattered`.
        call("all-gather", |err, len| {
            ((), unsafe { sumflow_pg_allgather(self.pg, output.as_mut_ptr().cast(), part.as_mut_ptr().cast(), err, len) } == 0)
        })
    }

    /// Overwrites `t` on every rank with rank `root`'s.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), StageError> {
        // SAFETY: as for `sum`.
        call("broadcast", |err, len| {
            ((), unsafe { sumflow_pg_broadcast(self.pg, t.as_mut_ptr().cast(), root as c_int, err, len) } == 0)
        })
    }
}

/// Meets the other ranks of `ranks` in their store (rank 0 serves it, or torchrun's agent) and
/// checks that every rank runs this same sumflow and computes the same stage key: rank 0
/// compares and gives its verdict, and a rank that differs is refused, naming both. A rank
/// that cannot take part (it cannot read rank 0's job) still meets, so that rank 0 refuses it
/// at once rather than wait for it.
pub fn meet(ranks: &Ranks) -> Result<Store, StageError> {
    let timeout = Duration::from_secs(ranks.timeout_s);
    let serves = ranks.rank == 0 && ranks.prefix.is_empty();
    let store = Store::tcp(&ranks.host, ranks.port, ranks.world, serves, timeout, &ranks.prefix)?;
    let mut me = format!("sumflow {}", env!("CARGO_PKG_VERSION"));
    if !ranks.key.is_empty() {
        // A key's first 12 hex digits, as `sumflow plan` shows it; anything else whole.
        let key = if ranks.key.len() == 64 { &ranks.key[..12] } else { &ranks.key };
        me.push_str(&format!(", stage key {key}"));
    }
    store.set(&format!("sumflow/rank{}", ranks.rank), me.as_bytes())?;
    if ranks.rank == 0 {
        let mut verdict = "ok".to_string();
        for r in 1..ranks.world {
            let theirs = store.wait_for(&format!("sumflow/rank{r}"), r, ranks.world, Some(timeout))?;
            let theirs = String::from_utf8_lossy(&theirs).into_owned();
            if theirs != me {
                verdict = format!(
                    "rank {r} runs {theirs} and rank 0 {me}: every rank must run the same sumflow on the same pipeline"
                );
                break;
            }
        }
        store.set("sumflow/verdict", verdict.as_bytes())?;
        if verdict != "ok" {
            return Err(StageError::Distributed(verdict));
        }
    } else {
        let verdict = store.wait_for("sumflow/verdict", 0, ranks.world, Some(timeout))?;
        let verdict = String::from_utf8_lossy(&verdict).into_owned();
        if verdict != "ok" {
            return Err(StageError::Distributed(verdict));
        }
    }
    Ok(store)
}

/// Ranks on one CPU share its cores (a thread each per core) rather than each taking them all.
pub fn share_cores(world: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads((cores / world.max(1)).max(1) as i32);
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle came from `join` and is freed once.
        unsafe { sumflow_pg_free(self.pg) }
    }
}
