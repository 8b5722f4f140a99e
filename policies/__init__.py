"""Policies: what a sandboxed child may do. Pure data; imports nothing of `supervisor` or
`exporters`.

`profiles` builds the built-in profiles, `load_policy`/`policy_from_dict` read TOML policies, and
every constructor validates, raising `PolicyError` with the dotted key path of the bad value.
"""

from policies import profiles
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
from policies._validate import parse_duration, parse_size
from policies.env import filter_environment, is_secret_name, is_secret_value

__all__ = [
    "CorralError",
    "EnvPolicy",
    "FilesystemPolicy",
    "NetworkPolicy",
    "Policy",
    "PolicyError",
    "ResourcePolicy",
    "SyscallPolicy",
    "check_writable_roots",
    "filter_environment",
    "is_secret_name",
    "is_secret_value",
    "load_policy",
    "parse_duration",
    "parse_size",
    "policy_from_dict",
    "profiles",
]
