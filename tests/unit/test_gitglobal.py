"""supervisor/_gitglobal.py: which global git configs are read, and how (real files in tmp_path; the
attacks from inside a sandbox are in tests/kernel/test_attack_git_global.py)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from supervisor import _gitglobal, _gitscan


def test_which_files_git_reads() -> None:
    env = {"HOME": "/h", "XDG_CONFIG_HOME": "/x"}
    files = [p for p, _h in _gitglobal.config_files([], env)]
    assert files[:3] == ["/etc/gitconfig", "/x/git/config", "/h/.gitconfig"]
    env = {"HOME": "/h", "GIT_CONFIG_GLOBAL": "/g", "GIT_CONFIG_SYSTEM": "/s"}
    assert [p for p, _h in _gitglobal.config_files([], env)][:2] == ["/s", "/g"]  # GLOBAL replaces both
    env = {"HOME": "/h", "GIT_CONFIG_NOSYSTEM": "true"}
    files = [p for p, _h in _gitglobal.config_files([], env)]
    assert "/etc/gitconfig" not in files
    assert files[:2] == ["/h/.config/git/config", "/h/.gitconfig"]


def test_the_owner_of_a_root_counts(tmp_path: Path) -> None:
    """A root owned by another account (under a root caller the sandbox runs as it, and that account
    runs git there later): its home's default configs are read too."""
    if os.geteuid() == 0:
        owner = pwd.getpwnam("daemon")
        root = tmp_path / "checkout"
        root.mkdir()
        os.chown(root, owner.pw_uid, owner.pw_gid)
    else:  # an ordinary caller: a root-owned tree stands for the other account's
        owner, root = pwd.getpwuid(0), Path("/usr")
    files = _gitglobal.config_files([str(root)], {"HOME": "/h"})
    assert (os.path.join(owner.pw_dir, ".gitconfig"), owner.pw_dir) in files


def test_read_follows_the_users_links_but_not_one_below_a_root(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    (tmp_path / "dotfiles" / "gitconfig").write_bytes(b"[user]\n\tname = me\n")
    (tmp_path / "link").symlink_to("dotfiles/gitconfig")
    assert _gitglobal.read(str(tmp_path / "link"), []) == b"[user]\n\tname = me\n"
    root = tmp_path / "root"
    root.mkdir()
    (root / "inc").symlink_to(tmp_path / "dotfiles" / "gitconfig")
    (root / "d").symlink_to(tmp_path / "dotfiles")
    assert _gitglobal.read(str(root / "inc"), [str(root)]) is None  # a sandbox may have planted it
    assert _gitglobal.read(str(root / "d" / "gitconfig"), [str(root)]) is None
    assert _gitglobal.read(str(root / "inc"), []) is not None  # not below a root: the user's own link


def test_read_refuses_fifos_and_huge_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert _gitglobal.read(str(tmp_path / "fifo"), []) is None  # not opened for reading: no block
    with open(tmp_path / "huge", "wb") as f:
        f.truncate(_gitglobal.MAX_FILE + 1)
    assert _gitglobal.read(str(tmp_path / "huge"), []) is None
    assert _gitglobal.read(str(tmp_path / "missing"), []) is None


def test_references(tmp_path: Path) -> None:
    g = tmp_path / "g"
    g.write_text(
        '[include]\n\tpath = more\n[includeIf "gitdir:~/w/"]\n\tpath = ~/w/team.inc\n'
        "[core]\n\thooksPath = .githooks\n"
    )
    (tmp_path / "more").write_text("[core]\n\thooksPath = ~/hooks\n[include]\n\tpath = /abs/x\n")
    refs = _gitglobal.references([], {"GIT_CONFIG_GLOBAL": str(g), "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/h"})
    assert (str(tmp_path / "more"), str(g), "/h") in refs.includes
    assert ("/h/w/team.inc", str(g), "/h") in refs.includes
    assert ("/abs/x", str(tmp_path / "more"), "/h") in refs.includes
    assert (None, ".githooks", str(g)) in refs.hooks
    assert ("/h/hooks", None, str(tmp_path / "more")) in refs.hooks
    assert str(tmp_path / "more") in refs.watched
    assert "/abs/x" in refs.watched  # missing: created later, it is noticed


def test_an_include_loop_ends(tmp_path: Path) -> None:
    g = tmp_path / "g"
    g.write_text("[include]\n\tpath = g\n")
    refs = _gitglobal.references([], {"GIT_CONFIG_GLOBAL": str(g), "GIT_CONFIG_NOSYSTEM": "1"})
    assert refs.watched.count(str(g)) == 1


def test_identity_sees_a_rewrite_in_place_a_new_file_and_an_edit_through_a_link(tmp_path: Path) -> None:
    f = tmp_path / "c"
    f.write_text("a")
    paths = [str(f), str(tmp_path / "new")]
    before = _gitglobal.identity(paths)
    assert before == _gitglobal.identity(paths)
    with open(f, "a") as fp:
        fp.write("b")
    after = _gitglobal.identity(paths)
    assert after != before
    (tmp_path / "new").write_text("")
    assert _gitglobal.identity(paths) != after
    # A global config read through the user's dotfiles link: its real path is watched too.
    (tmp_path / "real").write_text("[user]\n\tname = me\n")
    (tmp_path / "link").symlink_to("real")
    refs = _gitglobal.references(
        [], {"GIT_CONFIG_GLOBAL": str(tmp_path / "link"), "GIT_CONFIG_NOSYSTEM": "1"}
    )
    assert str(tmp_path / "real") in refs.watched
    ident = _gitglobal.identity(refs.watched)
    with open(tmp_path / "real", "a") as fp:
        fp.write("[include]\n\tpath = x\n")
    assert _gitglobal.identity(refs.watched) != ident


def test_a_global_config_under_a_writable_root_is_left_to_the_scan(tmp_path: Path) -> None:
    """The home as a writable root: ~/.gitconfig is not read here (a sandbox may write it; the scan reads
    it beneath the root's fd), nor watched by the identity the event loop's quick check takes."""
    (tmp_path / ".gitconfig").write_text("[include]\n\tpath = ~/x.inc\n")
    refs = _gitglobal.references([str(tmp_path)], {"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
    assert (str(tmp_path / ".gitconfig"), str(tmp_path)) in refs.in_roots
    assert str(tmp_path / ".gitconfig") not in refs.watched
    assert refs.includes == []


def test_programs_named_by_path(tmp_path: Path) -> None:
    g = tmp_path / "g"
    g.write_text(
        "[core]\n\tfsmonitor = ~/bin/watch --flag\n\tpager = less -R\n"
        '[alias]\n\tt = "!/opt/t x"\n\tst = status\n'
        '[credential "https://h"]\n\thelper = /usr/local/bin/h\n[credential]\n\thelper = store\n'
        '[diff "x"]\n\ttextconv = \'/w/conv\'\n[filter "f"]\n\tprocess = git-lfs filter-process\n'
    )
    refs = _gitglobal.references([], {"GIT_CONFIG_GLOBAL": str(g), "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/h"})
    assert sorted(p for p, _k, _v in refs.programs) == [
        "/h/bin/watch",
        "/opt/t",
        "/usr/local/bin/h",
        "/w/conv",
    ]


def test_settings_from_the_environment(tmp_path: Path) -> None:
    """git's command-line settings in the environment (GIT_CONFIG_COUNT/KEY/VALUE): an absolute include
    and hooksPath count; a relative include does not (git refuses it from the command line)."""
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "HOME": "/h",
        "GIT_CONFIG_COUNT": "3",
        "GIT_CONFIG_KEY_0": "include.path",
        "GIT_CONFIG_VALUE_0": "/w/a.inc",
        "GIT_CONFIG_KEY_1": "Include.Path",
        "GIT_CONFIG_VALUE_1": "rel.inc",
        "GIT_CONFIG_KEY_2": "core.hooksPath",
        "GIT_CONFIG_VALUE_2": "~/hooks",
    }
    refs = _gitglobal.references([], env)
    assert [t for t, _v, _h in refs.includes] == ["/w/a.inc"]
    assert [a for a, _r, _v in refs.hooks] == ["/h/hooks"]
    assert "/w/a.inc" in refs.watched


def test_the_settings_that_run_a_program() -> None:
    """Each setting whose value git (or git-lfs) runs as a command: a file it names in a writable root,
    written during a run, is moved aside (tests/kernel/test_attack_git_programs.py for the attacks)."""
    runs = [
        ("core.fsmonitor", b"tools/fsmon.sh"),
        ("remote.origin.uploadpack", b"tools/up.sh"),
        ("remote.origin.receivepack", b"tools/rp.sh"),
        ("submodule.lib.update", b"!tools/update.sh"),
        ("core.alternaterefscommand", b"tools/refs.sh"),
        ("gpg.ssh.defaultkeycommand", b"tools/key.sh"),
        ("trailer.sign.cmd", b"tools/sign.sh"),
        ("lfs.customtransfer.x.path", b"tools/transfer"),
        ("hook.pre-commit.command", b"tools/lint.sh"),
        # git send-email's, top level and per identity (`sendemail.<identity>.<key>`)
        ("sendemail.tocmd", b"tools/to.sh"),
        ("sendemail.cccmd", b"tools/cc.sh"),
        ("sendemail.headercmd", b"tools/header.sh"),
        ("sendemail.smtpserver", b"tools/sendmail"),  # a path there is a sendmail-like program
        ("sendemail.sendmailcmd", b"tools/sendmail"),
        ("sendemail.work.tocmd", b"tools/to.sh"),
        ("sendemail.work.sendmailcmd", b"tools/sendmail"),
        ("sendemail.work.smtpserver", b"tools/sendmail"),
        ("imap.tunnel", b"tools/imapd ./Maildir"),  # git imap-send
        ("instaweb.httpd", b"tools/httpd -f"),  # git instaweb
        ("guitool.lint.cmd", b"tools/lint.sh"),  # git gui's Tools menu
    ]
    for key, value in runs:
        assert _gitglobal.runs_program(key, value), key
        # and the scan parses a config that sets it (a config without any needle is not parsed)
        assert any(n.decode() in key for n in _gitscan._NEEDLES), key
    assert not _gitglobal.runs_program("submodule.lib.update", b"rebase")
    assert not _gitglobal.runs_program("remote.origin.url", b"/srv/repo.git")
