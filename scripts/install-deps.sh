#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages and Rust components that building and testing Tollgate
# need. Run as root. Safe to run again: installed packages are kept as they are.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates \
    libnftnl-dev libmnl-dev \
    nftables iproute2 \
    curl python3 \
    dnsmasq-base dnsutils openssl

rustup component add rustfmt clippy
