"""The ``flashbench`` command line: parse, call the library, render.

Each command lives in its own module and is registered here explicitly.
Exit codes: 0 ok, 1 regression (check), 2 usage or config error, 3 environment problem.
"""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Benchmark and profile attention kernels on GPUs.")

from . import check_cmd
from . import compare_cmd
from . import info_cmd
from . import plot_cmd
from . import profile_cmd
from . import run_cmd  # noqa: E402,F401  (each registers its commands on `app`)


def main() -> None:
    app()
