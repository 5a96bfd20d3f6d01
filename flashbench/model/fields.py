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
    """A settings block: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def _integer(v):
    # YAML reads `true` as a bool and Python's bool is an int: `seq_len: [true]` would be N = 1.
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


PositiveInt = Annotated[int, BeforeValidator(_integer), AfterValidator(_positive)]

DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def _dtype_name(v):
    return DTYPE_ALIASES.get(v.strip().lower(), v.strip().lower()) if isinstance(v, str) else v


DType = Annotated[Literal[DTYPES], BeforeValidator(_dtype_name)]  # type: ignore[valid-type]
Mode = Literal[MODES]  # type: ignore[valid-type]


def as_list(v):
    """Scalars are shorthand for one-element lists (``seq_len: 1024``)."""
    return v if isinstance(v, list) else [v]
