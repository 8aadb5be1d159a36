//! Build script: libtorch link settings for the `torch` feature, the same as the stages crate's
//! (link args apply only to the package that emits them), for the worker binary only: the
//! runner does not load libtorch.
include!("stages/libtorch_link.rs");

fn main() {
    link_libtorch(Some("sumflow-worker"));
}
