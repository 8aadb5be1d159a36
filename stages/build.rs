//! Build script, with the `torch` feature: libtorch link settings (see `libtorch_link.rs`) and
//! the C++ shim for bf16 autocast (`csrc/autocast.cpp`, see `src/autocast.rs`).
include!("libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    if let Some(libtorch) = link_libtorch() {
        compile_autocast_shim(&libtorch);
    }
}

#[cfg(feature = "torch")]
fn compile_autocast_shim(libtorch: &Libtorch) {
    let include = libtorch.lib.join("../include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/autocast.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", u8::from(libtorch.cxx11_abi)))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("sumflow_autocast");
}

#[cfg(not(feature = "torch"))]
fn compile_autocast_shim(_: &Libtorch) {}
