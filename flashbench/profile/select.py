"""``--case`` filters: ``seq_len=4096,head_dim=128,causal=true,mode=fwd`` -> matching cases.

Keys are the case fields (``batch heads kv_heads seq_len_q seq_len_kv head_dim dtype causal
mode``) plus ``seq_len`` (matches both ``seq_len_q`` and ``seq_len_kv``: the usual square case)
and the short aliases ``n`` (= seq_len), ``b`` (= batch), ``h`` (= heads), ``d`` (= head_dim).
A value may list alternatives with ``|`` (``seq_len=1024|4096``). Every problem is reported as a
:class:`~flashbench.model.config.ConfigError` (exit code 2 in the CLI).
"""
from __future__ import annotations

from dataclasses import replace

from ..model.case import CASE_FIELDS, DTYPES, MODES, Case
from ..model.config import ConfigError

MAX_CASES = 16
INT_KEYS = ("batch", "heads", "kv_heads", "seq_len", "seq_len_q", "seq_len_kv", "head_dim")
ALIASES = {"n": "seq_len", "b": "batch", "h": "heads", "d": "head_dim", "seqlen": "seq_len"}
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
TRUE, FALSE = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off")
KEYS = tuple(sorted(set(CASE_FIELDS) | {"seq_len"}))


def _value(key: str, raw: str):
    v = raw.strip()
    if key in INT_KEYS:
        try:
            x = int(v)
        except ValueError:
            raise ValueError(f"{key}={raw!r}: expected a positive integer") from None
        if x < 1:
            raise ValueError(f"{key}={raw!r}: expected a positive integer")
        return x
    if key == "causal":
        if v.lower() in TRUE:
            return True
        if v.lower() in FALSE:
            return False
        raise ValueError(f"causal={raw!r}: expected true or false")
    if key == "dtype":
        d = DTYPE_ALIASES.get(v.lower(), v.lower())
        if d not in DTYPES:
            raise ValueError(f"dtype={raw!r}: expected one of {', '.join(DTYPES)} (or fp16, bf16, fp32)")
        return d
    if key == "mode":
        if v not in MODES:
            raise ValueError(f"mode={raw!r}: expected one of {', '.join(MODES)}")
        return v
    raise AssertionError(key)


def parse_case_filter(text: str | None) -> dict[str, set]:
    """``"k=v,k=v1|v2"`` -> {key: allowed values}. Raises ConfigError with every problem."""
    if text is None:
        return {}
    problems, out = [], {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            problems.append(f"--case: {part.strip()!r} is not KEY=VALUE (keys: {', '.join(KEYS)})")
            continue
        key, raw = (x.strip() for x in part.split("=", 1))
        key = ALIASES.get(key.lower(), key.lower())
        if key not in KEYS:
            problems.append(f"--case: unknown key {key!r} (keys: {', '.join(KEYS)})")
            continue
        values = set()
        for alt in raw.split("|"):
            try:
                values.add(_value(key, alt))
            except ValueError as e:
                problems.append(f"--case: {e}")
        if key in out:
            out[key] &= values
        else:
            out[key] = values
    if not out and not problems:
        problems.append("--case: empty filter (expected KEY=VALUE[,KEY=VALUE...], e.g. seq_len=4096,causal=false,mode=fwd)")
    if problems:
        raise ConfigError(problems)
    return out


def matches(case: Case, flt: dict[str, set]) -> bool:
    for key, allowed in flt.items():
        if key == "seq_len":
            if case.seq_len_q not in allowed or case.seq_len_kv not in allowed:
                return False
        elif getattr(case, key) not in allowed:
            return False
    return True


def select_cases(cases: list[Case], flt: dict[str, set], limit: int = MAX_CASES, source: str = "config") -> list[Case]:
    """The cases that match; ConfigError when none does or when more than ``limit`` do."""
    chosen = [c for c in dict.fromkeys(cases) if matches(c, flt)]
    if not chosen:
        avail = {k: sorted({getattr(c, k) for c in cases}, key=str) for k in CASE_FIELDS}
        listing = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in avail.items())
        raise ConfigError([f"--case: no case of {source} matches the filter (its cases have {listing})"])
    if len(chosen) > limit:
        raise ConfigError([f"{source}: {len(chosen)} cases selected; profile takes at most {limit} "
                           "(profiling is slow and its output is per case): narrow it with --case, e.g. "
                           "--case seq_len=4096,head_dim=128,causal=false,mode=fwd"])
    return chosen


def with_seq_len(case: Case, n: int) -> Case:
    """The case at sequence length n (Nq = Nkv = n): used by --sweep-n."""
    return replace(case, seq_len_q=n, seq_len_kv=n)


def parse_n_list(text: str) -> list[int]:
    problems, out = [], []
    for part in [p for p in text.split(",") if p.strip()]:
        try:
            n = int(part)
            if n < 1:
                raise ValueError
            out.append(n)
        except ValueError:
            problems.append(f"--n: {part.strip()!r} is not a positive integer")
    if not out and not problems:
        problems.append("--n: expected a comma-separated list of sequence lengths, e.g. 1024,2048,4096,8192")
    if problems:
        raise ConfigError(problems)
    return sorted(set(out))
