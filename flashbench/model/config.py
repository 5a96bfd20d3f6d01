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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .case import DTYPES, MODES  # noqa: F401  (re-exported)
from .fields import Batch, DType, HeadDim, Heads, Hidden, Integer, Mode, Number, SeqLen, Strict, Tokens, as_list
from .filters import Rule
from .yaml_input import ConfigError, preview, read_yaml_file, validate_yaml


class Axes(Strict):
    """The grid. Scalars are shorthand for one-element lists."""

    batch: list[Batch] | None = Field(None, description="batch sizes")
    tokens: list[Tokens] | None = Field(None, description="alternative to batch: batch = tokens // seq_len")
    heads: list[Heads] | None = Field(None, description="query heads")
    hidden: list[Hidden] | None = Field(None, description="alternative to heads: heads = hidden // head_dim")
    kv_heads: list[Heads] | None = Field(None, description="key/value heads (GQA/MQA); default = heads")
    seq_len: list[SeqLen]
    seq_len_kv: list[SeqLen] | None = Field(None, description="default = seq_len")
    head_dim: list[HeadDim]
    dtype: list[DType] = ["bfloat16"]
    causal: list[bool] = [False]
    mode: list[Mode] = ["fwd"]

    @field_validator("*", mode="before")
    @classmethod
    def _listify(cls, v):
        return None if v is None else as_list(v)

    @field_validator("*")
    @classmethod
    def _non_empty(cls, v):
        if v is not None and not v:
            raise ValueError("must list at least one value")
        return v

    @model_validator(mode="after")
    def _exclusive(self):
        if (self.batch is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'batch' or 'tokens'")
        if (self.heads is None) == (self.hidden is None):
            raise ValueError("give exactly one of 'heads' or 'hidden'")
        return self


class Timing(Strict):
    """How a call is timed: the one definition, read from the YAML and handed to the timer."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    # a minute of warmup or of sampling per call is past any useful measurement (and, paid per
    # backend, past the default per-task timeout of 600 s); samples are all kept in results.json
    warmup_ms: Number = Field(25.0, gt=0, le=60_000, description="time spent running the call before sampling")
    budget_ms: Number = Field(200.0, gt=0, le=60_000, description="target time spent sampling")
    min_samples: Integer = Field(10, ge=1, le=100_000)
    max_samples: Integer = Field(1000, ge=1, le=100_000)
    flush_l2: bool = Field(True, description="write a 256 MB buffer before every call (cold L2)")
    cuda_graph: bool = Field(False, description="time CUDA-graph replays (warm L2, labelled so)")

    @model_validator(mode="after")
    def _order(self):
        if self.max_samples < self.min_samples:
            raise ValueError("max_samples must be >= min_samples")
        return self


class Tolerance(Strict):
    atol: Number = Field(ge=0, le=1e6, description="absolute term added to the bound")
    factor: Number = Field(2.0, gt=0, le=1e6, description="multiple of PyTorch's own same-dtype error allowed")


DEFAULT_TOLERANCES = {
    "float16": Tolerance(atol=1e-2),
    "bfloat16": Tolerance(atol=2.5e-2),
    "float32": Tolerance(atol=1e-4),
}


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class SweepConfig(Strict):
    name: str = ""
    description: str = ""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    axes: Axes
    backends: list[str] = Field(min_length=1)
    reference_backend: str | None = Field(None, description="speedups in tables are against this backend")
    include: list[Rule] = []
    exclude: list[Rule] = []
    timing: Timing = Timing()
    correctness: bool = True
    tolerances: dict[DType, Tolerance] = {}
    seed: Integer = Field(0, ge=0, lt=1 << 63)

    @field_validator("backends", mode="before")
    @classmethod
    def _listify(cls, v):
        return as_list(v)

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


def bundled_configs() -> dict[str, Path]:
    root = resources.files("flashbench.configs")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML file, or the name of a bundled config (``seqlen`` -> configs/seqlen.yaml).

    An existing file wins; a bare name (no ``.yaml``, no ``/``) then means a bundled config, even
    when a directory of that name happens to exist where the command runs.
    """
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
    raise ConfigError([f"{name_or_path}: neither a file nor a bundled config (bundled: {', '.join(sorted(bundled))})"])


def parse_config(text: str, source: str) -> SweepConfig:
    return validate_yaml(SweepConfig, text, source)


def load_config(name_or_path: str) -> LoadedConfig:
    path = resolve_config_path(name_or_path)
    text = read_yaml_file(path)
    cfg = parse_config(text, str(path))
    return LoadedConfig(path=str(path), text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), config=cfg)


__all__ = ["ConfigError", "SweepConfig", "LoadedConfig", "load_config", "parse_config", "bundled_configs",
           "resolve_config_path", "validate_yaml", "MODES", "DTYPES"]
