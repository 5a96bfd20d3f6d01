#!/usr/bin/env bash
# Run the GPU-only tests of the given files in N pytest processes at once (compilation, not the
# GPU, bounds these tests: one process compiles one kernel at a time).
# Usage on a machine with a GPU, with flashbench and its test extras installed:
#   bash tools/gpu_tests_parallel.sh N OUT_DIR tests/kernels tests/gpu ...
# Writes OUT_DIR/gpu_tests_<i>.txt per process and prints each process's summary line; exits 1
# if any process failed.
set -u
n=$1; out=$2; shift 2
mkdir -p "$out"
python3 -m pytest -q --co -m gpu "$@" 2>/dev/null | grep "::" > "$out/gpu_test_ids.txt"
total=$(wc -l < "$out/gpu_test_ids.txt")
echo "gpu tests: $total in $n processes"
pids=()
for i in $(seq 0 $((n - 1))); do
  awk -v n="$n" -v i="$i" 'NR % n == i' "$out/gpu_test_ids.txt" > "$out/ids_$i.txt"
  if [ -s "$out/ids_$i.txt" ]; then
    xargs -a "$out/ids_$i.txt" -d '\n' python3 -m pytest -q -m gpu -rfE --tb=short -p no:cacheprovider \
      > "$out/gpu_tests_$i.txt" 2>&1 &
    pids+=($!)
  fi
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
for f in "$out"/gpu_tests_*.txt; do echo "$(basename "$f"): $(tail -1 "$f")"; done
grep -h "^FAILED\|^ERROR" "$out"/gpu_tests_*.txt | head -20
exit $rc
