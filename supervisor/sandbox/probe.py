"""Detects, once, what this kernel offers. The only place that decides whether a feature is available.

Each probe issues the real syscall and classifies the errno: ENOSYS/EOPNOTSUPP/EINVAL mean the kernel lacks
the feature; EPERM/EACCES/ENOSPC mean it exists but is blocked by policy (a sysctl, an LSM, a seccomp filter
around us). Probes that need a fork (namespace creation) run in the single-threaded fork server, never in the
multi-threaded supervisor: `probe_in_fork_server()` is called there and its dict result sent back.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from supervisor.sandbox import _sys

#: The namespaces corral knows, with their clone flags.
NAMESPACE_FLAGS: dict[str, int] = {
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "mount": 0x00020000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "cgroup": 0x02000000,
}

_MISSING = {_errno.ENOSYS, _errno.EOPNOTSUPP, _errno.EINVAL}


@dataclass(frozen=True, slots=True)
class Feature:
    """One probed feature: available or not, and if not, the errno and what it means."""

    available: bool
    errno: int = 0
    detail: str = ""

    @property
    def reason(self) -> str:
        if self.available:
            return "available"
        kind = "missing from this kernel" if self.errno in _MISSING else "blocked"
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{kind} ({name}{': ' + self.detail if self.detail else ''})"


@dataclass(frozen=True, slots=True)
class KernelCaps:
    """What the kernel offers. `landlock_abi` is 0 when Landlock is unavailable."""

    landlock_abi: int = 0
    landlock: Feature = Feature(False, _errno.ENOSYS)
    seccomp: Feature = Feature(False, _errno.ENOSYS)
    #: SECCOMP_RET_USER_NOTIF: refused syscalls reported by the sandbox init (docs/denials.md).
    seccomp_notify: Feature = Feature(False, _errno.ENOSYS)
    #: The audit subsystem, enabled (Landlock's denial records need it: docs/denials.md).
    audit: Feature = Feature(False, _errno.ENOSYS)
    namespaces: dict[str, Feature] = field(default_factory=dict)
    ia32: Feature = Feature(False, _errno.ENOSYS)
    x32: Feature = Feature(False, _errno.ENOSYS)
    uid: int = 0
    gid: int = 0

    def namespace(self, name: str) -> Feature:
        return self.namespaces.get(name, Feature(False, _errno.ENOSYS, "not probed"))

    def to_dict(self) -> dict[str, object]:
        def f(x: Feature) -> tuple[bool, int, str]:
            return (x.available, x.errno, x.detail)

        return {
            "landlock_abi": self.landlock_abi,
            "landlock": f(self.landlock),
            "seccomp": f(self.seccomp),
            "seccomp_notify": f(self.seccomp_notify),
            "audit": f(self.audit),
            "namespaces": {k: f(v) for k, v in self.namespaces.items()},
            "ia32": f(self.ia32),
            "x32": f(self.x32),
            "uid": self.uid,
            "gid": self.gid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> KernelCaps:
        def f(x: object) -> Feature:
            assert isinstance(x, tuple | list)
            a, e, s = x
            return Feature(bool(a), int(e), str(s))

        ns = d.get("namespaces", {})
        assert isinstance(ns, dict)
        return cls(
            landlock_abi=int(d["landlock_abi"]),  # type: ignore[call-overload]
            landlock=f(d["landlock"]),
            seccomp=f(d["seccomp"]),
            seccomp_notify=f(d.get("seccomp_notify", (False, _errno.ENOSYS, "not probed"))),
            audit=f(d.get("audit", (False, _errno.ENOSYS, "not probed"))),
            namespaces={str(k): f(v) for k, v in ns.items()},
            ia32=f(d["ia32"]),
            x32=f(d["x32"]),
            uid=int(d["uid"]),  # type: ignore[call-overload]
            gid=int(d["gid"]),  # type: ignore[call-overload]
        )


def probe_landlock() -> tuple[int, Feature]:
    """Landlock ABI version via landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)."""
    try:
        abi = _sys.syscall("landlock_create_ruleset", None, 0, 1)
    except OSError as err:
        return 0, Feature(False, err.errno or _errno.ENOSYS, "landlock_create_ruleset")
    return abi, Feature(True)


def probe_seccomp(action_value: int = 0x00050000) -> Feature:
    """seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &action): filter mode and that action supported (by default
    SECCOMP_RET_ERRNO; 0x7fc00000 is SECCOMP_RET_USER_NOTIF, Linux 5.0)."""
    import ctypes

    action = ctypes.c_uint32(action_value)
    try:
        _sys.syscall("seccomp", 2, 0, ctypes.byref(action))
    except OSError as err:
        return Feature(
            False, err.errno or _errno.ENOSYS, f"seccomp(SECCOMP_GET_ACTION_AVAIL, {action_value:#x})"
        )
    return Feature(True)


def _in_child(attempt: Callable[[], object]) -> Feature:
    """Fork; the child makes one `attempt` and exits with 0, or with the errno of the OSError it raised.
    Fork-server only (single-threaded)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            attempt()
        except OSError as err:
            code = err.errno or 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return Feature(True)
    if code < 0:
        return Feature(False, _errno.EINTR, f"probe child killed by signal {-code}")
    return Feature(False, code)


def probe_namespaces() -> dict[str, Feature]:
    """Try unshare() of each namespace in a forked child; user first, then the rest inside a new user ns
    when not privileged (the way the sandbox itself creates them)."""
    result: dict[str, Feature] = {}
    user = _in_child(partial(_sys.libc_call, "unshare", NAMESPACE_FLAGS["user"]))
    result["user"] = user
    base = NAMESPACE_FLAGS["user"] if (user.available and os.geteuid() != 0) else 0
    for name, flag in NAMESPACE_FLAGS.items():
        if name != "user":
            result[name] = _in_child(partial(_sys.libc_call, "unshare", base | flag))
    return result


def _probe_ia32() -> Feature:
    # There is no syscall that asks "is ia32 emulation on" without running 32-bit code, which Python cannot;
    # the switches are CONFIG_IA32_EMULATION and the ia32_emulation= boot flag, so read both where exposed.
    if _sys.MACHINE != "x86_64":
        return Feature(False, _errno.ENOSYS, f"not x86_64 ({_sys.MACHINE})")
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    except OSError:
        cmdline = ""
    if "ia32_emulation=0" in cmdline or "ia32_emulation=false" in cmdline:
        return Feature(False, _errno.ENOSYS, "ia32_emulation=0 on the kernel command line")
    try:
        import gzip

        with gzip.open("/proc/config.gz", "rt") as f:
            if "CONFIG_IA32_EMULATION=y" not in f.read():
                return Feature(False, _errno.ENOSYS, "kernel built without CONFIG_IA32_EMULATION")
    except OSError:
        pass
    return Feature(True)


def probe_audit() -> Feature:
    """Whether the audit subsystem is enabled: AUDIT_GET on a NETLINK_AUDIT socket (CAP_AUDIT_CONTROL; an
    ordinary user gets EPERM). Available when `enabled` is set; else ENODATA with the detail."""
    import socket
    import struct

    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9) as s:  # NETLINK_AUDIT
            s.settimeout(1.0)
            s.bind((0, 0))
            s.send(struct.pack("=IHHII", 16, 1000, 1, 1, 0))  # AUDIT_GET, NLM_F_REQUEST
            data = s.recv(8192)
    except OSError as err:
        return Feature(False, err.errno or _errno.EPROTONOSUPPORT, "NETLINK_AUDIT AUDIT_GET")
    if len(data) < 16 + 8:
        return Feature(False, _errno.EINVAL, "AUDIT_GET: short reply")
    kind = struct.unpack_from("=H", data, 4)[0]
    if kind == 2:  # NLMSG_ERROR
        code = -struct.unpack_from("=i", data, 16)[0]
        return Feature(False, code or _errno.EINVAL, "AUDIT_GET")
    enabled = struct.unpack_from("=I", data, 20)[0]
    if not enabled:
        return Feature(False, _errno.ENODATA, "audit is disabled on this host (AUDIT_GET: enabled=0)")
    return Feature(True)


def probe_in_fork_server() -> dict[str, object]:
    """Run every probe. Must run in a single-threaded process (it forks)."""
    abi, ll = probe_landlock()
    # x32 getpid: the syscall number with the x32 bit set; ENOSYS when the ABI is compiled out.
    x32_getpid = partial(_sys.raw_syscall, 0x40000000 | 39)
    x32 = _in_child(x32_getpid) if _sys.MACHINE == "x86_64" else Feature(False, _errno.ENOSYS, "not x86_64")
    return KernelCaps(
        landlock_abi=abi,
        landlock=ll,
        seccomp=probe_seccomp(),
        seccomp_notify=probe_seccomp(0x7FC00000),
        audit=probe_audit(),
        namespaces=probe_namespaces(),
        ia32=_probe_ia32(),
        x32=x32,
        uid=os.getuid(),
        gid=os.getgid(),
    ).to_dict()
