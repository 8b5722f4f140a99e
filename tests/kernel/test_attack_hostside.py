"""What a sandbox leaves in its workdir must not turn the host side (the root supervisor, the fork server,
the CLI) against the host or stop it.

Each attack plants something from inside a real sandbox, then the next sandbox for that workdir is prepared
on the host; the effects are checked from outside:
- root acting on the workdir's contents: a planted `.git -> /elsewhere` (or a symlink among .git/modules)
  must not make root create directories outside the workdir; it is refused naming the path to remove, and
  the workdir works again once that is removed;
- availability: a FIFO, a socket, a huge sparse file at .git/config, a symlink loop or 100,000 entries
  under .git/modules must not block or stall the supervisor: another tenant's 3 s timeout still fires on
  time while the attacker keeps spawning, and the CLI still exits on time.

Bounded even when the host side fails: a watchdog thread opens a planted FIFO (which releases a reader
blocked on it) and removes planted trees after a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import Result, SandboxSetupError, Supervisor

pytestmark = pytest.mark.kernel

SH = "/bin/sh"
PY = "/usr/bin/python3"
CORRAL = [sys.executable, "-m", "supervisor.cli"]


def policy(workspace: Path, **opts: object) -> Policy:
    opts.setdefault("timeout", 20)
    return profiles.workspace_write(workspace, **opts)  # type: ignore[arg-type]


async def git_init(path: Path) -> None:
    await anyio.run_process(["/usr/bin/git", "init", "-q", str(path)], env={"PATH": "/usr/bin:/bin"})


async def plant(sup: Supervisor, workspace: Path, script: str) -> Result:
    """Run `script` in a sandbox of `workspace`: the attacker's move."""
    r = await sup.run([SH, "-c", script], policy=policy(workspace, timeout=90))
    assert r.exit_code == 0, r.stderr.decode(errors="replace")
    return r


# --- root acting on the workdir's contents


async def test_planted_git_symlink_makes_root_create_nothing_outside(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    """`.git -> /elsewhere`: preparing the next sandbox used to mkdir /elsewhere/hooks as root. The planting
    run's own git scan moves such a link aside now (tests/kernel/test_attack_git_redirect.py); one planted
    where no scan saw it before the next run is prepared (by a sandbox still running beside; here by the
    test, after the planting run) is refused, naming it."""
    r = await sup.run([SH, "-c", f"ln -s {outside} .git"], policy=policy(workspace, timeout=90))
    assert r.exit_code == 0, r.stderr
    assert str(workspace / ".git") in [p for p, _ in r.quarantined], r.quarantined
    assert not (workspace / ".git").is_symlink()
    assert sorted(os.listdir(outside)) == ["canary.txt"]
    os.symlink(outside, workspace / ".git")
    with pytest.raises(SandboxSetupError) as info:
        await sup.run(["/bin/true"], policy=policy(workspace))
    assert not (outside / "hooks").exists(), "root created a directory through a planted .git symlink"
    assert sorted(os.listdir(outside)) == ["canary.txt"]
    assert info.value.path == str(workspace / ".git")
    assert "remove" in str(info.value)
    # Not bricked: once the named path is removed, the workdir works again.
    (workspace / ".git").unlink()
    r = await sup.run(["/bin/true"], policy=policy(workspace))
    assert r.exit_code == 0


@pytest.mark.parametrize("where", ["modules_entry", "modules_dir", "submodule_hooks"])
async def test_planted_symlink_under_git_modules_is_refused_by_name(
    sup: Supervisor, workspace: Path, outside: Path, where: str
) -> None:
    """A symlink among the submodule git dirs (to a directory that looks like a git dir) used to be followed:
    root created hooks/ in its target. The planting run's own git scan moves it aside in a git dir (a
    symlink made during the run); one directly among the submodule git dirs, or planted where no scan saw
    it (by a sandbox still running beside; here by the test), is refused, naming the link; removing it
    unblocks the workdir."""
    (outside / "HEAD").write_text("ref: refs/heads/main\n")
    await git_init(workspace)
    if where == "modules_entry":
        link = workspace / ".git" / "modules" / "evil"
        script = f"mkdir -p .git/modules && ln -s {outside} .git/modules/evil"
    elif where == "modules_dir":
        link = workspace / ".git" / "modules"
        script = f"ln -s {outside.parent} .git/modules"
    else:
        (workspace / ".git" / "modules" / "sub").mkdir(parents=True)
        (workspace / ".git" / "modules" / "sub" / "HEAD").write_text("ref: refs/heads/main\n")
        # Protected from the start (it exists): plant one level deeper, where the walk looks next.
        link = workspace / ".git" / "modules" / "sub" / "modules"
        script = f"ln -s {outside.parent} .git/modules/sub/modules"
    r = await plant(sup, workspace, script)
    if where == "modules_dir":  # (one among the submodule git dirs the mounts walk is left for the refusal)
        assert str(link) in [p for p, _ in r.quarantined], r.quarantined
        assert not link.is_symlink()
        os.symlink(outside.parent, link)
    with pytest.raises(SandboxSetupError) as info:
        await sup.run(["/bin/true"], policy=policy(workspace))
    assert not (outside / "hooks").exists(), "root created a directory through a planted symlink"
    assert not (outside / "config").exists()
    assert info.value.path == str(link)
    assert "remove" in str(info.value)
    link.unlink()
    r = await sup.run(["/bin/true"], policy=policy(workspace))
    assert r.exit_code == 0


# --- availability: what a sandbox plants must not stop the supervisor

PLANTS = {
    "fifo_config": "mkdir -p .git && mkfifo .git/config",
    "socket_config": (
        f"mkdir -p .git && {PY} -c 'import socket; socket.socket(socket.AF_UNIX).bind(\".git/config\")'"
    ),
    "huge_sparse_config": "mkdir -p .git && truncate -s 1G .git/config",
    "symlink_loop_in_modules": (
        "git init -q . 2>/dev/null || mkdir -p .git; mkdir -p .git/modules && cd .git/modules && "
        "for i in 0 1 2 3 4 5 6 7 8 9; do ln -s . l$i; done"
    ),
    "dir_loop_in_modules": (
        "mkdir -p .git/modules/a && cd .git/modules/a && for i in 0 1 2 3 4 5 6 7; do ln -s .. up$i; done"
    ),
    # The 100,000 entries are made before the timed part (making them takes ~15 s on this disk; PREPARE),
    # after the two exits that start pre-forking for the key: the timed part only asks for sandboxes.
    "many_entries_in_modules": "",
}


#: Made before the timed part, also from inside.
PREPARE = {
    "many_entries_in_modules": (
        f"mkdir -p .git/modules && {PY} -c '"
        'import os\nfor i in range(100_000): open(f".git/modules/f{i}", "w").close()\''
    ),
}


class Watchdog:
    """Once armed, after `deadline` seconds, release whatever the host side may be stuck on in `workspace`:
    open a FIFO at .git/config for writing (a blocked reader returns), remove .git/modules; again and again
    until the fixture ends, after the supervisor has closed. Keeps the test bounded even without the fix (the
    fix is that nothing waits for this)."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self._armed = threading.Event()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def arm(self, deadline: float) -> None:
        self._deadline = deadline
        self._armed.set()

    def stop(self) -> None:
        self.arm(0)
        time.sleep(0.2)  # a last round of releases
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        self._armed.wait()
        if self._stop.wait(self._deadline):
            return
        config = self.workspace / ".git" / "config"
        while not self._stop.wait(0.05):
            shutil.rmtree(self.workspace / ".git" / "modules", ignore_errors=True)
            with contextlib.suppress(OSError):
                os.close(os.open(config, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def watchdog(workspace: Path) -> Iterator[Watchdog]:
    """Request it before `sup`: it is then torn down after the supervisor (whose close may need it)."""
    w = Watchdog(workspace)
    yield w
    w.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", sorted(PLANTS))
async def test_planted_paths_do_not_stop_another_tenants_timeout(
    watchdog: Watchdog, sup: Supervisor, workspace: Path, outside: Path, kind: str
) -> None:
    """Tenant B's 3 s timeout fires on time (within 0.5 s) while the attacker plants `kind` in its own
    workdir and keeps asking for sandboxes there (the on-the-spot build in the fork server, and, from the
    third run on, the pre-forked path whose fingerprint used to run on the event loop)."""
    attacker = workspace
    tenant = outside
    # Two plain exits first: from then on the supervisor pre-forks sandboxes for the attacker's key.
    for _ in range(2):
        r = await sup.run(["/bin/true"], policy=policy(attacker))
        assert r.exit_code == 0
    if kind in PREPARE:
        await plant(sup, attacker, PREPARE[kind])
    victim = await sup.start(["/bin/sleep", "30"], policy=profiles.workspace_write(tenant, timeout=3))
    started = time.monotonic()
    refused: list[str] = []
    reported: list[str] = []

    async def attack() -> None:
        if PLANTS[kind]:
            # The post-run git scan may move the plant aside (a FIFO, socket or huge file at the top
            # .git/config, which it checks as a git dir whatever it holds): reported, not refused.
            reported.extend(p for p, _ in (await plant(sup, attacker, PLANTS[kind])).quarantined)
        for _ in range(4):
            try:
                await sup.run(["/bin/true"], policy=policy(attacker))
            except SandboxSetupError as err:
                refused.append(str(err))

    watchdog.arm(12)
    async with anyio.create_task_group() as tg:
        tg.start_soon(attack)
        result = await victim.wait()
        ended = time.monotonic()
    assert result.violation is not None
    assert result.violation.kind == "wall_time"
    assert 2.8 < ended - started < 3.5, f"the tenant's 3 s timeout fired after {ended - started:.2f} s"
    assert refused or reported, "the planted path was neither refused nor reported"
    assert all(p.startswith(str(attacker / ".git")) for p in reported), reported
    for msg in refused:
        assert str(attacker / ".git") in msg, msg
        assert "remove" in msg, msg


async def test_char_device_cannot_be_planted(sup: Supervisor, workspace: Path) -> None:
    """The device variant of the plant: mknod is refused inside (no CAP_MKNOD over the host's devices), so
    the socket and FIFO cases above stand for it."""
    r = await sup.run([SH, "-c", "mkdir -p .git && mknod .git/config c 1 3"], policy=policy(workspace))
    assert r.exit_code != 0
    assert not (workspace / ".git" / "config").exists()


@pytest.mark.parametrize("how", ["timeout", "sigterm"])
def test_cli_exits_on_time_with_a_fifo_planted(watchdog: Watchdog, workspace: Path, how: str) -> None:
    """The CLI in a workdir whose .git/config is a FIFO (planted by an earlier run): it refuses (125,
    naming the path) or runs, but it never hangs past --timeout, and SIGTERM ends it."""
    (workspace / ".git").mkdir()
    os.mkfifo(workspace / ".git" / "config")
    watchdog.arm(10)
    started = time.monotonic()
    proc = subprocess.Popen(
        [*CORRAL, "run", "--timeout", "3", "--", "/bin/sleep", "30"],
        cwd=workspace,
        stderr=subprocess.PIPE,
        text=True,
    )
    if how == "sigterm":
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - started
    assert took < (3.5 if how == "timeout" else 2.5), f"corral took {took:.1f} s"
    if proc.returncode == 125:
        assert str(workspace / ".git" / "config") in err
    else:  # SIGTERM came while corral was still starting up, before it forwards signals
        assert how == "sigterm"
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err


async def test_bounds_allow_a_real_repository_with_submodules(sup: Supervisor, workspace: Path) -> None:
    """The walk's bounds are far above what git makes: 200 submodule git dirs (nested names) still run, and
    each one's hooks and config are protected."""
    await git_init(workspace)
    modules = workspace / ".git" / "modules"
    for i in range(200):
        gitdir = modules / f"group{i % 10}" / f"sub{i}"
        (gitdir / "hooks").mkdir(parents=True)
        (gitdir / "HEAD").write_text("ref: refs/heads/main\n")
        (gitdir / "config").write_text("[core]\n")
    r = await sup.run(
        [SH, "-c", "echo x >> .git/modules/group3/sub13/config; touch .git/modules/group7/sub187/hooks/x"],
        policy=policy(workspace),
    )
    assert r.exit_code != 0
    assert (modules / "group3" / "sub13" / "config").read_text() == "[core]\n"
    assert not (modules / "group7" / "sub187" / "hooks" / "x").exists()


# --- corral's own executable in a writable root

_OWN_INSTALL = r"""
import os, sys, anyio
import supervisor
from policies import profiles
from supervisor import Supervisor

workdir, marker, how = sys.argv[1], sys.argv[2], sys.argv[3]
init = os.path.join(os.path.dirname(supervisor.__file__), "sandbox", "corral-init")
payload = f"#!/bin/sh\necho ran-as-$(id -u) > {marker}\n"
plant = {
    # the usual way to replace a file: write a new one beside it, rename it over
    "rename": f"printf '{payload}' > {init}.new && chmod 755 {init}.new && mv {init}.new {init}",
    # in place: refused while any init runs the file (ETXTBSY), and this sandbox's own init runs it
    "in place": f"printf '{payload}' > {init}; echo rc=$?",
}[how]

async def main():
    async with Supervisor(prefork=0) as sup:
        pol = profiles.workspace_write(workdir, timeout=30)
        r = await sup.run(["/bin/sh", "-c", plant], policy=pol)
        print("plant", r.exit_code, r.stdout.decode(), r.stderr.decode(), flush=True)
        r = await sup.run(["/bin/sh", "-c", "echo next-ran"], policy=pol)
        print("next", r.exit_code, r.stdout.decode(), flush=True)

anyio.run(main)
"""


@pytest.mark.parametrize("how", ["rename", "in place"])
def test_corral_installed_in_a_writable_root_cannot_be_replaced_for_the_next_spawn(
    workspace: Path, outside: Path, how: str
) -> None:
    """corral installed where a sandbox may write (a project's virtualenv in its workdir, here a copy of the
    package on PYTHONPATH): a command replaced `corral-init` there, and the fork server executed the
    replacement for the next spawn, outside any sandbox (as root under a root caller: the marker file
    appeared outside the sandbox's roots). The fork server now executes the init it opened at its start."""
    pkg = workspace / "venv" / "site-packages"
    root = Path(__file__).resolve().parents[2]
    for name in ("supervisor", "policies", "exporters"):
        shutil.copytree(root / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    marker = outside / "ran-outside"
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    p = subprocess.run(
        [sys.executable, "-c", _OWN_INSTALL, str(workspace), str(marker), how],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=str(outside),
    )  # fmt: skip
    assert "plant 0" in p.stdout, (p.stdout, p.stderr)
    assert not marker.exists(), f"the planted init ran outside the sandbox: {marker.read_text()!r}"
    assert "next 0 next-ran" in p.stdout, (p.stdout, p.stderr)


_OWN_PYTHON = r"""
import os, sys, anyio
from policies import profiles
from supervisor import PIPE, Supervisor

workdir, marker, out = sys.argv[1], sys.argv[2], sys.argv[3]
python = sys.executable  # <workdir>/venv/bin/python: a link to the real interpreter, as a virtualenv's is
payload = f"#!/bin/sh\\necho ran-as-$(id -u) > {marker}\\n"
plant = f"rm {python} && printf '{payload}' > {python} && chmod 755 {python}"

async def main():
    async with Supervisor(prefork=0) as sup:
        pol = profiles.workspace_write(workdir, timeout=30)
        r = await sup.run(["/bin/sh", "-c", plant], policy=pol, stdout=PIPE)
        print("plant", r.exit_code, r.stderr.decode(), flush=True)
        # A file given as stdout: the supervisor starts its stdio helper now, after the plant.
        with open(out, "w") as f:
            r = await sup.run(["/bin/sh", "-c", "echo next-ran"], policy=pol, stdout=f.fileno())
        print("next", r.exit_code, flush=True)

anyio.run(main)
"""


def test_a_virtualenvs_python_replaced_in_a_writable_root_is_not_run_by_a_later_helper(
    workspace: Path, outside: Path
) -> None:
    """The supervisor's stdio helpers start when the first file given as stdio needs one, possibly after
    sandboxes ran, and ran `sys.executable` by its path: a virtualenv's `bin/python` in the workdir, which
    a command replaced with its own program; the supervisor ran it (as root under a root caller; the marker
    appeared outside the sandbox's roots). The interpreter is now pinned by an fd opened at import."""
    venv_bin = workspace / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(os.path.realpath(sys.executable))
    root = Path(__file__).resolve().parents[2]
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *site])}
    marker, out = outside / "ran-outside", outside / "out.txt"
    p = subprocess.run(
        [str(venv_bin / "python"), "-c", _OWN_PYTHON, str(workspace), str(marker), str(out)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=str(outside),
    )  # fmt: skip
    assert "plant 0" in p.stdout, (p.stdout, p.stderr)
    assert not marker.exists(), f"the planted interpreter ran outside the sandbox: {marker.read_text()!r}"
    assert "next 0" in p.stdout, (p.stdout, p.stderr)
    assert out.read_text() == "next-ran\n"


_LATER_PYTHON = r"""
import os, sys, anyio
from policies import profiles
from supervisor import PIPE, Supervisor

workdir, marker, out, plant_kind, started = sys.argv[1:6]
python = sys.executable  # <workdir>/venv/bin/python: a link to the real interpreter, as a virtualenv's is
venv = os.path.dirname(os.path.dirname(python))
lib = f"lib/python{sys.version_info.major}.{sys.version_info.minor}"
if plant_kind == "interpreter":
    payload = f"#!/bin/sh\\necho ran-as-$(id -u) > {marker}\\n"
    plant = f"rm {python} && printf '{payload}' > {python} && chmod 755 {python}"
else:
    # The virtualenv's pyvenv.cfg, beside its bin/, names the base interpreter's home: Python looks for it
    # next to the path it was started by (argv[0]), and takes its standard library from there, the
    # `encodings` package first of all, before any of corral's code runs.
    code = [
        "import posix",
        f"fd = posix.open('{marker}', posix.O_WRONLY | posix.O_CREAT, 0o644)",
        "posix.write(fd, b'ran-as-%d' % posix.getuid())",
    ]
    lines = " ".join(f'"{line}"' for line in code)
    plant = (
        f"mkdir -p {venv}/evil/bin {venv}/evil/{lib}/encodings && : > {venv}/evil/{lib}/os.py && "
        f"printf '%s\\n' {lines} > {venv}/evil/{lib}/encodings/__init__.py && "
        f"printf 'home = {venv}/evil/bin\\n' > {venv}/pyvenv.cfg"
    )

async def main():
    async with Supervisor(prefork=0) as sup:
        pol = profiles.workspace_write(workdir, timeout=30)
        r = await sup.run(["/bin/sh", "-c", plant], policy=pol, stdout=PIPE)
        print("plant", r.exit_code, r.stderr.decode(), flush=True)
        if started == "stdio helper":
            # A file given as stdout: the supervisor starts its stdio helper now, after the plant.
            with open(out, "w") as f:
                r = await sup.run(["/bin/sh", "-c", "echo next-ran"], policy=pol, stdout=f.fileno())
            print("next", r.exit_code, flush=True)
    if started == "fork server":
        # A later Supervisor of the same process (an agent's next task) starts a fork server of its own.
        async with Supervisor(prefork=0) as sup:
            with open(out, "w") as f:
                r = await sup.run(["/bin/sh", "-c", "echo next-ran"], policy=pol, stdout=f.fileno())
            print("next", r.exit_code, flush=True)

anyio.run(main)
"""


@pytest.mark.parametrize(
    ("plant", "started"),
    [("interpreter", "fork server"), ("pyvenv.cfg", "fork server"), ("pyvenv.cfg", "stdio helper")],
)
def test_a_virtualenv_changed_in_a_writable_root_is_not_run_by_a_later_fork_server_or_helper(
    workspace: Path, outside: Path, plant: str, started: str
) -> None:
    """A supervisor whose interpreter is a virtualenv's `bin/python` in the workdir (a project's `.venv`)
    starts a fork server for each Supervisor, and stdio helpers when a file given as stdio first needs one,
    possibly after sandboxes ran. The fork server was executed by that path, so a command that replaced it
    had its program run as the supervisor's user (root here: the marker appeared outside the sandbox's
    roots); the helpers executed a pinned fd, but with that path as argv[0], from which Python finds
    `pyvenv.cfg` and takes its standard library from the `home` it names: a command that wrote one made
    root import its `encodings` package. Both now execute the base interpreter pinned by an fd at import,
    under its own path (no pyvenv.cfg in the workdir is read)."""
    venv_bin = workspace / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(os.path.realpath(sys.executable))
    root = Path(__file__).resolve().parents[2]
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *site])}
    marker, out = outside / "ran-outside", outside / "out.txt"
    args = [str(workspace), str(marker), str(out), plant, started]
    p = subprocess.run(
        [str(venv_bin / "python"), "-c", _LATER_PYTHON, *args],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=str(outside),
    )  # fmt: skip
    assert "plant 0" in p.stdout, (p.stdout, p.stderr)
    assert not marker.exists(), f"the planted program ran outside the sandbox: {marker.read_text()!r}"
    assert "next 0" in p.stdout, (p.stdout, p.stderr)
    assert out.read_text() == "next-ran\n"


# --- a symlink into a hung mount, below another policy's writable root


@pytest.fixture
def hung_mount(workspace: Path) -> Iterator[Path]:
    """A FUSE mount of the host (made here as root, standing for a hung NFS or autofs mount) whose server
    never answers: any lookup in it waits until the connection is aborted. Aborted after 10 s (its fd
    closed: the waiting lookups fail with ENOTCONN), unmounted at the end."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mnt = workspace.parent / f"{workspace.name}-hung"
    mnt.mkdir()
    fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = f"fd={fuse},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"corral-test-hung", str(mnt).encode(), b"fuse", 0, opts) != 0:
        os.close(fuse)
        mnt.rmdir()
        pytest.fail(f"mount(fuse): {os.strerror(ctypes.get_errno())}")
    closed = threading.Event()

    def abort() -> None:
        if not closed.wait(10):
            os.close(fuse)
            closed.set()

    thread = threading.Thread(target=abort, daemon=True)
    thread.start()
    try:
        yield mnt
    finally:
        if not closed.is_set():
            closed.set()
            os.close(fuse)
        thread.join()
        libc.umount2(str(mnt).encode(), 2)  # MNT_DETACH
        mnt.rmdir()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["a missing denied name", "a readable root"])
async def test_a_link_into_a_hung_mount_below_another_policys_root_does_not_stop_a_timeout(
    sup: Supervisor, workspace: Path, outside: Path, hung_mount: Path, path: str
) -> None:
    """Policy B (workdir elsewhere) hides a name, or reads a directory, below the attacker's writable root
    (as every default profile hides `~/.config/gcloud` and the attacker's policy has the home as its
    workdir). The attacker replaces the directory on its way with a symlink into a hung host mount (an
    NFS server gone). B's pre-forked sandbox was checked on the event loop by an lstat of the path, which
    followed the link and waited there: another tenant's 3 s timeout fired after 10 s, when the mount was
    aborted. Now such a path is checked with no symlink followed on the way; B's own request waits in a
    worker thread (and the fork server), not on the loop."""
    attacker = workspace
    (attacker / "sub" / "data").mkdir(parents=True)
    victim_dir = outside / "b"
    victim_dir.mkdir()
    if path == "a readable root":
        b = profiles.workspace_write(victim_dir, allow_read=[str(attacker / "sub" / "data")], timeout=20)
    else:
        b = profiles.workspace_write(victim_dir, deny=[str(attacker / "sub" / "gcloud")], timeout=20)
    for _ in range(3):  # pre-forking for B's key, each checked since
        r = await sup.run(["/bin/true"], policy=b)
        assert r.exit_code == 0
    await plant(sup, attacker, f"mv sub sub.real && ln -s {hung_mount}/x sub")
    tenant = outside / "t"
    tenant.mkdir()
    victim = await sup.start(["/bin/sleep", "30"], policy=profiles.workspace_write(tenant, timeout=3))
    started = time.monotonic()

    async def ask() -> None:
        with contextlib.suppress(SandboxSetupError):  # refused (the link), once the mount is aborted
            await sup.run(["/bin/true"], policy=b)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        result = await victim.wait()
        ended = time.monotonic()
    assert result.violation is not None
    assert result.violation.kind == "wall_time"
    assert 2.8 < ended - started < 3.5, f"the tenant's 3 s timeout fired after {ended - started:.2f} s"


@pytest.mark.timeout(120)
@pytest.mark.xfail(
    strict=True,
    reason="GAP: the fork server resolves a policy's host paths (denied names, readable roots) following "
    "the symlinks on their way, one spawn at a time: a link into a hung mount, planted below another "
    "policy's writable root, holds every tenant's spawn until the mount answers "
    "(docs/security.md, Known gaps)",
)
async def test_a_link_into_a_hung_mount_does_not_hold_another_tenants_spawn(
    workspace: Path, outside: Path, hung_mount: Path
) -> None:
    """As above, with sandboxes built on the spot (prefork=0, as `corral run` does): B's request makes the
    fork server look its denied path up, through the planted link, and tenant C's spawn waits behind it."""
    attacker = workspace
    (attacker / "sub").mkdir()
    b_dir, c_dir = outside / "b", outside / "c"
    b_dir.mkdir()
    c_dir.mkdir()
    b = profiles.workspace_write(b_dir, deny=[str(attacker / "sub" / "gcloud")], timeout=20)
    c = profiles.workspace_write(c_dir, timeout=20)
    async with Supervisor(max_concurrency=16, prefork=0) as sup:
        for _ in range(2):
            assert (await sup.run(["/bin/true"], policy=b)).exit_code == 0
            assert (await sup.run(["/bin/true"], policy=c)).exit_code == 0
        await plant(sup, attacker, f"mv sub sub.real && ln -s {hung_mount}/x sub")

        async def ask() -> None:
            with contextlib.suppress(SandboxSetupError):
                await sup.run(["/bin/true"], policy=b)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await anyio.sleep(0.5)
            started = time.monotonic()
            r = await sup.run(["/bin/true"], policy=c)
            took = time.monotonic() - started
    assert r.exit_code == 0
    assert took < 3, f"tenant C's spawn waited {took:.1f} s behind the attacker's plant"
