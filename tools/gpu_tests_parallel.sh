#!/usr/bin/env bash
# Run the GPU-only tests of the given files in N pytest processes at once (compilation, not the
# GPU, bounds these tests: one process compiles one kernel at a time), then run the tests that failed
# there again, alone, in one process: beside N - 1 others a test can run out of GPU memory or miss a
# timing bound that it meets on its own, and the second run tells those from real failures.
# Usage on a machine with a GPU, with flashbench and its test extras installed:
#   bash tools/gpu_tests_parallel.sh N OUT_DIR tests/kernels tests/gpu ...
# Writes OUT_DIR/gpu_tests_<i>.txt per process, OUT_DIR/rerun_alone.txt for the second run and
# OUT_DIR/all.txt (every log, one after the other: one file to carry off a machine); prints each
# process's summary line, the failures beside the others and the second run's summary. Exits 1 if a
# test failed alone too, or if a process ended without a summary line (killed); 2 on bad arguments.
set -u
usage="usage: bash tools/gpu_tests_parallel.sh N OUT_DIR TEST_PATH..."
if [ $# -lt 3 ]; then echo "$usage" >&2; exit 2; fi
case "$1" in ''|*[!0-9]*|0) echo "N must be a positive integer, got '$1'; $usage" >&2; exit 2 ;; esac
n=$1; out=$2; shift 2
# one pytest run of given test ids, as both passes run them (the summary lists failures, errors and skips)
run_tests=(python3 -m pytest -q -m gpu -rfEs --tb=short -p no:cacheprovider)
mkdir -p "$out"
python3 -m pytest -q --co -m gpu "$@" 2>/dev/null | grep "::" > "$out/gpu_test_ids.txt"
total=$(wc -l < "$out/gpu_test_ids.txt")
echo "gpu tests: $total in $n processes"
pids=()
for i in $(seq 0 $((n - 1))); do
  awk -v n="$n" -v i="$i" 'NR % n == i' "$out/gpu_test_ids.txt" > "$out/ids_$i.txt"
  if [ -s "$out/ids_$i.txt" ]; then
    xargs -a "$out/ids_$i.txt" -d '\n' "${run_tests[@]}" > "$out/gpu_tests_$i.txt" 2>&1 &
    pids+=($!)
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
rc=0
for f in "$out"/gpu_tests_*.txt; do
  last=$(tail -1 "$f")
  echo "$(basename "$f"): $last"
  # pytest's last line is its summary ("... passed in 12.3s"); anything else: the process was killed
  case "$last" in *" in "*s*) ;; *) echo "  (no summary: the process did not finish)"; rc=1 ;; esac
done
# "FAILED tests/x.py::test_y[p] - message": the node id is the second field
grep -h "^FAILED \|^ERROR " "$out"/gpu_tests_*.txt | awk '{print $2}' | sort -u > "$out/failed_beside_others.txt"
n_failed=$(wc -l < "$out/failed_beside_others.txt")
if [ "$n_failed" -gt 0 ]; then
  echo "failed beside the other processes: $n_failed"
  head -20 "$out/failed_beside_others.txt" | sed 's/^/  /'
  echo "run again alone:"
  xargs -a "$out/failed_beside_others.txt" -d '\n' "${run_tests[@]}" > "$out/rerun_alone.txt" 2>&1 || rc=1
  echo "  $(tail -1 "$out/rerun_alone.txt")"
  grep -h "^FAILED \|^ERROR " "$out/rerun_alone.txt" | head -20
fi
for f in "$out"/gpu_tests_*.txt "$out"/rerun_alone.txt; do
  [ -f "$f" ] && { echo "=== $(basename "$f")"; cat "$f"; }
done > "$out/all.txt"
exit $rc
