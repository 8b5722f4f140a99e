"""Direct construction of the model validates and stores values in canonical form."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from policies import (
    EnvPolicy,
    FilesystemPolicy,
    NetworkPolicy,
    Policy,
    PolicyError,
    ResourcePolicy,
    SyscallPolicy,
)
from policies._model import DEFAULT_SECRET_MARKERS


def test_defaults_are_valid_and_hashable() -> None:
    policy = Policy()
    assert policy.profile == "custom"
    assert policy.filesystem.read == ("/",)
    assert policy.filesystem.protected == (".git/hooks", ".git/config")
    assert policy.network.mode == "none"
    assert policy.environment.secret_markers == DEFAULT_SECRET_MARKERS
    assert {"KEY", "SECRET", "TOKEN", "PASSWORD"} <= set(DEFAULT_SECRET_MARKERS)
    assert hash(policy) == hash(Policy())


def test_policies_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().best_effort = True  # type: ignore[misc]


def test_lists_become_tuples_and_paths_are_normalised() -> None:
    fs = FilesystemPolicy(
        read=["/usr//lib/", "/etc/../opt"],  # type: ignore[arg-type]
        write=[Path("/srv/repo"), "/srv/repo/"],  # type: ignore[list-item]
        execute=["//usr/bin"],  # type: ignore[arg-type]
        protected=["./.git//hooks", ".git/hooks"],  # type: ignore[arg-type]
    )
    assert fs.read == ("/usr/lib", "/opt")
    assert fs.write == ("/srv/repo",)  # repeats dropped, first occurrence kept
    assert fs.execute == ("/usr/bin",)
    assert fs.protected == (".git/hooks",)
    hash(fs)


def test_resource_values_are_canonical() -> None:
    res = ResourcePolicy(
        memory="1G",  # type: ignore[arg-type]
        cpus=2,
        pids="64",  # type: ignore[arg-type]
        timeout="1m",  # type: ignore[arg-type]
        cpu_time=30,
        output=1024,
        fds=256,
    )
    assert (res.memory, res.cpus, res.pids, res.timeout, res.cpu_time) == (
        1024**3,
        2.0,
        64,
        60.0,
        30.0,
    )
    assert type(res.cpus) is float
    assert type(res.cpu_time) is float


def test_env_set_accepts_a_mapping() -> None:
    env = EnvPolicy(set={"LANG": "C.UTF-8", "TZ": "UTC"})  # type: ignore[arg-type]
    assert env.set == (("LANG", "C.UTF-8"), ("TZ", "UTC"))
    hash(env)


BAD: list[tuple[Any, str, object]] = [
    (lambda: FilesystemPolicy(read="/"), "filesystem.read", "/"),
    (lambda: FilesystemPolicy(write=("/a", "rel")), "filesystem.write[1]", "rel"),
    (lambda: FilesystemPolicy(deny=("/a\0b",)), "filesystem.deny[0]", "/a\0b"),
    (lambda: FilesystemPolicy(deny=("",)), "filesystem.deny[0]", ""),
    (lambda: FilesystemPolicy(execute=(1,)), "filesystem.execute[0]", 1),
    (lambda: FilesystemPolicy(write=("/" + "a" * 5000,)), "filesystem.write[0]", None),
    (lambda: FilesystemPolicy(write=("/\udc80ok", "/\ud800")), "filesystem.write[1]", "/\ud800"),
    (lambda: FilesystemPolicy(protected=("/etc",)), "filesystem.protected[0]", "/etc"),
    (lambda: FilesystemPolicy(protected=("a/../..",)), "filesystem.protected[0]", "a/../.."),
    (lambda: FilesystemPolicy(protected=(".",)), "filesystem.protected[0]", "."),
    (lambda: FilesystemPolicy(confine="yes"), "filesystem.confine", "yes"),
    (lambda: FilesystemPolicy(private_tmp=1), "filesystem.private_tmp", 1),
    (lambda: NetworkPolicy(mode="bridge"), "network.mode", "bridge"),
    (lambda: NetworkPolicy(mode=None), "network.mode", None),
    (lambda: SyscallPolicy(deny=("ptrace", "Mount")), "syscalls.deny[1]", "Mount"),
    (lambda: SyscallPolicy(deny=("a-b",)), "syscalls.deny[0]", "a-b"),
    (lambda: SyscallPolicy(allow=("ptrace",), deny=("ptrace",)), "syscalls.allow[0]", "ptrace"),
    (lambda: SyscallPolicy(enabled=None), "syscalls.enabled", None),
    (lambda: ResourcePolicy(memory=0), "resources.memory", 0),
    (lambda: ResourcePolicy(memory=True), "resources.memory", True),
    (lambda: ResourcePolicy(output="lots"), "resources.output", "lots"),
    (lambda: ResourcePolicy(fsize=-1), "resources.fsize", -1),
    (lambda: ResourcePolicy(cpus=0), "resources.cpus", 0),
    (lambda: ResourcePolicy(cpus=1025), "resources.cpus", 1025),
    (lambda: ResourcePolicy(cpus=float("nan")), "resources.cpus", None),
    (lambda: ResourcePolicy(pids=0), "resources.pids", 0),
    (lambda: ResourcePolicy(pids=2.5), "resources.pids", 2.5),
    (lambda: ResourcePolicy(fds=2**31), "resources.fds", 2**31),
    (lambda: ResourcePolicy(timeout=0), "resources.timeout", 0),
    (lambda: ResourcePolicy(timeout=float("inf")), "resources.timeout", float("inf")),
    (lambda: ResourcePolicy(cpu_time=-1), "resources.cpu_time", -1),
    (lambda: EnvPolicy(clear="no"), "environment.clear", "no"),
    (lambda: EnvPolicy(set=(("A", "1"), ("A", "2"))), "environment.set[1]", "A"),
    (lambda: EnvPolicy(set=(("A=B", "1"),)), "environment.set[0]", "A=B"),
    (lambda: EnvPolicy(set=(("A",),)), "environment.set[0]", ("A",)),
    (lambda: EnvPolicy(set=(("A", 1),)), "environment.set[0]", 1),
    (lambda: EnvPolicy(set=(("A", "x\0y"),)), "environment.set[0]", "x\0y"),
    (lambda: EnvPolicy(passthrough=("",)), "environment.passthrough[0]", ""),
    (lambda: EnvPolicy(passthrough="HOME"), "environment.passthrough", "HOME"),
    (lambda: EnvPolicy(secret_markers=("KEY", "")), "environment.secret_markers[1]", ""),
    (lambda: Policy(profile=""), "profile", ""),
    (lambda: Policy(profile=3), "profile", 3),
    (lambda: Policy(workdir="relative"), "workdir", "relative"),
    (lambda: Policy(filesystem={}), "filesystem", {}),
    (lambda: Policy(resources=None), "resources", None),
    (lambda: Policy(best_effort="false"), "best_effort", "false"),
]


@pytest.mark.parametrize(("build", "path", "value"), BAD)
def test_bad_fields_raise_policy_error_naming_path_and_value(build: Any, path: str, value: object) -> None:
    with pytest.raises(PolicyError) as info:
        build()
    err = info.value
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    if value is not None:
        assert err.value == value
        assert repr(value)[:50] in str(err)


def test_policy_workdir_is_normalised() -> None:
    assert Policy(workdir="/srv//repo/").workdir == "/srv/repo"
