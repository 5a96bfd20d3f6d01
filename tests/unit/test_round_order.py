"""``execute.order``: tasks grouped by case, each round's backends rotated, so that with as many rounds as
backends every backend of a case is timed once in every position."""
import pytest

from flashbench.execute.order import group_by_case, position_warning, rotated, round_order
from flashbench.model.case import Task
from sweeps import case


def test_round_one_keeps_the_given_order_grouped_by_case():
    a, b = case(32), case(64)
    tasks = [Task(a, "x"), Task(a, "y"), Task(b, "x"), Task(b, "y")]
    assert round_order(tasks, 1) == tasks
    # interleaved cases come back grouped, in order of first appearance (as the executors run them)
    mixed = [Task(a, "x"), Task(b, "x"), Task(a, "y"), Task(b, "y")]
    assert round_order(mixed, 1) == group_by_case(mixed)[0] + group_by_case(mixed)[1] == tasks


def test_each_backend_takes_every_position_once_in_as_many_rounds():
    a, b = case(32), case(64)
    names = ["x", "y", "z"]
    tasks = [Task(c, n) for c in (a, b) for n in names]
    positions = {n: set() for n in names}
    for r in (1, 2, 3):
        order = round_order(tasks, r)
        assert sorted(order, key=tasks.index) == tasks  # the same tasks, only reordered
        for c in (a, b):
            in_case = [t.backend for t in order if t.case == c]
            assert [t.case for t in order] == [a] * 3 + [b] * 3  # cases stay in their order, whole
            for i, n in enumerate(in_case):
                positions[n].add(i)
    assert positions == {n: {0, 1, 2} for n in names}
    assert [t.backend for t in round_order(tasks, 2)][:3] == ["y", "z", "x"]
    assert round_order(tasks, 4) == round_order(tasks, 1)  # the rotation wraps


def test_cases_with_fewer_backends_rotate_on_their_own():
    a, b = case(32), case(64)
    tasks = [Task(a, "x"), Task(a, "y"), Task(a, "z"), Task(b, "x")]  # b's other backends were skipped
    assert round_order(tasks, 2) == [Task(a, "y"), Task(a, "z"), Task(a, "x"), Task(b, "x")]
    assert round_order([], 3) == []


def test_the_rotation_moves_the_first_items_last_modulo_their_number():
    """``rotated``: the one rotation rule of the sweep's rounds and tools/kernel_ab.py's."""
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotated(["a", "b", "c"], 5) == ["c", "a", "b"]
    assert rotated([], 3) == []


def test_rounds_count_from_one():
    with pytest.raises(ValueError, match="rounds count from 1, got 0"):
        round_order([Task(case(), "x")], 0)


def test_a_sweep_whose_clock_moved_says_its_backends_carry_their_place():
    a, b = case(32), case(64)
    three = [Task(a, n) for n in ("x", "y", "z")] + [Task(b, "x")]
    note = position_warning(three, 1, clock_fell=True)
    assert note.startswith("the SM clock moved during the sweep, and each case's backends were timed one after "
                           "another in 1 round:") and "--rounds 3 times each backend once in every place" in note
    assert "in 2 rounds:" in position_warning(three, 2, clock_fell=True)
    assert position_warning(three, 3, clock_fell=True) is None  # every backend in every place
    assert position_warning(three, 1, clock_fell=False) is None  # a steady clock
    assert position_warning([Task(a, "x"), Task(b, "x")], 1, clock_fell=True) is None  # one backend a case
    assert position_warning([], 1, clock_fell=True) is None
