"""Capabilities: the child ends with none (effective, permitted, inheritable, ambient, bounding), with
securebits locked so that executing a file as uid 0 inside the user namespace cannot regain them, and with
no_new_privs so that no setuid/file-capability binary can either."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from supervisor.sandbox import _cinit, _sys

if TYPE_CHECKING:
    from supervisor.sandbox._ops import Plan

# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED
# | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED.
# Not SECBIT_KEEP_CAPS_LOCKED: it made prctl(PR_SET_KEEPCAPS) fail with EPERM, and programs that drop
# privilege the classic way call it at start-up (iputils ping exits "prctl: Operation not permitted").
# KEEP_CAPS only keeps permitted capabilities across a change of uid away from 0; the process has none,
# its bounding set is empty, NO_SETUID_FIXUP (locked) already stops any capability change on uid changes,
# and execve clears KEEP_CAPS.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80


class Prepared(TypedDict):
    """What `prepare` read (builtins only: it crosses to the fork server with marshal)."""

    last_cap: int


def prepare() -> Prepared:
    """Read the highest capability number once in the parent."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 63
    return {"last_cap": last}


def emit_bounding(prepared: Prepared, plan: Plan) -> None:
    """After the mounts and network setup (which need CAP_SYS_ADMIN/CAP_NET_ADMIN in the new namespaces):
    lock the securebits and empty the bounding set (skipped when the process has no CAP_SETPCAP at all: an
    ordinary user without a user namespace has nothing to drop). The capabilities held stay until
    emit_drop; NO_SETUID_FIXUP keeps them across a change of ids (a root caller's sandbox becoming its
    workdir's owner) in between."""
    plan.add(
        _cinit.OP_BOUNDING,
        "capabilities",
        "prctl(PR_CAPBSET_DROP/PR_SET_SECUREBITS)",
        a=(prepared["last_cap"], _SECUREBITS),
    )


def emit_drop(plan: Plan) -> None:
    """Clear the ambient set and capset to zero (before seccomp): from here on the process holds no
    capability."""
    plan.add(
        _cinit.OP_PRCTL,
        "capabilities",
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        a=(_sys.PR_CAP_AMBIENT, _sys.PR_CAP_AMBIENT_CLEAR_ALL),
    )
    plan.add(_cinit.OP_CAPSET_ZERO, "capabilities", "capset(all zero)")


def emit_no_new_privs(plan: Plan) -> None:
    """PR_SET_NO_NEW_PRIVS: execve can never grant privileges again (required for unprivileged seccomp and
    Landlock)."""
    plan.add(_cinit.OP_PRCTL, "no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)", a=(_sys.PR_SET_NO_NEW_PRIVS, 1))
