"""The overlays of a view are copies of one the fork server made (forkserver/_overlays.py, mounts._overlay):
each sandbox's copy is its own mount, of a superblock no sandbox can reconfigure; the fork server's fd
reaches no sandbox; the host's changes show in the next sandboxes; the per-sandbox overlay stays the
fallback.

The attacker here is stronger than any sandboxed command: a process with every capability in one sandbox's
user namespace and inside its mount namespace (nsenter from the host), which the command, without
capabilities and under seccomp, is not. What it does to its sandbox's copy must change nothing for a second
sandbox running at the same time, nor for the next one.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from policies import Policy, profiles
from supervisor import DEVNULL, Supervisor
from supervisor.forkserver import _overlays
from tests.kernel.preforked import always_preforked
from tests.kernel.test_attack_hidden_host import assert_never_read, marker, race, rename_over

pytestmark = pytest.mark.kernel

WHY_NOT = _overlays.probe_error()
needs_shared = pytest.mark.skipif(bool(WHY_NOT), reason=f"no shared overlay can be made here: {WHY_NOT}")
if WHY_NOT:
    print(f"shared overlays: {WHY_NOT}")

#: Run in the sandbox's user and mount namespaces with every capability of that user namespace (nsenter):
#: what the strongest process one sandbox could ever hold can do to its copy of the overlay at `home`.
ATTACK = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
home = sys.argv[1].encode()
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 2, 4, 32, 4096, 2
def call(rc):
    return "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
out = {}
# The superblock's own options (no MS_BIND): every copy shares it.
out["reconfigure_superblock"] = call(
    libc.mount(None, home, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
)
# This copy's mount flags: writable, suid, dev.
out["remount_copy_flags"] = call(libc.mount(None, home, None, MS_REMOUNT | MS_BIND, None))
# The hiding mount on the copy, then the copy itself.
out["umount_hiding"] = call(libc.umount2(home + b"/token", MNT_DETACH))
out["umount_copy"] = call(libc.umount2(home, MNT_DETACH))
print(json.dumps(out))
"""

WAIT = 'touch "$1.started"; i=0; while [ ! -e "$1.go" ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done'


@pytest.fixture
def home(outside: Path) -> Path:
    """A directory the sandbox may only read, holding a denied file (so the view overlays it)."""
    (outside / "token").write_text("the host's token\n")
    return outside


@pytest.fixture
async def held(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Supervisor]:
    """A Supervisor whose fork server keeps each overlay for 60 s unless its directory changes (not 0.1 s):
    what sandboxes share, and what the fork server holds, does not depend on how fast this machine is.
    Every sandbox built on the spot (pre-forked ones have overlays of their own)."""
    monkeypatch.setenv("CORRAL_SHARED_OVERLAYS", "60")
    async with Supervisor(max_concurrency=8, prefork=0) as s:
        yield s


def token_policy(workspace: Path, home: Path, *extra: Path) -> Policy:
    return profiles.workspace_write(workspace, deny=[home / "token", *extra], timeout=30)


def server_pid(sup: Supervisor) -> int:
    fs = sup._forkserver
    assert fs is not None
    assert fs.server_pid is not None
    return fs.server_pid


def fds_on(pid: int, dev: int) -> list[int]:
    """The fds of host process `pid` on device `dev` (an overlay's superblock)."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.stat(f"/proc/{pid}/fd/{name}").st_dev == dev:
                out.append(int(name))
        except OSError:
            continue
    return out


def mount_line(pid: int, path: Path) -> str:
    """Host process `pid`'s mountinfo line for the topmost mount at `path` ('' when none)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        lines = [line for line in f if line.split()[4] == str(path)]
    return lines[-1] if lines else ""


def hidden(pid: int, path: Path) -> bool:
    """Whether `path` is /dev/null (the hiding mount) in host process `pid`'s view (by its root)."""
    st = os.stat(f"/proc/{pid}/root{path}")
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat("/dev/null").st_rdev


async def wait_for(path: Path) -> None:
    with anyio.fail_after(20):
        while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - polling the host side
            await anyio.sleep(0.02)


@needs_shared
async def test_a_sandbox_that_changes_its_copy_changes_no_other(
    held: Supervisor, workspace: Path, home: Path
) -> None:
    sup = held
    pol = token_policy(workspace, home)
    script = (
        f'{WAIT}; {{ cat "$2/token"; cat "$2/canary.txt"; grep " $2 " /proc/self/mountinfo; }} >"$1.out" 2>&1'
    )
    a = await sup.start(["/bin/sh", "-c", script, "sh", "a", str(home)], policy=pol, stdout=DEVNULL)
    b = await sup.start(["/bin/sh", "-c", script, "sh", "b", str(home)], policy=pol, stdout=DEVNULL)
    await wait_for(workspace / "a.started")
    await wait_for(workspace / "b.started")
    host_dev = os.stat(home).st_dev
    dev = os.stat(f"/proc/{a.pid}/root{home}").st_dev
    # One superblock for both (a copy each), not the host's; the fork server holds the original.
    assert dev != host_dev
    assert os.stat(f"/proc/{b.pid}/root{home}").st_dev == dev
    assert fds_on(server_pid(sup), dev), "the fork server holds no fd of the overlay the sandboxes copied"
    before_b = mount_line(b.pid, home)
    assert " ro," in before_b, before_b
    assert "nosuid" in before_b, before_b
    assert "nodev" in before_b, before_b

    attack = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            ["nsenter", "-t", str(a.pid), "-U", "-m", "--", sys.executable, "-I", "-c", ATTACK, str(home)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    )
    assert attack.returncode == 0, attack.stderr
    done = json.loads(attack.stdout)
    # The superblock is the fork server's (the initial user namespace's): no sandbox can reconfigure it.
    assert done["reconfigure_superblock"] == "EPERM", done
    # Its own copy it could change: the attacker had real power there...
    assert done["umount_hiding"] == "ok", done
    assert done["umount_copy"] == "ok", done
    assert os.stat(f"/proc/{a.pid}/root{home}").st_dev == host_dev  # A now sees the host's directory
    # ...and none of it reached B: same overlay, same flags, the token still hidden.
    assert os.stat(f"/proc/{b.pid}/root{home}").st_dev == dev
    assert mount_line(b.pid, home) == before_b
    assert hidden(b.pid, home / "token")
    (workspace / "a.go").touch()
    (workspace / "b.go").touch()
    await a.wait()
    rb = await b.wait()
    out_a, out_b = (workspace / "a.out").read_bytes(), (workspace / "b.out").read_bytes()
    assert rb.exit_code == 0, (out_b, sorted(os.listdir(workspace)))
    assert b"the host's token" in out_a, out_a  # A, unhidden by the attacker in its own namespace
    assert b"the host's token" not in out_b, out_b
    assert b"host canary" in out_b, out_b
    assert before_b.split()[4].encode() in out_b  # B's own look at its mount: still there

    # And the next sandbox: the original the fork server holds is untouched.
    c = await sup.run(
        ["/bin/sh", "-c", f'cat "{home}/token" "{home}/canary.txt"; stat -c %d "{home}"'], policy=pol
    )
    assert c.exit_code == 0, c.stderr
    assert b"the host's token" not in c.stdout, c.stdout
    assert b"host canary" in c.stdout, c.stdout
    assert int(c.stdout.split()[-1]) != host_dev


@needs_shared
async def test_the_overlays_fd_reaches_no_sandbox(held: Supervisor, workspace: Path, home: Path) -> None:
    sup = held
    pol = token_policy(workspace, home)
    listing = 'ls /proc/self/fd; for f in /proc/self/fd/*; do stat -L -c "%n %d" "$f"; done; true'
    script = f'{WAIT}; {{ {listing}; }} >"$1.out" 2>&1'
    child = await sup.start(["/bin/sh", "-c", script, "sh", "x", str(home)], policy=pol, stdout=DEVNULL)
    await wait_for(workspace / "x.started")
    dev = os.stat(f"/proc/{child.pid}/root{home}").st_dev
    assert fds_on(server_pid(sup), dev)  # the fork server's original
    # Neither the init nor the command holds it (checked from outside, by device).
    children = Path(f"/proc/{child.pid}/task/{child.pid}/children")
    pids = [child.pid, *(int(p) for p in children.read_text().split())]  # noqa: ASYNC240
    assert len(pids) == 2, pids
    for pid in pids:
        assert fds_on(pid, dev) == [], pid
    (workspace / "x.go").touch()
    r = await child.wait()
    out = (workspace / "x.out").read_text()
    assert r.exit_code == 0, out
    # The command's own look: stdio and ls's directory, none on the overlay's device.
    listed = [line for line in out.splitlines() if line.isdigit()]
    assert listed == ["0", "1", "2", "3"], out  # 3: ls's own directory
    assert f" {dev}\n" not in out, out


@needs_shared
async def test_the_hosts_changes_show_in_the_next_sandboxes(workspace: Path, home: Path) -> None:
    # An overlay's dentries keep what they first found; the shared one outlives each sandbox, so the fork
    # server makes it anew when the directory's own entries change (at once) and after MAX_AGE (below).
    pol = token_policy(workspace, home)
    async with Supervisor(max_concurrency=4, prefork=0) as sup:  # each sandbox built on the spot
        await _changes_show(sup, pol, home)


async def _changes_show(sup: Supervisor, pol: Policy, home: Path) -> None:
    (home / "conf").write_text("top v1\n")
    (home / "sub").mkdir()
    (home / "sub" / "conf").write_text("deep v1\n")
    look = f'for f in conf new sub/conf sub/new; do cat "{home}/$f" 2>/dev/null || echo "no $f"; done'
    first = await sup.run(["/bin/sh", "-c", look], policy=pol)
    assert first.stdout == b"top v1\nno new\ndeep v1\nno sub/new\n", first.stdout
    # The host's editor renames new files over both, and creates the names the sandbox found missing.
    for rel, text in (
        ("conf", "top v2\n"),
        ("sub/conf", "deep v2\n"),
        ("new", "top new\n"),
        ("sub/new", "deep new\n"),
    ):
        tmp = home / f"{rel}.tmp"
        tmp.write_text(text)
        os.rename(tmp, home / rel)
    at_once = await sup.run(["/bin/sh", "-c", look], policy=pol)
    assert at_once.stdout.startswith(b"top v2\ntop new\n"), at_once.stdout  # the directory's own entries
    await anyio.sleep(_overlays.MAX_AGE + 0.05)
    later = await sup.run(["/bin/sh", "-c", look], policy=pol)
    assert later.stdout == b"top v2\ntop new\ndeep v2\ndeep new\n", later.stdout


@needs_shared
async def test_an_overlay_is_released_when_no_view_uses_it(
    held: Supervisor, workspace: Path, home: Path
) -> None:
    sup = held
    # "later" is missing: the overlay's layers include a whiteout for it. Once the host creates it, the
    # view is rebuilt (its fingerprint changed) with other layers, and the first overlay is closed.
    pol = token_policy(workspace, home, home / "later")
    show = f'stat -c %d "{home}"; cat "{home}/later" 2>&1; true'
    first = await sup.run(["/bin/sh", "-c", show], policy=pol)
    dev = int(first.stdout.split()[0])
    assert b"No such file" in first.stdout, first.stdout
    assert fds_on(server_pid(sup), dev)
    (home / "later").write_text("created by the host\n")
    second = await sup.run(["/bin/sh", "-c", show], policy=pol)
    assert b"created by the host" not in second.stdout  # hidden now by a mount
    new_dev = int(second.stdout.split()[0])
    assert new_dev != dev
    assert fds_on(server_pid(sup), dev) == []
    assert fds_on(server_pid(sup), new_dev)


@needs_shared
async def test_a_pre_forked_sandbox_has_an_overlay_of_its_own(
    workspace: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pre-forked sandbox may wait minutes for its command: a copy of the shared overlay would show it what
    # the sandboxes around its build looked up, as it was then (here: the 60 s overlay's cached sub/conf).
    monkeypatch.setenv("CORRAL_SHARED_OVERLAYS", "60")
    pol = token_policy(workspace, home)
    (home / "sub").mkdir()
    (home / "sub" / "conf").write_text("v1\n")
    look = [
        "/bin/sh",
        "-c",
        f'cat "{home}/sub/conf"; stat -c %d "{home}"; grep " {home} " /proc/self/mountinfo',
    ]
    async with Supervisor(max_concurrency=4, prefork=0) as sup:
        first = await sup.run(look, policy=pol)  # built on the spot: the shared overlay, sub/conf looked up
        assert first.stdout.startswith(b"v1\n"), first.stdout
        assert b" - overlay none " in first.stdout  # (the fork server's: fsmount's source)
        always_preforked(sup)
        tmp = home / "sub" / "conf.tmp"
        tmp.write_text("v2\n")
        os.rename(tmp, home / "sub" / "conf")  # deeper than the overlaid directory's own entries
        later = await sup.run(look, policy=pol)  # a pre-forked sandbox
        assert later.stdout.startswith(b"v2\n"), later.stdout
        assert b" - overlay overlay " in later.stdout  # its own (mount(2)'s source)
        assert not fds_on(server_pid(sup), int(later.stdout.split()[1]))


async def test_the_per_sandbox_overlay_when_the_fork_server_makes_none(
    workspace: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What every sandbox does where the kernel refuses the fork server an overlay (an ordinary user's:
    # test_unprivileged.py), forced here: each makes its own, and the host's renames still show nothing.
    monkeypatch.setenv("CORRAL_SHARED_OVERLAYS", "0")
    pol = token_policy(workspace, home)
    async with Supervisor(max_concurrency=4) as sup:
        devs = []
        for _ in range(2):
            r = await sup.run(["/bin/sh", "-c", f'stat -c %d "{home}"; cat "{home}/token"; true'], policy=pol)
            assert r.exit_code == 0, r.stderr
            assert b"the host's token" not in r.stdout
            devs.append(int(r.stdout.split()[0]))
        assert os.stat(home).st_dev not in devs  # an overlay each...
        assert not [d for d in devs if fds_on(server_pid(sup), d)]  # ...of its own: none is the fork server's
        secret = marker()
        loops, replaced, out = await race(
            sup, pol, workspace, [home / "token"], rename_over(home / "token", secret)
        )
        assert_never_read(loops, replaced, out, secret)


@needs_shared
def test_the_fork_servers_overlays_by_themselves(tmp_path: Path) -> None:
    # _overlays.SharedOverlays on the real kernel: one fd per set of layers, made anew on its number when
    # the directory changes or MAX_AGE passed, closed once no view uses it.
    top, empty = tmp_path / "top", tmp_path / "empty"
    top.mkdir()
    empty.mkdir()
    (top / "f").write_text("1")
    shared = _overlays.SharedOverlays(max_age=60)
    layers = f"{top}:{empty}"
    fd = shared.make(str(top), layers)
    assert fd is not None
    assert shared.available
    try:
        dev = os.fstat(fd).st_dev
        assert shared.make(str(top), layers) == fd  # anew, on the same number
        assert os.fstat(fd).st_dev != dev
        dev = os.fstat(fd).st_dev
        shared.refresh((fd,))
        assert os.fstat(fd).st_dev == dev  # young and unchanged: kept
        (top / "g").write_text("2")
        shared.refresh((fd,))
        assert os.fstat(fd).st_dev != dev  # the directory's entries changed
        dev = os.fstat(fd).st_dev
        shared.max_age = 0.05
        time.sleep(0.07)
        shared.refresh((fd,))
        assert os.fstat(fd).st_dev != dev  # too old
        # The directory gone: none can be made; a pipe on the number, which no init can copy (its sandbox
        # mounts its own: test_the_inits_copy_and_its_fallback), until one can be made again.
        top.rename(tmp_path / "gone")
        shared.refresh((fd,))
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        (tmp_path / "gone").rename(top)
        time.sleep(0.07)
        shared.refresh((fd,))
        assert stat.S_ISDIR(os.fstat(fd).st_mode)  # an overlay's root again
        shared.release({fd})
        assert shared.held() == [fd]
    finally:
        shared.release(set())
    assert shared.held() == []
    assert not os.path.exists(f"/proc/self/fd/{fd}") or os.stat(f"/proc/self/fd/{fd}").st_dev != dev


#: In a mount namespace of its own (root): the init's overlay ops (mounts._overlay) run by _cinit.apply, with
#: `share` handing them a real detached overlay ("shared") or a pipe, which the kernel refuses to copy
#: ("refused"); prints what is mounted at the directory then and whether the fd is still open.
PLAN = r"""
import ctypes, json, os, sys
from supervisor.sandbox import _cinit, mounts
from supervisor.sandbox._ops import Plan, blob
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x00020000) == 0  # CLONE_NEWNS
assert libc.mount(None, b"/", None, 0x4000 | (1 << 18), None) == 0  # MS_REC | MS_PRIVATE
top, how = sys.argv[1], sys.argv[2]
denied = [top + "/token", top + "/missing"]  # a missing one: the whiteout layer, no scaffold needed
if how == "shared":
    share = lambda t, layers: _cinit.overlay_new(layers)
else:
    r, w = os.pipe()
    share = lambda t, layers: r
fds = []
def record(t, layers):
    fds.append(share(t, layers))
    return fds[-1]
plan = Plan()
mounts._overlay(plan, top, denied, record)
failed = _cinit.apply(blob([plan.segment()]))
with open("/proc/self/mountinfo") as f:
    line = [l for l in f if l.split()[4] == top][-1]
print(json.dumps({
    "failed": failed, "source": line.split(" - ")[1].split()[:2], "opts": line.split()[5],
    "fd_open": os.path.exists("/proc/self/fd/%d" % fds[0]),
    "token": open(top + "/token").read(), "dev": os.stat(top).st_dev,
}))
"""


@needs_shared
@pytest.mark.parametrize("how", ["shared", "refused"])
def test_the_inits_copy_and_its_fallback(tmp_path: Path, how: str) -> None:
    # OP_CLONE_AT copies the detached overlay onto the directory and the plan closes its fd; when the kernel
    # refuses the copy (here: a pipe's fd), the plan mounts the sandbox's own overlay instead, and closes
    # the fd all the same.
    top = tmp_path / "home"
    top.mkdir()
    (top / "token").write_text("token\n")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-c", PLAN, str(top), how],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["failed"] is None, got
    assert got["source"] == ["overlay", "none" if how == "shared" else "overlay"], got
    assert got["opts"].startswith("ro,nosuid,nodev"), got
    assert got["fd_open"] is False, got
    assert got["token"] == "token\n"  # the host's file, seen through the overlay
    assert got["dev"] != os.stat(top).st_dev
