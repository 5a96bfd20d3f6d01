#!/usr/bin/env bash
# One device call for the Gluon Hopper forward (kernels/flash_attn_v2_sm90.py): its GPU tests, then
# the sm90 A/B (Triton forward vs the Gluon forward with one or two consumer partitions vs SDPA).
# Run from the checkout root on the device machine with .whl carried:  bash scripts/device_fa2_sm90.sh
set -u
source .whl/setup.sh || exit 1
dir=$OUT/sm90
mkdir -p "$dir"
nvidia-smi > "$dir/nvidia-smi.txt" 2>&1
timeout "${TEST_S:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider --maxfail=5 ${TESTS:-tests/test_flash_attn_v2_sm90.py} \
    > "$dir/gpu_tests.txt" 2>&1
echo "gpu tests exit $?"; tail -8 "$dir/gpu_tests.txt"
timeout "${AB_S:-320}" python3 scripts/fa2_causal_schedule.py --set sm90 --rounds "${ROUNDS:-3}" --out "$dir" ${AB_ARGS:-} \
    > "$dir/ab_stdout.txt" 2>&1
echo "a/b exit $?"; grep -A60 "^TFLOP/s" "$dir/ab_stdout.txt" || tail -30 "$dir/ab_stdout.txt"
tar czf "$OUT/sm90.tgz" -C "$OUT" sm90
