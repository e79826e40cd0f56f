#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages and Rust components that building and testing Tollgate
# need, including Xvfb and the X tools that the desktop interface's tests drive it with. The
# interface renders in software (tiny-skia), so no Vulkan or Mesa drivers are needed.
# Run as root. Safe to run again: installed packages are kept as they are.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates \
    libnftnl-dev libmnl-dev \
    nftables iproute2 \
    curl python3 \
    xvfb xdotool x11-utils imagemagick fonts-dejavu-core

rustup component add rustfmt clippy
