#!/bin/bash
# Flakiness benchmark (make boot-flaky, not part of make test): builds
# profiles/default.yaml for ARCH and boots its raw image BOOT_RUNS times in a
# row (20 by default), one guest at a time so the runs do not slow each other
# down. Prints the pass count and the time to the verdict (min/median/max,
# from each run's result), and every failed run's reason. A flaky boot is a
# bug to fix, not to retry: the exit is non-zero if any run failed.
set -euo pipefail

arch=${ARCH:-amd64}
runs=${BOOT_RUNS:-20}
out=${BOOT_OUT:-out/boot-flaky}
strata=${STRATA:-target/release/strata}

"$strata" build profiles/default.yaml --arch "$arch" --out "$out" --quiet
art="$out/metal-$arch.raw"
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
for i in $(seq 1 "$runs"); do
  # A failed boot still prints its result; the summary below counts it.
  "$strata" boot --json --timeout "${BOOT_TIMEOUT:-300}" "$art" > "$results/$i.json" || true
  echo "boot-flaky: run $i of $runs done" >&2
done
python3 - "$results" "$runs" "$art" <<'PY'
import json, pathlib, statistics, sys
results, runs, art = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
times, failed = [], []
for i in range(1, runs + 1):
    text = (results / f"{i}.json").read_text()
    try:
        r = json.loads(text)
    except ValueError:
        failed.append((i, "no result: strata boot could not run the guest"))
        continue
    times.append(r["duration_secs"])
    if not r["pass"]:
        failed.append((i, r["reason"]))
print(f"{art}: {runs - len(failed)} of {runs} boots passed")
if times:
    print(f"time to verdict: min {min(times):.1f} s, median {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s")
for i, reason in failed:
    print(f"run {i} failed: {reason}")
sys.exit(1 if failed else 0)
PY
