//! Build script: libtorch link settings for the `torch` feature, the same as the stages crate's
//! (link args apply only to the package that emits them).
include!("stages/libtorch_link.rs");

fn main() {
    link_libtorch();
}
