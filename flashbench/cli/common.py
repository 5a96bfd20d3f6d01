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
err = Console(stderr=True)


def fail(message: str | list[str], code: int = EXIT_USAGE) -> "typer.Exit":
    for line in ([message] if isinstance(message, str) else message):
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Turn the library's user-input errors into clean messages and exit code 2."""
    from ..model.yaml_input import ConfigError
    from ..results.files import ResultsError

    try:
        yield
    except ConfigError as e:
        fail(e.problems)
    except ResultsError as e:
        fail(str(e))


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


def write_machine(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    return items or None
