"""``flashbench list`` and ``flashbench env``: what can run here, and on what."""
from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .common import fail, out, write_json


@app.command("list")
def list_cmd(fmt: str = typer.Option("table", "--format", "-f", help="table | json")) -> None:
    """Backends (what each can run on this machine) and bundled configs."""
    from .. import backends
    from ..execute.plan import resolve_device, runs_here
    from ..model.config import bundled_configs, load_config
    from ..backends.plugins import load_plugins
    from .common import user_errors

    if fmt not in ("table", "json"):
        fail(f"--format: {fmt!r} is not one of table, json")
    with user_errors():
        load_plugins()  # backends named in FLASHBENCH_PLUGINS are listed too
    device = resolve_device("auto")
    rows = []
    for name, b in backends.REGISTRY.items():
        here = runs_here(b, device)
        available = not here.startswith("skips every case")
        rows.append({"backend": name, "available": available, "runs_here": here, "reason": "" if available else here,
                     "description": b.description})
    configs = []
    for name, path in sorted(bundled_configs().items()):
        try:
            desc = load_config(str(path)).config.description
        except Exception as e:  # a broken bundled config is a bug, but `list` must still answer
            desc = f"(invalid: {e})"
        configs.append({"config": name, "description": desc})
    if fmt == "json":
        write_json({"device": device, "backends": rows, "configs": configs})
        return
    # names never cut or broken (they are what a command takes); the prose wraps, a long token folds
    t = Table(title=escape(f"backends (this machine: {device})"), header_style="bold")
    t.add_column("backend", no_wrap=True)
    t.add_column("available", no_wrap=True)
    t.add_column("runs here", overflow="fold")
    t.add_column("description", overflow="fold")
    for r in rows:
        t.add_row(escape(r["backend"]), "[green]yes[/]" if r["available"] else "[red]no[/]",
                  escape(r["runs_here"]) if r["available"] else f"[red]{escape(r['runs_here'])}[/]",
                  escape(r["description"]))
    out.print(t)
    t = Table(title="bundled configs (flashbench run NAME)", header_style="bold")
    t.add_column("config", no_wrap=True)
    t.add_column("description", overflow="fold")
    for c in configs:
        t.add_row(escape(c["config"]), escape(c["description"]))
    out.print(t)


@app.command()
def env(fmt: str = typer.Option("table", "--format", "-f", help="table | json"),
        ceilings: bool = typer.Option(False, "--ceilings", help="the GPU's roofs: bf16 matmul TFLOP/s burst and sustained, read and copy bandwidth, beside the datasheet peak (measured once, cached per GPU)"),
        refresh: bool = typer.Option(False, "--refresh", help="with --ceilings: measure again instead of reading the cache")) -> None:
    """GPU, driver, CUDA, cuDNN, torch, triton versions and the GPU's clocks, temperature, power, throttling."""
    if fmt not in ("table", "json"):
        fail(f"--format: {fmt!r} is not one of table, json")
    if refresh and not ceilings:  # it would be ignored: say so rather than print the plain table
        fail("--refresh measures the ceilings again: use it with --ceilings")
    if ceilings:
        from .profile_cmd import env_ceilings

        return env_ceilings(fmt, refresh)
    import torch

    from ..measure.environment import collect_environment, gpu_state, nvml_index_of, throttle_warning

    on_gpu = torch.cuda.is_available()
    info = collect_environment("cuda" if on_gpu else "cpu")
    state = gpu_state(nvml_index_of(torch.cuda.current_device())) if on_gpu else {}
    if fmt == "json":
        write_json({"environment": info, "gpu_state": state, "gpu": on_gpu})
        return
    # a value (a UUID, a commit, a command line) is folded over lines, never cut to "…"
    t = Table(show_header=False)
    t.add_column("key", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    if not on_gpu:
        t.add_row("gpu", "no GPU (CUDA not available): flashbench runs CPU sweeps only")
    for k, v in {**info, **state}.items():
        t.add_row(escape(str(k)), escape(", ".join(map(str, v)) if isinstance(v, list) else str(v)))
    out.print(t)
    w = throttle_warning(state)
    if w:
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
