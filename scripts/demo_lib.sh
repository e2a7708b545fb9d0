# Shared by the demo scripts (serve_demo.sh, collect_demo.sh), sourced after `cd` to the project root
# with PY and DEADLINE set: a work folder and the background processes, cleaned up on exit; waiting
# for a server; free loopback ports.

# A work folder named after PREFIX in $work, and $pids for background processes: on exit every one is
# stopped and the folder removed (KEEP_WORK=1 keeps it).
demo_workspace() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  pids=()
  trap demo_cleanup EXIT INT TERM
}

demo_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work folder kept: $work"; else rm -rf "$work"; fi
}

# Wait (bounded by the demo's deadline) until URL answers; stop early if process PID died.
wait_healthy() {
  local url=$1 pid=$2 name=$3
  until "$PY" -c "import sys, httpx; sys.exit(httpx.get('$url', timeout=2).status_code != 200)" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "$name stopped while starting; its log:" >&2; cat "$work/$name.log" >&2; exit 1; fi
    if [ "$SECONDS" -ge "$DEADLINE" ]; then echo "$name not healthy in time" >&2; exit 1; fi
    sleep 1
  done
}

# N free TCP ports on 127.0.0.1, on one line.
free_ports() {
  "$PY" - "$1" <<'PYTHON'
import socket
import sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PYTHON
}
