# Sourced by the load scripts (from the repository root): every process a script starts in
# the background goes into `pids` and is killed when the script exits, however it exits
# (a script may also call `cleanup` itself between runs).
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

# need_nofile N: every process started from here may hold N open files: raises this
# shell's soft limit (inherited by the servers and the load generator, each a process of
# its own) to the hard limit, or stops the script saying so when even that is below N.
need_nofile() {
  local hard soft
  hard=$(ulimit -Hn); soft=$(ulimit -Sn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$1" ]; then
    echo "$1 open files needed per process, and this machine's hard limit is $hard" \
      "(ulimit -Hn): ask for fewer connections, or raise the limit (limits.conf, LimitNOFILE)" >&2
    exit 1
  fi
  if [ "$soft" != unlimited ] && [ "$soft" -lt "$1" ]; then
    if [ "$hard" = unlimited ]; then ulimit -Sn "$1"; else ulimit -Sn "$hard"; fi
  fi
}
