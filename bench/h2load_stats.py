#!/usr/bin/env python3
"""Summarise an h2load run in the same one-line format as bench/report.lua.

  h2load_stats.py H2LOAD_STDOUT H2LOAD_LOG_FILE DURATION_S

h2load prints min/max/mean latency but no percentiles, so they are computed here from its
--log-file (one row per request: start µs, status, µs until the end of the response; status -1
for a failed stream).  Errors: failed/errored/timed-out requests plus 4xx/5xx, as h2load counts
them.  Standard library only.
"""

import re
import sys


def main():
    out_path, log_path, duration_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    text = open(out_path, errors="replace").read()

    def grab(pattern, default=0):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else default

    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    if not m:
        print("H2FAILED no summary line in h2load output")
        return
    total, started, done, succeeded, failed, errored, timeout = map(int, m.groups())
    s4 = grab(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx")
    s5 = grab(r"status codes: \d+ 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx")
    m = re.search(r"^traffic: .*?\((\d+)\) total", text, re.M)
    total_bytes = int(m.group(1)) if m else 0
    m = re.search(r"^finished in ([\d.]+)(m?s)", text, re.M)
    wall = duration_s
    if m:
        wall = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)

    lat = []
    try:
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1] != "-1":
                    lat.append(int(parts[2]))
    except OSError:
        pass
    lat.sort()

    def pct(p):
        if not lat:
            return 0
        i = min(len(lat) - 1, max(0, int(round(p / 100.0 * len(lat) + 0.5)) - 1))
        return lat[i]

    mean = sum(lat) / len(lat) if lat else 0.0
    # "failed" already includes errored and timed-out streams in h2load's accounting
    print(f"WRKRESULT requests={succeeded} duration_us={int(wall * 1e6)} bytes={total_bytes} "
          f"connect_err=0 read_err={max(0, failed - timeout)} write_err=0 status_err={s4 + s5} timeout_err={timeout} "
          f"p50_us={pct(50)} p99_us={pct(99)} p999_us={pct(99.9)} mean_us={mean:.1f} "
          f"max_us={lat[-1] if lat else 0}")


if __name__ == "__main__":
    main()
