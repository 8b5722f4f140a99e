"""OomEvents (supervisor/sandbox/cgroups/_notify.py) on real eventfds and a real epoll instance: a notifier
that turns ready names its owner once, then is no longer watched; a discarded one never does."""

from __future__ import annotations

import os
import select

from supervisor.sandbox.cgroups._notify import OomEvents


def test_a_fired_notifier_names_its_owner_once() -> None:
    ev = OomEvents()
    a, b = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert ev.add("a", a, select.EPOLLIN)
        assert ev.add("b", b, select.EPOLLIN)
        assert ev.fired() == set()
        os.eventfd_write(a, 1)
        assert ev.fired() == {"a"}
        assert ev.fired() == set()  # no longer watched, though still readable
        ev.discard("b")
        os.eventfd_write(b, 1)
        assert ev.fired() == set()
        assert (ev.registered, ev.fired_total) == (2, 1)
    finally:
        ev.close()
        os.close(a)
        os.close(b)


def test_a_closed_fd_or_a_closed_instance_is_refused() -> None:
    ev = OomEvents()
    assert not ev.add("x", -1, select.EPOLLIN)
    ev.close()
    fd = os.eventfd(0)
    try:
        assert not ev.add("x", fd, select.EPOLLIN)
        assert ev.fired() == set()
    finally:
        os.close(fd)
