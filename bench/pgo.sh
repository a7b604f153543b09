#!/usr/bin/env bash
# bench/pgo.sh: records the profile that release builds of weir are optimised with (PGO), and
# rebuilds target/release/weir with it.
#
#   bench/pgo.sh            # 7-9 minutes on 2 cores: two release builds and a 30 s workload
#
# 1. builds weir instrumented (target/pgo-gen);
# 2. runs it for about 30 s under a mixed workload on loopback: HTTP/1.1 keep-alive and
#    `Connection: close`, 1 MiB responses, 1 MiB uploads, 200 connections, h2c, and over TLS
#    HTTP/1.1, h2 and a new connection per request, through a few host, path and regex routes,
#    with an nginx upstream;
# 3. merges the profile (llvm-profdata of the LLVM that rustc is built on) into
#    .cargo/pgo/llvm-N.profdata, N being that LLVM's major version, and writes beside it
#    llvm-N.key, what it was recorded with (rustc, Cargo.lock, Cargo.toml): commit both;
# 4. rebuilds target/release from clean (cargo cannot tell that the profile changed), with it.
#
# Every `cargo build --release` then uses that profile through .cargo/rustc-wrapper, when its
# rustc, Cargo.lock and Cargo.toml are the ones in the key; anything else builds without it.
# Run this again after changing those, or the request path: functions whose control flow changed
# since the profile was recorded lose their profile (LLVM ignores their stale counts), the rest
# keep it.
#
# The workload is broader than bench/compare.sh's scenarios on purpose: the profile says which
# branches are hot in a proxy's ordinary work, not in one benchmark. Same source, same features
# as the plain release build (`WEIR_PGO=0 cargo build --release`); only LLVM's code layout and
# inlining differ.
#
# Needs nginx, wrk, h2load, curl (installed with apt-get when missing, unless INSTALL=0) and
# llvm-profdata for rustc's LLVM major version (the `llvm-N` package, or rustup's llvm-tools).
# Only 127.0.0.1 is contacted; every process it starts is stopped by pid.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
INSTALL=${INSTALL:-1}
GEN=$REPO_DIR/target/pgo-gen      # the instrumented build's target dir
TMP=$(mktemp -d /tmp/weir-pgo.XXXXXX)
DATA=$GEN/profraw                 # fixed, so a second run reuses the instrumented build's cache
WEIR_PORT=18180 TLS_PORT=18181 UPSTREAM_PORT=18182 SINK_PORT=18183 # weir's two are in bench/pgo.yaml

log() { printf '[pgo %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------
# tools: llvm-profdata must read the profiles rustc's own LLVM writes
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFILE=$REPO_DIR/.cargo/pgo/llvm-$llvm_major.profdata # where .cargo/rustc-wrapper looks
find_profdata() {
  local p
  for p in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata \
    "$(command -v "llvm-profdata-$llvm_major" || true)" "/usr/lib/llvm-$llvm_major/bin/llvm-profdata"; do
    [[ -n $p && -x $p ]] && { echo "$p"; return 0; }
  done
  return 1
}
need=()
PROFDATA=$(find_profdata) || need+=("llvm-$llvm_major")
for pair in nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  if [[ $INSTALL != 1 ]]; then
    echo "missing: ${need[*]} (INSTALL=0, not installing)" >&2
    exit 2
  fi
  log "installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  PROFDATA=$(find_profdata) || {
    echo "no llvm-profdata for LLVM $llvm_major (rustc's); install llvm-$llvm_major or rustup's llvm-tools" >&2
    exit 2
  }
fi

# ------------------------------------------------------------------------------------------
# 1. the instrumented build
log "instrumented build (target/pgo-gen)"
(cd "$REPO_DIR" && RUSTFLAGS="-Cprofile-generate=$DATA" cargo build --release --target-dir "$GEN" --bin weir)
rm -rf "$DATA" # build scripts ran instrumented too: only weir's own run counts

# ------------------------------------------------------------------------------------------
# 2. the workload
head -c 1048576 /dev/urandom >"$TMP/big.bin"
cat >"$TMP/upstream.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $TMP/upstream.pid;
error_log $TMP/upstream.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/body;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  client_max_body_size 0;
  server { listen 127.0.0.1:$UPSTREAM_PORT;
    location / { return 200 "ok"; }
    location = /big { alias $TMP/big.bin; }
    location /upload { proxy_pass http://127.0.0.1:$SINK_PORT/; }
  }
  server { listen 127.0.0.1:$SINK_PORT; location / { return 200 "stored"; } }
}
EOF
# bench/pgo.yaml (checked by `cargo test`, like compare.sh's configs), next to the dev certificate
mkdir -p "$TMP/certs"
cp "$REPO_DIR/certs/dev.pem" "$TMP/certs/bench.crt"
cp "$REPO_DIR/certs/dev.key" "$TMP/certs/bench.key"
cp "$BENCH_DIR/pgo.yaml" "$TMP/weir.yaml"
(cd "$TMP" && "$GEN/release/weir" check --config weir.yaml >/dev/null)
nginx -c "$TMP/upstream.conf" >/dev/null 2>&1 &
PIDS+=($!)
(cd "$TMP" && RUST_LOG=warn exec "$GEN/release/weir" run --config weir.yaml 2>"$TMP/weir.err") &
WEIR_PID=$!
PIDS+=("$WEIR_PID")
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$WEIR_PORT/" && break
  sleep 0.1
done
plain=http://127.0.0.1:$WEIR_PORT
tls=https://127.0.0.1:$TLS_PORT
log "workload (~30 s)"
run() { timeout 60 "$@" >>"$TMP/load.log" 2>&1 || log "load step failed: $*"; }
for path in / /big /api/a /v1/b; do # each route answers, and with the upstream's own answer
  code=$(curl -s -o /dev/null -w '%{http_code}' "$plain$path")
  [[ $code == 200 ]] || { echo "GET $path through the instrumented weir: $code" >&2; exit 1; }
done
run wrk -t1 -c50 -d5s --latency "$plain/"
run wrk -t1 -c50 -d3s -H "Connection: close" "$plain/api/users?id=7"
run wrk -t1 -c10 -d2s "$plain/big"
run wrk -t1 -c200 -d2s "$plain/v2/items"
run wrk -t1 -c20 -d2s -H "Host: admin.weir.test" "$plain/"
run h2load -c10 -m10 -n 40000 "$plain/"
run wrk -t1 -c50 -d3s "$tls/"
run h2load -c10 -m10 -n 40000 "$tls/api/x"
run wrk -t1 -c20 -d2s -H "Connection: close" "$tls/"
for _ in $(seq 1 100); do
  curl -s -o /dev/null --data-binary "@$TMP/big.bin" "$plain/upload" || true
done
code=$(curl -s -o /dev/null -w '%{http_code}' --data-binary "@$TMP/big.bin" "$plain/upload")
[[ $code == 200 ]] || log "uploads answered $code, not 200"
curl -s -o /dev/null -k --http2 --data-binary "@$TMP/big.bin" "$tls/upload" || true
grep -E "Requests/sec|^requests:" "$TMP/load.log" | sed 's/^/    /' || true
kill -TERM "$WEIR_PID"
wait "$WEIR_PID" || true # the profile is written as weir exits

# ------------------------------------------------------------------------------------------
# 3. merge, 4. the PGO build
mkdir -p "$(dirname "$PROFILE")"
shopt -s nullglob
raw=("$DATA"/*.profraw)
((${#raw[@]})) || { echo "weir wrote no profile (see $TMP/weir.err)" >&2; exit 1; }
"$PROFDATA" merge -o "$PROFILE" "${raw[@]}"
# What it was recorded with (rustc, Cargo.lock, Cargo.toml): .cargo/rustc-wrapper applies the
# profile only to a build that matches, since its counts are keyed by hashed symbol names.
"$REPO_DIR/.cargo/rustc-wrapper" --pgo-key "${RUSTC:-rustc}" >"${PROFILE%.profdata}.key"
log "profile: ${PROFILE#"$REPO_DIR"/} ($(du -h "$PROFILE" | cut -f1))"
log "release build with it (target/release, from clean)"
(cd "$REPO_DIR" && cargo clean --release && cargo build --release --bin weir)
log "done: target/release/weir"
