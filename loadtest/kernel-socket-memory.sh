#!/usr/bin/env bash
# The kernel's memory per idle connection, beside Stratus's own (RSS): one `stratus serve`
# (one worker, CPU 0), `stratus-load connections` (CPU 1) opening COUNT idle subscribed
# WebSocket connections to it over loopback and holding them; /proc/net/sockstat (`TCP:
# mem`, in pages: socket buffers) and /proc/slabinfo (every slab cache's objects times
# their size: the TCP socket, inode, dentry, file, io_uring request ...) read before the
# connections open and while they are held. On loopback both ends of each connection are
# on this machine, so the kernel's part of one server-side connection is taken as the
# increase over 2 x COUNT sockets (the client's end is a socket of the same kind, also
# driven by io_uring); Stratus's RSS increase over COUNT is the user-space part. Needs
# root for /proc/slabinfo. Builds nothing: run
# `cargo build --release -p stratus-server -p stratus-loadtest` first.
#
#   loadtest/kernel-socket-memory.sh [COUNT] [OUTDIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${CARGO_TARGET_DIR:-target}/release
count=${1:-10000}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
source loadtest/children.sh

snapshot() { # file: sockstat, slabinfo, meminfo
  { echo "## sockstat"; cat /proc/net/sockstat; echo "## slabinfo"; cat /proc/slabinfo
    echo "## meminfo"; cat /proc/meminfo; } >"$1"
}
taskset -c 0 "$bin/stratus" serve --listen 127.0.0.1:19601 --admin-listen 127.0.0.1:19691 \
  --workers 1 --deflate off --log-level warn & pids+=($!)
server=$!
until (exec 3<>/dev/tcp/127.0.0.1/19601) 2>/dev/null; do sleep 0.05; done
sleep 1
snapshot "$out/before.txt"
base=$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)
"$bin/stratus-load" connections --client-cpu 1 --url "ws://127.0.0.1:19601/ws?topic=idle" \
  -n "$count" -r 2000 --hold 8 --pid "$server" --out "$out/connections.json" >/dev/null & pids+=($!)
client=$!
until (( $(awk '/^TCP:/ {print $3}' /proc/net/sockstat) >= base + 2 * count )); do
  kill -0 "$client" 2>/dev/null || { echo "the load generator stopped early" >&2; exit 1; }
  sleep 0.2
done
sleep 2
snapshot "$out/after.txt"
wait "$client"
python3 - "$out" "$count" <<'EOF'
import json, sys

out, count = sys.argv[1], int(sys.argv[2])

def parse(path):
    sections, name = {}, None
    for line in open(path):
        if line.startswith("## "):
            name = line[3:].strip(); sections[name] = []
        else:
            sections[name].append(line.rstrip("\n"))
    tcp = next(l for l in sections["sockstat"] if l.startswith("TCP:")).split()
    tcp = dict(zip(tcp[1::2], map(int, tcp[2::2])))
    slabs = {}
    for l in sections["slabinfo"][2:]:
        f = l.split()
        slabs[f[0]] = int(f[1]) * int(f[3])  # active objects x object size
    mem = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in sections["meminfo"]}
    return tcp, slabs, mem

(t0, s0, m0), (t1, s1, m1) = parse(f"{out}/before.txt"), parse(f"{out}/after.txt")
sockets = t1["inuse"] - t0["inuse"]
grown = {k: s1.get(k, 0) - s0.get(k, 0) for k in set(s0) | set(s1)}
top = sorted(((k, v) for k, v in grown.items() if v > 0), key=lambda kv: -kv[1])[:12]
slab = sum(v for v in grown.values())
tcp_mem = (t1["mem"] - t0["mem"]) * 4096
conn = json.load(open(f"{out}/connections.json"))["results"]
report = {
    "scenario": "kernel socket memory",
    "params": {"connections": count},
    "results": {
        "tcp_sockets_added": sockets,
        "tcp_mem_bytes_added": tcp_mem,
        "slab_bytes_added": slab,
        "meminfo_slab_bytes_added": m1["Slab"] - m0["Slab"],
        "kernel_bytes_per_socket": round((slab + tcp_mem) / max(sockets, 1)),
        "slab_caches_grown": {k: {"bytes": v, "per_socket": round(v / max(sockets, 1))} for k, v in top},
        "stratus_rss_bytes_per_connection": conn["server_bytes_per_connection"],
    },
}
json.dump(report, open(f"{out}/kernel-socket-memory.json", "w"), indent=2)
r = report["results"]
print(f"{sockets} TCP sockets more (both ends of {count} connections): slab +{slab / 1e6:.1f} MB, "
      f"TCP buffers +{tcp_mem / 1e6:.2f} MB: {r['kernel_bytes_per_socket']} B of kernel memory "
      f"per socket; Stratus RSS {r['stratus_rss_bytes_per_connection']} B per connection")
for k, v in top:
    print(f"  {k:<28} +{v / 1e6:7.2f} MB  {v / max(sockets, 1):7.0f} B/socket")
EOF
