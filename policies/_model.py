"""The Policy model: what a sandboxed child may do. Pure data, no syscalls.

Every class is a frozen dataclass so that a policy can be hashed, cached (the supervisor compiles each distinct
policy once) and shared between tasks without copies. Construct policies through `profiles` or
`load_policy`/`policy_from_dict`, which validate; direct construction validates too (see `__post_init__`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NetworkMode = Literal["none", "host"]

#: Paths, relative to each writable root, that stay read-only (the git hook/config escape: code written there
#: runs later outside the sandbox, in the user's own `git commit`).
DEFAULT_PROTECTED: tuple[str, ...] = (".git/hooks", ".git/config")

#: Environment variable names containing one of these (case-insensitive) are dropped unless passed explicitly.
DEFAULT_SECRET_MARKERS: tuple[str, ...] = ("KEY", "SECRET", "TOKEN", "PASSWORD")


@dataclass(frozen=True, slots=True)
class FilesystemPolicy:
    """Filesystem confinement.

    confine:   False means no filesystem confinement at all (the full-access profile); the other fields are
               then ignored except `private_tmp`.
    read:      absolute paths readable (and listable) with everything beneath them.
    write:     absolute paths writable with everything beneath them (also readable).
    deny:      absolute paths hidden from the child (an empty read-only directory or file is mounted over them).
    protected: paths relative to each writable root kept read-only (default: .git/hooks, .git/config).
    execute:   None: anything readable may be executed; otherwise only files beneath these absolute paths.
    private_tmp: a private tmpfs on /tmp and /dev/shm (host /tmp and /run are hidden either way when confined).
    """

    confine: bool = True
    read: tuple[str, ...] = ("/",)
    write: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    protected: tuple[str, ...] = DEFAULT_PROTECTED
    execute: tuple[str, ...] | None = None
    private_tmp: bool = True


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """`none`: a private network namespace with only loopback up. `host`: the host's network."""

    mode: NetworkMode = "none"


@dataclass(frozen=True, slots=True)
class SyscallPolicy:
    """Seccomp filter adjustments on top of the built-in deny list.

    deny:  extra syscall names answered with EPERM.
    allow: names removed from the built-in deny list (an explicit, visible weakening).
    enabled: False disables the seccomp layer entirely.
    """

    enabled: bool = True
    deny: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResourcePolicy:
    """Resource limits. None means unlimited.

    memory:   bytes (cgroup memory limit, swap 0).
    cpus:     CPU quota in cores (cgroup cpu.max / cfs quota).
    pids:     maximum number of tasks in the child's cgroup.
    timeout:  wall-clock seconds.
    cpu_time: CPU seconds (user + system, whole tree).
    fds:      open file descriptors (RLIMIT_NOFILE, and watched by the supervisor).
    output:   bytes of stdout + stderr.
    fsize:    largest file the child may write, bytes (RLIMIT_FSIZE).
    """

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    timeout: float | None = None
    cpu_time: float | None = None
    fds: int | None = None
    output: int | None = None
    fsize: int | None = None


@dataclass(frozen=True, slots=True)
class EnvPolicy:
    """Which environment variables reach the child.

    clear:          start from an empty environment instead of the caller's.
    set:            (name, value) pairs set explicitly (always passed, even if the name looks secret).
    passthrough:    names passed from the caller's environment even if they look secret.
    secret_markers: substrings (case-insensitive) that make a name secret.
    """

    clear: bool = False
    set: tuple[tuple[str, str], ...] = ()
    passthrough: tuple[str, ...] = ()
    secret_markers: tuple[str, ...] = DEFAULT_SECRET_MARKERS


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a child is allowed. `profile` names the built-in profile it was derived from.

    workdir: the child's working directory (absolute), None for the caller's current directory.
    best_effort: when a requested layer cannot be applied on this kernel, run anyway and record which layers
                 took effect (a warning is logged). False (the default) fails closed.
    """

    profile: str = "custom"
    workdir: str | None = None
    filesystem: FilesystemPolicy = field(default_factory=FilesystemPolicy)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    syscalls: SyscallPolicy = field(default_factory=SyscallPolicy)
    resources: ResourcePolicy = field(default_factory=ResourcePolicy)
    environment: EnvPolicy = field(default_factory=EnvPolicy)
    best_effort: bool = False
