"""Resource limits set with setrlimit by the sandbox init: no core dumps unless the command raises its soft
limit (and never when the host pipes cores to a program), and the policy's fd, process and file size limits.
These are per-process backstops; the cgroup and the supervisor enforce the tree-wide limits."""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING

from supervisor.sandbox import _cinit

if TYPE_CHECKING:
    from policies import Policy
    from supervisor.sandbox._ops import Plan


def prepare(policy: Policy) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples. RLIMIT_FSIZE is the smaller of `fsize` and `disk`. RLIMIT_NPROC counts
    per user, not per tree, and is ignored for
    real root; it is set from `pids` only as a backstop for ordinary users without a pids cgroup."""
    r = policy.resources
    limits = [(resource.RLIMIT_CORE, 0, _core_hard(r.fsize))]
    if r.fds is not None:
        limits.append((resource.RLIMIT_NOFILE, r.fds, r.fds))
    # The disk budget also caps each file exactly: the sampled total could otherwise be overshot by one
    # large write between two samples.
    fsize = min((x for x in (r.fsize, r.disk) if x is not None), default=None)
    if fsize is not None:
        limits.append((resource.RLIMIT_FSIZE, fsize, fsize))
    if r.pids is not None:
        limits.append((resource.RLIMIT_NPROC, r.pids, r.pids))
    return limits


def emit(prepared: list[tuple[int, int, int]], plan: Plan) -> None:
    """setrlimit each entry, in the sandbox init. Raising a hard limit fails (EPERM) without CAP_SYS_RESOURCE
    in the initial namespace, so the init lowers soft and hard to the current hard limit instead when the
    request is higher, which keeps the limit at least as strict as asked."""
    for res, soft, hard in prepared:
        plan.add(_cinit.OP_RLIMIT, "rlimits", f"setrlimit({res}, {soft}, {hard})", a=(res, soft, hard))


def _core_hard(fsize: int | None) -> int:
    """The hard core-size limit: 0 (no core dumps, `ulimit -c` cannot raise it) when the host pipes core
    dumps to a program (kernel.core_pattern starting with `|`: the kernel would run the host's helper, as
    root in the initial namespaces, on the sandbox's crash), else up to the policy's fsize (unlimited
    without one), so that `ulimit -c unlimited` works and a core file lands where a crash's file would:
    in the sandbox's own view, inside its writable roots. The soft limit stays 0: no core unless asked."""
    try:
        with open("/proc/sys/kernel/core_pattern", "rb") as f:  # the host's, not a sandbox's path
            piped = f.read(1) == b"|"
    except OSError:
        piped = True  # unknown: the strict answer
    if piped:
        return 0
    return fsize if fsize is not None else resource.RLIM_INFINITY
