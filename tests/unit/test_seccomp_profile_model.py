"""The seccomp profile model and the OCI/Docker JSON reader (policies/_seccomp.py): actions, operators, the
evaluation of includes/excludes for a sandbox (no capabilities, this arch), and PolicyErrors that name the
entry and the field."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from policies import FilesystemPolicy, NetworkPolicy, Policy, PolicyError, SyscallPolicy, load_policy
from policies._seccomp import (
    ArgCondition,
    SeccompProfile,
    SeccompRule,
    check_action,
    load_seccomp_profile,
    seccomp_profile_from_oci,
    to_oci,
)
from supervisor.sandbox import seccomp

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("allow", "allow"),
        ("log", "log"),
        ("trace", "log"),
        ("kill", "kill_process"),
        ("kill_process", "kill_process"),
        ("errno", f"errno:{errno.EPERM}"),
        ("errno:ENOSYS", f"errno:{errno.ENOSYS}"),
        ("errno:13", "errno:13"),
    ],
)
def test_actions(given: str, canonical: str) -> None:
    assert check_action(given, "x") == canonical


@pytest.mark.parametrize("bad", ["deny", "errno:", "errno:EWHAT", "errno:0", "errno:5000", 3, None])
def test_bad_actions(bad: object) -> None:
    with pytest.raises(PolicyError) as err:
        check_action(bad, "syscalls.profile.default")
    assert err.value.path == "syscalls.profile.default"


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        (SeccompRule((), "allow"), "rules[0].names"),
        (SeccompRule(("not a name",), "allow"), "rules[0].names[0]"),
        (SeccompRule(("getpid",), "nope"), "rules[0].action"),
        (SeccompRule(("getpid",), "allow", (ArgCondition(6, "==", 1),)), "rules[0].args[0].index"),
        (SeccompRule(("getpid",), "allow", (ArgCondition(0, "~", 1),)), "rules[0].args[0].op"),
        (SeccompRule(("getpid",), "allow", (ArgCondition(0, "==", -1),)), "rules[0].args[0].value"),
        (SeccompRule(("getpid",), "allow", (ArgCondition(0, "masked_eq", 3, 1),)), "rules[0].args[0].value"),
        (
            SeccompRule(("getpid",), "allow", (ArgCondition(0, "==", 1), ArgCondition(0, "!=", 2))),
            "rules[0].args",
        ),
    ],
)
def test_bad_rules_name_the_index_and_field(rule: SeccompRule, path: str) -> None:
    with pytest.raises(PolicyError) as err:
        SeccompProfile("allow", (rule,))
    assert err.value.path == f"syscalls.profile.{path}"


def test_profile_is_hashable_and_compares_by_content() -> None:
    a = SeccompProfile("errno:ENOSYS", (SeccompRule(("read", "read"), "allow"),), source="a.json")
    b = SeccompProfile("errno:38", (SeccompRule(("read",), "allow"),), source="b.json")
    assert a == b
    assert hash(a) == hash(b)
    assert a.rules[0].names == ("read",)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "extra": 1}, "extra"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PPC"]}, "architectures"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_X"}]},
            "syscalls[0].action",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "errnoRet": "E?"}],
            },
            "syscalls[0].errnoRet",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {
                        "names": ["x"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}],
                    },
                ],
            },
            "syscalls[1].args[0].op",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}
                ],
            },
            "syscalls[0].args[0].index",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"kernel": "5"}}],
            },
            "syscalls[0].includes.kernel",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]},
            "syscalls[0].names",
        ),
    ],
)
def test_oci_errors_name_the_entry_and_field(data: dict[str, object], path: str) -> None:
    with pytest.raises(PolicyError) as err:
        seccomp_profile_from_oci(data)
    assert err.value.path == path, err.value


def test_oci_masked_eq_takes_the_mask_from_value_and_the_datum_from_value_two() -> None:
    p = seccomp_profile_from_oci(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
                }
            ],
        }
    )
    assert p.default == f"errno:{errno.EPERM}"
    assert p.rules[0].args == (ArgCondition(0, "masked_eq", 0, 0x7E020000),)


def test_the_example_allowlist_loads() -> None:
    p = load_seccomp_profile(ROOT / "examples" / "seccomp" / "allowlist.json")
    assert p.default == f"errno:{errno.ENOSYS}"
    allowed = {n for r in p.rules if r.action == "allow" for n in r.names}
    assert {"read", "write", "execve", "openat", "mmap"} <= allowed
    assert "ptrace" not in allowed  # its entry needs CAP_SYS_PTRACE: not for a sandbox


def test_toml_syscalls_profile_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    (tmp_path / "policy.toml").write_text('[syscalls]\nprofile = "p.json"\n')
    policy = load_policy(tmp_path / "policy.toml", workdir=tmp_path)
    assert policy.syscalls.profile is not None
    assert policy.syscalls.profile.default == "log"
    (tmp_path / "bad.toml").write_text('[syscalls]\nprofile = "missing.json"\n')
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "bad.toml", workdir=tmp_path)
    assert err.value.path == "syscalls.profile"
    (tmp_path / "bad2.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [1], "action": "SCMP_ACT_ALLOW"}]}'
    )
    (tmp_path / "bad2.toml").write_text('[syscalls]\nprofile = "bad2.json"\n')
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "bad2.toml", workdir=tmp_path)
    assert err.value.path == "syscalls.profile.syscalls[0].names[0]"


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy(network=NetworkPolicy(families=("packet",)), filesystem=FilesystemPolicy(watch=False)),
        Policy(syscalls=SyscallPolicy(deny=("chroot",), allow=("keyctl",))),
    ],
    ids=["default", "network-and-watch", "deny-allow"],
)
def test_the_builtin_rules_as_a_profile_round_trip_through_oci(policy: Policy) -> None:
    """seccomp.builtin_profile is the built-in rule set in the profile's terms (what the compiler compiles;
    tests/unit/test_seccomp_bpf.py checks its verdicts against libseccomp). Its OCI JSON reads back to the
    same profile."""
    profile = seccomp.builtin_profile(policy)
    assert profile.default == "allow"
    assert {n for r in profile.rules for n in r.names} >= {"unshare", "clone", "socket", "ioctl"}
    assert seccomp_profile_from_oci(to_oci(profile)) == profile
