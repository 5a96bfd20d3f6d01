"""Grid expansion: a validated config -> the list of cases and case × backend tasks.

Cross-field problems the schema cannot see (hidden not divisible by head_dim, tokens smaller
than seq_len, heads not a multiple of kv_heads, unknown backends in the list or the rules, a grid
too large or empty) are raised here as :class:`ConfigError`, one message per problem. Combinations
that make no case while others of the same values do are left out and named by
:func:`dropped_combinations` (``flashbench run --dry-run`` lists them).
"""
from __future__ import annotations

import itertools
import math

from .case import Case, Task
from .config import LoadedConfig, SweepConfig
from .fields import MAX_BATCH, MAX_HEADS
from .yaml_input import ConfigError, preview


def _heads_options(axes, head_dim: int) -> list[int]:
    if axes.heads is not None:
        return axes.heads
    return [h // head_dim for h in axes.hidden if h % head_dim == 0]


def _batch_options(axes, seq_len: int) -> list[int]:
    if axes.batch is not None:
        return axes.batch
    return [t // seq_len for t in axes.tokens if t >= seq_len]


# the most cases one grid may hold: a sweep of this many cases would take days; a grid past it is a
# mistyped list, and expanding it would hang before anything ran
MAX_CASES = 50_000


def _grid_size(a) -> int:
    lists = (a.seq_len, a.seq_len_kv or [0], a.head_dim, a.dtype, a.causal, a.mode, a.batch or a.tokens,
             a.heads or a.hidden, a.kv_heads or [0])
    return math.prod(len(x) for x in lists)


def _listing(pairs: list[str], limit: int = 4) -> str:
    return ", ".join(pairs[:limit]) + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def _check_axes(cfg: SweepConfig, source: str) -> list[str]:
    a = cfg.axes
    size = _grid_size(a)
    if size > MAX_CASES:  # checked first: the checks below walk the grid's pairs
        return [f"{source}: axes: the axes multiply to {size:,} cases, more than a sweep can hold "
                f"({MAX_CASES:,}): shorten the lists"]
    problems = []
    if a.tokens is not None:
        big = [f"tokens={t} seq_len={n} (batch {t // n:,})" for n in a.seq_len for t in a.tokens if t // n > MAX_BATCH]
        if big:
            problems.append(f"{source}: axes.tokens: batch = tokens // seq_len must be at most {MAX_BATCH:,}: "
                            f"{_listing(big)}")
    if a.hidden is not None:
        big = [f"hidden={h} head_dim={d} (heads {h // d:,})" for d in a.head_dim for h in a.hidden
               if h % d == 0 and h // d > MAX_HEADS]
        if big:
            problems.append(f"{source}: axes.hidden: heads = hidden // head_dim must be at most {MAX_HEADS:,}: "
                            f"{_listing(big)}")
    if a.hidden is not None:
        for d in a.head_dim:
            if not any(h % d == 0 for h in a.hidden):
                problems.append(f"{source}: axes.head_dim: {d} divides no value of axes.hidden {preview(a.hidden)}")
    if a.tokens is not None:
        for n in a.seq_len:
            if not any(t >= n for t in a.tokens):
                problems.append(f"{source}: axes.seq_len: {n} exceeds every value of axes.tokens {preview(a.tokens)} "
                                "(batch would be 0)")
    return problems


def dropped_combinations(cfg: SweepConfig) -> list[str]:
    """The combinations of the axes that make no case and are left out of the grid (a line per axis):
    head_dim not dividing hidden, tokens smaller than seq_len, heads not a multiple of kv_heads.
    An axis value that makes no case at all is an error instead (:func:`expand_cases`)."""
    a = cfg.axes
    if _grid_size(a) > MAX_CASES:
        return []
    notes = []
    if a.hidden is not None:
        bad = [f"hidden={h} head_dim={d}" for d in a.head_dim for h in a.hidden if h % d]
        if bad:
            notes.append(f"axes.hidden: left out where hidden is not a multiple of head_dim: {_listing(bad)}")
    if a.tokens is not None:
        bad = [f"tokens={t} seq_len={n}" for n in a.seq_len for t in a.tokens if t < n]
        if bad:
            notes.append(f"axes.tokens: left out where tokens < seq_len (batch would be 0): {_listing(bad)}")
    if a.kv_heads:
        heads = list(dict.fromkeys(h for d in a.head_dim for h in _heads_options(a, d)))
        bad = [f"heads={h} kv_heads={k}" for h in heads for k in a.kv_heads if h % k]
        if bad:
            notes.append(f"axes.kv_heads: left out where heads is not a multiple of kv_heads: {_listing(bad)}")
    return notes


def expand_cases(cfg: SweepConfig, source: str = "config") -> list[Case]:
    """Every case of the grid, after include rules (rules without a backend key)."""
    problems = _check_axes(cfg, source)
    if problems:
        raise ConfigError(problems)
    a = cfg.axes
    cases: list[Case] = []
    bad_gqa: set[tuple[int, int]] = set()
    for n, d, dtype, causal, mode in itertools.product(a.seq_len, a.head_dim, a.dtype, a.causal, a.mode):
        for n_kv in (a.seq_len_kv or [n]):
            for b in _batch_options(a, n):
                for h in _heads_options(a, d):
                    for h_kv in (a.kv_heads or [h]):
                        if h % h_kv:
                            bad_gqa.add((h, h_kv))
                            continue
                        cases.append(Case(b, h, h_kv, n, n_kv, d, dtype, causal, mode))
    if a.kv_heads and bad_gqa and not cases:
        pairs = _listing([f"heads={h} kv_heads={k}" for h, k in sorted(bad_gqa)])
        raise ConfigError([f"{source}: axes.kv_heads: heads must be a multiple of kv_heads, no valid pair ({pairs})"])
    case_rules = [r for r in cfg.include if "backend" not in r.keys()]
    if case_rules:
        cases = [c for c in cases if any(r.matches(c) for r in case_rules)]
    return list(dict.fromkeys(cases))  # stable de-duplication


def expand_tasks(cfg: SweepConfig, source: str = "config", backends: list[str] | None = None,
                 known_backends: set[str] | None = None) -> list[Task]:
    """Cases × backends, minus exclude rules, plus backend-specific include rules.

    ``backends`` overrides the config's list (the CLI's ``--backends``).
    """
    names = backends or cfg.backends
    if known_backends is not None:
        known = ', '.join(sorted(known_backends))
        problems = [f"{source}: backends: unknown backend {preview(b)} (known: {known})"
                    for b in names if b not in known_backends]
        problems += [f"{source}: {kind}[{i}].backend: unknown backend {preview(b)} (known: {known})"
                     for kind, rules in (("include", cfg.include), ("exclude", cfg.exclude))
                     for i, r in enumerate(rules) for b in (r.backend or []) if b not in known_backends]
        if problems:
            raise ConfigError(problems)
    cases = expand_cases(cfg, source)
    backend_includes = [r for r in cfg.include if "backend" in r.keys()]
    tasks = []
    for case in cases:
        for b in names:
            if backend_includes and any(r.backend and b in r.backend for r in backend_includes):
                # a backend named by an include rule runs only where one of its rules matches
                if not any(r.matches(case, b) for r in backend_includes if b in (r.backend or [])):
                    continue
            if any(r.matches(case, b) for r in cfg.exclude):
                continue
            tasks.append(Task(case, b))
    if not tasks:
        raise ConfigError([f"{source}: the grid is empty after include/exclude rules: nothing to run"])
    return tasks


def expand_loaded(loaded: LoadedConfig, backends: list[str] | None = None, known_backends: set[str] | None = None):
    return expand_tasks(loaded.config, loaded.path, backends, known_backends)
