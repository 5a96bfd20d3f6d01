"""The order a sweep measures its tasks in: grouped by case, each round's backends rotated.

Every backend of a case runs in one worker, one after the other (``group_by_case``). The order within a case
matters on a GPU that runs at its power limit: a backend timed right after another's load starts at the
clocks that load left, where the first one of the case starts after the lighter work between cases
(compiling, the reference, the memory pass). On an H100, a D128 forward at N 4k measured 612 TFLOP/s timed after
cuDNN's and 656 timed before it (cuDNN: 668 first, 636 second; ``results/evidence/h100/backend_order/``).
``round_order`` therefore rotates each case's backends by one place per round: with as many rounds as
backends every backend is timed once in every position, and the rounds' medians (``results.rounds``)
average the position out.
"""
from __future__ import annotations

from ..model.case import Case, Task


def group_by_case(tasks: list[Task]) -> list[list[Task]]:
    """Tasks grouped by case, groups in order of first appearance, tasks in their given order."""
    groups: dict[Case, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.case, []).append(t)
    return list(groups.values())


def round_order(tasks: list[Task], round_number: int) -> list[Task]:
    """``tasks`` for round ``round_number`` (1 is the first): grouped by case, and each case's tasks rotated left
    by ``round_number - 1`` places (round 1 keeps the given order; in round 2 the case's second backend goes
    first and the first goes last, ...)."""
    if round_number < 1:
        raise ValueError(f"round_number: rounds count from 1, got {round_number}")
    out: list[Task] = []
    for group in group_by_case(tasks):
        k = (round_number - 1) % len(group)
        out.extend(group[k:] + group[:k])
    return out
