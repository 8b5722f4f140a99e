"""Landlock: the filesystem access rules, the TCP guard and IPC scoping of a sandboxed child.

`prepare(policy, caps, private_network=...)` compiles the policy in the parent into a rule list for
the ABI this kernel speaks; `emit(prepared, plan)` plans it for the sandbox init, which runs it after the
mount namespace is built and after no_new_privs, before seccomp (which may forbid the landlock syscalls),
with landlock_create_ruleset / landlock_add_rule / landlock_restrict_self.

Landlock grants, it cannot subtract: a rule gives rights to a whole hierarchy, and the rights of
rules on a path and on its ancestors add up. Read-only holes inside writable roots (.git/hooks) are
therefore read-only bind mounts (`mounts`), not rules here. What the rights mean per ABI and the
known limits: docs/landlock.md.

This module is imported by the fork server, which runs `python -I -S`: module-level imports are the
standard library and `_sys` only.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from typing import TYPE_CHECKING, TypedDict

from supervisor.sandbox import _cinit
from supervisor.sandbox._ops import Plan

_LAYER = "landlock"

if TYPE_CHECKING:
    from policies import Policy
    from supervisor.sandbox.probe import KernelCaps

# --- uapi constants (include/uapi/linux/landlock.h) -----------------------------------------------

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

# Filesystem rights. ABI 1: bits 0-12.
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

# Network rights (ABI 4).
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

# IPC scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# landlock_restrict_self flags (ABI 7). corral passes 0: the kernel's default audit logging (denials
# before exec logged, denials of the exec'd program not) is kept.
RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1
RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2

#: The newest ABI this module knows. A newer kernel is driven as this one (new rights unhandled).
KNOWN_ABI = 7

#: Rights a rule on a non-directory may carry; the others are about directory entries (EINVAL).
ACCESS_FILE = (
    ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
)

#: Read (and list) a hierarchy.
ACCESS_READ = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR

#: Everything a writable root grants beyond reading. Never MAKE_CHAR / MAKE_BLOCK: a device node
#: made inside the sandbox would be a way around every other layer.
ACCESS_WRITE = (
    ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_SYM
    | ACCESS_FS_REFER
    | ACCESS_FS_TRUNCATE
)

#: Character devices every program may read and write (`> /dev/null` opens with O_TRUNC).
ACCESS_DEV_RW = ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE

#: The ABI each feature needs, and the first Linux release with it (for messages).
ABI_KERNEL = {1: "5.13", 2: "5.19", 3: "6.2", 4: "6.7", 5: "6.10", 6: "6.12", 7: "6.15"}
NEED_TRUNCATE = 3
NEED_NET = 4
NEED_SCOPE = 6

#: Paths every confined child gets besides the policy's roots, with their rights (before ABI
#: masking). /tmp and /dev/shm are private tmpfs mounts in the sandbox; /dev holds only a minimal
#: node set there, and IOCTL_DEV on it lets terminal and tty ioctls work on devices the child can
#: open at all.
ALWAYS_WRITE = ("/tmp", "/dev/shm")
ALWAYS_RULES: tuple[tuple[str, int], ...] = (
    ("/dev/null", ACCESS_DEV_RW),
    ("/dev/zero", ACCESS_DEV_RW),
    ("/dev/full", ACCESS_DEV_RW),
    ("/dev/tty", ACCESS_DEV_RW),
    ("/dev/random", ACCESS_FS_READ_FILE),
    ("/dev/urandom", ACCESS_FS_READ_FILE),
    ("/dev", ACCESS_FS_IOCTL_DEV),
    # /proc/self/fd, /proc/self/maps, /proc/cpuinfo...: read only. Re-opening an fd through
    # /proc/self/fd/N is checked against the file's real path, so this grants nothing beyond the
    # other rules.
    ("/proc", ACCESS_READ),
)


def fs_access_for_abi(abi: int) -> int:
    """Every filesystem right the given Landlock ABI knows (the mask to handle). 0 for ABI < 1."""
    if abi < 1:
        return 0
    if abi == 1:
        return (ACCESS_FS_MAKE_SYM << 1) - 1
    if abi == 2:
        return (ACCESS_FS_REFER << 1) - 1
    if abi in (3, 4):
        return (ACCESS_FS_TRUNCATE << 1) - 1
    return (ACCESS_FS_IOCTL_DEV << 1) - 1


def net_access_for_abi(abi: int) -> int:
    """Every network right the ABI knows (0 before ABI 4)."""
    return ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= NEED_NET else 0


def scopes_for_abi(abi: int) -> int:
    """Every IPC scope the ABI knows (0 before ABI 6)."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= NEED_SCOPE else 0


def _needs(abi: int) -> str:
    return f"needs Landlock ABI {abi} (Linux {ABI_KERNEL[abi]})"


def _add(rules: dict[str, int], path: str, access: int) -> None:
    if not os.path.isabs(path):
        from supervisor._errors import SandboxSetupError

        raise SandboxSetupError(
            _LAYER,
            "prepare(rule path)",
            _errno.EINVAL,
            path,
            "filesystem paths in a policy must be absolute",
        )
    path = os.path.normpath(path)
    if path.startswith("//"):  # normpath keeps a leading "//" (POSIX); the kernel does not care
        path = "/" + path.lstrip("/")
    rules[path] = rules.get(path, 0) | access


class Prepared(TypedDict):
    """What `prepare` decides (builtins only: it crosses to the fork server with marshal)."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    rules: list[tuple[str, int]]
    net_rules: list[tuple[int, int]]
    enforced: list[str]
    missing: list[list[str]]


def prepare(
    policy: Policy, caps: KernelCaps, *, private_network: bool, private_dev: bool = False
) -> Prepared | None:
    """Compile the policy's Landlock ruleset for this kernel. Runs in the parent, once per policy.

    Returns None when nothing needs Landlock (no filesystem confinement and no TCP guard), or when
    Landlock is unavailable and the policy is best_effort (the caller records the missing layer).
    Otherwise a dict of builtins: abi, handled_fs, handled_net, scoped, rules [(path, access)],
    net_rules [(port, access)], enforced [name], missing [[name, reason]].

    The TCP guard (handle BIND_TCP|CONNECT_TCP with no rule: no TCP at all) is added only when the
    policy says network "none" but the child gets no private network namespace (`private_network`
    False). Inside a private namespace the loopback-only namespace is the control, and a port-based
    rule would only break servers the child runs on its own loopback.

    `private_dev`: the child's /dev is the sandbox's minimal one with a private devpts, so opening ptys
    (/dev/ptmx, /dev/pts/*) is granted; on the host's /dev that would reach other terminals.

    Raises SandboxSetupError (layer "landlock") when Landlock is unavailable, or when the ABI is too
    old for the truncate restriction (ABI 3), the TCP guard (ABI 4) or IPC scoping (ABI 6), unless
    `policy.best_effort`, which records them in "missing" instead. Rule paths are not checked here:
    a path missing at spawn time is skipped by `apply`. Pure computation: nothing to cancel.
    """
    fs = policy.filesystem
    confine = fs.confine
    net_guard = not private_network and policy.network.mode != "host"
    if not confine and not net_guard:
        return None

    abi = _usable_abi(policy, caps)
    if abi is None:
        return None
    used_abi = min(abi, KNOWN_ABI)

    enforced: list[str] = []
    unmet: list[tuple[str, int]] = []  # (feature, ABI it needs)

    handled_fs = 0
    rules: dict[str, int] = {}
    if confine:
        handled_fs = fs_access_for_abi(used_abi)
        rules = _fs_rules(policy, used_abi, private_dev=private_dev, enforced=enforced, unmet=unmet)

    handled_net, scoped = _guards(used_abi, net_guard=net_guard, enforced=enforced, unmet=unmet)
    return {
        "abi": used_abi,
        "handled_fs": handled_fs,
        "handled_net": handled_net,
        "scoped": scoped,
        "rules": sorted((p, a & handled_fs) for p, a in rules.items() if a & handled_fs),
        "net_rules": [],
        "enforced": enforced,
        "missing": _missing_or_raise(policy, abi, unmet) if unmet else [],
    }


def _usable_abi(policy: Policy, caps: KernelCaps) -> int | None:
    """The kernel's Landlock ABI for `prepare`; None when Landlock is unavailable under best_effort.

    Raises SandboxSetupError (layer "landlock") when Landlock is unavailable otherwise.
    """
    from supervisor._errors import SandboxSetupError

    abi = caps.landlock_abi
    if abi >= 1:
        return abi
    if policy.best_effort:
        return None
    raise SandboxSetupError(
        _LAYER,
        "landlock_create_ruleset",
        caps.landlock.errno,
        hint=(
            f"Landlock is {caps.landlock.reason}: it needs Linux >= 5.13 built with "
            "CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the lsm= boot parameter "
            "(check /sys/kernel/security/lsm), or set best_effort"
        ),
    )


def _fs_rules(
    policy: Policy, used_abi: int, *, private_dev: bool, enforced: list[str], unmet: list[tuple[str, int]]
) -> dict[str, int]:
    """The filesystem rules of a confining policy for `prepare`: {path: access} before ABI masking.

    Appends the filesystem layers it enforces to `enforced` and the ones this ABI lacks to `unmet`
    (feature, ABI it needs). Absolute policy paths are resolved through the trusted symlinks only.
    """
    from policies._validate import resolve_trusted

    fs = policy.filesystem
    enforced.append("landlock_fs")
    if used_abi >= 2:  # ABI 1 refuses every cross-directory link and rename instead
        enforced.append("landlock_refer")
    if used_abi >= NEED_TRUNCATE:
        enforced.append("landlock_truncate")
    else:
        unmet.append(("landlock_truncate", NEED_TRUNCATE))
    if used_abi >= 5:
        enforced.append("landlock_ioctl_dev")

    rules: dict[str, int] = {}
    restrict_exec = fs.execute is not None
    read_access = ACCESS_READ | (0 if restrict_exec else ACCESS_FS_EXECUTE)
    # As mounts.prepare: the symlinks no sandbox could have planted resolved once, now; the init opens
    # each rule's path following none.
    for path in fs.read:
        _add(rules, resolve_trusted(path) if os.path.isabs(path) else path, read_access)
    for path in fs.write:
        _add(rules, resolve_trusted(path) if os.path.isabs(path) else path, read_access | ACCESS_WRITE)
    for path in ALWAYS_WRITE:
        _add(rules, path, read_access | ACCESS_WRITE)
    for path, access in ALWAYS_RULES:
        _add(rules, path, access)
    if private_dev:
        # /dev/ptmx is a symlink to pts/ptmx there, and the init opens rule paths following no link:
        # the rule on /dev/pts covers both.
        _add(rules, "/dev/pts", ACCESS_DEV_RW)
    if fs.execute is not None:
        enforced.append("landlock_execute")
        for path in fs.execute:
            _add(rules, resolve_trusted(path) if os.path.isabs(path) else path, ACCESS_FS_EXECUTE)
    return rules


def _guards(
    used_abi: int, *, net_guard: bool, enforced: list[str], unmet: list[tuple[str, int]]
) -> tuple[int, int]:
    """The TCP guard's handled network rights (when `net_guard`) and the IPC scopes for `prepare`.

    Appends what it enforces to `enforced` and what this ABI lacks to `unmet` (feature, ABI it needs).
    """
    handled_net = 0
    if net_guard:
        if used_abi >= NEED_NET:
            handled_net = net_access_for_abi(used_abi)
            enforced.append("landlock_net_tcp")
        else:
            unmet.append(("landlock_net_tcp", NEED_NET))

    # IPC scoping whenever a domain is created: without it a child outside a private pid/net
    # namespace can signal the user's other processes and reach abstract unix sockets (X11, D-Bus,
    # ssh-agent-like daemons).
    scoped = scopes_for_abi(used_abi)
    if scoped:
        enforced += ["landlock_scope_abstract_unix", "landlock_scope_signal"]
    else:
        unmet.append(("landlock_scope", NEED_SCOPE))
    return handled_net, scoped


def _missing_or_raise(policy: Policy, abi: int, unmet: list[tuple[str, int]]) -> list[list[str]]:
    """The "missing" entries [[name, reason]] for the features this ABI lacks, under best_effort.

    Raises SandboxSetupError (layer "landlock") naming the ABI and kernel they need otherwise.
    """
    from supervisor._errors import SandboxSetupError

    if not policy.best_effort:
        need = max(n for _, n in unmet)
        what = ", ".join(f"{name} ({_needs(n)})" for name, n in unmet)
        raise SandboxSetupError(
            _LAYER,
            f"landlock_create_ruleset(abi={abi})",
            0,
            hint=(
                f"this kernel has Landlock ABI {abi}; the policy needs ABI {need} "
                f"(Linux {ABI_KERNEL[need]}) for: {what}. Upgrade the kernel or set best_effort"
            ),
        )
    return [[name, f"{_needs(n)}; this kernel has ABI {abi}"] for name, n in unmet]


# --- the sandbox init's side -----------------------------------------------------------------------


def _attr_size(abi: int) -> int:
    # struct landlock_ruleset_attr grew with the ABI; pass the size this ABI knows.
    if abi >= NEED_SCOPE:
        return 24
    if abi >= NEED_NET:
        return 16
    return 8


def emit(prepared: Prepared, plan: Plan) -> None:
    """Create the ruleset, add the rules, restrict the sandbox init (and so the command it starts).

    The init runs these after the mounts and after no_new_privs, before seccomp. A rule path that does not
    exist there (ENOENT, ENOTDIR) is skipped: fewer rules means less access. Rights a non-directory cannot
    hold are dropped per rule (the init fstats the O_PATH fd). Every failure names the Landlock syscall
    and errno; the init closes what it opened either way.
    """
    abi = int(prepared["abi"])
    handled_fs = int(prepared["handled_fs"])
    handled_net = int(prepared["handled_net"])
    scoped = int(prepared["scoped"])
    rules: list[tuple[str, int]] = prepared["rules"]
    net_rules: list[tuple[int, int]] = prepared["net_rules"]

    attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)[: _attr_size(abi)]
    missing = "Landlock is disabled or missing on this kernel"
    plan.add(
        _cinit.OP_LL_CREATE,
        _LAYER,
        f"landlock_create_ruleset(fs={handled_fs:#x}, net={handled_net:#x}, scoped={scoped:#x})",
        a=(len(attr),),
        s=(attr,),
        hint={
            _errno.ENOSYS: missing,
            _errno.EOPNOTSUPP: missing,
            "*": f"the ruleset was compiled for Landlock ABI {abi}, which this kernel rejects",
        },
    )
    for path, access in rules:
        # The operation names the rights; the init names the step that failed (open, fstat, add_rule)
        # with the rights it actually asked for.
        plan.add(
            _cinit.OP_LL_PATH,
            _LAYER,
            f"landlock_add_rule(PATH_BENEATH, {access:#x})",
            a=(access, ACCESS_FILE),
            s=(path,),
            path=path,
            hint={
                _errno.ELOOP: (
                    "this rule's path is, or passes through, a symlink that was not there (or not trusted) "
                    "when the policy was made; corral does not follow it. Remove the link, or name the real "
                    "path in the policy"
                ),
                "*": "",
            },
        )
    for port, access in net_rules:
        plan.add(
            _cinit.OP_LL_NET,
            _LAYER,
            f"landlock_add_rule(NET_PORT, port={port}, {access:#x})",
            a=(port, access),
        )
    plan.add(
        _cinit.OP_LL_RESTRICT,
        _LAYER,
        "landlock_restrict_self",
        hint={_errno.EPERM: "no_new_privs must be set first (prctl PR_SET_NO_NEW_PRIVS)", "*": ""},
    )


def apply(prepared: Prepared) -> None:
    """Confine the calling process now with the prepared rules (what `emit` plans for a sandbox). Raises
    SetupFailure (layer "landlock") naming the failing syscall and errno; no fd is leaked either way."""
    plan = Plan()
    emit(prepared, plan)
    plan.run()
