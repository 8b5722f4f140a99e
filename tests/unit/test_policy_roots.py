"""Policies that silently meant something else (issue 11, item 8): system directories as writable roots,
`~` and `$VAR` in paths, a file's `deny` replacing the default credential hiding."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from policies import FilesystemPolicy, Policy, PolicyError, check_writable_roots, policy_from_dict, profiles
from policies._roots import SYSTEM_DIRS, SYSTEM_TREES, system_root

HOME = os.path.expanduser("~")


def refused(policy: Policy) -> PolicyError:
    with pytest.raises(PolicyError) as err:
        check_writable_roots(policy)
    return err.value


@pytest.mark.parametrize(
    "root", ["/", "/etc", "/usr", "/bin", "/sbin", "/boot", "/dev", "/proc", "/sys", "/var"]
)
def test_system_directory_as_workdir_is_refused(root: str) -> None:
    err = refused(profiles.workspace_write(root))
    assert err.path == "workdir"
    assert "--allow-system-write" in err.reason
    assert "filesystem.allow_system_write" in err.reason
    assert err.value == os.path.realpath(root)


@pytest.mark.parametrize(
    "root", ["/etc", "/etc/nginx", "/usr/local", "/lib", "/lib64", "/var/spool/cron", "/home"]
)
def test_system_directory_as_allow_write_is_refused(tmp_path: Path, root: str) -> None:
    err = refused(profiles.workspace_write(tmp_path, allow_write=[root]))
    assert err.path == "filesystem.write[1]"
    assert root in str(err)


def test_beneath_a_tree_names_the_tree(tmp_path: Path) -> None:
    err = refused(profiles.workspace_write(tmp_path, allow_write=["/etc/nginx"]))
    assert "lies in the system directory /etc" in err.reason


def test_a_symlink_to_a_system_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cfg").symlink_to("/etc")
    err = refused(profiles.workspace_write(tmp_path, allow_write=[tmp_path / "cfg"]))
    assert "/etc" in err.reason


@pytest.mark.parametrize(
    "root", ["/var/tmp/build", "/var/lib/jenkins/ws", "/srv/repo", "/home/someone/project", "/opt/app"]
)
def test_ordinary_directories_pass(root: str) -> None:
    assert system_root(root) is None
    assert check_writable_roots(profiles.workspace_write(root)) == []


def test_explicit_choice_allows_it() -> None:
    for policy in (
        profiles.workspace_write("/", allow_system_write=True),
        profiles.workspace_write("/srv/x", allow_write=["/etc"], allow_system_write=True),
        policy_from_dict(
            {"profile": "workspace-write", "filesystem": {"allow_system_write": True}}, workdir="/"
        ),
    ):
        assert check_writable_roots(policy) == []


def test_read_only_and_full_access_are_not_refused() -> None:
    assert check_writable_roots(profiles.read_only("/")) == []  # the workdir is not writable
    assert check_writable_roots(profiles.full_access("/")) == []  # unconfined by its own explicit choice


def test_home_directory_is_a_warning() -> None:
    if HOME in ("", "/") or system_root(HOME) is not None:
        pytest.skip(f"home directory {HOME!r} is a system directory here")
    warnings = check_writable_roots(profiles.workspace_write(HOME))
    assert len(warnings) == 1
    assert "home directory" in warnings[0]


def test_allow_system_write_must_be_a_bool() -> None:
    with pytest.raises(PolicyError, match=r"filesystem\.allow_system_write"):
        FilesystemPolicy(allow_system_write="yes")  # type: ignore[arg-type]


def test_the_lists_are_pinned() -> None:
    assert set(SYSTEM_TREES) >= {
        "/etc",
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/boot",
        "/dev",
        "/proc",
        "/sys",
    }
    assert set(SYSTEM_DIRS) >= {"/", "/home", "/var"}


# --- paths written in policy files and options -------------------------------------------------------------


def test_tilde_is_the_callers_home() -> None:
    if HOME in ("", "/"):
        pytest.skip("no home directory")
    policy = policy_from_dict({"filesystem": {"deny": ["~/x", "~"]}}, workdir="/srv/repo")
    assert policy.filesystem.deny[-2:] == (os.path.join(HOME, "x"), HOME)
    assert profiles.read_only("/srv/repo", deny=["~/.secret"]).filesystem.deny[-1] == os.path.join(
        HOME, ".secret"
    )


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("~root/x", "only '~' and '~/...'"),
        ("$HOME/x", "environment variables are not expanded"),
        ("${HOME}/x", "environment variables are not expanded"),
        ("../x", "may not climb out of the workdir"),
        ("./../x", "may not climb out of the workdir"),
    ],
)
@pytest.mark.parametrize("key", ["deny", "read", "write", "execute"])
def test_surprising_paths_in_a_file_are_refused(key: str, entry: str, needle: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy_from_dict({"filesystem": {key: ["/ok", entry]}}, workdir="/srv/repo")
    assert err.value.path == f"filesystem.{key}[1]"
    assert needle in err.value.reason
    assert err.value.value == entry


def test_relative_paths_in_a_file_are_beneath_the_workdir() -> None:
    policy = policy_from_dict({"filesystem": {"deny": ["secrets", "./a/../b"]}}, workdir="/srv/repo")
    assert policy.filesystem.deny[-2:] == ("/srv/repo/secrets", "/srv/repo/b")


@pytest.mark.parametrize(("entry", "needle"), [("~root/x", "only '~'"), ("$HOME", "not expanded")])
def test_surprising_paths_in_options_are_refused(entry: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle) as err:
        profiles.workspace_write("/srv/repo", deny=[entry])
    assert err.value.path == "deny[0]"


# --- deny adds; dropping the default credential hiding is named --------------------------------------------


def test_a_file_deny_adds_to_the_credential_hiding() -> None:
    policy = policy_from_dict(
        {"profile": "workspace-write", "filesystem": {"deny": ["/srv/x"]}}, workdir="/srv/repo"
    )
    assert policy.filesystem.deny == (*profiles.credential_paths(), "/srv/x")
    # The same as the CLI's --deny, which always added.
    assert policy == profiles.workspace_write("/srv/repo", deny=["/srv/x"])


def test_hide_credentials_false_drops_them_by_name() -> None:
    policy = policy_from_dict(
        {"profile": "workspace-write", "filesystem": {"hide_credentials": False, "deny": ["/srv/x"]}},
        workdir="/srv/repo",
    )
    assert policy.filesystem.deny == ("/srv/x",)
    assert profiles.workspace_write("/srv/repo", hide_credentials=False).filesystem.deny == ()
    kept = profiles.workspace_write("/srv/repo", hide_credentials=True)
    assert kept.filesystem.deny == profiles.credential_paths()


def test_hide_credentials_must_be_a_bool() -> None:
    with pytest.raises(PolicyError) as err:
        policy_from_dict({"filesystem": {"hide_credentials": "no"}}, workdir="/srv/repo")
    assert err.value.path == "filesystem.hide_credentials"


def test_a_root_holding_the_home_directory_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--workdir /data/users` with HOME=/data/users/me: the home's start-up files are as writable as if the
    # home itself were the workdir.
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    warnings = check_writable_roots(profiles.workspace_write(tmp_path / "users"))
    assert len(warnings) == 1
    assert f"holds your home directory {home}" in warnings[0]
    assert check_writable_roots(profiles.workspace_write(home / "project")) == []


def test_the_home_of_the_password_database_is_a_warning_whatever_home_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `sudo -E corral run --workdir /root` keeps the user's HOME: /root is still root's own home.

    real = pwd.getpwuid(os.geteuid()).pw_dir
    if real in ("", "/") or system_root(real) is not None:
        pytest.skip(f"the password database's home {real!r} is a system directory here")
    monkeypatch.setenv("HOME", str(tmp_path))
    warnings = check_writable_roots(profiles.workspace_write(real))
    assert len(warnings) == 1
    assert f"is your home directory {real}" in warnings[0]


def test_a_files_workdir_reads_tilde_as_the_other_paths_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `workdir = "~"` in a policy file was the directory named `~` beside it (a sandbox can make one), and
    # `workdir = "$HOME"` one named `$HOME`: now the home, and a refusal.
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "proj" / "~").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    policy = policy_from_dict({"workdir": "~"}, source=str(tmp_path / "proj" / "p.toml"))
    assert policy.workdir == str(home)
    assert profiles.workspace_write("~").workdir == str(home)
    for entry, needle in [("$HOME", "not expanded"), ("~root", "only '~'")]:
        with pytest.raises(PolicyError, match=needle) as err:
            policy_from_dict({"workdir": entry}, source=str(tmp_path / "proj" / "p.toml"))
        assert err.value.path == "workdir"
