#!/usr/bin/env bash
# The kernel comparison runs and the profile, in one device call: fa2_h100 and fa1_vs_fa2 sweeps,
# then scripts/device_profile.sh. Everything comes back in one archive (the device returns <= 8 files).
# Usage on the GPU machine, from the checkout root with .whl/ carried: bash scripts/device_sweeps.sh
set -u
source .whl/setup.sh || exit 3
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for cfg in fa2_h100 fa1_vs_fa2; do
  start=$(date +%s)
  flashbench run "$cfg" --out "$OUT/$cfg" --quiet --timeout 300 2> "$OUT/$cfg.log"
  echo "$cfg: $(( $(date +%s) - start )) s; $(tail -1 "$OUT/$cfg.log")"
done
bash scripts/device_profile.sh > "$OUT/profile.txt" 2>&1
tail -22 "$OUT/profile.txt"
python3 - <<'PY'
import os, pandas as pd
out = os.environ.get("OUT", "/tmp/out")
df = pd.read_csv(f"{out}/fa2_h100/results.csv")
print(df.pivot_table(index=["head_dim", "seq_len_q", "causal", "mode"], columns="backend", values="tflops").round(0).to_string())
df = pd.read_csv(f"{out}/fa1_vs_fa2/results.csv")
t = df.pivot_table(index=["head_dim", "batch", "seq_len_q", "mode"], columns="backend", values="tflops")
t["fa2/fa1"] = t["triton_fa2"] / t["triton_fa1"]
print(t.round(2).to_string())
for name in ("fa2_h100", "fa1_vs_fa2"):
    d = pd.read_csv(f"{out}/{name}/results.csv")
    for _, r in d[~d.status.isin(["ok", "skipped"])].iterrows():
        print("BAD", name, r.backend, r.head_dim, r.seq_len_q, r.causal, r["mode"], r.status, str(r.reason)[:160])
PY
tar czf "$OUT/sweeps.tgz" -C "$OUT" fa2_h100 fa1_vs_fa2 profile fa2_h100.log fa1_vs_fa2.log profile.txt
