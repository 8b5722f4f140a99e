"""The fail-closed decisions of `compile_policy` for every degraded kernel, from hand-made KernelCaps.

Fake caps are fine here: this is a unit test of the decision logic only (which layer refuses, with which
syscall, errno and hint; what best_effort records as missing and enforced). Whether the probe reports such
caps on a real degraded kernel, and whether the child is really confined by what remains, is tested in
tests/kernel/test_degraded.py (the v2vm guest and an emulating seccomp filter). No privileges needed.
"""

from __future__ import annotations

import errno
import logging
import sys
from dataclasses import replace

import pytest

from policies import Policy, SyscallPolicy, profiles
from supervisor._errors import SandboxSetupError
from supervisor._plan import ALWAYS, CompiledPolicy, compile_policy
from supervisor.sandbox.probe import NAMESPACE_FLAGS, Feature, KernelCaps

WORKDIR = "/srv/repo"
NOBODY = 65534
OTHER_NS = ("pid", "net", "mount", "ipc", "uts", "cgroup")
ALL_LANDLOCK = (
    "landlock_fs",
    "landlock_refer",
    "landlock_truncate",
    "landlock_ioctl_dev",
    "landlock_scope_abstract_unix",
    "landlock_scope_signal",
)
MOUNT_LAYERS = ("readonly_root", "private_tmp", "hidden_run", "minimal_dev")


def kernel(
    *,
    abi: int = 7,
    landlock_errno: int = errno.EOPNOTSUPP,
    seccomp: Feature | None = None,
    user: Feature | None = None,
    others: Feature | None = None,
    uid: int = 0,
) -> KernelCaps:
    """A KernelCaps as the probe would report it; everything available unless said otherwise."""
    ns = {name: Feature(True) for name in NAMESPACE_FLAGS}
    if user is not None:
        ns["user"] = user
    if others is not None:
        ns.update({name: others for name in OTHER_NS})
    return KernelCaps(
        landlock_abi=abi,
        landlock=Feature(True) if abi else Feature(False, landlock_errno, "landlock_create_ruleset"),
        seccomp=seccomp or Feature(True),
        namespaces=ns,
        uid=uid,
        gid=uid,
    )


NO_USERNS = Feature(False, errno.ENOSPC)  # sysctl user.max_user_namespaces=0
# An ordinary user whose unshare(CLONE_NEWUSER) fails can create no other namespace either (the probe then
# tries them without a user namespace: EPERM).
NO_USERNS_OTHERS = Feature(False, errno.EPERM)


def ws(**opts: object) -> Policy:
    return profiles.workspace_write(WORKDIR, **opts)  # type: ignore[arg-type]


def refused(policy: Policy, caps: KernelCaps) -> SandboxSetupError:
    with pytest.raises(SandboxSetupError) as info:
        compile_policy(policy, caps)
    return info.value


def layers(compiled: CompiledPolicy) -> list[str]:
    return [layer for layer, _why in compiled.missing]


# --- the baseline: nothing missing ------------------------------------------------------------------------


@pytest.mark.parametrize("uid", [0, NOBODY])
def test_full_kernel_nothing_missing(uid: int) -> None:
    c = compile_policy(ws(), kernel(uid=uid))
    assert c.missing == ()
    for layer in (
        "user_ns",
        *(f"{n}_ns" for n in OTHER_NS),
        *MOUNT_LAYERS,
        *ALL_LANDLOCK,
        "seccomp",
        *ALWAYS,
    ):
        assert layer in c.enforced, layer
    # A private network namespace makes the port-based TCP guard unnecessary (and it would break loopback).
    assert "landlock_net_tcp" not in c.enforced


# --- no Landlock ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"), [(errno.EOPNOTSUPP, "lsm= lacks landlock"), (errno.ENOSYS, "not built")]
)
@pytest.mark.parametrize("profile", [profiles.workspace_write, profiles.read_only])
def test_no_landlock_refuses(code: int, name: str, profile: object) -> None:
    err = refused(profile(WORKDIR), kernel(abi=0, landlock_errno=code))  # type: ignore[operator]
    assert err.layer == "landlock"
    assert err.operation == "landlock_create_ruleset"
    assert err.errno == code
    assert "lsm=" in err.hint
    assert "CONFIG_SECURITY_LANDLOCK" in err.hint
    assert "best_effort" in err.hint
    assert "landlock" in str(err)


def test_no_landlock_best_effort_records_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="corral"):
        c = compile_policy(ws(best_effort=True), kernel(abi=0))
    assert layers(c) == ["landlock"]
    assert "EOPNOTSUPP" in c.missing[0][1] or "ENOTSUP" in c.missing[0][1]
    assert not [e for e in c.enforced if e.startswith("landlock")]
    assert c.payload["landlock"] is None
    # The other layers are unaffected.
    for layer in ("user_ns", "pid_ns", "net_ns", *MOUNT_LAYERS, "seccomp"):
        assert layer in c.enforced
    assert "landlock" in caplog.text


def test_no_landlock_full_access_needs_none() -> None:
    c = compile_policy(profiles.full_access(WORKDIR), kernel(abi=0))
    assert c.missing == ()


# --- Landlock ABI older than needed -----------------------------------------------------------------------

#: What each old ABI lacks of what the default policy uses (ABI 7 adds only audit-log flags).
UNMET = {
    1: ["landlock_truncate", "landlock_scope"],
    2: ["landlock_truncate", "landlock_scope"],
    3: ["landlock_scope"],
    4: ["landlock_scope"],
    5: ["landlock_scope"],
}


@pytest.mark.parametrize("abi", sorted(UNMET))
def test_old_abi_refuses_naming_what_is_missing(abi: int) -> None:
    err = refused(ws(), kernel(abi=abi))
    assert err.layer == "landlock"
    assert err.operation == f"landlock_create_ruleset(abi={abi})"
    assert f"Landlock ABI {abi}" in err.hint
    assert "ABI 6 (Linux 6.12)" in err.hint
    for feature in UNMET[abi]:
        assert feature in err.hint
    assert "best_effort" in err.hint


@pytest.mark.parametrize("abi", sorted(UNMET))
def test_old_abi_best_effort_records_exactly_the_gaps(abi: int) -> None:
    c = compile_policy(ws(best_effort=True), kernel(abi=abi))
    assert layers(c) == UNMET[abi]
    for _layer, why in c.missing:
        assert f"this kernel has ABI {abi}" in why
    assert "landlock_fs" in c.enforced
    assert ("landlock_refer" in c.enforced) == (abi >= 2)
    assert ("landlock_truncate" in c.enforced) == (abi >= 3)
    assert ("landlock_ioctl_dev" in c.enforced) == (abi >= 5)
    assert not [e for e in c.enforced if e.startswith("landlock_scope")]
    ll = c.payload["landlock"]
    assert isinstance(ll, dict)
    assert ll["abi"] == abi
    assert ll["scoped"] == 0


@pytest.mark.parametrize("abi", [6, 7])
def test_abi_6_and_7_need_nothing_more(abi: int) -> None:
    c = compile_policy(ws(), kernel(abi=abi))
    assert c.missing == ()
    assert set(ALL_LANDLOCK) <= set(c.enforced)


def test_old_abi_without_network_namespace_also_misses_the_tcp_guard() -> None:
    # An ordinary user without user namespaces gets no network namespace: then the Landlock TCP guard is
    # what stands for network "none", and it needs ABI 4.
    caps = kernel(abi=3, user=NO_USERNS, others=NO_USERNS_OTHERS, uid=NOBODY)
    c = compile_policy(ws(best_effort=True), caps)
    assert "landlock_net_tcp" in layers(c)
    assert "net_ns" in layers(c)
    c = compile_policy(ws(best_effort=True), replace(caps, landlock_abi=4))
    assert "landlock_net_tcp" in c.enforced
    assert "landlock_net_tcp" not in layers(c)


# --- user namespaces disabled -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EPERM])
def test_no_userns_unprivileged_refuses(code: int) -> None:
    # ENOSPC: user.max_user_namespaces=0; EPERM: Debian's kernel.unprivileged_userns_clone=0.
    caps = kernel(user=Feature(False, code), others=NO_USERNS_OTHERS, uid=NOBODY)
    err = refused(ws(), caps)
    assert err.layer == "namespaces"
    assert err.operation == "clone(CLONE_NEWUSER)"
    assert err.errno == code
    for word in ("user namespaces", "AppArmor", "best_effort", "max_user_namespaces"):
        assert word in err.hint, word


def test_no_userns_unprivileged_best_effort_keeps_landlock_and_seccomp() -> None:
    caps = kernel(user=NO_USERNS, others=NO_USERNS_OTHERS, uid=NOBODY)
    c = compile_policy(ws(best_effort=True), caps)
    missing = layers(c)
    for name in ("user", *OTHER_NS):
        assert f"{name}_ns" in missing, name
    assert "mounts" in missing
    assert not [e for e in c.enforced if e.endswith("_ns")]
    assert not set(MOUNT_LAYERS) & set(c.enforced)
    # What still confines: Landlock (files, the TCP guard standing in for the network namespace, signal and
    # abstract-socket scoping standing in for the pid/net namespaces) and seccomp.
    for layer in (*ALL_LANDLOCK, "landlock_net_tcp", "seccomp"):
        assert layer in c.enforced, layer
    ns = c.payload["ns"]
    assert isinstance(ns, dict)
    assert ns["flags"] == 0
    assert c.payload["mounts"] is None
    assert c.payload["cgroupns"] is False


def test_no_userns_root_refuses_then_runs_without_only_the_user_ns() -> None:
    caps = kernel(user=NO_USERNS, uid=0)
    err = refused(ws(), caps)
    assert err.layer == "namespaces"
    assert err.operation == "clone(CLONE_NEWUSER)"
    assert err.errno == errno.ENOSPC
    assert "best_effort" in err.hint
    c = compile_policy(ws(best_effort=True), caps)
    assert layers(c) == ["user_ns"]
    # Root needs no user namespace to create the others; the child then runs as real uid 0 without
    # capabilities, still behind the read-only mounts, Landlock and seccomp.
    for layer in (*(f"{n}_ns" for n in OTHER_NS), *MOUNT_LAYERS, *ALL_LANDLOCK, "seccomp", "capabilities"):
        assert layer in c.enforced, layer
    ns = c.payload["ns"]
    assert isinstance(ns, dict)
    assert ns["user"] is False
    assert ns["flags"] & NAMESPACE_FLAGS["user"] == 0
    assert ns["flags"] & NAMESPACE_FLAGS["pid"]


def test_no_userns_the_first_missing_layer_is_named_when_several_are() -> None:
    caps = kernel(
        abi=0, seccomp=Feature(False, errno.ENOSYS), user=NO_USERNS, others=NO_USERNS_OTHERS, uid=1000
    )
    assert refused(ws(), caps).layer == "namespaces"
    assert refused(ws(), kernel(abi=0, seccomp=Feature(False, errno.ENOSYS))).layer == "landlock"


def test_apparmor_restricted_userns_hint_names_apparmor() -> None:
    caps = kernel(others=Feature(False, errno.EPERM), uid=1000)
    err = refused(ws(), caps)
    assert err.layer == "namespaces"
    assert err.errno == errno.EPERM
    assert "AppArmor" in err.hint or "apparmor" in err.hint


# --- no seccomp -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        (errno.ENOSYS, "CONFIG_SECCOMP_FILTER"),
        (errno.EINVAL, "CONFIG_SECCOMP_FILTER"),
        (errno.EPERM, "outer"),
    ],
)
def test_no_seccomp_refuses(code: int, phrase: str) -> None:
    err = refused(ws(), kernel(seccomp=Feature(False, code, "seccomp(SECCOMP_GET_ACTION_AVAIL)")))
    assert err.layer == "seccomp"
    assert err.operation == "seccomp(SECCOMP_GET_ACTION_AVAIL)"
    assert err.errno == code
    assert phrase in err.hint
    assert "best_effort" in err.hint


def test_no_seccomp_best_effort_records_it() -> None:
    c = compile_policy(ws(best_effort=True), kernel(seccomp=Feature(False, errno.ENOSYS)))
    assert layers(c) == ["seccomp"]
    assert "ENOSYS" in c.missing[0][1]
    assert "seccomp" not in c.enforced
    assert c.payload["seccomp"] is None
    for layer in ("user_ns", "pid_ns", *MOUNT_LAYERS, *ALL_LANDLOCK):
        assert layer in c.enforced


def test_no_seccomp_policy_without_filter_needs_none() -> None:
    pol = replace(ws(), syscalls=SyscallPolicy(enabled=False))
    c = compile_policy(pol, kernel(seccomp=Feature(False, errno.ENOSYS)))
    assert c.missing == ()
    assert "seccomp" not in c.enforced


def test_no_libseccomp_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import fails as if not installed
    err = refused(ws(), kernel())
    assert err.layer == "seccomp"
    assert "pyseccomp" in err.operation
    assert "best_effort" in err.hint


def test_no_libseccomp_best_effort_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)
    c = compile_policy(ws(best_effort=True), kernel())
    assert layers(c) == ["seccomp"]
    assert c.missing[0][1] != "available"
    assert "seccomp" in c.missing[0][1]


# --- everything at once -----------------------------------------------------------------------------------


def test_nothing_available_best_effort_runs_with_only_process_hygiene(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caps = kernel(
        abi=0, seccomp=Feature(False, errno.ENOSYS), user=NO_USERNS, others=NO_USERNS_OTHERS, uid=NOBODY
    )
    with caplog.at_level(logging.WARNING, logger="corral"):
        c = compile_policy(ws(best_effort=True), caps)
    assert set(layers(c)) == {f"{n}_ns" for n in ("user", *OTHER_NS)} | {"mounts", "landlock", "seccomp"}
    assert c.enforced == ALWAYS
    for layer in ("landlock", "seccomp", "user_ns", "mounts"):
        assert layer in caplog.text


def test_enforced_lists_each_layer_once() -> None:
    c = compile_policy(ws(), kernel())
    assert sorted({e for e in c.enforced if c.enforced.count(e) > 1}) == []


def test_missing_tcp_guard_is_recorded_without_landlock() -> None:
    caps = kernel(abi=0, user=NO_USERNS, others=NO_USERNS_OTHERS, uid=NOBODY)
    c = compile_policy(profiles.full_access(WORKDIR, network="none", best_effort=True), caps)
    assert "net_ns" in layers(c)
    assert [m for m in layers(c) if m.startswith("landlock")]
