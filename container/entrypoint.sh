#!/bin/sh
# Starts tollgated in a container. Without an explicit --attribution-cgroup it mounts cgroup2
# inside the container, because container runtimes on hosts with a hybrid (v1 and v2) cgroup
# layout do not mount it. With a private cgroup namespace the mount's root is the container's
# own cgroup, so the daemon attributes the processes of this container.
set -eu

case " $* " in
*" --attribution-cgroup "* | *" --attribution-cgroup="*)
    exec /usr/local/bin/tollgated "$@"
    ;;
esac

if grep -q ' - cgroup2 ' /proc/self/mountinfo; then
    exec /usr/local/bin/tollgated "$@"
fi
# Without CAP_SYS_ADMIN the mount fails; tollgated then runs and reports attribution as
# unavailable, and options such as --version or --cleanup work as usual.
mkdir -p /run/tollgate/cgroup
if mount -t cgroup2 none /run/tollgate/cgroup 2>/dev/null; then
    exec /usr/local/bin/tollgated --attribution-cgroup /run/tollgate/cgroup "$@"
fi
echo "tollgate-entrypoint: failed to mount cgroup2 (needs CAP_SYS_ADMIN); processes stay unnamed" >&2
exec /usr/local/bin/tollgated "$@"
