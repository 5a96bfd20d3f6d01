"""Benchmark cases: one attention problem (shape, dtype, causal, mode) and a case × backend task."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

_FIELD_TYPES = {"int": int, "str": str, "bool": bool}

MODES = ("fwd", "bwd", "fwd_bwd")
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True, order=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    seq_len_q: int
    seq_len_kv: int
    head_dim: int
    dtype: str
    causal: bool
    mode: str

    @property
    def has_backward(self) -> bool:
        return self.mode in ("bwd", "fwd_bwd")

    @property
    def is_gqa(self) -> bool:
        return self.kv_heads != self.heads

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_values(cls, values) -> "Case":
        """The case whose fields are read from a mapping (a frame row, a JSON record): each value is
        converted to its field's type, so numpy scalars and JSON numbers give equal, hashable cases."""
        return cls(**{f.name: _FIELD_TYPES[f.type](values[f.name]) for f in fields(cls)})

    def label(self) -> str:
        causal = "causal" if self.causal else "full"
        kv = f"/{self.kv_heads}kv" if self.is_gqa else ""
        n = f"{self.seq_len_q}" if self.seq_len_q == self.seq_len_kv else f"{self.seq_len_q}x{self.seq_len_kv}"
        return f"B{self.batch} H{self.heads}{kv} N{n} D{self.head_dim} {self.dtype} {causal} {self.mode}"


CASE_FIELDS = tuple(f.name for f in fields(Case))


@dataclass(frozen=True, order=True)
class Task:
    """One measurement: a case run by one backend."""

    case: Case
    backend: str

    def key(self) -> tuple:
        return (self.backend, *(getattr(self.case, f) for f in CASE_FIELDS))


TASK_KEY_FIELDS = ("backend", *CASE_FIELDS)
