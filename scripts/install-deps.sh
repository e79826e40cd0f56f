#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages, Rust components and tools that building and testing
# Tollgate need. Run as root. Safe to run again: what is installed already is kept.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# libnftnl and libmnl: the nftables table is built over netlink with them.
# llvm-22-dev: bpf-linker links the BPF programs with the libLLVM of rustc's LLVM version.
# bpftool, curl, python3: the end-to-end tests inspect attachments and run real clients.
# iperf3: tollgate-bench measures bulk TCP and UDP throughput with it.
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates \
    libnftnl-dev libmnl-dev \
    llvm-22-dev \
    nftables iproute2 bpftool \
    curl python3 iperf3

rustup component add rustfmt clippy rust-src

# bpf-linker must be built against the same LLVM major version as rustc's (22 for rustc 1.95).
if ! bpf-linker --version 2>/dev/null | grep -q '^bpf-linker 0\.13\.0'; then
    LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22
fi
