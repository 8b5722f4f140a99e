"""The cgroups layer on real cgroup v1 hierarchies (this hybrid host, natively, as root).

Real processes are placed into real leaves by writing `Leaf.procs_files`, as the fork server does, and the
limits are checked from outside: an OOM-killed memory hog, a fork storm stopped at pids.max, a busy loop held
to its cpu quota, a double-forked daemon killed with its tree, stale cgroups of a dead supervisor removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from policies import ResourcePolicy
from supervisor.sandbox.cgroups import CgroupManager, discover
from tests.kernel import conftest_cgroups as cg

_LAYOUT = discover()
_V1 = [c for c in ("memory", "cpu", "cpuacct", "pids", "freezer") if _LAYOUT.version(c) == 1]

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroup v1 tests need root"),
    pytest.mark.skipif(
        len(_V1) < 5,
        reason=f"needs memory, cpu, cpuacct, pids and freezer on cgroup v1; this host has {_V1} "
        f"(layout {_LAYOUT.mode}: {_LAYOUT.missing})",
    ),
]


@pytest.fixture
def mgr() -> Iterator[CgroupManager]:
    yield from cg.manager_fixture()


def test_open_makes_one_parent_per_hierarchy(mgr: CgroupManager) -> None:
    assert mgr.available, mgr.reason
    assert mgr.controllers == dict.fromkeys(("memory", "cpu", "cpuacct", "pids", "freezer"), 1)
    assert len(mgr.parents) == len(_LAYOUT.hierarchies())
    for p in mgr.parents:
        assert os.path.basename(p) == mgr.name
        assert os.path.isdir(p)
    assert mgr.name.startswith(f"{cg.PREFIX}-{os.getpid()}-")


def test_limits_are_written(mgr: CgroupManager) -> None:
    leaf = mgr.create_leaf("limits", ResourcePolicy(memory=64 * cg.MiB, cpus=0.2, pids=50))
    try:
        assert leaf.enforced == {
            "memory": True,
            "swap": True,
            "socket_memory": True,
            "cpus": True,
            "pids": True,
        }
        assert len(leaf.procs_files) == len(_LAYOUT.hierarchies())
        mem = leaf.dir("memory")
        cpu = leaf.dir("cpu")
        pids = leaf.dir("pids")
        assert mem
        assert cpu
        assert pids
        assert int(cg.read(f"{mem}/memory.limit_in_bytes")) == 64 * cg.MiB
        # Socket buffers are charged on v1 only once this limit is written (docs/cgroups.md).
        assert int(cg.read(f"{mem}/memory.kmem.tcp.limit_in_bytes")) == 64 * cg.MiB
        if os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):
            assert int(cg.read(f"{mem}/memory.memsw.limit_in_bytes")) == 64 * cg.MiB
        assert "oom_kill_disable 0" in cg.read(f"{mem}/memory.oom_control")
        assert cg.read(f"{cpu}/cpu.cfs_period_us") == "100000"
        assert cg.read(f"{cpu}/cpu.cfs_quota_us") == "20000"
        assert cg.read(f"{pids}/pids.max") == "50"
        st = leaf.stats()
        assert st.pids == 0
        assert st.oom_kills == 0
        assert st.cpu_seconds == 0.0
    finally:
        leaf.remove()
    assert not any(os.path.exists(p) for p in leaf.paths)


def test_memory_hog_is_oom_killed(mgr: CgroupManager) -> None:
    cg.check_memory_limit(mgr)


def test_fork_storm_stops_at_pids_max(mgr: CgroupManager) -> None:
    cg.check_pids_limit(mgr, storm=200)


def test_busy_loop_held_to_cpu_quota(mgr: CgroupManager) -> None:
    cg.check_cpu_quota(mgr)


def test_kill_takes_the_whole_tree_with_a_double_forked_daemon(mgr: CgroupManager) -> None:
    cg.check_kill_tree(mgr)


def test_kill_leaves_the_freezer_thawed(mgr: CgroupManager) -> None:
    leaf = mgr.create_leaf("thaw", ResourcePolicy())
    proc = cg.gated(["/bin/sleep", "1000"])
    try:
        cg.place_and_release(leaf, proc)
        assert leaf.kill()
        assert cg.read(f"{leaf.dir('freezer')}/freezer.state") == "THAWED"
    finally:
        cg.stop(proc)
        leaf.remove()


def test_stale_cgroups_of_a_dead_supervisor_are_removed(mgr: CgroupManager) -> None:
    cg.check_stale_cleanup(mgr)


def test_close_kills_and_removes_everything() -> None:
    cg.check_close_kills_and_removes_all()


def test_failed_limit_write_is_translated_and_rolled_back(
    mgr: CgroupManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    cg.check_failed_limit_rolls_back(mgr, monkeypatch)


NOBODY = 65534


def _delegated_dirs() -> dict[str, str]:
    """A directory per hierarchy, chowned to nobody as a v1 admin would: controller -> cgroup path."""
    paths: dict[str, str] = {}
    for h in _LAYOUT.hierarchies():
        rel = h.cgroup.rstrip("/") + f"/{cg.PREFIX}-deleg"
        os.mkdir(h.dir_of(rel))
        cg.chown_cgroup(h.dir_of(rel), NOBODY)
        for c in h.controllers:
            paths[c] = rel
    return paths


def test_ordinary_user_with_chowned_v1_directories() -> None:
    paths = _delegated_dirs()
    try:
        out = cg.run_supervisor(user=NOBODY, delegate=paths)
        assert out["available"], out
        assert out["controllers"] == dict.fromkeys(_V1, 1), out
        assert out["enforced"] == {"memory": True, "swap": True, "socket_memory": True, "pids": True}, out
        assert out["placed"], out
        assert out["killed"], out
        assert out["rc"] == -9, out
        assert out["parents_left"] == [], out
    finally:
        for h in _LAYOUT.hierarchies():
            os.rmdir(h.dir_of(h.cgroup.rstrip("/") + f"/{cg.PREFIX}-deleg"))


def test_ordinary_user_without_delegation_is_told_how() -> None:
    out = cg.run_supervisor(user=NOBODY)
    assert not out["available"], out
    assert out["controllers"] == {}, out
    hints = " ".join(out["errors"])  # type: ignore[arg-type]
    assert "chown" in hints, out
    assert "Delegate=yes" in hints, out
