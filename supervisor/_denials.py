"""Denial reports: what a sandbox tried and a layer refused, named for the caller, the agent and the operator.

The sandbox init reports each distinct refusal of the seccomp filter once (a D status record: the syscall
number, its six arguments, the caller's pid in the sandbox, the errno it was answered with) and the
calls refused per record when the command ends (the S record's `dcounts`, `ddropped`). This module turns
those into `Denial` records (layer, operation, target, pid, count, hint), keeps them bounded per child
(`DenialLog`), and adds the refusals the supervisor sees itself (forks refused at pids.max, a write past
RLIMIT_FSIZE). docs/denials.md says which layer is reported how, and what is not.

Nothing here trusts the sandbox: a record's values are checked for type and range and formatted from
corral's own tables; an unknown syscall number or argument is shown as a number. The layer and operation
labels come from fixed sets (`LAYERS`, `OPERATIONS`), so the metric built on them is bounded.
"""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

from supervisor._observer import Observed
from supervisor._types import Denial
from supervisor.forkserver import protocol
from supervisor.sandbox import seccomp
from supervisor.sandbox.probe import Feature

if TYPE_CHECKING:
    from policies import Policy

#: The layers a denial can name. Open: the network proxy (issue 17) adds "proxy".
LAYERS = ("seccomp", "landlock", "mounts", "network", "proxy", "cgroup", "rlimit")
#: The operations a denial can name (the metric's second label).
OPERATIONS = ("syscall", "read", "write", "execute", "connect", "bind", "send", "fork", "open")

#: Distinct denials a Result keeps (the sandbox init folds into at most as many); past them, refused
#: calls are counted in `Result.denials_dropped`.
MAX_DENIALS = 64


class DenialLog:
    """A child's denials: the first MAX_DENIALS distinct ones in order, counts folded, and how many refused
    calls did not fit (`dropped`). Bounded whatever the sandbox does."""

    def __init__(self) -> None:
        self.items: list[Denial] = []
        self.dropped = 0
        #: Of `dropped`, the refusals the syscall-exit observer counted past its bound (layer unknown).
        self.dropped_observed = 0
        #: The seccomp records as the init numbered them (its D records, in order): their indices in
        #: `items`, or -1 for one that did not fit.
        self._seccomp: list[int] = []

    def add(self, denial: Denial) -> bool:
        """Record a new distinct denial; False (and counted as dropped) when the log is full."""
        if len(self.items) >= MAX_DENIALS:
            self.dropped += denial.count
            return False
        self.items.append(denial)
        return True

    def add_seccomp(self, denial: Denial | None) -> bool:
        """A D record from the init (None: it did not parse): kept in the init's order, for `counts`."""
        if len(self._seccomp) >= MAX_DENIALS:  # the init sends at most its own bound: more is not its
            return False
        if denial is None or not self.add(denial):
            self._seccomp.append(-1)
            return False
        self._seccomp.append(len(self.items) - 1)
        return True

    def seccomp_counts(self, counts: object, dropped: object) -> None:
        """Fold the S record's per-record counts and dropped count in (ignored unless well-formed)."""
        if isinstance(counts, list | tuple):
            for index, count in zip(self._seccomp, counts, strict=False):
                if isinstance(count, int) and count > 0:
                    if index < 0:
                        self.dropped += count
                    else:
                        d = self.items[index]
                        self.items[index] = Denial(d.layer, d.operation, d.target, d.pid, count, d.hint)
        if isinstance(dropped, int) and dropped > 0:
            self.dropped += dropped


def _flag_names(value: int, table: Mapping[str, int]) -> str:
    names = [name for name, bit in table.items() if value & bit == bit]
    return "|".join(names) if names else f"{value:#x}"


def _by_value(table: Mapping[str, int], value: int, prefix: str) -> str:
    for name, v in table.items():
        if v == value:
            return prefix + name.upper()
    return str(value)


def _target(name: str, args: tuple[int, ...]) -> str:
    """The refused call with its decisive argument, from corral's own tables."""
    from policies._model import NETLINK_PROTOCOLS, SOCKET_FAMILIES

    if name == "clone":
        ns = {k: v for k, v in seccomp.CLONE_NAMESPACE_FLAGS.items() if k != "CLONE_NEWTIME"}
        return f"clone({_flag_names(args[0] & sum(ns.values()), ns)})"
    if name in ("unshare", "setns"):
        value = args[0 if name == "unshare" else 1] & 0xFFFFFFFF
        return f"{name}({_flag_names(value, seccomp.CLONE_NAMESPACE_FLAGS)})" if value else f"{name}(0)"
    if name == "ioctl":
        cmd = args[1] & 0xFFFFFFFF
        names = [k for k, v in seccomp.DENIED_IOCTLS.items() if v == cmd]
        return f"ioctl({names[0] if names else hex(cmd)})"
    if name == "personality":
        return f"personality({args[0] & 0xFFFFFFFF:#x})"
    if name in ("socket", "socketpair"):
        family = args[0] & 0xFFFFFFFF
        shown = _by_value(SOCKET_FAMILIES, family, "AF_")
        if name == "socket" and family == SOCKET_FAMILIES["netlink"]:
            shown += ", " + _by_value(NETLINK_PROTOCOLS, args[2] & 0xFFFFFFFF, "NETLINK_")
        return f"{name}({shown})"
    if name == "mmap":  # the only mmap the init refuses (seccomp.SHARED_MAP_WATCH)
        return "mmap(MAP_SHARED, a set-id file open for writing)"
    if name in seccomp.SETID_MODE_ARG:
        mode_arg, flags_arg = seccomp.SETID_MODE_ARG[name]
        mode = args[mode_arg] & 0o7777
        if flags_arg is not None:
            made = _flag_names(args[flags_arg] & sum(seccomp.CREATE_FLAGS.values()), seccomp.CREATE_FLAGS)
            return f"{name}({made}, mode={mode:#o})"
        return f"{name}(mode={mode:#o})"
    return name


def _seccomp_hint(name: str, args: tuple[int, ...], policy: Policy | None) -> str:
    lift = f'syscalls.allow = ["{name}"] in a --policy file lifts it'
    if policy is not None and name in policy.syscalls.deny:
        return "denied by this policy (syscalls.deny)"
    if name in seccomp.SETID_MODE_ARG and args[seccomp.SETID_MODE_ARG[name][0]] & 0o6000:
        return "no file a sandbox makes may be set-user-ID or set-group-ID; nothing allows it"
    if name == "mmap":
        return (
            "a set-id file cannot be mapped shared and writable: stores through the mapping would keep its "
            "set-id bits; map it MAP_PRIVATE or read-only, or remove the bits on the host; nothing allows it"
        )
    if name in ("socket", "socketpair"):
        if name == "socket" and args[0] & 0xFFFFFFFF == 16:
            return "netlink protocol not allowed; network.netlink in a --policy file adds it"
        return "address family not allowed; network.families in a --policy file adds it"
    if name in seccomp.INOTIFY:
        return "file watches are off (filesystem.watch = false)"
    reason = seccomp.DEFAULT_DENY.get(name) or seccomp.TRACING.get(name)
    if reason is None and name in seccomp.CONDITIONAL:
        reason = {
            "clone": "new namespaces would widen the sandbox",
            "ioctl": "a terminal control that reaches outside the sandbox",
            "personality": "an execution domain or flag outside the harmless ones",
        }.get(name, "refused for these arguments")
    if name in seccomp.TRACING:
        return f"{reason}: allowed only where the sandbox has its own pid namespace"
    return f"{reason}; {lift}" if reason else "refused by the seccomp filter"


def seccomp_denial(
    payload: dict[str, object], names: Mapping[int, str], policy: Policy | None
) -> Denial | None:
    """The Denial of one D record from the sandbox init, or None when it does not parse
    (`protocol.denial_record`). `names` maps this filter's syscall numbers to names (the compiled
    policy's; others are looked up in libseccomp's table). A refusal the policy's seccomp profile made
    (its errno rules, its default, its kill_process, its log) names the profile's rule in the hint."""
    record = protocol.denial_record(payload)
    if record is None:
        return None
    nr, pid = record["nr"], record["pid"]
    shown = pid if 0 < pid < 2**22 else None
    if "addr" in record:  # a watched connect/sendto off loopback: the network namespace refuses it
        operation = "connect" if names.get(nr) == "connect" else "send"
        return Denial("network", operation, record["addr"], shown, 1, _network_hint(policy))
    args = tuple(a & (2**64 - 1) for a in record["args"])
    name = names.get(nr) or (seccomp.syscall_name(nr) if 0 <= nr < 4096 else None)
    if name is None:
        return Denial("seccomp", "syscall", f"syscall {nr}", None, 1, "refused by the seccomp filter")
    act = record.get("act", 0)
    if _shared_map_refusal(name, args, policy):
        return Denial("seccomp", "syscall", _target(name, args), shown, 1, _seccomp_hint(name, args, policy))
    hint = _profile_hint(name, args, policy, act) if policy is not None else None
    if name in seccomp.DECISIVE or policy is None:
        target = _target(name, args)
    else:
        target = _profile_target(name, args, policy)
    return Denial("seccomp", "syscall", target, shown, 1, hint or _seccomp_hint(name, args, policy))


def _shared_map_refusal(name: str, args: tuple[int, ...], policy: Policy | None) -> bool:
    """Whether a refused mmap is the init's refusal of a shared mapping of a set-id file
    (seccomp.SHARED_MAP_WATCH), not a profile's rule on mmap."""
    if name != "mmap" or args[3] & 0x23 not in (0x01, 0x03):
        return False
    if policy is None or policy.syscalls.profile is None:
        return True
    try:
        rule = seccomp.decide(policy, name, args)
    except (ImportError, RuntimeError, OSError, ValueError):
        return True
    return rule.action != seccomp.KILLED and rule.action & 0xFFFF0000 != 0x00050000  # not the profile's errno


def _profile_target(name: str, args: tuple[int, ...], policy: Policy) -> str:
    """`name(aN=value, ...)` with the arguments the policy's profile compares for it, else `name`."""
    shown = seccomp.profile_args(policy, name)
    return f"{name}({', '.join(f'a{i}={args[i]:#x}' for i in shown)})" if shown else name


def _profile_hint(name: str, args: tuple[int, ...], policy: Policy, act: int) -> str | None:
    """The hint of a verdict the policy's seccomp profile gave (None: the built-in rules decided)."""
    profile = policy.syscalls.profile
    if profile is None:
        return None
    try:
        rule = seccomp.decide(policy, name, args)
    except (ImportError, RuntimeError, OSError, ValueError):  # a hint only: the generic one will do
        return None
    if rule.origin != "profile":
        return None
    where = f"syscalls.profile.rules[{rule.index}]" if rule.index >= 0 else f"the default ({profile.default})"
    of = f" of {profile.source}" if profile.source else ""
    if act == seccomp.KILLED or rule.action == seccomp.KILLED:
        return f"the seccomp profile kills the process for it ({where}{of}); its process was killed"
    if act == seccomp.LOGGED or rule.action == seccomp.LOGGED:
        return f"allowed and logged by the seccomp profile ({where}{of}); the call ran"
    return f"refused by the seccomp profile ({where}{of}); only a profile that allows it lifts it"


def _network_hint(policy: Policy | None) -> str:
    if policy is not None and policy.network.mode == "proxy":
        return "off loopback only through the proxy (HTTP(S)_PROXY); --allow-domain NAME admits a host"
    return "network none: the sandbox's own loopback only; --network proxy with --allow-domain, or host"


def limit_denials(policy: Policy | None, limit_hits: Mapping[str, int], signal: int | None) -> list[Denial]:
    """The refusals the supervisor sees without the sandbox's help: forks refused at the cgroup's pids.max
    (its pids.events count) and a write past RLIMIT_FSIZE (the command killed by SIGXFSZ)."""
    out: list[Denial] = []
    res = policy.resources if policy is not None else None
    pids = limit_hits.get("pids", 0)
    if pids > 0:
        limit = f"pids.max={res.pids}" if res is not None and res.pids is not None else "pids.max"
        out.append(
            Denial("cgroup", "fork", limit, None, pids, "the process limit; raise --pids to allow more")
        )
    if signal == _signal.SIGXFSZ:
        limit = f"RLIMIT_FSIZE={res.fsize}" if res is not None and res.fsize is not None else "RLIMIT_FSIZE"
        out.append(Denial("rlimit", "write", limit, None, 1, "a file past the size limit; raise --fsize"))
    return out


def unobservable(
    policy: Policy,
    enforced: tuple[str, ...],
    notify: bool,
    notify_reason: str,
    watch_net: bool = False,
    audit_state: Feature | None = None,
) -> tuple[tuple[str, str], ...]:
    """The layers in force for `policy` whose refusals this version cannot report, each with why (the
    Result's `denials_unobservable`; docs/denials.md)."""
    out: list[tuple[str, str]] = []
    if "seccomp" in enforced and not notify:
        out.append(("seccomp", f"no seccomp user notification: {notify_reason}"))
    if policy.filesystem.confine:
        if any(e.startswith("landlock") for e in enforced):
            audit = (
                "enabled"
                if audit_state is not None and audit_state.available
                else (audit_state.detail or audit_state.reason if audit_state is not None else "not probed")
            )
            why = f"not reported yet: Landlock logs through the audit subsystem ({audit}), not read by corral"
            out.append(("landlock", why))
        if "readonly_root" in enforced:
            out.append(("mounts", "EROFS and hidden paths come from the mount view, which reports nothing"))
    if policy.network.mode in ("none", "proxy") and not watch_net:
        out.append(("network", "ENETUNREACH comes from the empty routing table, which reports nothing"))
    if policy.resources.fds is not None:
        out.append(("rlimit", "EMFILE at RLIMIT_NOFILE is answered by the kernel without a trace"))
    return tuple(out)


#: x86_64 syscall numbers of the calls the observer reports (denials.bpf.c's path_args), by name.
_OBSERVED_CALLS = {
    2: "open", 85: "creat", 83: "mkdir", 84: "rmdir", 87: "unlink", 133: "mknod", 76: "truncate",
    90: "chmod", 92: "chown", 94: "lchown", 188: "setxattr", 189: "lsetxattr", 197: "removexattr",
    198: "lremovexattr", 59: "execve", 257: "openat", 437: "openat2", 258: "mkdirat", 263: "unlinkat",
    259: "mknodat", 268: "fchmodat", 452: "fchmodat2", 260: "fchownat", 280: "utimensat",
    322: "execveat", 82: "rename", 86: "link", 264: "renameat", 316: "renameat2", 265: "linkat",
    88: "symlink", 266: "symlinkat", 49: "bind", 42: "connect",
    4: "stat", 6: "lstat", 21: "access", 89: "readlink", 80: "chdir", 191: "getxattr", 192: "lgetxattr",
    262: "newfstatat", 332: "statx", 269: "faccessat", 439: "faccessat2", 267: "readlinkat",
}  # fmt: skip
_EROFS, _EMFILE, _ENOENT, _EACCES = 30, 24, 2, 13
#: An open file's magic link: the path a write to an fd's own metadata is reported under.
_FD_LINK = re.compile(r"/proc/(?:self|thread-self|[0-9]+)(?:/task/[0-9]+)?/fd/[0-9]+")


def _under(path: str, roots: tuple[str, ...] | list[str]) -> str | None:
    for root in roots:
        r = root.rstrip("/") or "/"
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return root
    return None


def _protected(path: str, policy: Policy | None) -> str | None:
    """The protected name (filesystem.protected, e.g. .git/hooks) `path` is in, if any."""
    names = policy.filesystem.protected if policy is not None else ()
    parts = path.split("/")
    for name in names:
        want = name.strip("/").split("/")
        for i in range(len(parts) - len(want) + 1):
            if parts[i : i + len(want)] == want:
                return name
    return None


def _mounts_hint(path: str, policy: Policy | None) -> str:
    name = _protected(path, policy)
    if name is not None:
        return f"a protected path ({name}, filesystem.protected): read-only inside the writable roots"
    if policy is not None and _under(path, policy.filesystem.deny):
        return "a denied path (filesystem.deny / --deny): hidden, read-only"
    if not path or _FD_LINK.match(path):
        # An open file's own metadata (fchmod, futimens, a /proc/self/fd/N link): a file of the read-only
        # view, or one the caller gave as stdio, reopened through a read-only mount (_stdio_files.py).
        return (
            "an open file of a read-only mount (the sandbox's view, or a file given as stdio, whose "
            "metadata stays the caller's)"
        )
    if not path.startswith("/"):
        return "outside the writable roots (read-only mount view); --allow-write DIR allows a directory"
    parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
    return f"outside the writable roots (read-only mount view); --allow-write {parent} to allow"


def _landlock_operation(name: str, flags: int) -> str:
    if name in ("execve", "execveat"):
        return "execute"
    if name in ("bind", "connect"):
        return name
    if name in ("open", "openat", "openat2") and flags & 0o3 == 0 and not flags & 0o1000:  # O_RDONLY, no
        return "read"  # O_TRUNC (O_CREAT on a missing file is refused as a write: MAKE_REG)
    return "write"


def observed_denial(ev: Observed, policy: Policy | None) -> Denial | None:
    """The Denial of one refusal the syscall-exit observer saw (supervisor/_observer.py), or None when it
    is not one corral names (a number outside its table)."""
    pid = ev.pid if 0 < ev.pid < 2**22 else None
    if ev.err == _EMFILE:
        fds = policy.resources.fds if policy is not None else None
        limit = f"RLIMIT_NOFILE={fds}" if fds is not None else "RLIMIT_NOFILE"
        hint = "the open-files limit; raise --max-fds to allow more"
        return Denial("rlimit", "open", limit, pid, ev.count, hint)
    name = _OBSERVED_CALLS.get(ev.nr)
    if name is None:
        return None
    target = f"{ev.path} -> {ev.path2}" if ev.path2 and name not in ("symlink", "symlinkat") else ev.path
    if ev.err == _ENOENT or (ev.err == _EACCES and not ev.landlock):  # below a denied directory: the
        # observer sends no other ENOENT, nor an EACCES Landlock did not count
        hint = "a denied path (filesystem.deny / --deny): hidden from the sandbox; nothing shows it"
        return Denial("mounts", "read", ev.path, pid, ev.count, hint)
    if ev.err == _EROFS:
        return Denial("mounts", "write", target, pid, ev.count, _mounts_hint(ev.path, policy))
    if not ev.landlock:
        return None
    operation = _landlock_operation(name, ev.flags)
    if operation in ("bind", "connect"):
        hint = "Landlock's TCP guard: no port is granted"
        return Denial("landlock", operation, f"port {ev.port}", pid, ev.count, hint)
    if operation == "execute":
        hint = "outside the execute paths (filesystem.execute): add the directory to allow"
    elif operation == "read":
        hint = "outside the readable roots (filesystem.read, --allow-read PATH)"
    else:
        hint = "outside the writable roots (Landlock: filesystem.write, --allow-write PATH)"
    return Denial("landlock", operation, target, pid, ev.count, hint)
