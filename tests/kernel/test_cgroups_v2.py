"""The cgroups layer on a real pure cgroup v2 hierarchy. Run inside ../shared/v2vm:

    ../shared/v2vm/run-in-v2-vm.sh -C /work/main /work/main/.venv/bin/python -m pytest -q \\
        -p no:cacheprovider -m cgroup_v2 tests/kernel/test_cgroups_v2.py

On a host without v2 memory, cpu and pids controllers (such as the hybrid development machines) every
test skips, saying why. The VM forks slowly (~14 ms) and has 1 CPU: storms are small, timings loose.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from policies import ResourcePolicy
from supervisor.sandbox.cgroups import CgroupManager, discover
from tests.kernel import conftest_cgroups as cg

_LAYOUT = discover()
_V2 = [c for c in ("memory", "cpu", "pids") if _LAYOUT.version(c) == 2]

pytestmark = [
    pytest.mark.cgroup_v2,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroup v2 tests need root"),
    pytest.mark.skipif(
        len(_V2) < 3,
        reason=f"needs memory, cpu and pids on cgroup v2 (run inside ../shared/v2vm); this host's "
        f"layout is {_LAYOUT.mode}, v2 controllers {_V2}, unified mount "
        f"{_LAYOUT.unified.path if _LAYOUT.unified else None}",
    ),
]


@pytest.fixture
def mgr() -> Iterator[CgroupManager]:
    yield from cg.manager_fixture()


def test_open_makes_one_parent_with_controllers_enabled(mgr: CgroupManager) -> None:
    assert mgr.available, mgr.reason
    assert mgr.controllers == dict.fromkeys(("memory", "cpu", "cpuacct", "pids", "freezer"), 2)
    assert len(mgr.parents) == 1
    enabled = set(cg.read(os.path.join(mgr.parents[0], "cgroup.subtree_control")).split())
    assert {"memory", "cpu", "pids"} <= enabled


def test_limits_are_written(mgr: CgroupManager) -> None:
    leaf = mgr.create_leaf("limits", ResourcePolicy(memory=64 * cg.MiB, cpus=0.2, pids=50))
    try:
        assert leaf.enforced["memory"]
        assert leaf.enforced["cpus"]
        assert leaf.enforced["pids"]
        assert len(leaf.procs_files) == 1
        d = leaf.paths[0]
        assert int(cg.read(f"{d}/memory.max")) == 64 * cg.MiB
        if os.path.exists(f"{d}/memory.swap.max"):
            assert cg.read(f"{d}/memory.swap.max") == "0"
            assert leaf.enforced["swap"]
        else:
            assert not leaf.enforced["swap"]
            assert "swap" in leaf.reasons["swap"]
        assert cg.read(f"{d}/memory.oom.group") == "1"
        assert cg.read(f"{d}/cpu.max") == "20000 100000"
        assert cg.read(f"{d}/pids.max") == "50"
        st = leaf.stats()
        assert st.pids == 0
        assert st.oom_kills == 0
        assert st.cpu_seconds == 0.0
    finally:
        leaf.remove()
    assert not os.path.exists(leaf.paths[0])


def test_memory_hog_is_oom_killed(mgr: CgroupManager) -> None:
    cg.check_memory_limit(mgr)


def test_fork_storm_stops_at_pids_max(mgr: CgroupManager) -> None:
    cg.check_pids_limit(mgr, storm=60)


def test_busy_loop_held_to_cpu_quota(mgr: CgroupManager) -> None:
    cg.check_cpu_quota(mgr, window=2.0)


def test_kill_uses_cgroup_kill_on_the_whole_tree(mgr: CgroupManager) -> None:
    assert os.path.exists(os.path.join(mgr.parents[0], "cgroup.kill"))
    cg.check_kill_tree(mgr)


def test_stale_cgroups_of_a_dead_supervisor_are_removed(mgr: CgroupManager) -> None:
    cg.check_stale_cleanup(mgr)


def test_close_kills_and_removes_everything() -> None:
    cg.check_close_kills_and_removes_all()


def test_failed_limit_write_is_translated_and_rolled_back(
    mgr: CgroupManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    cg.check_failed_limit_rolls_back(mgr, monkeypatch)


def test_no_internal_processes_rule_moves_a_lone_supervisor(mgr: CgroupManager) -> None:
    """A supervisor alone in a non-root cgroup moves itself into a `.self` leaf, then enables the
    controllers (what nsjail does)."""
    own = _LAYOUT.unified.path if _LAYOUT.unified else ""
    box = os.path.join(own, f"{cg.PREFIX}-nip")
    os.mkdir(box)
    try:
        out = cg.run_supervisor(box)
        assert out["available"], out
        assert str(out["moved"]).startswith(box + "/")
        assert str(out["moved"]).endswith(".self")
        assert out["enforced"] == {"memory": True, "swap": True, "socket_memory": True, "pids": True} or out[
            "enforced"
        ] == {"memory": True, "swap": False, "socket_memory": True, "pids": True}
        assert {"memory", "pids"} <= set(cg.read(f"{box}/cgroup.subtree_control").split())
    finally:
        for sub in os.listdir(box):
            if os.path.isdir(os.path.join(box, sub)):
                os.rmdir(os.path.join(box, sub))  # the emptied .self leaf
        os.rmdir(box)


def test_no_internal_processes_rule_is_explained_when_others_share_the_cgroup(
    mgr: CgroupManager,
) -> None:
    """With another process in its cgroup the supervisor cannot fix EBUSY by moving itself: the
    controllers are reported unavailable with the rule explained and the other pid named."""
    own = _LAYOUT.unified.path if _LAYOUT.unified else ""
    box = os.path.join(own, f"{cg.PREFIX}-busy")
    os.mkdir(box)
    sleeper = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        with open(os.path.join(box, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        out = cg.run_supervisor(box)
        assert out["moved"] is None
        assert "memory" not in dict(out["controllers"])  # type: ignore[call-overload]
        hints = " ".join(out["errors"])  # type: ignore[arg-type]
        assert "no-internal-processes" in hints, out
        assert str(sleeper.pid) in hints, out
    finally:
        cg.stop_plain(sleeper)
        os.rmdir(box)


# systemd's Delegate=yes hands the user the directory and these files of the delegated cgroup.
_DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")


def test_ordinary_user_in_a_delegated_cgroup(mgr: CgroupManager) -> None:
    """What `systemd-run --user --scope -p Delegate=yes` gives an ordinary user: a cgroup of its own.
    The unprivileged supervisor moves itself into a leaf, enables the controllers, places a child."""
    own = _LAYOUT.unified.path if _LAYOUT.unified else ""
    box = os.path.join(own, f"{cg.PREFIX}-user")
    os.mkdir(box)
    try:
        cg.chown_cgroup(box, 1000, _DELEGATED_FILES)
        out = cg.run_supervisor(box, user=1000)
        assert out["available"], out
        assert out["moved"], out
        assert out["placed"], out
        assert out["killed"], out
        assert out["rc"] == -9, out
        assert out["parents_left"] == [], out
    finally:
        for sub in os.listdir(box):
            if os.path.isdir(os.path.join(box, sub)):
                os.rmdir(os.path.join(box, sub))
        os.rmdir(box)


def test_ordinary_user_without_delegation_is_told_how(mgr: CgroupManager) -> None:
    own = _LAYOUT.unified.path if _LAYOUT.unified else ""
    box = os.path.join(own, f"{cg.PREFIX}-nodeleg")
    os.mkdir(box)
    try:
        out = cg.run_supervisor(box, user=1000)
        assert not out["available"], out
        hints = " ".join(out["errors"])  # type: ignore[arg-type]
        assert "Delegate=yes" in hints, out
    finally:
        os.rmdir(box)


def test_a_v2_leaf_is_removed_not_kept_for_reuse(mgr: CgroupManager) -> None:
    """Leaves are reused on cgroup v1 only (docs/cgroups.md, "Reused leaves"): memory.peak and cpu.stat's
    usage cannot be reset here. A reaped child's v2 leaf is removed, and the next leaf is a new directory."""
    leaf = mgr.create_leaf("once", ResourcePolicy(memory=64 * cg.MiB))
    proc = cg.gated(["/bin/sh", "-c", "read x"])
    try:
        cg.place_and_release(leaf, proc)
        proc.wait(timeout=10)
        assert not leaf.release()
        assert not os.path.exists(leaf.paths[0])
        assert len(mgr.pool) == 0
        nxt = mgr.create_leaf("next", ResourcePolicy(memory=64 * cg.MiB))
        assert nxt.paths != leaf.paths
        nxt.remove()
    finally:
        cg.stop(proc)
