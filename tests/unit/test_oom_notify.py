"""Notifiers (supervisor/sandbox/cgroups/_notify.py) on real eventfds and a real epoll instance: a notifier
that turns ready names its owner and kind once, then is no longer watched; a discarded owner's never do.
(Real cgroup files' EPOLLPRI: tests/kernel/test_oom_events.py.)"""

from __future__ import annotations

import os
import select
from pathlib import Path

from supervisor.sandbox.cgroups._notify import OOM, PIDS, Notifiers
from supervisor.sandbox.cgroups._stats import LeafSampler


def test_a_fired_notifier_names_its_owner_once() -> None:
    ev: Notifiers[str] = Notifiers()
    a, b = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert ev.add("a", a, select.EPOLLIN)
        assert ev.add("b", b, select.EPOLLIN)
        assert ev.fired() == {}
        os.eventfd_write(a, 1)
        assert ev.fired() == {"a": {OOM}}
        assert ev.fired() == {}  # no longer watched, though still readable
        ev.discard("b")
        os.eventfd_write(b, 1)
        assert ev.fired() == {}
        assert (ev.registered, ev.fired_total) == (2, 1)
    finally:
        ev.close()
        os.close(a)
        os.close(b)


def test_a_closed_fd_or_a_closed_instance_is_refused() -> None:
    ev: Notifiers[str] = Notifiers()
    assert not ev.add("x", -1, select.EPOLLIN)
    ev.close()
    fd = os.eventfd(0)
    try:
        assert not ev.add("x", fd, select.EPOLLIN)
        assert ev.fired() == {}
    finally:
        os.close(fd)


def test_an_owner_has_one_notifier_per_kind_and_each_fires_alone() -> None:
    ev: Notifiers[str] = Notifiers()
    oom, pids, other = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3))
    try:
        assert ev.add("a", oom, select.EPOLLIN, OOM)
        assert ev.add("a", pids, select.EPOLLIN, PIDS)
        assert ev.add("b", other, select.EPOLLIN, PIDS)
        os.eventfd_write(pids, 1)
        assert ev.fired() == {"a": {PIDS}}
        os.eventfd_write(oom, 1)
        os.eventfd_write(other, 1)
        assert ev.fired() == {"a": {OOM}, "b": {PIDS}}
        assert (ev.registered, ev.fired_total) == (3, 3)
        ev.discard("a")  # nothing left to discard: harmless
    finally:
        ev.close()
        for fd in (oom, pids, other):
            os.close(fd)


def test_a_disarmed_leaf_registers_nothing(tmp_path: Path) -> None:
    """The supervisor disarms a finished child's leaf before discarding its notifiers, so that a sampler
    round still running cannot register one after the discard (it would keep the Child for ever). FAKE
    cgroup files in tmp_path; Notifiers replaced by a recorder."""
    for name, data in {
        "memory.current": "1\n", "memory.peak": "2\n", "memory.events": "oom_kill 0\n",
        "cpu.stat": "usage_usec 3\n", "pids.current": "1\n", "pids.events": "max 0\n",
    }.items():  # fmt: skip
        (tmp_path / name).write_text(data)
    dirs = {c: str(tmp_path) for c in ("memory", "cpuacct", "pids")}
    versions = dict.fromkeys(dirs, 2)
    added: list[tuple[str, str]] = []

    class Recorder(Notifiers[str]):
        def add(self, owner: str, fd: int, events: int, kind: str = OOM) -> bool:
            added.append((owner, kind))
            return True

    notifiers = Recorder()
    try:
        armed, disarmed = LeafSampler(dirs, versions), LeafSampler(dirs, versions)
        disarmed.disarm()
        disarmed.arm(notifiers, "gone", 0)
        armed.arm(notifiers, "live", 0)
        assert sorted(added) == [("live", OOM), ("live", PIDS)]
        assert armed.stats(notified=True) == disarmed.stats() == (1, 2, 3e-6, 1, 0, 0)
    finally:
        notifiers.close()
        armed.close_fds()
        disarmed.close_fds()
