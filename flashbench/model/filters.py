"""The one case-filter grammar: include/exclude rules in a sweep's YAML, case patterns in a
thresholds file, and ``--case`` on the command line all mean the same thing.

A filter maps keys to allowed values; a case × backend matches when every key allows it. Keys are
``backend`` and the case fields (``batch heads kv_heads seq_len_q seq_len_kv head_dim dtype causal
mode workload window_left window_right kv_layout page_size lengths total_tokens``) plus ``seq_len``,
which is the query length (the grid's ``seq_len`` axis; ``seq_len_kv`` defaults to it). Values are
validated by the field types of :mod:`flashbench.model.fields` (dtype aliases such as ``bf16`` are
accepted; a length distribution may be written as a mapping or in its compact form).

In YAML a filter is a mapping whose values are a value or a list::

    exclude:
      - {backend: naive, seq_len: [8192, 16384]}

On the command line it is ``KEY=VALUE[|VALUE...]`` separated by commas, with the short key aliases
``n`` (seq_len), ``b`` (batch), ``h`` (heads), ``d`` (head_dim)::

    --case seq_len=4096,d=128,causal=true,mode=fwd
    --case workload=decode,kv_layout=paged,lengths=uniform(1024..32768,seed=0)

(commas inside parentheses belong to the value).
"""
from __future__ import annotations

from pydantic import ValidationError, field_validator

from .case import Case
import re

from .fields import (Batch, DType, HeadDim, Heads, KvLayout, LengthsDescription, Mode, PositiveInt, SeqLen,
                     ValueLists, WindowBound, Workload, as_list)
from .yaml_input import ConfigError, did_you_mean, error_message, preview

KEY_ALIASES = {"n": "seq_len", "b": "batch", "h": "heads", "d": "head_dim", "seqlen": "seq_len"}


class Rule(ValueLists):
    """A filter: every given key must match (a value or a list of values)."""

    backend: list[str] | None = None
    batch: list[Batch] | None = None
    heads: list[Heads] | None = None
    kv_heads: list[Heads] | None = None
    seq_len: list[SeqLen] | None = None
    seq_len_q: list[SeqLen] | None = None
    seq_len_kv: list[SeqLen] | None = None
    head_dim: list[HeadDim] | None = None
    dtype: list[DType] | None = None
    causal: list[bool] | None = None
    mode: list[Mode] | None = None
    workload: list[Workload] | None = None
    window_left: list[WindowBound] | None = None
    window_right: list[WindowBound] | None = None
    kv_layout: list[KvLayout] | None = None
    page_size: list[PositiveInt] | None = None
    lengths: list[LengthsDescription] | None = None
    total_tokens: list[PositiveInt] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _listify(cls, v):
        return None if v is None else as_list(v)

    def allowed(self) -> dict[str, set]:
        """The keys this rule sets, with their allowed values."""
        return {k: set(v) for k, v in self.model_dump(exclude_none=True).items()}

    def keys(self) -> set[str]:
        return set(self.model_dump(exclude_none=True))

    def matches(self, case: Case, backend: str | None = None) -> bool:
        """Whether the case (run by ``backend``; None: a rule about cases only) passes every key.
        A ``backend`` key never excludes when no backend is given."""
        values = case_values(case, backend)
        return all(key not in values or values[key] in allowed for key, allowed in self.allowed().items())


def case_values(case: Case, backend: str | None = None) -> dict:
    """The values a filter reads from a case: its fields, ``seq_len`` and the backend."""
    v = case.as_dict()
    v["seq_len"] = case.seq_len_q
    if backend is not None:
        v["backend"] = backend
    return v


def parse_case_option(text: str, option: str = "--case") -> Rule:
    """``"k=v,k=v1|v2"`` (command line) -> a :class:`Rule`; ConfigError with every problem."""
    problems: list[str] = []
    given: dict[str, list[list[str]]] = {}  # each key's value lists, one per time it is given
    for part in [p for p in re.split(r",(?![^(]*\))", text) if p.strip()]:
        if "=" not in part:
            problems.append(f"{option}: {preview(part.strip())} is not KEY=VALUE (keys: {', '.join(Rule.model_fields)})")
            continue
        key, value = (x.strip() for x in part.split("=", 1))
        key = KEY_ALIASES.get(key.lower(), key.lower())
        given.setdefault(key, []).append([x.strip() for x in value.split("|")])
    if not given and not problems:
        problems.append(f"{option}: empty filter (expected KEY=VALUE[,KEY=VALUE...], e.g. "
                        "seq_len=4096,causal=false,mode=fwd)")
    rule = _validated(given, option, problems)
    # a key given twice keeps the values both allow, compared as values (bf16 is bfloat16, 04096 is 4096)
    for key, lists in given.items():
        if rule is None or len(lists) < 2:
            continue
        each = [getattr(_validated({key: [x]}, option, []), key) for x in lists]  # each list, as values
        allowed = [v for v in getattr(rule, key) if all(v in values for values in each)]
        if not allowed:
            problems.append(f"{option}: {key} is given {len(lists)} times with no value in common "
                            f"({' and '.join(preview('|'.join(x)) for x in lists)}): the filter would match nothing")
        rule = Rule.model_validate({**rule.model_dump(exclude_none=True), key: allowed or None})
    if problems:
        raise ConfigError(problems)
    return rule


def _validated(given: dict[str, list[list[str]]], option: str, problems: list[str]) -> Rule | None:
    """The rule allowing every value given for each key (None when a key or value is wrong: ``problems``
    says which)."""
    try:
        return Rule.model_validate({k: [v for values in lists for v in values] for k, lists in given.items()})
    except ValidationError as e:
        keys = list(Rule.model_fields)
        for err in e.errors():
            key = str(err["loc"][0])
            if err["type"] == "extra_forbidden":
                problems.append(f"{option}: unknown key {preview(key)}{did_you_mean(key, keys + list(KEY_ALIASES))} "
                                f"(keys: {', '.join(keys)})")
            else:
                problems.append(f"{option}: {key}={preview(err.get('input'))}: {error_message(err)}")
        return None
