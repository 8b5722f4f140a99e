"""anyio byte streams over raw pipe fds, waited on with the event loop's reader/writer polling."""

from __future__ import annotations

import contextlib
import os

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream


class FdReceiveStream(ByteReceiveStream):
    """Reads a non-blocking pipe fd. Owns the fd and closes it on aclose()."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Next chunk; raises anyio.EndOfStream at EOF and anyio.ClosedResourceError after aclose()."""
        while True:
            if self._fd is None:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the fd now (idempotent); a task waiting on it gets ClosedResourceError."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _close(fd)


class FdSendStream(ByteSendStream):
    """Writes a non-blocking pipe fd. Owns the fd and closes it on aclose() (the child then sees EOF)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd

    async def send(self, item: bytes) -> None:
        """Write all of `item`; raises anyio.BrokenResourceError when the reader is gone."""
        view = memoryview(item)
        while view:
            if self._fd is None:
                raise anyio.ClosedResourceError
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except BrokenPipeError as err:
                raise anyio.BrokenResourceError from err
            view = view[n:]

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the fd now (idempotent); a task waiting on it gets ClosedResourceError."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _close(fd)


def _close(fd: int) -> None:
    # Wake a task blocked in wait_readable/wait_writable on this fd first: after close() its number may
    # be reused by another file while the event loop still watches it.
    with contextlib.suppress(RuntimeError):  # not in an event loop thread (closed after the loop ended)
        anyio.notify_closing(fd)
    os.close(fd)
