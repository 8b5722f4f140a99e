"""Legitimate workloads that must keep working inside the workspace-write sandbox (and the read-only one
where said): compilers, git, multiprocessing, loopback servers, venvs, big temporary files, stdio.

Every layer is on (namespaces, mounts, Landlock, seccomp): a workload that breaks here is a usability bug
as real as an escape is a security bug. Commands are given by absolute path (the `python3` on PATH may be
a slow pyenv shim) and HOME=/tmp, so that no tool needs the host's home directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import Result, Supervisor
from tests.kernel.conftest import digest, pid_exists

# The anyio mark at module level: added per item after collection (tests/conftest.py), it loses the
# parametrize ids of async tests.
pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

PY = "/usr/bin/python3"
SH = "/bin/sh"
GCC = "/usr/bin/gcc"
GIT = "/usr/bin/git"

#: HOME on the private /tmp; a fixed git identity so that commits need no ~/.gitconfig.
ENV = [
    "HOME=/tmp",
    "GIT_AUTHOR_NAME=Corral Test",
    "GIT_AUTHOR_EMAIL=corral@example.invalid",
    "GIT_COMMITTER_NAME=Corral Test",
    "GIT_COMMITTER_EMAIL=corral@example.invalid",
]


def ws_policy(workspace: Path, **opts: object) -> Policy:
    return profiles.workspace_write(workspace, env=ENV, **opts)  # type: ignore[arg-type]


def clean(r: Result) -> bytes:
    """Assert that the command exited 0 untouched, and return its stdout."""
    assert (r.exit_code, r.signal, r.violation) == (0, None, None), r.stderr.decode(errors="replace")
    return r.stdout


def ok(r: Result) -> str:
    """Assert that the command exited 0 untouched, and return its stdout as text."""
    return clean(r).decode()


# ------------------------------------------------------------------------------------------------------
# Building and version control


FIB_H = "unsigned long fib(unsigned n);\n"
FIB_C = """#include "fib.h"
unsigned long fib(unsigned n) { unsigned long a = 0, b = 1; while (n--) { b += a; a = b - a; } return a; }
"""
MAIN_C = """#include <stdio.h>
#include <stdlib.h>
#include "fib.h"
int main(int argc, char **argv) {
    unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 10;
    printf("fib(%u) = %lu\\n", n, fib(n));
    return 0;
}
"""


async def test_gcc_builds_in_workspace_and_runs_inside(sup: Supervisor, workspace: Path) -> None:
    (workspace / "fib.h").write_text(FIB_H)
    (workspace / "fib.c").write_text(FIB_C)
    (workspace / "main.c").write_text(MAIN_C)
    # Separate compile and link: gcc's temporary files go to the private /tmp, objects to the workspace.
    script = f"{GCC} -O2 -Wall -Werror -c fib.c && {GCC} -O2 -Wall -Werror -o app main.c fib.o && ./app 50"
    out = ok(await sup.run([SH, "-c", script], policy=ws_policy(workspace)))
    assert out == "fib(50) = 12586269025\n"
    app = workspace / "app"
    assert app.is_file()
    assert os.access(app, os.X_OK)
    assert (workspace / "fib.o").is_file()
    # The binary built inside is an ordinary binary outside too.
    host = await anyio.run_process([str(app), "20"])
    assert host.stdout == b"fib(20) = 6765\n"


async def test_git_init_add_commit_and_commit_again_with_protected_config(
    sup: Supervisor, workspace: Path
) -> None:
    pol = ws_policy(workspace)
    (workspace / "README").write_text("first\n")
    ok(
        await sup.run(
            [
                SH,
                "-c",
                f"{GIT} init -q . && {GIT} add README && {GIT} commit -q -m 'first commit from the sandbox'",
            ],
            policy=pol,
        )
    )
    host_log = await anyio.run_process([GIT, "-C", str(workspace), "log", "--format=%s %ae"])
    assert host_log.stdout.decode() == "first commit from the sandbox corral@example.invalid\n"

    # Now .git exists at spawn time, so .git/config and .git/hooks are read-only mounts: committing must
    # still work, while rewriting the config or planting a hook (code the user's own git would run
    # outside the sandbox) must not.
    config_before = digest(workspace / ".git" / "config")
    hooks_before = digest(workspace / ".git" / "hooks")
    (workspace / "README").write_text("second\n")
    r = await sup.run(
        [
            SH,
            "-c",
            f"{GIT} commit -q -am second && echo committed; "
            f"{GIT} config core.fsmonitor 'touch /tmp/pwned' && echo config-written; "
            "echo 'touch /tmp/pwned' > .git/hooks/pre-commit && echo hook-written; "
            f"{GIT} log --format=%s",
        ],
        policy=pol,
    )
    out = ok(r)
    assert out.splitlines() == ["committed", "second", "first commit from the sandbox"]
    host_log = await anyio.run_process([GIT, "-C", str(workspace), "log", "--format=%s"])
    assert host_log.stdout.decode().splitlines() == ["second", "first commit from the sandbox"]
    assert digest(workspace / ".git" / "config") == config_before
    assert digest(workspace / ".git" / "hooks") == hooks_before
    status = await anyio.run_process([GIT, "-C", str(workspace), "status", "--porcelain"])
    assert status.stdout == b""


GIT_ENV = {
    **os.environ,
    **dict(e.split("=", 1) for e in ENV[1:]),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


@pytest.mark.parametrize(
    "where",
    [
        "fresh",
        "nested",
        "submodule",
    ],
)
async def test_git_hooks_cannot_be_planted_for_the_user(sup: Supervisor, workspace: Path, where: str) -> None:
    """The threat the protected paths answer: code written into a hook runs later, outside the sandbox,
    in the user's own git. Checked end to end: after the sandbox, the host commits and the hook must not
    have run."""
    marker = workspace / "HOOK-RAN"
    if where == "fresh":
        repo = workspace
        plant = f"{GIT} init -q . && "
    elif where == "nested":
        repo = workspace / "vendor"
        await anyio.run_process([GIT, "init", "-q", str(repo)], env=GIT_ENV)
        plant = "cd vendor && "
    else:
        repo = workspace / "sub"
        await anyio.run_process([GIT, "init", "-q", str(workspace)], env=GIT_ENV)
        gitdir = workspace / ".git" / "modules" / "sub"
        gitdir.parent.mkdir()
        await anyio.run_process([GIT, "init", "-q", f"--separate-git-dir={gitdir}", str(repo)], env=GIT_ENV)
        plant = "cd sub && "
    plant += (
        f"hooks=$({GIT} rev-parse --git-path hooks) && "
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > $hooks/post-commit && chmod +x $hooks/post-commit"
    )
    r = await sup.run([SH, "-c", plant], policy=ws_policy(workspace))
    if where != "submodule":  # (there the hooks directory is a read-only mount: the plant fails)
        assert any(p.endswith("/hooks/post-commit") for p, _ in r.quarantined), r.quarantined
    if (repo / ".git").exists():
        await anyio.run_process(
            [GIT, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "the user's commit"], env=GIT_ENV
        )
    assert not await anyio.Path(marker).exists(), "a hook planted in the sandbox ran in the user's git"


# ------------------------------------------------------------------------------------------------------
# Processes, threads, network


MP_SCRIPT = """
import multiprocessing as mp, os, sys, threading
from concurrent.futures import ThreadPoolExecutor

def square(x):
    return x * x, os.getpid()

if __name__ == "__main__":
    method = sys.argv[1]
    with mp.get_context(method).Pool(4) as pool:
        results = pool.map(square, range(1000), chunksize=10)
    print(method, sum(r for r, _ in results), len({pid for _, pid in results} - {os.getpid()}) >= 1)
    lock = threading.Lock()
    counter = [0]
    def work(i):
        with lock:
            counter[0] += i
        return i * i
    with ThreadPoolExecutor(8) as ex:
        print("threads", sum(ex.map(work, range(1000))), counter[0])
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
async def test_multiprocessing_pool_and_threads(sup: Supervisor, workspace: Path, method: str) -> None:
    # fork: plain fork + /dev/shm semaphores; forkserver: also an AF_UNIX socket in the private /tmp;
    # spawn: fresh interpreters exec'd from inside the sandbox.
    (workspace / "mp_job.py").write_text(MP_SCRIPT)
    out = ok(await sup.run([PY, "mp_job.py", method], policy=ws_policy(workspace, timeout=60)))
    squares = sum(x * x for x in range(1000))
    assert out.splitlines() == [f"{method} {squares} True", f"threads {squares} {sum(range(1000))}"]


HTTP_SCRIPT = """
import socket, subprocess, sys, time, urllib.request

with socket.socket() as s:  # a free port on the sandbox's own loopback
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen(
    [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", ".", str(port)],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    deadline = time.monotonic() + 20
    while True:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/page.txt", timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise
            time.sleep(0.05)
    print(body.decode().strip())
finally:
    server.terminate()
    server.wait(10)
# Loopback is the whole network: nothing beyond it is routable.
try:
    socket.create_connection(("192.0.2.1", 80), timeout=5)
    print("outside reachable")
except OSError as e:
    print("outside", e.errno)
"""


async def test_http_server_and_client_on_loopback(sup: Supervisor, workspace: Path) -> None:
    (workspace / "page.txt").write_text("served from inside\n")
    (workspace / "web_job.py").write_text(HTTP_SCRIPT)
    out = ok(await sup.run([PY, "web_job.py"], policy=ws_policy(workspace, timeout=60)))
    assert out.splitlines() == ["served from inside", f"outside {errno.ENETUNREACH}"]


# ------------------------------------------------------------------------------------------------------
# The private /tmp


async def test_venv_in_private_tmp(sup: Supervisor, workspace: Path) -> None:
    venv = f"/tmp/corral-venv-{uuid.uuid4().hex[:8]}"
    script = (
        f"{PY} -m venv {venv} && "
        f"{venv}/bin/python -c 'import sys; print(sys.prefix, sys.prefix != sys.base_prefix)' && "
        f"{venv}/bin/python -m pip --version --disable-pip-version-check --no-input >/dev/null && echo pip-ok"
    )
    out = ok(await sup.run([SH, "-c", script], policy=ws_policy(workspace, timeout=90)))
    assert out.splitlines() == [f"{venv} True", "pip-ok"]
    # It lived in the sandbox's /tmp, which went away with it.
    assert not await anyio.Path(venv).exists()


SORT_SCRIPT = f"""set -e
{PY} - <<'EOF'
import random
rng = random.Random(1)
with open("/tmp/lines.txt", "w") as f:
    for _ in range(1_000_000):
        f.write(f"{{rng.getrandbits(192):048x}}\\n")
EOF
stat -c %s /tmp/lines.txt
# A small buffer forces sort to spill runs into temporary files under /tmp and merge them.
/usr/bin/sort -T /tmp -S 4M -o /tmp/sorted.txt /tmp/lines.txt
wc -l < /tmp/sorted.txt
/usr/bin/sort -c /tmp/sorted.txt && echo in-order
"""


async def test_big_sort_spills_to_private_tmp(sup: Supervisor, workspace: Path) -> None:
    out = ok(await sup.run([SH, "-c", SORT_SCRIPT], policy=ws_policy(workspace, timeout=90)))
    size, count, verdict = out.split()
    assert int(size) == 49_000_000
    assert int(count) == 1_000_000
    assert verdict == "in-order"
    assert [p async for p in anyio.Path(workspace).iterdir()] == []


# ------------------------------------------------------------------------------------------------------
# Exit codes and stdio


async def test_exit_codes_round_trip(sup: Supervisor, workspace: Path) -> None:
    pol = ws_policy(workspace)
    for n in (0, 1, 2, 42, 125, 126, 127, 128, 200, 254, 255):
        r = await sup.run([SH, "-c", f"exit {n}"], policy=pol)
        assert (r.exit_code, r.signal, r.violation) == (n, None, None), n
        assert r.ok == (n == 0)
    # A status is 8 bits: 256 wraps to 0, as in any shell.
    r = await sup.run([SH, "-c", "exit 256"], policy=pol)
    assert r.exit_code == 0


async def test_stdin_piped_through_cat_and_sha256sum(sup: Supervisor, workspace: Path) -> None:
    pol = ws_policy(workspace)
    # Bigger than a pipe buffer, so feeding and draining must run concurrently.
    data = os.urandom(300_000)
    assert clean(await sup.run(["/bin/cat"], policy=pol, input=data)) == data
    big = os.urandom(5 << 20)
    r = await sup.run(["/usr/bin/sha256sum"], policy=pol, input=big)
    assert ok(r) == f"{hashlib.sha256(big).hexdigest()}  -\n"
    r = await sup.run(["/bin/cat"], policy=pol, input=b"")
    assert (ok(r), r.stdout_truncated) == ("", False)


async def test_large_stdout_is_truncated_at_the_capture_limit(workspace: Path) -> None:
    limit = 1 << 20
    pol = ws_policy(workspace)
    emit = "import sys; n = int(sys.argv[1]); sys.stdout.buffer.write(bytes(i % 251 for i in range(n)))"
    expected = bytes(i % 251 for i in range(limit))
    async with Supervisor(capture_limit=limit) as sup:
        # 10 MB: the child must not block on a full pipe; the rest is drained and dropped.
        r = await sup.run([PY, "-c", emit, str(10 << 20)], policy=pol)
        assert (r.exit_code, r.signal) == (0, None)
        assert len(r.stdout) == limit
        assert r.stdout == expected
        assert r.stdout_truncated is True
        assert r.stderr_truncated is False
        # Exactly the limit is not truncation; one byte more is.
        r = await sup.run([PY, "-c", emit, str(limit)], policy=pol)
        assert (r.stdout == expected, r.stdout_truncated) == (True, False)
        r = await sup.run([PY, "-c", emit, str(limit + 1)], policy=pol)
        assert (r.stdout == expected, r.stdout_truncated) == (True, True)
        # stderr has its own budget.
        r = await sup.run([SH, "-c", f"head -c {3 * limit} /dev/zero >&2; echo out"], policy=pol)
        assert (r.stdout, r.stdout_truncated) == (b"out\n", False)
        assert (len(r.stderr), r.stderr_truncated) == (limit, True)


# ------------------------------------------------------------------------------------------------------
# Concurrency


async def test_many_concurrent_runs_leave_no_children(sup: Supervisor, workspace: Path) -> None:
    pol = ws_policy(workspace)
    results: list[Result] = []

    async def one() -> None:
        results.append(await sup.run(["/bin/true"], policy=pol))

    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(one)
    assert len(results) == 32
    assert [(r.exit_code, r.signal, r.violation) for r in results] == [(0, None, None)] * 32
    assert len({r.pid for r in results}) == 32
    assert not sup.children
    # Each command and its descendants were reaped before its Result; the sandbox's own init (r.pid) may
    # still be exiting then, and the supervisor reaps it right after: soon no host pid is left, not even a
    # zombie.
    with anyio.fail_after(5):
        while any(pid_exists(r.pid) for r in results):  # noqa: ASYNC110 (no event for another's exit)
            await anyio.sleep(0.005)


# ------------------------------------------------------------------------------------------------------
# The read-only profile


async def test_read_only_profile_reads_workspace_but_cannot_write_it(
    sup: Supervisor, workspace: Path
) -> None:
    (workspace / "data.txt").write_text("project data\n")
    (workspace / "sub").mkdir()
    before = digest(workspace)
    pol = profiles.read_only(workspace, env=ENV)
    r = await sup.run(["/bin/cat", "data.txt"], policy=pol)
    assert ok(r) == "project data\n"
    assert ok(await sup.run(["/bin/ls", "-A"], policy=pol)).split() == ["data.txt", "sub"]
    for attempt in (
        "echo x > new.txt",
        "echo x >> data.txt",
        ": > data.txt",
        "rm data.txt",
        "mkdir newdir",
        "mv data.txt sub/",
        "touch sub/f",
        "ln -s /etc/passwd link",
    ):
        r = await sup.run([SH, "-c", attempt], policy=pol)
        assert r.exit_code != 0, attempt
        assert r.signal is None, attempt
    assert digest(workspace) == before
    # Its private /tmp stays writable.
    assert ok(await sup.run([SH, "-c", "echo t > /tmp/t && cat /tmp/t"], policy=pol)) == "t\n"


# ------------------------------------------------------------------------------------------------------
# Terminals


PTY_SCRIPT = """
import os, pty
master, slave = pty.openpty()
os.write(master, b"typed\\n")
print(os.read(slave, 100).decode().strip(), os.ttyname(slave).startswith("/dev/pts/"))
"""


async def test_pty_inside(sup: Supervisor, workspace: Path) -> None:
    pol = ws_policy(workspace)
    assert ok(await sup.run([PY, "-c", PTY_SCRIPT], policy=pol)) == "typed True\n"
    r = await sup.run(["/usr/bin/script", "-qec", "echo in-a-pty", "/dev/null"], policy=pol)
    assert "in-a-pty" in ok(r)
