"""Helpers shared by the CLI commands: consoles, error exits, output formats."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_ENV = 0, 1, 2, 3

def _piped_width() -> int:
    """Piped output has no terminal to fit: $COLUMNS when set, else a wide 200 columns."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and 20 <= int(columns) <= 10_000 else 200


# results go to stdout, messages and progress to stderr; piped output gets a fixed width and no colour codes
out = Console() if sys.stdout.isatty() else Console(width=_piped_width(), no_color=True, highlight=False)
# a message to a log (stderr not a terminal) stays one line, as a log line should: Rich would break it
# at 80 columns, in the middle of a path or of the command it names
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, soft_wrap=True)


MAX_ERROR_LINES = 12
MAX_LINE_CHARS = 1000  # a line quoting a path or a value of a broken file stays readable


def _shorten(line: str) -> str:
    # the head names what is wrong, the tail often says why ("...: File exists"): keep both
    if len(line) <= MAX_LINE_CHARS:
        return line
    return f"{line[:MAX_LINE_CHARS * 2 // 3]} … {line[-MAX_LINE_CHARS // 3:]}"


def fail(message: str | list[str], code: int = EXIT_USAGE) -> "typer.Exit":
    """Print each problem as an "error:" line and exit with ``code``. The library bounds its messages;
    this bounds them once more (a line, and the number of lines), so no input floods the terminal."""
    lines = [message] if isinstance(message, str) else list(message)
    if len(lines) > MAX_ERROR_LINES:
        lines = lines[:MAX_ERROR_LINES - 1] + [f"… and {len(lines) - MAX_ERROR_LINES + 1} more"]
    for line in lines:
        err.print(f"[bold red]error:[/] {escape(_shorten(str(line)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Turn the library's user-input errors into clean messages and exit code 2. A path the user
    gave that the file system refuses (OSError: a name too long, a file where a directory belongs)
    is one too: a line naming it, not a traceback."""
    from ..model.yaml_input import ConfigError
    from ..results.files import ResultsError, os_error_text

    try:
        yield
    except ConfigError as e:
        fail(e.problems)
    except ResultsError as e:
        fail(str(e))
    except OSError as e:
        fail(os_error_text(e))


def print_skips_and_failures(df) -> None:
    """Under a run's or a profile's tables: skips grouped by backend and reason (a line each, with a
    count), then each failure on its line."""
    from ..report.format import failure_lines, skipped_summary

    skips = skipped_summary(df)
    if skips:
        out.print(f"[dim]skipped ({int((df['status'] == 'skipped').sum())}):[/]")
        for line in skips:
            out.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True)
    for line in failure_lines(df):
        out.print(f"[red]{escape(line)}[/]", highlight=False, soft_wrap=True)


def print_clock_gaps(df, reference: str | None) -> None:
    """Under a run's tables: the cases where a backend ran at an SM clock far from the reference backend's."""
    from ..analysis.clocks import GAP, clock_gaps
    from ..report.comparison_tables import clock_gap_note

    if not reference:
        return
    note = clock_gap_note(*clock_gaps(df, reference), reference, GAP)
    if note:
        # prose: wrapped to a terminal's width like the table above it; one line on a pipe, for grep
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=not out.is_terminal)


def write_machine(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def write_json(obj) -> None:
    """A JSON document on stdout, strict (no NaN or Infinity literals: null), for ``--format json``."""
    from ..report.format import strict_json

    write_machine(strict_json(obj))


def print_line(text: str) -> None:
    """One line of plain text on stdout (a path, a command to copy), never broken by Rich."""
    out.print(escape(text), highlight=False, soft_wrap=True)


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    return items or None


def backends_option(value: str | None) -> list[str] | None:
    """``--backends a,b``: None when not given; given but naming nothing (``-b ,``) is an error, not
    "every backend of the config"."""
    from ..model.yaml_input import preview

    names = split_list(value)
    if value is not None and names is None:
        fail(f"--backends: {preview(value)} names no backend (give e.g. -b naive,sdpa)")
    return names
