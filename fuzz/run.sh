#!/usr/bin/env bash
# Runs the fuzz targets one after the other, each for SECONDS (default 600), gently: one job, one
# worker, lowest CPU priority. New corpus entries land in fuzz/corpus/TARGET; crashes in
# fuzz/artifacts/TARGET. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(config router cookies_headers sticky framing)
failed=()
export RUSTC_BOOTSTRAP=1 # cargo-fuzz needs -Z flags; this lets the stable toolchain take them
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  seeds=()
  [[ -d fuzz/seeds/$t ]] && seeds+=("fuzz/seeds/$t")
  [[ -d fuzz/regressions/$t ]] && seeds+=("fuzz/regressions/$t")
  dict=()
  [[ -f fuzz/dicts/$t.dict ]] && dict=("-dict=fuzz/dicts/$t.dict")
  # With -jobs, libFuzzer logs to ./fuzz-0.log; it is kept as fuzz/logs/TARGET.log (not committed).
  status=0
  nice -n 19 cargo fuzz run --debug-assertions "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -jobs=1 -workers=1 -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 "${dict[@]}" || status=$?
  mkdir -p fuzz/logs
  [[ -f fuzz-0.log ]] && mv fuzz-0.log "fuzz/logs/$t.log"
  grep -E '^#[0-9]+' "fuzz/logs/$t.log" | tail -n 1 || true
  ((status == 0)) || { echo "$t: crashed, see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2; failed+=("$t"); }
done
((${#failed[@]} == 0)) || { echo "crashed: ${failed[*]}" >&2; exit 1; }
