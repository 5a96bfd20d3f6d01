#!/usr/bin/env bash
# flashbench profile on one GPU (H100 with ncu on the PATH): ceilings, a profiled case, a traffic sweep.
#
# Run from the checkout root after the offline install:
#   source .whl/setup.sh && python3 -m pip install -q --no-deps --no-build-isolation -e . && bash scripts/device_profile.sh
# Everything lands under "$OUT/profile" (OUT defaults to /tmp/out):
#   cache/flashbench/ceilings-<uuid>.json   env --ceilings (XDG_CACHE_HOME points here, so it comes back)
#   main/   results.json/.csv (hbm_bytes_read/_written from ncu), profile.json, trace_*.json, ncu_*.csv, roofline.png
#   sweep/  the same for naive and triton_fa2 at N = 1024..8192, sweep_n.json, traffic_vs_n.png
#   *.log   each step's stderr; summary.txt the short table printed last
# Budget: ~150 s. ncu profiles exactly one call per task (cudaProfilerStart/Stop around it, a
# marker kernel between tasks, --launch-count as a cap), 2 metrics, so replays stay few; every
# step runs under a timeout taken from what is left of the budget, and fails soft: a failing
# backend is a row (error/oom), a failing step is a line, the next step still runs.
set -u
OUT=${OUT:-/tmp/out}
P="$OUT/profile"
mkdir -p "$P"
export XDG_CACHE_HOME="$P/cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${BUDGET_S:-150}
START=$SECONDS

if command -v flashbench >/dev/null 2>&1; then FB=(flashbench)
else FB=(python3 -c 'import sys; sys.argv[0] = "flashbench"; from flashbench.cli import main; main()'); fi

left() { echo $(( BUDGET - (SECONDS - START) )); }

step() {  # step NAME CAP_S CMD...: run under min(CAP, time left - 10 s), never abort the script
  local name=$1 cap=$2; shift 2
  local t; t=$(left); t=$(( t - 10 < cap ? t - 10 : cap )); (( t < 15 )) && t=15
  echo "== $name (timeout ${t}s, $(( SECONDS - START ))s elapsed)"
  timeout --kill-after=5 "$t" "$@" > "$P/$name.out" 2> "$P/$name.log"
  local rc=$?
  (( rc != 0 )) && echo "   $name: exit $rc (see $P/$name.log): $(grep -v '^USDT' "$P/$name.log" | tail -2 | tr '\n' ' ')"
  return 0
}

command -v ncu >/dev/null && echo "ncu: $(ncu --version | tail -1)" || echo "ncu: not on the PATH (analytic model only)"
python3 -c 'import torch; p = torch.cuda.get_device_properties(0); print("gpu:", p.name, "| smem/SM:", getattr(p, "shared_memory_per_multiprocessor", "?"), "B | torch", torch.__version__)' 2>/dev/null || echo "gpu: none visible to torch"

# PROFILE_DEVICE / PROFILE_N / SWEEP_N override the device and sizes (e.g. a CPU smoke test of this script)
cat > "$P/h100_profile.yaml" <<YAML
name: h100_profile
description: flashbench profile on the device - bf16 B=1 H=16 D=128 N=4096 fwd, the FlashAttention paper's comparison
device: ${PROFILE_DEVICE:-cuda}
axes:
  batch: 1
  heads: 16
  seq_len: ${PROFILE_N:-4096}
  head_dim: 128
  dtype: bfloat16
  causal: false
  mode: fwd
backends: [naive, sdpa_flash, triton_fa2, triton_fa1]
reference_backend: sdpa_flash
timing:
  warmup_ms: 10
  budget_ms: 40
  min_samples: 10
  max_samples: 100
YAML

step ceilings 40 "${FB[@]}" env --ceilings
cat "$P/ceilings.out"
step main 85 "${FB[@]}" profile "$P/h100_profile.yaml" --out "$P/main" --plot --calls 3 --ncu-timeout 45
step sweep 70 "${FB[@]}" profile "$P/h100_profile.yaml" --backends naive,triton_fa2 --sweep-n --n "${SWEEP_N:-1024,2048,4096,8192}" \
  --plot --out "$P/sweep" --ncu-timeout 50

python3 - "$P" <<'PY' | tee "$P/summary.txt"
import json, sys
from pathlib import Path
P = Path(sys.argv[1])
MiB = 2 ** 20
def load(p):
    try:
        return json.loads(p.read_text())
    except Exception as e:
        print(f"({p}: {type(e).__name__})"); return None
res, prof = load(P / "main/results.json"), load(P / "main/profile.json")
if res and prof:
    c = prof.get("ceilings") or {}
    print((f"ceilings: {c['matmul_tflops']:.0f} TFLOP/s bf16 matmul, {c['copy_gbps']:.0f} GB/s copy; " if c else "ceilings: none; ") +
          f"ncu used: {prof['ncu_used']} {prof['ncu_note']}; M = {prof['smem_per_sm_bytes']} B")
    model = (prof.get("io_model") or [{}])[0]
    print("model MiB: " + ", ".join(f"{k} {v['total'] / MiB:.0f}" for k, v in model.items() if isinstance(v, dict))
          + f", minimum {model.get('minimum', 0) / MiB:.0f}")
    kern = {t["backend"]: (sum(r["count_per_call"] for r in t["rows"]), t["rows"][0]["name"][:40] if t["rows"] else "")
            for t in prof["traces"] if t["status"] == "ok"}
    roof = {p["backend"]: p for p in prof["roofline"]}
    print(f"{'backend':<11}{'status':<9}{'ms':>8}{'TFLOP/s':>9}{'read MiB':>10}{'write MiB':>10}{'FLOP/B':>8}{'%roof':>7}{'kern/call':>10}  top kernel")
    for r in res["records"]:
        rd, wr = r.get("hbm_bytes_read"), r.get("hbm_bytes_written")
        p = roof.get(r["backend"], {})
        k = kern.get(r["backend"], ("", ""))
        f = lambda x, spec: format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0]))
        print(f"{r['backend']:<11}{r['status']:<9}{f(r.get('median_ms'), '8.3f')}{f(r.get('tflops'), '9.0f')}"
              f"{f(None if rd is None else rd / MiB, '10.0f')}{f(None if wr is None else wr / MiB, '10.0f')}"
              f"{f(p.get('intensity'), '8.0f')}{f(p.get('pct_of_roof'), '7.0f')}{f(k[0] or None, '10.1f')}  {k[1]}")
        if r["status"] not in ("ok", "skipped"):
            print(f"   {r['status']}: {r['reason'][:160]}")
    for t in prof.get("traffic", []):
        if t["status"] != "ok":
            print(f"   ncu {t['backend']}: {t['status']}: {t['reason'][:160]}")
rows = load(P / "sweep/sweep_n.json")
if rows:
    print(f"{'sweep':<11}{'N':>6}{'measured MiB':>14}{'standard':>10}{'FA1':>8}{'FA2':>8}{'minimum':>9}")
    for r in rows:
        m = r["measured"]
        print(f"{r['backend']:<11}{r['n']:>6}{'-' if m is None else format(m / MiB, '.0f'):>14}{r['standard'] / MiB:>10.0f}"
              f"{r['fa1'] / MiB:>8.0f}{r['fa2'] / MiB:>8.0f}{r['minimum'] / MiB:>9.0f}  {r['status']}")
print("figures:", ", ".join(str(p.relative_to(P)) for p in sorted(P.glob("*/*.png"))) or "none")
PY
echo "total $(( SECONDS - START ))s; outputs in $P"
