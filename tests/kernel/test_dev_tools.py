"""Developer tools that refused to work in the sandbox now do: debuggers and tracers (ptrace within the
sandbox's own pid namespace), AddressSanitizer's leak checker (which stops the world with ptrace), setarch
and linux32 (harmless personas), `ulimit -c` and core files. Tracing never crosses the sandbox's boundary:
its init and everything outside stay out of reach (tests/kernel/test_attack_processes.py: the host side)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel

PY = "/usr/bin/python3"
#: The host's kernel.core_pattern (read once: a host file, not a sandbox's).
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern").read_text().strip()


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    return path


async def test_strace_follows_forks(sup: Supervisor, workspace: Path) -> None:
    strace = _need("strace")
    r = await sup.run(
        [strace, "-f", "-e", "trace=execve", "/bin/sh", "-c", "/bin/true; /bin/echo traced"],
        policy=profiles.workspace_write(workspace),
    )
    assert r.exit_code == 0, r.stderr.decode()[-2000:]
    assert b"traced" in r.stdout
    err = r.stderr.decode()
    assert 'execve("/bin/true"' in err, err[-2000:]
    assert "+++ exited with 0 +++" in err


async def test_gdb_batch_runs_and_backtraces(sup: Supervisor, workspace: Path) -> None:
    gdb = _need("gdb")
    r = await sup.run(
        [
            gdb,
            "-batch",
            "-nx",
            "-ex",
            "run",
            "-ex",
            "info registers rip",
            "--args",
            "/bin/sh",
            "-c",
            "kill -SEGV $$",
        ],
        policy=profiles.workspace_write(workspace, timeout=60),
    )
    out = r.stdout.decode() + r.stderr.decode()
    assert "Operation not permitted" not in out, out[-2000:]
    assert "SIGSEGV" in out, out[-2000:]
    assert "rip" in out, out[-2000:]


def _asan(workspace: Path, name: str, body: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = workspace / f"{name}.c"
    src.write_text(f"#include <stdlib.h>\n#include <string.h>\nint main(void) {{ {body} }}\n")
    exe = workspace / name
    proc = subprocess.run(
        ["gcc", "-g", "-fsanitize=address", "-o", str(exe), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0 and "asan" in proc.stderr.lower():
        pytest.skip(f"gcc cannot build AddressSanitizer binaries here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    return exe


async def test_address_sanitizer_binaries_run_and_find_leaks(sup: Supervisor, workspace: Path) -> None:
    clean = _asan(workspace, "clean", 'char *p = malloc(8); strcpy(p, "ok"); free(p); return 0;')
    leaky = _asan(workspace, "leaky", "char *p = malloc(64); p[0] = 1; p = 0; return 0;")
    policy = profiles.workspace_write(workspace, timeout=60)
    r = await sup.run([str(clean)], policy=policy)
    assert r.exit_code == 0, r.stderr.decode()[
        -2000:
    ]  # LeakSanitizer ran (it needs ptrace) and found nothing
    assert b"LeakSanitizer has encountered a fatal error" not in r.stderr
    r = await sup.run([str(leaky)], policy=policy)
    assert r.exit_code == 1
    assert b"detected memory leaks" in r.stderr, r.stderr.decode()[-2000:]


async def test_the_init_cannot_be_traced(sup: Supervisor, workspace: Path) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]\n"
        "print(libc.ptrace(16, 1, None, None), ctypes.get_errno())\n"  # PTRACE_ATTACH the sandbox's init
        "print(open('/proc/1/mem', 'rb').read(1) if os.access('/proc/1/mem', os.R_OK) else 'no-mem')\n"
    )
    r = await sup.run([PY, "-I", "-c", code], policy=profiles.workspace_write(workspace))
    first = r.stdout.decode().splitlines()[0].split()
    assert first == ["-1", "1"], r.stdout  # EPERM: the init is not dumpable


async def test_setarch_and_linux32(sup: Supervisor, workspace: Path) -> None:
    _need("setarch")
    policy = profiles.workspace_write(workspace)
    r = await sup.run(["setarch", "-R", "/bin/cat", "/proc/self/personality"], policy=policy)
    assert r.exit_code == 0, r.stderr
    assert int(r.stdout, 16) & 0x0040000  # ADDR_NO_RANDOMIZE took effect
    r = await sup.run(["linux32", "/bin/uname", "-m"], policy=policy)
    assert (r.exit_code, r.stdout.strip()) == (0, b"i686"), r.stderr
    # A dangerous flag stays refused: MMAP_PAGE_ZERO, READ_IMPLIES_EXEC.
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "for v in (0x0100000, 0x0400000, 0x0100080):\n"
        "    print(libc.personality(v), ctypes.get_errno())\n"
    )
    r = await sup.run([PY, "-I", "-c", code], policy=policy)
    assert r.stdout.decode().split() == ["-1", "1"] * 3, r.stdout


async def test_ulimit_c_and_a_core_file_in_the_workdir(sup: Supervisor, workspace: Path) -> None:
    pattern = CORE_PATTERN
    policy = profiles.workspace_write(workspace)
    r = await sup.run(["/bin/sh", "-c", "ulimit -c unlimited && ulimit -c"], policy=policy)
    if pattern.startswith("|"):
        # Piped to a host program: no core dumps at all (docs/security.md).
        assert r.exit_code != 0
        return
    assert (r.exit_code, r.stdout.strip()) == (0, b"unlimited"), r.stderr
    assert (
        await sup.run(["/bin/sh", "-c", "ulimit -c"], policy=policy)
    ).stdout.strip() == b"0"  # off by default
    if "/" in pattern or "%" in pattern:
        return  # the core lands elsewhere (or under a templated name): the ulimit part is what corral owns
    r = await sup.run(["/bin/sh", "-c", "ulimit -c unlimited; /bin/sh -c 'kill -SEGV $$'"], policy=policy)
    cores = [name for name in os.listdir(workspace) if name.startswith(pattern)]
    assert cores, (r, os.listdir(workspace))
    assert not [c for c in cores if os.stat(workspace / c).st_mode & 0o6000]


async def test_a_size_limited_policy_bounds_the_core_limit(sup: Supervisor, workspace: Path) -> None:
    if CORE_PATTERN.startswith("|"):
        pytest.skip("core dumps are piped to a host program here: the core limit is 0 whatever the policy")
    policy = profiles.workspace_write(workspace, fsize="1M")
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_CORE))"
    r = await sup.run([PY, "-I", "-c", code], policy=policy)
    assert r.stdout.strip() == b"(0, 1048576)"  # soft 0, hard the policy's fsize


@pytest.mark.parametrize("network", ["none", "host"])
async def test_the_sandbox_resolves_its_own_hostname(sup: Supervisor, workspace: Path, network: str) -> None:
    code = (
        "import socket\n"
        "name = socket.gethostname()\n"
        "print(name, socket.gethostbyname(name), socket.getfqdn())\n"
        "print(open('/etc/hostname').read().strip())\n"
        "print(socket.gethostbyname('localhost'))\n"
    )
    r = await sup.run([PY, "-I", "-c", code], policy=profiles.workspace_write(workspace, network=network))
    assert r.exit_code == 0, r.stderr.decode()[-2000:]
    first, hostname_file, localhost = r.stdout.decode().splitlines()
    name, address, fqdn = first.split()
    assert name == "corral"
    assert address == "127.0.0.1"
    assert fqdn == "corral"
    assert hostname_file == "corral"  # not the host's name
    assert localhost == "127.0.0.1"  # the host's own entries are still there
