"""User input in YAML -> validated pydantic models, with every problem as one readable line.

:class:`ConfigError` carries one message per problem ("source: field.path: what is wrong"); the CLI
turns it into exit code 2. Sweep configs and thresholds files are both read through
:func:`read_yaml_file` and :func:`validate_yaml`.

A config is a few kilobytes written by a person, so the reader refuses what no person writes and
what would make validation or its messages unbounded: files over :data:`MAX_YAML_BYTES`, more than
:data:`MAX_ALIASES` aliases, a document that expands (aliases followed) to more than
:data:`MAX_NODES` nodes ("billion laughs"), nesting deeper than :data:`MAX_DEPTH`, recursive
aliases, and keys given twice in one mapping (YAML would silently keep the last). Messages echo
input only through :func:`preview`, and a :class:`ConfigError` lists at most :data:`MAX_PROBLEMS`.
"""
from __future__ import annotations

import difflib
import re
import reprlib
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

MAX_YAML_BYTES = 1 << 20   # 1 MiB: the bundled configs are a few KiB
MAX_ALIASES = 100
MAX_NODES = 100_000        # nodes of the document with every alias expanded
MAX_DEPTH = 32             # nested mappings/lists
MAX_PROBLEMS = 10          # lines one error lists; the rest are counted


class ConfigError(Exception):
    """A config (or other user input) is invalid; ``problems`` holds one message per problem
    (at most :data:`MAX_PROBLEMS`, then a line counting the others)."""

    def __init__(self, problems: list[str]):
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"… and {len(problems) - MAX_PROBLEMS} more problems"]
        self.problems = problems
        super().__init__("\n".join(problems))


PREVIEW_CHARS = 60
KEY_CHARS = 40  # a key echoed in a field path

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 6, 6, 4, 6
_repr.maxstring = _repr.maxlong = _repr.maxother = PREVIEW_CHARS


def cut(text, limit: int) -> str:
    """``text`` (made a str) of at most ``limit`` characters, cut with "…": every bounded text of flashbench."""
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def preview(value) -> str:
    """A value as the user wrote it, cut short: messages never echo unbounded input (the repr
    itself is bounded, so a deeply nested or aliased value costs no more than a short one)."""
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    return cut(text, PREVIEW_CHARS)


# pydantic's names for the schema it went through (a union's branch, a validator), not the user's keys
_SCHEMA_STEP = re.compile(r"^(function-\w+|literal|list|dict|set|tuple|union|tagged-union|nullable|chain|"
                          r"lax-or-strict|json-or-python|definition-ref)\[|^(int|bool|float|str|\[key\])$")


def _format_loc(loc: tuple) -> str:
    parts: list[str] = []
    for x in loc:
        if isinstance(x, int):
            parts[-1:] = [f"{parts[-1]}[{x}]"] if parts else [f"[{x}]"]
        elif _SCHEMA_STEP.match(str(x)) or x in ("function-after", "function-before"):
            continue
        else:
            parts.append(cut(str(x), KEY_CHARS))
    return ".".join(parts) or "(top level)"


def did_you_mean(word, choices) -> str:
    """": did you mean 'x'?" when one of ``choices`` is close to ``word`` (a typo), else ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.8)
    return f": did you mean {close[0]!r}?" if close else ""


def _unwrap(tp):
    """The model or container inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = next((a for a in inner if typing.get_origin(a) in (list, dict) or
                       (isinstance(a, type) and issubclass(a, BaseModel))), inner[0] if inner else None)
        else:
            return tp


def _user_path(loc: tuple) -> list:
    return [x for x in loc if isinstance(x, int) or not _SCHEMA_STEP.match(str(x))]


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys ``model`` takes in the mapping where ``loc`` (the path of an unknown key) ends."""
    tp = model
    for part in _user_path(loc)[:-1]:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(part, int) and origin is list:
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _given_keys(data, loc: tuple) -> set:
    """The keys written in the mapping where ``loc`` ends (a key already there is no suggestion)."""
    for part in _user_path(loc)[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return set()
    return set(data) if isinstance(data, dict) else set()


def _suggestion(model, data, loc: tuple) -> str:
    """": did you mean 'x'?" for an unknown key at ``loc`` that is a typo of a key the model takes there."""
    if model is None or not loc:
        return ""
    return did_you_mean(loc[-1], [k for k in _keys_at(model, loc) if k not in _given_keys(data, loc)])


def error_message(err: dict) -> str:
    """pydantic's wording for one error, in flashbench's words where they read better."""
    kind = err["type"]
    if kind == "literal_error":
        choices = [c.strip(" '\"") for c in err["ctx"]["expected"].replace(" or ", ", ").split(",")]
        return f"expected one of {', '.join(choices)}"
    if kind in ("bool_parsing", "bool_type"):
        return "expected true or false"
    if kind == "finite_number":
        return "expected a finite number"
    bounds = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
              "less_than_equal": ("le", "<=")}
    if kind in bounds:
        key, op = bounds[kind]
        limit = err["ctx"][key]
        return f"must be {op} {limit:,}" if isinstance(limit, int) else f"must be {op} {limit:g}"
    return err["msg"].removeprefix("Value error, ")


def validation_problems(e: ValidationError, model: type[BaseModel] | None = None, data=None) -> list[str]:
    """One "field.path: message (got value)" line per pydantic error. The value is echoed (as a
    short preview) only where it says something the path does not: never a whole mapping (a
    cross-field error's input), never a key the path already names. An unknown key gets the key of
    ``model`` it is a typo of, if any (and if ``data``, the input, does not hold that key already)."""
    problems = []
    for err in e.errors():
        msg = error_message(err)
        if err["type"] == "invalid_key":  # a key YAML read as a number, true or a date: pydantic's path showed
            # `true: 1` as "[1]" (a list index); the key as written is named instead, as any unknown key is
            parent = _format_loc(err["loc"][:-1]) if err["loc"][:-1] else ""
            problems.append(f"{parent + '.' if parent else ''}{preview(err['input'])}: unknown key (not a flashbench "
                            "setting; YAML reads it as a value, not a name)")
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a flashbench setting)" + _suggestion(model, data, err["loc"])
        elif "[key]" in err["loc"]:
            msg = f"not a valid key: {msg}"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {preview(err['input'])})"
        # a whole-document check (no field path) names its fields in its message
        problems.append(f"{_format_loc(err['loc'])}: {msg}" if err["loc"] else msg)
    return problems


class _Refused(Exception):
    """The YAML is refused before it is built: too large, too deep, aliased too much, a key twice."""

    def __init__(self, message: str, mark=None):
        self.message, self.mark = message, mark
        super().__init__(message)


def _at(mark) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on aliases and depth, and duplicate keys refused."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name): not a flashbench config",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep: not a flashbench config",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise _Refused(f"key {preview(key_node.value)} is given twice in one mapping (first on line "
                                   f"{seen[key].line + 1}): YAML would silently keep the last one",
                                   key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _check_expansion(root) -> None:
    """Refuse a document that, with every alias followed, has more than MAX_NODES nodes or a cycle.
    Iterative, with each shared node's size computed once: linear in the written document."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > MAX_NODES:
                raise _Refused(f"expands to more than {MAX_NODES:,} values once its aliases are followed: "
                               "not a flashbench config", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused("an alias refers to a value that contains it (a recursive alias)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def load_yaml(text: str, source: str):
    """YAML text -> Python data, within the limits above; ConfigError (one line) otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError([f"{source}: {len(text):,} characters: larger than a config can be "
                           f"({MAX_YAML_BYTES:,} at most)"])
    loader = None
    try:
        loader = _BoundedLoader(text)  # PyYAML's reader refuses control characters (a NUL) here already
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError([f"{source}: refused{_at(e.mark)}: {e.message}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line (a ReaderError has several)
        raise ConfigError([f"{source}: not valid YAML{_at(mark)}: {cut(problem, 200)}"]) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError([f"{source}: not a valid value: {cut(str(e), 200)}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path) -> str:
    """A YAML file's text; ConfigError when it cannot be read or is larger than a config can be."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError([f"{path}: {size:,} bytes: larger than a config can be ({MAX_YAML_BYTES:,} at most)"])
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {cut(str(e), 200)}"]) from None


# what a YAML reader calls the top level it found, not Python's names for it
YAML_TYPE_NAMES = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}


def validate_yaml(model: type[BaseModel], text: str, source: str):
    """YAML text -> a validated ``model``; every problem becomes one "source: field.path: message" line."""
    data = load_yaml(text, source)
    if data is None:  # an empty file, or comments only
        raise ConfigError([f"{source}: the file holds no settings (it is empty or only comments)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of settings at the top level, got "
                           f"{YAML_TYPE_NAMES.get(type(data), type(data).__name__)}"])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"{source}: {p}" for p in validation_problems(e, model, data)]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply to validate"]) from None
