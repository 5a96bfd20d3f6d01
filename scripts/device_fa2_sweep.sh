#!/usr/bin/env bash
# One device call: the fa2_h100 sweep with the current kernels, gated against the committed one (v8),
# and its forward table (TFLOP/s per backend) printed last. Everything comes back in one archive.
# Usage on the GPU machine, from the checkout root with .whl/ carried: bash scripts/device_fa2_sweep.sh
set -u
source .whl/setup.sh || exit 3
mkdir -p "$OUT"
start=$(date +%s)
flashbench run fa2_h100 --out "$OUT/fa2_h100" --quiet --timeout 300 2> "$OUT/fa2_h100.log"
echo "sweep rc=$? wall=$(( $(date +%s) - start ))s" | tee "$OUT/fa2_h100/sweep_wall.txt"
flashbench check "$OUT/fa2_h100" --baseline results/baselines/h100/fa2_h100 > "$OUT/fa2_h100/check_vs_previous.txt" 2>&1
echo "check vs previous rc=$?"; head -3 "$OUT/fa2_h100/check_vs_previous.txt"
python3 - <<'PY'
import os, pandas as pd
d = pd.read_csv(os.path.join(os.environ["OUT"], "fa2_h100", "results.csv"))
print(d.status.value_counts().to_string())
t = d.pivot_table(index=["head_dim", "mode", "causal", "seq_len_q"], columns="backend", values="tflops")
for peer in ("sdpa_flash", "sdpa_cudnn", "flex"):
    t[f"x{peer.split('_')[-1]}"] = t["triton_fa2"] / t[peer]
print(t.round(2).to_string())
PY
tar czf "$OUT/fa2_h100.tgz" -C "$OUT" fa2_h100 fa2_h100.log
