"""The public surface of `policies`, and the rule that it stays pure data."""

from __future__ import annotations

import ast
from pathlib import Path

import policies
from policies import profiles

POLICIES_DIR = Path(policies.__file__).parent


def test_all_is_pinned() -> None:
    assert policies.__all__ == [
        "ArgCondition",
        "CommandDecision",
        "CommandRule",
        "CommandRules",
        "CorralError",
        "EnvPolicy",
        "FilesystemPolicy",
        "NetworkPolicy",
        "Policy",
        "PolicyError",
        "ResourcePolicy",
        "RulesUnavailableError",
        "SeccompProfile",
        "SeccompRule",
        "SyscallPolicy",
        "check_writable_roots",
        "filter_environment",
        "is_secret_name",
        "is_secret_value",
        "load_policy",
        "load_rules",
        "load_seccomp_profile",
        "parse_duration",
        "parse_size",
        "policy_from_dict",
        "profiles",
        "rules_from_dict",
        "rules_from_starlark",
    ]
    for name in policies.__all__:
        assert getattr(policies, name) is not None


def test_profiles_all_is_pinned() -> None:
    assert profiles.__all__ == [
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
    assert profiles.NAMES == ("read-only", "workspace-write", "full-access")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_policies_imports_nothing_of_the_engine_and_makes_no_syscalls() -> None:
    # Data flows one way (policies -> supervisor -> exporters); policies is pure data.
    forbidden = {"supervisor", "exporters", "ctypes", "subprocess", "socket", "fcntl", "resource"}
    for path in sorted(POLICIES_DIR.glob("*.py")):
        assert not _imported_modules(path) & forbidden, path.name


def test_policy_error_is_a_corral_error_and_a_value_error() -> None:
    assert issubclass(policies.PolicyError, policies.CorralError)
    assert issubclass(policies.PolicyError, ValueError)
