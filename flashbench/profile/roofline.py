"""Place a measured record on the roofline of the device.

- achieved TFLOP/s: the record's ``tflops`` (the one FLOP count over the median time);
- arithmetic intensity: FLOPs / bytes, with the bytes **measured** by ncu (``hbm_bytes_read +
  hbm_bytes_written``) when there are some, else the analytic minimum
  (:func:`flashbench.model.flops.min_hbm_bytes`: Q, K, V read and O written once), labelled so;
- attainable TFLOP/s: ``min(sustained matmul rate, intensity × read bandwidth)``, the measured roofs
  of :mod:`flashbench.measure.ceilings_cache`; ``% of roof`` is achieved / attainable; ``bound`` says
  which roof is lower at that intensity;
- the same against the model's datasheet peak (:mod:`flashbench.profile.datasheet`), when the model
  is in its table: ``% of datasheet``.

Both roofs are bf16/fp16 Tensor Core rates: a float32 case has no compute roof
(:func:`flashbench.measure.ceilings_cache.has_compute_roof`, the rule the measurer's ``pct_peak_flops``
follows too), so its point gets no attainable rate, % or bound, only a ``note`` saying why. A point
above 100% of a roof keeps its figure and gets a ``note``: a roof is a median rate (a burst above the
sustained clocks beats it), and ncu's cold-cache bytes overstate the traffic of a call whose data stays
in L2, which lowers the intensity and the roof.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..model.schema import Record
from ..measure.ceilings_cache import has_compute_roof
from .ceilings import Ceilings
from .datasheet import DatasheetPeak

MEASURED, ANALYTIC_MIN = "measured (ncu)", "analytic minimum"


@dataclass
class RooflinePoint:
    backend: str
    case_label: str
    tflops: float | None
    bytes: int | None
    basis: str
    intensity: float | None           # FLOP per byte
    attainable_tflops: float | None
    pct_of_roof: float | None
    bound: str                        # memory | compute | ""
    datasheet_tflops: float | None = None  # attainable at this intensity by the datasheet peak
    pct_of_datasheet: float | None = None
    note: str = ""                    # why a figure is missing, or that a % is above 100

    @property
    def above_roof(self) -> bool:
        return any(p is not None and p > 100.0 for p in (self.pct_of_roof, self.pct_of_datasheet))

    def to_dict(self) -> dict:
        return asdict(self)


def roofline_point(rec: Record, ceilings: Ceilings | None, peak: DatasheetPeak | None = None) -> RooflinePoint:
    if rec.hbm_bytes_read is not None and rec.hbm_bytes_written is not None and rec.hbm_bytes_read + rec.hbm_bytes_written > 0:
        nbytes, basis = rec.hbm_bytes_read + rec.hbm_bytes_written, MEASURED
    else:
        nbytes, basis = rec.min_hbm_bytes, ANALYTIC_MIN
    ai = rec.flops / nbytes if rec.flops and nbytes else None
    attainable = pct = None
    bound = note = ""
    if not has_compute_roof(rec.case.dtype) and (ceilings is not None or peak is not None):
        note = f"no roof for {rec.case.dtype}: the compute roofs are bf16/fp16 Tensor Core rates"
        ceilings = peak = None
    if ceilings is not None and ai is not None:
        attainable = ceilings.attainable_tflops(ai)
        bound = "memory" if ai < ceilings.ridge_flop_per_byte else "compute"
        if rec.tflops is not None and attainable > 0:
            pct = 100.0 * rec.tflops / attainable
    sheet = sheet_pct = None
    if peak is not None and ai is not None:
        sheet = peak.attainable_tflops(ai)
        if rec.tflops is not None and sheet > 0:
            sheet_pct = 100.0 * rec.tflops / sheet
    point = RooflinePoint(rec.backend, rec.case.label(), rec.tflops, nbytes, basis, ai, attainable, pct, bound,
                          sheet, sheet_pct, note)
    if point.above_roof:
        point.note = ("above 100% of a roof: a roof is a median rate (sustained clocks)"
                      + (", and ncu's cold-cache bytes overstate a call whose data stays in L2" if basis == MEASURED else "")
                      + ": read it as at the roof")
    return point
