"""The caller's terminal around `corral run`.

Without `--tty` (and without an output limit) the command writes to the caller's own terminal, and with
stdin inherited it can change that terminal's state: termios (ECHO, ICANON, IXON cleared), output
suspended (tcflow TCOOFF) or O_NONBLOCK set on the open file description the caller's shell shares, which
then gets EAGAIN. `TerminalGuard` saves the state of every standard fd that is a terminal before the run
and puts it back on every way out (normal exit, an exception, a signal).

With `--tty` the command gets a pty corral owns instead (`PtyRelay`): its slave is the command's stdin,
stdout, stderr and controlling terminal (the sandbox init makes it so, supervisor/sandbox/_cinit.c,
PLAN_CTTY), corral copies between the caller's terminal (raw while the command runs; the guard restores it)
and the pty's master, and passes window size changes on (SIGWINCH).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import struct
import termios
import tty
import types
from collections.abc import Callable
from typing import Any

import anyio

from supervisor._child import Child

_STD_FDS = (0, 1, 2)


_TIOCGEXCL = 0x80045440  # _IOR('T', 0x40, int): whether the terminal is in exclusive mode (TIOCEXCL)
_TIOCNXCL = 0x540D


def _ioctl_int(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, struct.pack("i", 0)))[0])


class TerminalGuard:
    """Saves the state of every standard fd that is a terminal on entry and restores it on exit, however
    the block ends: termios attributes, output flow (TCOON: a command may have suspended it with TCOOFF,
    which the saved attributes do not record), the file status flags (O_NONBLOCK) of its open file
    description, the line discipline (TIOCSETD: n_null would swallow all input and output) and exclusive
    mode (TIOCEXCL: every later open of the terminal would fail with EBUSY). While the guard is active
    (and a terminal was found), SIGTERM and SIGHUP end the process through SystemExit(128 + N) so that the
    restore still runs (anyio's signal receiver replaces these handlers while the command runs: the
    signals are then forwarded to the command, whose end ends the run). Restoring never raises and never
    stops the process: SIGTTOU is ignored meanwhile (a backgrounded corral would otherwise be stopped by
    tcsetattr)."""

    def __init__(self, fds: tuple[int, ...] = _STD_FDS) -> None:
        self._fds = fds
        self.saved: list[tuple[int, list[Any], int, int | None, bool]] = []
        self._handlers: dict[int, signal.Handlers | Callable[..., object] | int | None] = {}

    def __enter__(self) -> TerminalGuard:
        for fd in self._fds:
            try:
                if not os.isatty(fd):
                    continue
                attrs, flags = termios.tcgetattr(fd), fcntl.fcntl(fd, fcntl.F_GETFL)
            except (OSError, termios.error):
                continue
            try:
                ldisc: int | None = _ioctl_int(fd, termios.TIOCGETD)
            except OSError:
                ldisc = None
            try:
                exclusive = bool(_ioctl_int(fd, _TIOCGEXCL))
            except OSError:
                exclusive = True  # unknown: leave it alone
            self.saved.append((fd, attrs, flags, ldisc, exclusive))
        if self.saved:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                for signum in (signal.SIGTERM, signal.SIGHUP):
                    self._handlers[signum] = signal.signal(signum, _exit_by_signal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        try:
            self.restore()
        finally:
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)
            self._handlers.clear()

    def restore(self) -> None:
        """Put every saved terminal back as it was (flags, flow, attributes). Never raises."""
        if not self.saved:
            return
        try:
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        except ValueError:
            previous = None
        try:
            for fd, attrs, flags, ldisc, exclusive in self.saved:
                # Flags first: a terminal left non-blocking would make the calls below fail with EAGAIN.
                with contextlib.suppress(OSError):
                    if fcntl.fcntl(fd, fcntl.F_GETFL) != flags:
                        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
                with contextlib.suppress(OSError):
                    if ldisc is not None and _ioctl_int(fd, termios.TIOCGETD) != ldisc:
                        fcntl.ioctl(fd, termios.TIOCSETD, struct.pack("i", ldisc))
                with contextlib.suppress(OSError):
                    if not exclusive and _ioctl_int(fd, _TIOCGEXCL):
                        fcntl.ioctl(fd, _TIOCNXCL)
                with contextlib.suppress(OSError, termios.error):
                    termios.tcflow(fd, termios.TCOON)
                with contextlib.suppress(OSError, termios.error):
                    if termios.tcgetattr(fd) != attrs:
                        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTTOU, previous)


def _exit_by_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _caller_terminal() -> int | None:
    """The first standard fd that is a terminal (for the window size), or None."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return fd
    return None


def _copy_winsize(src: int | None, dst: int) -> None:
    if src is None:
        return
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        if struct.unpack("HHHH", size)[:2] != (0, 0):
            fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


class PtyRelay:
    """A pty for one command (`--tty`): `slave` goes to the command (Supervisor.start(stdin=slave,
    stdout=slave, stderr=slave, controlling_tty=True)), and `relay` copies between the caller's terminal
    and the master until the command is done. Raises OSError when no pty can be allocated."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self._caller = _caller_terminal()
        _copy_winsize(self._caller, self.master)

    def close_slave(self) -> None:
        """Drop corral's copy of the slave once the command has it (so the master sees EIO at its end)."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        self.close_slave()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    async def relay(self, child: Child, limit: int | None) -> None:
        """Copy the caller's stdin to the pty and the pty's output to the caller's stdout (counted against
        `limit`, the output limit, when there is one) until the command and everything it started are
        gone; window size changes follow the caller's terminal. The caller's terminal is in raw mode
        meanwhile when stdin is one (the TerminalGuard around the run restores it). Cancellation stops
        the copying."""
        if os.isatty(0):
            with contextlib.suppress(OSError, termios.error):
                tty.setraw(0, termios.TCSANOW)
        with anyio.open_signal_receiver(signal.SIGWINCH) as winch:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._input)

                async def resize() -> None:
                    async for _ in winch:
                        _copy_winsize(self._caller, self.master)

                tg.start_soon(resize)
                await self._output(child, limit)
                tg.cancel_scope.cancel()

    async def _output(self, child: Child, limit: int | None) -> None:
        while True:
            await anyio.wait_readable(self.master)
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                continue
            except OSError as err:
                if err.errno == errno.EIO:  # every copy of the slave is closed: the command is done
                    return
                raise
            if not data:
                return
            room = len(data) if limit is None else child.count_output(len(data), limit)
            if room > 0:
                await anyio.to_thread.run_sync(_write_all, 1, data[:room])

    async def _input(self) -> None:
        try:
            mode = os.fstat(0).st_mode
        except OSError:
            return
        pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(0)
        while True:
            if pollable:
                await anyio.wait_readable(0)
                try:
                    data = os.read(0, 65536)
                except BlockingIOError:
                    continue
            else:  # a regular file or /dev/null: never blocks
                data = await anyio.to_thread.run_sync(os.read, 0, 65536)
            if not data:
                # End of input: the terminal's end-of-file character, as a user typing ^D.
                await self._write(b"\x04")
                return
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.master)
            except OSError:
                return  # the command is gone


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
