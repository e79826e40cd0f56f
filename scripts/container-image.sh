#!/usr/bin/env bash
# Builds the container image from the Dockerfile: makes the local base image if needed, fetches
# the crates of Cargo.lock, and runs podman build, which compiles the binaries from source in
# its builder stage without pulling any image.
#
#   scripts/container-image.sh [TAG]         default tag: localhost/tollgate:latest
#
# The builder stage uses this host's Rust toolchain, bpf-linker and cargo registry as read-only
# volumes, because no image with Rust 1.95 can be pulled here (see the Dockerfile's header).
# Its cargo target directory is TOLLGATE_CONTAINER_TARGET_DIR, by default
# /var/cache/tollgate/container-target. It is kept between runs and shared by every checkout
# on the machine, so a rebuild compiles only what changed, also from a fresh clone. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-localhost/tollgate:latest}
./scripts/container-base.sh

# The builder stage runs cargo offline, so every crate must be in the registry beforehand.
cargo fetch --locked

sysroot=$(rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
    echo "rust-src is missing from $sysroot: run 'rustup component add rust-src'" >&2
    exit 1
fi
bpf_linker=$(command -v bpf-linker) || {
    echo "bpf-linker not found on PATH: run scripts/install-deps.sh" >&2
    exit 1
}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
target_dir=${TOLLGATE_CONTAINER_TARGET_DIR:-/var/cache/tollgate/container-target}
mkdir -p "$target_dir"
target_dir=$(realpath "$target_dir")

# One build at a time per target directory: a second build started meanwhile then finds the
# layers of the first in podman's cache instead of running apt and cargo again.
exec 9>"$target_dir/.image-build.lock"
flock 9

# --network host: the builder stage installs Debian packages with apt. podman's default
# network is not used because it changes the host's firewall. Layers are cached, so the apt
# step runs again only when the Dockerfile changes.
podman build --pull=never --network host \
    -v "$sysroot:/usr/local/rust:ro" \
    -v "$bpf_linker:/usr/local/bin/bpf-linker:ro" \
    -v "$cargo_home/registry:/usr/local/cargo/registry:ro" \
    -v "$target_dir:/build/target" \
    -f Dockerfile -t "$TAG" .
