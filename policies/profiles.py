"""The built-in profiles: read-only, workspace-write, full-access.

Each profile function returns a validated, frozen `Policy`; keyword options adjust it (the same
options the CLI has, see `Options`). `override` applies the same options to any existing policy, for
example one loaded from a file and then adjusted on the command line.

read-only:        read the whole filesystem, write nowhere (the sandbox adds a private /tmp,
                  /dev/shm and /dev/null), network "none".
workspace-write:  read-only, plus write the workdir and each `allow_write` path; `protected` paths
                  inside writable roots (.git/hooks, .git/config) stay read-only. Network "none".
full-access:      no filesystem confinement, network "host"; resource limits still apply.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypedDict, Unpack

from policies import _validate as v
from policies._errors import PolicyError
from policies._model import (
    NETWORK_MODES,
    EnvPolicy,
    FilesystemPolicy,
    NetworkMode,
    NetworkPolicy,
    Policy,
    ResourcePolicy,
)
from policies._network import check_rules

__all__ = [
    "NAMES",
    "Options",
    "credential_paths",
    "full_access",
    "get",
    "override",
    "read_only",
    "without_credentials",
    "workspace_write",
]

#: The built-in profile names, as `get` and the CLI's --profile take them.
NAMES: tuple[str, ...] = ("read-only", "workspace-write", "full-access")

StrPath = str | os.PathLike[str]


class Options(TypedDict, total=False):
    """Keyword options accepted by every profile function, `get` and `override`.

    An option left out, or given as None, keeps the profile's value. Relative paths are resolved
    against the policy's workdir. Sizes take ints or strings like "512M"; durations numbers or
    strings like "90s"; the resource options also take "unlimited" to remove a limit.
    """

    allow_write: Iterable[StrPath] | None  # added to filesystem.write
    allow_read: Iterable[StrPath] | None  # added to filesystem.read
    deny: Iterable[StrPath] | None  # added to filesystem.deny
    execute: Iterable[StrPath] | None  # replaces filesystem.execute
    protected: Iterable[str] | None  # replaces filesystem.protected
    network: NetworkMode | None  # network.mode
    network_allow: Iterable[str] | None  # added to network.allow; implies network "proxy"
    network_deny: Iterable[str] | None  # added to network.deny; implies network "proxy"
    memory: int | str | None  # resources.memory
    cpus: float | str | None  # resources.cpus
    pids: int | str | None  # resources.pids
    timeout: float | str | None  # resources.timeout
    cpu_time: float | str | None  # resources.cpu_time
    max_fds: int | str | None  # resources.fds
    max_output: int | str | None  # resources.output
    fsize: int | str | None  # resources.fsize
    disk: int | str | None  # resources.disk
    tmp_size: int | str | None  # resources.tmp_size
    env: Iterable[str] | None  # "NAME" -> environment.passthrough, "NAME=VALUE" -> environment.set
    clear_env: bool | None  # environment.clear
    best_effort: bool | None  # best_effort
    allow_system_write: bool | None  # filesystem.allow_system_write
    hide_credentials: bool | None  # False: drop credential_paths() from filesystem.deny


_OPTION_NAMES: tuple[str, ...] = tuple(Options.__annotations__)


def read_only(workdir: StrPath | None = None, **opts: Unpack[Options]) -> Policy:
    """Return the read-only profile: read everything, write nowhere, no network.

    `workdir` (default: the current directory) is resolved to an absolute real path. Raises
    PolicyError naming the option (``memory``, ``allow_write[1]``, ...) on a bad one, or on an
    unknown option.
    """
    return _make("read-only", workdir, opts)


def workspace_write(workdir: StrPath | None = None, **opts: Unpack[Options]) -> Policy:
    """Return the workspace-write profile: read everything, write `workdir` and `allow_write`, no
    network.

    `workdir` (default: the current directory) is resolved to an absolute real path and becomes the
    first writable root. Raises PolicyError naming the option on a bad or unknown one.
    """
    return _make("workspace-write", workdir, opts)


def full_access(workdir: StrPath | None = None, **opts: Unpack[Options]) -> Policy:
    """Return the full-access profile: no filesystem confinement, the host's network; limits still
    apply.

    Raises PolicyError naming the option on a bad or unknown one.
    """
    return _make("full-access", workdir, opts)


def get(name: str, workdir: StrPath | None = None, **opts: Unpack[Options]) -> Policy:
    """Return the built-in profile called `name` ("read-only", "workspace-write" or "full-access").

    Raises PolicyError("profile") listing the valid names if there is no such profile, and as the
    profile functions do on a bad option.
    """
    return _make(_check_profile_name(name), workdir, opts)


#: The TOML loader's seam (policies/_load.py): it checks a profile name under the key it read it from
#: ("profile", "base"), which `get` cannot know.
SEAM = frozenset({"_check_profile_name"})


def _check_profile_name(name: object, path: str = "profile") -> str:
    """Return `name` if it names a built-in profile; else raise PolicyError(path) listing them."""
    if not isinstance(name, str) or name not in NAMES:
        raise PolicyError(path, f"unknown profile; valid profiles: {', '.join(NAMES)}", name)
    return name


def override(policy: Policy, **opts: Unpack[Options]) -> Policy:
    """Return `policy` adjusted by the keyword options (see `Options`), which take precedence.

    List options add to the policy's lists (`allow_write`, `allow_read`, `deny`, `env`), except
    `execute` and `protected`, which replace them. Relative paths resolve against `policy.workdir`,
    else the current directory. Raises PolicyError naming the option (``max_fds``, ``env[2]``, ...)
    on a bad value, or on an unknown option (listing the valid ones).
    """
    if not isinstance(policy, Policy):
        where = "policy"
        raise PolicyError(where, "expected a Policy", policy)
    for key in opts:
        if key not in _OPTION_NAMES:
            raise PolicyError(key, f"unknown option; valid options: {', '.join(_OPTION_NAMES)}", key)
    given: dict[str, object] = {k: val for k, val in opts.items() if val is not None}
    if not given:
        return policy
    base_dir = policy.workdir if policy.workdir is not None else v.cwd()

    fs = policy.filesystem
    fs_changes: dict[str, Any] = {}
    if "hide_credentials" in given and not v.check_bool(given["hide_credentials"], "hide_credentials"):
        fs_changes["deny"] = without_credentials(fs.deny)
    for option, field_name in (("allow_write", "write"), ("allow_read", "read"), ("deny", "deny")):
        if option in given:
            added = v.check_user_paths(given[option], option, base_dir)
            fs_changes[field_name] = v.dedupe((*fs_changes.get(field_name, getattr(fs, field_name)), *added))
    if "execute" in given:
        fs_changes["execute"] = v.check_user_paths(given["execute"], "execute", base_dir)
    if "allow_system_write" in given:
        fs_changes["allow_system_write"] = v.check_bool(given["allow_system_write"], "allow_system_write")
    if "protected" in given:
        fs_changes["protected"] = v.check_protected_list(given["protected"], "protected")

    network = _network_options(policy.network, given)

    res_changes: dict[str, Any] = {}
    for option, field_name, check in _RESOURCE_OPTIONS:
        if option in given:
            value = given[option]
            res_changes[field_name] = None if v.is_unlimited(value) else check(value, option)

    env = policy.environment
    env_changes: dict[str, Any] = {}
    if "env" in given:
        passthrough, settings = _parse_env_options(given["env"], "env")
        env_changes["passthrough"] = v.dedupe((*env.passthrough, *passthrough))
        env_changes["set"] = tuple({**dict(env.set), **settings}.items())
    if "clear_env" in given:
        env_changes["clear"] = v.check_bool(given["clear_env"], "clear_env")

    best_effort = policy.best_effort
    if "best_effort" in given:
        best_effort = v.check_bool(given["best_effort"], "best_effort")

    return replace(
        policy,
        filesystem=replace(fs, **fs_changes),
        network=network,
        resources=replace(policy.resources, **res_changes),
        environment=replace(env, **env_changes),
        best_effort=best_effort,
    )


def _parse_env_options(value: object, path: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split ``--env`` style entries into passthrough names ("NAME") and settings ("NAME=VALUE").

    A later setting of the same name wins. Raises PolicyError naming ``path[i]`` on a bad entry.
    """
    passthrough: list[str] = []
    settings: dict[str, str] = {}
    for i, item in enumerate(v.check_list(value, path, "NAME or NAME=VALUE strings")):
        where = f"{path}[{i}]"
        if not isinstance(item, str):
            raise PolicyError(where, "expected a 'NAME' or 'NAME=VALUE' string", item)
        name, sep, text = item.partition("=")
        try:
            v.check_env_name(name, where)
            if sep:
                v.check_env_value(text, where)
        except PolicyError as err:  # show the whole entry, not just the part that is wrong
            raise PolicyError(where, err.reason, item) from None
        if sep:
            settings[name] = text
        else:
            passthrough.append(name)
    return tuple(passthrough), settings


def _network_mode(value: object, path: str) -> NetworkMode:
    mode = v.check_choice(value, path, NETWORK_MODES)
    return "host" if mode == "host" else "proxy" if mode == "proxy" else "none"


def _network_options(network: NetworkPolicy, given: dict[str, object]) -> NetworkPolicy:
    """`network` adjusted by the `network`, `network_allow` and `network_deny` options. Host rules
    imply mode "proxy" unless `network` names another mode, which is then a PolicyError; a mode other
    than "proxy" drops the policy's own rules. Raises PolicyError naming the option."""
    rules = {
        name: check_rules(_as_list(given[option]), option)
        for option, name in (("network_allow", "allow"), ("network_deny", "deny"))
        if option in given
    }
    if "network" in given:
        mode = _network_mode(given["network"], "network")
    elif rules:
        mode = "proxy"
    else:
        return network
    for name, added in rules.items():
        if added and mode != "proxy":
            where = f"network_{name}"
            raise PolicyError(where, f'host rules need network "proxy"; network is {mode!r}', list(added))
    if mode != "proxy":
        return replace(network, mode=mode, allow=(), deny=())
    base = network if network.mode == "proxy" else replace(network, allow=(), deny=())
    return replace(
        base,
        mode=mode,
        allow=v.dedupe((*base.allow, *rules.get("allow", ()))),
        deny=v.dedupe((*base.deny, *rules.get("deny", ()))),
    )


def _as_list(value: object) -> object:
    """An iterable option (a generator, a set) as a list for the checks; anything else as it is."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return value
    return list(value)


#: (option, ResourcePolicy field, check) for every resource option.
_RESOURCE_OPTIONS: tuple[tuple[str, str, Callable[[object, str], object]], ...] = (
    ("memory", "memory", v.parse_size),
    ("cpus", "cpus", v.check_cpus),
    ("pids", "pids", v.check_pids),
    ("timeout", "timeout", v.parse_duration),
    ("cpu_time", "cpu_time", v.parse_duration),
    ("max_fds", "fds", v.check_fds),
    ("max_output", "output", v.parse_size),
    ("fsize", "fsize", v.parse_size),
    ("disk", "disk", v.parse_size),
    ("tmp_size", "tmp_size", v.parse_size),
)


#: System files that hold password hashes, sudo rules and host keys.
_SYSTEM_SECRETS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_dsa_key",
    # Old password hashes (pam_pwhistory), Debian's daily copies of the shadow files, the host's Kerberos
    # key, saved Wi-Fi and VPN passwords, TLS keys of certbot and RHEL, a Kubernetes node's cluster keys:
    # root-only files that a root caller's sandbox, running as root in a root-owned workdir, can read.
    "/etc/security/opasswd",
    "/var/backups/shadow.bak",
    "/var/backups/gshadow.bak",
    "/etc/krb5.keytab",
    "/etc/NetworkManager/system-connections",
    "/etc/letsencrypt/archive",
    "/etc/pki/tls/private",
    "/etc/kubernetes/pki",
)

#: Per-user credential stores and agent sockets, relative to a home directory.
_HOME_SECRETS: tuple[str, ...] = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".config/gcloud",
    ".config/gh",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    # More registries', databases' and tools' stored tokens and passwords.
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".vault-token",
    ".my.cnf",
    ".s3cfg",
    ".config/hub",
    ".config/rclone",
    ".terraform.d/credentials.tfrc.json",
    ".local/share/keyrings",
    ".password-store",
)


def credential_paths(home: str | None = None) -> tuple[str, ...]:
    """The paths the read-only and workspace-write profiles hide by default: system password hashes, sudo
    rules and host keys, and the usual credential stores and agent sockets (ssh, gpg, cloud CLIs, docker,
    package registries) in root's home and in `home` (default: the caller's). They read the rest of the
    filesystem, so these are the secrets an agent's command must not see. A path that does not exist makes
    no mount and, while the nearest directory above it holds its ctime, no lstat of its own either (the
    pre-forked sandboxes' fingerprint and recheck stat that directory instead: supervisor/sandbox/_absent.py);
    each one that exists costs a mount and a stat per fingerprint and recheck. A policy
    file's `filesystem.deny` adds to them; ``filesystem.hide_credentials = false`` (the
    `hide_credentials=False` option) drops them.

    The caller's home is both the one $HOME names and the password database's for the effective uid: a
    tool or agent runner that sets HOME to a directory of its own (`HOME=$(mktemp -d)`, a CI job's or a
    harness's workspace) left the account's real `~/.ssh` and cloud credentials unhidden and readable."""
    homes = ["/root", os.path.expanduser("~") if home is None else home]
    if home is None:
        homes.append(_account_home())
    paths = list(_SYSTEM_SECRETS)
    for h in dict.fromkeys(homes):
        if h and os.path.isabs(h) and h != "/":
            paths += [os.path.join(h, rel) for rel in _HOME_SECRETS]
    return tuple(paths)


def _account_home() -> str:
    """The effective uid's home directory in the password database, normalised; "" when there is none."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except (KeyError, OSError):
        return ""
    return os.path.normpath(home) if home else ""


def without_credentials(deny: Iterable[str]) -> tuple[str, ...]:
    """`deny` without the default credential paths (`credential_paths()`): what
    ``filesystem.hide_credentials = false`` (the `hide_credentials=False` option) leaves."""
    defaults = set(credential_paths())
    return tuple(p for p in deny if p not in defaults)


def _base(name: str, workdir: str) -> Policy:
    """Return profile `name` with no options, for an already resolved absolute `workdir`."""
    if name == "full-access":
        return Policy(
            profile=name,
            workdir=workdir,
            filesystem=FilesystemPolicy(confine=False),
            network=NetworkPolicy(mode="host"),
        )
    write = (workdir,) if name == "workspace-write" else ()
    return Policy(
        profile=name,
        workdir=workdir,
        filesystem=FilesystemPolicy(read=("/",), write=write, deny=credential_paths()),
        network=NetworkPolicy(mode="none"),
        resources=ResourcePolicy(),
        environment=EnvPolicy(),
    )


def _make(name: str, workdir: object, opts: Options) -> Policy:
    return override(_base(name, v.resolve_workdir(workdir)), **opts)
