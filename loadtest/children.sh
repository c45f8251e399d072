# Sourced by the load scripts (from the repository root): every process a script starts in
# the background goes into `pids` and is killed when the script exits, however it exits
# (a script may also call `cleanup` itself between runs).
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
