#!/usr/bin/env bash
# One device call: install offline, show the environment, run the quick GPU sweep, cross-check the timer.
# Usage on the GPU machine (from the checkout root, .whl/ carried): bash scripts/device_quick.sh
set -u
source .whl/setup.sh || exit 3
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
flashbench env | tee "$OUT/env.txt"
time flashbench run gpu_quick --out "$OUT/quick" --format csv > "$OUT/quick.csv" 2> "$OUT/quick.log"
tail -5 "$OUT/quick.log"
python3 scripts/check_timing.py --out "$OUT/check_timing.json" | tail -4
python3 - <<'PY'
import pandas as pd, os
df = pd.read_csv(os.environ.get("OUT", "/tmp/out") + "/quick/results.csv")
print(df.groupby(["backend", "status"]).size().unstack(fill_value=0).to_string())
ok = df[df.status.isin(["ok", "mismatch"])]
print(ok.pivot_table(index=["head_dim", "seq_len_q", "causal", "mode"], columns="backend", values="tflops").round(0).to_string())
print(df.groupby("backend")["wall_s"].sum().round(1).to_string())
bad = df[~df.status.isin(["ok", "skipped"])]
for _, r in bad.iterrows():
    print("BAD", r.backend, r.head_dim, r.seq_len_q, r.causal, r["mode"], r.status, str(r.reason)[:200])
PY
