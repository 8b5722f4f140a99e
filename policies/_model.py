"""The Policy model: what a sandboxed child may do. Pure data, no syscalls.

Every class is a frozen dataclass so that a policy can be hashed, cached (the supervisor compiles
each distinct policy once) and shared between tasks without copies. Construct policies through
`profiles` or `load_policy`/`policy_from_dict`; direct construction validates too: each
`__post_init__` checks every field, stores it in canonical form (tuples, absolute normalised paths,
int bytes, float seconds) and raises PolicyError naming the field's dotted path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from policies import _network
from policies import _validate as v
from policies._errors import PolicyError
from policies._seccomp import SeccompProfile

NetworkMode = Literal["none", "host", "proxy"]
NETWORK_MODES: tuple[str, ...] = get_args(NetworkMode)

#: Socket address families by name (Linux 6.18's AF_* numbers; AF_MAX is 46). Only DEFAULT_FAMILIES
#: may be created unless `network.families` adds more (docs/seccomp.md, "Socket families").
SOCKET_FAMILIES: dict[str, int] = {
    "unspec": 0, "unix": 1, "inet": 2, "ax25": 3, "ipx": 4, "appletalk": 5, "netrom": 6,
    "bridge": 7, "atmpvc": 8, "x25": 9, "inet6": 10, "rose": 11, "decnet": 12, "netbeui": 13,
    "security": 14, "key": 15, "netlink": 16, "packet": 17, "ash": 18, "econet": 19, "atmsvc": 20,
    "rds": 21, "sna": 22, "irda": 23, "pppox": 24, "wanpipe": 25, "llc": 26, "ib": 27, "mpls": 28,
    "can": 29, "tipc": 30, "bluetooth": 31, "iucv": 32, "rxrpc": 33, "isdn": 34, "phonet": 35,
    "ieee802154": 36, "caif": 37, "alg": 38, "nfc": 39, "vsock": 40, "kcm": 41, "qipcrtr": 42,
    "smc": 43, "xdp": 44, "mctp": 45,
}  # fmt: skip
DEFAULT_FAMILIES: tuple[str, ...] = ("unix", "inet", "inet6", "netlink")

#: Netlink protocols by name (NETLINK_*). Only DEFAULT_NETLINK may be opened unless
#: `network.netlink` adds more.
NETLINK_PROTOCOLS: dict[str, int] = {
    "route": 0, "usersock": 2, "firewall": 3, "sock_diag": 4, "nflog": 5, "xfrm": 6,
    "selinux": 7, "iscsi": 8, "audit": 9, "fib_lookup": 10, "connector": 11, "netfilter": 12,
    "ip6_fw": 13, "dnrtmsg": 14, "kobject_uevent": 15, "generic": 16, "scsitransport": 18,
    "ecryptfs": 19, "rdma": 20, "crypto": 21, "smc": 22,
}  # fmt: skip
DEFAULT_NETLINK: tuple[str, ...] = ("route", "sock_diag")

#: Paths, relative to each writable root, that stay read-only (the git hook/config escape: code
#: written there runs later outside the sandbox, in the user's own `git commit`).
DEFAULT_PROTECTED: tuple[str, ...] = (".git/hooks", ".git/config")

#: Environment variable names with one of these as a word (case-insensitive; words split at `_`, other
#: punctuation and camelCase humps; KEY, SECRET, TOKEN and PASSWORD anywhere in a word; see
#: policies.env.is_secret_name) are dropped unless passed explicitly.
DEFAULT_SECRET_MARKERS: tuple[str, ...] = (
    "KEY",
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "PWD",
    "PAT",
    "JWT",
    "AUTH",
    "CREDENTIAL",
    "KEYRING",
    "APIKEY",
    "DSN",
    # `DB_PASS`, `SMTP_PASS`, `REDIS_PASS`, `AWS_CREDS`: passwords and credentials under their common short
    # names passed through (whole words only: `GIT_ASKPASS`, `BYPASS_CACHE` and `COMPASS_HOME` still do).
    "PASS",
    "CREDS",
)


@dataclass(frozen=True, slots=True)
class FilesystemPolicy:
    """Filesystem confinement.

    confine:   False means no filesystem confinement at all (the full-access profile); the other
               fields are then ignored except `private_tmp`.
    read:      absolute paths readable (and listable) with everything beneath them.
    write:     absolute paths writable with everything beneath them (also readable).
    deny:      absolute paths hidden from the child (an empty read-only directory or file is
               mounted over them).
    protected: paths relative to each writable root kept read-only (default: .git/hooks,
               .git/config).
    execute:   None: anything readable may be executed; otherwise only files beneath these
               absolute paths.
    private_tmp: a private tmpfs on /tmp and /dev/shm (host /tmp and /run are hidden either way
               when confined).
    allow_system_write: a system directory (/, /etc, /usr, ...; policies._roots) may be a writable
               root or the workdir of a confined policy; False (the default) refuses it when the
               policy is used (policies.check_writable_roots).
    watch:     inotify allowed (the default: file watchers work). Watches are not mediated by path
               (Landlock does not see them), so a watcher also sees activity, with file names, in host
               directories outside the roots; False refuses inotify_init/inotify_init1/
               inotify_add_watch (EPERM) for policies that must not see it (docs/security.md).
    """

    confine: bool = True
    read: tuple[str, ...] = ("/",)
    write: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    protected: tuple[str, ...] = DEFAULT_PROTECTED
    execute: tuple[str, ...] | None = None
    private_tmp: bool = True
    allow_system_write: bool = False
    watch: bool = True

    def __post_init__(self) -> None:
        """Validate and normalise every field; PolicyError names ``filesystem.<field>[i]``."""
        _set(self, "confine", v.check_bool(self.confine, "filesystem.confine"))
        _set(self, "read", v.check_paths(self.read, "filesystem.read"))
        _set(self, "write", v.check_paths(self.write, "filesystem.write"))
        _set(self, "deny", v.check_paths(self.deny, "filesystem.deny"))
        _set(self, "protected", v.check_protected_list(self.protected, "filesystem.protected"))
        if self.execute is not None:
            _set(self, "execute", v.check_paths(self.execute, "filesystem.execute"))
        _set(self, "private_tmp", v.check_bool(self.private_tmp, "filesystem.private_tmp"))
        allow_system = v.check_bool(self.allow_system_write, "filesystem.allow_system_write")
        _set(self, "allow_system_write", allow_system)
        _set(self, "watch", v.check_bool(self.watch, "filesystem.watch"))


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """How the child reaches the network.

    mode:     `none`: a private network namespace with only loopback up. `host`: the host's network.
              `proxy`: `none`, plus corral's proxy on the sandbox's loopback (127.0.0.1:3128, and the
              proxy variables in the command's environment), which connects to what `allow` names and
              nothing else (docs/network.md).
    allow:    under `proxy`, the hosts the proxy connects to: "example.org", "*.example.org" (names
              below it), either with ":PORT" (else ports 80 and 443), or an address ("10.1.2.3",
              "[fd00::1]:8080"), which also lets a listed name that resolves to that private address
              connect (policies._network). Stored canonical: IDNA A-labels, lower case.
    deny:     rules of the same forms that win over `allow`.
    families: socket address families allowed besides unix, inet, inet6 and netlink (names of
              SOCKET_FAMILIES, such as "vsock" or "packet"); every other family is refused by the
              seccomp filter with EAFNOSUPPORT in either mode.
    netlink:  netlink protocols allowed besides route and sock_diag (names of NETLINK_PROTOCOLS,
              such as "generic" or "audit"); the others are refused with EPROTONOSUPPORT.
    """

    mode: NetworkMode = "none"
    families: tuple[str, ...] = ()
    netlink: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Raise PolicyError("network.mode") unless the mode is "none", "host" or "proxy"; naming
        ``network.families[i]``/``network.netlink[i]`` for a name corral does not know, and
        ``network.allow[i]``/``network.deny[i]`` for a bad rule or for rules under another mode than
        "proxy" (where nothing would apply them)."""
        v.check_choice(self.mode, "network.mode", NETWORK_MODES)
        _set(self, "allow", _network.check_rules(self.allow, "network.allow"))
        _set(self, "deny", _network.check_rules(self.deny, "network.deny"))
        for name in ("allow", "deny"):
            if getattr(self, name) and self.mode != "proxy":
                where = f"network.{name}"
                raise PolicyError(where, f'only mode "proxy" applies host rules; the mode is {self.mode!r}')
        _set(self, "families", v.check_names_in(self.families, "network.families", SOCKET_FAMILIES))
        _set(self, "netlink", v.check_names_in(self.netlink, "network.netlink", NETLINK_PROTOCOLS))


@dataclass(frozen=True, slots=True)
class SyscallPolicy:
    """Seccomp filter adjustments on top of the built-in deny list.

    deny:  extra syscall names answered with EPERM.
    allow: names removed from the built-in deny list (an explicit, visible weakening).
    enabled: False disables the seccomp layer entirely.
    profile: a SeccompProfile (an OCI/Docker JSON profile, `load_seccomp_profile`) compiled into one filter
           with the built-in rules: the stricter verdict of the two holds (docs/seccomp.md, "Profiles").
    """

    enabled: bool = True
    deny: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    profile: SeccompProfile | None = None

    def __post_init__(self) -> None:
        """Validate the names; raise PolicyError naming ``syscalls.<field>[i]`` on a bad one, or
        on a name that is both allowed and denied.
        """
        _set(self, "enabled", v.check_bool(self.enabled, "syscalls.enabled"))
        _set(self, "deny", v.check_syscalls(self.deny, "syscalls.deny"))
        _set(self, "allow", v.check_syscalls(self.allow, "syscalls.allow"))
        if self.profile is not None and not isinstance(self.profile, SeccompProfile):
            where = "syscalls.profile"
            raise PolicyError(where, "expected a SeccompProfile (load_seccomp_profile)", self.profile)
        for i, name in enumerate(self.allow):
            if name in self.deny:
                where = f"syscalls.allow[{i}]"
                raise PolicyError(where, "is also in syscalls.deny; choose one", name)


@dataclass(frozen=True, slots=True)
class ResourcePolicy:
    """Resource limits. None means unlimited.

    memory:   bytes (cgroup memory limit, swap 0).
    cpus:     CPU quota in cores (cgroup cpu.max / cfs quota).
    pids:     maximum number of tasks in the child's cgroup.
    timeout:  wall-clock seconds.
    cpu_time: CPU seconds (user + system, whole tree).
    fds:      open file descriptors (RLIMIT_NOFILE, and watched by the supervisor).
    output:   bytes of stdout + stderr.
    fsize:    largest file the child may write, bytes (RLIMIT_FSIZE: exact, per file; a write past it
              fails with EFBIG, or kills with SIGXFSZ: a `disk` violation).
    disk:     bytes the child may write into its writable roots in total (sampled from the kernel's
              per-process write accounting; also caps each file, as fsize does). A `disk` violation.
    tmp_size: size of each of the private /tmp and /dev/shm tmpfs, bytes (None: the kernel's default,
              half of RAM). Filling one is a `disk` violation; their pages also count against `memory`.
              Ignored when there is no private /tmp (full-access with filesystem.private_tmp off).
    """

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    timeout: float | None = None
    cpu_time: float | None = None
    fds: int | None = None
    output: int | None = None
    fsize: int | None = None
    disk: int | None = None
    tmp_size: int | None = None

    def __post_init__(self) -> None:
        """Validate and normalise every limit (sizes to int bytes, durations to float seconds).

        Sizes and durations also accept the strings `parse_size` and `parse_duration` do. Raises
        PolicyError naming ``resources.<field>`` on a bad value.
        """
        for name in ("memory", "output", "fsize", "disk", "tmp_size"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, v.parse_size(value, f"resources.{name}"))
        if self.memory is not None:
            _set(self, "memory", v.check_memory(self.memory, "resources.memory"))
        for name in ("timeout", "cpu_time"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, v.parse_duration(value, f"resources.{name}"))
        if self.cpus is not None:
            _set(self, "cpus", v.check_cpus(self.cpus, "resources.cpus"))
        if self.pids is not None:
            _set(self, "pids", v.check_pids(self.pids, "resources.pids"))
        if self.fds is not None:
            _set(self, "fds", v.check_fds(self.fds, "resources.fds"))


@dataclass(frozen=True, slots=True)
class EnvPolicy:
    """Which environment variables reach the child.

    clear:          start from an empty environment instead of the caller's.
    set:            (name, value) pairs set explicitly (always passed, even if the name looks
                    secret).
    passthrough:    names passed from the caller's environment even if they look secret.
    secret_markers: words (case-insensitive) that make a name secret (policies.env.is_secret_name).
    """

    clear: bool = False
    set: tuple[tuple[str, str], ...] = ()
    passthrough: tuple[str, ...] = ()
    secret_markers: tuple[str, ...] = DEFAULT_SECRET_MARKERS

    def __post_init__(self) -> None:
        """Validate names and values; `set` may also be given as a mapping. Raises PolicyError
        naming ``environment.<field>`` on a bad entry or a name set twice.
        """
        _set(self, "clear", v.check_bool(self.clear, "environment.clear"))
        _set(self, "set", _env_pairs(self.set, "environment.set"))
        _set(self, "passthrough", v.check_env_names(self.passthrough, "environment.passthrough"))
        _set(
            self,
            "secret_markers",
            v.check_markers(self.secret_markers, "environment.secret_markers"),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a child is allowed. `profile` names the built-in profile it was derived from.

    workdir: the child's working directory (absolute), None for the caller's current directory.
    best_effort: when a requested layer cannot be applied on this kernel, run anyway and record
                 which layers took effect (a warning is logged). False (the default) fails closed.
    """

    profile: str = "custom"
    workdir: str | None = None
    filesystem: FilesystemPolicy = field(default_factory=FilesystemPolicy)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    syscalls: SyscallPolicy = field(default_factory=SyscallPolicy)
    resources: ResourcePolicy = field(default_factory=ResourcePolicy)
    environment: EnvPolicy = field(default_factory=EnvPolicy)
    best_effort: bool = False

    def __post_init__(self) -> None:
        """Check the profile name, that workdir is absolute (and normalise it), the sections'
        types and best_effort. Raises PolicyError naming the field.
        """
        v.check_name(self.profile, "profile", "a profile name")
        if self.workdir is not None:
            _set(self, "workdir", v.check_path(self.workdir, "workdir"))
        for name, cls in _SECTIONS:
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise PolicyError(name, f"expected a {cls.__name__}", section)
        _set(self, "best_effort", v.check_bool(self.best_effort, "best_effort"))


#: Writes a field of a frozen dataclass; __post_init__ uses it to store a value's canonical form.
_set = object.__setattr__

_SECTIONS: tuple[tuple[str, type], ...] = (
    ("filesystem", FilesystemPolicy),
    ("network", NetworkPolicy),
    ("syscalls", SyscallPolicy),
    ("resources", ResourcePolicy),
    ("environment", EnvPolicy),
)


def _env_pairs(value: object, path: str) -> tuple[tuple[str, str], ...]:
    """`EnvPolicy.set` as (name, value) pairs, from pairs or a mapping.

    Raises PolicyError naming ``path[i]`` on a bad pair or a repeated name.
    """
    items = list(value.items()) if isinstance(value, Mapping) else v.check_list(value, path, "pairs")
    pairs: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise PolicyError(where, "expected a (name, value) pair", item)
        name = v.check_env_name(item[0], where)
        if name in pairs:
            raise PolicyError(where, "this name is set twice", name)
        pairs[name] = v.check_env_value(item[1], where)
    return tuple(pairs.items())
