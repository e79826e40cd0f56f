# Tollgate in a container: tollgated, tollgate, nftables and iproute2 on Debian 12.
#
# The binaries are built on the host and copied in, because the build needs Rust 1.95 and a
# bpf-linker built against LLVM 22, which no Debian 12 package provides and no registry image
# can bring here. scripts/container-image.sh builds them and prepares the build context:
#
#   context/bin/tollgated, context/bin/tollgate   release binaries built on Debian 12
#   context/entrypoint.sh                         container/entrypoint.sh
#
# The base `debian:bookworm` may be the registry's image or the local one that
# scripts/container-base.sh makes with debootstrap.

# Stage 1: check that the host's binaries run against the image's libraries (glibc, libnftnl,
# libmnl), so a mismatch fails the build instead of the first start.
FROM debian:bookworm AS binaries
RUN command -v nft >/dev/null && command -v ip >/dev/null || \
    (apt-get update && apt-get install -y --no-install-recommends nftables iproute2 \
     && rm -rf /var/lib/apt/lists/*)
COPY bin/tollgated bin/tollgate /usr/local/bin/
COPY entrypoint.sh /usr/local/bin/tollgate-entrypoint
RUN ! ldd /usr/local/bin/tollgated /usr/local/bin/tollgate | grep 'not found' \
    && /usr/local/bin/tollgated --version \
    && /usr/local/bin/tollgate --version

# Stage 2: the runtime image.
FROM debian:bookworm
RUN command -v nft >/dev/null && command -v ip >/dev/null || \
    (apt-get update && apt-get install -y --no-install-recommends nftables iproute2 \
     && rm -rf /var/lib/apt/lists/*)
COPY --from=binaries /usr/local/bin/tollgated /usr/local/bin/tollgate \
    /usr/local/bin/tollgate-entrypoint /usr/local/bin/
RUN mkdir -p /etc/tollgate /var/lib/tollgate /var/log/tollgate
ENTRYPOINT ["/usr/local/bin/tollgate-entrypoint"]
CMD ["--audit"]
