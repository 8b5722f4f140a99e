"""Seccomp profiles: a default action and rules {names, action, args}, and the OCI runtime spec's JSON format
that Docker and Podman use (docs/seccomp.md, "Profiles"). Pure data: no syscalls; the filter is compiled by
supervisor/sandbox/seccomp.py.

A profile adds to corral's built-in rules, never replaces them: the two are compiled into one filter that
gives the stricter verdict of the two for every call (as two stacked filters would). So a profile can turn
corral's allow-by-default into an allowlist, inject errnos, kill, or log; it cannot let through what the
built-in rules refuse (namespace flags, set-id modes, TIOCSTI, io_uring, foreign ABIs, ...).

Actions: ``allow``, ``errno:<NAME or number>`` (``errno`` alone is EPERM), ``kill_process``, ``log`` (allowed
and reported in the denial reports), ``trace`` (read as ``log``: nothing traces a sandbox). Argument
conditions: ``index`` 0-5, ``op`` one of ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``masked_eq``,
``value`` (and ``mask`` for masked_eq: ``(arg & mask) == value``); several conditions in one rule are ANDed,
several rules for one name ORed.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policies._errors import PolicyError
from policies._files import read_bounded
from policies._validate import check_table

#: Comparison operators, by their corral spelling and the OCI one.
OPS: dict[str, str] = {
    "==": "==",
    "!=": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "masked_eq": "masked_eq",
    "SCMP_CMP_EQ": "==",
    "SCMP_CMP_NE": "!=",
    "SCMP_CMP_LT": "<",
    "SCMP_CMP_LE": "<=",
    "SCMP_CMP_GT": ">",
    "SCMP_CMP_GE": ">=",
    "SCMP_CMP_MASKED_EQ": "masked_eq",
}

#: OCI actions and what they are here. Every kill is a kill of the whole process (the stricter one).
OCI_ACTIONS: dict[str, str] = {
    "SCMP_ACT_ALLOW": "allow",
    "SCMP_ACT_ERRNO": "errno",
    "SCMP_ACT_KILL": "kill_process",
    "SCMP_ACT_KILL_THREAD": "kill_process",
    "SCMP_ACT_KILL_PROCESS": "kill_process",
    "SCMP_ACT_TRAP": "kill_process",
    "SCMP_ACT_LOG": "log",
    "SCMP_ACT_TRACE": "log",
    "SCMP_ACT_NOTIFY": "log",
}

#: OCI architecture names of the ABIs this machine runs natively (the only ones whose rules apply), by
#: machine. corral kills every other ABI (i386, x32) whatever a profile says.
NATIVE_ARCHES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64", "x86_64"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64", "aarch64"),
}

_OCI_KEYS = (
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "archMap",
    "syscalls",
    "flags",
    "listenerPath",
    "listenerMetadata",
)
_OCI_RULE_KEYS = ("names", "name", "action", "errnoRet", "args", "includes", "excludes", "comment")
_OCI_ARG_KEYS = ("index", "value", "valueTwo", "op")


def _errno_of(value: object, path: str) -> int:
    if isinstance(value, bool):
        raise PolicyError(path, "expected an errno name or number", value)
    if isinstance(value, int):
        if not 1 <= value <= 4095:
            raise PolicyError(path, "an errno is between 1 and 4095", value)
        return value
    if isinstance(value, str) and value.isdigit():
        return _errno_of(int(value), path)
    if isinstance(value, str) and isinstance(getattr(_errno, value, None), int) and value.startswith("E"):
        return int(getattr(_errno, value))
    raise PolicyError(path, "expected an errno name (EPERM, ENOSYS, ...) or number", value)


def check_action(value: object, path: str) -> str:
    """An action in canonical form: allow, log, kill_process, or errno:<number>. Raises PolicyError."""
    if not isinstance(value, str):
        raise PolicyError(path, "expected an action: allow, errno:<name>, kill_process, log", value)
    if value in ("allow", "log", "kill_process"):
        return value
    if value == "trace":
        return "log"
    if value in ("kill", "kill_thread"):
        return "kill_process"
    if value == "errno":
        return f"errno:{_errno.EPERM}"
    if value.startswith("errno:"):
        return f"errno:{_errno_of(value.removeprefix('errno:'), path)}"
    raise PolicyError(path, "expected an action: allow, errno:<name>, kill_process, log", value)


@dataclass(frozen=True, slots=True)
class ArgCondition:
    """One argument comparison: `index` (0-5) `op` `value`; for masked_eq, ``(arg & mask) == value``."""

    index: int
    op: str
    value: int
    mask: int = 0

    def check(self, path: str) -> ArgCondition:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index <= 5:
            raise PolicyError(f"{path}.index", "an argument index is 0 to 5", self.index)
        op = OPS.get(self.op) if isinstance(self.op, str) else None
        if op is None:
            raise PolicyError(f"{path}.op", f"expected one of {', '.join(list(OPS)[:7])}", self.op)
        for key in ("value", "mask"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
                raise PolicyError(f"{path}.{key}", "expected an unsigned 64-bit integer", v)
        if op == "masked_eq" and self.value & ~self.mask:
            raise PolicyError(f"{path}.value", "masked_eq: the value has bits outside the mask", self.value)
        return ArgCondition(self.index, op, self.value, self.mask)


@dataclass(frozen=True, slots=True)
class SeccompRule:
    """`names` get `action` (when every one of `args` holds)."""

    names: tuple[str, ...]
    action: str
    args: tuple[ArgCondition, ...] = ()

    def check(self, path: str) -> SeccompRule:
        names = self.names
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise PolicyError(f"{path}.names", "expected a non-empty list of syscall names", names)
        for i, n in enumerate(names):
            if not isinstance(n, str) or not n or not n.replace("_", "").isalnum():
                raise PolicyError(f"{path}.names[{i}]", "expected a syscall name", n)
        action = check_action(self.action, f"{path}.action")
        if len(self.args) > 6:
            raise PolicyError(f"{path}.args", "at most six argument conditions", len(self.args))
        args = tuple(a.check(f"{path}.args[{i}]") for i, a in enumerate(self.args))
        if len({a.index for a in args}) != len(args):
            raise PolicyError(f"{path}.args", "one condition per argument index (libseccomp's rule)")
        return SeccompRule(tuple(dict.fromkeys(names)), action, args)


@dataclass(frozen=True, slots=True)
class SeccompProfile:
    """A seccomp profile: `default` action for syscalls no rule names, and `rules`.

    `source` names the file it came from (messages only; not compared). Validates on construction:
    PolicyError names the rule index and field (``syscalls.profile.rules[3].args[0].op``).
    """

    default: str = "allow"
    rules: tuple[SeccompRule, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", check_action(self.default, "syscalls.profile.default"))
        if isinstance(self.rules, str) or not isinstance(self.rules, Sequence):
            raise PolicyError("syscalls.profile.rules", "expected a list of rules", self.rules)
        checked = []
        for i, r in enumerate(self.rules):
            if not isinstance(r, SeccompRule):
                raise PolicyError(f"syscalls.profile.rules[{i}]", "expected a SeccompRule", r)
            checked.append(r.check(f"syscalls.profile.rules[{i}]"))
        object.__setattr__(self, "rules", tuple(checked))

    def to_oci(self) -> dict[str, object]:
        """This profile in the OCI/Docker JSON format (`seccomp_profile_from_oci` reads it back)."""
        return to_oci(self)


def _oci_action_of(action: str) -> dict[str, object]:
    if action.startswith("errno:"):
        return {"action": "SCMP_ACT_ERRNO", "errnoRet": int(action.removeprefix("errno:"))}
    return {"action": {"allow": "SCMP_ACT_ALLOW", "log": "SCMP_ACT_LOG"}.get(action, "SCMP_ACT_KILL_PROCESS")}


_OCI_OPS = {v: k for k, v in OPS.items() if k.startswith("SCMP_CMP_")}


def to_oci(profile: SeccompProfile) -> dict[str, object]:
    """`profile` in the OCI/Docker JSON format (`seccomp_profile_from_oci` reads it back to an equal
    profile)."""
    default = _oci_action_of(profile.default)
    out: dict[str, object] = {"defaultAction": default["action"]}
    if "errnoRet" in default:
        out["defaultErrnoRet"] = default["errnoRet"]
    out["architectures"] = [NATIVE_ARCHES.get(_machine(), ("SCMP_ARCH_NATIVE",))[0]]
    entries = []
    for rule in profile.rules:
        entry: dict[str, object] = {"names": list(rule.names), **_oci_action_of(rule.action)}
        if rule.args:
            entry["args"] = [
                {"index": c.index, "value": c.mask, "valueTwo": c.value, "op": _OCI_OPS[c.op]}
                if c.op == "masked_eq"
                else {"index": c.index, "value": c.value, "valueTwo": 0, "op": _OCI_OPS[c.op]}
                for c in rule.args
            ]
        entries.append(entry)
    out["syscalls"] = entries
    return out


def _machine() -> str:
    return platform.machine()


def _kernel() -> tuple[int, ...]:
    release = platform.release().split("-")[0]
    return tuple(int(p) for p in release.split(".")[:3] if p.isdigit())


def _applies(entry: Mapping[str, object], path: str) -> bool:
    """Whether an OCI syscalls entry applies to a corral sandbox: no capabilities, this machine's arch."""
    native = NATIVE_ARCHES.get(_machine(), ())
    for key in ("includes", "excludes"):
        cond = entry.get(key, {})
        if not isinstance(cond, Mapping):
            raise PolicyError(f"{path}.{key}", "expected an object (caps, arches, minKernel)", cond)
        bad = sorted(set(cond) - {"caps", "arches", "minKernel"})
        if bad:
            raise PolicyError(f"{path}.{key}.{bad[0]}", "unknown key; expected caps, arches, minKernel")
    inc = entry.get("includes", {})
    exc = entry.get("excludes", {})
    assert isinstance(inc, Mapping)
    assert isinstance(exc, Mapping)
    if inc.get("caps"):
        return False  # granted only with a capability: a sandbox has none
    if inc.get("arches") and not set(inc["arches"]) & set(native):
        return False
    if exc.get("arches") and set(exc["arches"]) & set(native):
        return False
    min_kernel = inc.get("minKernel")
    if min_kernel is not None:
        if not isinstance(min_kernel, str):
            raise PolicyError(f"{path}.includes.minKernel", "expected a version string", min_kernel)
        want = tuple(int(p) for p in min_kernel.split(".") if p.isdigit())
        if _kernel() < want:
            return False
    return True  # excludes.caps: we lack every capability, so an entry excluded for some still applies


def _oci_action(action: object, errno_ret: object, path: str, default_errno: int = _errno.EPERM) -> str:
    kind = OCI_ACTIONS.get(action) if isinstance(action, str) else None
    if kind is None:
        raise PolicyError(path, f"expected one of {', '.join(OCI_ACTIONS)}", action)
    if kind == "errno":
        err = default_errno if errno_ret is None else _errno_of(errno_ret, path.replace("action", "errnoRet"))
        return f"errno:{err}"
    return kind


def seccomp_profile_from_oci(data: object, source: str = "") -> SeccompProfile:
    """A SeccompProfile from the OCI runtime spec's `linux.seccomp` object (Docker's and Podman's profile
    files): defaultAction (+ defaultErrnoRet), architectures (checked: this machine's must be there, if the
    list is given), syscalls [{names, action, errnoRet, args [{index, value, valueTwo, op}], includes,
    excludes}]. Entries are evaluated for corral's case: they apply when they need no capability
    (includes.caps) and name this machine's arch if they name arches. Raises PolicyError naming the entry
    and field (``syscalls[12].args[0].op``)."""
    if not isinstance(data, Mapping):
        raise PolicyError("", "expected a JSON object (the OCI linux.seccomp format)", type(data).__name__)
    bad = sorted(set(data) - set(_OCI_KEYS))
    if bad:
        raise PolicyError(bad[0], f"unknown key; expected one of {', '.join(_OCI_KEYS)}")
    default_errno = _errno_of(data.get("defaultErrnoRet", _errno.EPERM), "defaultErrnoRet")
    default = _oci_action(data.get("defaultAction"), data.get("defaultErrnoRet"), "defaultAction")
    arches = data.get("architectures")
    if arches is not None:
        if isinstance(arches, str) or not isinstance(arches, Sequence):
            raise PolicyError("architectures", "expected a list of SCMP_ARCH_* names", arches)
        native = NATIVE_ARCHES.get(_machine(), ())
        arch_map = data.get("archMap") or []
        mapped = [a for a in arches]
        if isinstance(arch_map, Sequence):
            for m in arch_map:
                if isinstance(m, Mapping) and m.get("architecture") in native:
                    mapped.append(m["architecture"])
        if native and not set(mapped) & set(native):
            raise PolicyError("architectures", f"does not name this machine's ({native[0]})", list(arches))
    entries = data.get("syscalls")
    if entries is None:
        entries = []
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise PolicyError("syscalls", "expected a list of entries", entries)
    rules: list[SeccompRule] = []
    for i, entry in enumerate(entries):
        path = f"syscalls[{i}]"
        entry = check_table(entry, path, _OCI_RULE_KEYS)
        names = entry.get("names") or ([entry["name"]] if isinstance(entry.get("name"), str) else None)
        if not _applies(entry, path):
            continue
        action = _oci_action(entry.get("action"), entry.get("errnoRet"), f"{path}.action", default_errno)
        raw_args = entry.get("args") or []
        if isinstance(raw_args, str) or not isinstance(raw_args, Sequence):
            raise PolicyError(f"{path}.args", "expected a list of conditions", raw_args)
        args = []
        for j, a in enumerate(raw_args):
            apath = f"{path}.args[{j}]"
            a = check_table(a, apath, _OCI_ARG_KEYS)
            op = OPS.get(a.get("op")) if isinstance(a.get("op"), str) else None  # type: ignore[arg-type]
            if op is None or not str(a.get("op")).startswith("SCMP_CMP_"):
                raise PolicyError(
                    f"{apath}.op", "expected SCMP_CMP_EQ, _NE, _LT, _LE, _GT, _GE or _MASKED_EQ", a.get("op")
                )
            value, two = a.get("value", 0), a.get("valueTwo", 0)
            # OCI's masked_eq: value is the mask, valueTwo the datum.
            cond = (
                ArgCondition(a.get("index"), op, two, value)  # type: ignore[arg-type]
                if op == "masked_eq"
                else ArgCondition(a.get("index"), op, value)  # type: ignore[arg-type]
            )
            args.append(cond.check(apath))
        rule = SeccompRule(tuple(names or ()), action, tuple(args))
        rules.append(rule.check(path))
    try:
        return SeccompProfile(default, tuple(rules), source)
    except PolicyError as err:
        raise PolicyError(err.path.removeprefix("syscalls.profile."), err.reason) from None


#: The largest seccomp profile read (Docker's default profile is about 20 KiB).
MAX_PROFILE_FILE = 8 << 20


def load_seccomp_profile(path: str | os.PathLike[str]) -> SeccompProfile:
    """Read an OCI/Docker seccomp profile (JSON) from `path`. Raises PolicyError with the file as its
    source: unreadable, not JSON, or a bad entry (its index and field)."""
    source = os.fspath(path)
    try:
        raw = read_bounded(source, MAX_PROFILE_FILE)  # non-blocking, a regular file only: see _files
    except OSError as err:
        raise PolicyError(
            "", f"cannot read seccomp profile {source!r}: {err.strerror}", source=str(source)
        ) from err
    except ValueError as err:
        raise PolicyError("", f"cannot read seccomp profile {source!r}: {err}", source=str(source)) from err
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise PolicyError("", f"invalid JSON: {err}", source=str(source)) from err
    try:
        return seccomp_profile_from_oci(data, source=str(source))
    except PolicyError as err:
        raise err.with_source(str(source)) from None
