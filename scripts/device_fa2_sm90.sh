#!/usr/bin/env bash
# One device call for the Gluon Hopper forward (kernels/flash_attn_v2_sm90.py): the GPU tests of the
# given test files in PROCS (6) processes (TESTS=none skips them), the host cost of a forward call with a
# host profile and the timer's sample spread on two small sweep cells (scripts/fa2_launch_overhead.py),
# then the sm90 A/B (scripts/fa2_causal_schedule.py --set sm90:
# Triton forward vs the Gluon forward vs the tuner's choice vs SDPA).
# Run from the checkout root on the device machine with .whl carried:  bash scripts/device_fa2_sm90.sh
set -u
source .whl/setup.sh || exit 1
dir=$OUT/sm90
mkdir -p "$dir"
nvidia-smi > "$dir/nvidia-smi.txt" 2>&1
tests=${TESTS:-tests/test_flash_attn_v2_sm90.py tests/test_flash_attn_v2.py tests/test_gpu_harness.py}
if [ "$tests" != none ]; then
  timeout "${TEST_S:-300}" bash scripts/gpu_tests_parallel.sh "${PROCS:-6}" "$dir/gpu_tests" $tests
  echo "gpu tests exit $?"
fi
timeout 120 python3 scripts/fa2_launch_overhead.py --profile > "$dir/launch_overhead.txt" 2>&1
echo "launch overhead exit $?"; head -10 "$dir/launch_overhead.txt"
timeout 150 python3 scripts/fa2_launch_overhead.py --jitter > "$dir/jitter.txt" 2>&1
echo "jitter exit $?"; cat "$dir/jitter.txt" | tail -8
timeout "${AB_S:-280}" python3 scripts/fa2_causal_schedule.py --set sm90 --rounds "${ROUNDS:-3}" --out "$dir" ${AB_ARGS:-} \
    > "$dir/ab_stdout.txt" 2>&1
echo "a/b exit $?"; grep -A60 "^TFLOP/s" "$dir/ab_stdout.txt" || tail -30 "$dir/ab_stdout.txt"
tar czf "$OUT/sm90.tgz" -C "$OUT" sm90
