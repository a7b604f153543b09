-- wrk -s bench/report.lua: print one machine-readable line at the end of a run.
-- wrk's own --latency output stops at p99; this adds p99.9 and the error counters.
-- Only done() is defined, so wrk keeps its fast C request path (no per-request Lua).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d connect_err=%d read_err=%d write_err=%d status_err=%d timeout_err=%d p50_us=%d p99_us=%d p999_us=%d mean_us=%.1f max_us=%d\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
