"""Resource limits set with setrlimit in the child: no core dumps, and the policy's fd, process and file
size limits. These are per-process backstops; the cgroup and the supervisor enforce the tree-wide limits."""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING

from supervisor.sandbox import _sys

if TYPE_CHECKING:
    from policies import Policy


def prepare(policy: Policy) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples. RLIMIT_NPROC counts per user, not per tree, and is ignored for
    real root; it is set from `pids` only as a backstop for ordinary users without a pids cgroup."""
    r = policy.resources
    limits = [(resource.RLIMIT_CORE, 0, 0)]
    if r.fds is not None:
        limits.append((resource.RLIMIT_NOFILE, r.fds, r.fds))
    if r.fsize is not None:
        limits.append((resource.RLIMIT_FSIZE, r.fsize, r.fsize))
    if r.pids is not None:
        limits.append((resource.RLIMIT_NPROC, r.pids, r.pids))
    return limits


def apply(prepared: list[tuple[int, int, int]]) -> None:
    """Child side: setrlimit each entry. Raising a hard limit fails (EPERM) without CAP_SYS_RESOURCE in the
    initial namespace; the soft and hard limits are then both lowered to the current hard one only if the
    request was higher, which keeps the limit at least as strict as asked. Raises SetupFailure."""
    for res, soft, hard in prepared:
        try:
            _cur_soft, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY and hard > cur_hard:
                soft, hard = min(soft, cur_hard), cur_hard
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as err:
            code = getattr(err, "errno", 0) or 0
            raise _sys.SetupFailure("rlimits", f"setrlimit({res}, {soft}, {hard})", code) from err
