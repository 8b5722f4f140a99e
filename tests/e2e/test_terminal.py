"""The caller's terminal around `corral run`, on a real terminal: a pty pair whose slave is the
controlling terminal of the session corral runs in (as a shell's terminal is), checked from outside.

Without --tty a command shares the caller's terminal: whatever it does to it (termios, output suspended
with TCOOFF, O_NONBLOCK on the shared open file description) must be undone when corral exits, on every
way out (normal, SIGTERM, corral's own failure). With --tty the command gets a pty of corral's as its
controlling terminal, with the caller's window size, input and output relayed, and the caller's terminal
back as it was afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor._terminal import TerminalGuard

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]
SCRATCH = Path("/var/tmp/corral-tests")
PY = "/usr/bin/python3"

# Run inside the sandbox, on the caller's terminal (fds 0-2): everything the command did.
MANGLE = r"""
import fcntl, os, struct, sys, termios, time
a = termios.tcgetattr(0)
a[0] &= ~(termios.IXON | termios.ICRNL)
a[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
termios.tcsetattr(0, termios.TCSANOW, a)
fcntl.fcntl(0, fcntl.F_SETFL, fcntl.fcntl(0, fcntl.F_GETFL) | os.O_NONBLOCK | os.O_APPEND)
fcntl.ioctl(0, termios.TIOCEXCL)  # every later open of the terminal: EBUSY
os.write(2, b"mangled\r\n")
termios.tcflow(1, termios.TCOOFF)
try:
    fcntl.ioctl(0, termios.TIOCSETD, struct.pack("i", 27))  # n_null: swallows all input and output
except OSError:
    pass
if len(sys.argv) > 1:
    time.sleep(float(sys.argv[1]))
"""


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"tty-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


class Terminal:
    """A pty pair: `slave` is the terminal corral runs on (the controlling terminal of its new session),
    `master` is the terminal emulator's side, where the test reads the screen and types."""

    def __init__(self, rows: int = 37, cols: int = 101) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self.resize(rows, cols)
        self.before = termios.tcgetattr(self.slave)
        self.flags_before = fcntl.fcntl(self.slave, fcntl.F_GETFL)
        self.screen = b""
        self.proc: subprocess.Popen[bytes] | None = None

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def run(self, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
        def controlling_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        # preexec_fn: the ioctl in the child makes the pty its controlling terminal.
        self.proc = subprocess.Popen(
            [*CORRAL, *args],
            cwd=cwd,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            preexec_fn=controlling_terminal,
        )
        return self.proc

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        end = time.monotonic() + timeout
        while needle not in self.screen and time.monotonic() < end:
            self.pump(0.05)
        assert needle in self.screen, self.screen
        return self.screen

    def pump(self, wait: float) -> None:
        time.sleep(wait)
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                data = os.read(self.master, 65536)
                if not data:
                    break
                self.screen += data

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        finally:
            self.pump(0.1)
        return code

    def output_flows(self) -> bool:
        """Whether a write to the terminal reaches the emulator (not suspended by TCOOFF): on a new open
        file description of the slave, non-blocking, so that a suspended terminal answers EAGAIN."""
        fd = os.open(os.ttyname(self.slave), os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            try:
                os.write(fd, b"ping\r\n")
            except BlockingIOError:
                return False
        finally:
            os.close(fd)
        end = time.monotonic() + 3
        while b"ping" not in self.screen and time.monotonic() < end:
            self.pump(0.05)
        return b"ping" in self.screen

    def assert_as_before(self) -> None:
        assert fcntl.fcntl(self.slave, fcntl.F_GETFL) == self.flags_before, "O_NONBLOCK left on the terminal"
        ldisc = struct.unpack("i", fcntl.ioctl(self.slave, termios.TIOCGETD, struct.pack("i", -1)))[0]
        assert ldisc == 0, f"line discipline left at {ldisc}"
        excl = struct.unpack("i", fcntl.ioctl(self.slave, 0x80045440, struct.pack("i", -1)))[0]  # TIOCGEXCL
        assert excl == 0, "exclusive mode left on"
        assert termios.tcgetattr(self.slave) == self.before, "termios left changed"
        assert self.output_flows(), "output left suspended (TCOOFF)"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def term() -> Iterator[Terminal]:
    t = Terminal()
    yield t
    t.close()


def test_a_command_that_mangles_the_terminal_leaves_it_as_it_was(term: Terminal, ws: Path) -> None:
    term.run("run", "--", PY, "-c", MANGLE, cwd=ws)
    assert term.wait() == 0
    assert b"mangled" in term.screen
    term.assert_as_before()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_the_terminal_is_restored_when_corral_is_signalled(term: Terminal, ws: Path, signum: int) -> None:
    # Forwarded to the command, which dies of it; corral exits 128+N and restores on the way out.
    proc = term.run("run", "--", PY, "-c", MANGLE, "60", cwd=ws)
    term.read_until(b"mangled")
    time.sleep(0.3)  # past the TCOOFF
    proc.send_signal(signum)
    assert term.wait() == 128 + signum
    term.assert_as_before()


def _mangle_from_another_process(slave: int) -> None:
    subprocess.run([PY, "-c", MANGLE], stdin=slave, stdout=slave, stderr=slave, check=True, timeout=30)


def _fail_in_guard(slave: int) -> None:
    with TerminalGuard(fds=(slave,)):
        _mangle_from_another_process(slave)
        raise RuntimeError("corral failed")


def _sigterm_in_guard(slave: int) -> None:
    with TerminalGuard(fds=(slave,)):
        _mangle_from_another_process(slave)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_the_guard_restores_on_an_exception_and_on_sigterm(term: Terminal) -> None:
    # corral's own failures are exceptions out of the guarded run; a SIGTERM outside the run (before the
    # command starts or after it ended) is SystemExit(143) through the guard's handler.
    with pytest.raises(RuntimeError):
        _fail_in_guard(term.slave)
    term.assert_as_before()
    with pytest.raises(SystemExit) as exit_:
        _sigterm_in_guard(term.slave)
    assert exit_.value.code == 128 + signal.SIGTERM
    term.assert_as_before()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_tty_gives_the_command_a_terminal_of_the_callers_size(term: Terminal, ws: Path) -> None:
    term.run("run", "--tty", "--", "/bin/sh", "-c", "tty; stty size; exit 7", cwd=ws)
    assert term.wait() == 7
    assert b"not a tty" not in term.screen
    assert b"/dev/" in term.screen
    assert b"37 101" in term.screen
    term.assert_as_before()


def test_tty_relays_input_and_output(term: Terminal, ws: Path) -> None:
    script = "echo ready; read line; echo got:$line; read other; echo again:$other"
    term.run("run", "--tty", "--", "/bin/sh", "-c", script, cwd=ws)
    term.read_until(b"ready")
    term.type(b"hello\r")
    term.read_until(b"got:hello")
    term.type(b"world\r")
    term.read_until(b"again:world")
    assert term.wait() == 0
    assert term.screen.count(b"hello") >= 2  # the pty echoed it, then the command printed it
    term.assert_as_before()


def test_tty_passes_window_size_changes_on(term: Terminal, ws: Path) -> None:
    script = 'trap "stty size; exit 3" WINCH; echo ready; while :; do sleep 0.1; done'
    term.run("run", "--tty", "--", "/bin/sh", "-c", script, cwd=ws)
    term.read_until(b"ready")
    term.resize(44, 120)  # the emulator's window changes: SIGWINCH to corral, the foreground
    term.read_until(b"44 120")
    assert term.wait() == 3
    term.assert_as_before()


def test_tty_mangling_stays_inside_and_tiocsti_is_still_refused(term: Terminal, ws: Path) -> None:
    script = (
        MANGLE
        + "\nimport errno\n"
        + "try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n    r = 'ok'\n"
        + "except OSError as e:\n    r = errno.errorcode[e.errno]\n"
        + "termios.tcflow(1, termios.TCOON)\n"
        + "os.write(1, ('tiocsti:' + r + '\\r\\n').encode())\n"
    )
    term.run("run", "--tty", "--", PY, "-c", script, cwd=ws)
    assert term.wait() == 0
    assert b"tiocsti:EPERM" in term.screen
    term.assert_as_before()


def test_tty_when_corral_is_sigtermed(term: Terminal, ws: Path) -> None:
    proc = term.run("run", "--tty", "--", "/bin/sh", "-c", "echo ready; sleep 60", cwd=ws)
    term.read_until(b"ready")
    proc.send_signal(signal.SIGTERM)
    assert term.wait() == 128 + signal.SIGTERM
    term.assert_as_before()


def test_tty_ctrl_c_reaches_the_command(term: Terminal, ws: Path) -> None:
    # ^C typed on the caller's terminal (raw: passed through as a byte) is the pty's interrupt character:
    # SIGINT to the pty's foreground group, where the command is.
    script = 'trap "echo caught; exit 5" INT; echo ready; while :; do sleep 0.1; done'
    term.run("run", "--tty", "--", "/bin/sh", "-c", script, cwd=ws)
    term.read_until(b"ready")
    term.type(b"\x03")
    term.read_until(b"caught")
    assert term.wait() == 5
    term.assert_as_before()


def test_tty_output_counts_against_max_output(term: Terminal, ws: Path) -> None:
    term.run("run", "--tty", "--max-output", "4K", "--", "/usr/bin/yes", cwd=ws)
    assert term.wait() == 137
    assert b"output limit" in term.screen
    term.assert_as_before()
