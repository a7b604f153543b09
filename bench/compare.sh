#!/usr/bin/env bash
# bench/compare.sh: weir side by side with nginx, HAProxy and the upstream alone (the ceiling).
#
#   bench/compare.sh                      # 3 rounds x 10 s per scenario, plain HTTP
#   QUICK=1 bench/compare.sh              # smoke test: 1 round x 3 s
#   TLS=1 bench/compare.sh                # also the TLS scenarios
#
# Every knob is an environment variable; see bench/README.md.  Results go to
# $RESULTS_DIR (default bench/results): latest.{md,csv} (medians over rounds, min-max spread)
# and raw-latest.csv (one row per run).  Only 127.0.0.1 is ever contacted.
set -euo pipefail

# ------------------------------------------------------------------------------------------
# knobs
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  ROUNDS=${ROUNDS:-1}
  DURATION=${DURATION:-3s}
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-10s}
fi
WORKERS=${WORKERS:-1}           # worker processes (nginx) / threads (HAProxy, weir's tokio runtime)
TLS=${TLS:-0}                   # 1 = add the TLS scenarios
PROXIES=${PROXIES:-weir nginx haproxy ceiling}
CONNS=${CONNS:-50}              # connections for the keep-alive / close / TLS scenarios
HI_CONNS=${HI_CONNS:-1000}      # the "many connections" scenario
BIG_CONNS=${BIG_CONNS:-10}      # connections for the 1 MiB scenario
IDLE_CONNS=${IDLE_CONNS:-10000} # idle keep-alive connections for the memory scenario
H2_STREAMS=${H2_STREAMS:-10}    # h2load: concurrent streams per connection
WRK_THREADS=${WRK_THREADS:-1}
WRK_TIMEOUT=${WRK_TIMEOUT:-5s}  # a response slower than this counts as a timeout error
PIN=${PIN:-1}                   # 1 = taskset: load generator on LOADGEN_CPUS, servers on SERVER_CPUS
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
BUILD=${BUILD:-1}               # 0 = use the existing target/release/weir (target/plain, PGO=0)
PGO=${PGO:-1}                   # 0 = measure the plain build (WEIR_PGO=0, no PGO profile), in target/plain
INSTALL=${INSTALL:-1}           # 0 = never call apt-get
KEEP_TMP=${KEEP_TMP:-0}         # 1 = keep the temp dir (configs, logs, raw outputs)
NGINX_UPSTREAM_KEEPALIVE=${NGINX_UPSTREAM_KEEPALIVE:-1024}

DEFAULT_SCENARIOS="ka-c$CONNS close-c$CONNS 1mib-c$BIG_CONNS ka-c$HI_CONNS idle-$IDLE_CONNS"
if [[ $TLS == 1 ]]; then
  DEFAULT_SCENARIOS+=" tls-ka-c$CONNS tls-h2-c$CONNS tls-close-c$CONNS tls-hs-c$CONNS"
fi
SCENARIOS=${SCENARIOS:-$DEFAULT_SCENARIOS}

# fixed loopback ports (high, so nothing else is likely to hold them)
WEIR_PORT=18080 UPSTREAM_PORT=18081 NGINX_PORT=18082 HAPROXY_PORT=18083
WEIR_TLS_PORT=18443 NGINX_TLS_PORT=18444 HAPROXY_TLS_PORT=18445 UPSTREAM_TLS_PORT=18446

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results} # where latest.{md,csv} and raw-latest.csv go
WEIR_BIN=$REPO_DIR/target/release/weir
[[ $PGO == 0 ]] && WEIR_BIN=$REPO_DIR/target/plain/release/weir
# Which build of weir is measured, as .cargo/rustc-wrapper decides it for this rustc.
build_kind() {
  local llvm key
  llvm=$(rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  key=$REPO_DIR/.cargo/pgo/llvm-$llvm.key
  if [[ $PGO == 0 ]]; then
    echo "plain build, WEIR_PGO=0"
  elif [[ -n $llvm && -f ${key%.key}.profdata && -f $key &&
    "$("$REPO_DIR/.cargo/rustc-wrapper" --pgo-key rustc)" == "$(cat "$key")" ]]; then
    echo "profile-guided: .cargo/pgo/llvm-$llvm.profdata"
  else
    echo "plain build: no PGO profile recorded with this rustc, Cargo.lock and Cargo.toml"
  fi
}
TLSLOAD_BIN=$REPO_DIR/target/release/examples/tlsload # bench/tlsload.rs, the tls-hs load generator

DUR_S=${DURATION%s}
if ! [[ $DUR_S =~ ^[0-9]+$ ]] || ((DUR_S < 1)); then
  echo "DURATION must be whole seconds, like 10s (got '$DURATION')" >&2
  exit 2
fi
RUN_LIMIT=$((DUR_S + 60)) # hard bound for any single load-generator run

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------------------------------
# 1. tools
need_pkgs=()
for pair in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl \
  curl:curl taskset:util-linux ps:procps python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
if ((${#need_pkgs[@]})); then
  if [[ $INSTALL != 1 ]]; then
    echo "missing: ${need_pkgs[*]} (INSTALL=0, not installing)" >&2
    exit 2
  fi
  log "installing ${need_pkgs[*]} with apt-get"
  apt-get update -qq
  # policy-rc.d or no systemd: the packages' own services must not start; we start ours
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# ------------------------------------------------------------------------------------------
# temp dir, process bookkeeping, cleanup
TMP=$(mktemp -d /tmp/weir-bench.XXXXXX)
STARTED_PIDS=()
declare -A PROXY_PID=()   # proxy name -> pid of the process we started (nginx: the master)
declare -A PROXY_DOWN=()  # proxy name -> why it is not being measured
declare -A TLS_DOWN=()    # proxy name -> why its TLS scenarios are not being measured
UPSTREAM_PID=

stop_pid() { # stop_pid PID: TERM, wait up to 10 s, then KILL; only pids we started
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

forget_pid() { # forget_pid PID: after stopping it, so cleanup never signals a reused pid
  local keep=() pid
  for pid in "${STARTED_PIDS[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
  STARTED_PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${STARTED_PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
    echo "temp dir kept: $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited ]] && ((NOFILE < IDLE_CONNS + 1000)); then
  warn "open-file limit is $NOFILE; lowering IDLE_CONNS from $IDLE_CONNS to $((NOFILE - 1000))"
  SCENARIOS=${SCENARIOS//idle-$IDLE_CONNS/idle-$((NOFILE - 1000))}
  IDLE_CONNS=$((NOFILE - 1000))
fi

if [[ $PIN == 1 ]]; then
  if (($(nproc) < 2)); then
    warn "fewer than 2 CPUs: not pinning"
    PIN=0
  fi
fi
ON_SERVERS=() ON_LOADGEN=() # command prefixes: taskset, or nothing
if [[ $PIN == 1 ]]; then
  ON_SERVERS=(taskset -c "$SERVER_CPUS")
  ON_LOADGEN=(taskset -c "$LOADGEN_CPUS")
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_bg NAME DIR CMD...: start CMD in DIR in the background (exec'd, so the pid is
# CMD's own), remember the pid in STARTED_PIDS and in LAST_PID
LAST_PID=
start_bg() {
  local name=$1 dir=$2
  shift 2
  (cd "$dir" && exec "$@") >>"$TMP/logs/$name.out" 2>>"$TMP/logs/$name.err" &
  LAST_PID=$!
  STARTED_PIDS+=("$LAST_PID")
}

# wait_http URL PID [SECONDS]: until URL answers 200 (curl -k for https), or PID dies
wait_http() {
  local url=$1 pid=$2 limit=${3:-15} i
  for ((i = 0; i < limit * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ $(curl -sk -m 2 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null) == 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# tree_pids PID: PID and all its descendants (nginx master + workers)
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      for (p in parent) {
        q = p
        while (q != "" && q != 0 && q != 1 && q != root) q = parent[q]
        if (q == root) printf "%s ", p
      }
    }'
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # cpu_ticks PID...: utime+stime summed, in clock ticks
  local total=0 pid stat f
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a f <<<"${stat##*) }" # fields after "pid (comm) "; utime/stime are 12th/13th
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
status_kib() { # status_kib FIELD PID...: e.g. VmHWM, VmRSS summed in KiB
  local field=$1 total=0 pid v
  shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
HWM_RESET=0
reset_hwm() { # reset VmHWM so it measures this run only (Linux >= 4.0, needs root)
  local pid
  for pid in "$@"; do echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || return 1; done
}
secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }'; }

mkdir -p "$TMP/logs" "$TMP/runs" "$TMP/www" "$TMP/certs" "$RESULTS_DIR"

for port in $UPSTREAM_PORT $WEIR_PORT $NGINX_PORT $HAPROXY_PORT \
  $WEIR_TLS_PORT $NGINX_TLS_PORT $HAPROXY_TLS_PORT $UPSTREAM_TLS_PORT; do
  if port_busy "$port"; then
    echo "port $port on 127.0.0.1 is already in use: is another bench running?" >&2
    exit 2
  fi
done

log "temp dir $TMP; rounds=$ROUNDS duration=${DUR_S}s workers=$WORKERS tls=$TLS pin=$PIN"
log "scenarios: $SCENARIOS"
log "proxies:   $PROXIES"

# ------------------------------------------------------------------------------------------
# 2. build weir
WEIR_VERSION=unavailable
if [[ " $PROXIES " == *" weir "* ]]; then
  if [[ $BUILD == 1 && $PGO == 0 ]]; then
    log "WEIR_PGO=0 cargo build --release --target-dir target/plain (may wait on the cargo lock)"
    if ! (cd "$REPO_DIR" && WEIR_PGO=0 cargo build --release --target-dir target/plain) \
      >"$TMP/logs/cargo-build.log" 2>&1; then
      tail -5 "$TMP/logs/cargo-build.log" >&2
      PROXY_DOWN[weir]="WEIR_PGO=0 cargo build --release failed"
    fi
  elif [[ $BUILD == 1 ]]; then
    log "cargo build --release (may wait on the cargo lock)"
    if ! (cd "$REPO_DIR" && cargo build --release) >"$TMP/logs/cargo-build.log" 2>&1; then
      tail -5 "$TMP/logs/cargo-build.log" >&2
      PROXY_DOWN[weir]="cargo build --release failed"
    fi
  fi
  if [[ -z ${PROXY_DOWN[weir]:-} ]]; then
    if [[ ! -x $WEIR_BIN ]]; then
      PROXY_DOWN[weir]="no binary at ${WEIR_BIN#"$REPO_DIR"/}"
    elif ! WEIR_VERSION=$("$WEIR_BIN" --version 2>&1); then
      PROXY_DOWN[weir]="weir --version failed"
      WEIR_VERSION=unavailable
    else
      WEIR_VERSION="$WEIR_VERSION ($(build_kind))"
    fi
  fi
  [[ -n ${PROXY_DOWN[weir]:-} ]] && warn "weir: ${PROXY_DOWN[weir]}: its rows will be marked failed"
fi

# the tls-hs scenarios' load generator (bench/tlsload.rs, a cargo example), whichever proxies run
TLSLOAD_DOWN=""
if [[ " $SCENARIOS " == *" tls-hs-c"* ]]; then
  if [[ $BUILD == 1 ]]; then
    log "cargo build --release --example tlsload"
    if ! (cd "$REPO_DIR" && cargo build --release --example tlsload) >"$TMP/logs/cargo-build-tlsload.log" 2>&1; then
      tail -5 "$TMP/logs/cargo-build-tlsload.log" >&2
      TLSLOAD_DOWN="cargo build --release --example tlsload failed"
    fi
  fi
  if [[ -z $TLSLOAD_DOWN && ! -x $TLSLOAD_BIN ]]; then
    TLSLOAD_DOWN="no binary at target/release/examples/tlsload (cargo build --release --example tlsload)"
  fi
  [[ -n $TLSLOAD_DOWN ]] && warn "tlsload: $TLSLOAD_DOWN: the tls-hs rows will be marked failed"
fi

# ------------------------------------------------------------------------------------------
# 3. upstream, certificates, configs
# TLS 1.3 suites in weir's order (src/tls.rs, Mozilla intermediate), for nginx and HAProxy too, each
# choosing by its own order: the handshake's key schedule then costs the same for all three.
TLS13_SUITES=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
# and the TLS 1.2 ones, for a TLS 1.2 client: OpenSSL's default (HIGH) order puts AES-256 first
TLS12_CIPHERS=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305
head -c 1048576 /dev/urandom >"$TMP/www/1m.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/certs/bench.key" -out "$TMP/certs/bench.crt" >/dev/null 2>&1
cat "$TMP/certs/bench.crt" "$TMP/certs/bench.key" >"$TMP/certs/bench.pem" # HAProxy wants both

nginx_common() { # nginx_common NAME WORKERS: the main-context lines shared by both nginx roles
  cat <<EOF
daemon off;
master_process on;
user root;
worker_processes $2;
worker_rlimit_nofile $NOFILE;
pid $TMP/$1.pid;
error_log $TMP/logs/$1.error.log warn;
events { worker_connections $((IDLE_CONNS + 5000)); multi_accept on; }
EOF
}
nginx_tls() { # the TLS lines of every nginx TLS listener: weir's suite order, chosen by the server
  cat <<EOF
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites $TLS13_SUITES;
    ssl_ciphers $TLS12_CIPHERS;
    ssl_certificate $TMP/certs/bench.crt;
    ssl_certificate_key $TMP/certs/bench.key;
EOF
}

nginx_http_common() { # temp paths into our dir; no access log
  cat <<EOF
  access_log off;
  client_body_temp_path $TMP/$1-tmp/body;
  proxy_temp_path $TMP/$1-tmp/proxy;
  fastcgi_temp_path $TMP/$1-tmp/fastcgi;
  uwsgi_temp_path $TMP/$1-tmp/uwsgi;
  scgi_temp_path $TMP/$1-tmp/scgi;
  default_type application/octet-stream;
  keepalive_timeout 600s;
  keepalive_requests 10000000;
  server_tokens off;
EOF
}
mkdir -p "$TMP/upstream-tmp" "$TMP/nginx-tmp"

# upstream: nginx, always ONE worker, `return 200 "ok"` and a 1 MiB static file
{
  nginx_common upstream 1
  echo "http {"
  nginx_http_common upstream
  cat <<EOF
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
    listen 127.0.0.1:$UPSTREAM_TLS_PORT ssl http2 backlog=4096;
EOF
  nginx_tls
  cat <<EOF
    location = /1m.bin { root $TMP/www; }
    location / { default_type text/plain; return 200 "ok"; }
  }
}
EOF
} >"$TMP/upstream.conf"

# nginx as the proxy: keep-alive upstream block, HTTP/1.1 to it, the same forwarded headers
# weir adds (x-forwarded-for/proto/host, x-request-id), no access log
{
  nginx_common nginx "$WORKERS"
  echo "http {"
  nginx_http_common nginx
  cat <<EOF
  upstream bench_upstream {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive $NGINX_UPSTREAM_KEEPALIVE;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
  }
  map \$http_x_request_id \$bench_request_id { "" \$request_id; default \$http_x_request_id; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
EOF
  [[ $TLS == 1 ]] && cat <<EOF
    listen 127.0.0.1:$NGINX_TLS_PORT ssl http2 backlog=4096;
    # weir's (and HAProxy's) versions. nginx before 1.23.4 (Debian 12 has 1.22) leaves TLS 1.3
    # out by default, and a TLS 1.2 resumption skips the key exchange a TLS 1.3 one makes.
    ssl_protocols TLSv1.2 TLSv1.3;
EOF
  [[ $TLS == 1 ]] && nginx_tls
  cat <<EOF
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$bench_request_id;
      proxy_max_temp_file_size 0;   # stream big bodies through memory buffers, never disk
    }
  }
}
EOF
} >"$TMP/nginx.conf"

# HAProxy: mode http, http-reuse always, the same forwarded headers, no log
{
  cat <<EOF
global
  nbthread $WORKERS
  no strict-limits   # we may not raise RLIMIT_NOFILE here; the soft limit we have is enough
  ssl-default-bind-ciphersuites $TLS13_SUITES   # weir's order (HAProxy's own is AES-256 first)
  ssl-default-bind-ciphers $TLS12_CIPHERS
  maxconn $((IDLE_CONNS + 5000))

defaults
  mode http
  timeout connect 2s
  timeout client 600s
  timeout server 60s
  timeout http-request 10s
  timeout http-keep-alive 600s
  http-reuse always
  maxconn $((IDLE_CONNS + 5000))

frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
EOF
  [[ $TLS == 1 ]] && echo "  bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $TMP/certs/bench.pem alpn h2,http/1.1"
  cat <<EOF
  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http unless { ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-Id %[uuid] unless { req.hdr(x-request-id) -m found }
  default_backend upstream

backend upstream
  server up1 127.0.0.1:$UPSTREAM_PORT
EOF
} >"$TMP/haproxy.cfg"

# weir: the committed configs; the TLS one is copied next to the generated certificate
cp "$BENCH_DIR/weir.yaml" "$TMP/weir.yaml"
cp "$BENCH_DIR/weir-tls.yaml" "$TMP/weir-tls.yaml"
WEIR_CFG=$TMP/weir.yaml
[[ $TLS == 1 ]] && WEIR_CFG=$TMP/weir-tls.yaml

# ------------------------------------------------------------------------------------------
# starting and checking the servers
start_proxy() { # start_proxy NAME: start (or restart) it; sets PROXY_PID or PROXY_DOWN
  local name=$1 pid port
  case $name in
  ceiling)
    PROXY_PID[ceiling]=$UPSTREAM_PID
    return 0
    ;;
  nginx)
    port=$NGINX_PORT
    nginx -t -q -p "$TMP" -e "$TMP/logs/nginx.error.log" -c "$TMP/nginx.conf" \
      >"$TMP/logs/nginx-t.out" 2>&1 || { PROXY_DOWN[nginx]="nginx -t failed: $(tail -1 "$TMP/logs/nginx-t.out")"; return 1; }
    start_bg nginx "$TMP" "${ON_SERVERS[@]}" nginx -p "$TMP" -e "$TMP/logs/nginx.error.log" -c "$TMP/nginx.conf"
    ;;
  haproxy)
    port=$HAPROXY_PORT
    haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/logs/haproxy-c.out" 2>&1 ||
      { PROXY_DOWN[haproxy]="haproxy -c failed: $(tail -1 "$TMP/logs/haproxy-c.out")"; return 1; }
    start_bg haproxy "$TMP" "${ON_SERVERS[@]}" haproxy -db -f "$TMP/haproxy.cfg"
    ;;
  weir)
    port=$WEIR_PORT
    # weir sizes its runtime from the CPUs it may run on; WEIR_WORKERS (--workers) makes the
    # thread count explicit and equal to the others' worker count (1: a current-thread runtime)
    start_bg weir "$TMP" env RUST_LOG=warn WEIR_WORKERS="$WORKERS" \
      "${ON_SERVERS[@]}" "$WEIR_BIN" run --config "$WEIR_CFG"
    ;;
  esac
  pid=$LAST_PID
  PROXY_PID[$name]=$pid
  if ! wait_http "http://127.0.0.1:$port/" "$pid" 20; then
    local how="still running" rc=0
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || rc=$?
      how="exited with status $rc"
    fi
    PROXY_DOWN[$name]="did not answer 200 on :$port; $how; stderr: $(tail -c 300 "$TMP/logs/$name.err" 2>/dev/null | tr '\n' ' ')"
    stop_pid "$pid"
    forget_pid "$pid"
    return 1
  fi
  return 0
}

verify_proxy() { # verify_proxy NAME: small body is "ok", the big one is exactly 1 MiB
  local name=$1 port body size
  port=$(port_of "$name")
  body=$(curl -s -m 5 "http://127.0.0.1:$port/") || body="(curl failed)"
  size=$(curl -s -m 10 -o /dev/null -w '%{size_download}' "http://127.0.0.1:$port/1m.bin") || size=0
  if [[ $body != ok || $size != 1048576 ]]; then
    PROXY_DOWN[$name]="wrong answers: body '${body:0:40}', 1m.bin $size bytes"
    return 1
  fi
  if [[ $TLS == 1 && -z ${TLS_DOWN[$name]:-} ]]; then
    port=$(tls_port_of "$name")
    body=$(curl -sk -m 5 "https://127.0.0.1:$port/" 2>/dev/null) || body="(curl failed)"
    [[ $body == ok ]] || TLS_DOWN[$name]="TLS listener :$port did not answer 'ok' (${body:0:40})"
  fi
}

port_of() {
  case $1 in
  weir) echo $WEIR_PORT ;; nginx) echo $NGINX_PORT ;; haproxy) echo $HAPROXY_PORT ;;
  ceiling) echo $UPSTREAM_PORT ;;
  esac
}
tls_port_of() {
  case $1 in
  weir) echo $WEIR_TLS_PORT ;; nginx) echo $NGINX_TLS_PORT ;; haproxy) echo $HAPROXY_TLS_PORT ;;
  ceiling) echo $UPSTREAM_TLS_PORT ;;
  esac
}

log "starting the upstream (nginx, 1 worker) on :$UPSTREAM_PORT"
nginx -t -q -p "$TMP" -e "$TMP/logs/upstream.error.log" -c "$TMP/upstream.conf"
start_bg upstream "$TMP" "${ON_SERVERS[@]}" nginx -p "$TMP" -e "$TMP/logs/upstream.error.log" -c "$TMP/upstream.conf"
UPSTREAM_PID=$LAST_PID
if ! wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "$UPSTREAM_PID" 10; then
  cat "$TMP/logs/upstream.err" "$TMP/logs/upstream.error.log" >&2 || true
  echo "the upstream nginx did not start" >&2
  exit 1
fi

if [[ " $PROXIES " == *" weir "* && -z ${PROXY_DOWN[weir]:-} ]]; then
  for cfg in "$TMP/weir.yaml" "$WEIR_CFG"; do
    if ! (cd "$TMP" && "$WEIR_BIN" check --config "$cfg") >"$TMP/logs/weir-check.out" 2>&1; then
      if [[ $cfg == "$TMP/weir-tls.yaml" ]]; then
        TLS_DOWN[weir]="weir check rejected weir-tls.yaml: $(head -3 "$TMP/logs/weir-check.out" | tr '\n' ' ')"
        warn "weir: ${TLS_DOWN[weir]}; running it without TLS"
        WEIR_CFG=$TMP/weir.yaml
      else
        PROXY_DOWN[weir]="weir check rejected weir.yaml: $(head -3 "$TMP/logs/weir-check.out" | tr '\n' ' ')"
      fi
    fi
  done
fi

for p in $PROXIES; do
  [[ -n ${PROXY_DOWN[$p]:-} ]] && continue
  log "starting $p"
  if ! start_proxy "$p" && [[ $p == weir && $WEIR_CFG == "$TMP/weir-tls.yaml" ]]; then
    # the TLS config may be what breaks it: retry plain HTTP so the rest is still measured
    TLS_DOWN[weir]="weir would not start with the TLS listener: ${PROXY_DOWN[weir]}"
    warn "${TLS_DOWN[weir]}; retrying without TLS"
    unset 'PROXY_DOWN[weir]'
    WEIR_CFG=$TMP/weir.yaml
    start_proxy weir || true
  fi
  [[ -z ${PROXY_DOWN[$p]:-} ]] && verify_proxy "$p" || true
  if [[ -n ${PROXY_DOWN[$p]:-} ]]; then
    warn "$p: ${PROXY_DOWN[$p]}"
  else
    [[ -n ${TLS_DOWN[$p]:-} ]] && warn "$p: ${TLS_DOWN[$p]}"
    log "$p up (pid ${PROXY_PID[$p]}: $(tree_pids "${PROXY_PID[$p]}"))"
  fi
done

if reset_hwm "$UPSTREAM_PID"; then HWM_RESET=1; else
  warn "cannot reset VmHWM (/proc/PID/clear_refs): peak RSS is since process start"
fi

# warm_up PROXY SECONDS [CONCURRENCIES]: keep-alive load, not recorded, by default at both
# scenario concurrencies, so that no run pays for a process's (or the shared upstream's) first
# 1,000 connections: the first proxy measured at ka-c$HI_CONNS in a round would otherwise pay
# for the upstream's
warm_up() {
  local c
  for c in ${3:-$CONNS $HI_CONNS}; do
    "${ON_LOADGEN[@]}" timeout -k 5 30 wrk -t"$WRK_THREADS" -c"$c" -d"$2"s \
      "http://127.0.0.1:$(port_of "$1")/" >/dev/null 2>&1 || true
  done
}

# warm-up: a few seconds of keep-alive load through each proxy and straight at the upstream
for p in $PROXIES; do
  [[ -n ${PROXY_DOWN[$p]:-} ]] && continue
  warm_up "$p" 2
done

# ------------------------------------------------------------------------------------------
# 4-5. the runs
RAW=$TMP/raw.csv
RAW_COLUMNS=(round scenario proxy status requests duration_s rps mib_s p50_ms p99_ms p999_ms
  errors connect_err read_err write_err status_err timeout_err cpu_s rps_per_cpu_s peak_rss_kib
  upstream_cpu_s loadgen_cpu_pct idle_ok rss_before_kib rss_with_kib bytes_per_conn note)
(IFS=,; echo "${RAW_COLUMNS[*]}") >"$RAW"

# emit_row KEY=VALUE...: append one raw row, columns in RAW_COLUMNS order, missing ones empty
emit_row() {
  local -A v=()
  local kvp col line=""
  for kvp in "$@"; do v[${kvp%%=*}]=${kvp#*=}; done
  v[note]=$(tr -d ',\n\r"' <<<"${v[note]:-}" | cut -c1-300)
  for col in "${RAW_COLUMNS[@]}"; do line+="${v[$col]:-},"; done
  echo "${line%,}" >>"$RAW"
}
record_failed() { # record_failed ROUND SCENARIO PROXY NOTE
  emit_row round="$1" scenario="$2" proxy="$3" status=failed note="$4"
  printf '    %-8s FAILED: %s\n' "$3" "$4"
}
kv() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<" $2" | head -1; }

# restart_proxy NAME [CONCURRENCIES]: stop it, start it again, warm it up (not recorded)
restart_proxy() {
  local p=$1
  stop_pid "${PROXY_PID[$p]}"
  forget_pid "${PROXY_PID[$p]}"
  start_proxy "$p" || return 1
  warm_up "$p" 1 "${2:-}"
  sleep 1
}

# log_lines PROXY: lines the proxy has written to its stderr/error log so far
log_lines() {
  local f n=0
  for f in "$TMP/logs/$1.err" "$TMP/logs/$1.error.log"; do
    [[ -f $f ]] && n=$((n + $(wc -l <"$f")))
  done
  echo "$n"
}

# run_load ROUND SCENARIO PROXY: one measured run
run_load() {
  local round=$1 sc=$2 p=$3 url conns kind hdr=() tls=0 path=/ out pids upids
  case $sc in
  ka-c*) kind=wrk conns=${sc#ka-c} ;;
  close-c*) kind=wrk conns=${sc#close-c} hdr=(-H "Connection: close") ;;
  1mib-c*) kind=wrk conns=${sc#1mib-c} path=/1m.bin ;;
  tls-ka-c*) kind=wrk conns=${sc#tls-ka-c} tls=1 ;;
  tls-close-c*) kind=wrk conns=${sc#tls-close-c} tls=1 hdr=(-H "Connection: close") ;;
  tls-hs-c*) kind=tlsload conns=${sc#tls-hs-c} tls=1 ;;
  tls-h2-c*) kind=h2load conns=${sc#tls-h2-c} tls=1 ;;
  idle-*) kind=idle conns=${sc#idle-} ;;
  *)
    record_failed "$round" "$sc" "$p" "unknown scenario"
    return
    ;;
  esac
  if [[ -n ${PROXY_DOWN[$p]:-} ]]; then
    record_failed "$round" "$sc" "$p" "${PROXY_DOWN[$p]}"
    return
  fi
  if ((tls)) && [[ -n ${TLS_DOWN[$p]:-} ]]; then
    record_failed "$round" "$sc" "$p" "${TLS_DOWN[$p]}"
    return
  fi
  if [[ $kind == tlsload && -n $TLSLOAD_DOWN ]]; then
    record_failed "$round" "$sc" "$p" "$TLSLOAD_DOWN"
    return
  fi
  if ((tls)); then url="https://127.0.0.1:$(tls_port_of "$p")$path"; else
    url="http://127.0.0.1:$(port_of "$p")$path"
  fi

  out=$TMP/runs/r$round-$sc-$p
  read -r -a pids <<<"$(tree_pids "${PROXY_PID[$p]}")"
  read -r -a upids <<<"$(tree_pids "$UPSTREAM_PID")"

  if [[ $kind == idle ]]; then
    local line
    if [[ $p != ceiling ]]; then
      # a fresh process, so "before" is not inflated by what earlier scenarios left in the
      # allocator (the upstream is shared by all and is not restarted)
      # warmed at $CONNS only: memory a 1,000-connection warm-up leaves in nginx's and
      # HAProxy's heaps (which keep what they free) would hold the idle connections, and their
      # RSS would not grow with them (0 bytes per connection measured for nginx)
      if ! restart_proxy "$p" "$CONNS"; then
        record_failed "$round" "$sc" "$p" "restart before the idle test failed: ${PROXY_DOWN[$p]}"
        return
      fi
      read -r -a pids <<<"$(tree_pids "${PROXY_PID[$p]}")"
    fi
    "${ON_LOADGEN[@]}" timeout -k 5 180 python3 "$BENCH_DIR/idle_conns.py" --port "$(port_of "$p")" \
      -n "$conns" --pids "$(IFS=,; echo "${pids[*]}")" >"$out.txt" 2>&1 || true
    line=$(grep '^IDLERESULT' "$out.txt" || true)
    if [[ -z $line ]]; then
      record_failed "$round" "$sc" "$p" "idle_conns.py: $(tail -c 200 "$out.txt")"
    else
      local ok before with per
      ok=$(kv ok "$line") before=$(kv rss_before_kib "$line") with=$(kv rss_with_kib "$line")
      per=$(kv bytes_per_conn "$line")
      local st=ok note=""
      if ((ok < conns * 9 / 10)); then st=failed note="only $ok of $conns connections stayed open"; fi
      emit_row round="$round" scenario="$sc" proxy="$p" status="$st" errors=$((conns - ok)) \
        idle_ok="$ok" rss_before_kib="$before" rss_with_kib="$with" bytes_per_conn="$per" note="$note"
      printf '    %-8s %6d conns held  RSS %7.1f -> %7.1f MiB  %7d bytes/conn%s\n' "$p" "$ok" \
        "$(awk -v k="$before" 'BEGIN{print k/1024}')" "$(awk -v k="$with" 'BEGIN{print k/1024}')" \
        "$per" "${note:+  ($note)}"
    fi
    # and fresh again, so the memory the idle connections left behind does not show up as
    # the next scenarios' peak RSS
    if [[ $p != ceiling ]] && ! restart_proxy "$p"; then
      warn "$p: restart after the idle test failed: ${PROXY_DOWN[$p]}"
    fi
    sleep 1
    return
  fi

  ((HWM_RESET)) && reset_hwm "${pids[@]}" "${upids[@]}" || true
  local c0 u0 c1 u1 rc=0 timing
  local l0 l1
  l0=$(log_lines "$p")
  c0=$(cpu_ticks "${pids[@]}")
  u0=$(cpu_ticks "${upids[@]}")
  local TIMEFORMAT='%R %U %S'
  if [[ $kind == wrk ]]; then
    { time "${ON_LOADGEN[@]}" timeout -k 5 "$RUN_LIMIT" wrk -t"$WRK_THREADS" -c"$conns" -d"${DUR_S}s" \
      --timeout "$WRK_TIMEOUT" --latency -s "$BENCH_DIR/report.lua" "${hdr[@]}" "$url" \
      >"$out.txt" 2>&1; } 2>"$out.time" || rc=$?
  elif [[ $kind == tlsload ]]; then
    # wrk's flags and its WRKRESULT line; a full TLS handshake per request (bench/tlsload.rs)
    { time "${ON_LOADGEN[@]}" timeout -k 5 "$RUN_LIMIT" "$TLSLOAD_BIN" -t"$WRK_THREADS" -c"$conns" \
      -d"${DUR_S}s" --timeout "$WRK_TIMEOUT" --url "$url" >"$out.txt" 2>&1; } 2>"$out.time" || rc=$?
  else
    { time "${ON_LOADGEN[@]}" timeout -k 5 "$RUN_LIMIT" h2load -t"$WRK_THREADS" -c"$conns" \
      -m"$H2_STREAMS" -D "$DUR_S" --log-file="$out.h2log" "$url" >"$out.txt" 2>&1; } \
      2>"$out.time" || rc=$?
    python3 "$BENCH_DIR/h2load_stats.py" "$out.txt" "$out.h2log" "$DUR_S" >>"$out.txt" 2>&1 || true
    rm -f "$out.h2log"
  fi
  c1=$(cpu_ticks "${pids[@]}")
  u1=$(cpu_ticks "${upids[@]}")
  local hwm
  hwm=$(status_kib VmHWM "${pids[@]}")
  l1=$(log_lines "$p")
  timing=$(tail -1 "$out.time")

  local line
  line=$(grep '^WRKRESULT' "$out.txt" | tail -1 || true)
  if ! kill -0 "${PROXY_PID[$p]}" 2>/dev/null; then
    record_failed "$round" "$sc" "$p" "$p exited during the run: $(tail -c 200 "$TMP/logs/$p.err" 2>/dev/null)"
    PROXY_DOWN[$p]="exited during $sc round $round"
    forget_pid "${PROXY_PID[$p]}"
    if [[ $p != ceiling ]]; then
      warn "$p died; restarting it for the remaining runs"
      unset "PROXY_DOWN[$p]"
      start_proxy "$p" || warn "$p: restart failed: ${PROXY_DOWN[$p]:-}"
    fi
    return
  fi
  if [[ -z $line ]]; then
    record_failed "$round" "$sc" "$p" "$kind exit $rc: $(grep -v '^ ' "$out.txt" | tail -3 | tr '\n' ' ')"
    return
  fi

  local requests dur_us bytes ce re we se te errors
  requests=$(kv requests "$line") dur_us=$(kv duration_us "$line") bytes=$(kv bytes "$line")
  ce=$(kv connect_err "$line") re=$(kv read_err "$line") we=$(kv write_err "$line")
  se=$(kv status_err "$line") te=$(kv timeout_err "$line")
  errors=$((ce + re + we + se + te))
  local st=ok note=""
  if ((requests == 0)); then st=failed note="no successful requests (errors: $errors)"; fi
  ((rc != 0 && rc != 1)) && note="$kind exit $rc"
  if ((l1 > l0)); then
    # logging costs CPU: say so when a proxy wrote log lines during a measured run
    note="${note:+$note; }$p wrote $((l1 - l0)) log lines"
  fi
  local d rps mibs p50 p99 p999 cpu_s rpc ucpu lg
  read -r d rps mibs p50 p99 p999 cpu_s rpc ucpu lg < <(awk -v req="$requests" -v dus="$dur_us" \
    -v b="$bytes" -v p50="$(kv p50_us "$line")" -v p99="$(kv p99_us "$line")" \
    -v p999="$(kv p999_us "$line")" -v cpu=$((c1 - c0)) -v ucpu=$((u1 - u0)) -v hz="$CLK_TCK" \
    -v t="$timing" 'BEGIN {
      split(t, tt, " "); d = dus / 1e6; if (d <= 0) d = 1
      cs = cpu / hz; us = ucpu / hz
      lg = (tt[1] > 0) ? (tt[2] + tt[3]) / tt[1] * 100 : 0
      printf "%.3f %.1f %.2f %.3f %.3f %.3f", d, req / d, b / d / 1048576, p50 / 1000, p99 / 1000, p999 / 1000
      printf " %.3f %s %.3f %.1f\n", cs, (cs > 0 ? sprintf("%.0f", req / cs) : "-"), us, lg
    }')
  [[ $rpc == - ]] && rpc=""
  emit_row round="$round" scenario="$sc" proxy="$p" status="$st" requests="$requests" \
    duration_s="$d" rps="$rps" mib_s="$mibs" p50_ms="$p50" p99_ms="$p99" p999_ms="$p999" \
    errors="$errors" connect_err="$ce" read_err="$re" write_err="$we" status_err="$se" \
    timeout_err="$te" cpu_s="$cpu_s" rps_per_cpu_s="$rpc" peak_rss_kib="$hwm" \
    upstream_cpu_s="$ucpu" loadgen_cpu_pct="$lg" note="$note"
  printf '    %-8s %9.0f req/s %8.1f MiB/s  p50 %7.2f  p99 %7.2f  p99.9 %7.2f ms  err %6d  cpu %6.2fs  %7s req/cpu-s  hwm %6.1f MiB  loadgen %3.0f%%%s\n' \
    "$p" "$rps" "$mibs" "$p50" "$p99" "$p999" "$errors" "$cpu_s" "${rpc:--}" \
    "$(awk -v k="$hwm" 'BEGIN{print k/1024}')" "$lg" "${note:+  ($note)}"
  sleep 1 # let sockets drain between runs
}

read -r -a proxy_list <<<"$PROXIES"
n=${#proxy_list[@]}
started_at=$(date +%s)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= ROUNDS; round++)); do
  for sc in $SCENARIOS; do
    log "round $round/$ROUNDS  $sc"
    # rotate the order every round so no proxy always runs first (or right after another)
    for ((i = 0; i < n; i++)); do
      run_load "$round" "$sc" "${proxy_list[$(((i + round - 1 + n) % n))]}"
    done
  done
done
log "runs finished in $(($(date +%s) - started_at)) s"

# ------------------------------------------------------------------------------------------
# results
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
pin_desc="none"
[[ $PIN == 1 ]] && pin_desc="load generator on CPU $LOADGEN_CPUS, proxy + upstream on CPU $SERVER_CPUS (taskset)"
TLSLOAD_META=""
if [[ " $SCENARIOS " == *" tls-hs-c"* ]]; then
  TLSLOAD_META="; tls-hs: bench/tlsload.rs -t$WRK_THREADS (rustls $(sed -n '/^name = "rustls"$/{n;s/^version = "\(.*\)"/\1/p;}' "$REPO_DIR/Cargo.lock"), aws-lc-rs, a full handshake per request)"
fi
cmd="QUICK=$QUICK TLS=$TLS ROUNDS=$ROUNDS DURATION=${DUR_S}s WORKERS=$WORKERS PIN=$PIN PGO=$PGO"
[[ $PROXIES != "weir nginx haproxy ceiling" ]] && cmd+=" PROXIES=\"$PROXIES\""
[[ $SCENARIOS != "$DEFAULT_SCENARIOS" ]] && cmd+=" SCENARIOS=\"$SCENARIOS\""
cmd+=" bench/compare.sh"
cp "$RAW" "$RESULTS_DIR/raw-latest.csv"
python3 "$BENCH_DIR/aggregate.py" "$RAW" "$RESULTS_DIR/latest.csv" "$RESULTS_DIR/latest.md" \
  --meta "date: $(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "command: \`$cmd\`" \
  --meta "machine: $(nproc) CPUs, $cpu_model, kernel $(uname -r)" \
  --meta "source: $(git -C "$BENCH_DIR/.." describe --always --dirty 2>/dev/null || echo unknown) (git describe of the tree weir was built from)" \
  --meta "versions: $WEIR_VERSION; $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'); $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'); $(h2load --version | head -1)" \
  --meta "workers: $WORKERS per proxy (nginx worker_processes, HAProxy nbthread, weir --workers (WEIR_WORKERS)); upstream: nginx, 1 worker" \
  --meta "pinning: $pin_desc" \
  --meta "load average (1/5/15 min) when the runs started: $LOADAVG_START; when they ended: $(cut -d' ' -f1-3 /proc/loadavg) (the bench itself keeps about 2-3 runnable; much more means other work shared the CPUs)" \
  --meta "load: wrk -t$WRK_THREADS, ${DUR_S}s per run, $ROUNDS round(s) interleaved; 1 MiB with $BIG_CONNS connections; h2load -m$H2_STREAMS${TLSLOAD_META:-}"

log "results: $RESULTS_DIR/latest.md, $RESULTS_DIR/latest.csv, $RESULTS_DIR/raw-latest.csv"
echo
cat "$RESULTS_DIR/latest.md"
