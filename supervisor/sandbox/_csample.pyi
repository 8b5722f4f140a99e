"""Type stub of supervisor/sandbox/_csample.c (the cgroup sampler's reader)."""

def read_leaf(
    fds: tuple[int, int, int, int, int, int, int], cpu_v2: bool, /
) -> tuple[int | None, int | None, int | None, float | None, int | None, int | None, int | None]: ...
