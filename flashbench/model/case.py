"""Benchmark cases: one attention problem (shape, dtype, causal, mode, workload) and a case × backend task.

Workloads (the fields after ``mode``; their defaults are the dense case, so older results and code
that builds ``Case(b, h, hkv, nq, nkv, d, dtype, causal, mode)`` mean what they always meant):

- ``dense``: ``batch`` sequences of ``seq_len_q`` queries against ``seq_len_kv`` keys;
- ``decode``: ``seq_len_q`` (1..16) new tokens per sequence, causal among themselves and aligned to
  the end of the sequence's KV cache; the cache holds ``seq_len_kv`` keys per sequence, or lengths
  drawn from ``lengths`` (``seq_len_kv`` is then the longest it allows: the cache capacity), stored
  ``contiguous`` or ``paged`` in pages of ``page_size`` tokens;
- ``varlen``: sequences packed into one tensor (``cu_seqlens``), each attending to itself: lengths
  drawn from ``lengths`` until ``total_tokens`` tokens are filled (``batch`` is how many that took,
  ``seq_len_q = seq_len_kv`` the longest length allowed), or ``batch`` sequences of ``seq_len_q``.

``window_left``/``window_right`` are FlashAttention's sliding window for any workload (query i sees
key j iff i + (Nkv − Nq) − left ≤ j ≤ i + (Nkv − Nq) + right, −1 unbounded). ``total_tokens`` is
the batch's key/value tokens (Σ of the per-sequence key lengths): derived for dense and decode, the
token budget of a varlen batch with a length distribution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .lengths import parse_lengths, realise_budget, realise_count, short_lengths

_FIELD_TYPES = {"int": int, "str": str, "bool": bool}

MODES = ("fwd", "bwd", "fwd_bwd")
DTYPES = ("float16", "bfloat16", "float32")
WORKLOADS = ("dense", "decode", "varlen")
KV_LAYOUTS = ("contiguous", "paged")
MAX_DECODE_TOKENS = 16  # new tokens per sequence a decode case may have (more is a prefill)


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
    workload: str = "dense"
    window_left: int = -1
    window_right: int = -1
    kv_layout: str = "contiguous"
    page_size: int = 0              # tokens per page of a paged cache; 0 when not paged
    lengths: str = ""               # per-sequence length distribution (flashbench.model.lengths); "": all equal
    total_tokens: int = 0           # Σ key/value tokens over the batch: given for a varlen batch drawn from a
    #                                 distribution (its budget), derived for every other case

    @classmethod
    def budgeted_varlen(cls, lengths: str, total_tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: str,
                        causal: bool, mode: str, window_left: int = -1, window_right: int = -1) -> Case:
        """A varlen batch of ``total_tokens`` tokens whose lengths are drawn from ``lengths``: its batch is how many
        sequences fill the budget, its seq_len the longest the spec can give (the tables' bound)."""
        longest = parse_lengths(lengths).longest
        return cls(len(realise_budget(lengths, total_tokens)), heads, kv_heads, longest, longest, head_dim, dtype,
                   causal, mode, workload="varlen", window_left=window_left, window_right=window_right,
                   lengths=lengths, total_tokens=total_tokens)

    def __post_init__(self):
        if not self.budgeted:  # derived, also after dataclasses.replace() changed the shape
            object.__setattr__(self, "total_tokens", sum(self.sequence_lengths()[1]))

    @property
    def budgeted(self) -> bool:
        """A varlen batch whose lengths are drawn until ``total_tokens`` tokens are filled."""
        return self.workload == "varlen" and bool(self.lengths)

    @property
    def window(self) -> tuple[int, int]:
        return (self.window_left, self.window_right)

    @property
    def has_window(self) -> bool:
        return self.window != (-1, -1)

    @property
    def is_paged(self) -> bool:
        return self.kv_layout == "paged"

    def sequence_lengths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(query lengths, key/value lengths), one per sequence of the batch, realised from the case."""
        if self.budgeted:
            lens = realise_budget(self.lengths, self.total_tokens)
            return lens, lens
        kv = realise_count(self.lengths, self.batch) if self.lengths else (self.seq_len_kv,) * self.batch
        return (self.seq_len_q,) * len(kv), kv

    @property
    def full_caches(self) -> bool:
        """Decode: every sequence's cache holds ``seq_len_kv`` keys, its whole capacity, so a dense call over the
        cache attends to exactly them. With a length distribution the lengths drawn may all be equal and shorter (a
        batch of one draws one length): a dense call over the capacity would read keys past the sequence."""
        return all(n == self.seq_len_kv for n in self.sequence_lengths()[1])

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
        return f"B{self.batch} H{self.heads}{kv} N{n} D{self.head_dim} {self.dtype} {causal} {self.mode}{self.workload_label()}"

    def workload_label(self) -> str:
        return workload_label(self.as_dict())


def workload_label(values) -> str:
    """What sets a case apart from a dense one (" decode paged16 lengths=... window(4096,0)"; "" for
    a dense case), from its field values: a Case's dict or a results row (missing fields: defaults)."""
    get = values.get
    parts = [] if get("workload", "dense") == "dense" else [get("workload")]
    if get("kv_layout", "contiguous") == "paged":
        parts.append(f"paged{get('page_size')}")
    if get("lengths", ""):
        parts.append(f"lengths={short_lengths(get('lengths'))}")
    if get("workload") == "varlen":
        parts.append(f"T{get('total_tokens')}")
    left, right = get("window_left", -1), get("window_right", -1)
    if (left, right) != (-1, -1):
        parts.append(f"window({left},{right})")
    return "".join(f" {p}" for p in parts)


CASE_FIELDS = tuple(f.name for f in fields(Case))


@dataclass(frozen=True, order=True)
class Task:
    """One measurement: a case run by one backend."""

    case: Case
    backend: str

    def key(self) -> tuple:
        return (self.backend, *(getattr(self.case, f) for f in CASE_FIELDS))


TASK_KEY_FIELDS = ("backend", *CASE_FIELDS)
