"""The MCP stdio transport's reader (`supervisor._mcp_stdio._Reader`) on real pipes: it returns what is
written in order and the end of the pipe as b""; on asyncio a readiness the loop queued before the data was
taken wakes nobody, a readiness with no read pending unregisters the fd (input stays in the pipe), and a read
cancelled after its bytes were taken hands them to the next read. The first test runs on asyncio and trio
(CORRAL_TEST_BACKENDS); the loop-callback cases are asyncio's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from supervisor._mcp_stdio import _Reader


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # closed by the test
            os.close(fd)


async def test_reads_what_is_written_in_order_then_the_end(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _Reader(r)
    got: list[bytes] = []

    async def read_all() -> None:
        while data := await reader.read():
            got.append(data)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all)
            for i in range(50):
                await anyio.sleep(0.001 if i % 10 == 0 else 0)
                os.write(w, b"line %d\n" % i)
            os.close(w)
    reader.close()
    assert b"".join(got) == b"".join(b"line %d\n" % i for i in range(50))


async def _read_pending(reader: _Reader) -> None:
    """Until `reader` waits for data (its read started and found the pipe empty)."""
    while reader._waiter is None:
        await anyio.lowlevel.checkpoint()


#: The loop's readiness callback is asyncio's (on trio the reader waits with anyio.wait_readable, as the first
#: test runs it): these run on asyncio whatever CORRAL_TEST_BACKENDS says.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@asyncio_only
async def test_a_stale_readiness_wakes_nobody(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _Reader(r)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read)
            await _read_pending(reader)
            waiter = reader._waiter
            reader._ready()  # as the loop would call it for a readiness whose data is gone
            assert not waiter.done()
            os.write(w, b"x")
            reader._ready()
            assert waiter.result() == b"x"
    reader.close()


@asyncio_only
async def test_a_readiness_with_no_read_pending_unregisters_the_fd(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _Reader(r)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read)
            await _read_pending(reader)
            os.write(w, b"first")
        # read() returned: the fd is still registered, so the next readiness finds no read pending
        assert reader._registered
        os.write(w, b"second")
        for _ in range(5):
            await asyncio.sleep(0)  # the loop polls: its callback finds no read pending
        assert not reader._registered
        assert await reader.read() == b"second"  # left in the pipe, read now


@asyncio_only
async def test_bytes_taken_for_a_read_are_never_lost_to_cancellation(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _Reader(r)
    got: list[bytes] = []

    async def read_one() -> None:
        got.append(await reader.read())

    with anyio.fail_after(10):
        # anyio's cancel scope: a task whose awaited future is done is left to finish (the read returns)
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_one)
            await _read_pending(reader)
            os.write(w, b"kept")
            reader._ready()  # the loop's callback read the bytes for the pending read ...
            tg.cancel_scope.cancel()  # ... whose scope is cancelled before it resumes
        # asyncio's own cancellation throws into the task even so: the next read returns the bytes
        task = asyncio.ensure_future(read_one())
        await _read_pending(reader)
        os.write(w, b"also kept")
        reader._ready()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.write(w, b" and more")
        got.append(await reader.read())
        got.append(await reader.read())
    reader.close()
    assert got == [b"kept", b"also kept", b" and more"]
