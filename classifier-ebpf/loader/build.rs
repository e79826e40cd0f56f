//! Builds the BPF programs of the parent crate into `OUT_DIR/classifier-ebpf`.
//!
//! Needs bpf-linker on `PATH` and the `rust-src` component of the toolchain that runs this
//! build. With `AYA_BUILD_SKIP=1` nothing is built and the crate compiles without an object,
//! which is enough for `cargo clippy` and unit tests, but `Classifier::load_and_attach` then fails.

use std::{env, path::Path};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "tollgate-classifier-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(tollgate_ebpf_skipped)");
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP")
        .is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo::rustc-cfg=tollgate_ebpf_skipped");
    }

    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .and_then(Path::to_str)
        .ok_or_else(|| anyhow!("no UTF-8 parent directory for {manifest_dir}"))?;

    // Build the BPF crate with the toolchain that runs this build (rustup names it in
    // RUSTUP_TOOLCHAIN), so a pinned toolchain also pins the BPF build.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    println!("cargo::rerun-if-env-changed=RUSTUP_TOOLCHAIN");

    // `-Z build-std=core` is unstable. RUSTC_BOOTSTRAP=1 makes the stable toolchain accept it,
    // and aya-build adds the flag only when this variable is 1. Setting it here changes only
    // the environment of this build script and of the nested cargo it starts.
    // SAFETY: no other thread exists yet in this build script, so nothing reads the environment
    // concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    let package = Package {
        name: EBPF_PACKAGE,
        root_dir: ebpf_dir,
        ..Package::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
        .with_context(|| format!("failed to build {EBPF_PACKAGE}; is bpf-linker on PATH?"))
}
