"""Per-sequence lengths: how a decode batch's cache lengths or a varlen batch's sequence lengths vary.

A :class:`LengthSpec` is written in a config as a mapping and appears in results as its compact,
hashable description (the case field ``lengths``); either form reads back to the same spec::

    {dist: uniform, min: 1024, max: 32768, seed: 0}    uniform(1024..32768,seed=0)
    {dist: lognormal, min: 128, max: 8192, seed: 1}    lognormal(128..8192,seed=1)
    {dist: list, values: [128, 512, 8192]}             list(128,512,8192)

The lengths are realised deterministically from the description (Python's ``random.Random`` seeded
with ``seed``, whose integer draws are stable across platforms and Python versions):

- ``uniform``: integers drawn uniformly from [min, max];
- ``lognormal``: exp(N(mu, sigma)) rounded and clipped to [min, max], with the median at the
  geometric mean sqrt(min·max) and sigma = ln(max/min) / 4 (min and max lie two sigmas out);
- ``list``: the values in order, repeated as often as needed.

A decode batch draws one cache length per sequence (:func:`realise_count`); a varlen batch draws
lengths until a token budget is filled, the last sequence taking what is left of it
(:func:`realise_budget`).
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from .yaml_input import cut, preview

DISTRIBUTIONS = ("uniform", "lognormal", "list")

# The most sequences one batch may hold (``fields.MAX_BATCH`` is this value): a varlen budget that a
# distribution of short lengths would fill with more is refused, not drawn for minutes.
MAX_SEQUENCES = 1 << 16

_RANGE = re.compile(r"^(uniform|lognormal)\((\d+)\.\.(\d+),seed=(\d+)\)$")
_LIST = re.compile(r"^list\((\d+(?:,\d+)*)\)$")


@dataclass(frozen=True)
class LengthSpec:
    dist: str
    low: int = 0
    high: int = 0
    seed: int = 0
    values: tuple[int, ...] = ()

    def __post_init__(self):
        if self.dist not in DISTRIBUTIONS:
            raise ValueError(f"dist must be one of {', '.join(DISTRIBUTIONS)}, got {preview(self.dist)}")
        if self.dist == "list":
            if not self.values or any(v < 1 for v in self.values):
                raise ValueError("values must list at least one length, each a positive integer")
        else:
            if self.low < 1:
                raise ValueError(f"min must be a positive integer, got {self.low}")
            if self.high < self.low:
                raise ValueError(f"max ({self.high}) must be >= min ({self.low})")
            if self.seed < 0:
                raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def longest(self) -> int:
        """The longest length this spec can give (the cache capacity a decode case allocates)."""
        return max(self.values) if self.dist == "list" else self.high

    @property
    def shortest(self) -> int:
        """The shortest length this spec can give."""
        return min(self.values) if self.dist == "list" else self.low

    def describe(self) -> str:
        """The compact form stored in the ``lengths`` column (no spaces; parsed back by :func:`parse_lengths`)."""
        if self.dist == "list":
            return f"list({','.join(map(str, self.values))})"
        return f"{self.dist}({self.low}..{self.high},seed={self.seed})"

    def draws(self):
        """An endless, reproducible stream of lengths."""
        if self.dist == "list":
            while True:
                yield from self.values
        rng = random.Random(self.seed)
        if self.dist == "uniform":
            while True:
                yield rng.randint(self.low, self.high)
        mu = 0.5 * (math.log(self.low) + math.log(self.high))
        sigma = (math.log(self.high) - math.log(self.low)) / 4
        while True:
            yield min(self.high, max(self.low, round(math.exp(rng.gauss(mu, sigma)))))


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {preview(value)}")
    return value


def spec_from_mapping(m: dict) -> LengthSpec:
    """``{dist: uniform, min: .., max: .., seed: ..}`` or ``{dist: list, values: [..]}`` -> a spec."""
    m = dict(m)
    dist = m.pop("dist", None)
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"a length distribution needs dist: one of {', '.join(DISTRIBUTIONS)}")
    if dist == "list":
        values = m.pop("values", None)
        if not isinstance(values, list):
            raise ValueError("dist list needs values: a list of lengths")
        spec = LengthSpec("list", values=tuple(_integer(v, "values") for v in values))
    else:
        if "min" not in m or "max" not in m:
            raise ValueError(f"dist {dist} needs min and max")
        spec = LengthSpec(dist, _integer(m.pop("min"), "min"), _integer(m.pop("max"), "max"),
                          _integer(m.pop("seed", 0), "seed"))
    if m:
        raise ValueError(f"unknown key(s) {cut(', '.join(map(str, m)), 200)} in a {dist} distribution")
    return spec


def parse_lengths(text: str) -> LengthSpec:
    """The compact form (``uniform(1024..32768,seed=0)``, ``list(128,512)``; spaces ignored) -> a spec."""
    compact = re.sub(r"\s+", "", text)
    m = _RANGE.match(compact)
    if m:
        return LengthSpec(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
    m = _LIST.match(compact)
    if m:
        return LengthSpec("list", values=tuple(int(v) for v in m.group(1).split(",")))
    raise ValueError(f"{preview(text)} is not a length distribution (uniform(MIN..MAX,seed=S), "
                     "lognormal(MIN..MAX,seed=S) or list(N,N,...))")


def as_spec(value) -> LengthSpec:
    """A spec, its mapping form or its compact form -> a spec (ValueError otherwise)."""
    if isinstance(value, LengthSpec):
        return value
    if isinstance(value, dict):
        return spec_from_mapping(value)
    if isinstance(value, str):
        return parse_lengths(value)
    raise ValueError(f"expected a length distribution, got {preview(value)}")


MAX_LENGTHS_SHOWN = 64  # characters of a lengths column a label shows: a listed batch may hold 65,536 lengths


def short_lengths(lengths: str) -> str:
    """The ``lengths`` column as a label or a message shows it: whole when short; a long list as its first
    lengths, how many there are, and a digest of the whole (two lists that start alike stay two labels)."""
    if len(lengths) <= MAX_LENGTHS_SHOWN:
        return lengths
    values = lengths[lengths.index("(") + 1:].rstrip(")").split(",") if "(" in lengths else [lengths]
    head = cut(",".join(values[:4]), MAX_LENGTHS_SHOWN)  # a seed of a thousand digits is one "length" too
    digest = hashlib.sha256(lengths.encode()).hexdigest()[:8]
    return f"{cut(lengths.split('(')[0], 20)}({head},…; {len(values):,} lengths, #{digest})"


@lru_cache(maxsize=1024)
def realise_count(description: str, count: int) -> tuple[int, ...]:
    """``count`` lengths drawn from the distribution ``description`` (one per decode sequence)."""
    draws = parse_lengths(description).draws()
    return tuple(next(draws) for _ in range(count))


@lru_cache(maxsize=1024)
def realise_budget(description: str, tokens: int) -> tuple[int, ...]:
    """Lengths drawn until they hold ``tokens`` tokens; the last one takes what is left of the budget.
    ValueError past :data:`MAX_SEQUENCES` sequences (a budget of 2**32 tokens of length 1 would
    otherwise draw for an hour)."""
    if tokens < 1:
        raise ValueError(f"a varlen batch needs a positive token budget, got {tokens}")
    out, left = [], tokens
    for n in parse_lengths(description).draws():
        out.append(min(n, left))
        left -= out[-1]
        if left == 0:
            return tuple(out)
        if len(out) == MAX_SEQUENCES:
            raise ValueError(f"{short_lengths(description)} fills {tokens:,} tokens with more than "
                             f"{MAX_SEQUENCES:,} sequences (the most one batch may hold)")
    raise AssertionError("unreachable: draws() never ends")
