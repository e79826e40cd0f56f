#!/usr/bin/env bash
# Builds the local base image `debian:bookworm` that the Dockerfile starts from, with
# debootstrap, because no container registry is reachable from the build machines. Does nothing
# when the image exists already. Run as root; needs podman and debootstrap
# (scripts/install-deps.sh installs both). Takes one to two minutes, most of it downloading
# Debian packages.
set -euo pipefail

IMAGE=docker.io/library/debian:bookworm
# Tests build images in parallel, so the lock makes the others wait for one debootstrap run.
mkdir -p /run/lock
exec 9>/run/lock/tollgate-container-base.lock
flock 9
if podman image exists "$IMAGE"; then
    echo "$IMAGE exists; nothing to do"
    exit 0
fi

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/tollgate-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

# nftables and iproute2 are what the runtime stage needs; including them here spares an apt
# run with network access inside the build.
debootstrap --variant=minbase --include=nftables,iproute2,ca-certificates bookworm "$root" "$MIRROR"
# The import gets an explicit PATH and command, which a tar import does not carry.
tar --numeric-owner -C "$root" -c . | podman import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - localhost/tollgate-base:bookworm
# `FROM debian:bookworm` resolves to this name, so the Dockerfile stays the usual one.
podman tag localhost/tollgate-base:bookworm "$IMAGE"
echo "built $IMAGE"
