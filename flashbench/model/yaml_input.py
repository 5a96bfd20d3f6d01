"""User input in YAML -> validated pydantic models, with every problem as one readable line.

:class:`ConfigError` carries one message per problem ("source: field.path: what is wrong"); the CLI
turns it into exit code 2. Sweep configs and thresholds files are both read through
:func:`validate_yaml`.
"""
from __future__ import annotations

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A config (or other user input) is invalid; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _format_loc(loc: tuple) -> str:
    parts: list[str] = []
    for x in loc:
        if isinstance(x, int):
            parts[-1:] = [f"{parts[-1]}[{x}]"] if parts else [f"[{x}]"]
        elif x in ("function-after", "function-before") or str(x).startswith(("function-", "literal[", "list[", "int", "bool")):
            continue
        else:
            parts.append(str(x))
    return ".".join(parts) or "(top level)"


PREVIEW_CHARS = 60


def preview(value) -> str:
    """A value as the user wrote it, cut short: messages never echo unbounded input."""
    text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def error_message(err: dict) -> str:
    """pydantic's wording for one error, in flashbench's words where they read better."""
    kind = err["type"]
    if kind == "literal_error":
        choices = [c.strip(" '\"") for c in err["ctx"]["expected"].replace(" or ", ", ").split(",")]
        return f"expected one of {', '.join(choices)}"
    if kind in ("bool_parsing", "bool_type"):
        return "expected true or false"
    return err["msg"].removeprefix("Value error, ")


def validation_problems(e: ValidationError) -> list[str]:
    """One "field.path: message (got value)" line per pydantic error."""
    problems = []
    for err in e.errors():
        msg = error_message(err)
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a flashbench setting)"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (got {preview(err['input'])})"
        problems.append(f"{_format_loc(err['loc'])}: {msg}")
    return problems


def validate_yaml(model: type[BaseModel], text: str, source: str):
    """YAML text -> a validated ``model``; every problem becomes one "source: field.path: message" line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{source}: not valid YAML{where}: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"{source}: {p}" for p in validation_problems(e)]) from None
