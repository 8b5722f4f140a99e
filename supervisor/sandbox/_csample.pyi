"""Type stub of supervisor/sandbox/_csample.c (the cgroup sampler's reader, the prefork Recheck's stats)."""

from typing import Any

def read_leaf(
    fds: tuple[int, int, int, int, int, int, int], cpu_v2: bool, /
) -> tuple[int | None, int | None, int | None, float | None, int | None, int | None, int | None]: ...

class Reader:
    """A cgroup leaf's sampling state (LeafSampler's fast path: cgroups/_stats.py)."""

    turn: int
    def __init__(self, stats_type: type[Any], cpu_v2: bool, turn: int = 0) -> None: ...
    def configure(
        self,
        all: tuple[int, int, int, int, int, int, int],
        due: tuple[int, int, int, int, int, int, int],
        quiet: int,
        seen_oom: int | None,
        seen_pids: int | None,
        tcp_hit_at: int | None,
        /,
    ) -> None: ...
    def read(self, mode: int, /) -> Any: ...
    @property
    def socket_limit_hit(self) -> int | None: ...

def stat_at(dirfds: list[int], names: list[bytes], careful: bytes | None = None, /) -> bytes: ...
def fs_type(fd: int, /) -> int: ...
