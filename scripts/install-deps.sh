#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages, Rust components and tools that building and testing
# Tollgate need. Run as root. Safe to run again: what is installed already is kept.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# libnftnl and libmnl: the nftables table is built over netlink with them.
# llvm-22-dev: bpf-linker links the BPF programs with the libLLVM of rustc's LLVM version.
# bpftool, curl, python3, liburing-dev: the end-to-end tests inspect attachments and run real
# clients, one of them a C program built against liburing.
# iperf3: tollgate-bench measures bulk TCP and UDP throughput with it.
# xvfb, xdotool, x11-utils, imagemagick, fonts-dejavu-core: the desktop interface's lab test
# runs it under Xvfb, types at it and takes screenshots. It renders in software (tiny-skia), so
# no GPU drivers are needed.
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates \
    libnftnl-dev libmnl-dev \
    llvm-22-dev \
    nftables iproute2 bpftool \
    curl python3 liburing-dev iperf3 \
    dnsmasq-base dnsutils openssl \
    podman runc debootstrap \
    xvfb xdotool x11-utils imagemagick fonts-dejavu-core

# podman: the container tests build the Dockerfile and run tollgated in containers. Its
# defaults fail on a host with a hybrid cgroup layout (crun rejects it, so runc) and without
# CAP_SYS_RESOURCE (raising the file limit fails, so explicit ulimits). The file is written
# only where it is missing or already has exactly this content, so a local one is kept.
CONTAINERS_CONF='[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"'
if [ ! -e /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    printf '%s\n' "$CONTAINERS_CONF" > /etc/containers/containers.conf
elif [ "$(cat /etc/containers/containers.conf)" != "$CONTAINERS_CONF" ]; then
    echo "keeping /etc/containers/containers.conf, which differs from what the tests expect:" >&2
    printf '%s\n' "$CONTAINERS_CONF" >&2
fi

rustup component add rustfmt clippy rust-src

# bpf-linker must be built against the same LLVM major version as rustc's (22 for rustc 1.95).
if ! bpf-linker --version 2>/dev/null | grep -q '^bpf-linker 0\.13\.0'; then
    LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22
fi
