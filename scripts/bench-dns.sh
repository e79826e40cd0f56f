#!/usr/bin/env bash
# Compares cache-hit DNS performance of tollgated's resolver with dnsmasq and unbound: queries
# per second at full load and p99 latency at a fixed rate, with dnsperf and one query file.
#
# Everything runs in a throwaway network namespace on its loopback addresses: an authoritative
# dnsmasq on 127.0.0.2 serves the zone, and each server under test forwards to it and caches.
# Runs as root. Usage: scripts/bench-dns.sh [TOLLGATED] [ROUNDS]
set -euo pipefail

tollgated=${1:-target/release/tollgated}
rounds=${2:-3}
seconds=5
latency_rate=5000
names=100

for tool in dnsperf dnsmasq unbound ip python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install dnsperf dnsmasq-base unbound)" >&2; exit 1; }
done
[ -x "$tollgated" ] || { echo "missing $tollgated: run cargo build --release" >&2; exit 1; }

ns="tg-bench-$$"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip -n "$ns" link set lo up
run() { ip netns exec "$ns" "$@"; }
# Servers start through `ip netns exec` directly, which execs them, so $! is the server's pid.
start() { ip netns exec "$ns" "$@" & pids+=($!); }

# The zone and the query file: $names names, each queried once per pass over the file.
zone_args=()
: > "$work/queries"
for i in $(seq 1 "$names"); do
    zone_args+=("--host-record=host$i.bench.test,198.51.100.$((i % 250 + 1)),3600")
    echo "host$i.bench.test A" >> "$work/queries"
done
dnsmasq_args=(--keep-in-foreground --no-resolv --no-hosts --conf-file=/dev/null --pid-file
    --bind-interfaces --user=root)
start dnsmasq "${dnsmasq_args[@]}" --listen-address=127.0.0.2 --local=/bench.test/ \
    "${zone_args[@]}" 2>"$work/zone.log"
start dnsmasq "${dnsmasq_args[@]}" --listen-address=127.0.0.3 --server=127.0.0.2 \
    --cache-size=10000 2>"$work/dnsmasq.log"

cat > "$work/unbound.conf" <<CONF
server:
    interface: 127.0.0.4
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    num-threads: 1
    module-config: "iterator"
    chroot: ""
    username: ""
    pidfile: ""
    use-syslog: no
    directory: "$work"
    # unbound answers names under test. itself (RFC 6761) unless told not to.
    local-zone: "test." nodefault
forward-zone:
    name: "."
    forward-addr: 127.0.0.2
CONF
start unbound -d -c "$work/unbound.conf" 2>"$work/unbound.log"

cat > "$work/tollgated.toml" <<CONF
control_socket = "$work/control.sock"
state_dir = "$work/state"
[interception]
enabled = false
[dns]
port = 15053
[[dns.upstreams]]
address = "127.0.0.2"
CONF
start "$tollgated" --config "$work/tollgated.toml" 2>"$work/tollgated.log"
sleep 2

servers=("tollgate 127.0.0.1 15053" "dnsmasq 127.0.0.3 53" "unbound 127.0.0.4 53")

# Check that each server answers, then warm its cache with one pass over the file.
for server in "${servers[@]}"; do
    read -r name address port <<<"$server"
    if ! run dig +short +time=2 +tries=1 -p "$port" "@$address" host1.bench.test | grep -q .; then
        echo "$name on $address:$port does not answer; logs in $work:" >&2
        tail -n 5 "$work"/*.log >&2
        exit 1
    fi
    run dnsperf -s "$address" -p "$port" -d "$work/queries" -n 1 >/dev/null
done

for round in $(seq 1 "$rounds"); do
    for server in "${servers[@]}"; do
        read -r name address port <<<"$server"
        qps=$(run dnsperf -s "$address" -p "$port" -d "$work/queries" -l "$seconds" -c 4 -T 2 -q 200 -t 2 \
            | awk '/Queries per second/ {print $4}')
        p99=$(run dnsperf -s "$address" -p "$port" -d "$work/queries" -l "$seconds" -Q "$latency_rate" -t 2 -v \
            | python3 -c '
import sys
# Answered queries end with their latency in seconds; timed-out ones have none.
latencies = []
for line in sys.stdin:
    if line.startswith("> "):
        try:
            latencies.append(float(line.split()[-1]))
        except ValueError:
            pass
latencies.sort()
print(f"{latencies[int(len(latencies) * 0.99)] * 1e6:.0f}" if latencies else "nan")')
        echo "$round $name $qps $p99" | tee -a "$work/results"
    done
done

python3 - "$work/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
median = {}
for name in ("tollgate", "dnsmasq", "unbound"):
    qps = [float(r[2]) for r in rows if r[1] == name]
    p99 = [float(r[3]) for r in rows if r[1] == name]
    median[name] = (statistics.median(qps), statistics.median(p99))
print("| server | queries/s (median) | p99 latency at fixed rate, µs (median) |")
print("| --- | --- | --- |")
for name, (qps, p99) in median.items():
    print(f"| {name} | {qps:.0f} | {p99:.0f} |")
tg = median["tollgate"]
for other in ("dnsmasq", "unbound"):
    o = median[other]
    print(f"tollgate / {other}: {tg[0] / o[0]:.2f}x queries/s, {tg[1] / o[1]:.2f}x p99 latency")
PY
