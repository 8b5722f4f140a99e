"""Seccomp: a syscall filter, compiled once per policy in the parent, installed by the sandbox init last.

The filter allows by default and answers a fixed list of dangerous syscalls with EPERM (so programs fail
cleanly instead of dying): kernel attack surface an ordinary program does not need (io_uring, bpf,
keyrings, perf, userfaultfd), namespace and mount manipulation (the sandbox builds those itself, before
the filter), and host administration (modules, kexec, reboot, swap, clock, quota). Some syscalls are
denied only for some arguments: `clone` with a namespace flag, `ioctl` with TIOCSTI/TIOCLINUX/TIOCSETD,
`personality` with a persona or flag outside the harmless ones. Tracing (ptrace and friends) is allowed
within the sandbox's own pid namespace and denied without one (TRACING). `clone3` answers ENOSYS: its
flags are in memory, out of the filter's reach, and libc then falls back to `clone`, whose flags the
filter does see.

No file the sandbox makes may carry a set-user-ID or set-group-ID bit (under a root caller such a
file is set-id ROOT on the host): every call that sets a mode is refused with EPERM when the mode
has S_ISUID or S_ISGID (chmod, fchmod, fchmodat, fchmodat2, creat, open/openat with O_CREAT or
O_TMPFILE, mknod, mknodat), and `openat2`, whose mode is in memory, answers ENOSYS so that libc
and programs fall back to `openat`. These rules are not removed by ``syscalls.allow``.

Every other ABI is killed (KILL_PROCESS): on x86_64 the i386 ABI (``int $0x80``, 32-bit
binaries) and x32 syscall numbers (bit 0x40000000), which would otherwise reach the kernel
through a syscall table the rules do not describe.

The built-in rules are a seccomp profile (`builtin_profile`, the model user profiles use), and `prepare`
(parent) compiles them together with the policy's own profile into ONE program with one compiler
(supervisor/sandbox/_seccomp_bpf.py), twice: the decision program (the real actions) and the installed one
(reported verdicts answer SECCOMP_RET_USER_NOTIF to the sandbox init, which runs the decision program on
the notified call). libseccomp (through pyseccomp, imported lazily) is the syscall table: names to
numbers. This module is also imported by the fork server, which runs ``python -I -S`` without
site-packages, so it imports only the standard library at module level. `apply` (child) hands the ready
BPF bytes to seccomp(2). See docs/seccomp.md.
"""

from __future__ import annotations

import errno as _errno
import functools
import struct
from typing import TYPE_CHECKING

from supervisor.sandbox import _cinit, _sys
from supervisor.sandbox import _seccomp_bpf as _bpf
from supervisor.sandbox._ops import Plan

_LAYER = "seccomp"

if TYPE_CHECKING:
    from policies import Policy
    from policies._seccomp import SeccompProfile, SeccompRule
    from supervisor.sandbox.probe import KernelCaps

#: Denied outright with EPERM, each with the reason (docs/seccomp.md says the same).
DEFAULT_DENY: dict[str, str] = {
    # Large, frequently exploited kernel attack surface that ordinary programs do not need.
    "io_uring_setup": "io_uring: a second syscall interface that bypasses this filter's rules",
    "io_uring_enter": "io_uring: a second syscall interface that bypasses this filter's rules",
    "io_uring_register": "io_uring: a second syscall interface that bypasses this filter's rules",
    "bpf": "eBPF programs and maps: a major source of kernel exploits",
    "perf_event_open": "performance counters: kernel attack surface and side channels",
    "userfaultfd": "stalls kernel page faults at will: the classic race-widening exploit tool",
    "keyctl": "kernel keyrings are not namespaced: keys could leak between sandboxes",
    "add_key": "kernel keyrings are not namespaced: keys could leak between sandboxes",
    "request_key": "kernel keyrings are not namespaced; can also call out to user-space helpers",
    # Namespaces and mounts: set up by the sandbox before the filter; the child may not redo them.
    "unshare": "new namespaces (a user namespace re-grants capabilities) would widen the sandbox",
    "setns": "joining another namespace could leave the sandbox's",
    "mount": "the mount table is fixed by the sandbox",
    "umount2": "unmounting could reveal what the sandbox hid beneath a mount",
    "pivot_root": "changes the root of the mount namespace",
    "move_mount": "new mount API: the mount table is fixed by the sandbox",
    "open_tree": "new mount API: clones mount trees",
    "open_tree_attr": "new mount API: clones mount trees with new attributes (Linux 6.15)",
    "fsopen": "new mount API: creates filesystem contexts",
    "fsmount": "new mount API: turns a filesystem context into a mount",
    "fsconfig": "new mount API: configures filesystem contexts",
    "fspick": "new mount API: reconfigures existing mounts",
    "mount_setattr": "changes mount flags such as read-only",
    "open_by_handle_at": "opens files by handle, bypassing path checks (the 'shocker' escape)",
    "name_to_handle_at": "the other half of open_by_handle_at: leaks file handles",
    # Host administration.
    "kexec_load": "replaces the running kernel",
    "kexec_file_load": "replaces the running kernel",
    "init_module": "loads kernel modules",
    "finit_module": "loads kernel modules",
    "delete_module": "unloads kernel modules",
    "reboot": "reboots or halts the host",
    "swapon": "changes host swap",
    "swapoff": "changes host swap",
    "acct": "switches host process accounting",
    "quotactl": "changes filesystem quotas",
    "quotactl_fd": "changes filesystem quotas",
    "syslog": "reads or clears the kernel log (kernel addresses, other users' activity)",
    "lookup_dcookie": "profiling interface resolving kernel cookies to paths (gone in Linux 6.8)",
    "clock_settime": "sets the host clock",
    "clock_adjtime": "adjusts the host clock",
    "settimeofday": "sets the host clock",
    "adjtimex": "adjusts the host clock",
    "vhangup": "hangs up the terminal, which another process may share",
    "fanotify_init": "filesystem-wide event monitoring and permission decisions",
    # Obsolete or hardware-level interfaces nothing in a sandbox needs.
    "nfsservctl": "obsolete NFS server control (removed in Linux 3.1)",
    "uselib": "obsolete a.out library loading",
    "iopl": "raw I/O-port privilege level (x86)",
    "ioperm": "raw I/O-port access (x86)",
}

#: Access to another process's memory and descriptors: what debuggers, strace and sanitizers need
#: (LeakSanitizer stops the world with ptrace). Allowed inside the sandbox's own pid namespace, which holds
#: only its own processes: the kernel checks every target with its ptrace access mode (same credentials,
#: no capability), Landlock confines ptrace to the sandbox's own domain, the sandbox's init is non-dumpable
#: (its memory and its own fds stay out of reach), and since Linux 4.8 a tracee's syscalls are checked by
#: seccomp again after a tracer changed them, so a tracer cannot walk a tracee past this filter. Denied
#: with EPERM, as before, when the sandbox has no pid namespace (best_effort on a kernel without one): then
#: other sandboxes' processes and the caller's would be visible.
TRACING: dict[str, str] = {
    "ptrace": "traces another process (gdb, strace, LeakSanitizer)",
    "process_vm_readv": "reads another process's memory (gdb, sanitizers)",
    "process_vm_writev": "writes another process's memory (gdb)",
    "pidfd_getfd": "copies a file descriptor of another process (ptrace-class access)",
    "kcmp": "compares the kernel objects of two processes (checkpoint/restore, lsof-like tools)",
}

#: personality(2) flags a sandbox may set, on the PER_LINUX or PER_LINUX32 persona: `setarch -R`
#: (ADDR_NO_RANDOMIZE), `linux32` and `setarch --uname-2.6` (UNAME26), `setarch -L` (ADDR_COMPAT_LAYOUT),
#: `linux32 --3gb` (ADDR_LIMIT_3GB). They change only how the sandbox's own programs are laid out or
#: described. Every other flag (MMAP_PAGE_ZERO, READ_IMPLIES_EXEC, ADDR_LIMIT_32BIT, the timing and inode
#: quirks) and every other persona is refused with EPERM, as Docker's profile does by argument; the query
#: personality(0xffffffff) is allowed.
PERSONALITY_ALLOWED: dict[str, int] = {
    "PER_LINUX32": 0x0008,
    "UNAME26": 0x0020000,
    "ADDR_NO_RANDOMIZE": 0x0040000,
    "ADDR_COMPAT_LAYOUT": 0x0200000,
    "ADDR_LIMIT_3GB": 0x8000000,
}

#: Denied only for some arguments, or with another errno.
CONDITIONAL: dict[str, str] = {
    "clone": "EPERM when any namespace flag is set (same reason as unshare); threads and fork work",
    "clone3": "ENOSYS: its flags are in memory, out of the filter's sight; libc then uses clone",
    "ioctl": "EPERM for TIOCSTI (types into the terminal), TIOCLINUX (console control) and TIOCSETD "
    "(line discipline)",
    "personality": "EPERM for any persona but PER_LINUX/PER_LINUX32 and any flag but those of "
    "PERSONALITY_ALLOWED (setarch -R, linux32, --uname-2.6, -L, --3gb); the query is allowed",
    "socket": "EAFNOSUPPORT for a family other than unix/inet/inet6/netlink (and network.families); "
    "EPROTONOSUPPORT for a netlink protocol other than route/sock_diag (and network.netlink)",
    "socketpair": "EAFNOSUPPORT for a family other than unix/inet/inet6/netlink (and network.families)",
    # Set-id planting (not removed by `syscalls.allow`): EPERM when the mode has S_ISUID/S_ISGID.
    "chmod": "EPERM when the mode has S_ISUID or S_ISGID: no set-id file may reach the host",
    "fchmod": "EPERM when the mode has S_ISUID or S_ISGID",
    "fchmodat": "EPERM when the mode has S_ISUID or S_ISGID",
    "fchmodat2": "EPERM when the mode has S_ISUID or S_ISGID",
    "creat": "EPERM when the mode has S_ISUID or S_ISGID",
    "open": "EPERM with O_CREAT or O_TMPFILE when the mode has S_ISUID or S_ISGID",
    "openat": "EPERM with O_CREAT or O_TMPFILE when the mode has S_ISUID or S_ISGID",
    "mknod": "EPERM when the mode has S_ISUID or S_ISGID (mknod S_IFREG makes regular files)",
    "mknodat": "EPERM when the mode has S_ISUID or S_ISGID",
    "openat2": "ENOSYS: its mode is in memory, out of the filter's sight; callers fall back to openat",
    "setxattrat": "ENOSYS: its file and attribute are in memory, out of the init's watch of the other "
    "setxattr calls (a set-id file's ACL); callers fall back to setxattr, lsetxattr or fsetxattr",
}

#: The set-id bits no sandbox may store on a file (S_ISUID, S_ISGID).
SETID_BITS: dict[str, int] = {"S_ISUID": 0o4000, "S_ISGID": 0o2000}

#: Open flags that create a file with the call's mode: O_CREAT, and __O_TMPFILE (the bit that
#: O_TMPFILE adds to O_DIRECTORY; an O_TMPFILE file can be linked into the tree with linkat).
CREATE_FLAGS: dict[str, int] = {"O_CREAT": 0o100, "__O_TMPFILE": 0o20000000}

#: Calls that set a file's mode, and the argument holding it: refused (EPERM) when the mode has a
#: set-id bit. For the open calls, only when a creation flag is in `flags_arg` too.
SETID_MODE_ARG: dict[str, tuple[int, int | None]] = {
    "chmod": (1, None),
    "fchmod": (1, None),
    "fchmodat": (2, None),
    "fchmodat2": (2, None),
    "creat": (1, None),
    "mknod": (1, None),
    "mknodat": (2, None),
    "open": (2, 1),
    "openat": (3, 2),
}

#: Refused (EPERM) when the policy's `filesystem.watch` is False.
INOTIFY: tuple[str, ...] = ("inotify_init", "inotify_init1", "inotify_add_watch")

#: Namespace flags refused on clone (CLONE_NEWTIME is inside CSIGNAL for clone(), harmlessly
#: matched too: exit signals are below 65, so no real call has that bit).
CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}

#: ioctl commands refused (the command is an unsigned int: compared on the low 32 bits only).
#: TIOCSETD switches a terminal's line discipline: on the caller's terminal n_null swallows all its input and
#: output, and the other disciplines (n_gsm, n_hdlc, ...; autoloaded as modules) are kernel code no sandboxed
#: tool needs.
DENIED_IOCTLS: dict[str, int] = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C, "TIOCSETD": 0x5423}

# Syscalls newer than the libseccomp we may be given. Since Linux 5.1 new syscalls have the same
# number on every architecture but alpha, ia64 and mips, so these hold for x86_64 and aarch64.
_UNIFIED_NR: dict[str, int] = {"fchmodat2": 452, "setxattrat": 463, "open_tree_attr": 467}
_UNIFIED_ARCHES = ("x86_64", "aarch64")

# libseccomp's comparison operators and actions (pyseccomp's values; kept here so that building
# the rule list needs no import).
_NE = 1
_EQ = 4
_GT = 6
_MASKED_EQ = 7
_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000

_NOTIFY = 0x7FC00000  # SECCOMP_RET_USER_NOTIF
#: The verdicts a report can carry besides an errno (a D record's `act`): a profile's kill_process, its log.
KILLED = 0x80000000
LOGGED = 0x7FFC0000

#: The errnos whose refusals are reported (docs/denials.md): the notifying filter answers them with
#: SECCOMP_RET_USER_NOTIF and the sandbox init replies with the errno. ENOSYS (clone3, openat2) and
#: EOPNOTSUPP (fallocate under a disk budget) are not refusals but fallbacks libc takes on every call.
REPORTED_ERRNOS = (_errno.EPERM, _errno.EAFNOSUPPORT, _errno.EPROTONOSUPPORT)

#: What the sandbox init (and the vfork child of its posix_spawn, which runs while the init waits)
#: calls after installing the filter. A notified call made by the init would wait for the init itself:
#: an unconditional rule for one of these names (a policy's `syscalls.deny`) is never notified, only
#: answered with its errno; the built-in argument rules never match the init's own calls.
INIT_CALLS = frozenset(
    [
        "prctl",
        "close",
        "close_range",
        "fcntl",
        "ioctl",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sigaltstack",
        "chdir",
        "clone",
        "clone3",
        "vfork",
        "fork",
        "execve",
        "execveat",
        "dup",
        "dup2",
        "dup3",
        "pipe",
        "pipe2",
        "read",
        "write",
        "readv",
        "writev",
        "open",
        "openat",
        "lseek",
        "pread64",
        "fstat",
        "fstatfs",
        "newfstatat",
        "readlinkat",
        "statx",
        "wait4",
        "waitid",
        "poll",
        "ppoll",
        "signalfd",
        "signalfd4",
        "kill",
        "clock_gettime",
        "getpid",
        "gettid",
        "mmap",
        "munmap",
        "mprotect",
        "brk",
        "madvise",
        "mremap",
        "recvmsg",
        "recvfrom",
        "exit",
        "exit_group",
        "set_tid_address",
        "sched_yield",
        "getrusage",
        "futex",
        "process_vm_readv",
    ]
)

#: Under these network modes the sandbox has its own network namespace with loopback only: the notifying
#: filter also watches NETWORK_WATCH, so that a connect, sendto, sendmsg or sendmmsg off loopback is
#: reported (layer "network"). Every connect, every sendto with a destination, and every sendmsg and
#: sendmmsg (whose destination is in memory, out of the filter's reach) then pays a round trip through the
#: init; a sendto on a connected socket (no destination) does not.
WATCHED_NETWORK_MODES = ("none", "proxy")
NETWORK_WATCH: dict[str, tuple[_Cmp, ...]] = {
    "connect": (),
    "sendto": ((4, _NE, 0, 0),),
    "sendmsg": (),
    "sendmmsg": (),
}

#: The argument(s) that tell one refusal of a syscall from another (fold keys, see `fold_keys`): the
#: sandbox init folds repeats of (syscall, these arguments masked) into one report with a count.
DECISIVE: dict[str, tuple[tuple[int, int], ...]] = {
    "clone": ((0, sum(CLONE_NAMESPACE_FLAGS.values())),),
    "unshare": ((0, 0xFFFFFFFF),),
    "setns": ((1, 0xFFFFFFFF),),
    "ioctl": ((1, 0xFFFFFFFF),),
    "personality": ((0, 0xFFFFFFFF),),
    "socket": ((0, 0xFFFFFFFF), (2, 0xFFFFFFFF)),
    "socketpair": ((0, 0xFFFFFFFF),),
    **{
        name: ((mode, 0o6000),) if flags is None else ((flags, sum(CREATE_FLAGS.values())), (mode, 0o6000))
        for name, (mode, flags) in SETID_MODE_ARG.items()
    },
}

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# A foreign ABI the kernel may run on each native arch: i386 on x86_64, arm on aarch64.
_FOREIGN_ARCH = {"x86_64": 0x40000003, "aarch64": 0x40000028}
_X32_SYSCALL_BIT = 0x40000000
_BPF_MAXINSNS = 4096


# A rule: (errno, ((arg, op, datum_a, datum_b), ...)); several rules for one name are ORed.
_Cmp = tuple[int, int, int, int]
_Rule = tuple[int, tuple[_Cmp, ...]]

#: The notifying filter also watches every shared mapping of a file (mmap with MAP_SHARED or
#: MAP_SHARED_VALIDATE, without MAP_ANONYMOUS: flags & 0x23 is 0x01 or 0x03, one rule each): the init
#: refuses it (EPERM, reported) when the fd is a set-id regular file open for writing, and lets the kernel
#: run every other. Stores through a shared writable mapping do not clear set-id bits as write(2) and
#: truncate do, so a set-id file the HOST left in a writable root would otherwise keep them with the
#: sandbox's contents (docs/security.md, "Set-id bits"). Only shared file mappings pay a round trip through
#: the init (SQLite's -shm file, POSIX shared memory, glibc's gconv cache): private mappings, which is how
#: programs and libraries are loaded, do not. A watched allow outranks a profile's allow
#: (`_seccomp_bpf.precedence`); under a profile's log the init checks the file too.
SHARED_MAP_WATCH: tuple[tuple[_Cmp, ...], ...] = (
    ((3, _MASKED_EQ, 0x23, 0x01),),
    ((3, _MASKED_EQ, 0x23, 0x03),),
)


#: The notifying filter also watches every setxattr of a path or fd: the init refuses it (EPERM, reported)
#: when the file is a regular file with S_ISUID or S_ISGID, and lets the kernel run every other. Setting
#: `system.posix_acl_access` rewrites the group permission bits and keeps S_ISGID for a caller in the file's
#: group: a set-gid file without group execute that the HOST left in a writable root (which writes do not
#: clear: it grants nothing) became, after the sandbox wrote its own code there, a set-gid executable of the
#: file's group (root's, under a root caller) for any host user who ran it (docs/security.md, "Set-id bits").
XATTR_WATCH: tuple[str, ...] = ("setxattr", "lsetxattr", "fsetxattr")


def _builtin_rules() -> dict[str, list[_Rule]]:
    rules: dict[str, list[_Rule]] = {name: [(_errno.EPERM, ())] for name in DEFAULT_DENY}
    # One rule per flag, each a masked compare: libseccomp ORs the rules of a syscall.
    rules["clone"] = [(_errno.EPERM, ((0, _MASKED_EQ, f, f),)) for f in CLONE_NAMESPACE_FLAGS.values()]
    rules["clone3"] = [(_errno.ENOSYS, ())]
    rules["ioctl"] = [(_errno.EPERM, ((1, _MASKED_EQ, 0xFFFFFFFF, cmd),)) for cmd in DENIED_IOCTLS.values()]
    rules["personality"] = _personality_rules()
    return rules


def _personality_rules() -> list[_Rule]:
    """EPERM for a personality(2) value outside PERSONALITY_ALLOWED, one masked compare per rule (libseccomp
    takes one comparison per argument and rule; rules are ORed). The kernel reads 32 bits. Bit 7 is in no
    persona or flag, but is set in the query 0xffffffff: with bit 7 clear, each bit outside the allowed ones
    is refused; with bit 7 set, any clear bit is refused, which leaves the query alone."""
    allowed = 0x80
    for v in PERSONALITY_ALLOWED.values():
        allowed |= v
    rules: list[_Rule] = []
    for i in range(32):
        bit = 1 << i
        if not allowed & bit:
            rules.append((_errno.EPERM, ((0, _MASKED_EQ, bit | 0x80, bit),)))
        if bit != 0x80:
            rules.append((_errno.EPERM, ((0, _MASKED_EQ, bit | 0x80, 0x80),)))
    return rules


def _setid_rules() -> dict[str, list[_Rule]]:
    """EPERM for every call that would store S_ISUID or S_ISGID: one masked compare per bit (and
    per creation flag for the open calls), ORed by libseccomp. A mode is an unsigned int: only its
    low 32 bits are compared, so garbage in the upper half cannot slip a bit past the rule."""
    # setxattrat (Linux 6.13) names its file by a directory fd, a path and flags, and its attribute in a
    # struct: the init watches the other three (XATTR_WATCH); libc's setxattr does not use it.
    rules: dict[str, list[_Rule]] = {"openat2": [(_errno.ENOSYS, ())], "setxattrat": [(_errno.ENOSYS, ())]}
    for name, (mode_arg, flags_arg) in SETID_MODE_ARG.items():
        out: list[_Rule] = []
        for bit in SETID_BITS.values():
            mode_cmp = (mode_arg, _MASKED_EQ, bit, bit)
            if flags_arg is None:
                out.append((_errno.EPERM, (mode_cmp,)))
            else:
                out.extend(
                    (_errno.EPERM, ((flags_arg, _MASKED_EQ, flag, flag), mode_cmp))
                    for flag in CREATE_FLAGS.values()
                )
        rules[name] = out
    return rules


def _socket_rules(policy: Policy) -> dict[str, list[_Rule]]:
    """socket/socketpair rules: refuse every address family but the allowed ones, and every netlink
    protocol but the allowed ones.

    libseccomp takes one comparison per argument and rule, so "not in the allowed set" is written as
    "above the largest allowed value" plus one equality per refused value below it. Both compare all
    64 bits, although the kernel reads an int: a value with junk in the upper half (which the kernel
    would read as its lower half, maybe an allowed family) is above every allowed value, so it is
    refused, never let through.
    """
    from policies._model import (
        DEFAULT_FAMILIES,
        DEFAULT_NETLINK,
        NETLINK_PROTOCOLS,
        SOCKET_FAMILIES,
    )

    def refuse_all_but(arg: int, allowed: set[int], err: int, pre: tuple[_Cmp, ...]) -> list[_Rule]:
        top = max(allowed)
        rules: list[_Rule] = [(err, (*pre, (arg, _GT, top, 0)))]
        rules += [(err, (*pre, (arg, _EQ, v, 0))) for v in range(top) if v not in allowed]
        return rules

    families = {SOCKET_FAMILIES[n] for n in (*DEFAULT_FAMILIES, *policy.network.families)}
    family_rules = refuse_all_but(0, families, _errno.EAFNOSUPPORT, ())
    netlink = {NETLINK_PROTOCOLS[n] for n in (*DEFAULT_NETLINK, *policy.network.netlink)}
    pre: tuple[_Cmp, ...] = ((0, _EQ, SOCKET_FAMILIES["netlink"], 0),)
    netlink_rules = refuse_all_but(2, netlink, _errno.EPROTONOSUPPORT, pre)
    return {"socket": family_rules + netlink_rules, "socketpair": list(family_rules)}


def _resolve(name: str) -> int:
    """The native syscall number of `name`: -1 when unknown, below -1 when not on this arch."""
    import pyseccomp

    nr = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    if nr == -1 and _sys.MACHINE in _UNIFIED_ARCHES:
        nr = _UNIFIED_NR.get(name, -1)
    return nr


def _rule_set(policy: Policy, tracing: bool = True) -> dict[str, list[_Rule]]:
    """The rules for `policy` before resolving: built-ins (and TRACING unless `tracing`: the sandbox has
    its own pid namespace), minus `allow`, plus `deny` (EPERM).

    Raises PolicyError for a listed name this libseccomp does not know on this architecture, and
    for denying execve (the command could never start).
    """
    from policies import PolicyError

    rules = _builtin_rules()
    if not tracing:
        rules.update({name: [(_errno.EPERM, ())] for name in TRACING})
    rules.update(_socket_rules(policy))
    if not policy.filesystem.watch:
        # inotify watches are not mediated by path (docs/security.md, "File watches"): all or nothing.
        rules.update({name: [(_errno.EPERM, ())] for name in INOTIFY})
    for field in ("allow", "deny"):
        for i, name in enumerate(getattr(policy.syscalls, field)):
            nr = _resolve(name)
            if nr < 0 and not (field == "allow" and name in rules):
                why = (
                    "is not a syscall libseccomp knows" if nr == -1 else f"is not a syscall on {_sys.MACHINE}"
                )
                where = f"syscalls.{field}[{i}]"
                raise PolicyError(where, why, name)
    if policy.resources.disk is not None:
        # fallocate reserves blocks without writing pages, which the disk budget counts (and, with
        # FALLOC_FL_KEEP_SIZE, past RLIMIT_FSIZE): EOPNOTSUPP makes libc's posix_fallocate write instead.
        rules["fallocate"] = [(_errno.EOPNOTSUPP, ())]
    for name in policy.syscalls.allow:
        rules.pop(name, None)
    for i, name in enumerate(policy.syscalls.deny):
        if name == "execve":
            where = f"syscalls.deny[{i}]"
            raise PolicyError(where, "denying execve would stop the command from starting", name)
        # Replaces any conditional built-in rule: an explicit deny is unconditional.
        rules[name] = [(_errno.EPERM, ())]
    # The set-id rules hold whatever `allow` says (a policy cannot let a sandbox plant set-id
    # files); a name denied outright needs no argument rule.
    for name, setid in _setid_rules().items():
        if name in rules and any(not cmps for _, cmps in rules[name]):
            continue
        rules[name] = [*rules.get(name, []), *setid]
    return rules


def notified(name: str, err: int, cmps: tuple[_Cmp, ...]) -> bool:
    """Whether a built-in rule's refusals are reported (REPORTED_ERRNOS; not an unconditional rule on one of
    INIT_CALLS, which would notify the init about its own call)."""
    return err in REPORTED_ERRNOS and (bool(cmps) or name not in INIT_CALLS)


#: ENOSYS on these is a fallback libc takes (clone3 -> clone, openat2 -> openat), not a refusal worth a
#: report, whoever answers it: the built-in rules or a profile (Docker's answers ENOSYS to clone3).
FALLBACKS = frozenset(["clone3", "openat2", "setxattrat"])


def _profile_reported(name: str, action: str) -> bool:
    """Whether a profile's verdict on `name` is reported: every one but allow, and ENOSYS on FALLBACKS."""
    return action != "allow" and not (action == f"errno:{_errno.ENOSYS}" and name in FALLBACKS)


def _action_value(action: str) -> int:
    """The SECCOMP_RET_* value of a model action (allow, log, kill_process, errno:N)."""
    if action == "allow":
        return _bpf.ALLOW
    if action == "log":
        return _bpf.LOG
    if action == "kill_process":
        return _bpf.KILL_PROCESS
    return _bpf.ERRNO | int(action.removeprefix("errno:"))


def _cmps_of(rule: SeccompRule) -> tuple[_Cmp, ...]:
    out: list[_Cmp] = []
    for c in rule.args:
        masked = c.op == "masked_eq"
        out.append((c.index, _PROFILE_OPS[c.op], c.mask if masked else c.value, c.value if masked else 0))
    return tuple(out)


def _side_rules(
    profile: SeccompProfile, origin: str, always_allowed: frozenset[str] = frozenset()
) -> tuple[dict[int, list[_bpf.Rule]], dict[int, str], list[str]]:
    """A profile's rules per syscall number, in the compiler's terms; the names by number; the names
    skipped (unknown to libseccomp or not syscalls on this architecture; Docker's profile lists every
    arch's). `origin` "builtin" reports by `notified`, "profile" by `_profile_reported`."""
    out: dict[int, list[_bpf.Rule]] = {}
    names: dict[int, str] = {}
    skipped: list[str] = []
    for i, rule in enumerate(profile.rules):
        cmps = _cmps_of(rule)
        action = _action_value(rule.action)
        for name in rule.names:
            if name in always_allowed:
                continue
            nr = _resolve(name)
            if nr < 0:
                if name not in skipped:
                    skipped.append(name)
                continue
            if origin == "builtin":
                report = action & 0xFFFF0000 == _bpf.ERRNO and notified(name, action & 0xFFFF, cmps)
            else:
                report = _profile_reported(name, rule.action)
            out.setdefault(nr, []).append(_bpf.Rule(action, cmps, report, origin, i))
            names[nr] = name
    return out, names, skipped


class _Compiled:
    """One policy's filter, compiled: the spec (rules per number), names by number, the built-in names,
    the profile's skipped names."""

    def __init__(self, spec: _bpf.Spec, names: dict[int, str], builtin: list[str], skipped: list[str]):
        self.spec, self.names, self.builtin, self.skipped = spec, names, builtin, skipped


def _compile(
    policy: Policy, tracing: bool = True, notify: bool = False, private_net: bool = False
) -> _Compiled:
    """The built-in rules (`builtin_profile`) and the policy's profile, in the compiler's terms. With
    `notify`, SHARED_MAP_WATCH and XATTR_WATCH are watched, and with `private_net` too (the sandbox has its
    own network namespace) NETWORK_WATCH.

    Raises PolicyError (see `_rule_set`), ImportError/RuntimeError when pyseccomp or libseccomp (the
    syscall table) is missing.
    """
    builtin, names, _ = _side_rules(builtin_profile(policy, tracing), "builtin")
    builtin_names = sorted(set(names.values()))
    if notify and private_net and policy.network.mode in WATCHED_NETWORK_MODES:
        # Watched, not refused: the init reads the destination, reports one off loopback (which the
        # private network namespace refuses: no route) and lets the kernel run the call.
        for name, cmps in NETWORK_WATCH.items():
            nr = _resolve(name)
            if nr >= 0 and nr not in builtin:
                builtin[nr] = [_bpf.Rule(_bpf.ALLOW, cmps, True, "builtin")]
                names[nr] = name
    mmap = _resolve("mmap")
    if notify and mmap >= 0 and mmap not in builtin:  # (a policy's deny of mmap is a rule already)
        # Watched, not refused: the init looks at the mapped file (SHARED_MAP_WATCH).
        builtin[mmap] = [_bpf.Rule(_bpf.ALLOW, cmps, True, "builtin") for cmps in SHARED_MAP_WATCH]
        names[mmap] = "mmap"
    for name in XATTR_WATCH if notify else ():
        nr = _resolve(name)
        if nr >= 0 and nr not in builtin:  # (a policy's deny of it is a rule already)
            # Watched, not refused: the init looks at the file (XATTR_WATCH).
            builtin[nr] = [_bpf.Rule(_bpf.ALLOW, (), True, "builtin")]
            names[nr] = name
    profile = policy.syscalls.profile
    default = _bpf.ALLOW_RULE
    rules: dict[int, list[_bpf.Rule]] = {}
    skipped: list[str] = []
    exempt: frozenset[int] = frozenset()
    if profile is not None:
        rules, pnames, skipped = _side_rules(profile, "profile", PROFILE_ALWAYS_ALLOWED)
        names.update(pnames)
        default = _bpf.Rule(_action_value(profile.default), (), profile.default != "allow", "profile")
        for name in FALLBACKS:
            nr = _resolve(name)
            if nr >= 0 and nr not in rules and not _profile_reported(name, profile.default):
                rules[nr] = [_bpf.Rule(default.action, (), False, "profile")]
                names[nr] = name
        exempt = frozenset(n for n in map(_resolve, PROFILE_ALWAYS_ALLOWED) if n >= 0)
    machine = _sys.MACHINE
    spec = _bpf.Spec(builtin, rules, default, _AUDIT_ARCH.get(machine, 0), machine == "x86_64", exempt)
    return _Compiled(spec, names, builtin_names, skipped)


_OP_TEXT = {_NE: "!=", 2: "<", 3: "<=", _EQ: "==", 5: ">=", _GT: ">"}


def _action_text(rule: _bpf.Rule) -> str:
    a = rule.action
    named = {_bpf.ALLOW: "ALLOW", _bpf.LOG: "LOG", _bpf.KILL_PROCESS: "KILL_PROCESS"}
    text = named.get(a, f"ERRNO({a & 0xFFFF})")
    if rule.report:
        text += " [reported]" if a != _bpf.ALLOW else " [watched]"
    if rule.origin == "profile":
        text += " (profile default)" if rule.index < 0 else f" (profile rule {rule.index})"
    return text


def explain(policy: Policy, tracing: bool = True) -> str:
    """The filter `policy` compiles to, as text for humans and tests: the arch and x32 actions, the default,
    then each syscall with a rule (its number) and its rules, the stricter first, in the compiler's order.

    Raises PolicyError for unknown names, ImportError/RuntimeError without pyseccomp/libseccomp.
    """
    c = _compile(policy, tracing)
    spec = c.spec
    lines = [
        f"# filter for arch {_sys.MACHINE} ({spec.audit_arch})",
        "# invalid architecture action\n  action KILL_PROCESS;",
    ]
    if spec.x32_guard:
        lines.append("# x32 syscall numbers (nr >= 0x40000000, but -1)\n  action KILL_PROCESS;")
    lines.append(f"# default action\n  action {_action_text(spec.default)};")
    for nr in sorted(set(spec.builtin) | set(spec.profile)):
        lines.append(f'# filter for syscall "{c.names.get(nr, nr)}" ({nr})')
        for r in _bpf.order([*spec.profile.get(nr, []), *spec.builtin.get(nr, [])]):
            conds = " && ".join(
                f"($a{a} & {x:#x}) == {y:#x}" if op == _MASKED_EQ else f"$a{a} {_OP_TEXT[op]} {x:#x}"
                for a, op, x, y in r.cmps
            )
            act = f"action {_action_text(r)};"
            lines.append(f"  if ({conds}) {act}" if conds else f"  {act}")
    return "\n".join(lines) + "\n"


def run_bpf(prog: bytes, nr: int, arch: int | None = None, args: tuple[int, ...] = ()) -> int:
    """Evaluate classic-BPF `prog` on one seccomp_data and return the SECCOMP_RET_* value.

    `arch` defaults to this machine's audit arch; `args` are up to six 64-bit arguments. Used by
    `prepare` to check the compiled filter before trusting it, and by the tests. Raises ValueError
    on an instruction seccomp would not accept or a program that runs off its end.
    """
    data = _seccomp_data(nr, _AUDIT_ARCH[_sys.MACHINE] if arch is None else arch, args)
    insns = _decode(prog)
    a = x = 0
    mem = [0] * 16
    pc = 0
    m32 = 0xFFFFFFFF
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        pc += 1
        if code == 0x20:  # ld [k]
            if k % 4 or k + 4 > len(data):
                msg = f"seccomp BPF: bad load offset {k}"
                raise ValueError(msg)
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x00:  # ld #k
            a = k
        elif code == 0x60:  # ld M[k]
            a = mem[k]
        elif code == 0x01:  # ldx #k
            x = k
        elif code == 0x61:  # ldx M[k]
            x = mem[k]
        elif code == 0x02:  # st M[k]
            mem[k] = a
        elif code == 0x03:  # stx M[k]
            mem[k] = x
        elif code == 0x07:  # tax
            x = a
        elif code == 0x87:  # txa
            a = x
        elif cls == 0x04:  # alu
            src = x if code & 0x08 else k
            a = _alu(code & 0xF0, a, src) & m32
        elif code == 0x05:  # ja
            pc += k
        elif cls == 0x05:  # conditional jumps
            pc += jt if _jump(code, a, x if code & 0x08 else k) else jf
        elif code == 0x06:  # ret #k
            return k
        elif code == 0x16:  # ret a
            return a
        else:
            msg = f"seccomp BPF: unsupported instruction {code:#x}"
            raise ValueError(msg)
    msg = "seccomp BPF: program ends without a return"
    raise ValueError(msg)


@functools.lru_cache(maxsize=8)
def _decode(prog: bytes) -> list[tuple[int, int, int, int]]:
    return list(struct.iter_unpack("=HBBI", prog[: len(prog) // 8 * 8]))


def _seccomp_data(nr: int, arch: int, args: tuple[int, ...]) -> bytes:
    """The struct seccomp_data `run_bpf` evaluates: `args` padded or cut to six, each as 64 bits."""
    full = (tuple(args) + (0,) * 6)[:6]
    return struct.pack("=iIQ6Q", nr, arch, 0, *(a & (2**64 - 1) for a in full))


def _jump(code: int, a: int, src: int) -> bool:
    """Whether the conditional jump `code` is taken (A against `src`). Raises ValueError on an unknown one."""
    op = code & 0xF0
    if op == 0x10:
        return a == src
    if op == 0x20:
        return a > src
    if op == 0x30:
        return a >= src
    if op == 0x40:
        return bool(a & src)
    msg = f"seccomp BPF: bad jump {code:#x}"
    raise ValueError(msg)


def _alu(op: int, a: int, src: int) -> int:
    if op == 0x00:
        return a + src
    if op == 0x10:
        return a - src
    if op == 0x20:
        return a * src
    if op == 0x30:
        return a // src if src else 0
    if op == 0x40:
        return a | src
    if op == 0x50:
        return a & src
    if op == 0x60:
        return a << src if src < 32 else 0
    if op == 0x70:
        return a >> src if src < 32 else 0
    if op == 0x80:
        return -a
    if op == 0x90:
        return a % src if src else 0
    if op == 0xA0:
        return a ^ src
    msg = f"seccomp BPF: bad alu op {op:#x}"
    raise ValueError(msg)


def _self_check(c: _Compiled, decision: bytes, installed: bytes | None) -> str | None:
    """Run the compiled programs on a few inputs; None if they behave, else what is wrong. Checks that hold
    whatever the rules: a foreign ABI and x32 numbers are killed, execve is allowed, every built-in rule's
    witness is refused. Then both programs against the compiler's reference semantics (its `verdict`) on
    every rule's witness: the decision program gives the deciding rule's action, the installed one the
    same or, for a reported rule, SECCOMP_RET_USER_NOTIF."""
    machine = _sys.MACHINE
    if machine not in _AUDIT_ARCH:
        return None  # no expectations recorded for this arch
    spec = c.spec
    progs = [(decision, False)] + ([(installed, True)] if installed is not None else [])
    for prog, notify in progs:
        if run_bpf(prog, _sys.nr("getpid"), arch=_FOREIGN_ARCH[machine]) != _KILL_PROCESS:
            return "a foreign-ABI syscall is not killed"
        if machine == "x86_64":
            for nr in (_X32_SYSCALL_BIT | 39, _X32_SYSCALL_BIT | 521):  # x32 getpid, x32 ptrace
                if run_bpf(prog, nr) != _KILL_PROCESS:
                    return f"x32 syscall {nr:#x} is not killed"
        if run_bpf(prog, _resolve("execve")) not in (_ALLOW, _bpf.LOG, _NOTIFY):
            return "execve is refused"
        for nr, rules in [*spec.builtin.items(), *spec.profile.items()]:
            for rule in rules:
                args = _bpf.witnesses(rule)[0]
                want = _bpf.verdict(spec, nr, args)
                value = _NOTIFY if notify and want.report else want.action
                if run_bpf(prog, nr, args=args) != value:
                    return f"{c.names.get(nr, nr)}{args if rule.cmps else ''} is not decided as its rules say"
                if rule.origin == "builtin" and rule.action != _ALLOW and want.action == _ALLOW:
                    return f"{c.names.get(nr, nr)}{args if rule.cmps else ''} is not denied"
    return None


def prepare(policy: Policy, caps: KernelCaps) -> dict[str, object] | None:
    """Compile the policy's seccomp filter in the parent (once per policy; the caller caches): the built-in
    rules and the policy's profile (`syscalls.profile`) in ONE program, by one compiler (`_seccomp_bpf`).

    Returns None when `policy.syscalls.enabled` is False, or when seccomp is unavailable (the
    kernel lacks it, or libseccomp/pyseccomp is missing) and `policy.best_effort` is set: the
    caller records the layer as missing. Otherwise ``{"bpf": bytes, "denied": [names], ...}``: `bpf`
    is the decision program (the real actions; what is installed when there are no reports), "notify"
    the program the init installs with a listener (reported verdicts answer USER_NOTIF), "keys" the
    fold keys, "names" the syscall names by number, "watch_net", "profile_skipped".

    Raises SandboxSetupError (layer ``seccomp``) when seccomp is unavailable and the policy is
    not best_effort, or when the filter does not fit the kernel's limit or does not pass the
    self-check; PolicyError for a name in ``syscalls.deny``/``syscalls.allow`` that is not a
    syscall on this architecture, for denying execve, or for a profile that refuses execve.
    """
    if not policy.syscalls.enabled or not _seccomp_usable(policy, caps):
        return None
    notify = caps.seccomp_notify.available
    private_net = caps.namespace("net").available
    # Tracing stays inside the sandbox only where its pid namespace holds nothing else (TRACING).
    c = _compile(policy, caps.namespace("pid").available, notify=notify, private_net=private_net)
    problem = None
    try:
        decision = _bpf.assemble(c.spec, notify=False)
        installed = _bpf.assemble(c.spec, notify=True) if notify else None
        problem = _self_check(c, decision, installed)
    except ValueError as err:
        problem, decision, installed = str(err), b"", None
    if problem == "execve is refused" and policy.syscalls.profile is not None:
        from policies import PolicyError

        raise PolicyError("syscalls.profile", "the profile refuses execve: the command could never start")
    if problem:
        from supervisor._errors import SandboxSetupError

        raise SandboxSetupError(
            _LAYER,
            "filter self-check",
            _errno.EINVAL,
            hint=f"{problem}; a corral bug (or a profile too large for one filter), please report it",
        )
    prepared: dict[str, object] = {"bpf": decision, "denied": c.builtin}
    if policy.syscalls.profile is not None:
        prepared["profile_skipped"] = c.skipped
    if installed is not None:
        prepared["notify"] = installed
        prepared["keys"] = fold_keys(c)
        prepared["names"] = dict(c.names)
        prepared["watch_net"] = private_net and policy.network.mode in WATCHED_NETWORK_MODES
    return prepared


def _seccomp_usable(policy: Policy, caps: KernelCaps) -> bool:
    """Whether the kernel has seccomp and libseccomp imports; False when not and the policy is best_effort.

    Raises SandboxSetupError (layer ``seccomp``) when either is missing and the policy is not best_effort.
    """
    from supervisor._errors import SandboxSetupError

    if not caps.seccomp.available:
        if policy.best_effort:
            return False
        raise SandboxSetupError(
            _LAYER,
            "seccomp(SECCOMP_GET_ACTION_AVAIL)",
            caps.seccomp.errno,
            hint=_unavailable_hint(caps.seccomp.errno),
        )
    try:
        import pyseccomp  # noqa: F401 - fails here, clearly, when libseccomp is missing
    except (ImportError, RuntimeError, OSError) as err:
        if policy.best_effort:
            return False
        raise SandboxSetupError(
            _LAYER,
            "import pyseccomp (libseccomp)",
            hint="install libseccomp2 and the pyseccomp package, set best_effort = true to run "
            f"without the syscall filter, or syscalls.enabled = false ({err})",
        ) from err
    return True


#: libseccomp's comparison operators by the profile model's spelling (policies/_seccomp.py).
_PROFILE_OPS = {"!=": 1, "<": 2, "<=": 3, "==": 4, ">=": 5, ">": 6, "masked_eq": 7}

#: What a profile can never refuse, because the sandbox init (or the command's libc on its way out) calls
#: them after the filter is in place: INIT_CALLS, plus exit and the signal return. The built-in rules still
#: rule on them.
PROFILE_ALWAYS_ALLOWED = INIT_CALLS | {"exit", "exit_group", "rt_sigreturn", "restart_syscall"}


def compile_profile(
    profile: SeccompProfile, always_allowed: frozenset[str] = PROFILE_ALWAYS_ALLOWED
) -> tuple[bytes, list[str]]:
    """The decision program of `profile` alone (no built-in rules), by the one compiler, and the names it
    skipped: unknown to this libseccomp or not on this architecture (as Docker does: its profile lists names
    of every arch and kernel). Foreign ABIs are killed. `always_allowed` names are allowed whatever the
    profile says. For tests and for reading a profile's verdicts with `run_bpf`; a sandbox's filter is
    compiled by `prepare`.

    Raises ValueError when it does not fit 4096 instructions, ImportError/RuntimeError without libseccomp.
    """
    rules, _, skipped = _side_rules(profile, "profile", always_allowed)
    default = _bpf.Rule(_action_value(profile.default), (), False, "profile")
    exempt = frozenset(n for n in map(_resolve, always_allowed) if n >= 0)
    machine = _sys.MACHINE
    spec = _bpf.Spec({}, rules, default, _AUDIT_ARCH.get(machine, 0), machine == "x86_64", exempt)
    return _bpf.assemble(spec, notify=False), skipped


#: The model's spelling of libseccomp's operators.
_OP_NAMES = {v: k for k, v in _PROFILE_OPS.items()}


def builtin_profile(policy: Policy, tracing: bool = True) -> SeccompProfile:
    """corral's built-in rules for `policy` as a seccomp profile (policies.SeccompProfile, the model user
    profiles use): default allow and one rule per built-in rule (its errno, its argument conditions). This
    is what the compiler compiles (together with the policy's own profile); `.to_oci()` turns it into the
    OCI/Docker JSON format, a starting point for a profile of one's own. Raises like `_rule_set`."""
    from policies._seccomp import ArgCondition, SeccompProfile, SeccompRule

    rules = []
    for name, name_rules in _rule_set(policy, tracing).items():
        for err, cmps in name_rules:
            args = tuple(
                ArgCondition(arg, "masked_eq", b, a)
                if op == _MASKED_EQ
                else ArgCondition(arg, _OP_NAMES[op], a)
                for arg, op, a, b in cmps
            )
            rules.append(SeccompRule((name,), f"errno:{err}", args))
    return SeccompProfile("allow", tuple(rules), source="corral's built-in filter")


def fold_keys(c: _Compiled) -> bytes:
    """The fold keys for the sandbox init: packed (nr, argument index, mask) entries, at most two per
    syscall: DECISIVE for the built-in names, else the arguments a profile's rules compare (all 64 bits;
    a masked_eq rule's mask)."""
    out = bytearray()
    for nr in sorted(c.names):
        name = c.names[nr]
        keys = list(DECISIVE.get(name, ()))
        if not keys:
            seen: dict[int, int] = {}
            for r in c.spec.profile.get(nr, []):
                for arg, op, a, _b in r.cmps:
                    seen[arg] = seen.get(arg, 0) | (a if op == _MASKED_EQ else 2**64 - 1)
            keys = sorted(seen.items())
        for arg, mask in keys[:2]:
            out += struct.pack("=iiQ", nr, arg, mask)
    return bytes(out)


def profile_args(policy: Policy, name: str) -> tuple[int, ...]:
    """The argument indices the policy's profile compares for `name` (a report shows them), at most two."""
    profile = policy.syscalls.profile
    if profile is None or name in DECISIVE:
        return ()
    seen = sorted({c.index for r in profile.rules if name in r.names for c in r.args})
    return tuple(seen[:2])


def _unavailable_hint(err: int) -> str:
    escape = "set best_effort = true to run without it, or syscalls.enabled = false"
    if err in (_errno.EPERM, _errno.EACCES):
        return f"an outer sandbox (seccomp filter or LSM) blocks seccomp; {escape}"
    return f"the kernel lacks seccomp filters (CONFIG_SECCOMP_FILTER); {escape}"


def emit(prepared: dict[str, object], plan: Plan) -> None:
    """Install the prepared filter: the sandbox init's last step before the command's execve, because the
    filter denies syscalls the steps before it use. The init sets no_new_privs first if it is not set (the
    kernel requires it without CAP_SYS_ADMIN, and it must hold anyway), then calls
    seccomp(SECCOMP_SET_MODE_FILTER) (Linux 3.17+; corral needs 5.9+, so there is no prctl fallback).

    Raises SetupFailure (layer ``seccomp``, errno EINVAL) right away when `prepared` holds no sock_filter
    array; a failure in the init names the call and its errno.
    """
    bpf = prepared["bpf"]
    if not isinstance(bpf, bytes) or not bpf or len(bpf) % 8 or len(bpf) // 8 > 0xFFFF:
        raise _sys.SetupFailure(
            _LAYER,
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            _errno.EINVAL,
            hint="the prepared filter is not a sock_filter array; prepare() it again",
        )
    hints: dict[int | str, str] = {e: _apply_hint(e) for e in _APPLY_ERRNOS}
    hints["*"] = _apply_hint(0)
    notify, keys = prepared.get("notify"), prepared.get("keys")
    skip = -1
    if isinstance(notify, bytes) and isinstance(keys, bytes) and notify and len(notify) % 8 == 0:
        # The notifying filter with its listener; if the kernel refuses a listener (EBUSY: an outer
        # sandbox holds one), the errno filter alone: enforcement without reports, which the S record
        # then shows (no dcounts) and the Result lists under denials_unobservable.
        first = plan.add(
            _cinit.OP_SECCOMP_NOTIFY,
            _LAYER,
            "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER)",
            a=(len(notify), len(bpf), len(keys)),
            s=(notify, bpf, keys),
            hint=hints,
        )
        skip = plan.jump()
        plan.land(first)
    plan.add(
        _cinit.OP_SECCOMP, _LAYER, "seccomp(SECCOMP_SET_MODE_FILTER)", a=(len(bpf),), s=(bpf,), hint=hints
    )
    if skip >= 0:
        plan.land(skip)


def apply(prepared: dict[str, object]) -> None:
    """Install the prepared filter on the calling process now (what `emit` plans for a sandbox): the
    errno filter, without reports (nobody here would answer them). Raises SetupFailure (layer
    ``seccomp``) naming the failing call and errno."""
    plan = Plan()
    emit({k: v for k, v in prepared.items() if k != "notify"}, plan)
    plan.run()


_APPLY_ERRNOS = (_errno.EACCES, _errno.ENOMEM, _errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP)


def _apply_hint(err: int) -> str:
    if err == _errno.EACCES:
        return "no_new_privs is not set and the process lacks CAP_SYS_ADMIN"
    if err == _errno.ENOMEM:
        return "too many stacked filters (an outer sandbox's count too); or out of memory"
    if err == _errno.EINVAL:
        return "the kernel rejected the BPF program or lacks seccomp filter mode"
    if err in (_errno.ENOSYS, _errno.EOPNOTSUPP):
        return "the kernel lacks seccomp filters (CONFIG_SECCOMP_FILTER); set best_effort"
    return "see seccomp(2)"


def syscall_name(nr: int) -> str | None:
    """The name of native syscall `nr` (libseccomp's table), or None when unknown or without libseccomp."""
    try:
        import pyseccomp

        name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr)
    except (ImportError, RuntimeError, OSError, ValueError):
        return _UNIFIED_NAMES.get(nr) if _sys.MACHINE in _UNIFIED_ARCHES else None
    return name.decode() if isinstance(name, bytes) else str(name)


_UNIFIED_NAMES = {nr: name for name, nr in _UNIFIED_NR.items()}


def _model_side(
    profile: SeccompProfile, name: str, args: tuple[int, ...], origin: str, default: _bpf.Rule
) -> _bpf.Rule:
    rules = [
        _bpf.Rule(_action_value(r.action), _cmps_of(r), False, origin, i)
        for i, r in enumerate(profile.rules)
        if name in r.names
    ]
    return _bpf.side(rules, default, args)


@functools.lru_cache(maxsize=32)
def _builtin_for(policy: Policy) -> SeccompProfile:
    return builtin_profile(policy)


def decide(policy: Policy, name: str, args: tuple[int, ...]) -> _bpf.Rule:
    """Which rule decides a call of `name` with `args` under `policy` (the compiler's semantics, on the
    model: the stricter of the built-in rules' and the profile's verdicts, the profile's on a tie): its
    action, origin ("builtin" or "profile") and index in that profile's rules (-1: the default). For the
    hint of a report. Raises like `builtin_profile`."""
    args = tuple(a & (2**64 - 1) for a in args) + (0,) * (6 - len(args))
    b = _model_side(_builtin_for(policy), name, args, "builtin", _bpf.ALLOW_RULE)
    profile = policy.syscalls.profile
    if profile is None or name in PROFILE_ALWAYS_ALLOWED:
        return b
    default = _bpf.Rule(_action_value(profile.default), (), False, "profile")
    p = _model_side(profile, name, args, "profile", default)
    return b if _bpf.precedence(b) > _bpf.precedence(p) else p
