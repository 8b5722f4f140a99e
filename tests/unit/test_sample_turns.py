"""The sampler's turns (`LeafSampler.stats(turn=True)`, supervisor/sandbox/cgroups/_stats.py; `sample_all`,
supervisor/_monitor.py) on FAKE cgroup trees: regular files in tmp_path with the kernel's formats, rewritten
between samples to see which files a sample read. Nothing here reads a real cgroup: that the figures a
child's Result and gauges report are the kernel's is tests/kernel/test_sample_turns.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from policies import profiles
from supervisor._monitor import WATCH_ALL, sample_all
from supervisor.sandbox.cgroups._stats import LeafSampler

MiB = 1 << 20

V1 = {
    "memory.usage_in_bytes": "1000\n",
    "memory.max_usage_in_bytes": "5000\n",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "cpuacct.usage": "2000000000\n",
    "pids.current": "2\n",
    "pids.events": "max 0\n",
    "memory.kmem.tcp.max_usage_in_bytes": "1000000\n",
}


class Tree:
    """A fake v1 leaf: every controller's files in one directory."""

    def __init__(self, root: Path, tcp_hit_at: int | None = None) -> None:
        self.root = root
        for name, data in V1.items():
            self.put(name, data)
        self.leaf = LeafSampler(
            {c: str(root) for c in ("memory", "cpuacct", "pids")}, {"memory": 1, "cpuacct": 1, "pids": 1}
        )
        self.leaf._tcp_hit_at = tcp_hit_at  # as Leaf._memory_v1 sets it: the socket-buffer counter is sampled

    def put(self, name: str, data: str) -> None:
        (self.root / name).write_text(data)

    def bump(self, k: int) -> None:
        """Give every file a new value (k-th version), so that a sample shows which it read."""
        self.put("memory.usage_in_bytes", f"{1000 + k}\n")
        self.put("memory.max_usage_in_bytes", f"{5000 + k}\n")
        self.put("cpuacct.usage", f"{2000000000 + k * 1000000000}\n")
        self.put("pids.current", f"{2 + k}\n")
        self.put("memory.kmem.tcp.max_usage_in_bytes", f"{1000000 * (1 + k)}\n")


@pytest.fixture
def tree(tmp_path: Path) -> Any:
    t = Tree(tmp_path, tcp_hit_at=1 << 40)
    yield t
    t.leaf.close_fds()


def _fresh(s: Any, k: int) -> set[str]:
    """Which of the turn files' values in sample `s` are those of version k (the peak reported is the memory
    peak, 5000 + its version, plus the socket-buffer peak, 1000000 * (1 + its version))."""
    out = set()
    if s.memory_bytes == 1000 + k:
        out.add("usage")
    if s.cpu_seconds == 2.0 + k:
        out.add("cpu")
    if s.pids == 2 + k:
        out.add("pids")
    if s.memory_peak_bytes % 1000000 == 5000 + k:
        out.add("peak")
    if s.memory_peak_bytes // 1000000 == 1 + k:
        out.add("tcp")
    return out


def test_the_first_turn_reads_every_file_then_one_file_in_turn(tree: Tree) -> None:
    s = tree.leaf.stats(turn=True)
    assert s == (1000, 1005000, 2.0, 2, 0, 0), s  # every file: the carry starts from a full read
    seen: list[set[str]] = []
    for k in range(1, 9):
        tree.bump(k)
        s = tree.leaf.stats(turn=True)
        seen.append(_fresh(s, k))
    # One of the five turn files per sample, each once in five samples, in a fixed order.
    assert all(len(x) == 1 for x in seen), seen
    assert {f for x in seen[:5] for f in x} == {"usage", "cpu", "peak", "pids", "tcp"}, seen
    assert seen[5:] == seen[:3], seen


def test_a_carried_peak_is_raised_by_the_usage_and_never_passes_the_kernels(tree: Tree) -> None:
    tree.leaf.stats(turn=True)
    tree.leaf._reader.turn = 0  # from the first turn: the usage, the CPU, the peak, pids, the socket peak
    bound, kernel = 5000, 5000
    steps = [(5010, 9001), (5020, 9002), (5030, 9003), (12, 9004), (40, 9005), (9100, 9100), (9200, 9300)]
    for k, (usage, kernel) in enumerate(steps):
        tree.put("memory.usage_in_bytes", f"{usage}\n")
        tree.put("memory.max_usage_in_bytes", f"{kernel}\n")
        s = tree.leaf.stats(turn=True)
        assert s.memory_peak_bytes is not None
        peak = s.memory_peak_bytes - 1000000  # less the socket-buffer peak (unchanged)
        # Carried: the peak last read, raised to the usage at the usage's turns (the 1st and 6th); at its own
        # turns (the 3rd), the kernel's.
        if k == 2:
            bound = kernel
        elif k % 5 == 0:
            bound = max(bound, usage)
        assert peak == bound, (k, s)
        assert peak <= kernel, (k, s)
    assert bound == 9100  # a lower usage (the 4th and 5th samples) did not lower it


def test_a_moved_event_counter_reads_every_file(tree: Tree) -> None:
    tree.leaf.stats(turn=True)
    tree.bump(1)
    tree.put("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    s = tree.leaf.stats(turn=True)
    assert s == (1001, 2005001, 3.0, 3, 1, 0), s  # the enforcer gets the kill with a fresh peak and count
    tree.bump(2)
    s = tree.leaf.stats(turn=True)  # the counter holds still again: one file in turn
    assert s.oom_kills == 1, s
    assert len(_fresh(s, 2)) == 1, s
    tree.put("pids.events", "max 3\n")
    tree.bump(3)
    assert tree.leaf.stats(turn=True) == (1003, 4005003, 5.0, 5, 1, 3)


def test_the_final_sample_reads_every_file_and_turns_carry_on_from_it(tree: Tree) -> None:
    tree.leaf.stats(turn=True)
    tree.bump(1)
    tree.leaf.stats(turn=True)
    tree.bump(2)
    assert tree.leaf.stats() == (1002, 3005002, 4.0, 4, 0, 0)  # the final sample: every file, exact
    s = tree.leaf.stats(turn=True)  # nothing changed since: what is carried is what stats() read
    assert s == (1002, 3005002, 4.0, 4, 0, 0), s


def test_the_socket_limit_is_noticed_at_the_socket_counters_turn(tmp_path: Path) -> None:
    tree = Tree(tmp_path, tcp_hit_at=1500000)
    try:
        tree.leaf.stats(turn=True)
        assert tree.leaf.socket_limit_hit is None
        tree.put("memory.kmem.tcp.max_usage_in_bytes", "1600000\n")
        for _ in range(5):  # one turn of every file (five on v1 with a memory limit)
            tree.leaf.stats(turn=True)
        assert tree.leaf.socket_limit_hit == 1600000
    finally:
        tree.leaf.close_fds()


def test_a_leaf_without_some_files_reads_every_file_at_every_sample(tmp_path: Path) -> None:
    """No pids controller: the leaf takes the careful path (a pread per file, in Python), with no turns."""
    for name, data in V1.items():
        (tmp_path / name).write_text(data)
    leaf = LeafSampler({c: str(tmp_path) for c in ("memory", "cpuacct")}, {"memory": 1, "cpuacct": 1})
    try:
        assert leaf.stats(turn=True) == (1000, 5000, 2.0, None, 0, None)
        (tmp_path / "cpuacct.usage").write_text("3000000000\n")
        (tmp_path / "memory.max_usage_in_bytes").write_text("6000\n")
        assert leaf.stats(turn=True) == (1000, 6000, 3.0, None, 0, None)
    finally:
        leaf.close_fds()


class FakeLeaf(LeafSampler):
    def __init__(self, root: Path) -> None:
        self.paths = ["/fake"]
        super().__init__(
            {c: str(root) for c in ("memory", "cpuacct", "pids")}, {"memory": 1, "cpuacct": 1, "pids": 1}
        )
        self.enforced = {"memory": True, "pids": True}


def _child(leaf: FakeLeaf, **limits: Any) -> Any:
    policy = profiles.override(profiles.workspace_write("/tmp"), **limits)
    return SimpleNamespace(leaf=leaf, policy=policy, rules=(), proxy=None, _watch=None)


@pytest.mark.parametrize(
    ("limits", "turns"),
    [({"memory": "64M"}, True), ({"memory": "64M", "pids": 10}, True), ({}, True), ({"cpu_time": 5}, False)],
)
def test_sample_all_turns_only_children_whose_limits_need_no_live_value(
    tmp_path: Path, limits: dict[str, Any], turns: bool
) -> None:
    """A cpu_time limit (the supervisor enforces it from samples) reads every file at every full round; a
    child whose limits the kernel enforces, or without limits, one file in turn."""
    for name, data in V1.items():
        (tmp_path / name).write_text(data)
    leaf = FakeLeaf(tmp_path)
    child = _child(leaf, **limits)
    try:
        sample_all([child], False)
        assert (child._watch != WATCH_ALL) is turns
        (tmp_path / "memory.usage_in_bytes").write_text("1001\n")
        (tmp_path / "cpuacct.usage").write_text("3000000000\n")
        (tmp_path / "pids.current").write_text("3\n")
        (tmp_path / "memory.max_usage_in_bytes").write_text("6000\n")
        (s,) = sample_all([child], False)
        fresh = (s.memory_bytes == 1001) + (s.cpu_seconds == 3.0) + (s.pids == 3)
        fresh += s.memory_peak_bytes == 6000
        assert fresh == (1 if turns else 4), s
    finally:
        leaf.close_fds()


def test_a_format_the_reader_does_not_know_takes_the_careful_path(tree: Tree) -> None:
    """An older kernel's memory.oom_control (no oom_kill line before 4.13): the C reader refuses it, and the
    leaf reads every file with the Python parsers from then on, the counter None."""
    tree.leaf.stats(turn=True)
    tree.put("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")
    tree.bump(1)
    assert tree.leaf.stats(turn=True) == (1001, 2005001, 3.0, 3, None, 0)
    tree.bump(2)
    assert tree.leaf.stats(turn=True) == (1002, 3005002, 4.0, 4, None, 0)  # every file: no turns


def test_an_fd_limit_is_counted_in_full_rounds_not_between(tmp_path: Path) -> None:
    """WATCH_FDS: the child's full rounds go through psutil's fd count (`sample`), and it is not a reason
    to sample between full rounds (`sample_due` leaves a child with only an fd limit alone)."""
    from supervisor._monitor import WATCH_FDS, sample_due, watch

    for name, data in V1.items():
        (tmp_path / name).write_text(data)
    leaf = FakeLeaf(tmp_path)
    child = _child(leaf, max_fds=64)
    try:
        assert watch(child) == WATCH_FDS
        child._watch = WATCH_FDS
        assert sample_due([child]) == []
        (s,) = sample_all([child], False)  # without fd counts: the cgroup in turn
        assert s.memory_bytes == 1000, s
    finally:
        leaf.close_fds()
