"""Policies: what a sandboxed child may do. Pure data; imports nothing of `supervisor` or `exporters`."""

from policies._errors import CorralError, PolicyError
from policies._model import (
    EnvPolicy,
    FilesystemPolicy,
    NetworkPolicy,
    Policy,
    ResourcePolicy,
    SyscallPolicy,
)

__all__ = [
    "CorralError",
    "EnvPolicy",
    "FilesystemPolicy",
    "NetworkPolicy",
    "Policy",
    "PolicyError",
    "ResourcePolicy",
    "SyscallPolicy",
]
