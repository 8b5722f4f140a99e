"""The built-in profiles and their keyword options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from policies import Policy, PolicyError, profiles


def test_read_only() -> None:
    policy = profiles.read_only("/srv/repo")
    assert policy.profile == "read-only"
    assert policy.workdir == "/srv/repo"
    assert policy.filesystem.confine is True
    assert policy.filesystem.read == ("/",)
    assert policy.filesystem.write == ()
    assert policy.filesystem.protected == (".git/hooks", ".git/config")
    assert policy.network.mode == "none"
    assert policy.resources.memory is None
    assert policy.best_effort is False


def test_workspace_write_writes_the_workdir() -> None:
    policy = profiles.workspace_write("/srv/repo")
    assert policy.profile == "workspace-write"
    assert policy.filesystem.read == ("/",)
    assert policy.filesystem.write == ("/srv/repo",)
    assert policy.network.mode == "none"


def test_full_access_has_no_confinement_but_keeps_limits() -> None:
    policy = profiles.full_access("/srv/repo", memory="1G", timeout=5)
    assert policy.profile == "full-access"
    assert policy.filesystem.confine is False
    assert policy.network.mode == "host"
    assert policy.resources.memory == 1024**3
    assert policy.resources.timeout == 5.0
    assert profiles.full_access("/srv", network="none").network.mode == "none"


def test_get_by_name() -> None:
    for name in profiles.NAMES:
        assert profiles.get(name, "/srv").profile == name
    assert profiles.get("workspace-write", "/srv", pids=8) == profiles.workspace_write("/srv", pids=8)


@pytest.mark.parametrize("name", ["rw", "read_only", "READ-ONLY", "", None, 1])
def test_get_unknown_name_lists_the_valid_ones(name: Any) -> None:
    with pytest.raises(PolicyError) as info:
        profiles.get(name)
    assert info.value.path == "profile"
    assert info.value.value == name
    for valid in profiles.NAMES:
        assert valid in str(info.value)


def test_workdir_defaults_to_the_real_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.chdir(link)
    policy = profiles.workspace_write()
    assert policy.workdir == os.path.realpath(real)
    assert policy.filesystem.write == (os.path.realpath(real),)
    assert profiles.read_only("..").workdir == os.path.realpath(tmp_path)


def test_workdir_symlinks_a_sandbox_could_have_planted_are_not_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A link in a directory the caller (and so a sandbox of the caller's) can write may have been planted
    # by an earlier sandbox (`sub -> /etc`): it is kept as written, and the sandbox's init refuses it
    # (tests/kernel/test_attack_paths.py) instead of making its target the writable workdir.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(real)
    assert profiles.read_only(tmp_path / "link").workdir == str(tmp_path / "link")
    assert profiles.read_only("../link").workdir == str(tmp_path / "link")
    assert profiles.workspace_write(tmp_path / "link").filesystem.write == (str(tmp_path / "link"),)


def test_system_symlinks_are_resolved_once() -> None:
    # Links in a directory only root may write (and, for a root caller, a system directory): /var/run.
    if not os.path.islink("/var/run"):
        pytest.skip("/var/run is not a symlink on this machine")
    assert profiles.read_only("/var/run").workdir == os.path.realpath("/var/run")


def test_relative_paths_resolve_against_the_workdir() -> None:
    policy = profiles.workspace_write(
        "/srv/repo",
        allow_write=["cache", "../shared", Path("/var/tmp/x/")],
        allow_read=["docs"],
        deny=["secrets/key.pem"],
        execute=["bin", "/usr"],
    )
    assert policy.filesystem.write == ("/srv/repo", "/srv/repo/cache", "/srv/shared", "/var/tmp/x")
    assert policy.filesystem.read == ("/", "/srv/repo/docs")
    assert policy.filesystem.deny == (*profiles.credential_paths(), "/srv/repo/secrets/key.pem")
    assert policy.filesystem.execute == ("/srv/repo/bin", "/usr")


def test_confined_profiles_hide_credentials_by_default() -> None:
    for make in (profiles.read_only, profiles.workspace_write):
        deny = make("/srv/repo").filesystem.deny
        assert "/etc/shadow" in deny
        assert "/root/.ssh" in deny
        assert os.path.join(os.path.expanduser("~"), ".aws") in deny
    assert profiles.full_access("/srv/repo").filesystem.deny == ()
    assert "/home/u/.docker" in profiles.credential_paths("/home/u")


def test_allow_write_adds_without_repeats() -> None:
    policy = profiles.workspace_write("/srv/repo", allow_write=["/srv/repo", "/srv/repo/"])
    assert policy.filesystem.write == ("/srv/repo",)


def test_read_only_honours_an_explicit_allow_write() -> None:
    assert profiles.read_only("/srv", allow_write=["/srv/out"]).filesystem.write == ("/srv/out",)


def test_resource_options() -> None:
    policy = profiles.workspace_write(
        "/srv",
        memory="512M",
        cpus=1.5,
        pids=256,
        timeout="90s",
        cpu_time=30,
        max_fds=1024,
        max_output="10M",
        fsize="1G",
    )
    res = policy.resources
    assert res.memory == 512 * 1024**2
    assert res.cpus == 1.5
    assert res.pids == 256
    assert res.timeout == 90.0
    assert res.cpu_time == 30.0
    assert res.fds == 1024
    assert res.output == 10 * 1024**2
    assert res.fsize == 1024**3


def test_none_keeps_the_default_and_unlimited_clears() -> None:
    limited = profiles.read_only("/srv", memory="1G", network=None, env=None)
    assert limited == profiles.read_only("/srv", memory="1G")
    assert profiles.override(limited, memory="unlimited").resources.memory is None
    assert profiles.override(limited, memory="MAX").resources.memory is None


def test_env_option() -> None:
    policy = profiles.read_only(
        "/srv", env=["GITHUB_TOKEN", "LANG=C.UTF-8", "EMPTY=", "A=1=2", "LANG=C"], clear_env=True
    )
    env = policy.environment
    assert env.passthrough == ("GITHUB_TOKEN",)
    assert env.set == (("LANG", "C"), ("EMPTY", ""), ("A", "1=2"))  # later LANG wins
    assert env.clear is True


def test_other_options() -> None:
    policy = profiles.workspace_write(
        "/srv", protected=[".git", ".hg/hgrc"], best_effort=True, network="host"
    )
    assert policy.filesystem.protected == (".git", ".hg/hgrc")
    assert policy.best_effort is True
    assert policy.network.mode == "host"
    assert profiles.read_only("/srv", protected=[]).filesystem.protected == ()


def test_override_adds_to_an_existing_policy() -> None:
    base = profiles.workspace_write("/srv", allow_write=["/a"], env=["X=1"])
    policy = profiles.override(base, allow_write=["b"], env=["Y=2", "X=3"], pids=4)
    assert policy.profile == "workspace-write"
    assert policy.filesystem.write == ("/srv", "/a", "/srv/b")
    assert policy.environment.set == (("X", "3"), ("Y", "2"))
    assert policy.resources.pids == 4
    assert profiles.override(base) is base


def test_override_without_workdir_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    policy = profiles.override(Policy(), allow_write=["out"])
    assert policy.filesystem.write == (os.path.join(os.path.realpath(tmp_path), "out"),)


def test_override_rejects_a_non_policy() -> None:
    with pytest.raises(PolicyError) as info:
        profiles.override({"profile": "read-only"})  # type: ignore[arg-type]
    assert info.value.path == "policy"


def test_profiles_are_hashable_and_equal_for_equal_input() -> None:
    a = profiles.workspace_write("/srv", memory="1G", env=["A=1"])
    b = profiles.workspace_write("/srv/", memory=1024**3, env=("A=1",))
    assert a == b
    assert hash(a) == hash(b)


BAD_OPTIONS: list[tuple[dict[str, Any], str, object]] = [
    ({"memory": "5X"}, "memory", "5X"),
    ({"memory": 0}, "memory", 0),
    ({"memory": True}, "memory", True),
    ({"max_output": "-1"}, "max_output", "-1"),
    ({"fsize": []}, "fsize", []),
    ({"cpus": 0}, "cpus", 0),
    ({"cpus": 2000}, "cpus", 2000),
    ({"cpus": "many"}, "cpus", "many"),
    ({"pids": 0}, "pids", 0),
    ({"pids": "ten"}, "pids", "ten"),
    ({"max_fds": -1}, "max_fds", -1),
    ({"timeout": 0}, "timeout", 0),
    ({"timeout": float("inf")}, "timeout", float("inf")),
    ({"timeout": "soon"}, "timeout", "soon"),
    ({"cpu_time": -5}, "cpu_time", -5),
    ({"network": "bridge"}, "network", "bridge"),
    ({"network": True}, "network", True),
    ({"allow_write": "/tmp"}, "allow_write", "/tmp"),
    ({"allow_write": ["/ok", "/bad\0"]}, "allow_write[1]", "/bad\0"),
    ({"allow_write": [3]}, "allow_write[0]", 3),
    ({"allow_read": [b"/usr"]}, "allow_read[0]", b"/usr"),
    ({"deny": 5}, "deny", 5),
    ({"execute": [""]}, "execute[0]", ""),
    ({"protected": ["/abs"]}, "protected[0]", "/abs"),
    ({"protected": ["../up"]}, "protected[0]", "../up"),
    ({"env": "HOME"}, "env", "HOME"),
    ({"env": ["=value"]}, "env[0]", "=value"),
    ({"env": ["OK", 7]}, "env[1]", 7),
    ({"env": ["A\0B=1"]}, "env[0]", "A\0B=1"),
    ({"env": ["A=x\0"]}, "env[0]", "A=x\0"),
    ({"clear_env": "yes"}, "clear_env", "yes"),
    ({"best_effort": 1}, "best_effort", 1),
    ({"memroy": "1G"}, "memroy", "memroy"),
    ({"workdir2": None}, "workdir2", "workdir2"),
]


@pytest.mark.parametrize(("opts", "path", "value"), BAD_OPTIONS)
@pytest.mark.parametrize("name", profiles.NAMES)
def test_bad_options_raise_policy_error(name: str, opts: dict[str, Any], path: str, value: object) -> None:
    with pytest.raises(PolicyError) as info:
        profiles.get(name, "/srv", **opts)
    err = info.value
    assert err.path == path
    assert err.value == value or err.value is value
    assert repr(value)[:40] in str(err)


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(PolicyError) as info:
        profiles.read_only("/srv", memroy="1G")  # type: ignore[call-arg]
    assert "memory" in info.value.reason
    assert "allow_write" in info.value.reason


@pytest.mark.parametrize(("workdir", "value"), [("", ""), ("/a\0", "/a\0"), (3, 3), (b"/x", b"/x")])
def test_bad_workdir(workdir: Any, value: object) -> None:
    with pytest.raises(PolicyError) as info:
        profiles.workspace_write(workdir)
    assert info.value.path == "workdir"
    assert info.value.value == value


def test_deleted_current_directory_is_a_policy_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(PolicyError) as info:
        profiles.workspace_write()
    assert info.value.path == "workdir"
    assert "explicitly" in info.value.reason
