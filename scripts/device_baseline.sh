#!/usr/bin/env bash
# The committed H100 baseline, in one device call:
#   the harness's GPU tests, the timer cross-check, the default sweep (timed), saved as a baseline.
# Usage on the GPU machine, from the checkout root with .whl/ carried: bash scripts/device_baseline.sh
set -u
source .whl/setup.sh || exit 3
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
flashbench env --format json > "$OUT/env.json"
start=$(date +%s)
timeout ${SWEEP_LIMIT_S:-420} flashbench run default --out "$OUT/default" --quiet 2> "$OUT/default.log"
echo "default sweep wall time: $(( $(date +%s) - start )) s" | tee "$OUT/default_wall.txt"
tail -3 "$OUT/default.log"
python3 - <<'PY'
import os, pandas as pd
df = pd.read_csv(os.environ.get("OUT", "/tmp/out") + "/default/results.csv")
print(df.groupby(["backend", "status"]).size().unstack(fill_value=0).to_string())
print(df.groupby("backend")["wall_s"].sum().round(1).to_string())
ok = df[(df.dtype == "bfloat16") & df.status.isin(["ok", "mismatch"]) & (df.seq_len_q.isin([4096, 16384]))]
print(ok.pivot_table(index=["head_dim", "seq_len_q", "causal", "mode"], columns="backend", values="tflops").round(0).to_string())
for _, r in df[~df.status.isin(["ok", "skipped"])].iterrows():
    print("BAD", r.backend, r.dtype, r.head_dim, r.seq_len_q, r.causal, r["mode"], r.status, str(r.reason)[:160])
PY
python3 -m pytest -q -m gpu -rfE --tb=line tests/test_gpu_harness.py > "$OUT/gpu_tests.txt" 2>&1
grep -E "passed|failed|FAILED|Error" "$OUT/gpu_tests.txt" | tail -12
python3 scripts/check_timing.py --out "$OUT/check_timing.json" > /dev/null; tail -c 300 "$OUT/check_timing.json"; echo
# the device returns at most 8 files: everything travels in one archive
tar czf "$OUT/baseline.tgz" -C "$OUT" default env.json gpu_tests.txt check_timing.json default_wall.txt default.log
