//! Helpers: run the binary in a temp dir with a temp cache, write files, find shared data.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a finished `sumflow` invocation printed.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A temp working dir with its own cache (`<dir>/cache`).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    /// Writes `text` to `name` in the sandbox and returns its path.
    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `sumflow` command running in the sandbox with its cache.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sumflow"));
        c.args(args).current_dir(self.path()).env("SUMFLOW_CACHE", self.cache());
        c
    }

    /// Runs `sumflow ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_eq!(out.code, 0, "sumflow {args:?} failed:\n{}\n{}", out.stdout, out.stderr);
        out
    }

    /// Number of index entries in the cache (0 when nothing was committed).
    pub fn entries(&self) -> usize {
        std::fs::read_dir(self.cache().join("index")).map_or(0, |d| d.count())
    }
}

/// A file under the shared data folder beside the repository.
pub fn shared(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel);
    std::fs::canonicalize(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (shared/ must lie beside the repository)", p.display()))
}

/// The lab's results file.
pub fn lab_results() -> String {
    shared("lab-results/dialogue-summary-training-results.csv").display().to_string()
}
