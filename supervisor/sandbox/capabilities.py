"""Capabilities: the child ends with none (effective, permitted, inheritable, ambient, bounding), with
securebits locked so that executing a file as uid 0 inside the user namespace cannot regain them, and with
no_new_privs so that no setuid/file-capability binary can either."""

from __future__ import annotations

import ctypes

from supervisor.sandbox import _sys

# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED
# | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def prepare() -> dict[str, object]:
    """Read the highest capability number once in the parent."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 63
    return {"last_cap": last}


def _apply_bounding(prepared: dict[str, object]) -> None:
    """Lock the securebits and empty the bounding set. EPERM is tolerated only when the process has no
    CAP_SETPCAP at all (an ordinary user without a user namespace: it has nothing to drop). Raises
    SetupFailure."""
    if _has_cap(8):
        try:
            _sys.prctl(_sys.PR_SET_SECUREBITS, _SECUREBITS)
            for cap in range(int(prepared["last_cap"]) + 1):  # type: ignore[call-overload]
                _sys.prctl(_sys.PR_CAPBSET_DROP, cap)
        except OSError as err:
            raise _sys.SetupFailure(
                "capabilities", "prctl(PR_CAPBSET_DROP/PR_SET_SECUREBITS)", err.errno or 0
            ) from err


def apply(prepared: dict[str, object]) -> None:
    """Child side, after mounts and network setup (which need CAP_SYS_ADMIN/CAP_NET_ADMIN in the new
    namespaces) and before Landlock/seccomp: securebits and the bounding set, then the ambient set
    cleared and capset to zero. Raises SetupFailure."""
    _apply_bounding(prepared)
    try:
        _sys.prctl(_sys.PR_CAP_AMBIENT, _sys.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as err:
        raise _sys.SetupFailure("capabilities", "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", err.errno or 0) from err
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    try:
        _sys.syscall("capset", ctypes.byref(header), ctypes.byref(data))
    except OSError as err:
        raise _sys.SetupFailure("capabilities", "capset(all zero)", err.errno or 0) from err


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve can never grant privileges again (required for unprivileged seccomp and
    Landlock). Raises SetupFailure."""
    try:
        _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as err:
        raise _sys.SetupFailure("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)", err.errno or 0) from err


def _has_cap(cap: int) -> bool:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    try:
        _sys.syscall("capget", ctypes.byref(header), ctypes.byref(data))
    except OSError:
        return False
    return bool(data[cap // 32].effective & (1 << (cap % 32)))
