#!/usr/bin/env bash
# One device call: every GPU-only test (harness, FA2, FA1) and the FA2 forward-variant experiment.
# Usage on the GPU machine, from the checkout root with .whl/ carried: bash scripts/device_check.sh
set -u
source .whl/setup.sh || exit 3
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
start=$(date +%s)
timeout ${TEST_LIMIT_S:-300} python3 -m pytest -q -m gpu -rfE --tb=short tests/test_gpu_harness.py \
    tests/test_flash_attn_v2.py tests/test_flash_attn_v1.py > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests: $(( $(date +%s) - start )) s"
grep -E "passed|failed|FAILED|Error" "$OUT/gpu_tests.txt" | tail -15
if [ -f scripts/fa2_fwd_variants.py ]; then
  timeout ${VARIANT_LIMIT_S:-240} python3 scripts/fa2_fwd_variants.py --out "$OUT" > "$OUT/variants.log" 2>&1
  echo "variants rc=$?"; tail -40 "$OUT/variants.log"
fi
tar czf "$OUT/check.tgz" -C "$OUT" $(cd "$OUT" && ls | grep -v check.tgz)
