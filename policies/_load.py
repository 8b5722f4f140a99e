"""Policies from TOML files and plain dicts (docs/policy.md describes the format).

Every key is checked here, with its path in the file (``filesystem.write[2]``), before the model
sees it, so an error names what the user wrote; the model's own validation then runs as a backstop.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from policies import _validate as v
from policies import profiles
from policies._errors import PolicyError
from policies._files import named_file, read_bounded, user_file
from policies._model import (
    DEFAULT_SECRET_MARKERS,
    NETLINK_PROTOCOLS,
    NETWORK_MODES,
    SOCKET_FAMILIES,
    NetworkPolicy,
    Policy,
)
from policies._network import check_rules
from policies._seccomp import load_seccomp_profile

_TOP_KEYS = (
    "profile",
    "best_effort",
    "workdir",
    "filesystem",
    "network",
    "syscalls",
    "resources",
    "environment",
)
_FILESYSTEM_KEYS = (
    "read",
    "write",
    "deny",
    "hide_credentials",
    "protected",
    "protect_git",
    "execute",
    "private_tmp",
    "watch",
    "confine",
    "allow_system_write",
)
_NETWORK_KEYS = ("mode", "families", "netlink", "allow", "deny")
_WHOLE = ""  # the error path of problems with the file or document as a whole
_SYSCALL_KEYS = ("enabled", "deny", "allow", "profile")
_ENVIRONMENT_KEYS = ("clear", "set", "passthrough", "secret_markers", "default_secret_markers")


_RESOURCE_CHECKS: dict[str, Callable[[object, str], object]] = {
    "memory": v.parse_size,
    "cpus": v.check_cpus,
    "pids": v.check_pids,
    "timeout": v.parse_duration,
    "cpu_time": v.parse_duration,
    "fds": v.check_fds,
    "output": v.parse_size,
    "fsize": v.parse_size,
    "disk": v.parse_size,
    "tmp_size": v.parse_size,
}

Base = Policy | str | None


def load_policy(
    path: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str] | None = None,
    base: Base = None,
) -> Policy:
    """Read the TOML policy file at `path` and return the validated Policy it describes.

    `workdir`, when given, overrides the file's ``workdir``; a relative ``workdir`` in the file is
    resolved against the file's directory. `base` (a profile name or a Policy) supplies the defaults
    when the file has no ``profile`` key; see `policy_from_dict`. Raises PolicyError with ``source``
    set to the file: path ``""`` if the file cannot be read (the reason names the file and the OS
    error), is not UTF-8, or is not valid TOML (the reason gives line and column); otherwise the
    dotted key path of the bad value.
    """
    try:
        source = os.fspath(path)
    except TypeError:
        raise PolicyError(_WHOLE, "expected the policy file's path", path) from None
    if not isinstance(source, str):
        raise PolicyError(_WHOLE, "expected the policy file's path as a string", path)
    try:
        source = user_file(source)  # `~/ci.toml` is the home's, as a policy's paths are
        raw = _read_policy_file(source)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise PolicyError(_WHOLE, f"cannot read policy file {source!r}: {reason}", source=source) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        reason = f"the file is not UTF-8 text ({err.reason} at byte {err.start})"
        raise PolicyError(_WHOLE, reason, source=source) from err
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(_WHOLE, f"invalid TOML: {err}", source=source) from err
    absolute = source if os.path.isabs(source) else os.path.join(v.cwd(), source)
    return _from_dict(data, source, workdir, base, os.path.dirname(absolute))


#: The largest policy file read (a policy is a few KiB).
MAX_POLICY_FILE = 1 << 20


def _read_policy_file(source: str) -> bytes:
    """The bytes of the policy file `source` (_files.read_bounded: non-blocking, a regular file only, at
    most MAX_POLICY_FILE bytes). Raises OSError, or ValueError naming what the path is instead."""
    return read_bounded(source, MAX_POLICY_FILE)


def policy_from_dict(
    data: object,
    *,
    source: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    base: Base = None,
) -> Policy:
    """Return the validated Policy described by `data`, a dict shaped like the TOML file
    (docs/policy.md).

    Defaults come from, in order: the ``profile`` key of `data`; else `base` (a profile name, or a
    Policy whose values are used as they are); else the model's defaults (profile "custom": read
    everything, write nowhere, no network). Keys in `data` replace those defaults, except
    ``filesystem.write``, which adds to them. The workdir is `workdir` if given, else
    ``data["workdir"]`` (relative: against the current directory), else the base Policy's, else the
    current directory; always made an absolute real path. Relative filesystem paths are resolved
    against it.

    Raises PolicyError naming the dotted key path of the first bad value (unknown keys list the
    valid ones); its ``source`` is `source`.
    """
    return _from_dict(data, source, workdir, base, None)


def _from_dict(
    data: object, source: str | None, workdir: object, base: object, relative_to: str | None
) -> Policy:
    """`policy_from_dict`, with the directory a relative workdir in `data` is resolved against."""
    try:
        return _build(data, workdir, base, relative_to)
    except PolicyError as err:
        if source is not None and err.source is None:
            raise err.with_source(source) from None
        raise


#: `value` as a table with only the given keys (policies._validate.check_table).
_table = v.check_table


def _build(data: object, workdir: object, base: object, relative_to: str | None) -> Policy:
    top = _table(data, "", _TOP_KEYS)

    # The file's workdir is checked even when the argument overrides it: a bad value is still a bug.
    file_wd = v.resolve_workdir(top["workdir"], "workdir", relative_to) if "workdir" in top else None
    if workdir is not None:
        wd = v.resolve_workdir(workdir)
    elif file_wd is not None:
        wd = file_wd
    elif isinstance(base, Policy) and base.workdir is not None:
        wd = base.workdir
    else:
        wd = v.resolve_workdir(None)

    start: Policy
    if "profile" in top:
        start = profiles.get(profiles._check_profile_name(top["profile"]), wd)
    elif base is None:
        # The model's defaults, plus the credential hiding every built-in profile that reads the host has:
        # a file that names no profile (`[filesystem] write = [...]`, even an empty file) must not make
        # ~/.ssh readable without saying so. Dropping it is its own, named choice: hide_credentials = false.
        blank = Policy(workdir=wd)
        start = replace(blank, filesystem=replace(blank.filesystem, deny=profiles.credential_paths()))
    elif isinstance(base, str):
        start = profiles.get(profiles._check_profile_name(base, "base"), wd)
    elif isinstance(base, Policy):
        start = replace(base, workdir=wd)
    else:
        where = "base"
        raise PolicyError(where, "expected a profile name or a Policy", base)

    changes: dict[str, Any] = {}
    if "best_effort" in top:
        changes["best_effort"] = v.check_bool(top["best_effort"], "best_effort")
    if "filesystem" in top:
        changes["filesystem"] = replace(start.filesystem, **_filesystem(top["filesystem"], start, wd))
    if "network" in top:
        changes["network"] = _network(top["network"], start.network)
    if "syscalls" in top:
        changes["syscalls"] = replace(start.syscalls, **_syscalls(top["syscalls"], relative_to))
    if "resources" in top:
        changes["resources"] = replace(start.resources, **_resources(top["resources"]))
    if "environment" in top:
        changes["environment"] = replace(start.environment, **_environment(top["environment"], start))
    return replace(start, **changes)


def _filesystem(value: object, start: Policy, wd: str) -> dict[str, Any]:
    table = _table(value, "filesystem", _FILESYSTEM_KEYS)
    out: dict[str, Any] = {}
    for key in ("read", "execute"):
        if key in table:
            out[key] = v.check_user_paths(table[key], f"filesystem.{key}", wd, parent=False)
    # `write` and `deny` add to the base: one `deny` entry must not silently un-hide the default
    # credential stores. Dropping those is its own, named choice: hide_credentials = false.
    if "write" in table:
        added = v.check_user_paths(table["write"], "filesystem.write", wd, parent=False)
        out["write"] = v.dedupe((*start.filesystem.write, *added))
    deny = start.filesystem.deny
    hide = v.check_bool(table.get("hide_credentials", True), "filesystem.hide_credentials")
    if not hide:
        deny = profiles.without_credentials(deny)
    if "deny" in table:
        deny = v.dedupe((*deny, *v.check_user_paths(table["deny"], "filesystem.deny", wd, parent=False)))
    if deny != start.filesystem.deny:
        out["deny"] = deny
    # `protected` adds to the base too: `protected = [".env"]` must not silently drop the git protection
    # (the read-only .git/hooks and .git/config, and with them the post-run git scan). Dropping it is its
    # own, named choice: protect_git = false.
    protected = start.filesystem.protected
    if not v.check_bool(table.get("protect_git", True), "filesystem.protect_git"):
        protected = tuple(p for p in protected if not (p == ".git" or p.startswith(".git/")))
    if "protected" in table:
        added = v.check_protected_list(table["protected"], "filesystem.protected")
        protected = v.dedupe((*protected, *added))
    if protected != start.filesystem.protected:
        out["protected"] = protected
    for key in ("private_tmp", "confine", "allow_system_write", "watch"):
        if key in table:
            out[key] = v.check_bool(table[key], f"filesystem.{key}")
    return out


def _network(value: object, start: NetworkPolicy) -> NetworkPolicy:
    # `network = "host"` is accepted as a shorthand for `[network] mode = "host"`.
    if isinstance(value, str):
        mode = v.check_choice(value, "network", NETWORK_MODES)
        if mode != "proxy":  # the base's host rules would apply to nothing
            return replace(start, mode="host" if mode == "host" else "none", allow=(), deny=())
        return replace(start, mode="proxy")
    table = _table(value, "network", _NETWORK_KEYS)
    if "mode" not in table and "allow" not in table:  # host rules alone mean the proxy
        where = "network.mode"
        raise PolicyError(where, f"missing; expected one of: {', '.join(NETWORK_MODES)}")
    mode = v.check_choice(table.get("mode", "proxy"), "network.mode", NETWORK_MODES)
    families = table.get("families", start.families)
    netlink = table.get("netlink", start.netlink)
    # The base's rules stay while the mode stays "proxy" (a file that only adds `families` keeps them).
    keep = mode == "proxy" and start.mode == "proxy"
    allow = check_rules(table.get("allow", start.allow if keep else ()), "network.allow")
    deny = check_rules(table.get("deny", start.deny if keep else ()), "network.deny")
    for key, rules in (("allow", allow), ("deny", deny)):
        if rules and mode != "proxy":
            where = f"network.{key}"
            raise PolicyError(where, f'only mode = "proxy" applies host rules; the mode is {mode!r}')
    return NetworkPolicy(
        mode="host" if mode == "host" else "proxy" if mode == "proxy" else "none",
        families=v.check_names_in(families, "network.families", SOCKET_FAMILIES),
        netlink=v.check_names_in(netlink, "network.netlink", NETLINK_PROTOCOLS),
        allow=allow,
        deny=deny,
    )


def _syscalls(value: object, relative_to: str | None = None) -> dict[str, Any]:
    table = _table(value, "syscalls", _SYSCALL_KEYS)
    out: dict[str, Any] = {}
    if "profile" in table:
        # An OCI/Docker seccomp profile (JSON), relative to the policy file (docs/seccomp.md, "Profiles").
        file = table["profile"]
        if not isinstance(file, str) or not file:
            where = "syscalls.profile"
            raise PolicyError(where, "expected the path of a seccomp profile (JSON)", file)
        try:
            file = named_file(file, relative_to)
        except ValueError as err:
            where = "syscalls.profile"
            raise PolicyError(where, str(err), file) from None
        try:
            out["profile"] = load_seccomp_profile(file)
        except PolicyError as err:
            where = f"syscalls.profile.{err.path}" if err.path else "syscalls.profile"
            raise PolicyError(where, err.reason) from None
    if "enabled" in table:
        out["enabled"] = v.check_bool(table["enabled"], "syscalls.enabled")
    for key in ("deny", "allow"):
        if key in table:
            out[key] = v.check_syscalls(table[key], f"syscalls.{key}")
    return out


def _resources(value: object) -> dict[str, Any]:
    table = _table(value, "resources", tuple(_RESOURCE_CHECKS))
    out: dict[str, Any] = {}
    for key, item in table.items():
        out[key] = None if v.is_unlimited(item) else _RESOURCE_CHECKS[key](item, f"resources.{key}")
    return out


def _environment(value: object, start: Policy) -> dict[str, Any]:
    table = _table(value, "environment", _ENVIRONMENT_KEYS)
    out: dict[str, Any] = {}
    if "clear" in table:
        out["clear"] = v.check_bool(table["clear"], "environment.clear")
    if "set" in table:
        settings = table["set"]
        if not isinstance(settings, Mapping):
            where = "environment.set"
            raise PolicyError(where, 'expected a table of NAME = "value"', settings)
        pairs: list[tuple[str, str]] = []
        for name, text in settings.items():
            where = f"environment.set.{name}" if isinstance(name, str) else "environment.set"
            pairs.append((v.check_env_name(name, where), v.check_env_value(text, where)))
        out["set"] = tuple(pairs)
    if "passthrough" in table:
        out["passthrough"] = v.check_env_names(table["passthrough"], "environment.passthrough")
    # `secret_markers` adds to the base's: `secret_markers = ["MYCORP"]` must not silently let DB_PASSWORD
    # through. Dropping the default markers is its own, named choice: default_secret_markers = false.
    markers = start.environment.secret_markers
    keep = v.check_bool(table.get("default_secret_markers", True), "environment.default_secret_markers")
    if not keep:
        markers = tuple(m for m in markers if m not in DEFAULT_SECRET_MARKERS)
    if "secret_markers" in table:
        added = v.check_markers(table["secret_markers"], "environment.secret_markers")
        markers = v.dedupe((*markers, *added))
    if markers != start.environment.secret_markers:
        out["secret_markers"] = markers
    return out
