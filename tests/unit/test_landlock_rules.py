"""Landlock rule compilation per ABI, with hand-made KernelCaps. No privileges, no claims about this
kernel: what `emit` plans is checked as data (tests/kernel/test_landlock_module.py runs it for real)."""

from __future__ import annotations

import errno
import marshal
import sys
from pathlib import Path

import pytest

from policies import FilesystemPolicy, NetworkPolicy, Policy
from policies._validate import resolve_trusted
from supervisor._errors import SandboxSetupError
from supervisor.sandbox import _cinit
from supervisor.sandbox import landlock as ll
from supervisor.sandbox._ops import Op, Plan, pick_hint
from supervisor.sandbox.probe import Feature, KernelCaps

ALL_ABIS = range(1, 8)
DEVICE_NODE_RIGHTS = ll.ACCESS_FS_MAKE_CHAR | ll.ACCESS_FS_MAKE_BLOCK


def caps(abi: int) -> KernelCaps:
    if abi == 0:
        return KernelCaps(
            landlock_abi=0, landlock=Feature(False, errno.EOPNOTSUPP, "landlock_create_ruleset")
        )
    return KernelCaps(landlock_abi=abi, landlock=Feature(True))


def policy(
    *,
    read: tuple[str, ...] = ("/",),
    write: tuple[str, ...] = ("/srv/repo",),
    execute: tuple[str, ...] | None = None,
    confine: bool = True,
    network: str = "none",
    best_effort: bool = False,
) -> Policy:
    return Policy(
        filesystem=FilesystemPolicy(confine=confine, read=read, write=write, execute=execute),
        network=NetworkPolicy(mode=network),  # type: ignore[arg-type]
        best_effort=best_effort,
    )


def rules_of(prepared: dict[str, object]) -> dict[str, int]:
    rules = prepared["rules"]
    assert isinstance(rules, list)
    return dict(rules)


# --- constants ------------------------------------------------------------------------------------


def test_uapi_bits() -> None:
    assert ll.ACCESS_FS_EXECUTE == 1
    assert ll.ACCESS_FS_MAKE_SYM == 1 << 12
    assert ll.ACCESS_FS_REFER == 1 << 13
    assert ll.ACCESS_FS_TRUNCATE == 1 << 14
    assert ll.ACCESS_FS_IOCTL_DEV == 1 << 15
    assert (ll.ACCESS_NET_BIND_TCP, ll.ACCESS_NET_CONNECT_TCP) == (1, 2)
    assert (ll.SCOPE_ABSTRACT_UNIX_SOCKET, ll.SCOPE_SIGNAL) == (1, 2)
    assert (ll.LANDLOCK_RULE_PATH_BENEATH, ll.LANDLOCK_RULE_NET_PORT) == (1, 2)


@pytest.mark.parametrize(
    ("abi", "mask"),
    [
        (0, 0),
        (1, 0x1FFF),
        (2, 0x3FFF),
        (3, 0x7FFF),
        (4, 0x7FFF),
        (5, 0xFFFF),
        (6, 0xFFFF),
        (7, 0xFFFF),
    ],
)
def test_fs_access_for_abi(abi: int, mask: int) -> None:
    assert ll.fs_access_for_abi(abi) == mask


def test_file_rights_exclude_directory_rights() -> None:
    assert ll.ACCESS_FILE & (ll.ACCESS_FS_READ_DIR | ll.ACCESS_FS_MAKE_REG | ll.ACCESS_FS_REMOVE_FILE) == 0
    assert ll.ACCESS_FILE & ll.ACCESS_FS_READ_FILE


def test_write_never_grants_device_nodes() -> None:
    assert ll.ACCESS_WRITE & DEVICE_NODE_RIGHTS == 0


# --- prepare: when Landlock is used at all --------------------------------------------------------


def test_unconfined_host_network_needs_nothing_even_without_landlock() -> None:
    assert ll.prepare(policy(confine=False, network="host"), caps(0), private_network=False) is None


def test_unconfined_with_private_network_needs_nothing() -> None:
    assert ll.prepare(policy(confine=False), caps(7), private_network=True) is None


def test_unconfined_without_private_network_gets_tcp_guard_only() -> None:
    prepared = ll.prepare(policy(confine=False), caps(7), private_network=False)
    assert prepared is not None
    assert prepared["handled_fs"] == 0
    assert prepared["rules"] == []
    assert prepared["handled_net"] == ll.ACCESS_NET_BIND_TCP | ll.ACCESS_NET_CONNECT_TCP
    assert prepared["net_rules"] == []
    assert prepared["scoped"] == ll.SCOPE_ABSTRACT_UNIX_SOCKET | ll.SCOPE_SIGNAL
    assert "landlock_fs" not in prepared["enforced"]  # type: ignore[operator]
    assert "landlock_net_tcp" in prepared["enforced"]  # type: ignore[operator]


def test_fail_closed_without_landlock() -> None:
    with pytest.raises(SandboxSetupError) as info:
        ll.prepare(policy(), caps(0), private_network=True)
    err = info.value
    assert err.layer == "landlock"
    assert err.operation == "landlock_create_ruleset"
    assert err.errno == errno.EOPNOTSUPP
    assert "lsm=" in err.hint
    assert "best_effort" in err.hint
    assert "Operation not supported" in str(err)


def test_best_effort_without_landlock_returns_none() -> None:
    assert ll.prepare(policy(best_effort=True), caps(0), private_network=True) is None


# --- prepare: per ABI -----------------------------------------------------------------------------


@pytest.mark.parametrize("abi", ALL_ABIS)
def test_handled_masks_per_abi(abi: int) -> None:
    prepared = ll.prepare(policy(best_effort=True), caps(abi), private_network=False)
    assert prepared is not None
    assert prepared["abi"] == abi
    assert prepared["handled_fs"] == ll.fs_access_for_abi(abi)
    assert prepared["handled_net"] == (3 if abi >= 4 else 0)
    assert prepared["scoped"] == (3 if abi >= 6 else 0)


@pytest.mark.parametrize("abi", ALL_ABIS)
def test_rules_stay_within_handled_rights(abi: int) -> None:
    prepared = ll.prepare(policy(best_effort=True), caps(abi), private_network=True)
    assert prepared is not None
    handled = prepared["handled_fs"]
    assert isinstance(handled, int)
    for path, access in rules_of(prepared).items():
        assert access, path
        assert access & ~handled == 0, path
        assert access & DEVICE_NODE_RIGHTS == 0, path


@pytest.mark.parametrize("abi", ALL_ABIS)
def test_best_effort_records_what_the_abi_lacks(abi: int) -> None:
    prepared = ll.prepare(policy(best_effort=True), caps(abi), private_network=False)
    assert prepared is not None
    missing = {name: reason for name, reason in prepared["missing"]}  # type: ignore[attr-defined]
    enforced = set(prepared["enforced"])  # type: ignore[call-overload]
    expect_missing = set()
    if abi < 3:
        expect_missing.add("landlock_truncate")
    if abi < 4:
        expect_missing.add("landlock_net_tcp")
    if abi < 6:
        expect_missing.add("landlock_scope")
    assert set(missing) == expect_missing
    assert not expect_missing & enforced
    assert "landlock_fs" in enforced
    assert ("landlock_ioctl_dev" in enforced) == (abi >= 5)
    assert ("landlock_scope_signal" in enforced) == (abi >= 6)
    for reason in missing.values():
        assert f"this kernel has ABI {abi}" in reason


def test_missing_reason_names_abi_and_kernel() -> None:
    prepared = ll.prepare(policy(best_effort=True), caps(2), private_network=True)
    assert prepared is not None
    assert [
        "landlock_truncate",
        "needs Landlock ABI 3 (Linux 6.2); this kernel has ABI 2",
    ] in prepared["missing"]  # type: ignore[operator]


@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5])
def test_old_abi_fails_closed_naming_the_needed_abi(abi: int) -> None:
    with pytest.raises(SandboxSetupError) as info:
        ll.prepare(policy(), caps(abi), private_network=False)
    err = info.value
    assert err.layer == "landlock"
    assert err.operation.startswith("landlock_create_ruleset")
    assert "ABI 6 (Linux 6.12)" in err.hint
    assert "landlock_scope" in err.hint
    assert ("landlock_truncate" in err.hint) == (abi < 3)
    assert ("landlock_net_tcp" in err.hint) == (abi < 4)
    assert "best_effort" in err.hint


@pytest.mark.parametrize("abi", [6, 7])
def test_recent_abi_needs_nothing_more(abi: int) -> None:
    prepared = ll.prepare(policy(), caps(abi), private_network=False)
    assert prepared is not None
    assert prepared["missing"] == []


def test_newer_kernel_is_driven_as_the_newest_known_abi() -> None:
    prepared = ll.prepare(policy(), caps(ll.KNOWN_ABI + 3), private_network=True)
    assert prepared is not None
    assert prepared["abi"] == ll.KNOWN_ABI
    assert prepared["handled_fs"] == ll.fs_access_for_abi(ll.KNOWN_ABI)


# --- prepare: the network guard -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "private_network", "guard"),
    [("none", False, True), ("none", True, False), ("host", False, False), ("host", True, False)],
)
def test_tcp_guard_only_without_private_network(network: str, private_network: bool, guard: bool) -> None:
    prepared = ll.prepare(policy(network=network), caps(7), private_network=private_network)
    assert prepared is not None
    assert prepared["handled_net"] == (3 if guard else 0)
    assert prepared["net_rules"] == []
    assert ("landlock_net_tcp" in prepared["enforced"]) == guard  # type: ignore[operator]


# --- prepare: the rules ---------------------------------------------------------------------------


def test_read_write_and_always_rules_at_abi_7() -> None:
    prepared = ll.prepare(policy(), caps(7), private_network=True)
    assert prepared is not None
    rules = rules_of(prepared)
    read = ll.ACCESS_READ | ll.ACCESS_FS_EXECUTE
    write = read | ll.ACCESS_WRITE
    assert rules["/"] == read
    assert rules["/srv/repo"] == write
    assert rules["/tmp"] == write
    assert rules["/dev/shm"] == write
    for dev in ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty"):
        assert rules[dev] == ll.ACCESS_FS_READ_FILE | ll.ACCESS_FS_WRITE_FILE | ll.ACCESS_FS_TRUNCATE
    assert rules["/dev/urandom"] == ll.ACCESS_FS_READ_FILE
    assert rules["/dev"] == ll.ACCESS_FS_IOCTL_DEV
    assert rules["/proc"] == ll.ACCESS_READ
    # nothing outside the write roots may be truncated, refer-moved, or get device ioctls
    for path in ("/", "/proc"):
        assert rules[path] & (ll.ACCESS_FS_TRUNCATE | ll.ACCESS_FS_REFER | ll.ACCESS_FS_IOCTL_DEV) == 0
    assert ll.ACCESS_FS_REFER & rules["/srv/repo"]


def test_old_abi_drops_rights_it_does_not_know() -> None:
    prepared = ll.prepare(policy(best_effort=True), caps(2), private_network=True)
    assert prepared is not None
    rules = rules_of(prepared)
    assert "/dev" not in rules  # IOCTL_DEV only: nothing left at ABI 2
    assert rules["/srv/repo"] & ll.ACCESS_FS_TRUNCATE == 0
    assert rules["/srv/repo"] & ll.ACCESS_FS_REFER
    assert rules["/dev/null"] == ll.ACCESS_FS_READ_FILE | ll.ACCESS_FS_WRITE_FILE


def test_execute_restriction() -> None:
    prepared = ll.prepare(policy(execute=("/usr", "/bin")), caps(7), private_network=True)
    assert prepared is not None
    rules = rules_of(prepared)
    assert rules["/usr"] == ll.ACCESS_FS_EXECUTE
    # /bin -> usr/bin on a merged-/usr system: a link in "/", which no sandbox can write, resolved once.
    assert rules[resolve_trusted("/bin")] == ll.ACCESS_FS_EXECUTE
    for path in ("/", "/srv/repo", "/tmp", "/dev/shm"):
        assert rules[path] & ll.ACCESS_FS_EXECUTE == 0, path
    assert rules["/srv/repo"] & ll.ACCESS_FS_WRITE_FILE
    assert "landlock_execute" in prepared["enforced"]  # type: ignore[operator]


def test_execute_path_that_is_also_a_root_merges() -> None:
    prepared = ll.prepare(
        policy(read=("/usr",), write=("/srv/repo",), execute=("/usr",)),
        caps(7),
        private_network=True,
    )
    assert prepared is not None
    assert rules_of(prepared)["/usr"] == ll.ACCESS_READ | ll.ACCESS_FS_EXECUTE


def test_paths_are_normalised_and_merged() -> None:
    prepared = ll.prepare(
        policy(read=("/usr/", "//etc"), write=("/srv/repo/./", "/srv/repo")),
        caps(7),
        private_network=True,
    )
    assert prepared is not None
    rules = rules_of(prepared)
    assert {"/usr", "/etc", "/srv/repo"} <= set(rules)
    assert [p for p in rules if p.startswith("/srv")] == ["/srv/repo"]


def test_relative_path_is_rejected_even_if_validation_was_bypassed() -> None:
    pol = policy()
    object.__setattr__(pol.filesystem, "write", ("repo",))  # policies validate; this is the second net
    with pytest.raises(SandboxSetupError) as info:
        ll.prepare(pol, caps(7), private_network=True)
    assert info.value.layer == "landlock"
    assert info.value.path == "repo"


def test_prepared_is_marshal_safe() -> None:
    prepared = ll.prepare(policy(execute=("/usr",)), caps(7), private_network=False)
    assert marshal.loads(marshal.dumps(prepared)) == prepared


# --- emit: the ops the sandbox init runs (no kernel involved) ------------------------------------


def emitted(prepared: dict[str, object]) -> list[Op]:
    plan = Plan()
    ll.emit(prepared, plan)
    return plan.ops


def test_emit_creates_adds_every_rule_and_restricts(tmp_path: Path) -> None:
    full = ll.fs_access_for_abi(7)
    ops = emitted(
        {
            "abi": 7,
            "handled_fs": full,
            "handled_net": 3,
            "scoped": 3,
            "rules": [(str(tmp_path), full), (str(tmp_path / "nope"), full)],
            "net_rules": [(8080, 2)],
        }
    )
    assert [op.code for op in ops] == [
        _cinit.OP_LL_CREATE,
        _cinit.OP_LL_PATH,
        _cinit.OP_LL_PATH,  # a missing path is the init's to skip: it looks in the sandbox's view
        _cinit.OP_LL_NET,
        _cinit.OP_LL_RESTRICT,
    ]
    attr = ops[0].s[0]
    assert isinstance(attr, bytes)
    assert attr == full.to_bytes(8, sys.byteorder) + (3).to_bytes(8, sys.byteorder) * 2
    assert ops[0].a == (24,)
    assert ops[1].s == (str(tmp_path),)
    assert ops[1].a == (full, ll.ACCESS_FILE)  # the init masks a non-directory down to ACCESS_FILE
    assert ops[1].path == str(tmp_path)
    assert ops[3].a == (8080, 2)
    assert all(op.layer == "landlock" for op in ops)


@pytest.mark.parametrize(("abi", "size"), [(1, 8), (3, 8), (4, 16), (5, 16), (6, 24), (7, 24)])
def test_emit_passes_the_attr_size_of_the_abi(abi: int, size: int) -> None:
    ops = emitted({"abi": abi, "handled_fs": 1, "handled_net": 0, "scoped": 0, "rules": [], "net_rules": []})
    assert ops[0].a == (size,)
    assert len(ops[0].s[0] or b"") == size


def test_emit_hints_depend_on_the_errno() -> None:
    ops = emitted({"abi": 7, "handled_fs": 1, "handled_net": 0, "scoped": 0, "rules": [], "net_rules": []})
    assert "disabled or missing" in pick_hint(ops[0].hint, errno.ENOSYS)
    assert "ABI 7" in pick_hint(ops[0].hint, errno.EINVAL)
    assert "no_new_privs" in pick_hint(ops[-1].hint, errno.EPERM)
    assert pick_hint(ops[-1].hint, errno.E2BIG) == ""
