"""Run order for the whole suite: the modules marked ``slow`` or ``e2e`` first.

``make test`` spreads test files over processes (pytest-xdist, ``--dist loadfile
--no-loadscope-reorder``), which hand out files in collection order. (xdist's own order, by
number of tests, put the one-test end-to-end fault scenario last, where it ran alone while
the other process idled.) Started first, the long files overlap the many short ones. A
single-process run is unaffected except for the order.
"""

from __future__ import annotations

import pytest

LONG_MARKS = ("slow", "e2e")


def _is_long(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(mark) for mark in LONG_MARKS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the files that hold a long test ahead of the others, keeping each file's tests
    together and in their order (module fixtures are set up once per file)."""
    long_files = {item.path for item in items if _is_long(item)}
    items.sort(key=lambda item: item.path not in long_files)  # stable: order kept within
