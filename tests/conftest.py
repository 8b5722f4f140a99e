"""Suite-wide settings: async tests run on anyio's pytest plugin, whose fixtures set up and tear down in one
task, as a Supervisor's task group requires. They run on asyncio; CORRAL_TEST_BACKENDS=asyncio,trio runs each
on trio as well (the engine and the exporter are backend-neutral, but a run of the whole suite on trio still
hangs now and then: docs/architecture.md, "Backends"), CORRAL_TEST_BACKENDS=trio on trio alone."""

from __future__ import annotations

import inspect
import os

import pytest

BACKENDS = [b for b in os.environ.get("CORRAL_TEST_BACKENDS", "asyncio").split(",") if b]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # Mark coroutine tests before they are parametrized: anyio's plugin parametrizes them over
    # `anyio_backend`, which a marker added after collection would be too late for.
    if inspect.iscoroutinefunction(obj) and name.startswith("test"):
        pytest.mark.anyio(obj)
