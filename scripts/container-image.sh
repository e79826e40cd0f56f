#!/usr/bin/env bash
# Builds the container image from the Dockerfile: makes the local base image if needed, builds
# the release binaries on this host, and runs podman build without pulling anything.
#
#   scripts/container-image.sh [TAG]         default tag: localhost/tollgate:latest
#
# TOLLGATE_BIN_DIR=DIR uses the binaries in DIR instead of building them.
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-localhost/tollgate:latest}
./scripts/container-base.sh

if [ -n "${TOLLGATE_BIN_DIR:-}" ]; then
    bin_dir=$TOLLGATE_BIN_DIR
else
    cargo build --release --locked -p tollgate-proxy
    bin_dir=${CARGO_TARGET_DIR:-target}/release
fi

context=$(mktemp -d /tmp/tollgate-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir "$context/bin"
cp "$bin_dir/tollgated" "$bin_dir/tollgate" "$context/bin/"
cp container/entrypoint.sh "$context/entrypoint.sh"
# Nothing is fetched during the build, so it needs no network at all.
podman build --pull=never --network none --layers=false -f Dockerfile -t "$TAG" "$context"
