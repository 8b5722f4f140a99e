"""The leaf pool's bookkeeping (supervisor/sandbox/cgroups/_pool.py) without a kernel: its bound by the fd
limit, and which kept leaf a request gets. Kept leaves on the real kernel: tests/kernel/test_cgroup_reuse.py.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import Any, cast

import pytest

from supervisor.sandbox.cgroups import _pool


class _Kept:
    """Stands for a Leaf: the pool reads only its directories."""

    def __init__(self, *paths: str) -> None:
        self.paths = list(paths)


@pytest.fixture
def soft_nofile() -> Iterator[Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield lower
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_pool_is_bounded_by_the_fd_limit(soft_nofile: Any) -> None:
    soft_nofile(256)
    assert _pool.size_for(64) == 256 // _pool.FDS_PER_KEPT == 8
    soft_nofile(16)
    assert _pool.size_for(64) == 0
    soft_nofile(64 * _pool.FDS_PER_KEPT + 1)
    assert _pool.size_for(64) == 64
    assert _pool.size_for(0) == 0


def test_a_request_gets_a_leaf_of_its_own_hierarchies_last_kept_first() -> None:
    pool = _pool.LeafPool(3)
    a = _Kept("/m/p/c1", "/a/p/c1")
    b = _Kept("/m/p/c2", "/a/p/c2")
    with_cpu = _Kept("/m/p/c3", "/c/p/c3", "/a/p/c3")
    for leaf in (a, b, with_cpu):
        assert pool.put(cast(Any, leaf))
    assert not pool.put(cast(Any, _Kept("/m/p/c4", "/a/p/c4")))  # full
    assert pool.take(("/m/p", "/c/p")) is None  # no leaf spans exactly those
    assert pool.take(("/m/p", "/a/p")) is b
    assert pool.take(("/m/p", "/c/p", "/a/p")) is with_cpu
    assert pool.take(("/m/p", "/a/p")) is a
    assert pool.take(("/m/p", "/a/p")) is None
    assert (pool.kept, pool.reused, len(pool)) == (3, 3, 0)


def test_a_closed_pool_keeps_nothing() -> None:
    pool = _pool.LeafPool(4)
    assert pool.put(cast(Any, _Kept("/m/p/c1")))
    pool.close()
    assert len(pool) == 0
    assert pool.held() == []
    assert not pool.put(cast(Any, _Kept("/m/p/c2")))
    assert not pool.has_room()
