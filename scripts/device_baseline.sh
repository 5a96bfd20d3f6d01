#!/usr/bin/env bash
# The committed H100 baseline, in one device call: the default sweep exactly as a user runs it
# (cold Triton cache, timed), gated against the previous baseline with `flashbench check`, then
# the GPU-only tests (4 processes), the host cost of an FA2 forward call and the timer cross-check
# in the time that is left.
# Usage on the GPU machine, from the checkout root with .whl/ carried: bash scripts/device_baseline.sh
set -u
source .whl/setup.sh || exit 3
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
rm -rf ~/.triton/cache  # a first run on a fresh machine: compile time counts
flashbench env --format json > "$OUT/env.json"
start=$(date +%s)
timeout ${SWEEP_LIMIT_S:-420} flashbench run default --out "$OUT/default" 2> "$OUT/default.log" > "$OUT/default_table.txt"
echo "default sweep wall time: $(( $(date +%s) - start )) s" | tee "$OUT/default_wall.txt"
grep -E "compiled kernels|records" "$OUT/default.log" | tee -a "$OUT/default_wall.txt"
python3 - <<'PY'
import json, os, pandas as pd
out = os.environ.get("OUT", "/tmp/out")
df = pd.read_csv(out + "/default/results.csv")
print(json.load(open(out + "/default/results.json")).get("precompile"))
print(df.groupby(["backend", "status"]).size().unstack(fill_value=0).to_string())
print(df.groupby("backend")["wall_s"].sum().round(1).to_string(), "| sum", round(df.wall_s.sum(), 1))
for _, r in df[~df.status.isin(["ok", "skipped"])].iterrows():
    print("BAD", r.backend, r.dtype, r.head_dim, r.seq_len_q, r.causal, r["mode"], r.status, str(r.reason)[:160])
PY
if [ -d results/baselines/h100/default ]; then
  flashbench check "$OUT/default" --baseline results/baselines/h100/default > "$OUT/check_vs_previous.txt" 2>&1
  echo "check vs previous baseline: rc=$?"; grep -iE "pass|fail|regress|improv" "$OUT/check_vs_previous.txt" | head -8
fi
left=$(( ${CALL_LIMIT_S:-560} - ($(date +%s) - start) - 60 ))
if [ "$left" -gt 60 ]; then
  s2=$(date +%s)
  timeout $left bash scripts/gpu_tests_parallel.sh 4 "$OUT/gpu_tests" tests/test_gpu_harness.py \
      tests/test_flash_attn_v2.py tests/test_flash_attn_v2_sm90.py tests/test_flash_attn_v1.py > "$OUT/gpu_tests.txt" 2>&1
  echo "gpu tests: rc=$? in $(( $(date +%s) - s2 )) s (limit $left s)"
  tail -8 "$OUT/gpu_tests.txt"
fi
left=$(( ${CALL_LIMIT_S:-560} - ($(date +%s) - start) ))
if [ "$left" -gt 60 ]; then
  timeout $(( left - 20 )) python3 scripts/fa2_launch_overhead.py --profile > "$OUT/launch_overhead.txt" 2>&1
  head -10 "$OUT/launch_overhead.txt"
fi
left=$(( ${CALL_LIMIT_S:-560} - ($(date +%s) - start) ))
if [ "$left" -gt 40 ]; then
  timeout $(( left - 10 )) python3 scripts/check_timing.py --out "$OUT/check_timing.json" > /dev/null 2>&1
  tail -c 300 "$OUT/check_timing.json"; echo
fi
# the device returns at most 8 files: everything travels in one archive
tar czf "$OUT/baseline.tgz" -C "$OUT" $(cd "$OUT" && ls | grep -v baseline.tgz)
