"""The host user's GLOBAL git configuration pointing into a writable root (issue 11, item 3).

`include.path`, `includeIf.<cond>.path` and `core.hooksPath` in the user's global config (outside the roots:
`$GIT_CONFIG_GLOBAL`, `$XDG_CONFIG_HOME/git/config`, `~/.gitconfig`) may name a file or directory under a
writable root (`includeIf "gitdir:~/work/"` with `path = ~/work/.gitconfig-work`, a team's hooks directory
kept in the checkout). The post-run scan checked only configs inside the roots, so a sandbox wrote there what
the user's next git command read as config (here `core.fsmonitor`, run by a plain `git status`) or ran as a
hook. Each attack plants from inside a real sandbox; the HOST then runs git with that global configuration,
as the user would, and the test checks from outside that the payload did not run and that the scan reported
what it moved aside. The supervisor reads the configuration from its own environment (the caller's: the
test sets `GIT_CONFIG_GLOBAL`/`XDG_CONFIG_HOME` for the test's process).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import ENV, GIT, make_repo, payload, plant

pytestmark = pytest.mark.kernel


def user_git(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """git as the host user runs it, with their global configuration (`env`)."""
    return subprocess.run(
        [GIT, "-C", str(repo), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def fsmonitor(workspace: Path) -> str:
    """A shell command writing a git config whose core.fsmonitor runs the payload (to stdout)."""
    return f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n'"


@pytest.fixture
def global_config(outside: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """The user's global config file (outside the roots), set for the supervisor (this process's
    environment) and for the user's git (the returned env)."""
    path = outside / "gitconfig"
    path.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return path, {**ENV, "GIT_CONFIG_GLOBAL": str(path)}


@pytest.mark.parametrize("key", ["include.path", "includeIf.gitdir:{ws}/.path", "includeIf.onbranch:*.path"])
@pytest.mark.parametrize("existing", [False, True])
async def test_a_global_include_into_the_workdir(
    sup: Supervisor,
    workspace: Path,
    global_config: tuple[Path, dict[str, str]],
    key: str,
    existing: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The global config includes `<workspace>/.gitconfig-work`: missing when the run starts (the
    sandbox creates it), or the user's harmless file rewritten in place (same inode). The supervisor also
    warns that the file lies in a writable root (the scan acts only after the run)."""
    path, env = global_config
    make_repo(workspace)
    target = workspace / ".gitconfig-work"
    section, _, name = key.format(ws=workspace).rpartition(".")
    sect, _, sub = section.partition(".")
    path.write_text(f'[{sect} "{sub}"]\n\t{name} = {target}\n' if sub else f"[{sect}]\n\t{name} = {target}\n")
    if existing:
        target.write_text("[user]\n\tname = me\n")
    ino = target.stat().st_ino if existing else None
    r = await plant(sup, workspace, f"{fsmonitor(workspace)} >> {target.name}")
    if ino is not None:
        assert os.stat(workspace / f"{target.name}.corral-quarantined").st_ino == ino  # rewritten in place
    assert str(target) in [p for p, _ in r.quarantined], r.quarantined
    assert str(path) in dict(r.quarantined)[str(target)]  # the reason names the including global config
    user_git(workspace, env, "status")
    assert not (workspace / "MARKER").exists(), "the user's git ran code the sandbox wrote"
    assert f"git: {target}: an included git config in a writable root" in caplog.text


async def test_an_include_of_a_global_include(
    sup: Supervisor, workspace: Path, outside: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    """The global config includes a file outside the roots, which includes one in the workdir."""
    path, env = global_config
    make_repo(workspace)
    (outside / "more.inc").write_text(f"[include]\n\tpath = {workspace}/team.inc\n")
    path.write_text("[include]\n\tpath = more.inc\n")  # relative: from the including file's directory
    r = await plant(sup, workspace, f"{fsmonitor(workspace)} > team.inc")
    assert str(workspace / "team.inc") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace, env, "status")
    assert not (workspace / "MARKER").exists(), "the user's git ran code the sandbox wrote"


async def test_the_xdg_global_config_and_a_dotfiles_link(
    sup: Supervisor, workspace: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GIT_CONFIG_GLOBAL: git reads `$XDG_CONFIG_HOME/git/config`, here the user's dotfiles symlink
    (outside the roots, followed) to the real file, which includes a file in the workdir."""
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(outside))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(outside / "xdg"))
    (outside / "dotfiles").mkdir()
    (outside / "dotfiles" / "gitconfig").write_text(f"[include]\n\tpath = {workspace}/w.inc\n")
    (outside / "xdg" / "git").mkdir(parents=True)
    (outside / "xdg" / "git" / "config").symlink_to(outside / "dotfiles" / "gitconfig")
    env = {k: v for k, v in ENV.items() if k != "GIT_CONFIG_GLOBAL"}
    env.update(HOME=str(outside), XDG_CONFIG_HOME=str(outside / "xdg"))
    make_repo(workspace)
    r = await plant(sup, workspace, f"{fsmonitor(workspace)} > w.inc")
    assert str(workspace / "w.inc") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace, env, "status")
    assert not (workspace / "MARKER").exists(), "the user's git ran code the sandbox wrote"


@pytest.mark.parametrize("value", ["{ws}/.githooks", ".githooks"])
async def test_a_global_hooks_path_into_the_workdir(
    sup: Supervisor, workspace: Path, global_config: tuple[Path, dict[str, str]], value: str
) -> None:
    """`core.hooksPath` in the global config: an absolute directory in the workdir, or a relative one
    (git takes it from each repository's worktree). The sandbox creates it with a pre-commit hook."""
    path, env = global_config
    make_repo(workspace)
    path.write_text(f"[core]\n\thooksPath = {value.format(ws=workspace)}\n")
    hook = f"mkdir -p .githooks && printf '#!/bin/sh\\n{payload(workspace)}\\n' > .githooks/pre-commit"
    r = await plant(sup, workspace, hook + " && chmod +x .githooks/pre-commit")
    assert str(workspace / ".githooks" / "pre-commit") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace, env, "commit", "-q", "--allow-empty", "-m", "the user's commit")
    assert not (workspace / "MARKER").exists(), "a hook the sandbox wrote ran in the user's commit"


async def test_a_global_include_added_after_a_snapshot(
    sup: Supervisor, workspace: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    """A first run of a small tree leaves a snapshot (later runs are answered from it without a scan);
    then the user adds an include into the workdir to their global config. The next run writes the
    included file: the quick check must see the global config changed and scan."""
    path, env = global_config
    make_repo(workspace)
    r1 = await plant(sup, workspace, "true")
    assert r1.quarantined == ()
    assert (await plant(sup, workspace, "true")).quarantined == ()  # a key's second scan takes the snapshot
    quick = sup._listings.quick
    r2 = await plant(sup, workspace, "true")
    assert r2.quarantined == ()
    assert sup._listings.quick == quick + 1, "no snapshot was taken (the test would prove nothing)"
    path.write_text(f"[include]\n\tpath = {workspace}/late.inc\n")
    r3 = await plant(sup, workspace, f"{fsmonitor(workspace)} > late.inc")
    assert str(workspace / "late.inc") in [p for p, _ in r3.quarantined], r3.quarantined
    user_git(workspace, env, "status")
    assert not (workspace / "MARKER").exists(), "the user's git ran code the sandbox wrote"


async def test_a_link_planted_on_the_way_to_a_global_include(
    sup: Supervisor, workspace: Path, outside: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    """The global config includes `<workspace>/conf/team.inc`; the sandbox makes `conf` a link to a host
    directory. The scan does not follow it (the link, made during the run, is moved aside: git would
    follow it), and writes nothing there."""
    path, _env = global_config
    path.write_text(f"[include]\n\tpath = {workspace}/conf/team.inc\n")
    (outside / "d").mkdir()
    r = await plant(sup, workspace, f"ln -s {outside}/d conf")
    assert any(p == str(workspace / "conf") and "symlink" in why for p, why in r.quarantined), r.quarantined
    assert not (workspace / "conf").is_symlink()
    assert list((outside / "d").iterdir()) == []


async def test_a_relative_global_hooks_path_in_a_repository_without_config(
    sup: Supervisor, workspace: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    """A repository the sandbox makes and then removes the config of (git works without one): the users'
    global relative `core.hooksPath` still applies to it."""
    path, env = global_config
    path.write_text("[core]\n\thooksPath = .githooks\n")
    hook = f"printf '#!/bin/sh\\n{payload(workspace)}\\n' > sub/.githooks/pre-commit"
    r = await plant(
        sup,
        workspace,
        "git init -q sub && rm sub/.git/config && mkdir sub/.githooks && "
        + hook
        + " && chmod +x sub/.githooks/pre-commit",
    )
    assert str(workspace / "sub" / ".githooks" / "pre-commit") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace / "sub", env, "commit", "-q", "--allow-empty", "-m", "the user's commit")
    assert not (workspace / "MARKER").exists(), "a hook the sandbox wrote ran in the user's commit"


async def test_a_global_config_inside_the_writable_root(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's home lies inside the writable root (`--allow-write /home` style): their `~/.gitconfig`
    there, unchanged, includes `~/w.inc`, which the sandbox writes. The scan reads that global config
    itself, beneath the root's fd, and checks what it includes."""
    home = workspace / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[include]\n\tpath = ~/w.inc\n")
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    env = {k: v for k, v in ENV.items() if k != "GIT_CONFIG_GLOBAL"}
    env["HOME"] = str(home)
    make_repo(workspace / "repo")
    r = await plant(sup, workspace, f"{fsmonitor(workspace)} > home/w.inc")
    assert str(home / "w.inc") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace / "repo", env, "status")
    assert not (workspace / "MARKER").exists(), "the user's git ran code the sandbox wrote"


@pytest.mark.parametrize(
    ("setting", "user_runs"),
    [
        ("core.fsmonitor = {prog}", ("status",)),
        ("alias.t = !{prog}", ("t",)),
        ("core.editor = {prog}", ("commit", "-q", "--amend")),
    ],
)
async def test_a_program_the_global_config_runs_from_the_workdir(
    sup: Supervisor,
    workspace: Path,
    global_config: tuple[Path, dict[str, str]],
    setting: str,
    user_runs: tuple[str, ...],
) -> None:
    """The user's global config runs a program kept in the workdir (a team's fsmonitor hook, an alias, an
    editor script); the sandbox rewrites it in place. Moved aside after the run."""
    path, env = global_config
    make_repo(workspace)
    prog = workspace / "tools" / "prog"
    prog.parent.mkdir()
    prog.write_text("#!/bin/sh\ncat\n")
    prog.chmod(0o755)
    section, _, rest = setting.format(prog=prog).partition(".")
    path.write_text(f"[{section}]\n\t{rest}\n")
    r = await plant(sup, workspace, f"printf '#!/bin/sh\\n{payload(workspace)}\\ncat\\n' > tools/prog")
    assert str(prog) in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace, env, *user_runs)
    assert not (workspace / "MARKER").exists(), "the user's git ran a program the sandbox rewrote"


async def test_an_include_set_in_the_environment(
    sup: Supervisor,
    workspace: Path,
    global_config: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """git's command-line settings in the user's environment (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_0 =
    include.path`) name a file in the workdir."""
    _path, env = global_config
    settings = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "include.path"}
    settings["GIT_CONFIG_VALUE_0"] = str(workspace / "env.inc")
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    make_repo(workspace)
    r = await plant(sup, workspace, f"{fsmonitor(workspace)} > env.inc")
    assert str(workspace / "env.inc") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace, {**env, **settings}, "status")
    assert not (workspace / "MARKER").exists(), "the user's git ran code the sandbox wrote"
