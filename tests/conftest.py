"""Suite-wide settings: async tests run on anyio's pytest plugin (asyncio backend), whose fixtures set up and
tear down in one task, as a Supervisor's task group requires."""

from __future__ import annotations

import inspect

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # Mark coroutine tests before they are parametrized: anyio's plugin parametrizes them over
    # `anyio_backend`, which a marker added after collection would be too late for.
    if inspect.iscoroutinefunction(obj) and name.startswith("test"):
        pytest.mark.anyio(obj)
