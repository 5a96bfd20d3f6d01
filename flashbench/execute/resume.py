"""Finishing an interrupted sweep: ``flashbench run CONFIG --resume DIR``.

Results are rewritten atomically after every record, so a results directory is always valid,
whatever stopped the sweep (Ctrl-C, a killed or crashed driver, a lost Ray node). Resuming
loads it, checks that it was written by the same config (same sha256 of the file text) and the
same backend selection, skips every task (case × backend) that already has a row, runs the rest
and appends their rows to the same directory: each task ends with exactly one row.

With rounds (``--rounds N``), a sweep interrupted in round k holds one row per task measured so far,
with the rounds it finished. Resuming runs, round after round, only the rounds each task still lacks
and merges them into its row; a task whose row is settled (skipped, or failed in some round) is not
measured again. The rounds asked for are the directory's unless ``--rounds`` asks for more.

With ``retry_failed`` the ``crashed``, ``timeout`` and ``error`` rows are dropped and measured
again (their new rows replace them), e.g. after a lost Ray node or a fixed driver.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..model.config import LoadedConfig, parse_config
from ..model.yaml_input import ConfigError
from ..results.files import Run, load_run, timing_differs
from ..results.rounds import rounds_to_go, run_rounds
from ..model.schema import Record
from .plan import Plan

RETRY_STATUSES = ("crashed", "timeout", "error")


class ResumeError(ConfigError):
    """The directory cannot be resumed with this config or backend selection (exit code 2)."""

    def __init__(self, message: str):
        super().__init__([message])


@dataclass
class Resume:
    directory: Path
    run: Run
    kept: list[Record]                                  # rows that stay (and are not measured again)
    dropped: list[Record] = field(default_factory=list)  # failed rows measured again (retry_failed)
    warnings: list[str] = field(default_factory=list)
    signature: tuple | None = None  # results.json as read (results_signature): a run that wrote it since is seen

    @property
    def rounds(self) -> int:
        """The rounds the interrupted sweep was asked for (1 for a directory from before rounds)."""
        return run_rounds(self.run.meta)

    def done_keys(self, rounds: int = 1) -> set[tuple]:
        """Tasks whose rows need no more rounds."""
        return {r.task().key() for r in self.kept if not rounds_to_go(r, rounds)}


def _old_backends(run: Run, directory) -> list[str]:
    if run.meta.get("backends"):
        return list(run.meta["backends"])
    text = (run.meta.get("config") or {}).get("text")
    if not text:
        raise ResumeError(f"--resume {directory}: results.json records neither its backends nor its config text")
    return list(parse_config(text, f"{directory}/results.json config").backends)


def open_resume(directory: str | Path, loaded: LoadedConfig, backend_names: list[str] | None = None,
                retry_failed: bool = False, device: str = "cuda") -> Resume:
    """Load ``directory`` and check it against this config run on ``device``; raise ResumeError / ResultsError."""
    directory = Path(directory)
    if directory.is_file():  # the sweep writes into DIR: given DIR/results.json, it failed as "--out: File exists"
        raise ResumeError(f"--resume {directory}: a file; give the results directory that holds it "
                          f"(--resume {directory.parent})")
    signature = results_signature(directory)  # before reading: a write in between is seen as a change
    run = load_run(directory)
    old = run.meta.get("config") or {}
    if old.get("sha256") != loaded.sha256:
        raise ResumeError(
            f"--resume {directory}: it was written by config {old.get('path') or '?'} "
            f"(sha256 {str(old.get('sha256'))[:12]}…), not by {loaded.path} (sha256 {loaded.sha256[:12]}…): "
            "resume with the same config file, unchanged, or start a new results directory")
    # the same text can be timed otherwise when a default changed since (timing.rest_ms): its rows would mix two methods
    timing = timing_differs(run.meta, {"timing": loaded.config.timing.as_run(device)})
    if timing:
        raise ResumeError(
            f"--resume {directory}: it was timed with {timing[0]}, this version times with {timing[1]}: finish it with "
            "the flashbench that started it, or start a new results directory")
    old_b = _old_backends(run, directory)
    new_b = list(backend_names or loaded.config.backends)
    if set(old_b) != set(new_b):
        raise ResumeError(
            f"--resume {directory}: it was run with backends {','.join(old_b)}, not {','.join(new_b)}: "
            f"resume with the same selection (--backends {','.join(old_b)}) or start a new results directory")
    seen: set[tuple] = set()
    kept, dropped = [], []
    for r in run.records:
        key = r.task().key()
        if key in seen:  # never written by flashbench, but never make it worse
            continue
        seen.add(key)
        (dropped if retry_failed and r.status in RETRY_STATUSES else kept).append(r)
    return Resume(directory, run, kept, dropped, signature=signature)


def results_signature(directory: str | Path) -> tuple | None:
    """What identifies one version of ``directory/results.json`` (its files are replaced, never edited in
    place, so a new version is a new inode): None when there is none."""
    try:
        st = os.stat(Path(directory) / "results.json")
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def resumed_rounds(resume: Resume, requested: int | None) -> int:
    """The rounds a resumed sweep ends with: the directory's, or more when ``--rounds`` asks for more."""
    if requested is None:
        return resume.rounds
    if requested < resume.rounds:
        raise ResumeError(f"--rounds {requested}: {resume.directory} was run with {resume.rounds} rounds: resume "
                          f"with at least as many (leave out --rounds to finish its {resume.rounds})")
    return requested


def apply_resume(p: Plan, resume: Resume, rounds: int = 1) -> Plan:
    """The plan minus the tasks whose rows in the directory need no more rounds."""
    env = resume.run.meta.get("environment") or {}
    if env.get("device") and env.get("device") != p.device:
        resume.warnings.append(f"resuming a {env.get('device')} run on {p.device}: rows will come from both")
    return p.without(resume.done_keys(rounds))


def resumed_meta(resume: Resume, full_total: int, remaining: int, executor: str | None = None) -> dict:
    """The directory's metadata, marked as resumed (and unfinished until the sweep ends)."""
    meta = {k: v for k, v in resume.run.meta.items() if k != "schema_version"}
    history = list(meta.get("resumed") or [])
    history.append({"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command_line": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    "executor": executor, "rows_kept": len(resume.kept), "rows_retried": len(resume.dropped),
                    "tasks_remaining": remaining})
    meta.update(resumed=history, finished=False, tasks_total=full_total)
    return meta
