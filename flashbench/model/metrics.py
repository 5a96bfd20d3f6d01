"""The metrics table: every metric that ``compare``, ``check``, the run tables and the plots know.

Each metric is written here once: its record column (units in the name), the name ``--metric``
takes, its label and unit, which direction is better, how its values are formatted, whether it
is derived from the timing samples (changes are noise-tested) or exact, and its key and default
in the thresholds file. Adding a metric is one row in :data:`METRICS` plus the code that
measures it (a :class:`flashbench.model.schema.Record` field).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FormatKind = Literal["number", "ms", "bytes"]

# what a change of a timing-derived metric means for the kernel, whatever the metric (a TFLOP/s
# drop is the kernel getting slower): the words ``flashbench compare`` uses for every timing metric
SPEED_WORDS = ("slower", "faster")


@dataclass(frozen=True)
class Metric:
    name: str                   # what --metric takes
    column: str                 # the record field / frame column, units in the name
    label: str                  # column heading and axis label
    unit: str
    higher_is_better: bool
    kind: FormatKind            # number: plain; ms: a number shown with its unit when alone; bytes: KiB/MiB/GiB
    timing: bool                # derived from the timing samples (changes are noise-tested)
    words: tuple[str, str]      # (worse, better): "9.8% slower", "3.2% fewer TFLOP/s", "12% more memory"
    gate_key: str | None = None  # its key in a thresholds file; None: not gated
    default_threshold: float | None = None  # allowed relative change in the worse direction
    floor_key: str | None = None  # thresholds key of the absolute change under which nothing counts
    #                               (timing metrics: applied to the change of the median time)
    interval: tuple[str, str, str] | None = None  # its spread: (name, low column, high column)
    in_run_table: bool = True   # a column of the run tables (when some row has a value)
    note: str = ""              # what a reader of a table showing it must know (the tables print it)
    exact: bool = False         # not timing, and exact (a byte count): else a measured figure no noise test covers
    merit: bool = True          # a figure of merit (a best backend, speedups); False: a condition of the measurement

    def worse_by(self, change: float) -> float:
        """A relative change (new/old - 1) counted in the worse direction: positive is worse."""
        return -change if self.higher_is_better else change

    def worse(self, ratio: float) -> bool:
        """Is ``ratio`` (new/old) a change for the worse?"""
        return self.worse_by(ratio - 1) > 0

    def better(self, a: float, b: float) -> bool:
        """Is value ``a`` better than value ``b``?"""
        return a > b if self.higher_is_better else a < b

    def speedup(self, value: float, base: float) -> float:
        """How many times better ``value`` is than ``base`` (positive values; above 1: better)."""
        return value / base if self.higher_is_better else base / value

    @property
    def change_words(self) -> tuple[str, str]:
        """(worse, better) in a run-against-run comparison: timing metrics speak of speed."""
        return SPEED_WORDS if self.timing else self.words

    @property
    def interval_label(self) -> str:
        """"p20–p80 ms": the heading of the spread column."""
        return f"{self.interval[0]} {self.unit}" if self.interval else ""

    @property
    def threshold_help(self) -> str:
        return f"allowed relative {'drop' if self.higher_is_better else 'growth'} of {self.label}"


METRICS: tuple[Metric, ...] = (
    Metric("ms", "median_ms", "median ms", "ms", higher_is_better=False, kind="ms", timing=True,
           words=SPEED_WORDS, gate_key="latency", default_threshold=0.05, floor_key="min_abs_ms",
           interval=("p20–p80", "p20_ms", "p80_ms")),
    Metric("tflops", "tflops", "TFLOP/s", "TFLOP/s", higher_is_better=True, kind="number", timing=True,
           words=("fewer TFLOP/s", "more TFLOP/s"), gate_key="tflops", default_threshold=0.05, floor_key="min_abs_ms"),
    # the minimum bytes (model/flops.py) per second: what decode, which is memory-bound, is judged by
    Metric("gbps", "hbm_gbps", "GB/s", "GB/s", higher_is_better=True, kind="number", timing=True,
           words=("fewer GB/s", "more GB/s")),
    Metric("peak_hbm", "peak_hbm_bytes", "peak HBM", "bytes", higher_is_better=False, kind="bytes", timing=False,
           words=("more memory", "less memory"), gate_key="peak_hbm", default_threshold=0.10,
           floor_key="min_abs_hbm_bytes", exact=True),
    # host time to enqueue one call (not from the GPU samples, not gated): what an eager loop pays
    Metric("host", "host_ms", "host ms", "ms", higher_is_better=False, kind="ms", timing=False,
           words=("more host time", "less host time")),
    Metric("tflop_per_j", "tflop_per_j", "TFLOP/J", "TFLOP/J", higher_is_better=True, kind="number", timing=False,
           words=("fewer TFLOP/J", "more TFLOP/J")),
    # percentages of the GPU's roofs as cached by `flashbench env --ceilings` (empty without them)
    Metric("pct_peak", "pct_peak_flops", "% peak", "%", higher_is_better=True, kind="number", timing=True,
           words=("lower % of peak", "higher % of peak"),
           note="% peak: TFLOP/s over the GPU's sustained bf16 matmul rate (flashbench env --ceilings)"),
    Metric("pct_hbm", "pct_hbm", "% read roof", "%", higher_is_better=True, kind="number", timing=True,
           words=("lower % of the read roof", "higher % of the read roof"), in_run_table=False,
           note="% read roof: minimum bytes per second over the GPU's streaming-read bandwidth (flashbench env --ceilings)"),
    # the median SM clock while the timed batches ran (measure/sm_clock.py): a backend slower only because
    # its GPU clocked lower (a power limit, a clock still falling from its boost) shows it here
    Metric("clock", "sm_clock_mhz", "SM MHz", "MHz", higher_is_better=True, kind="number", timing=False,
           words=("lower clock", "higher clock"), merit=False,
           note="SM MHz: the median SM clock while the timed batches ran (NVML); ms × MHz / 1000 = megacycles a call"),
)


def factor_text(x: float) -> str:
    """A ratio (a speedup, a change) as tables and messages show it, before its "x": "1.33"; one past any
    real ratio (an edited results file's time of 1e300 ms) in a few characters, "1e+300", not 300 digits."""
    return f"{x:.2f}" if abs(x) < 1e6 else f"{x:.3g}"


def judged_rate(workloads) -> Metric:
    """The rate a set of rows is judged by: GB/s when every row is decode (memory-bound: its figure is the
    bandwidth, README "Workloads"), else TFLOP/s. ``workloads``: the rows' workload values."""
    values = list(workloads)
    return get_metric("gbps" if values and all(w == "decode" for w in values) else "tflops")


def metric_names() -> list[str]:
    return [m.name for m in METRICS]


def get_metric(name: str) -> Metric:
    """The metric ``--metric NAME`` means. Raises ValueError naming the choices."""
    for m in METRICS:
        if m.name == name:
            return m
    raise ValueError(f"--metric: {name!r} is not one of {', '.join(metric_names())}")


def by_column(column: str) -> Metric:
    for m in METRICS:
        if m.column == column:
            return m
    raise ValueError(f"column: {column!r} is no metric's column ({', '.join(m.column for m in METRICS)})")


def gated_metrics() -> list[Metric]:
    """The metrics ``flashbench check`` gates, in table order."""
    return [m for m in METRICS if m.gate_key is not None]


# the metric the latency-based helpers use (speedups, the min_abs_ms floor)
LATENCY = by_column("median_ms")
