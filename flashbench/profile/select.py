"""Choosing what ``flashbench profile`` profiles: the cases of a config that match ``--case`` (the
filter grammar of :mod:`flashbench.model.filters`), at most ``MAX_CASES`` of them, and the
sequence lengths of ``--sweep-n``. Every problem is a :class:`~flashbench.model.yaml_input.ConfigError`
(exit code 2 in the CLI).
"""
from __future__ import annotations

from dataclasses import replace

from ..model.case import CASE_FIELDS, Case
from ..model.filters import Rule
from ..model.fields import MAX_SEQ_LEN
from ..model.yaml_input import ConfigError, did_you_mean, preview

MAX_CASES = 16


def select_cases(cases: list[Case], flt: Rule | None, limit: int = MAX_CASES, source: str = "config") -> list[Case]:
    """The cases that match; ConfigError when none does or when more than ``limit`` do."""
    chosen = [c for c in dict.fromkeys(cases) if flt is None or flt.matches(c)]
    if not chosen:
        avail = {k: sorted({getattr(c, k) for c in cases}, key=str) for k in CASE_FIELDS}
        listing = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in avail.items())
        raise ConfigError([f"--case: no case of {source} matches the filter (its cases have {listing})"])
    if len(chosen) > limit:
        raise ConfigError([f"{source}: {len(chosen)} cases selected; profile takes at most {limit} "
                           "(profiling is slow and its output is per case): narrow it with --case, e.g. "
                           "--case seq_len=4096,head_dim=128,causal=false,mode=fwd"])
    return chosen


def select_backends(names: list[str], flt: Rule | None) -> list[str]:
    """The backends of ``names`` a ``--case`` filter's ``backend`` key keeps (all without one); ConfigError
    naming a backend the profile does not run, with the close match."""
    wanted = (flt.allowed().get("backend") if flt is not None else None) or set()
    unknown = sorted(wanted - set(names))
    if unknown:
        raise ConfigError([f"--case: backend={b}: not a backend of this profile{did_you_mean(b, names)} "
                           f"(its backends: {', '.join(names)})" for b in unknown])
    return [b for b in names if not wanted or b in wanted]


def with_seq_len(case: Case, n: int) -> Case:
    """The case at sequence length n, for --sweep-n: a dense case with Nq = Nkv = n, a decode case with a cache
    of n keys (its new tokens kept). ConfigError for a case that has no one N to set: a packed batch, or decode
    caches of varied lengths (their lengths come from a distribution)."""
    if case.workload == "varlen" or case.lengths:
        raise ConfigError([f"--sweep-n: {case.label()}: its sequence lengths come from a distribution, so there is "
                           "no one N to sweep; choose dense or equal-length decode cases with --case"])
    if case.workload == "decode":
        return replace(case, seq_len_kv=n)
    return replace(case, seq_len_q=n, seq_len_kv=n)


def parse_n_list(text: str) -> list[int]:
    problems, out = [], []
    for part in [p for p in text.split(",") if p.strip()]:
        try:
            n = int(part)
            if n < 1:
                raise ValueError
        except ValueError:
            problems.append(f"--n: {preview(part.strip())} is not a positive integer")
            continue
        if n > MAX_SEQ_LEN:  # a config's seq_len maximum (a longer N would hang allocating its inputs)
            problems.append(f"--n: {n:,} is longer than a sequence may be ({MAX_SEQ_LEN:,})")
        else:
            out.append(n)
    if not out and not problems:
        problems.append("--n: expected a comma-separated list of sequence lengths, e.g. 1024,2048,4096,8192")
    if problems:
        raise ConfigError(problems)
    return sorted(set(out))
