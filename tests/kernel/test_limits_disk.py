"""Disk limits from inside real sandboxes, checked from outside: `fsize` (RLIMIT_FSIZE, per file, exact),
`disk` (a budget for all the command writes into its writable roots, sampled every 20 ms) and `tmp_size`
(the private /tmp and /dev/shm tmpfs, exact). Each attack writes far past its limit; the test looks at the
files on the host, the Result's violation (`disk`) and exit status (137), and the CLI's --json and stderr.

Every writer stops by itself at 512 MiB or after 20 s, whatever the limits do.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policies import PolicyError, ResourcePolicy, profiles
from supervisor import SandboxSetupError, Supervisor
from supervisor._plan import _disk_budget_unmeasurable

pytestmark = pytest.mark.kernel

PY = os.path.realpath(sys.executable)
MiB = 1 << 20
CORRAL = [sys.executable, "-m", "supervisor.cli"]

# Writes argv[2] files of argv[3] MiB each into directory argv[1] (1 MiB writes), as fast as it can; prints
# how many it finished or the errno that stopped it, then holds for argv[4] seconds (so a sampler sees the
# state it left). Python ignores SIGXFSZ: a file past RLIMIT_FSIZE gives EFBIG here.
WRITER = r"""
import os, sys, time
d, files, size, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t = time.monotonic()
n = 0
try:
    for n in range(files):
        with open(os.path.join(d, f"f{n}"), "wb") as f:
            for _ in range(size):
                f.write(b"x" * (1 << 20))
                if time.monotonic() - t > 20:
                    raise SystemExit("deadline")
    print("wrote all", files, flush=True)
except OSError as e:
    print("refused", e.errno, n, flush=True)
time.sleep(hold)
"""


def need_budget(ws: Path) -> None:
    """Skip when the project's own check says the disk budget cannot be measured for `ws` here (no per-task
    I/O accounting, or a workspace on tmpfs, as in the v2 VM); such a policy fails closed instead."""
    why = _disk_budget_unmeasurable(profiles.workspace_write(ws, disk="1M"))
    if why:
        pytest.skip(why)


def _bytes_under(d: Path) -> int:
    """Apparent size of every regular file under `d` (lstat: nothing followed)."""
    total = 0
    for root, _dirs, files in os.walk(d):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            total += st.st_size
    return total


async def test_fsize_caps_each_file_and_sigxfsz_is_a_disk_violation(sup: Supervisor, workspace: Path) -> None:
    """`head` (SIGXFSZ at its default: the kernel kills it at the limit) writes 64 MiB into one file under
    fsize 1 MiB: the file on the host stops at exactly 1 MiB and the Result says `disk`, 137."""
    pol = profiles.workspace_write(workspace, fsize="1M", timeout=60)
    r = await sup.run(["/bin/sh", "-c", "exec head -c 67108864 /dev/zero > big"], policy=pol)
    assert (workspace / "big").stat().st_size == MiB
    assert r.violation is not None, r
    assert r.violation.kind == "disk", r
    assert r.violation.limit == MiB
    assert r.exit_code == 137, r
    assert r.killed


async def test_fsize_refuses_with_efbig_when_sigxfsz_is_ignored(sup: Supervisor, workspace: Path) -> None:
    """Python ignores SIGXFSZ: its write past the limit fails with EFBIG and the file stays at the limit."""
    pol = profiles.workspace_write(workspace, fsize="2M", timeout=60)
    r = await sup.run([PY, "-I", "-S", "-c", WRITER, str(workspace), "1", "64", "0"], policy=pol)
    assert f"refused {errno.EFBIG}".encode() in r.stdout, r
    assert (workspace / "f0").stat().st_size == 2 * MiB


async def test_disk_budget_stops_a_writer_of_many_files(sup: Supervisor, workspace: Path) -> None:
    """512 files of 1 MiB under a 16 MiB budget: killed for `disk`, and what reached the host is the budget
    plus what one 20 ms sample interval let through (page-cache speed: tens of MiB at most here), far from
    the 512 MiB asked for."""
    need_budget(workspace)
    pol = profiles.workspace_write(workspace, disk="16M", timeout=60)
    r = await sup.run([PY, "-I", "-S", "-c", WRITER, str(workspace), "512", "1", "5"], policy=pol)
    assert b"wrote all" not in r.stdout, r
    assert r.violation is not None, r
    assert r.violation.kind == "disk", r
    assert r.violation.limit == 16 * MiB
    assert r.violation.observed >= 16 * MiB
    assert r.exit_code == 137, r
    on_host = _bytes_under(workspace)
    assert on_host < 16 * MiB + 96 * MiB, on_host >> 20


async def test_disk_budget_counts_what_subprocesses_wrote_and_exited(
    sup: Supervisor, workspace: Path
) -> None:
    """Writers that exit at once still count (their reaper's /proc/<pid>/io holds them): 12 short-lived
    processes of 2 MiB each under an 8 MiB budget; the shell then waits, and is killed for `disk`."""
    need_budget(workspace)
    pol = profiles.workspace_write(workspace, disk="8M", timeout=60)
    script = (
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do head -c 2097152 /dev/zero > f$i; done; sleep 5; echo done"
    )
    r = await sup.run(["/bin/sh", "-c", script], policy=pol)
    assert b"ok" not in r.stdout, r
    assert r.violation is not None, r
    assert r.violation.kind == "disk", r
    assert r.exit_code == 137


async def test_disk_budget_caps_a_single_file_exactly(sup: Supervisor, workspace: Path) -> None:
    """One write stream far past the budget between two samples: RLIMIT_FSIZE = the budget stops the file at
    exactly the budget (SIGXFSZ: a `disk` violation)."""
    need_budget(workspace)
    pol = profiles.workspace_write(workspace, disk="8M", timeout=60)
    r = await sup.run(["/bin/sh", "-c", "exec head -c 536870912 /dev/zero > big"], policy=pol)
    assert (workspace / "big").stat().st_size == 8 * MiB
    assert r.violation is not None, r
    assert r.violation.kind == "disk", r
    assert r.exit_code == 137


async def test_disk_budget_stops_a_writer_that_ignores_sigxfsz(sup: Supervisor, workspace: Path) -> None:
    """Python (SIGXFSZ ignored) writes one 64 MiB file under an 8 MiB budget: EFBIG at exactly the budget,
    and the run is a `disk` violation, 137, whether the 20 ms sampler saw it first or the final count."""
    need_budget(workspace)
    pol = profiles.workspace_write(workspace, disk="8M", timeout=60)
    for hold in ("0", "2"):
        r = await sup.run([PY, "-I", "-S", "-c", WRITER, str(workspace), "1", "64", hold], policy=pol)
        assert (workspace / "f0").stat().st_size == 8 * MiB
        assert r.violation is not None, (hold, r)
        assert r.violation.kind == "disk", (hold, r)
        assert r.violation.limit == 8 * MiB
        assert r.exit_code == 137, (hold, r)
        (workspace / "f0").unlink()


async def test_writes_under_the_budget_are_not_a_violation(sup: Supervisor, workspace: Path) -> None:
    """A writer well under its limits (4 MiB of files, a 1 MiB file in /tmp) runs to its own end."""
    need_budget(workspace)
    pol = profiles.workspace_write(workspace, disk="16M", fsize="8M", tmp_size="8M", timeout=60)
    r = await sup.run([PY, "-I", "-S", "-c", WRITER, str(workspace), "4", "1", "0.2"], policy=pol)
    assert (r.exit_code, r.violation) == (0, None), r
    r = await sup.run([PY, "-I", "-S", "-c", WRITER, "/tmp", "1", "1", "0.2"], policy=pol)
    assert (r.exit_code, r.violation) == (0, None), r


FALLOCATE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("big", os.O_CREAT | os.O_WRONLY, 0o600)
# FALLOC_FL_KEEP_SIZE: blocks reserved without growing the file, past RLIMIT_FSIZE's reach.
rc = libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(1 << 30))
print("fallocate", rc, ctypes.get_errno(), flush=True)
"""


async def test_fallocate_cannot_reserve_past_the_disk_budget(sup: Supervisor, workspace: Path) -> None:
    """fallocate reserves blocks without writing a page (so the write counters never see them): under a disk
    budget it answers EOPNOTSUPP, and the file on the host holds no blocks."""
    need_budget(workspace)
    pol = profiles.workspace_write(workspace, disk="8M", timeout=60)
    r = await sup.run([PY, "-I", "-S", "-c", FALLOCATE], policy=pol)
    assert f"fallocate -1 {errno.EOPNOTSUPP}".encode() in r.stdout, r
    assert os.lstat(workspace / "big").st_blocks * 512 < MiB


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
async def test_private_tmpfs_has_its_size_and_filling_it_is_a_disk_violation(
    sup: Supervisor, workspace: Path, where: str
) -> None:
    """64 MiB into the private /tmp (or /dev/shm) sized 8 MiB: ENOSPC at 8 MiB, and the sandbox is killed
    for `disk` while it holds the full tmpfs. Seen from outside through the init's root."""
    pol = profiles.workspace_write(workspace, tmp_size="8M", timeout=60)
    r = await sup.run([PY, "-I", "-S", "-c", WRITER, where, "1", "64", "5"], policy=pol)
    assert f"refused {errno.ENOSPC}".encode() in r.stdout, r
    assert r.violation is not None, r
    assert r.violation.kind == "disk", r
    assert r.violation.limit == 8 * MiB
    assert r.exit_code == 137
    assert r.duration_s < 5, r  # killed while it held the full tmpfs, not at its own exit


async def test_tmpfs_pages_count_against_the_memory_limit(sup: Supervisor, workspace: Path) -> None:
    """tmpfs pages are charged to the memory cgroup of the writer: 256 MiB into a 1 GiB /tmp under a
    64 MiB memory limit is OOM-killed (a `memory` violation), not kept."""
    from tests.kernel.test_limits import need

    need("memory")
    pol = profiles.workspace_write(workspace, memory="64M", tmp_size="1G", timeout=60)
    r = await sup.run([PY, "-I", "-S", "-c", WRITER, "/tmp", "1", "256", "2"], policy=pol)
    assert b"wrote all" not in r.stdout, r
    assert r.violation is not None, r
    assert r.violation.kind == "memory", r


def _tmpfs_root() -> Path | None:
    """/dev/shm when it is a tmpfs the disk budget cannot measure (per the project's own check)."""
    shm = Path("/dev/shm")
    pol = profiles.workspace_write(shm, disk="1M", allow_system_write=True)
    return shm if shm.is_dir() and "tmpfs" in _disk_budget_unmeasurable(pol) else None


async def test_a_budget_that_cannot_be_measured_fails_closed(sup: Supervisor) -> None:
    """A writable root on tmpfs: its writes never reach the write-back accounting, so a disk budget there
    would hold nothing. The run is refused (SandboxSetupError naming `disk`), or with best_effort runs and
    says what is missing."""
    shm = _tmpfs_root()
    if shm is None:
        pytest.skip("no tmpfs /dev/shm here to use as the writable root")
    pol = profiles.workspace_write(shm, disk="1M", timeout=30, allow_system_write=True)
    with pytest.raises(SandboxSetupError, match="disk"):
        await sup.run(["/bin/true"], policy=pol)
    lax = profiles.workspace_write(shm, disk="1M", timeout=30, allow_system_write=True, best_effort=True)
    r = await sup.run(["/bin/true"], policy=lax)
    assert r.exit_code == 0
    assert any(layer == "disk_budget" for layer, _why in r.missing), r.missing


def test_sizes_are_validated() -> None:
    for key in ("disk", "tmp_size", "fsize"):
        with pytest.raises(PolicyError, match=f"resources.{key}"):
            ResourcePolicy(**{key: "lots"})  # type: ignore[arg-type]
        with pytest.raises(PolicyError, match=f"resources.{key}"):
            ResourcePolicy(**{key: 0})  # type: ignore[arg-type]
    assert ResourcePolicy(disk="1G", tmp_size="64M").disk == 1 << 30


def _cli(ws: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = ws.parent / f"{ws.name}.json"
    p = subprocess.run(
        [*CORRAL, "run", "--json", str(out), *args],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    rec = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    return p, rec


def test_cli_fsize_and_disk(workspace: Path) -> None:
    """--fsize and --disk: exit 137, `disk` in --json with the limit; on stderr the kill line and the denial
    report of the refused write (RLIMIT_FSIZE), nothing else."""
    need_budget(workspace)
    p, rec = _cli(workspace, "--fsize", "1M", "--", "/bin/sh", "-c", "exec head -c 67108864 /dev/zero > big")
    assert p.returncode == 137, p.stderr
    assert rec["violation"]["kind"] == "disk"  # type: ignore[index]
    assert rec["violation"]["limit"] == MiB  # type: ignore[index]
    assert (workspace / "big").stat().st_size == MiB
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2, p.stderr
    assert "disk" in lines[0]
    assert lines[1].startswith("corral: denied write RLIMIT_FSIZE=1048576 (rlimit:"), p.stderr

    script = "i=0; while [ $i -lt 400 ]; do head -c 1048576 /dev/zero > g$i; i=$((i+1)); done; sleep 5"
    p, rec = _cli(workspace, "--disk", "16M", "--", "/bin/sh", "-c", script)
    assert p.returncode == 137, p.stderr
    assert rec["violation"]["kind"] == "disk"  # type: ignore[index]
    assert rec["violation"]["limit"] == 16 * MiB  # type: ignore[index]
    assert _bytes_under(workspace) < 16 * MiB + 96 * MiB + MiB


def test_cli_rejects_a_bad_size(workspace: Path) -> None:
    for flag in ("--disk", "--fsize"):
        p = subprocess.run(
            [*CORRAL, "run", flag, "lots", "--", "/bin/true"],
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert p.returncode == 125, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
