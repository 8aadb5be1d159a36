//! Build script: libtorch link settings for the `torch` feature (see `libtorch_link.rs`).
include!("libtorch_link.rs");
