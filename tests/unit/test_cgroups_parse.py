"""Parsers of the cgroups layer, run on FAKE fixture trees built in tmp_path.

Nothing here touches the real /proc or /sys/fs/cgroup: each test writes a fake `proc/self/mountinfo`,
`proc/self/cgroup` and the few cgroupfs files discovery reads (plain files in plain directories) and
points `discover(proc_root=..., cgroup_root=...)` at them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from policies import ResourcePolicy
from supervisor._errors import SandboxSetupError
from supervisor.sandbox import cgroups
from supervisor.sandbox.cgroups import (
    CgroupManager,
    discover,
    parse_mountinfo,
    parse_proc_cgroup,
    parse_stats,
)
from supervisor.sandbox.cgroups._fs import owner_alive, setup_error, stale_name_re
from supervisor.sandbox.cgroups._stats import field_value

# This very host: v1 controllers each in their own hierarchy, memory in a non-root cgroup, an empty
# cgroup2 at /sys/fs/cgroup/unified.
HYBRID_MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

# Debian 12 / Ubuntu 22.04+: pure cgroup2, a systemd user session scope.
V2_MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""
V2_SCOPE = "/user.slice/user-1000.slice/session-3.scope"

# An old v1-only host: cpu and cpuacct co-mounted, no freezer, no cgroup2.
V1_MOUNTINFO = """\
25 18 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs ro,mode=755
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""
V1_CGROUP = """\
5:pids:/user.slice/user-1000.slice
4:memory:/user.slice
2:cpu,cpuacct:/user.slice
"""


def fake_tree(
    tmp_path: Path, mountinfo: str, proc_cgroup: str, files: dict[str, str] | None = None
) -> tuple[str, str]:
    """A fake /proc/self and /sys/fs/cgroup under tmp_path; returns (proc_root, cgroup_root)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "self" / "cgroup").write_text(proc_cgroup)
    cg = tmp_path / "cg"
    cg.mkdir()
    for rel, content in (files or {}).items():
        p = cg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return str(proc), str(cg)


def test_public_api_is_pinned() -> None:
    assert sorted(cgroups.__all__) == sorted(
        [
            "CONTROLLERS",
            "CPU_PERIOD_US",
            "CgroupLayout",
            "CgroupManager",
            "CgroupStats",
            "Hierarchy",
            "Leaf",
            "discover",
            "parse_mountinfo",
            "parse_proc_cgroup",
            "parse_stats",
        ]
    )


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes() -> None:
    text = (
        HYBRID_MOUNTINFO
        + "50 31 0:40 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,hugetlb\n"
        + "garbage line without separator\n"
        + "51 31 0:41 / /x rw -\n"
    )
    mounts = parse_mountinfo(text)
    points = [m.mount_point for m in mounts]
    assert "/" not in points
    assert "/sys/fs/cgroup" not in points
    assert "/sys/fs/cgroup/with space" in points
    unified = [m for m in mounts if m.fstype == "cgroup2"]
    assert [m.mount_point for m in unified] == ["/sys/fs/cgroup/unified"]
    mem = next(m for m in mounts if m.mount_point == "/sys/fs/cgroup/memory")
    assert "memory" in mem.options
    assert mem.root == "/"


def test_parse_proc_cgroup() -> None:
    v1, v2 = parse_proc_cgroup(HYBRID_CGROUP + "bad line\n")
    assert v2 == "/"
    assert v1[frozenset({"memory"})] == "/process_api/abc"
    assert v1[frozenset({"name=systemd"})] == "/"
    v1, v2 = parse_proc_cgroup("0::/a/b:c\n")  # a colon inside the path survives
    assert v1 == {}
    assert v2 == "/a/b:c"


def test_discover_hybrid(tmp_path: Path) -> None:
    """Fake tree shaped like this host: every controller on v1, an empty cgroup2 beside them."""
    proc, cg = fake_tree(
        tmp_path, HYBRID_MOUNTINFO, HYBRID_CGROUP, {"unified/cgroup.controllers": "hugetlb\n"}
    )
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.mode == "hybrid"
    assert layout.missing == {}
    assert {c: layout.version(c) for c in cgroups.CONTROLLERS} == dict.fromkeys(cgroups.CONTROLLERS, 1)
    assert layout.controllers["memory"].path == os.path.join(cg, "memory/process_api/abc")
    assert layout.controllers["pids"].path == os.path.join(cg, "pids")
    assert layout.unified is not None
    assert layout.unified.controllers == frozenset({"hugetlb"})
    assert layout.unified.path == os.path.join(cg, "unified")
    assert len(layout.hierarchies()) == 5  # cpu and cpuacct are separate mounts here


def test_discover_pure_v2(tmp_path: Path) -> None:
    """Fake pure-v2 tree: a user session scope with memory, cpu and pids delegated."""
    proc, cg = fake_tree(
        tmp_path,
        V2_MOUNTINFO,
        f"0::{V2_SCOPE}\n",
        {V2_SCOPE.lstrip("/") + "/cgroup.controllers": "cpu io memory pids\n"},
    )
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.mode == "v2"
    assert layout.missing == {}
    assert set(layout.controllers) == set(cgroups.CONTROLLERS)
    h = layout.controllers["memory"]
    assert h.version == 2
    assert h.path == os.path.join(cg, V2_SCOPE.lstrip("/"))
    assert h.controllers == frozenset({"cpu", "io", "memory", "pids"})
    assert layout.hierarchies() == [h]  # one tree serves everything, freezer and cpuacct included


def test_discover_v2_controller_not_delegated(tmp_path: Path) -> None:
    """Fake v2 tree whose parent enables only pids for us: memory and cpu are missing, with why."""
    proc, cg = fake_tree(
        tmp_path,
        V2_MOUNTINFO,
        f"0::{V2_SCOPE}\n",
        {V2_SCOPE.lstrip("/") + "/cgroup.controllers": "pids\n"},
    )
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.version("pids") == 2
    assert layout.version("freezer") == 2
    assert layout.version("cpuacct") == 2
    assert layout.version("memory") is None
    assert "subtree_control" in layout.missing["memory"]
    assert "cpu" in layout.missing


def test_discover_v1_only_comounted(tmp_path: Path) -> None:
    """Fake v1-only tree: cpu,cpuacct co-mounted, no freezer mounted, no cgroup2 at all."""
    proc, cg = fake_tree(tmp_path, V1_MOUNTINFO, V1_CGROUP)
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.mode == "v1"
    assert layout.unified is None
    assert layout.controllers["cpu"] is layout.controllers["cpuacct"]
    assert layout.controllers["cpu"].path == os.path.join(cg, "cpu,cpuacct/user.slice")
    assert layout.controllers["pids"].path == os.path.join(cg, "pids/user.slice/user-1000.slice")
    assert "freezer" in layout.missing
    assert len(layout.hierarchies()) == 3


def test_discover_container_bind_mount(tmp_path: Path) -> None:
    """Fake container tree: the host cgroup /docker/abc is bind-mounted as the cgroup2 root."""
    mountinfo = "30 22 0:23 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
    proc, cg = fake_tree(
        tmp_path, mountinfo, "0::/docker/abc/app\n", {"app/cgroup.controllers": "memory pids\n"}
    )
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.controllers["memory"].path == os.path.join(cg, "app")
    assert layout.version("cpu") is None


def test_discover_cgroup_not_visible(tmp_path: Path) -> None:
    """Fake tree where our cgroup lies outside the mounted sub-tree: nothing usable, reasons given."""
    mountinfo = "30 22 0:23 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
    proc, cg = fake_tree(tmp_path, mountinfo, "0::/elsewhere\n")
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.mode == "none"
    assert "not visible" in layout.missing["memory"]


def test_discover_nothing_mounted(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "22 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n")
    layout = discover(proc_root=proc, cgroup_root=cg)
    assert layout.mode == "none"
    assert set(layout.missing) == set(cgroups.CONTROLLERS)


def test_hierarchy_dir_of_refuses_outside_root(tmp_path: Path) -> None:
    h = cgroups.Hierarchy(2, "/sys/fs/cgroup", "/docker/abc", "/docker/abc", frozenset())
    assert h.path == "/sys/fs/cgroup"
    assert h.dir_of("/docker/abc/x/y") == "/sys/fs/cgroup/x/y"
    with pytest.raises(ValueError, match="outside"):
        h.dir_of("/docker/abcd")


def test_parse_stats_v2() -> None:
    s = parse_stats(
        2,
        b"1048576\n",
        b"2097152\n",
        b"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n",
        b"usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        b"7\n",
        b"max 4\n",
    )
    assert s == cgroups.CgroupStats(1048576, 2097152, 1.5, 7, 2, 4)


def test_parse_stats_v1_and_missing_files() -> None:
    s = parse_stats(
        1,
        b"4096\n",
        None,
        b"oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        b"2500000000\n",
        None,
        b"max 0\n",
    )
    assert s == cgroups.CgroupStats(4096, None, 2.5, None, 5, 0)


def test_field_matches_whole_keys_at_line_start() -> None:
    data = b"oom_group_kill 9\nxoom_kill 8\noom_kill 1\n"
    assert field_value(data, b"oom_kill ") == 1
    assert field_value(b"max.imposed 3\nmax 2", b"max ") == 2
    assert field_value(b"nothing 1\n", b"max ") is None


def test_stale_names() -> None:
    rx = stale_name_re("corral")
    m = rx.fullmatch("corral-123-456")
    assert m is not None
    assert m["pid"] == "123"
    assert m["start"] == "456"
    assert not m["self"]
    m = rx.fullmatch("corral-123")
    assert m is not None
    assert m["start"] is None
    m = rx.fullmatch("corral-123-456.self")
    assert m is not None
    assert m["self"]
    for other in ("corral-x-1", "corralx-1", "corral-1-2-3", "other-1", "corral-"):
        assert rx.fullmatch(other) is None


def test_owner_alive_uses_start_time(tmp_path: Path) -> None:
    """Fake /proc/<pid>/stat files: a live owner, a zombie, a reused pid, a vanished one."""

    def stat(pid: int, state: str, start: int) -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        rest = " ".join(["0"] * 18)
        (d / "stat").write_text(f"{pid} (py (x) y) {state} {rest} {start} 0 0\n")

    stat(10, "S", 777)
    stat(11, "Z", 778)
    root = str(tmp_path)
    assert owner_alive(10, 777, root)
    assert owner_alive(10, None, root)
    assert not owner_alive(10, 778, root)  # pid reused by another process
    assert not owner_alive(11, 778, root)  # zombie
    assert not owner_alive(12, None, root)  # gone


def test_errors_are_translated_with_hints() -> None:
    err = setup_error(OSError(errno.EBUSY, "busy"), "write cgroup.subtree_control", "/x")
    assert isinstance(err, SandboxSetupError)
    assert err.layer == "cgroups"
    assert err.errno == errno.EBUSY
    assert err.path == "/x"
    assert "no-internal-processes" in err.hint
    assert "EBUSY" in str(err)
    err = setup_error(OSError(errno.EACCES, "denied"), "mkdir corral-1", "/y")
    assert "Delegate=yes" in err.hint
    assert "chown" in err.hint
    err = setup_error(OSError(errno.EROFS, "ro"), "mkdir corral-1", "/y")
    assert "read-only" in err.hint


def test_unavailable_manager_reports_and_fails_closed(tmp_path: Path) -> None:
    """Fake tree with no cgroup mounts: open() works, every requested limit is reported missing."""
    proc, cg = fake_tree(tmp_path, "22 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n")
    (Path(proc) / str(os.getpid())).mkdir()
    (Path(proc) / str(os.getpid()) / "stat").write_text(f"{os.getpid()} (x) R " + "0 " * 19)
    mgr = CgroupManager(proc_root=proc, cgroup_root=cg)
    mgr.open("corral")
    assert not mgr.available
    assert "memory" in mgr.reason
    leaf = mgr.create_leaf("c1", ResourcePolicy(memory=1 << 20, pids=5))
    assert not leaf.available
    assert leaf.procs_files == []
    assert leaf.enforced == {"memory": False, "swap": False, "pids": False}
    assert set(leaf.missing()) == {"memory", "pids"}
    with pytest.raises(SandboxSetupError, match="memory"):
        leaf.require()
    assert leaf.stats() == cgroups.CgroupStats(None, None, None, None, None, None)
    assert leaf.kill() is True
    leaf.remove()
    mgr.close()


def test_bad_names_are_refused(tmp_path: Path) -> None:
    mgr = CgroupManager(layout=cgroups.CgroupLayout())
    with pytest.raises(ValueError, match="prefix"):
        mgr.open("corral-1")
    mgr = CgroupManager(layout=cgroups.CgroupLayout())
    mgr.open("corral", cleanup_stale=False)
    for bad in ("../x", "a/b", "..", "", "-x"):
        with pytest.raises(ValueError, match="child id"):
            mgr.create_leaf(bad, ResourcePolicy())
    mgr.create_leaf("ok", ResourcePolicy())
    with pytest.raises(ValueError, match="exists"):
        mgr.create_leaf("ok", ResourcePolicy())


def test_stale_name_re_tells_locked_names_from_earlier_ones() -> None:
    rx = stale_name_re("corral")
    m = rx.fullmatch("corral-12-34-l0123abcd")
    assert m is not None
    assert (m["pid"], m["start"], m["lock"], m["self"]) == ("12", "34", "0123abcd", None)
    m = rx.fullmatch("corral-12-34-l0123abcd.self")
    assert m is not None
    assert m["lock"] == "0123abcd"
    assert m["self"] == ".self"
    m = rx.fullmatch("corral-12-34.2")
    assert m is not None
    assert m["lock"] is None
    for other in ("corral-12-34-l0123", "corral-12-34-l0123abcd.2", "corral-12-34-xdeadbeef"):
        assert rx.fullmatch(other) is None, other
