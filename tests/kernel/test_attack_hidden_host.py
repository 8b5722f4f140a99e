"""A denied file that the HOST replaces while a sandbox runs stays hidden from that sandbox.

Editors, `passwd` and credential helpers (`git credential-store`: a `.lock` file renamed over the store)
write a new file and rename it over the old one; the kernel then detaches every mount on the old dentry, in
every mount namespace, so a hiding mount made on the host's dentries lets sandboxes already running read the
new file. The view shows the parent of such a file through an overlay of its own (mounts.overlay_roots),
whose dentries the host's renames do not touch. Each test races a reader INSIDE the sandbox (a tight loop
opening the denied name) against the host replacing it as fast as it can, for a bounded time, and checks
that no content the host wrote there was ever read. Without the overlay the reader wins within
milliseconds.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from policies import Policy, profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel

#: Opens each path given in a tight loop for SECS seconds (after writing `started`), then prints the loop
#: count and every distinct content (or errno) it read.
READER = r"""
import os, sys, time
paths = sys.argv[1:]
seen = set()
n = 0
open("started", "w").close()
end = time.monotonic() + float(os.environ.get("SECS", "2.5"))
while time.monotonic() < end:
    for p in paths:
        try:
            with open(p, "rb") as f:
                seen.add(f.read(200))
        except OSError as e:
            seen.add(("errno %d" % e.errno).encode())
    n += 1
print(n)
for s in sorted(seen):
    print(s)
"""

#: The host's side: how long it keeps replacing the file (the reader runs longer).
CHURN_S = 1.5


def marker() -> str:
    return f"TOPSECRET-{uuid.uuid4().hex}"


async def race(
    sup: Supervisor, pol: Policy, workspace: Path, paths: list[Path], churn: Callable[[float], int]
) -> tuple[int, int, bytes]:
    """Run READER on `paths` under `pol` while `churn(deadline)` replaces them on the host (in a thread,
    once the reader has started). Returns (reader loops, host replacements, the reader's output)."""
    (workspace / "reader.py").write_text(READER)
    out: list[bytes] = []

    async def child() -> None:
        r = await sup.run(["python3", "reader.py", *map(str, paths)], policy=pol)
        assert r.exit_code == 0, r.stderr
        out.append(r.stdout)

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
        with anyio.fail_after(15):
            while not (workspace / "started").exists():  # noqa: ASYNC110 - polling the host side
                await anyio.sleep(0.01)
        replaced = await anyio.to_thread.run_sync(churn, time.monotonic() + CHURN_S)
    loops = int(out[0].split(b"\n", 1)[0])
    return loops, replaced, out[0]


def rename_over(path: Path, secret: str) -> Callable[[float], int]:
    """An editor's or a credential helper's write: a new file next to it, renamed over it."""

    def churn(until: float) -> int:
        i = 0
        while time.monotonic() < until:
            tmp = path.with_name(path.name + ".lock")
            tmp.write_text(f"{secret}-{i}")
            os.rename(tmp, path)
            i += 1
        return i

    return churn


def assert_never_read(loops: int, replaced: int, out: bytes, secret: str) -> None:
    assert loops > 100, out  # the reader did loop through the churn
    assert replaced > 50
    assert secret.encode() not in out, out


@pytest.fixture
def home(outside: Path) -> Path:
    """A directory the sandbox may only read, holding a denied file (so the view overlays it)."""
    (outside / "token").write_text("old, hidden anyway\n")
    return outside


def token_policy(workspace: Path, home: Path, *extra: Path) -> Policy:
    return profiles.workspace_write(workspace, deny=[home / "token", *extra], timeout=20)


async def test_a_denied_file_renamed_over_on_the_host_in_a_tight_loop(
    sup: Supervisor, workspace: Path, home: Path
) -> None:
    secret = marker()
    loops, replaced, out = await race(
        sup, token_policy(workspace, home), workspace, [home / "token"], rename_over(home / "token", secret)
    )
    assert_never_read(loops, replaced, out, secret)
    assert (home / "token").read_text().startswith(secret)  # checked from outside: the host did write it


async def test_a_denied_file_removed_and_recreated_on_the_host(
    sup: Supervisor, workspace: Path, home: Path
) -> None:
    secret = marker()

    def churn(until: float) -> int:
        i = 0
        while time.monotonic() < until:
            os.unlink(home / "token")
            (home / "token").write_text(f"{secret}-{i}")
            i += 1
        return i

    loops, replaced, out = await race(sup, token_policy(workspace, home), workspace, [home / "token"], churn)
    assert_never_read(loops, replaced, out, secret)


async def test_a_denied_directory_replaced_on_the_host(sup: Supervisor, workspace: Path, home: Path) -> None:
    secret = marker()
    (home / "keys").mkdir()
    (home / "keys" / "id.pem").write_text("old\n")

    def churn(until: float) -> int:
        i = 0
        while time.monotonic() < until:
            new = home / f"keys.new{i}"
            new.mkdir()
            (new / "id.pem").write_text(f"{secret}-{i}")
            shutil.rmtree(home / "keys")
            os.rename(new, home / "keys")
            i += 1
        return i

    pol = token_policy(workspace, home, home / "keys")
    loops, replaced, out = await race(sup, pol, workspace, [home / "keys" / "id.pem"], churn)
    assert_never_read(loops, replaced, out, secret)
    assert (home / "keys" / "id.pem").read_text().startswith(secret)


async def test_the_parent_of_a_denied_file_renamed_on_the_host(
    sup: Supervisor, workspace: Path, home: Path
) -> None:
    # The host moves the directory holding a denied file away and makes a new one with a new secret.
    secret = marker()
    (home / "cfg").mkdir()
    (home / "cfg" / "creds").write_text("old\n")

    def churn(until: float) -> int:
        i = 0
        while time.monotonic() < until:
            os.rename(home / "cfg", home / f"cfg.old{i}")
            (home / "cfg").mkdir()
            (home / "cfg" / "creds").write_text(f"{secret}-{i}")
            i += 1
        return i

    pol = token_policy(workspace, home, home / "cfg" / "creds")
    loops, replaced, out = await race(sup, pol, workspace, [home / "cfg" / "creds"], churn)
    assert_never_read(loops, replaced, out, secret)


async def test_the_default_credential_store_rewritten_by_the_host(
    sup: Supervisor, workspace: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default profile, with a home the sandbox may read: the user's own `git push` on the host has
    # `git credential-store` rewrite ~/.git-credentials (a .lock renamed over it) while an agent runs.
    monkeypatch.setenv("HOME", str(outside))
    store = outside / ".git-credentials"
    store.write_text("https://user:old@example.invalid\n")
    pol = profiles.workspace_write(workspace, timeout=20)
    assert str(store) in pol.filesystem.deny
    secret = marker()
    loops, replaced, out = await race(sup, pol, workspace, [store], rename_over(store, secret))
    assert_never_read(loops, replaced, out, secret)


async def test_a_denied_file_the_host_creates_during_the_run(
    sup: Supervisor, workspace: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(outside))
    (outside / ".netrc").write_text("machine old\n")  # an existing denied file: the home is overlaid
    (outside / ".config").mkdir()
    store = outside / ".git-credentials"
    pol = profiles.workspace_write(workspace, timeout=20)
    assert str(store) in pol.filesystem.deny
    assert str(outside / ".config" / "gh") in pol.filesystem.deny
    secret = marker()

    # A first `git credential-store` (or `aws configure`, `docker login`) on the host while an agent runs:
    # the name is absent when the sandbox starts, and written before the sandbox first looks it up (a
    # lookup made earlier would leave a negative entry in the overlay that hides it until the kernel drops
    # it: nothing to rely on). The overlay's whiteout for the absent name hides it (mounts._whiteouts).
    wait_for_go = "i=0; while [ ! -e go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done"
    out: list[bytes] = []

    async def child() -> None:
        script = f"touch started; {wait_for_go}; cat {store} {outside}/.config/gh/hosts.yml"
        r = await sup.run(["/bin/sh", "-c", script], policy=pol)
        out.append(r.stdout + r.stderr)

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
        with anyio.fail_after(15):
            while not (workspace / "started").exists():  # noqa: ASYNC110 - polling the host side
                await anyio.sleep(0.05)
        rename_over(store, secret)(time.monotonic() + 0.05)
        (outside / ".config" / "gh").mkdir(parents=True)  # deeper: a directory under an existing one
        (outside / ".config" / "gh" / "hosts.yml").write_text(secret)
        (workspace / "go").touch()
    assert b"No such file" in out[0]
    assert secret.encode() not in out[0]
    assert store.read_text().startswith(secret)  # checked from outside: the host did write it


async def test_a_workdir_inside_the_overlaid_home_stays_writable_and_protected(
    sup: Supervisor, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The common case: the project is under the home that the view overlays. The workdir is bound back
    # from the host's tree over the overlay (writable, its .git protected, its own denied file hidden),
    # while ~/.netrc, rewritten by the host in a loop, stays hidden.
    monkeypatch.setenv("HOME", str(outside))
    netrc = outside / ".netrc"
    netrc.write_text("machine old\n")
    proj = outside / "proj"
    (proj / ".git" / "hooks").mkdir(parents=True)
    (proj / ".git" / "config").write_text("[core]\n")
    (proj / ".env").write_text("project secret\n")
    pol = profiles.workspace_write(proj, deny=[proj / ".env"], timeout=20)
    assert str(netrc) in pol.filesystem.deny
    script = "echo written > out.txt; cat .env; touch .git/hooks/x; grep overlay /proc/self/mountinfo"
    code, out = await run_sh(sup, pol, script)
    assert code == 0, out
    assert (proj / "out.txt").read_text() == "written\n"  # checked from outside: the write reached the host
    assert b"project secret" not in out
    assert not (proj / ".git" / "hooks" / "x").exists()
    assert f" {outside} ".encode() in out  # the home is overlaid (mountinfo's mount point field)
    secret = marker()
    loops, replaced, raced = await race(sup, pol, proj, [netrc], rename_over(netrc, secret))
    assert_never_read(loops, replaced, raced, secret)


async def run_sh(sup: Supervisor, pol: Policy, script: str) -> tuple[int, bytes]:
    r = await sup.run(["/bin/sh", "-c", script + "; true"], policy=pol)
    return r.exit_code, r.stdout + r.stderr
