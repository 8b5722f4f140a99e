"""A denied path that did not exist when a sandbox was made ahead of its command, made since by the host or
by another sandbox: the next sandbox hides it.

The fingerprint and the Recheck of a pre-forked sandbox (supervisor/forkserver/_recheck.py) no longer look
at each missing credential path: the nearest directory above it stands for it while its ctime holds
(supervisor/sandbox/_absent.py). These tests make a missing denied path appear every way a name appears
(created, a chain of directories created, renamed into place, a symlink planted to where a secret is) on
the host's side and from inside another sandbox whose writable root holds it, and check from the sandbox
that serves the next request that the secret is hidden. A collapsed check that missed the change would
hand the request to the sandbox built before, whose view has no mount over the new name (white-box: a
ready sandbox with such a Recheck is asserted first, and it must not be the one that ran).
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import SandboxSetupError, Supervisor
from supervisor.sandbox import _absent
from tests.kernel.conftest import SCRATCH

pytestmark = pytest.mark.kernel

SECRET = "s3cr3t-missing-then-made"
#: Denied names below `home` (as the default profiles' ~/.netrc, ~/.ssh, ~/.config/gh...).
NAMES = (".netrc", ".ssh", ".config/gh", ".local/share/keyrings")


@pytest.fixture
def home() -> Iterator[Path]:
    """A home directory outside the workspace (a host path for the policy), readable by sandboxes; its
    .config exists, the denied names do not; `stash` holds a secret to rename or link into place."""
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    h = SCRATCH / f"home-{uuid.uuid4().hex[:10]}"
    (h / ".config").mkdir(parents=True)
    (h / "stash").mkdir()
    (h / "stash" / "id_rsa").write_text(SECRET)
    os.chmod(h, 0o777)  # another sandbox writes here (a root caller's runs as the owner: root)
    os.chmod(h / "stash", 0o777)
    yield h
    shutil.rmtree(h, ignore_errors=True)


#: How each change is made, as shell run in `home` (by the host: sh; by a sandbox: its command), and the
#: file whose content must then be hidden from the policy that denies NAMES.
CHANGES: dict[str, tuple[str, str]] = {
    "a credential file created": (f"echo {SECRET} > .netrc", ".netrc"),
    "a chain of directories created": (
        f"mkdir -p .local/share/keyrings; echo {SECRET} > .local/share/keyrings/x", ".local/share/keyrings/x"
    ),
    "created in a nearer directory": (f"mkdir .config/gh && echo {SECRET} > .config/gh/x", ".config/gh/x"),
    "a directory renamed into place": ("mv stash .ssh", ".ssh/id_rsa"),
    "a symlink planted to a secret": ("ln -s stash/id_rsa .netrc", "stash/id_rsa"),
}  # fmt: skip


def _policy(workspace: Path, home: Path) -> Policy:
    return profiles.workspace_write(workspace, deny=[str(home / n) for n in NAMES])


async def _ready_with_groups(sup: Supervisor, pol: Policy, home: Path) -> list[int]:
    """Run twice, wait for the pre-forked sandboxes, and check (white-box) that their Recheck has `home`
    standing for its missing denied paths; their pids."""
    await anyio.sleep(2 * _absent.MARGIN_NS / 1e9)  # the home's ctime older than the margin
    for _ in range(2):
        assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
    pool = sup._prefork
    assert pool is not None
    with anyio.fail_after(10):
        while sum(len(v) for v in pool._ready.values()) < pool.per_key:  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.005)
    stubs = [stub for stubs in pool._ready.values() for stub in stubs]
    for stub in stubs:
        assert stub.recheck is not None, "a ready sandbox without a Recheck"
        assert _absent.relative(str(home)) in stub.recheck.groups, "the home does not stand for its names"
    return [stub.pid for stub in stubs]


async def _hidden(sup: Supervisor, pol: Policy, path: Path, stubs: list[int]) -> None:
    """The secret at `path` is not shown to the next sandbox of `pol` (a refusal to run is fine too), which
    is not one of the sandboxes built before the change; nor to the one after, a sandbox built ahead since
    the change (the fork server had a view packed for the paths as they were: it must not reuse it)."""
    try:
        r = await sup.run(["/bin/cat", str(path)], policy=pol)
    except SandboxSetupError:
        return
    assert SECRET.encode() not in r.stdout, "a secret made since the sandbox was built is readable"
    assert r.pid not in stubs, "a sandbox built before the change served the request"
    pool = sup._prefork
    assert pool is not None
    for _ in range(4):  # until a sandbox built ahead since the change serves one (older ones go first)
        with anyio.fail_after(10):
            while not (since := [s.pid for ss in pool._ready.values() for s in ss if s.pid not in stubs]):  # noqa: ASYNC110
                await anyio.sleep(0.005)
        r = await sup.run(["/bin/cat", str(path)], policy=pol)
        assert SECRET.encode() not in r.stdout, "a sandbox built since the change shows the secret"
        if r.pid in since:
            return
    raise AssertionError("no sandbox built ahead since the change served a request")


@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_made_by_the_host(workspace: Path, home: Path, name: str) -> None:
    change, secret = CHANGES[name]
    pol = _policy(workspace, home)
    async with Supervisor() as sup:
        stubs = await _ready_with_groups(sup, pol, home)
        await anyio.run_process(["/bin/sh", "-c", change], cwd=home)
        assert SECRET in (home / secret).read_text()
        await _hidden(sup, pol, home / secret, stubs)


@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_made_by_the_host_while_a_sandbox_runs(workspace: Path, home: Path, name: str) -> None:
    """The change is made while a sandbox of the policy runs: at its exit the next sandbox is built ahead
    with the fork server's view packed before the change still cached (it must not be reused for it)."""
    change, secret = CHANGES[name]
    pol = _policy(workspace, home)
    async with Supervisor() as sup:
        stubs = await _ready_with_groups(sup, pol, home)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(sup.run, ["/bin/sleep", "0.3"], policy=pol))
            await anyio.sleep(0.1)
            await anyio.run_process(["/bin/sh", "-c", change], cwd=home)
        assert SECRET in (home / secret).read_text()
        await _hidden(sup, pol, home / secret, stubs)


@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_made_by_another_sandbox(workspace: Path, home: Path, name: str) -> None:
    """A sandbox whose workdir is `home` makes the name; the policy denying it had sandboxes ready."""
    change, secret = CHANGES[name]
    pol = _policy(workspace, home)
    other = profiles.workspace_write(home)
    async with Supervisor() as sup:
        stubs = await _ready_with_groups(sup, pol, home)
        r = await sup.run(["/bin/sh", "-c", change], policy=other)
        assert r.exit_code == 0, r.stderr
        assert SECRET in (home / secret).read_text()
        await _hidden(sup, pol, home / secret, stubs)


async def test_made_by_the_host_with_the_fork_servers_cached_view(workspace: Path, home: Path) -> None:
    """Without pre-forked sandboxes, the fork server's packed view of (policy, workdir) is reused while its
    fingerprint holds: a name made since is hidden all the same."""
    pol = _policy(workspace, home)
    async with Supervisor(prefork=0) as sup:
        await anyio.sleep(2 * _absent.MARGIN_NS / 1e9)
        for _ in range(3):
            assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        (home / ".netrc").write_text(SECRET)
        r = await sup.run(["/bin/cat", str(home / ".netrc")], policy=pol)
    assert SECRET.encode() not in r.stdout


@pytest.mark.parametrize("where", ["at the root", "one level down"])
async def test_made_by_the_sandbox_itself_in_its_workdir(workspace: Path, where: str) -> None:
    """A denied name in the writable root, missing, made by a sandbox of the policy itself: below the root
    its own lstat is no longer checked, its directory's ctime is (forkserver/_recheck.py)."""
    (workspace / "sub").mkdir()
    target = workspace / ".netrc" if where == "at the root" else workspace / "sub" / ".netrc"
    pol = profiles.workspace_write(workspace, deny=[str(target)])
    async with Supervisor() as sup:
        await anyio.sleep(2 * _absent.MARGIN_NS / 1e9)
        for _ in range(2):
            assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        pool = sup._prefork
        assert pool is not None
        with anyio.fail_after(10):
            while sum(len(v) for v in pool._ready.values()) < pool.per_key:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        stubs = [stub.pid for stubs in pool._ready.values() for stub in stubs]
        assert all(stub.recheck is not None for stubs_ in pool._ready.values() for stub in stubs_)
        r = await sup.run(["/bin/sh", "-c", f"echo {SECRET} > {target}"], policy=pol)
        assert r.exit_code == 0, r.stderr
        assert SECRET in target.read_text()
        await _hidden(sup, pol, target, [p for p in stubs if p != r.pid])
