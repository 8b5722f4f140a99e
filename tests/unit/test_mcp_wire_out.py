"""`_mcp_stdio.WireOut`, the MCP server's stdout: whole messages, in order, on a real pipe made small
(F_SETPIPE_SZ) so that a message does not fit; a client that stopped reading; cancellation."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

import anyio
import pytest
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCNotification

from supervisor._mcp_stdio import WireOut

pytestmark = pytest.mark.anyio

F_SETPIPE_SZ = 1031


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _message(tag: str, size: int) -> SessionMessage:
    return SessionMessage(
        JSONRPCNotification(
            jsonrpc="2.0", method="notifications/message", params={"tag": tag, "pad": "x" * size}
        )
    )


def _tags(data: bytes) -> list[str]:
    """The tag of each line `data` holds, every line a whole JSON message."""
    return [json.loads(line)["params"]["tag"] for line in data.split(b"\n") if line]


async def _drain(fd: int, until: int) -> bytes:
    """Read `fd` (blocking reads in a thread) until `until` newlines came."""
    got = bytearray()
    while got.count(b"\n") < until:
        chunk = await anyio.to_thread.run_sync(os.read, fd, 1 << 16)
        if not chunk:
            break
        got += chunk
    return bytes(got)


async def test_messages_that_do_not_fit_the_pipe_come_whole_and_in_order(pipe: tuple[int, int]) -> None:
    # A message larger than the pipe starts at once and waits for the reader; one sent meanwhile (small
    # enough to fit the pipe on its own) must wait for the first to be out, not slip in between its bytes.
    # Room is made in the pipe just before the small one is sent, so it could be written at once.
    r, w = pipe
    out = WireOut(w)
    async with anyio.create_task_group() as tg:
        tg.start_soon(out.send, _message("big", 20_000))
        await anyio.sleep(0.05)  # the big one is half out, the pipe full
        data = os.read(r, 4096)
        tg.start_soon(out.send, _message("small", 10))
        await anyio.sleep(0.05)
        tg.start_soon(out.send, _message("third", 30_000))
        data += await _drain(r, 3 - data.count(b"\n"))
    assert _tags(data) == ["big", "small", "third"]


async def test_a_message_that_fits_is_written_at_once(pipe: tuple[int, int]) -> None:
    r, w = pipe
    out = WireOut(w)
    await out.send(_message("one", 100))
    await out.send(_message("two", 100))
    os.set_blocking(r, False)
    assert _tags(os.read(r, 1 << 16)) == ["one", "two"]


async def test_a_client_that_closed_its_end_breaks_the_stream(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(r)
    out = WireOut(w)
    with pytest.raises(anyio.BrokenResourceError):
        await out.send(_message("lost", 10))
    with pytest.raises(anyio.BrokenResourceError):  # and stays broken
        await out.send(_message("lost", 10))


async def test_cancelled_before_its_first_byte_a_message_is_not_written(pipe: tuple[int, int]) -> None:
    r, w = pipe
    out = WireOut(w)
    async with anyio.create_task_group() as tg:
        tg.start_soon(out.send, _message("big", 20_000))  # fills the pipe and waits
        await anyio.sleep(0.05)
        with anyio.move_on_after(0.1):
            await out.send(_message("given-up", 10))  # waits for the big one's lock: cancelled there
        data = await _drain(r, 1)
        await anyio.sleep(0.05)
        os.set_blocking(r, False)
        with contextlib.suppress(BlockingIOError):
            data += os.read(r, 1 << 16)
    assert _tags(data) == ["big"]


async def test_cancelled_half_way_a_message_is_finished_first(pipe: tuple[int, int]) -> None:
    r, w = pipe
    out = WireOut(w)
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def sender() -> None:
            with scope:
                await out.send(_message("big", 20_000))

        tg.start_soon(sender)
        await anyio.sleep(0.05)
        scope.cancel()  # the message is half out: the rest is written anyway (within the grace)
        data = await _drain(r, 1)
    assert _tags(data) == ["big"]
    await out.send(_message("after", 10))
    os.set_blocking(r, False)
    assert _tags(os.read(r, 1 << 16)) == ["after"]


async def test_a_reader_stuck_mid_message_breaks_the_stream_once(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the grace the stream is broken for good (the client holds a torn line) and the server is told
    # once, so that it ends the session instead of running calls whose replies cannot be read.
    monkeypatch.setattr("supervisor._mcp_stdio.WRITE_GRACE_S", 0.2)
    _, w = pipe
    told: list[bool] = []
    out = WireOut(w, on_broken=lambda: told.append(True))
    with pytest.raises(anyio.BrokenResourceError):
        await out.send(_message("big", 20_000))  # half out, then nobody reads
    with pytest.raises(anyio.BrokenResourceError):
        await out.send(_message("after", 10))
    assert told == [True]


async def test_a_closed_reader_is_told_once(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(r)
    told: list[bool] = []
    out = WireOut(w, on_broken=lambda: told.append(True))
    for _ in range(2):
        with pytest.raises(anyio.BrokenResourceError):
            await out.send(_message("lost", 10))
    assert told == [True]
