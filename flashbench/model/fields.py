"""The value domains of a case's fields, defined once for every place that reads them from a user.

The YAML axes, the include/exclude rules, the thresholds' case patterns and ``--case`` all read
integers, dtypes, modes and booleans through these types, so a value one of them accepts the
others accept too, and every one of them rejects the same things (``true`` where a count belongs,
a dtype that does not exist).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, field_validator

from .case import DTYPES, KV_LAYOUTS, MODES, WORKLOADS
from .lengths import MAX_SEQUENCES, as_spec


class Strict(BaseModel):
    """A settings block: unknown keys are errors, never silently ignored; numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ValueLists(Strict):
    """A block whose every key holds a list of values (a grid's axes, a rule's keys): a key given with an empty
    list is an error, since it would allow nothing (an exclude rule would silently exclude nothing)."""

    @field_validator("*")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must list at least one value")
        return v


def _not_bool(v):
    # YAML reads `true` as a bool and Python's bool is an int: `seq_len: [true]` would be N = 1,
    # `warmup_ms: true` 1 ms
    if isinstance(v, bool):
        raise ValueError("expected a number, not a boolean")
    return v


def _integer(v):
    # Digits in a string are taken (the command line's values are strings).
    if isinstance(v, bool):
        raise ValueError("expected a positive integer, not a boolean")
    if isinstance(v, str):
        if not v.strip().isdigit():
            raise ValueError("expected a positive integer")
        return int(v)
    return v


def _positive(v: int) -> int:
    if v < 1:
        raise ValueError("must be a positive integer")
    return v


Number = Annotated[float, BeforeValidator(_not_bool)]
Integer = Annotated[int, BeforeValidator(_not_bool)]
PositiveInt = Annotated[int, BeforeValidator(_integer), AfterValidator(_positive)]

# The largest value of each case field (and grid axis) flashbench accepts. Each is far past what one
# attention call on any GPU can hold, and together they keep every input's size in bytes under 2**63
# (B·H·N·D <= 2**60 elements), so a mistyped value is a config error, not a row of C++ errors from
# an overflowing shape.
MAX_BATCH = MAX_SEQUENCES
MAX_HEADS = 1 << 10
MAX_SEQ_LEN = 1 << 24
MAX_HEAD_DIM = 1 << 10
MAX_TOKENS = 1 << 32     # batch = tokens // seq_len must still be at most MAX_BATCH (checked by the grid)
MAX_HIDDEN = 1 << 22     # heads = hidden // head_dim must still be at most MAX_HEADS (checked by the grid)


def _at_most(limit: int):
    def check(v: int) -> int:
        if v > limit:
            raise ValueError(f"must be at most {limit:,}")
        return v
    return check


def bounded_int(limit: int):
    """A positive integer of at most ``limit`` (booleans refused)."""
    return Annotated[int, BeforeValidator(_integer), AfterValidator(_positive), AfterValidator(_at_most(limit))]


Batch = bounded_int(MAX_BATCH)
Heads = bounded_int(MAX_HEADS)
SeqLen = bounded_int(MAX_SEQ_LEN)
HeadDim = bounded_int(MAX_HEAD_DIM)
Tokens = bounded_int(MAX_TOKENS)
Hidden = bounded_int(MAX_HIDDEN)

DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def _dtype_name(v):
    return DTYPE_ALIASES.get(v.strip().lower(), v.strip().lower()) if isinstance(v, str) else v


DType = Annotated[Literal[DTYPES], BeforeValidator(_dtype_name)]  # type: ignore[valid-type]
Mode = Literal[MODES]  # type: ignore[valid-type]


def as_list(v):
    """Scalars are shorthand for one-element lists (``seq_len: 1024``)."""
    return v if isinstance(v, list) else [v]


Workload = Literal[WORKLOADS]  # type: ignore[valid-type]
KvLayout = Literal[KV_LAYOUTS]  # type: ignore[valid-type]


def _window_bound(v):
    v = -1 if isinstance(v, str) and v.strip() == "-1" else _integer(v)
    if not isinstance(v, int) or v < -1:
        raise ValueError("a window bound is -1 (unbounded) or a number of keys >= 0")
    return _at_most(MAX_SEQ_LEN)(v)  # a reach past the longest sequence is -1 mistyped (and overflows kernels)


WindowBound = Annotated[int, BeforeValidator(_window_bound)]


def _window(v):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError("a window is [left, right] (-1: unbounded)")
    return tuple(_window_bound(b) for b in v)


Window = Annotated[tuple[int, int], BeforeValidator(_window)]


def windows(v):
    """``window: [4096, 0]`` is one window; ``window: [[-1, -1], [4096, 0]]`` lists several."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(w, (list, tuple)) for w in v):
        return list(v)
    return [v]


def _length(v):
    # a number of tokens, or a per-sequence length distribution: its mapping, its compact form, or a
    # plain list of lengths (``seq_len: [[128, 512, 8192]]`` is one list, ``[128, 512]`` two lengths)
    if isinstance(v, list):
        v = {"dist": "list", "values": v}
    if isinstance(v, dict) or (isinstance(v, str) and not v.strip().isdigit()):
        try:
            spec = as_spec(v)
        except ValueError as e:
            if isinstance(v, dict):
                raise
            raise ValueError("expected a positive integer or a length distribution such as "
                             "uniform(1024..32768,seed=0)") from e
        # a distribution's lengths obey the same maximum as a plain seq_len (its longest is the cache
        # a decode case allocates)
        if spec.longest > MAX_SEQ_LEN:
            raise ValueError(f"a length distribution's longest length must be at most {MAX_SEQ_LEN:,} "
                             f"(got {spec.longest:,})")
        return spec.describe()
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, (int, str)):
        raise ValueError("expected a positive integer or a length distribution")
    return _at_most(MAX_SEQ_LEN)(_positive(_integer(v)))


Length = Annotated[int | str, BeforeValidator(_length)]
"""A sequence length: a positive integer, or a length distribution in its compact form
(:mod:`flashbench.model.lengths`: a mapping ``{dist: uniform, min: .., max: .., seed: ..}`` is read to
``uniform(MIN..MAX,seed=S)``)."""


LengthsDescription = Annotated[str, BeforeValidator(lambda v: "" if v == "" else as_spec(v).describe())]
"""The ``lengths`` case field in a filter: a distribution in either form, or "" (equal lengths)."""
