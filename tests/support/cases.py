"""Small helpers shared by test files: cases from per-file defaults, and test backends registered for
the length of a test."""
from __future__ import annotations

from contextlib import contextmanager

from flashbench import backends
from flashbench.model.case import Case


def case_maker(**defaults):
    """A ``case(**overrides)`` function whose cases start from ``defaults`` (the case fields)."""

    def case(**kw) -> Case:
        return Case(**{**defaults, **kw})

    return case


@contextmanager
def registered(*backend_classes):
    """The backends (classes, instantiated here) registered inside the block, removed after it."""
    added = [backends.register(b()) for b in backend_classes]
    try:
        yield added
    finally:
        for b in added:
            backends.REGISTRY.pop(b.name, None)
