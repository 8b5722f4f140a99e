"""Suite-wide settings: async tests run on anyio's pytest plugin, whose fixtures set up and tear down in one
task, as a Supervisor's task group requires. They run on asyncio; CORRAL_TEST_BACKENDS=asyncio,trio runs each
on trio as well, CORRAL_TEST_BACKENDS=trio on trio alone (`make test` runs the engine's suites on trio too).

A hung run can be asked where every task waits: `kill -USR1 <pytest's pid>` prints the await chain of every
suspended coroutine and every thread's stack to the terminal. (On trio, anyio's plugin runs the tests in
guest mode: py-spy sees only the host loop's queue, and pytest-timeout cannot interrupt it; `make test`
sends SIGUSR1 to a trio pass that runs too long, then kills it.)"""

from __future__ import annotations

import faulthandler
import gc
import inspect
import os
import signal
import sys
import types
from typing import Any

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


def _await_chain(coro: Any) -> list[str]:
    lines = []
    for _ in range(64):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            lines.append(f"  {type(coro).__name__}")
            break
        lines.append(f"  {frame.f_code.co_qualname} {frame.f_code.co_filename}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is None:
            break
    return lines


def _dump_tasks(config: pytest.Config) -> None:
    """Every suspended coroutine's await chain (the outermost ones: each task's), then every thread."""
    coros = [o for o in gc.get_objects() if isinstance(o, types.CoroutineType) and o.cr_frame is not None]
    inner = {id(getattr(o, "cr_await", None)) for o in coros}
    out = ["", "===== SIGUSR1: where every coroutine waits ====="]
    for coro in coros:
        if id(coro) not in inner:
            out += ["--", *_await_chain(coro)]
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else _nothing():
        print("\n".join(out), file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: _dump_tasks(config))
