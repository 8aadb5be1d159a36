// With the `torch` feature: keep `libtorch_cuda` in the link (linkers drop it as unneeded, and
// then CUDA is never found at run time) and add an rpath to libtorch, so binaries run without
// `LD_LIBRARY_PATH`. libtorch is found as torch-sys finds it: `$LIBTORCH`, or the `torch`
// package of the Python on PATH when `LIBTORCH_USE_PYTORCH=1`. Included by the build scripts of
// both packages, as link args apply only to the package that emits them.

use std::path::PathBuf;
use std::process::Command;

/// Where libtorch is, and how its C++ was compiled.
#[allow(dead_code)] // the root package's build script links only
struct Libtorch {
    /// The folder with `libtorch_cpu.so`; headers are in `../include`.
    lib: PathBuf,
    /// `_GLIBCXX_USE_CXX11_ABI` of the build (PyPI's torch 2.11: 1).
    cxx11_abi: bool,
}

fn libtorch() -> Option<Libtorch> {
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").map_or(true, |v| v != "0");
        return Some(Libtorch { lib: PathBuf::from(dir).join("lib"), cxx11_abi });
    }
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let code = "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib')); \
                print(int(torch.compiled_with_cxx11_abi()))";
    let out = Command::new(python).args(["-c", code]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let lib = PathBuf::from(lines.next()?.trim());
    Some(Libtorch { lib, cxx11_abi: lines.next() == Some("1") })
}

/// Emits the link settings — libtorch's CUDA kept for `only_bin` alone when given (the root
/// package: the runner, `sumflow`, must not load libtorch) — and returns where libtorch is;
/// `None` without the `torch` feature or without libtorch.
fn link_libtorch(only_bin: Option<&str>) -> Option<Libtorch> {
    println!("cargo:rerun-if-changed=libtorch_link.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    std::env::var_os("CARGO_FEATURE_TORCH")?;
    let Some(libtorch) = libtorch() else {
        println!("cargo:warning=libtorch not found: set LIBTORCH, or LIBTORCH_USE_PYTORCH=1 with torch installed");
        return None;
    };
    let lib = &libtorch.lib;
    let arg = |a: String| match only_bin {
        Some(bin) => println!("cargo:rustc-link-arg-bin={bin}={a}"),
        None => println!("cargo:rustc-link-arg={a}"),
    };
    if lib.join("libtorch_cuda.so").exists() {
        arg("-Wl,--no-as-needed".into());
        arg(format!("-L{}", lib.display()));
        arg("-ltorch_cuda".into());
        // The CUDA graph shim's streams (`c10::cuda`).
        arg("-lc10_cuda".into());
        arg("-Wl,--as-needed".into());
    }
    // Harmless where libtorch is not linked: nothing is looked up there.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    Some(libtorch)
}
