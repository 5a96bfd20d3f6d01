"""A/B on one GPU: does reading the SM clock during the timed batches move the timings?

The same tasks measured with the clock sampler and without it (the measurer's lookup of the sampler replaced by
one that finds none), four rounds, the order flipped each round, at the sweep's default timing settings, without
correctness checks. Prints each task's round medians and row clocks, then with/without of the medians of the
rounds. Run from the repository root on a GPU: python results/evidence/h100/sm_clock_rows/clock_ab.py"""
import statistics

from flashbench.measure import measurer as M
from flashbench.measure.measurer import MeasureSettings, Measurer
from flashbench.model.case import Case, Task
from flashbench.model.config import Timing

cases = [Case(4, 16, 16, 4096, 4096, 128, "bfloat16", False, "fwd"), Case(16, 16, 16, 1024, 1024, 128, "bfloat16", True, "fwd_bwd"),
         Case(2, 16, 16, 8192, 8192, 64, "bfloat16", True, "fwd")]
backends = ["sdpa_cudnn", "triton_fa2"]
real = M.sampler_for
out = {}
for rnd in range(4):
    for with_clock in ((True, False) if rnd % 2 == 0 else (False, True)):
        M.sampler_for = real if with_clock else (lambda uuid: None)
        m = Measurer(MeasureSettings(timing=Timing(), correctness=False), "cuda")
        for c in cases:
            for b in backends:
                r = m.measure(Task(c, b))
                out.setdefault((str(c.seq_len_q) + "/" + str(c.head_dim) + "/" + c.mode + ("/causal" if c.causal else ""), b, with_clock), []).append((r.median_ms, r.sm_clock_mhz, r.status))
for k, v in sorted(out.items()):
    ms = [x[0] for x in v if x[0]]
    print(k, "median of rounds %.4f ms" % statistics.median(ms), "rounds", ["%.4f" % x for x in ms], "clocks", [x[1] for x in v], [x[2] for x in v][0])
for c in sorted({k[0] for k in out}):
    for b in backends:
        a, n = (statistics.median([x[0] for x in out[(c, b, w)]]) for w in (True, False))
        print(f"{c:24s} {b:12s} with/without clock {a / n:.4f}")
