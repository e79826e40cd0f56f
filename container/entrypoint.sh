#!/bin/sh
# Starts tollgated in a container. Without an explicit --attribution-cgroup it mounts cgroup2
# inside the container, because container runtimes on hosts with a hybrid (v1 and v2) cgroup
# layout do not mount it. With a private cgroup namespace the mount's root is the container's
# own cgroup, so the daemon attributes the processes of this container.
set -eu

case " $* " in
*" --attribution-cgroup "*)
    exec /usr/local/bin/tollgated "$@"
    ;;
esac

if grep -q ' - cgroup2 ' /proc/self/mountinfo; then
    exec /usr/local/bin/tollgated "$@"
fi
mkdir -p /run/tollgate/cgroup
mount -t cgroup2 none /run/tollgate/cgroup
exec /usr/local/bin/tollgated --attribution-cgroup /run/tollgate/cgroup "$@"
