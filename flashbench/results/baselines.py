"""Stored baselines: ``results/baselines/<gpu-slug>/<name>/`` holding results.json + results.csv.

A baseline is one run, or several runs of one config merged as rounds of one run
(:func:`~flashbench.results.rounds.merge_runs`), so that the gate knows its run-to-run noise.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..model.yaml_input import did_you_mean, preview
from .files import ResultsError, ResultsWriter, load_run, write_csv
from .rounds import merge_runs

DEFAULT_ROOT = Path("results") / "baselines"
_VENDOR_WORDS = {"nvidia", "amd", "intel", "geforce", "tesla", "quadro", "instinct", "radeon", "graphics"}
_JOIN_NEXT = {"rtx", "gtx", "titan", "arc"}  # "RTX 4090" -> "rtx4090"


def gpu_slug(gpu_name: str | None) -> str:
    """A short directory name for a GPU model: "NVIDIA H100 80GB HBM3" -> "h100",
    "NVIDIA A100-SXM4-80GB" -> "a100", "NVIDIA GeForce RTX 4090" -> "rtx4090"; no GPU -> "cpu"."""
    if not gpu_name or gpu_name.strip().lower() in ("cpu", "unknown"):
        return "cpu"
    tokens = [t for t in re.split(r"[\s\-_/]+", gpu_name.lower()) if t and t not in _VENDOR_WORDS]
    for i, t in enumerate(tokens):
        if t in _JOIN_NEXT and i + 1 < len(tokens):
            return re.sub(r"[^a-z0-9]", "", t + tokens[i + 1])
        if re.search(r"\d", t) and not re.fullmatch(r"\d+gb", t):
            return re.sub(r"[^a-z0-9]", "", t)
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(tokens)).strip("-")
    return slug or "gpu"


def run_gpu_slug(meta: dict) -> str:
    env = meta.get("environment") or {}
    if not env.get("gpu_name") and not str(env.get("device", "cpu")).startswith("cuda"):
        return "cpu"
    return gpu_slug(env.get("gpu_name"))


def baseline_dir(meta: dict, name: str, root: str | Path = DEFAULT_ROOT) -> Path:
    return Path(root) / run_gpu_slug(meta) / name


def save_baseline(result: str | Path | list, name: str, root: str | Path = DEFAULT_ROOT, force: bool = False) -> Path:
    """Copy a results directory's files into ``<root>/<gpu-slug>/<name>/``; several results
    directories are merged, each task's rows as rounds of one row. Raises ResultsError."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ResultsError(f"baseline name {preview(name)}: up to 100 letters, digits, '.', '_' and '-', starting "
                           "with a letter or digit (no '/')")
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) > 1:
        return _save_merged(results, name, root, force)
    result = results[0]
    run = load_run(result)  # validates the file and its schema version
    src = Path(result)
    src_dir = src if src.is_dir() else src.parent
    dest = _destination(run.meta, name, root, force)
    try:
        shutil.copyfile(src if src.is_file() else src_dir / "results.json", dest / "results.json")
        # the csv from the records just checked, never copied: the run's may be cut short or edited
        write_csv(dest / "results.csv", run.records)
    except OSError as e:
        raise ResultsError(f"cannot write the baseline to {dest}: {e}") from None
    return dest


def _destination(meta: dict, name: str, root, force: bool) -> Path:
    dest = baseline_dir(meta, name, root)
    try:
        if dest.exists() and any(dest.iterdir()) and not force:
            raise ResultsError(f"{dest} already exists (use --force to replace it)")
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # --root is a file, or not writable
        raise ResultsError(f"cannot write the baseline to {dest}: {e.strerror or e}") from None
    return dest


def _save_merged(results: list, name: str, root, force: bool) -> Path:
    seen: dict[Path, str] = {}
    for r in results:
        where = Path(r).resolve()
        where = where if where.is_dir() or not where.exists() else where.parent
        if where in seen:
            raise ResultsError(f"{r}: given twice ({seen[where]}): each run's rounds count once in a baseline")
        seen[where] = str(r)
    labels = [str(r) for r in results]
    run = merge_runs([load_run(r) for r in results], labels)
    dest = _destination(run.meta, name, root, force)
    try:
        ResultsWriter(dest, run.meta, run.records)
    except OSError as e:
        raise ResultsError(f"cannot write the baseline to {dest}: {e}") from None
    return dest


def resolve_baseline(path_or_name: str, current_meta: dict, root: str | Path = DEFAULT_ROOT) -> Path:
    """A results path, or a baseline name looked up under ``<root>/<gpu-slug of the current run>/``."""
    p = Path(path_or_name)
    if p.exists() or "/" in path_or_name or p.suffix == ".json":
        return p
    candidate = baseline_dir(current_meta, path_or_name, root)
    if candidate.exists():
        return candidate
    # a typo of a saved name is the likely mistake: name the saved ones
    saved = sorted(d.name for d in candidate.parent.iterdir() if d.is_dir()) if candidate.parent.is_dir() else []
    listing = f"; saved for {candidate.parent.name}: {', '.join(saved[:10])}{' …' * (len(saved) > 10)}" if saved else ""
    raise ResultsError(f"--baseline: {path_or_name}: neither a results path nor a saved baseline ({candidate})"
                       f"{did_you_mean(path_or_name, saved)}{listing}")
