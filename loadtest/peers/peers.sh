# Sourced by the compare scripts (from the repository root): the npm peers beside the Rust
# ones. NPM_PEERS picks them: "bun uws" (the default), "bun", "uws", or "" for none.
#   npm_peers_install                 installs them (loadtest/peers/install.sh) when needed
#   npm_peer_start PEER WS ADMIN [DEFLATE]
#                                     starts PEER on CPU 0 (WS and ADMIN are ports on
#                                     127.0.0.1), adds its pid to the array `pids`, sets
#                                     `npm_peer_pid`, and waits until it listens
#   npm_peer_name PEER                its name in reports: bun, uwebsockets.js
NPM_PEERS=${NPM_PEERS-bun uws}

npm_peers_install() {
  [ -z "$NPM_PEERS" ] || NPM_PEERS="$NPM_PEERS" bash loadtest/peers/install.sh >&2
}

npm_peer_name() {
  case $1 in
    bun) echo bun ;;
    uws) echo uwebsockets.js ;;
    *) echo "unknown npm peer $1" >&2; return 1 ;;
  esac
}

npm_peer_start() {
  local peer=$1 ws=$2 admin=$3 deflate=${4:-off} cmd
  case $peer in
    bun) cmd=(loadtest/peers/node_modules/.bin/bun loadtest/peers/bun.mjs) ;;
    uws) cmd=(node loadtest/peers/uws.mjs) ;;
    *) echo "unknown npm peer $peer" >&2; return 1 ;;
  esac
  taskset -c 0 "${cmd[@]}" --listen "127.0.0.1:$ws" --admin "127.0.0.1:$admin" \
    --deflate "$deflate" >/dev/null 2>&1 &
  npm_peer_pid=$!
  pids+=("$npm_peer_pid")
  local port
  for port in "$ws" "$admin"; do
    local tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
      tries=$((tries + 1))
      if [ "$tries" -gt 100 ] || ! kill -0 "$npm_peer_pid" 2>/dev/null; then
        echo "npm peer $peer did not listen on 127.0.0.1:$port" >&2
        return 1
      fi
      sleep 0.1
    done
  done
}
