"""The syscall-exit observer's denial reports (docs/denials.md: mounts, landlock, rlimit), each provoked
from inside a real sandbox on this kernel.

Each probe tries a refused action and prints the errno the kernel answered (the refusal holds; where it
matters the effect is checked from outside), and exactly one matching report (layer, operation, target)
must reach `Result.denials`, the `denied` event, the JSON and `corral_denials_total`
(test_denials.one_match). Failures that are no layer's (a file's own mode, a missing file) are not
reported. A supervisor without the observer (not root, no BTF, not built) lists the layers as
unobservable with the reason: test_denials_observed's last tests, tests/kernel/test_unprivileged.py and
the ../shared/v2vm run (docs/denials.md).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import Result, SandboxSetupError, Supervisor, _observer, _observing
from tests.kernel.test_denials import PY, Metric, observe, one_match

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.anyio,
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the observer knows x86_64's syscalls only"),
]

#: Each argument "label:python-expression" is evaluated in the sandbox; prints "label errno" (0: it
#: worked). Runs under python -I -S.
PROBE = textwrap.dedent(
    """
    import os, socket, sys
    for spec in sys.argv[1:]:
        label, _, expr = spec.partition(":")
        try:
            eval(expr)
            print(label, 0, flush=True)
        except OSError as e:
            print(label, e.errno, flush=True)
    """
)


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    async with Supervisor(max_concurrency=4, prefork=0) as s:
        if s._observing.observer is None:
            pytest.skip(f"no denial observer: {s._observing.reason}")
        yield s


async def probe(sup: Supervisor, policy: Policy, *specs: str) -> tuple[Result, list, Metric, dict[str, int]]:  # type: ignore[type-arg]
    result, events, metric = await observe(sup, [PY, "-I", "-S", "-c", PROBE, *specs], policy)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    seen = {}
    for line in result.stdout.decode().splitlines():
        label, err = line.split()
        seen[label] = int(err)
    return result, events, metric, seen


def restricted(workspace: Path, **fs: object) -> Policy:
    base = profiles.workspace_write(workspace)
    return dataclasses.replace(base, filesystem=dataclasses.replace(base.filesystem, **fs))


async def test_writes_outside_the_writable_roots_are_mount_denials(sup: Supervisor, workspace: Path) -> None:
    """Write, create, delete and rename outside the writable roots: the read-only view answers EROFS,
    each reported once as `mounts`/`write` with the path, and none happened (checked from outside)."""
    result, events, metric, seen = await probe(
        sup,
        profiles.workspace_write(workspace),
        "write:open('/etc/hostname', 'a')",
        "create:os.mkdir('/usr/corral-observed')",
        "delete:os.unlink('/etc/hostname')",
        "rename:os.rename('/etc/hostname', '/etc/hostname2')",
        "inside:open('" + str(workspace / "ok") + "', 'w')",
        "missing:open('/nonexistent/x')",
    )
    assert seen["write"] == seen["create"] == seen["delete"] == seen["rename"] == errno.EROFS
    assert seen["inside"] == 0
    assert seen["missing"] == errno.ENOENT  # no layer's: not reported
    # Checked from outside: nothing changed.
    assert [os.access(p, os.F_OK) for p in ("/etc/hostname", "/usr/corral-observed", "/etc/hostname2")] == [
        True,
        False,
        False,
    ]
    # open and unlink of the same path: one report (the same layer, operation and target), counted twice
    assert one_match(result, events, metric, ("mounts", "write", "/etc/hostname")).count == 2
    one_match(result, events, metric, ("mounts", "write", "/usr/corral-observed"))
    rename = one_match(result, events, metric, ("mounts", "write", "/etc/hostname -> /etc/hostname2"))
    assert "--allow-write /etc" in rename.hint
    assert {d.layer for d in result.denials} == {"mounts"}
    assert "mounts" not in dict(result.denials_unobservable)


async def test_a_protected_path_is_reported_as_such(sup: Supervisor, workspace: Path) -> None:
    """A hook written into the repository's .git/hooks (kept read-only inside the writable root)."""
    (workspace / ".git" / "hooks").mkdir(parents=True)
    hook = workspace / ".git" / "hooks" / "pre-commit"
    result, events, metric, seen = await probe(
        sup, profiles.workspace_write(workspace), f"hook:open('{hook}', 'w')"
    )
    assert seen["hook"] == errno.EROFS
    assert not hook.exists()
    d = one_match(result, events, metric, ("mounts", "write", str(hook)))
    assert ".git/hooks" in d.hint, d


async def test_repeats_fold_and_distinct_ones_are_bounded(sup: Supervisor, workspace: Path) -> None:
    """10,000 refusals of one path are one report with its count; 200 distinct paths are the kernel's
    64 at most, the rest counted as dropped, never sent."""
    code = textwrap.dedent(
        """
        import os
        for _ in range(10000):
            try: os.mkdir('/etc/corral-same')
            except OSError: pass
        for i in range(200):
            try: os.mkdir('/etc/corral-%d' % i)
            except OSError: pass
        """
    )
    result, events, metric = await observe(
        sup, [PY, "-I", "-S", "-c", code], profiles.workspace_write(workspace)
    )
    assert result.exit_code == 0, result.stderr
    same = one_match(result, events, metric, ("mounts", "write", "/etc/corral-same"))
    assert same.count == 10000
    observed = [d for d in result.denials if d.layer == "mounts"]
    assert len(observed) == _observing._observer.MAX_DISTINCT
    assert result.denials_dropped == 200 - (len(observed) - 1)
    assert len(events) == len(observed)


async def test_landlock_read_and_execute_refusals(sup: Supervisor, workspace: Path) -> None:
    """Outside the readable roots and the execute paths, Landlock answers EACCES: reported as `landlock`
    with the operation; a file's own mode (EACCES with no Landlock denial) is not reported."""
    shutil.copy("/bin/true", workspace / "mytrue")
    locked = workspace / "locked"
    locked.write_text("x")
    locked.chmod(0)
    policy = restricted(
        workspace,
        read=("/usr", "/lib", "/lib64", "/bin", str(workspace)),
        execute=("/usr", "/bin", "/lib", "/lib64"),
    )
    result, events, metric, seen = await probe(
        sup,
        policy,
        "read:open('/etc/hostname')",
        "exec:os.posix_spawn('" + str(workspace / "mytrue") + "', ['x'], {})",
        f"mode:open('{locked}')",
    )
    assert seen["read"] == seen["exec"] == seen["mode"] == errno.EACCES
    one_match(result, events, metric, ("landlock", "read", "/etc/hostname"))
    one_match(result, events, metric, ("landlock", "execute", str(workspace / "mytrue")))
    assert not [d for d in result.denials if d.target == str(locked)], result.denials


async def test_a_landlock_tcp_bind_refusal_names_the_port(sup: Supervisor, workspace: Path) -> None:
    """corral's TCP guard is in force only without a network namespace (not as root); the same kernel
    path is provoked here by the command's own Landlock layer handling BIND_TCP with no port allowed."""
    code = textwrap.dedent(
        """
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        attr = struct.pack("=QQ", 0, 1)  # handled_access_fs 0, handled_access_net BIND_TCP
        fd = libc.syscall(444, attr, len(attr), 0)
        assert fd >= 0, ctypes.get_errno()
        assert libc.syscall(446, fd, 0) == 0, ctypes.get_errno()
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 4567))
            print("bind 0")
        except OSError as e:
            print("bind", e.errno)
        """
    )
    result, events, metric = await observe(
        sup, [PY, "-I", "-S", "-c", code], profiles.workspace_write(workspace)
    )
    assert result.exit_code == 0, result.stderr.decode()
    assert result.stdout.split() == [b"bind", str(errno.EACCES).encode()]
    one_match(result, events, metric, ("landlock", "bind", "port 4567"))


async def test_emfile_at_the_fd_limit_is_an_rlimit_denial(sup: Supervisor, workspace: Path) -> None:
    base = profiles.workspace_write(workspace)
    policy = dataclasses.replace(base, resources=dataclasses.replace(base.resources, fds=32))
    code = textwrap.dedent(
        """
        import os
        fds = []
        try:
            while True:
                fds.append(os.open('/dev/null', 0))
        except OSError as e:
            print(e.errno, len(fds))
        """
    )
    result, events, metric = await observe(sup, [PY, "-I", "-S", "-c", code], policy)
    assert result.exit_code == 0, result.stderr.decode()
    err, _opened = result.stdout.split()
    assert int(err) == errno.EMFILE
    one_match(result, events, metric, ("rlimit", "open", "RLIMIT_NOFILE=32"))
    assert "rlimit" not in dict(result.denials_unobservable)


async def test_a_path_cannot_forge_a_line(sup: Supervisor, workspace: Path) -> None:
    result, events, metric, seen = await probe(
        sup, profiles.workspace_write(workspace), "nl:os.mkdir('/etc/a\\ncorral: denied nothing')"
    )
    assert seen["nl"] == errno.EROFS
    one_match(result, events, metric, ("mounts", "write", "/etc/a\\x0acorral: denied nothing"))


async def test_without_the_observer_the_layers_are_said_unobservable(workspace: Path) -> None:
    """Observer off by the caller (Supervisor(observe_denials=False), as an operator who does not want
    the host-wide tracepoint chooses): refusals hold, nothing is reported, no loader runs, and the Result
    says which layers could not be seen and why."""
    base = profiles.workspace_write(workspace)
    policy = dataclasses.replace(base, resources=dataclasses.replace(base.resources, fds=64))
    async with Supervisor(prefork=0, observe_denials=False) as sup:
        assert sup._observing.observer is None
        result, _events, _metric = await observe(
            sup, [PY, "-I", "-S", "-c", PROBE, "w:os.mkdir('/etc/x')"], policy
        )
    assert result.stdout.split() == [b"w", str(errno.EROFS).encode()]
    assert not [d for d in result.denials if d.layer == "mounts"]
    unobservable = dict(result.denials_unobservable)
    for layer in ("mounts", "landlock", "rlimit"):
        assert "observe_denials=False" in unobservable[layer], unobservable


def test_observe_denials_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="observe_denials"):
        Supervisor(observe_denials=1)  # type: ignore[arg-type]


async def test_a_dead_loader_is_said_never_pretended(sup: Supervisor, workspace: Path) -> None:
    """The loader killed (its programs detached by the kernel): the refusal still holds (the observer only
    looks), and the next Result lists the layers as unobservable instead of an empty list."""
    pid = sup._observing.pid
    assert pid is not None
    os.kill(pid, 9)
    obs = sup._observing.observer
    assert obs is not None
    with anyio.fail_after(10):
        while obs.alive:  # noqa: ASYNC110 (the reader task sets it; no event to wait on)
            await anyio.sleep(0.01)
    result, _events, _metric, seen = await probe(
        sup, profiles.workspace_write(workspace), "w:os.mkdir('/etc/x')"
    )
    assert seen["w"] == errno.EROFS
    assert not [d for d in result.denials if d.layer == "mounts"]
    assert "loader ended" in dict(result.denials_unobservable)["mounts"], result.denials_unobservable


async def test_a_path_below_a_denied_directory_is_reported_hidden(sup: Supervisor, workspace: Path) -> None:
    """filesystem.deny hides a directory under an empty tmpfs no one may search: its files cannot be
    reached (EACCES, no Landlock denial), reported as `mounts`/`read` with the path; a missing file
    elsewhere is nobody's refusal and not reported."""
    secret = workspace / "secret"
    secret.mkdir()
    (secret / "key").write_text("s3cret")
    policy = restricted(workspace, deny=(str(secret),))
    result, events, metric, seen = await probe(
        sup,
        policy,
        f"open:open('{secret}/key').read()",
        f"stat:os.stat('{secret}/other')",
        "elsewhere:os.stat('/nonexistent-corral')",
        f"list:os.listdir('{secret}')",
    )
    # The hidden directory is an empty tmpfs no one may search (EACCES); elsewhere: not found.
    assert seen["open"] == seen["stat"] == seen["list"] == errno.EACCES, seen
    assert seen["elsewhere"] == errno.ENOENT
    d = one_match(result, events, metric, ("mounts", "read", f"{secret}/key"))
    assert "filesystem.deny" in d.hint
    one_match(result, events, metric, ("mounts", "read", f"{secret}/other"))
    one_match(result, events, metric, ("mounts", "read", str(secret)))  # the listing
    assert not [d for d in result.denials if "nonexistent" in d.target], result.denials


async def test_the_layers_are_reported_or_said_unobservable_with_the_reason(workspace: Path) -> None:
    """On any kernel and for any caller: either the observer runs and the mount view's refusal is
    reported, or the Result names the layers it cannot see with the observer's reason (no BTF in the
    ../shared/v2vm guest, not root for uid 65534: tests/kernel/test_unprivileged.py)."""
    async with Supervisor(prefork=0) as sup:
        result, events, metric = await observe(
            sup,
            [PY, "-I", "-S", "-c", PROBE, "w:os.mkdir('/etc/corral-x')"],
            profiles.workspace_write(workspace),
        )
        reason = sup._observing.reason
        running = sup._observing.observer is not None
    assert result.stdout.split() == [b"w", str(errno.EROFS).encode()]  # refused either way
    unobservable = dict(result.denials_unobservable)
    if running:
        one_match(result, events, metric, ("mounts", "write", "/etc/corral-x"))
        assert "mounts" not in unobservable
    else:
        assert not [d for d in result.denials if d.layer == "mounts"]
        assert unobservable["mounts"] == f"not reported: {reason}", unobservable
        assert unobservable["landlock"] == f"not reported: {reason}", unobservable


async def test_a_replaced_fork_server_s_sandboxes_are_watched(sup: Supervisor, workspace: Path) -> None:
    """The fork server killed and replaced: the new one is registered before it makes a sandbox, so the
    next command's refusal is reported like any other."""
    fs = sup._forkserver
    assert fs is not None
    old = fs.server_pid
    assert old is not None
    os.kill(old, 9)
    policy = profiles.workspace_write(workspace)
    with anyio.fail_after(60):
        while True:
            try:
                result, events, metric, seen = await probe(sup, policy, "w:os.mkdir('/etc/corral-y')")
                break
            except SandboxSetupError:  # a request the dead server took fails; the next one runs
                await anyio.sleep(0.1)
    assert fs.server_pid not in (None, old)
    assert seen["w"] == errno.EROFS
    one_match(result, events, metric, ("mounts", "write", "/etc/corral-y"))


async def test_reading_a_denied_file_is_reported(sup: Supervisor, workspace: Path) -> None:
    """filesystem.deny hides a file under the null device on a nodev mount: `cat` of it is refused
    (EACCES) and shows nothing of the secret, reported once as `mounts`/`read` with the path, though it
    comes after the default profile's two dozen credential paths. The same for a file below a denied
    directory listed after them. Opening /dev/null itself and an ordinary file reports nothing."""
    secret = workspace / "secret.txt"
    secret.write_text("s3cret")
    hidden = workspace / "hidden"
    hidden.mkdir()
    (hidden / "key").write_text("k3y")
    (workspace / "plain.txt").write_text("plain")
    base = profiles.workspace_write(workspace)
    assert len(base.filesystem.deny) > _observer.MAX_DENIED  # past the byte-compared ones: by hash
    policy = restricted(workspace, deny=(*base.filesystem.deny, str(secret), str(hidden)))
    script = f"cat {secret}; cat {secret}; cat /dev/null; cat {workspace}/plain.txt; cat {hidden}/key; true"
    result, events, metric = await observe(sup, ["sh", "-c", script], policy)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"plain"  # nothing of the secrets; the ordinary file as it is
    assert f"{secret}: Permission denied".encode() in result.stderr
    d = one_match(result, events, metric, ("mounts", "read", str(secret)))
    assert d.count == 2
    assert "filesystem.deny" in d.hint
    assert "--deny" in d.hint
    one_match(result, events, metric, ("mounts", "read", f"{hidden}/key"))
    # /dev/null and the ordinary file: no report at all
    assert [(d.layer, d.target) for d in result.denials] == [
        ("mounts", str(secret)),
        ("mounts", f"{hidden}/key"),
    ], result.denials
    # Checked from outside: the files are untouched.
    assert secret.read_text() == "s3cret"
    # The next sandbox of the same deny list (its set of hashes, filled once) is reported the same.
    result, events, metric = await observe(sup, ["cat", str(secret)], policy)
    assert result.exit_code == 1
    assert result.stdout == b""
    assert one_match(result, events, metric, ("mounts", "read", str(secret))).count == 1


def test_the_denied_path_hash_is_the_kernel_s() -> None:
    """FNV-1a 64 of the path (the kernel program's `denied_prefix` computes the same): the published
    test vectors."""
    assert _observer.path_hash(b"") == 0xCBF29CE484222325
    assert _observer.path_hash(b"a") == 0xAF63DC4C8601EC8C
    assert _observer.path_hash(b"foobar") == 0x85944171F73967E8


def test_the_cli_reports_a_denied_file_read(workspace: Path) -> None:
    """`corral run --deny FILE --json - -- cat FILE`: cat is refused and prints nothing of the file; the
    JSON holds exactly one `mounts`/`read` denial of it and stderr its one line."""
    secret = workspace / "secret.txt"
    secret.write_text("s3cret")
    cmd = [sys.executable, "-m", "supervisor.cli", "run", "--workdir", str(workspace), "--deny", str(secret)]
    p = subprocess.run(
        [*cmd, "--json", "-", "--", "cat", str(secret)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = json.loads(p.stdout)
    if any(layer == "mounts" for layer, _why in out["denials_unobservable"]):
        pytest.skip(f"no denial observer: {out['denials_unobservable']}")
    assert p.returncode == 1, p.stderr
    assert "s3cret" not in p.stdout
    assert f"cat: {secret}: Permission denied" in p.stderr
    rows = [
        d
        for d in out["denials"]
        if (d["layer"], d["operation"], d["target"]) == ("mounts", "read", str(secret))
    ]
    assert len(rows) == 1, out["denials"]
    assert rows[0]["count"] == 1
    assert "--deny" in rows[0]["hint"]
    assert p.stderr.count(f"corral: denied read {secret} (mounts:") == 1, p.stderr
