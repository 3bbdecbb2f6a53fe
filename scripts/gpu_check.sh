#!/usr/bin/env bash
# gpu_check.sh: every GPU check of gpunn in one call (budgeted for about 3 minutes on the H200
# machine by the step timeouts below; not yet run on a GPU).
#
# Run from a checkout:  PYTHONPATH=. bash scripts/gpu_check.sh [OUT_DIR]   (default ./results)
# Steps, each under its own timeout, each continuing after a failure:
#   1. device info                      -> OUT/device.json
#   2. NVRTC compile + ptxas table      -> OUT/compile.log
#   3. pytest -m gpu (all gpu tests)    -> OUT/pytest_gpu.log, OUT/junit_gpu.xml
#   4. cli.py check --backend cuda      -> OUT/check.txt (per-kernel errors on the GPU)
#   5. cli.py bench all --backend cuda  -> OUT/bench.json (OUT/bench.err)
# then a short table: step status, test counts, one line per benchmark row.
# Nothing is installed (the GPU machine has no network); results are written as they come.
set -u

OUT="${1:-${OUT:-./results}}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
PY="${PYTHON:-python3}"
FAILED=()
STATUS=()
exec 3>&2  # progress lines go to the terminal even when a step redirects its output

step() {  # step NAME TIMEOUT_S COMMAND... ; records the exit status
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "== $name (timeout ${limit}s)" >&3
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    STATUS+=("$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - start))")")
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (rc=$rc$([ "$rc" -eq 124 ] && echo ', timed out'))")
    fi
}

step device 60 "$PY" -c "import json, gpunn; print(json.dumps(gpunn.device_info(), indent=1))" \
    >"$OUT/device.json" 2>&1

step compile 120 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_compile.py \
    >"$OUT/compile.log" 2>&1

# Synchronise after every launch in the tests so that a fault names its kernel.
GPUNN_SYNC_LAUNCHES=1 step pytest_gpu 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    -o junit_family=xunit1 --junitxml="$OUT/junit_gpu.xml" -rfEs \
    >"$OUT/pytest_gpu.log" 2>&1

if [ -f cli.py ]; then
    # every kernel against the float64 reference on the GPU, with the per-kernel table
    step check 60 "$PY" cli.py check --backend cuda >"$OUT/check.txt" 2>&1
    step bench 150 "$PY" cli.py bench all --backend cuda --json \
        >"$OUT/bench.json" 2>"$OUT/bench.err"
else
    FAILED+=("bench (no cli.py in $(pwd))")
fi

"$PY" - "$OUT" <<'PYEOF' || echo "(summary failed)"
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
try:
    dev = json.loads((out / "device.json").read_text())
    print("device:", dev.get("name", dev.get("reason")), dev.get("compute_capability", ""))
except Exception as exc:
    print("device: unreadable", exc)
try:
    root = ET.parse(out / "junit_gpu.xml").getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    print("gpu tests: {tests} run, {failures} failed, {errors} errors, {skipped} skipped".format(**total))
    for s in suites:
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                print("  FAILED", case.get("classname"), case.get("name"))
except Exception as exc:
    print("gpu tests: no junit report", exc)
try:
    lines = (out / "check.txt").read_text().strip().splitlines()
    print("check --backend cuda:", lines[-1] if lines else "no output")
except Exception as exc:
    print("check: no output", exc)
try:
    rows = json.loads((out / "bench.json").read_text())["rows"]
    print(f"{'op':18} {'shape':34} {'median ms':>10} {'GB/s':>8} {'GFLOP/s':>9} {'roofline':>8} {'vs peer':>8} {'rel err':>8}")
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    for r in rows:
        print(f"{str(r.get('op')):18} {str(r.get('shape'))[:34]:34} "
              f"{num(r.get('median_s', 0) * 1e3 if r.get('median_s') is not None else None, '10.4f')} "
              f"{num(r.get('gbs'), '8.1f')} {num(r.get('gflops'), '9.1f')} "
              f"{num(r.get('roofline_fraction'), '8.2f')} {num(r.get('ratio_to_peer'), '8.2f')} "
              f"{num(r.get('rel_err'), '8.1e')}")
except Exception as exc:
    print("bench: no rows", exc)
PYEOF

echo "-- steps"
printf '%s\n' "${STATUS[@]}"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}  (logs in $OUT)"
    exit 1
fi
echo "all steps passed (logs in $OUT)"
