"""The ``flashbench`` command line: parse, call the library, render.

Each command lives in its own module and is registered here explicitly.
Exit codes: 0 ok, 1 regression (check), 2 usage or config error, 3 environment problem.
Importing this package imports no torch, pandas or kernels: each command imports what it needs
when it runs, so ``--help``, ``--version`` and a bad option answer at once.
"""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Benchmark and profile attention kernels on GPUs.")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"flashbench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                          help="Print flashbench's version and exit.")) -> None:
    """Benchmark and profile attention kernels on GPUs."""

from . import check_cmd
from . import compare_cmd
from . import info_cmd
from . import plot_cmd
from . import profile_cmd
from . import run_cmd  # noqa: E402,F401  (each registers its commands on `app`)


def main() -> None:
    app()
