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

    /// A `sumflow` command running in the sandbox with its cache. (`SUMFLOW_TEST_BIN` runs
    /// another build instead: how the hostile-input tests were shown to fail before their fixes.)
    pub fn cmd(&self, args: &[&str]) -> Command {
        let bin = std::env::var_os("SUMFLOW_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sumflow").into());
        let mut c = Command::new(bin);
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
/// A program of the test venv (`$VIRTUAL_ENV`, else the repository's `.venv`).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    venv.join("bin").join(name)
}

/// A worker at `s/NAME` that, asked to run stage `stage`, writes libtorch's abort line and is
/// killed by SIGABRT (no core file), as a libtorch abort would; the real `sumflow-worker`
/// otherwise.
#[cfg(feature = "torch")]
pub fn aborting_worker(s: &Sandbox, name: &str, stage: &str) -> PathBuf {
    let real = Path::new(env!("CARGO_BIN_EXE_sumflow")).with_file_name("sumflow-worker");
    let wrapper = s.write(
        name,
        format!(
            "#!/bin/sh\nulimit -c 0\nif [ \"$2\" = {stage} ]; then\n  echo \"terminate called after throwing an instance of 'c10::Error'\" >&2\n  kill -ABRT $$\nfi\nexec {} \"$@\"\n",
            real.display()
        ),
    );
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    wrapper
}

pub fn shared(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel);
    std::fs::canonicalize(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (shared/ must lie beside the repository)", p.display()))
}

/// The lab's results file.
pub fn lab_results() -> String {
    shared("lab-results/dialogue-summary-training-results.csv").display().to_string()
}

/// A page as headless Chromium renders it (Debian's `chromium`; `make test` installs it).
pub struct Rendered {
    /// The DOM after loading (`--dump-dom`).
    pub dom: String,
    /// Share of a 1200×1600 screenshot's pixels that are not near white.
    pub ink: f64,
    /// The screenshot's pixels (RGB or RGBA rows).
    #[cfg_attr(not(feature = "torch"), allow(dead_code))] // compared in a model test
    pub pixels: Vec<u8>,
}

/// Opens `url` (a `file://` address, maybe with a `#heading` anchor) in headless Chromium.
pub fn chromium(s: &Sandbox, url: &str) -> Rendered {
    let chrome = |extra: &[&str]| {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"])
            .args(extra)
            .arg(url)
            .stderr(std::process::Stdio::null())
            .output()
            .expect("chromium (Debian's package; `make test` installs it)");
        assert!(out.status.success(), "chromium failed on {url}");
        out.stdout
    };
    let dom = String::from_utf8(chrome(&["--dump-dom"])).unwrap();
    let png = s.path().join(format!("shot-{}.png", blake3::hash(url.as_bytes()).to_hex()));
    chrome(&[&format!("--screenshot={}", png.display())]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    let inked = buf.chunks(channels).filter(|p| p.iter().take(3).any(|&c| c < 200)).count();
    Rendered { dom, ink: inked as f64 / (buf.len() / channels) as f64, pixels: buf }
}
