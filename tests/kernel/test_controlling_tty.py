"""Supervisor.start(controlling_tty=True), as `corral run --tty` uses it: the pty the caller made becomes
the sandbox session's controlling terminal (the init's TIOCSCTTY), never a terminal that is already
another session's; TIOCSTI stays refused. Runs on the pre-forked path too (such a start never takes a
pre-forked sandbox)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import SandboxSetupError, Supervisor

pytestmark = pytest.mark.kernel

PY = "/usr/bin/python3"

PROBE = r"""
import errno, fcntl, json, os, termios
r = {"ttyname": os.ttyname(0), "foreground": os.tcgetpgrp(0) == os.getpgrp()}
r["tty_nr"] = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x")
    r["tiocsti"] = "ok"
except OSError as e:
    r["tiocsti"] = errno.errorcode[e.errno]
fd = os.open("/dev/tty", os.O_RDWR)
os.write(fd, (json.dumps(r) + "\n").encode())
"""


def _drain(master: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            return out
        if not data:
            return out
        out += data


async def test_the_pty_becomes_the_controlling_terminal(sup: Supervisor, workspace: Path) -> None:
    master, slave = os.openpty()
    try:
        pol = profiles.workspace_write(workspace, timeout=30)
        child = await sup.start(
            [PY, "-I", "-c", PROBE], policy=pol, stdin=slave, stdout=slave, stderr=slave, controlling_tty=True
        )
        os.close(slave)
        slave = -1
        with anyio.fail_after(30):
            r = await child.wait()
        out = await anyio.to_thread.run_sync(_drain, master)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert r.exit_code == 0, out
    line = [x for x in out.decode().splitlines() if x.startswith("{")]
    assert line, out
    rep = json.loads(line[0])
    assert rep["ttyname"] == "/dev/console"
    assert rep["foreground"] is True
    assert rep["tty_nr"] != 0  # opening /dev/tty worked above: it is the controlling terminal
    assert rep["tiocsti"] == "EPERM"


@pytest.fixture
def held_terminal() -> Iterator[int]:
    """The slave of a pty that is the controlling terminal of a session of its own (a `sleep` the test
    starts there, as a shell's terminal is its session's); the sleep is killed by its pid afterwards."""
    master, slave = os.openpty()

    def ctty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    holder = subprocess.Popen(  # preexec_fn: the ioctl in the child makes the pty its terminal
        ["/bin/sleep", "30"], stdin=slave, start_new_session=True, preexec_fn=ctty
    )
    try:
        time.sleep(0.2)
        yield slave
    finally:
        holder.kill()
        holder.wait()
        with contextlib.suppress(OSError):
            os.close(master)
        os.close(slave)


async def test_another_sessions_terminal_is_refused(
    sup: Supervisor, workspace: Path, held_terminal: int
) -> None:
    slave = held_terminal
    pol = profiles.workspace_write(workspace, timeout=30)
    with pytest.raises(SandboxSetupError) as err:
        await sup.start(
            ["/bin/true"], policy=pol, stdin=slave, stdout=slave, stderr=slave, controlling_tty=True
        )
    assert err.value.layer == "tty"
    assert err.value.errno == 1  # EPERM


SETD = r"""
import errno, fcntl, struct, sys, termios
out = []
for fd in (0, 1):
    try:
        fcntl.ioctl(fd, termios.TIOCSETD, struct.pack("i", 27))  # n_null
        out.append("ok")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
sys.stderr.write(" ".join(out) + "\n")
"""


@pytest.mark.parametrize("own_pty", [False, True])
async def test_the_line_discipline_of_a_terminal_cannot_be_changed(
    sup: Supervisor, workspace: Path, own_pty: bool
) -> None:
    # The caller's terminal (shared without --tty) or the pty made for the command: switching it to n_null
    # would swallow all of the user's input and output (and other disciplines are kernel code loaded on
    # demand). Checked from outside: the discipline is still n_tty.
    master, slave = os.openpty()
    err_r, err_w = os.pipe()
    try:
        pol = profiles.workspace_write(workspace, timeout=30)
        child = await sup.start(
            [PY, "-I", "-c", SETD],
            policy=pol,
            stdin=slave,
            stdout=slave,
            stderr=err_w,
            controlling_tty=own_pty,
        )
        os.close(err_w)
        err_w = -1
        with anyio.fail_after(30):
            r = await child.wait()
        report = await anyio.to_thread.run_sync(os.read, err_r, 4096)
        ldisc = struct.unpack("i", fcntl.ioctl(slave, termios.TIOCGETD, struct.pack("i", -1)))[0]
    finally:
        for fd in (master, slave, err_r, err_w):
            if fd >= 0:
                os.close(fd)
    assert r.exit_code == 0, report
    assert report.split() == [b"EPERM", b"EPERM"]
    assert ldisc == 0  # n_tty
