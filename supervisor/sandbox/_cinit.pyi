"""Type stub of the sandbox init's C extension (supervisor/sandbox/_cinit.c; see its header comment)."""

import mmap

MAGIC: int
LAYOUT: dict[str, dict[str, int]]
MAX_SEGMENTS: int
SLOTS: int
SLOT_NET_SYSFS: int
SLOT_HOSTDEV: int
SLOT_SCAFFOLD: int
OP_WRITE: int
OP_PDEATHSIG: int
OP_SETSID: int
OP_UNSHARE: int
OP_SETHOSTNAME: int
OP_LOOPBACK_UP: int
OP_MOUNT: int
OP_SETATTR: int
OP_MKDIR: int
OP_CREAT: int
OP_SYMLINK: int
OP_UMOUNT: int
OP_RMDIR: int
OP_CHDIR: int
OP_ENSURE: int
OP_CLOSE: int
OP_RLIMIT: int
OP_BOUNDING: int
OP_PRCTL: int
OP_CAPSET_ZERO: int
OP_LL_CREATE: int
OP_LL_PATH: int
OP_LL_NET: int
OP_LL_RESTRICT: int
OP_SECCOMP: int
OP_JUMP: int
OP_OPEN_PATH: int
OP_MOUNT_AT: int
OP_UNLINK: int
OP_PROXY_LISTEN: int
OP_SECCOMP_NOTIFY: int
OP_SETID: int
OP_WATCH: int
OP_CLONE_AT: int

def start(
    flags: int,
    path: bytes,
    plan_fd: int,
    keep: tuple[int, ...],
    netns: int = -1,
    slot: mmap.mmap = ...,
    /,
    *,
    premap: tuple[int, int] | None = None,
    exec_fd: int = -1,
) -> tuple[int, int, str | None]: ...
def apply(plan: bytes, /) -> tuple[int, int, str | None] | None: ...
def identities(paths: list[str] | list[bytes], known: bytes | None = None, /) -> bytes: ...
def netns_new() -> tuple[int, int, int, int, int]: ...
def overlay_new(lowerdir: str, /) -> int: ...
def netns_unused(sockstat: int, flowlabel: int, dev: int, /) -> bool: ...
