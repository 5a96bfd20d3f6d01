"""The value domains of a case's fields, defined once for every place that reads them from a user.

The YAML axes, the include/exclude rules, the thresholds' case patterns and ``--case`` all read
integers, dtypes, modes and booleans through these types, so a value one of them accepts the
others accept too, and every one of them rejects the same things (``true`` where a count belongs,
a dtype that does not exist).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from .case import DTYPES, MODES


class Strict(BaseModel):
    """A settings block: unknown keys are errors, never silently ignored; numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
MAX_BATCH = 1 << 16
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
