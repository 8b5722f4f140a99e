"""Compiling a Policy into what the fork server applies, once per distinct policy.

Each mechanism module's `prepare` runs here, in the parent, so that the child only applies ready data:
seccomp BPF bytes, the Landlock rule list, the mount plan, the id maps. Fail-closed decisions are made here
too: a layer the policy needs but the kernel lacks raises SandboxSetupError unless the policy is best_effort,
in which case the layer is listed in `missing` and a warning is logged.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

from policies import Policy, check_writable_roots
from supervisor import _denials
from supervisor.forkserver.protocol import CompiledPayload
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
    payload: CompiledPayload
    enforced: tuple[str, ...]
    missing: tuple[tuple[str, str], ...]
    #: Layers in force whose refusals cannot be reported, with why (Result.denials_unobservable).
    unobservable: tuple[tuple[str, str], ...] = ()


class SharedParts:
    """The parts of a compilation that do not depend on a policy's paths, kept for the policies that share
    them: agent harnesses make a fresh workdir per task, and each workdir is another policy (it is the
    first writable root). Only the seccomp filter is kept (about 90% of a compilation's time, ~1 ms, and
    1.6 kB of its payload): `seccomp.prepare` reads `policy.syscalls`, `policy.network` (socket families),
    `policy.best_effort` and whether `resources.disk` is set (fallocate) alone (and the kernel's caps, fixed
    per supervisor), so those are its key. The paths' parts (mounts, Landlock)
    are compiled for each policy. Bounded: the least recently used entries go first. Safe to call from
    worker threads (at worst two threads compute one entry)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._seccomp: OrderedDict[tuple[object, ...], dict[str, object] | None] = OrderedDict()

    def seccomp(self, policy: Policy, caps: KernelCaps) -> dict[str, object] | None:
        """`seccomp.prepare(policy, caps)`, computed once per (syscalls, network, best_effort, whether a disk
        budget is set): everything the filter is built from. Raises as it does (errors are not kept)."""
        key = (policy.syscalls, policy.network, policy.best_effort, policy.resources.disk is not None)
        try:
            hit = self._seccomp[key]
        except KeyError:
            pass
        else:
            with contextlib.suppress(KeyError):
                self._seccomp.move_to_end(key)
            return hit
        sc = seccomp.prepare(policy, caps)
        self._seccomp[key] = sc
        while len(self._seccomp) > self.max_entries:
            with contextlib.suppress(KeyError):
                self._seccomp.popitem(last=False)
        return sc


#: Whether this kernel keeps per-task I/O counts (/proc/<pid>/io), which the disk budget is measured with.
_IO_ACCOUNTING = os.path.exists("/proc/self/io")

#: Filesystems whose writes never reach the write-back accounting the disk budget reads (their pages are
#: charged to the memory cgroup instead).
_UNCOUNTED_FS = frozenset({"tmpfs", "ramfs", "hugetlbfs", "devtmpfs"})


def _fs_types() -> dict[int, str]:
    """st_dev -> filesystem type of every mount this process sees (/proc/self/mountinfo)."""
    out: dict[int, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                major, minor = (int(x) for x in fields[2].split(":"))
                out[os.makedev(major, minor)] = fields[fields.index("-") + 1]
            except (ValueError, IndexError):
                continue
    return out


def _disk_budget_unmeasurable(policy: Policy) -> str:
    """Why the disk budget cannot be measured for `policy` ('' when it can): no per-task I/O accounting in
    this kernel, or a writable root on a filesystem without write-back (tmpfs: its writes never count)."""
    if not _IO_ACCOUNTING:
        return (
            "this kernel has no per-task I/O accounting (/proc/<pid>/io is missing: "
            "CONFIG_TASK_IO_ACCOUNTING), which the disk budget is measured with"
        )
    types: dict[int, str] | None = None
    for root in policy.filesystem.write if policy.filesystem.confine else ():
        try:
            dev = os.stat(root).st_dev
        except OSError:
            continue  # mounts reports a missing root
        if types is None:
            types = _fs_types()
        kind = types.get(dev, "")
        if kind in _UNCOUNTED_FS:
            return (
                f"the writable root {root} is on {kind}, whose writes the disk budget cannot see (they "
                "count against the memory limit)"
            )
    return ""


def _seccomp_missing_reason(caps: KernelCaps) -> str:
    """Why an enabled syscall filter is missing under best_effort: no seccomp, or no filter compiler."""
    return (
        caps.seccomp.reason
        if not caps.seccomp.available
        else "the kernel has seccomp but the filter compiler (pyseccomp/libseccomp2) could not be loaded"
    )


def _disk_budget(policy: Policy, enforced: list[str], missing: list[tuple[str, str]]) -> None:
    """Record the disk budget of `policy` (which has one) in `enforced`, or why it cannot be measured in
    `missing` under best_effort. Raises SandboxSetupError (layer "disk") when it cannot be measured
    otherwise."""
    why = _disk_budget_unmeasurable(policy)
    if not why:
        enforced.append("disk_budget")
    else:
        if not policy.best_effort:
            from supervisor._errors import SandboxSetupError

            layer = "disk"
            hint = f"{why}; use fsize (RLIMIT_FSIZE) and tmp_size instead, or set best_effort"
            raise SandboxSetupError(layer, "measure the disk budget", _errno.EOPNOTSUPP, hint=hint)
        missing.append(("disk_budget", why))


def compile_policy(policy: Policy, caps: KernelCaps, shared: SharedParts | None = None) -> CompiledPolicy:
    """Run every mechanism's prepare step (the path-independent ones from `shared` when given). Raises
    SandboxSetupError (fail closed) or PolicyError (also for a system directory as a writable root without
    ``filesystem.allow_system_write``; the caller's home as one is logged as a warning)."""
    for warning in check_writable_roots(policy):
        log.warning("%s", warning)
    ns = namespaces.prepare(policy, caps)
    missing: list[tuple[str, str]] = [(str(a), str(b)) for a, b in ns["missing"]]
    enforced: list[str] = list(ns["enforced"])
    mnt = mounts.prepare(policy, ns)
    if mnt is not None:
        enforced += mnt["enforced"]
    elif policy.filesystem.confine:
        # Only reachable with best_effort: namespaces.prepare raised otherwise.
        missing.append(("mounts", "no mount namespace: no read-only root, protected paths or private /tmp"))
    private_dev = mnt is not None and bool(mnt["confine"])
    ll = landlock.prepare(policy, caps, private_network=bool(ns["net"]), private_dev=private_dev)
    if ll is not None:
        enforced += ll["enforced"]
        missing += [(str(a), str(b)) for a, b in ll["missing"]]
    else:
        if policy.filesystem.confine:
            missing.append(("landlock", caps.landlock.reason))
        elif policy.network.mode != "host" and not ns["net"]:
            # No network namespace, and the Landlock TCP guard that would stand in for it is missing too.
            missing.append(("landlock_net_tcp", f"no network namespace and Landlock {caps.landlock.reason}"))
    sc = shared.seccomp(policy, caps) if shared is not None else seccomp.prepare(policy, caps)
    if sc is not None:
        enforced.append("seccomp")
    elif policy.syscalls.enabled:
        missing.append(("seccomp", _seccomp_missing_reason(caps)))
    if policy.resources.disk is not None:
        _disk_budget(policy, enforced, missing)
    enforced += ALWAYS
    payload: CompiledPayload = {
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
    notify = isinstance(sc, dict) and "notify" in sc
    watch_net = isinstance(sc, dict) and sc.get("watch_net") is True
    hidden = _denials.unobservable(
        policy, tuple(enforced), notify, caps.seccomp_notify.reason, watch_net, caps.audit
    )
    return CompiledPolicy(next(_ids), payload, tuple(enforced), tuple(missing), hidden)
