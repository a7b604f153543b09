#!/usr/bin/env bash
# Soak: mixed load with faults against weir for a bounded time, reporting weir's open file
# descriptors and RSS before, during and after. A leak shows as fds or RSS that do not come back
# near the baseline once the load stops and idle connections have timed out.
#
#   bench/soak.sh                  # DURATION=10m
#   DURATION=5m bench/soak.sh      # any of 90s, 5m, 1h (or plain seconds)
#   RATE=20 nice -n 10 bench/soak.sh
#
# Load (bench/soak_load.py, rate-limited, not a benchmark): 4 keep-alive clients at RATE req/s each
# (GET and POST up to 64 KiB), fresh-connection GETs, malformed and smuggling requests, slowloris
# heads, bodies aborted midway, clients vanishing mid-response, 1 MiB uploads, and h2c bursts with
# h2load every 30 s. Faults: one of the two backends is killed every 60 s and restarted 10 s later.
# Uses WEIR_BIN (default target/debug/weir, built with `cargo build` if missing). Everything runs
# on 127.0.0.1; only processes this script started are stopped, by pid.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10m}
RATE=${RATE:-30}
WEIR_BIN=${WEIR_BIN:-target/debug/weir}
OUT=${OUT:-bench/results/soak-latest.txt}

secs() {
  case "$1" in
    *ms) echo $(( ${1%ms} / 1000 )) ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *h) echo $(( ${1%h} * 3600 )) ;;
    *) echo "$1" ;;
  esac
}
DUR=$(secs "$DURATION")
(( DUR > 0 && DUR <= 7200 )) || { echo "DURATION must be between 1s and 2h" >&2; exit 2; }
[[ -x $WEIR_BIN ]] || cargo build --quiet

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" ${B1:-} ${B2:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(free_port); P2=$(free_port); PW=$(free_port)

python3 bench/soak_backend.py "$P1" > /dev/null 2>&1 & B1=$!
python3 bench/soak_backend.py "$P2" > /dev/null 2>&1 & B2=$!

cat > "$TMP/weir.yaml" <<EOF
listeners:
  - name: web
    bind: "127.0.0.1:$PW"
    header_read_timeout: 2s
    idle_timeout: 5s
    body_timeout: 2s
    max_connections_per_ip: 2000
pools:
  p:
    balance: least_request
    servers:
      - address: "127.0.0.1:$P1"
      - address: "127.0.0.1:$P2"
    health:
      path: /healthz
      interval: 1s
      timeout: 500ms
      unhealthy_after: 2
      healthy_after: 1
routes:
  - name: all
    match: { path_prefix: "/" }
    pool: p
    timeout: 5s
    retries: 1
    max_body_size: 4MiB
EOF

RUST_LOG=${RUST_LOG:-warn} "$WEIR_BIN" run --config "$TMP/weir.yaml" 2> "$TMP/weir.log" &
WEIR=$!
PIDS+=("$WEIR")
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PW/" && break
  sleep 0.1
done

fds() { ls "/proc/$WEIR/fd" 2>/dev/null | wc -l; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$WEIR/status"; }
sample() { printf '%-8s %6s fds %8s KiB\n' "$1" "$(fds)" "$(rss)"; }

{
  # This block is a subshell (it feeds tee): it stops what it started itself.
  trap 'kill "$B2" ${LOAD:-} 2>/dev/null || true' EXIT
  echo "soak: $DUR s, rate $RATE, weir pid $WEIR ($WEIR_BIN), backends :$P1 :$P2, weir :$PW"
  sleep 3
  sample before
  BEFORE_FD=$(fds); BEFORE_RSS=$(rss)

  python3 bench/soak_load.py < /dev/null --addr "127.0.0.1:$PW" --duration "$DUR" --rate "$RATE" > "$TMP/load.txt" 2>&1 &
  LOAD=$!
  PIDS+=("$LOAD")
  START=$(date +%s)
  MAX_FD=0; MAX_RSS=0; N=0
  while kill -0 "$LOAD" 2>/dev/null; do
    sleep 10
    N=$((N + 1))
    ELAPSED=$(( $(date +%s) - START ))
    if (( N % 6 == 0 )); then
      kill "$B2" 2>/dev/null || true; wait "$B2" 2>/dev/null || true
      (sleep 10; exec python3 bench/soak_backend.py "$P2" > /dev/null 2>&1) & B2=$!
      echo "t=${ELAPSED}s fault: backend :$P2 killed, restarting in 10s"
    fi
    if (( N % 3 == 0 )) && command -v h2load > /dev/null; then
      timeout 20 h2load -n 1000 -c 4 -m 8 "http://127.0.0.1:$PW/api/h2" > /dev/null 2>&1 || true
    fi
    F=$(fds); R=$(rss)
    (( F > MAX_FD )) && MAX_FD=$F
    (( R > MAX_RSS )) && MAX_RSS=$R
    sample "t=${ELAPSED}s"
  done
  wait "$LOAD" || true
  echo "load outcomes:"; sed 's/^/  /' "$TMP/load.txt"
  # Past idle_timeout and header_read_timeout, every client connection is gone.
  sleep 15
  sample after
  AFTER_FD=$(fds); AFTER_RSS=$(rss)
  echo
  printf '| | fds | RSS KiB |\n| --- | --- | --- |\n'
  printf '| before | %s | %s |\n| peak during | %s | %s |\n| after (+15s) | %s | %s |\n' \
    "$BEFORE_FD" "$BEFORE_RSS" "$MAX_FD" "$MAX_RSS" "$AFTER_FD" "$AFTER_RSS"
  echo "panics logged: $(grep -c 'weir::panic' "$TMP/weir.log" || true)"
  kill -0 "$WEIR" 2>/dev/null && echo "weir still running: yes" || echo "weir still running: NO"
} | tee "$OUT"
