"""Notifiers (supervisor/sandbox/cgroups/_notify.py) on real eventfds and a real epoll instance: a notifier
that turns ready names its owner and kind once, then is no longer watched; a discarded owner's never do.
(Real cgroup files' EPOLLPRI: tests/kernel/test_oom_events.py.)"""

from __future__ import annotations

import os
import select

from supervisor.sandbox.cgroups._notify import OOM, PIDS, Notifiers


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
