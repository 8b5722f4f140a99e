"""The policy file, a rules file and a seccomp profile are read non-blocking, regular files only, bounded
(issue 11, items 4 and 6): such a file kept in a project directory that sandboxes write may have been
replaced by a FIFO (which would hold the CLI before any timeout applies), a device, a directory or a huge
file. Each is a PolicyError naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policies import PolicyError, load_policy, load_rules, load_seccomp_profile
from policies._load import MAX_POLICY_FILE


def test_a_regular_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "corral.toml"
    f.write_text('profile = "read-only"\n')
    assert load_policy(f, workdir=str(tmp_path)).profile == "read-only"


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    f = tmp_path / "corral.toml"
    os.mkfifo(f)
    with pytest.raises(PolicyError, match="not a regular file") as info:
        load_policy(f, workdir=str(tmp_path))
    assert info.value.source == str(f)


def test_a_device_and_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy("/dev/zero", workdir=str(tmp_path))
    with pytest.raises(PolicyError, match="a directory"):
        load_policy(tmp_path, workdir=str(tmp_path))


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "corral.toml"
    with open(f, "wb") as fp:
        fp.truncate(MAX_POLICY_FILE + 1)  # sparse: costs no disk
    with pytest.raises(PolicyError, match="larger than 1 MiB"):
        load_policy(f, workdir=str(tmp_path))


# --- the rules file and the seccomp profile: the same kinds of plant ------------------------------------


@pytest.mark.parametrize("which", ["rules file", "seccomp profile"])
def test_rules_and_seccomp_profile_refuse_a_fifo_device_directory_or_huge_file(
    tmp_path: Path, which: str
) -> None:
    def load(path: Path) -> object:
        if which == "rules file":
            return load_rules(path, workdir=str(tmp_path))
        return load_seccomp_profile(path)

    fifo = tmp_path / "planted"
    os.mkfifo(fifo)
    huge = tmp_path / "huge"
    with open(huge, "wb") as fp:
        fp.truncate(9 << 20)  # sparse: over both limits, costs no disk
    tty = tmp_path / "tty"
    tty.symlink_to("/dev/zero")  # a link to a device (a terminal would wait for input the same way)
    for path, needle in [
        (fifo, "not a regular file"),
        (tty, "is a symlink"),  # not followed (tests below)
        (tmp_path, "a directory"),
        (huge, "larger than"),
    ]:
        with pytest.raises(PolicyError, match=needle) as info:
            load(path)
        assert info.value.source == str(path)


# --- a symlink a sandbox could have planted: never followed (issue 11, item 4) ---------------------------


@pytest.mark.parametrize("which", ["policy file", "rules file", "seccomp profile"])
@pytest.mark.parametrize("where", ["the file", "a directory on its path"])
def test_a_symlink_in_a_writable_directory_is_refused_not_followed(
    tmp_path: Path, which: str, where: str
) -> None:
    """A link in the file's place, or a directory on its path that is a link (tmp_path: not a directory
    only root may write), is refused with the link named; its target, which holds a valid file of each
    kind, is not read."""
    target = tmp_path / "target"
    target.mkdir()
    content = {
        "policy file": 'profile = "read-only"\n',
        "rules file": 'default = "allow"\n',
        "seccomp profile": '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}',
    }[which]
    (target / "f").write_text(content)
    if where == "the file":
        (tmp_path / "f").symlink_to(target / "f")
        path, link = tmp_path / "f", tmp_path / "f"
    else:
        (tmp_path / "d").symlink_to(target)
        path, link = tmp_path / "d" / "f", tmp_path / "d"

    def load(p: Path) -> object:
        if which == "policy file":
            return load_policy(p, workdir=str(tmp_path))
        if which == "rules file":
            return load_rules(p, workdir=str(tmp_path))
        return load_seccomp_profile(p)

    with pytest.raises(PolicyError, match="symlink") as info:
        load(path)
    assert str(link) in info.value.reason
    assert "real path" in info.value.reason
    assert load(target / "f") is not None  # the same file by its real path loads


def test_a_relative_path_and_a_path_with_dotdot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "p.toml").write_text('profile = "read-only"\n')
    monkeypatch.chdir(tmp_path / "sub")
    assert load_policy("../p.toml", workdir=str(tmp_path)).profile == "read-only"
    monkeypatch.chdir(tmp_path)
    assert load_policy("p.toml", workdir=str(tmp_path)).profile == "read-only"


def test_a_file_named_inside_another_with_tilde_is_the_homes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `syscalls.profile = "~/s.json"` in a policy file, and a rule's `policy = "~/p.toml"`, were joined to
    # the naming file's directory (`<dir>/~/s.json`): a directory called `~` there, which a sandbox that
    # may write the project can make, chose the profile or policy.
    home, project = tmp_path / "home", tmp_path / "project"
    (project / "~").mkdir(parents=True)
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "s.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}')
    (project / "~" / "s.json").write_text("{not json")
    (home / "p.toml").write_text('profile = "read-only"\n')
    (project / "~" / "p.toml").write_text('profile = "full-access"\n')
    pol = project / "corral.toml"
    pol.write_text('profile = "workspace-write"\n[syscalls]\nprofile = "~/s.json"\n')
    assert load_policy(pol, workdir=str(project)).syscalls.profile is not None
    rules = project / "rules.toml"
    rules.write_text('[[rule]]\npattern = ["x"]\ndecision = "allow"\npolicy = "~/p.toml"\n')
    loaded = load_rules(rules, workdir=str(project))
    assert loaded.evaluate(["x"]).policy_for(load_policy(pol, workdir=str(project))).profile == "read-only"
    pol.write_text('profile = "workspace-write"\n[syscalls]\nprofile = "~root/s.json"\n')
    with pytest.raises(PolicyError, match="only '~' and '~/"):
        load_policy(pol, workdir=str(project))
