"""Policies: what a sandboxed child may do. Pure data; imports nothing of `supervisor` or
`exporters`.

`profiles` builds the built-in profiles, `load_policy`/`policy_from_dict` read TOML policies, and
every constructor validates, raising `PolicyError` with the dotted key path of the bad value.
"""

from policies import _logsafe, profiles
from policies._commands import CommandDecision, CommandRule, CommandRules
from policies._errors import CorralError, PolicyError
from policies._load import load_policy, policy_from_dict
from policies._model import (
    EnvPolicy,
    FilesystemPolicy,
    NetworkPolicy,
    Policy,
    ResourcePolicy,
    SyscallPolicy,
)
from policies._roots import check_writable_roots
from policies._rules_load import load_rules, rules_from_dict, rules_from_starlark
from policies._seccomp import ArgCondition, SeccompProfile, SeccompRule, load_seccomp_profile
from policies._shell import RulesUnavailableError
from policies._validate import parse_duration, parse_size
from policies.env import filter_environment, is_secret_name, is_secret_value

_logsafe.install()

__all__ = [
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
