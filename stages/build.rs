//! Build script, with the `torch` feature: libtorch link settings (see `libtorch_link.rs`) and
//! the C++ shims: bf16 autocast (`csrc/autocast.cpp`, see `src/autocast.rs`), libtorch's
//! profiler (`csrc/trace.cpp`, see `src/trace.rs`), the attention kernels libtorch may pick
//! (`csrc/sdpa.cpp`, see `src/t5/device.rs`), c10d's store and Gloo process group
//! (`csrc/dist.cpp`, see `src/torch/dist.rs`; gloo's headers from Debian's libgloo-dev) and,
//! where libtorch has CUDA and the CUDA runtime's headers are found, CUDA graphs
//! (`csrc/cuda_graph.cpp`, see `src/cuda_graph.rs`; the `sumflow_cuda_graphs` cfg says it is
//! there).
include!("libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/trace.cpp");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo:rerun-if-changed=csrc/sdpa.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rustc-check-cfg=cfg(sumflow_cuda_graphs)");
    if let Some(libtorch) = link_libtorch(None) {
        compile_shims(&libtorch);
    }
}

/// The folder with `cuda_runtime_api.h`: PyPI's CUDA packages beside torch (CUDA 13's layout,
/// then 12's), `$CUDA_HOME`, the usual system place.
#[cfg(feature = "torch")]
fn cuda_include(libtorch: &Libtorch) -> Option<std::path::PathBuf> {
    let site = libtorch.lib.join("../..");
    let cuda_home = std::env::var_os("CUDA_HOME").map(|h| std::path::PathBuf::from(h).join("include"));
    [site.join("nvidia/cu13/include"), site.join("nvidia/cuda_runtime/include")]
        .into_iter()
        .chain(cuda_home)
        .chain([std::path::PathBuf::from("/usr/local/cuda/include")])
        .find(|d| d.join("cuda_runtime_api.h").exists())
}

#[cfg(feature = "torch")]
fn compile_shims(libtorch: &Libtorch) {
    if !std::path::Path::new("/usr/include/gloo/config.h").exists() && std::env::var_os("GLOO_INCLUDE").is_none() {
        panic!("the distributed shim (csrc/dist.cpp) needs gloo's headers: `apt-get install libgloo-dev` (or set GLOO_INCLUDE)");
    }
    let include = libtorch.lib.join("../include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/autocast.cpp")
        .file("csrc/trace.cpp")
        .file("csrc/sdpa.cpp")
        .file("csrc/dist.cpp")
        // ProcessGroupGloo's header declares it only with this; gloo's own headers come from
        // the system (Debian's libgloo-dev: libtorch bundles gloo's code, not its headers).
        .define("USE_C10D_GLOO", None)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", u8::from(libtorch.cxx11_abi)))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false);
    if libtorch.lib.join("libtorch_cuda.so").exists() {
        if let Some(cuda) = cuda_include(libtorch) {
            build.file("csrc/cuda_graph.cpp").include(cuda);
            println!("cargo:rustc-cfg=sumflow_cuda_graphs");
        }
    }
    if let Some(gloo) = std::env::var_os("GLOO_INCLUDE") {
        build.include(gloo);
    }
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    build.compile("sumflow_shims");
}

#[cfg(not(feature = "torch"))]
fn compile_shims(_: &Libtorch) {}
