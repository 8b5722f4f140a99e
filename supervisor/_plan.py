"""Compiling a Policy into what the fork server applies, once per distinct policy.

Each mechanism module's `prepare` runs here, in the parent, so that the child only applies ready data:
seccomp BPF bytes, the Landlock rule list, the mount plan, the id maps. Fail-closed decisions are made here
too: a layer the policy needs but the kernel lacks raises SandboxSetupError unless the policy is best_effort,
in which case the layer is listed in `missing` and a warning is logged.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from policies import Policy
from supervisor.sandbox import capabilities, landlock, mounts, namespaces, rlimits, seccomp
from supervisor.sandbox.probe import KernelCaps

log = logging.getLogger("corral")

_ids = itertools.count(1)

#: Layers applied unconditionally by the fork server (they need no kernel feature beyond Linux 5.9).
ALWAYS = (
    "capabilities",
    "no_new_privs",
    "rlimits",
    "new_session",
    "pdeathsig",
    "fd_close",
    "env_filter",
)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy ready for the fork server. `payload` is builtins only (it crosses with marshal)."""

    policy_id: int
    payload: dict[str, object]
    enforced: tuple[str, ...]
    missing: tuple[tuple[str, str], ...]


def compile_policy(policy: Policy, caps: KernelCaps) -> CompiledPolicy:
    """Run every mechanism's prepare step. Raises SandboxSetupError (fail closed) or PolicyError."""
    ns = namespaces.prepare(policy, caps)
    missing: list[tuple[str, str]] = [(str(a), str(b)) for a, b in ns["missing"]]  # type: ignore[attr-defined]
    enforced: list[str] = list(ns["enforced"])  # type: ignore[call-overload]
    mnt = mounts.prepare(policy, ns)
    if mnt is not None:
        enforced += mnt["enforced"]  # type: ignore[arg-type]
    elif policy.filesystem.confine:
        # Only reachable with best_effort: namespaces.prepare raised otherwise.
        missing.append(("mounts", "no mount namespace: no read-only root, protected paths or private /tmp"))
    private_dev = mnt is not None and bool(mnt["confine"])
    ll = landlock.prepare(policy, caps, private_network=bool(ns["net"]), private_dev=private_dev)
    if ll is not None:
        enforced += ll["enforced"]  # type: ignore[arg-type]
        missing += [(str(a), str(b)) for a, b in ll["missing"]]  # type: ignore[attr-defined]
    else:
        if policy.filesystem.confine:
            missing.append(("landlock", caps.landlock.reason))
        elif policy.network.mode == "none" and not ns["net"]:
            # No network namespace, and the Landlock TCP guard that would stand in for it is missing too.
            missing.append(("landlock_net_tcp", f"no network namespace and Landlock {caps.landlock.reason}"))
    sc = seccomp.prepare(policy, caps)
    if sc is not None:
        enforced.append("seccomp")
    elif policy.syscalls.enabled:
        why = (
            caps.seccomp.reason
            if not caps.seccomp.available
            else "the kernel has seccomp but the filter compiler (pyseccomp/libseccomp2) could not be loaded"
        )
        missing.append(("seccomp", why))
    enforced += ALWAYS
    payload: dict[str, object] = {
        "ns": ns,
        "cgroupns": "cgroup_ns" in enforced,
        "mounts": mnt,
        "landlock": ll,
        "seccomp": sc,
        "rlimits": rlimits.prepare(policy),
        "caps": capabilities.prepare(),
    }
    if missing:
        log.warning(
            "best_effort policy %r runs without: %s",
            policy.profile,
            "; ".join(f"{layer} ({why})" for layer, why in missing),
        )
    return CompiledPolicy(next(_ids), payload, tuple(enforced), tuple(missing))
