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
from collections import Counter

from .case import MAX_DECODE_TOKENS, Case, Task
from .config import Axes, LoadedConfig, SweepConfig
from .fields import MAX_BATCH, MAX_HEADS
from .filters import case_values
from .lengths import parse_lengths, realise_budget, short_lengths
from .yaml_input import ConfigError, did_you_mean, preview


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


def _grid_size(a: Axes) -> int:
    lists = (a.seq_len, a.seq_len_kv or [0], a.head_dim, a.dtype, a.causal, a.mode, a.batch or a.tokens,
             a.heads or a.hidden, a.kv_heads or [0], a.window or [0], a.kv_layout or [0], a.page_size or [0])
    return math.prod(len(x) for x in lists)


def _listing(pairs: list[str], limit: int = 4) -> str:
    return ", ".join(pairs[:limit]) + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def _is_distribution(v) -> bool:
    return isinstance(v, str)


def _shown(v) -> str:
    """A grid's length value as a message names it: a listed distribution may hold 65,536 lengths."""
    return short_lengths(v) if _is_distribution(v) else str(v)


def _shortest_cache(kv) -> int:
    """The shortest cache a decode grid's ``seq_len_kv`` value (a length or a distribution) gives."""
    return parse_lengths(kv).shortest if _is_distribution(kv) else kv


def _check_axes(a: Axes, where: str, source: str) -> list[str]:
    """Problems of one grid (``where``: "axes" or "grids[1]"), one line each."""
    size = _grid_size(a)
    if size > MAX_CASES:  # checked first: the checks below walk the grid's pairs
        return [f"{source}: {where}: the axes multiply to {size:,} cases, more than a sweep can hold "
                f"({MAX_CASES:,}): shorten the lists"]
    problems = []

    def say(field: str, text: str) -> None:
        problems.append(f"{source}: {where}.{field}: {text}")

    lengths = [n for n in a.seq_len if not _is_distribution(n)]
    if a.tokens is not None and a.workload != "decode":  # varlen too: its batch is how many sequences fill tokens
        big = [f"tokens={t} seq_len={n} (batch {t // n:,})" for n in lengths for t in a.tokens if t // n > MAX_BATCH]
        if big:
            say("tokens", f"batch = tokens // seq_len must be at most {MAX_BATCH:,}: {_listing(big)}")
    if a.tokens is not None and a.workload == "varlen":
        for n in a.seq_len:
            for t in a.tokens if _is_distribution(n) else []:
                try:
                    realise_budget(n, t)  # bounded: refuses a budget of more sequences than a batch holds
                except ValueError as e:
                    say("tokens", str(e))
    if a.hidden is not None:
        big = [f"hidden={h} head_dim={d} (heads {h // d:,})" for d in a.head_dim for h in a.hidden
               if h % d == 0 and h // d > MAX_HEADS]
        if big:
            say("hidden", f"heads = hidden // head_dim must be at most {MAX_HEADS:,}: {_listing(big)}")
        for d in a.head_dim:
            if not any(h % d == 0 for h in a.hidden):
                say("head_dim", f"{d} divides no value of {where}.hidden {preview(a.hidden)}")
    if a.tokens is not None:
        for n in lengths:
            if not any(t >= n for t in a.tokens):
                say("seq_len", f"{n} exceeds every value of {where}.tokens {preview(a.tokens)} (batch would be 0)")
    w = a.workload
    if w != "decode":
        for field in ("kv_layout", "page_size"):
            if getattr(a, field) is not None:
                say(field, f"{field} is for workload decode (this grid's workload is {w})")
    if w == "dense":
        for field in ("seq_len", "seq_len_kv"):
            for v in getattr(a, field) or []:
                if _is_distribution(v):
                    say(field, f"{_shown(v)} is a length distribution: distributions are for workload decode "
                               "(seq_len_kv) and varlen (seq_len)")
    elif w == "decode":
        for n in a.seq_len:
            if _is_distribution(n) or not 1 <= n <= MAX_DECODE_TOKENS:
                say("seq_len", f"decode takes 1 to {MAX_DECODE_TOKENS} new tokens per sequence, got {_shown(n)}")
        if a.seq_len_kv is None:
            say("seq_len_kv", "decode needs the cache length: a value or a length distribution")
        fewest = min([n for n in a.seq_len if not _is_distribution(n)], default=1)
        for v in a.seq_len_kv or []:
            if _shortest_cache(v) < fewest:  # with more new tokens the pair is left out (dropped_combinations)
                got = f"it draws lengths down to {_shortest_cache(v)}" if _is_distribution(v) else "it is shorter"
                say("seq_len_kv", f"{_shown(v)}: a decode cache holds its sequence's new tokens (seq_len) at its "
                                  f"end, so it must be at least {fewest} keys long (the fewest new tokens); {got}")
        for v in a.seq_len_kv or []:
            if _is_distribution(v) and v.startswith("list("):
                say("seq_len_kv", f"{_shown(v)}: decode takes a cache length or a uniform/lognormal distribution, "
                                  "not a list")
        if a.mode != ["fwd"]:
            say("mode", f"decode is forward only (mode: fwd), got {', '.join(a.mode)}")
        if False in a.causal:
            say("causal", "decode's new tokens are causal among themselves (causal: true)")
        layouts = a.kv_layout or ["contiguous"]
        if "paged" in layouts and a.page_size is None:
            say("page_size", "kv_layout paged needs page_size (tokens per page)")
        if "paged" not in layouts and a.page_size is not None:
            say("page_size", "page_size needs kv_layout: paged")
    elif w == "varlen" and a.seq_len_kv is not None:
        say("seq_len_kv", "varlen sequences attend to themselves: give seq_len only")
    if True in a.causal:
        for left, right in a.window or []:
            if right > 0:
                say("window", f"[{left}, {right}] with causal: true: a causal query sees no key to its right "
                              "(right must be 0 or -1)")
    return problems


def _head_pairs(a: Axes, d: int, bad_gqa: set) -> list[tuple[int, int]]:
    """(heads, kv_heads) pairs of the grid where heads is a multiple of kv_heads; the others go to bad_gqa."""
    pairs = []
    for h in _heads_options(a, d):
        for h_kv in (a.kv_heads or [h]):
            if h % h_kv:
                bad_gqa.add((h, h_kv))
            else:
                pairs.append((h, h_kv))
    return pairs


def _as_run(causal: bool, window) -> tuple[int, int]:
    """The window a case runs with: under causal masking a right reach of -1 is 0 (no key to the right is
    visible either way) and (-1, 0) is no window at all, so one attention is one case, measured once."""
    left, right = window
    if causal and right == -1 and left != -1:
        return left, 0
    if causal and (left, right) == (-1, 0):
        return -1, -1
    return left, right


def _grid_cases(a: Axes, bad_gqa: set) -> list[Case]:
    """The grid's cases: lengths, then batch (or token budget), then heads, then layout and window."""
    cases: list[Case] = []
    for n, d, dtype, causal, mode in itertools.product(a.seq_len, a.head_dim, a.dtype, a.causal, a.mode):
        heads = _head_pairs(a, d, bad_gqa)
        windows = list(dict.fromkeys(_as_run(causal, w) for w in (a.window or [(-1, -1)])))
        common = dict(head_dim=d, dtype=dtype, causal=causal, mode=mode)
        if a.workload == "decode":
            for kv, b, (h, h_kv) in itertools.product(a.seq_len_kv, a.batch, heads):
                if _shortest_cache(kv) < n:  # a cache shorter than its new tokens: left out and noted
                    continue
                lengths = kv if _is_distribution(kv) else ""
                capacity = parse_lengths(kv).longest if lengths else kv
                for layout in a.kv_layout or ["contiguous"]:
                    for page, (left, right) in itertools.product(a.page_size if layout == "paged" else [0], windows):
                        cases.append(Case(b, h, h_kv, n, capacity, workload="decode", kv_layout=layout, page_size=page,
                                          lengths=lengths, window_left=left, window_right=right, **common))
        elif a.workload == "varlen":
            for tokens, (h, h_kv), (left, right) in itertools.product(a.tokens, heads, windows):
                if _is_distribution(n):
                    cases.append(Case.budgeted_varlen(n, tokens, h, h_kv, window_left=left, window_right=right,
                                                      **common))
                elif tokens >= n:
                    cases.append(Case(tokens // n, h, h_kv, n, n, workload="varlen", window_left=left,
                                      window_right=right, **common))
        else:
            for n_kv, b, (h, h_kv), (left, right) in itertools.product(a.seq_len_kv or [n], _batch_options(a, n),
                                                                        heads, windows):
                cases.append(Case(b, h, h_kv, n, n_kv, window_left=left, window_right=right, **common))
    return cases


def dropped_combinations(cfg: SweepConfig) -> list[str]:
    """The combinations of the axes that make no case and are left out of the grid (a line per axis):
    head_dim not dividing hidden, tokens smaller than seq_len, heads not a multiple of kv_heads, a
    decode cache shorter than its new tokens; and those whose batch = tokens // seq_len holds fewer
    tokens than asked. An axis value that makes no case at all is an error instead (:func:`expand_cases`)."""
    notes = []
    for where, a in cfg.all_axes():
        if _grid_size(a) > MAX_CASES:
            continue
        if a.hidden is not None:
            bad = [f"hidden={h} head_dim={d}" for d in a.head_dim for h in a.hidden if h % d]
            if bad:
                notes.append(f"{where}.hidden: left out where hidden is not a multiple of head_dim: {_listing(bad)}")
        if a.tokens is not None:
            bad = [f"tokens={t} seq_len={n}" for n in a.seq_len if not _is_distribution(n) for t in a.tokens if t < n]
            if bad:
                notes.append(f"{where}.tokens: left out where tokens < seq_len (batch would be 0): {_listing(bad)}")
            # batch = tokens // seq_len: the tokens a case holds fall short of the budget where seq_len does
            # not divide it (the papers' grids never meet this; a grid of other lengths should know)
            short = [f"tokens={t} seq_len={n} (batch {t // n}: {t // n * n:,} tokens)" for n in a.seq_len
                     if not _is_distribution(n) for t in a.tokens if t >= n and t % n]
            if short:
                notes.append(f"{where}.tokens: batch = tokens // seq_len rounds down where seq_len does not divide "
                             f"tokens: {_listing(short)}")
        if a.workload == "decode" and a.seq_len_kv is not None:
            bad = [f"seq_len={n} seq_len_kv={_shown(kv)}" for n in a.seq_len for kv in a.seq_len_kv
                   if not _is_distribution(n) and _shortest_cache(kv) < n]
            if bad:
                notes.append(f"{where}.seq_len_kv: left out where a decode cache is shorter than its new tokens: "
                             f"{_listing(bad)}")
        if True in a.causal:
            moved = [f"[{w[0]}, {w[1]}] as {list(_as_run(True, w))}" for w in a.window or [] if _as_run(True, w) != tuple(w)]
            if moved:
                notes.append(f"{where}.window: with causal: true a right reach of -1 is 0 and [-1, 0] is no window, "
                             f"so these run as the same attention written the one way: {_listing(moved)}")
        if a.kv_heads:
            heads = list(dict.fromkeys(h for d in a.head_dim for h in _heads_options(a, d)))
            bad = [f"heads={h} kv_heads={k}" for h in heads for k in a.kv_heads if h % k]
            if bad:
                notes.append(f"{where}.kv_heads: left out where heads is not a multiple of kv_heads: {_listing(bad)}")
    return notes


def _all_cases(cfg: SweepConfig, source: str) -> list[Case]:
    """Every case of the grids, before any rule, each once (in grid order)."""
    problems = [p for where, a in cfg.all_axes() for p in _check_axes(a, where, source)]
    total = sum(_grid_size(a) for _, a in cfg.all_axes())
    if not problems and total > MAX_CASES:  # each grid within the limit, their union past it
        problems.append(f"{source}: grids: the grids multiply to {total:,} cases in all, more than a sweep can "
                        f"hold ({MAX_CASES:,}): shorten the lists or split the sweep")
    if problems:
        raise ConfigError(problems)
    cases: list[Case] = []
    for where, a in cfg.all_axes():
        bad_gqa: set[tuple[int, int]] = set()
        grid = _grid_cases(a, bad_gqa)
        if a.kv_heads and bad_gqa and not grid:
            pairs = _listing([f"heads={h} kv_heads={k}" for h, k in sorted(bad_gqa)])
            raise ConfigError([f"{source}: {where}.kv_heads: heads must be a multiple of kv_heads, no valid pair ({pairs})"])
        cases += grid
    return list(dict.fromkeys(cases))  # stable de-duplication


def expand_cases(cfg: SweepConfig, source: str = "config") -> list[Case]:
    """Every case of the grids, after include rules (rules without a backend key)."""
    cases = _all_cases(cfg, source)
    case_rules = [r for r in cfg.include if "backend" not in r.keys()]
    if case_rules:
        cases = [c for c in cases if any(r.matches(c) for r in case_rules)]
    return cases


def _yaml_text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)  # causal: true, as the rule was written


def unmatched_rules(cfg: SweepConfig, source: str = "config") -> list[str]:
    """The include/exclude rules that match no case × backend of the grids (a line each): a value the grid
    does not hold (``seq_len: 1638`` for 16384) or a backend the config does not list leaves the sweep as
    if the rule were not written. Read against the config's own grid and backends (``--backends`` may
    leave a rule's backend out on purpose)."""
    values = [case_values(c) for c in _all_cases(cfg, source)]
    notes = []
    for kind, rules in (("include", cfg.include), ("exclude", cfg.exclude)):
        for i, rule in enumerate(rules):
            allowed = rule.allowed()
            named = allowed.pop("backend", None)
            if named is not None and not named & set(cfg.backends):
                notes.append(f"{kind}[{i}]: matches nothing: this config runs none of its backends "
                             f"({', '.join(sorted(named))})")
            elif not any(all(v[k] in ok for k, ok in allowed.items()) for v in values):
                notes.append(f"{kind}[{i}]: matches no case of the grid ("
                             f"{', '.join(f'{k}: {_listing(sorted(map(_yaml_text, ok)))}' for k, ok in allowed.items())})")
    return notes


def expand_tasks(cfg: SweepConfig, source: str = "config", backends: list[str] | None = None,
                 known_backends: set[str] | None = None) -> list[Task]:
    """Cases × backends, minus exclude rules, plus backend-specific include rules.

    ``backends`` overrides the config's list (the CLI's ``--backends``).
    """
    names = backends or cfg.backends
    twice = [b for b, n in Counter(names).items() if n > 1]
    if twice:  # each task's rows would be merged as rounds of one row
        raise ConfigError([f"{source}: backends: {', '.join(preview(b) for b in twice[:4])} listed more than once"])
    if known_backends is not None:
        known = ', '.join(sorted(known_backends))
        problems = [f"{source}: backends: unknown backend {preview(b)}{did_you_mean(b, known_backends)} "
                    f"(known: {known})" for b in names if b not in known_backends]
        problems += [f"{source}: {kind}[{i}].backend: unknown backend {preview(b)}{did_you_mean(b, known_backends)} "
                     f"(known: {known})"
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
