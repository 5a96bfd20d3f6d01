"""Sweep configuration: YAML -> validated pydantic model.

Every problem in a file becomes one line naming the file, the field path and what is allowed;
:class:`ConfigError` carries them all, and the CLI turns it into exit code 2.
"""
from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .case import DTYPES, MODES  # noqa: F401  (re-exported)
from .fields import (Batch, DType, HeadDim, Heads, Hidden, Integer, KvLayout, Length, Mode, Number, SeqLen, Strict,
                     Tokens, ValueLists, Window, Workload, as_list, windows)
from .filters import Rule
from .yaml_input import ConfigError, did_you_mean, preview, read_yaml_file, validate_yaml


class Axes(ValueLists):
    """The grid. Scalars are shorthand for one-element lists.

    ``workload`` (one per grid) says what the axes mean: ``dense`` as always; ``decode``: ``seq_len``
    new tokens (1..16) against a KV cache of ``seq_len_kv`` keys per sequence (a value or a length
    distribution), ``kv_layout`` and ``page_size``; ``varlen``: sequences of ``seq_len`` (a value, a
    list of lengths or a distribution) packed until ``tokens`` tokens are filled.
    """

    workload: Workload = Field("dense", description="dense | decode | varlen (one per grid)")
    batch: list[Batch] | None = Field(None, description="batch sizes (decode: sequences)")
    tokens: list[Tokens] | None = Field(None, description="alternative to batch: batch = tokens // seq_len; "
                                                                 "varlen: the packed batch's token budget")
    heads: list[Heads] | None = Field(None, description="query heads")
    hidden: list[Hidden] | None = Field(None, description="alternative to heads: heads = hidden // head_dim")
    kv_heads: list[Heads] | None = Field(None, description="key/value heads (GQA/MQA); default = heads")
    seq_len: list[Length] = Field(description="query length (decode: new tokens per sequence; varlen: the "
                                              "sequence lengths, a value, a list or a distribution)")
    seq_len_kv: list[Length] | None = Field(None, description="default = seq_len; decode: the cache length, "
                                                              "a value or a distribution")
    head_dim: list[HeadDim]
    dtype: list[DType] = ["bfloat16"]
    causal: list[bool] = [False]
    mode: list[Mode] = ["fwd"]
    window: list[Window] | None = Field(None, description="sliding windows [left, right] (-1: unbounded)")
    kv_layout: list[KvLayout] | None = Field(None, description="decode: contiguous | paged (default contiguous)")
    page_size: list[SeqLen] | None = Field(None, description="decode, paged caches: tokens per page")

    @field_validator("*", mode="before")
    @classmethod
    def _listify(cls, v, info: ValidationInfo):
        if v is None or info.field_name == "workload":
            return v
        return windows(v) if info.field_name == "window" else as_list(v)

    @model_validator(mode="after")
    def _exclusive(self):
        if self.workload == "decode":
            if self.batch is None or self.tokens is not None:
                raise ValueError("workload decode: give 'batch' (sequences in the batch), not 'tokens'")
        elif self.workload == "varlen":
            if self.tokens is None or self.batch is not None:
                raise ValueError("workload varlen: give 'tokens' (the packed batch's token budget), not 'batch'")
        elif (self.batch is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'batch' or 'tokens'")
        if (self.heads is None) == (self.hidden is None):
            raise ValueError("give exactly one of 'heads' or 'hidden'")
        if self.workload == "decode" and "causal" not in self.model_fields_set:
            self.causal = [True]  # new tokens are causal among themselves
        return self


MAX_ENERGY_MS = 60_000  # timing.energy_ms and --energy-ms: at most a minute of extra running a row


def gpu_timed(device: str) -> bool:
    """Whether a call on ``device`` is timed by the GPU timer (``flashbench.measure.timer.time_cuda``, which takes
    the rest) rather than the CPU one: the one rule ``time_call`` and ``Timing.as_run`` read."""
    return str(device).startswith("cuda")


class Timing(Strict):
    """How a call is timed: the one definition, read from the YAML and handed to the timer."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    # a minute of warmup or of sampling per call is past any useful measurement (and, paid per
    # backend, past the default per-task timeout of 600 s); samples are all kept in results.json
    warmup_ms: Number = Field(25.0, gt=0, le=60_000, description="time spent running the call before sampling")
    rest_ms: Number = Field(300.0, ge=0, le=60_000, description="GPU only: idle this long after the first call (it may "
                            "compile and autotune) and before the warm-up, so that a backend's samples do not start at "
                            "the clock its own autotuning or the backend timed before it left")
    budget_ms: Number = Field(200.0, gt=0, le=60_000, description="most time spent sampling (less once max_noise_pct is met)")
    min_samples: Integer = Field(10, ge=1, le=100_000)
    max_samples: Integer = Field(1000, ge=1, le=100_000)
    flush_l2: bool = Field(True, description="write a 256 MB buffer before every call (cold L2)")
    cuda_graph: bool = Field(False, description="time CUDA-graph replays of the call (fwd, bwd, fwd_bwd); the L2 "
                                                "is flushed before each replay when flush_l2 is true")
    hold_stream: bool = Field(True, description="enqueue each batch of samples behind a kernel that holds the "
                                                "stream, then release it: the events time the GPU alone, not the host")
    max_noise_pct: Number = Field(1.0, ge=0, le=100, description="stop sampling once the 95% confidence interval of the "
                                                        "median is within ± this % of it (0: sample the whole budget)")
    energy_ms: Number = Field(0.0, ge=0, le=MAX_ENERGY_MS, description="when > 0 and the GPU has an energy counter: after "
                              "sampling, keep running the call (not as samples) until the measured windows cover the "
                              "counter's minimum (five of its steps, at least 10 ms, and the steps' error within 15% of "
                              "what they read), for at most this long; 0: energy only where the sampled batches cover it")

    @model_validator(mode="after")
    def _order(self):
        if self.max_samples < self.min_samples:
            raise ValueError("max_samples must be >= min_samples")
        return self

    def as_run(self, device: str) -> dict:
        """The settings a run on ``device`` applies, as results record them (``timing`` of results.json): a CPU
        run's timer takes no rest (``flashbench.measure.timer.time_cpu``), whatever ``rest_ms`` says."""
        settings = self.model_dump()
        if not gpu_timed(device):
            settings["rest_ms"] = 0.0
        return settings


class Tolerance(Strict):
    atol: Number = Field(ge=0, le=1e6, description="absolute term added to the bound")
    factor: Number = Field(2.0, gt=0, le=1e6, description="multiple of PyTorch's own same-dtype error allowed")


DEFAULT_TOLERANCES = {
    "float16": Tolerance(atol=1e-2),
    "bfloat16": Tolerance(atol=2.5e-2),
    "float32": Tolerance(atol=1e-4),
}


# rounds of one sweep: three are recommended for a baseline; a thousand is a typo, not a plan
MAX_ROUNDS = 1000

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class SweepConfig(Strict):
    name: str = ""
    description: str = ""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    axes: Axes | None = Field(None, description="the grid")
    grids: list[Axes] = Field([], description="more grids (same keys as axes), e.g. one per workload")
    backends: list[str] = Field(min_length=1)
    reference_backend: str | None = Field(None, description="speedups in tables are against this backend")
    include: list[Rule] = []
    exclude: list[Rule] = []
    timing: Timing = Timing()
    correctness: bool = True
    rounds: Integer = Field(1, ge=1, le=MAX_ROUNDS, description="measure the whole sweep this many times, round after "
                            "round, each round in fresh worker processes (--rounds overrides)")
    tolerances: dict[DType, Tolerance] = {}
    seed: Integer = Field(0, ge=0, lt=1 << 63)

    @field_validator("backends", mode="before")
    @classmethod
    def _listify(cls, v):
        return as_list(v)

    @model_validator(mode="after")
    def _some_grid(self):
        if self.axes is None and not self.grids:
            raise ValueError("give 'axes' (a grid) or 'grids' (a list of grids)")
        return self

    def all_axes(self) -> list[tuple[str, Axes]]:
        """Every grid with where it is written (``axes``, ``grids[1]``): the cases are their union."""
        first = [("axes", self.axes)] if self.axes is not None else []
        return first + [(f"grids[{i}]", a) for i, a in enumerate(self.grids)]

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # the name becomes the results directory results/runs/NAME-TIME: never a path
        if v and not RUN_NAME.fullmatch(v):
            raise ValueError("must be a plain name for the results directory: up to 100 letters, digits, "
                             "'.', '_', '+' or '-', starting with a letter or digit (no '/', no '..')")
        return v

    @model_validator(mode="after")
    def _reference_in_sweep(self):
        if self.reference_backend is not None and self.reference_backend not in self.backends:
            raise ValueError(f"reference_backend: {preview(self.reference_backend)} is not one of this sweep's "
                             f"backends ({', '.join(self.backends)})")
        return self

    def tolerance(self, dtype: str) -> Tolerance:
        return self.tolerances.get(dtype, DEFAULT_TOLERANCES[dtype])


class LoadedConfig(BaseModel):
    """A validated config with where it came from (recorded in results.json)."""

    path: str
    text: str
    sha256: str
    config: SweepConfig


def with_timing(loaded: LoadedConfig, **changes) -> LoadedConfig:
    """``loaded`` with some timing settings replaced (command-line overrides such as ``--cuda-graph``),
    validated like the file's. The recorded config text stays the file's."""
    cfg = loaded.config
    timing = Timing.model_validate({**cfg.timing.model_dump(), **changes})
    return loaded.model_copy(update={"config": cfg.model_copy(update={"timing": timing})})


def bundled_configs() -> dict[str, Path]:
    root = resources.files("flashbench.configs")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML file, or the name of a bundled config (``seqlen`` -> configs/seqlen.yaml).

    An existing file wins; a bare name (no ``.yaml``, no ``/``) then means a bundled config, even
    when a directory of that name happens to exist where the command runs.
    """
    if not name_or_path.strip():  # Path("") is the current directory
        raise ConfigError(["config: the name is empty: give a YAML file or a bundled config name"])
    p = Path(name_or_path)
    if p.is_file():
        return p
    looks_like_path = p.suffix in (".yaml", ".yml") or "/" in name_or_path
    bundled = bundled_configs()
    if not looks_like_path and name_or_path in bundled:
        return bundled[name_or_path]
    if p.exists():
        raise ConfigError([f"{name_or_path}: not a file"])
    if looks_like_path:
        raise ConfigError([f"{name_or_path}: no such file"])
    raise ConfigError([f"{name_or_path}: neither a file nor a bundled config{did_you_mean(name_or_path, bundled)} "
                       f"(bundled: {', '.join(sorted(bundled))})"])


def parse_config(text: str, source: str) -> SweepConfig:
    return validate_yaml(SweepConfig, text, source)


def load_config(name_or_path: str) -> LoadedConfig:
    path = resolve_config_path(name_or_path)
    text = read_yaml_file(path)
    cfg = parse_config(text, str(path))
    return LoadedConfig(path=str(path), text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), config=cfg)


__all__ = ["ConfigError", "SweepConfig", "LoadedConfig", "load_config", "parse_config", "bundled_configs",
           "resolve_config_path", "validate_yaml", "MODES", "DTYPES"]
