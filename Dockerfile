# Tollgate in a container: tollgated, tollgate, nftables and iproute2 on Debian 12.
#
# The builder stage compiles tollgated and tollgate, BPF programs included, from the sources in
# the build context. The build needs Rust 1.95 with rust-src and a bpf-linker linked against
# LLVM 22. Debian 12 packages rustc 1.63, and no registry image with a newer Rust can be pulled
# where this project is built, so the toolchain comes from the build host as read-only volumes.
# scripts/container-image.sh passes them and the other build volumes:
#
#   /usr/local/rust                 the sysroot of a rustup toolchain (rustc --print sysroot),
#                                   with rust-src (read-only)
#   /usr/local/bin/bpf-linker       bpf-linker 0.13, built against LLVM 22 (read-only)
#   /usr/local/cargo/registry       the host's cargo registry with every crate of Cargo.lock
#                                   fetched and unpacked (`cargo fetch --locked`, read-only)
#   /build/target                   a writable cargo target directory that persists between
#                                   builds, so a rebuild compiles only what changed
#
# The compiler, its standard library sources and the crates are the same files a host build
# uses. What comes from the image is Debian 12's C toolchain, glibc and the -dev packages, so
# the binaries link against the libraries the runtime stage has. The build step runs with cargo
# offline: every crate comes from the mounted registry.
#
# The base `debian:bookworm` may be the registry's image or the local one that
# scripts/container-base.sh makes with debootstrap. The builder stage installs packages with
# apt, so the build needs network access to a Debian mirror (`podman build --network host`).

# Stage 1: build the binaries.
FROM debian:bookworm AS builder
# gcc links the Rust binaries and compiles ring's C and assembly parts. libnftnl and libmnl
# are linked by the nftables code. bpf-linker loads libLLVM 22, which Debian 12 ships only in
# bookworm-security.
ARG DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
RUN echo "deb $DEBIAN_SECURITY_MIRROR bookworm-security main" \
        > /etc/apt/sources.list.d/bookworm-security.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc libc6-dev pkg-config libnftnl-dev libmnl-dev libllvm22 \
    && rm -rf /var/lib/apt/lists/*
# rustup is deliberately not on PATH: without it the loader's build script runs the nested BPF
# build with the cargo and rustc found here instead of asking rustup for a toolchain.
# The image's binaries carry no debug information, which makes them about 150 MB smaller and
# the build faster. The BPF object keeps its BTF, because its own build asks for it.
ENV PATH=/usr/local/rust/bin:$PATH \
    CARGO_HOME=/usr/local/cargo \
    CARGO_TARGET_DIR=/build/target \
    CARGO_NET_OFFLINE=true \
    CARGO_PROFILE_RELEASE_DEBUG=false
COPY . /src
WORKDIR /src
RUN if ! command -v cargo >/dev/null || ! command -v bpf-linker >/dev/null; then \
        echo "cargo or bpf-linker not found: mount a Rust toolchain at /usr/local/rust and" \
             "bpf-linker at /usr/local/bin/bpf-linker (scripts/container-image.sh does)" >&2; \
        exit 1; \
    fi \
    && cargo build --release --locked -p tollgate-proxy --bins \
    && mkdir -p /out \
    && cp "$CARGO_TARGET_DIR/release/tollgated" "$CARGO_TARGET_DIR/release/tollgate" /out/

# Stage 2: the runtime image.
FROM debian:bookworm
RUN command -v nft >/dev/null && command -v ip >/dev/null || \
    (apt-get update && apt-get install -y --no-install-recommends nftables iproute2 \
     && rm -rf /var/lib/apt/lists/*)
COPY --from=builder /out/tollgated /out/tollgate /usr/local/bin/
COPY container/entrypoint.sh /usr/local/bin/tollgate-entrypoint
# The binaries must find every library they link (libnftnl, libmnl) in this stage, so a missing
# runtime package fails the build instead of the first start.
RUN ! ldd /usr/local/bin/tollgated /usr/local/bin/tollgate | grep 'not found' \
    && /usr/local/bin/tollgated --version \
    && /usr/local/bin/tollgate --version \
    && mkdir -p /etc/tollgate /var/lib/tollgate /var/log/tollgate
ENTRYPOINT ["/usr/local/bin/tollgate-entrypoint"]
CMD ["--audit"]
