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
from ..results.rounds import every_place_timed


def group_by_case(tasks: list[Task]) -> list[list[Task]]:
    """Tasks grouped by case, groups in order of first appearance, tasks in their given order."""
    groups: dict[Case, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.case, []).append(t)
    return list(groups.values())


def rotated(items: list, places: int) -> list:
    """``items`` rotated left by ``places`` (modulo their number): the order of round ``places + 1``'s backends,
    counting rounds from 0 as ``places``."""
    k = places % len(items) if items else 0
    return items[k:] + items[:k]


def round_order(tasks: list[Task], round_number: int) -> list[Task]:
    """``tasks`` for round ``round_number`` (1 is the first): grouped by case, and each case's tasks rotated left
    by ``round_number - 1`` places (round 1 keeps the given order; in round 2 the case's second backend goes
    first and the first goes last, ...)."""
    if round_number < 1:
        raise ValueError(f"round_number: rounds count from 1, got {round_number}")
    out: list[Task] = []
    for group in group_by_case(tasks):
        out.extend(rotated(group, round_number - 1))
    return out


def position_warning(tasks: list[Task], rounds: int, clock_fell: bool) -> str | None:
    """What to tell a reader of a sweep whose backends' figures may carry their place in the case: the SM clock
    moved during it (``clock_fell``), some case has several backends, and fewer rounds than backends ran, so not
    every backend was timed in every place (``round_order``).  None otherwise."""
    most = max((len(g) for g in group_by_case(tasks)), default=0)
    if not clock_fell or most < 2 or every_place_timed(rounds, most):
        return None
    return (f"the SM clock moved during the sweep, and each case's backends were timed one after another in "
            f"{rounds} round{'s' if rounds != 1 else ''}: a backend's figures carry its place in the case (the clocks "
            f"the one before left); --rounds {most} times each backend once in every place (README: Known limits)")
