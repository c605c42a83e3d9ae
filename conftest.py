"""Each notebook's run time at the end of a pytest run, and notebooks in the slow tier.

At the repository root so that it serves `pytest`, `pytest notebooks` and `pytest --nbval notebooks/X.ipynb` alike
(a second conftest.py beside the notebooks would shadow the `conftest` module that tests/ import helpers from).

nbval runs one test item per cell, so ``--durations`` lists cells; this sums them (setup, call and teardown, the
kernel's start included) per notebook, so that a chapter that outgrows its two-minute budget shows in every CI log.
The time depends on the machine and its load, so it is reported, not asserted.
"""
from __future__ import annotations

from collections import defaultdict

BUDGET_SECONDS = 120.0  # each chapter should run within about 2 minutes on 2 CPU cores
_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.write_sep("=", "notebook run times (sum of cell durations)")
    for path, seconds in sorted(_seconds.items()):
        over = "  over the 2-minute budget" if seconds > BUDGET_SECONDS else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{over}")
    terminalreporter.write_line(f"{sum(_seconds.values()):7.1f} s  all notebooks")


def pytest_collection_modifyitems(config, items):
    # Every notebook trains or loads models for tens of seconds: the fast tier, `pytest -m "not slow"`, skips them.
    import pytest

    for item in items:
        if item.nodeid.split("::")[0].endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
