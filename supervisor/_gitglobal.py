"""The host user's own git configuration (global and system), read for the post-run git scan
(supervisor/_gitscan.py): what in it names a file or directory under a writable root.

git reads, in every repository, the system config (`$GIT_CONFIG_SYSTEM`, else /etc/gitconfig, unless
`$GIT_CONFIG_NOSYSTEM`) and the user's global config (`$GIT_CONFIG_GLOBAL`, else `$XDG_CONFIG_HOME/git/config`
or `~/.config/git/config`, and `~/.gitconfig`), with the files they include (`include.path`,
`includeIf.<cond>.path`), and git's command-line settings from the environment (`GIT_CONFIG_COUNT`,
`GIT_CONFIG_KEY_<n>`, `GIT_CONFIG_VALUE_<n>`). When one of those names a file under a writable root
(`includeIf "gitdir:~/work/"` with `path = ~/work/.gitconfig-work`), `core.hooksPath` names a directory
there, or a setting runs a program kept there, a sandbox writes what the user's next git command reads as
config (running `core.fsmonitor`, `core.pager`...), runs as hooks or runs as that program.

Whose configuration counts: the caller's, as its environment says (`HOME`, `XDG_CONFIG_HOME`,
`GIT_CONFIG_GLOBAL`, `GIT_CONFIG_SYSTEM`, `GIT_CONFIG_NOSYSTEM`): the user who runs corral runs git there
later; and the default locations in the home directory (from the password database) of the effective user
and of the owner of each writable root: under a root caller (`sudo corral run` in a developer's checkout) the
sandbox runs as the workdir's owner, and that account is the one whose git works on the tree afterwards,
while `sudo` may have left HOME at /root or at the developer's home.

How it is read (this runs in the scan's worker thread, never on the event loop): component by component
from "/", each opened O_PATH | O_NOFOLLOW from its parent's fd; a symlink is followed only when the directory
holding it is outside every writable root (the user's own dotfiles link, `~/.gitconfig ->
dotfiles/gitconfig`, which no sandbox could have made); one below a writable root is not followed, and that
file is not read (the scan looks at the files at a root's top itself). Then O_NONBLOCK, a regular file only,
at most 1 MiB, at most 32 files (includes of includes to git's depth of 10).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from supervisor.sandbox import _absent, _gitconfig
from supervisor.sandbox._csample import stat_at

MAX_FILE = 1 << 20
MAX_FILES = 32
MAX_DEPTH = 10
_MAX_LINKS = 40


@dataclass
class Refs:
    """What the user's global and system git configuration names.

    `includes`: (absolute path of an included file, the config that includes it, what `~` means there);
    `hooks`: (the
    `core.hooksPath` value made absolute when it is absolute or `~/`, else None, the raw relative value
    when relative (git takes it from each repository's worktree), the config that sets it); `watched`:
    the paths whose change means this must be read again (every config file looked for outside the
    writable roots, found or not, and the real path of each one read through the user's links, whose edits
    the link does not show); `in_roots`: the global config files looked for under a writable root (not
    read here: the scan reads them beneath the root's fd), each with what `~` means in it; `programs`:
    (absolute path, key, the config that sets it) of each program a setting runs that is named by an
    absolute or `~/` path (`core.fsmonitor = ~/bin/watch`, `alias.x = !/opt/x`, a credential helper)."""

    includes: list[tuple[str, str, str]] = field(default_factory=list)
    hooks: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    watched: list[str] = field(default_factory=list)
    in_roots: list[tuple[str, str]] = field(default_factory=list)
    programs: list[tuple[str, str, str]] = field(default_factory=list)
    #: (absolute path, the config that sets it, what `~` means there) of each `init.templateDir`: git
    #: copies its `hooks/` and `config` into every repository `git init` or `git clone` makes (a clone runs
    #: the post-checkout hook at once).
    templates: list[tuple[str, str, str]] = field(default_factory=list)
    #: The configs of repositories around a writable root (`enclosing`), by path: what to call them.
    enclosing: dict[str, str] = field(default_factory=dict)

    def label(self, via: str) -> str:
        """What to call the config `via` in a reason or a warning."""
        return self.enclosing.get(via) or f"the global git config {via}"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def config_files(roots: Sequence[str], env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The (path, home) of every global or system git config file the host users who may run git on
    `roots` read (module docstring), `home` being what `~` means in it; missing ones included."""
    env = os.environ if env is None else env
    out: list[tuple[str, str]] = []
    home = env.get("HOME") or ""

    def add(path: str, h: str) -> None:
        if path and os.path.isabs(path) and (path, h) not in out:
            out.append((os.path.normpath(path), h))

    if not _truthy(env.get("GIT_CONFIG_NOSYSTEM")):
        add(env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig", home)
    if "GIT_CONFIG_GLOBAL" in env:
        add(env["GIT_CONFIG_GLOBAL"], home)
    else:
        xdg = env.get("XDG_CONFIG_HOME") or (os.path.join(home, ".config") if home else "")
        if xdg:
            add(os.path.join(xdg, "git", "config"), home)
        if home:
            add(os.path.join(home, ".gitconfig"), home)
    uids = {os.geteuid()}
    for root in roots:
        try:
            uids.add(os.stat(root).st_uid)
        except OSError:
            continue
    for uid in sorted(uids):
        try:
            h = pwd.getpwuid(uid).pw_dir
        except KeyError:
            continue
        if h and h != home:
            add(os.path.join(h, ".config", "git", "config"), h)
            add(os.path.join(h, ".gitconfig"), h)
    return out


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r.rstrip("/") or path.startswith(r.rstrip("/") + "/") for r in roots)


def read(path: str, roots: Sequence[str], real: list[str] | None = None) -> bytes | None:
    """The bytes of the config file `path`, or None when it is missing, not a regular file, larger than
    MAX_FILE, or reached only through a symlink in a directory under one of `roots` (never followed: a
    sandbox may have planted it). Links elsewhere (the user's own) are followed, 40 at most. `real`, when
    given, gets the path the file was found at (links resolved) when it differs from `path`. Never raises
    for the filesystem's sake (an error reading it, EIO or EPERM, is None too)."""
    parts = [p for p in path.split("/") if p]
    done = "/"
    links = 0
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                nxt = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd, done = nxt, os.path.dirname(done)
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS or _under(done, roots):
                    return None  # below a writable root: a sandbox may have made it
                try:
                    target = os.readlink(name, dir_fd=fd)
                except OSError:
                    return None
                if target.startswith("/"):
                    os.close(fd)
                    fd, done = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), "/"
                parts = [p for p in target.split("/") if p] + parts
                continue
            if parts:
                try:
                    nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    return None
                os.close(fd)
                fd, done = nxt, os.path.join(done, name)
                continue
            if real is not None and os.path.join(done, name) != path:
                real.append(os.path.join(done, name))
            return _read_leaf(fd, name)
        return None
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_leaf(dirfd: int, name: str) -> bytes | None:
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dirfd
        )
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EACCES, errno.ENOTDIR):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
            return None
        data = os.read(fd, MAX_FILE + 1)
        return data if len(data) <= MAX_FILE else None
    finally:
        os.close(fd)


def _expand(value: bytes, base: str, home: str) -> str | None:
    """A path setting as git expands it: `~/` the home, relative ones from `base` (None: `~user` forms
    and empty values, which are not followed here)."""
    text = value.decode("utf-8", errors="surrogateescape")
    if not text:
        return None
    if text == "~" or text.startswith("~/"):
        if not home:
            return None
        text = os.path.join(home, text[2:])
    elif text.startswith("~"):
        try:
            user, _, rest = text[1:].partition("/")
            text = os.path.join(pwd.getpwnam(user).pw_dir, rest)
        except KeyError:
            return None
    return os.path.normpath(os.path.join(base, text))


#: Settings whose value is a command git runs: exact names, and (section, last key) of subsectioned ones.
_PROGRAM_KEYS = frozenset(
    {
        "core.fsmonitor",
        "core.pager",
        "core.editor",
        "core.sshcommand",
        "core.askpass",
        "core.gitproxy",
        "credential.helper",
        "gpg.program",
        "sequence.editor",
        "diff.external",
        "uploadpack.packobjectshook",
        "interactive.difffilter",
        "core.alternaterefscommand",
        # git send-email's (also per identity, `sendemail.<identity>.tocmd`: _PROGRAM_SUBKEYS)
        "sendemail.tocmd",
        "sendemail.cccmd",
        "sendemail.headercmd",
        "sendemail.smtpserver",  # a path there is a sendmail-like program
        "sendemail.sendmailcmd",
        "imap.tunnel",  # git imap-send runs it (a shell command) instead of connecting
        "instaweb.httpd",  # git instaweb starts it
    }
)
_PROGRAM_SUBKEYS = frozenset(
    {
        ("credential", "helper"),
        ("gpg", "program"),
        ("diff", "command"),
        ("diff", "textconv"),
        ("filter", "clean"),
        ("filter", "smudge"),
        ("filter", "process"),
        ("merge", "driver"),
        ("mergetool", "cmd"),
        ("mergetool", "path"),
        ("difftool", "cmd"),
        ("difftool", "path"),
        # the command `git fetch`/`pull`/`push` run for a local or ssh remote (`remote.<name>.uploadpack`)
        ("remote", "uploadpack"),
        ("remote", "receivepack"),
        ("gpg", "defaultkeycommand"),  # gpg.ssh.defaultKeyCommand
        ("man", "cmd"),
        ("man", "path"),
        ("browser", "cmd"),
        ("browser", "path"),
        ("sendemail", "tocmd"),
        ("sendemail", "cccmd"),
        ("sendemail", "headercmd"),
        ("sendemail", "smtpserver"),  # a path there is a sendmail-like program
        ("sendemail", "sendmailcmd"),
        ("lfs", "path"),  # lfs.customtransfer.<name>.path
        ("lfs", "clean"),  # lfs.extension.<name>.clean
        ("lfs", "smudge"),
        ("trailer", "cmd"),  # trailer.<token>.cmd: `git commit --trailer`, `git interpret-trailers`
        ("trailer", "command"),
        ("guitool", "cmd"),  # git gui's Tools menu
        ("hook", "command"),  # config-based hooks of later git versions (hook.<name>.command)
    }
)


def runs_program(key: str, value: bytes) -> bool:
    """Whether the setting `key` (as _gitconfig names it) runs its value as a command."""
    section, _, last = key.partition(".")
    if key in _PROGRAM_KEYS or section == "pager":
        return True
    if section == "alias" or (section == "submodule" and last.endswith(".update")):
        return value.lstrip().startswith(b"!")  # `submodule.<name>.update = !command`, from a config
    return "." in last and (section, last.rpartition(".")[2]) in _PROGRAM_SUBKEYS


def program_paths(value: bytes, home: str, worktree: str | None = None) -> list[str]:
    """The files a command value runs or hands to a program, named by an absolute or `~/` path (or, in a
    repository's config, `worktree` given, a relative path with a slash: git runs it from the worktree's
    top): each word (after an alias's `!`; the program and its arguments, `python3 ~/bin/strip.py`), at
    most 16, but options and the word after one. A bare name is looked up in PATH (or is
    `git credential-<name>`): not one."""
    text = value.decode("utf-8", errors="surrogateescape").lstrip().removeprefix("!").lstrip()
    out: list[str] = []
    after_option = False
    for raw in text.split()[:16]:
        word = raw.strip("'\"")
        if after_option or word.startswith("-"):
            # an option's value (`store --file ~/.git-credentials`: data, not code), or the option
            after_option = word.startswith("-") and "=" not in word
            continue
        if worktree is not None and "/" in word and not word.startswith(("/", "~", "-")):
            out.append(os.path.normpath(os.path.join(worktree, word)))
        elif word.startswith("/") or word.startswith("~/"):
            path = _expand(word.encode("utf-8", errors="surrogateescape"), "/", home)
            if path is not None:
                out.append(path)
    return out


def enclosing(roots: Sequence[str], refs: Refs) -> list[tuple[str, str]]:
    """The config files of the repository of each writable root whose git dir lies outside every root, and
    of the repository around it: the root's own `.git` FILE (a linked worktree's or a submodule
    checkout's `gitdir:`: its git dir and common dir are elsewhere), and the nearest `.git` above the root
    (a directory, or a `.git` file's `gitdir:`), as git finds it from the root's parent up, when it lies
    in no writable root (one there is scanned). Their config, `config.worktree` and common dir's config
    (a linked worktree's `commondir`) are read like a global one: what they include, the hooks directory
    they name (relative to that repository's worktree) and the programs they run, when under a root, are
    checked by the scan, and so are the hooks there that are links into a root. (The user's
    `/p/.git/config` with `include.path = ../tools/git.cfg` and `--workdir /p/tools`: the sandbox wrote
    core.fsmonitor there and the user's `git status` in /p ran it; a linked worktree as the workdir whose
    main repository sets `core.hooksPath = .husky`: the sandbox made `.husky/pre-commit` in the worktree.)
    Returns (config path, worktree); adds to `refs.watched` each `.git` looked for and not found (so that
    one made later is seen) and each `.git` file read."""
    out: list[tuple[str, str]] = []
    for root in roots:
        top = os.path.normpath(root)
        own = os.path.join(top, ".git")
        try:
            st = os.lstat(own)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            gitdir = _gitdir_of(own, top, roots, refs)
            if gitdir is not None and not _under(gitdir, roots):
                _add_repo(gitdir, top, roots, refs, out, "of a root, whose git dir is elsewhere")
        d = os.path.dirname(top)
        while not _under(d, roots):
            dotgit = os.path.join(d, ".git")
            gitdir = _gitdir_of(dotgit, d, roots, refs)
            if gitdir is not None:
                _add_repo(gitdir, d, roots, refs, out, "around a root")
                break
            if d == "/":
                break
            d = os.path.dirname(d)
    return out


def _add_repo(
    gitdir: str, worktree: str, roots: Sequence[str], refs: Refs, out: list[tuple[str, str]], where: str
) -> None:
    """Note the configs (and hook links) of the git dir `gitdir`, outside the roots, whose worktree is
    `worktree` (`enclosing`)."""
    configs = [os.path.join(gitdir, "config"), os.path.join(gitdir, "config.worktree")]
    common = read(os.path.join(gitdir, "commondir"), roots)
    commondir = gitdir
    if common is not None and common.strip():
        text = common.strip().decode("utf-8", errors="surrogateescape")
        commondir = os.path.normpath(os.path.join(gitdir, text))
        configs.append(os.path.join(commondir, "config"))
    if not _under(commondir, roots):
        _hook_links(os.path.join(commondir, "hooks"), configs[0], refs)
    for config in configs:
        if not _under(config, roots) and (config, worktree) not in out:
            out.append((config, worktree))
            refs.enclosing[config] = f"the git config {config} (of the repository {where})"


def _hook_links(hooks: str, via: str, refs: Refs) -> None:
    """Each hook in the directory `hooks` (of a repository around a root: outside every root) that is a
    symlink: git runs what it leads to, which may be a file in the tree below (`ln -s
    ../../tools/pre-commit .git/hooks/`); noted among `refs.programs` (the scan moves the target aside
    when a run wrote it). At most 256 entries; the directory is watched (a link added later is seen)."""
    refs.watched.append(hooks)
    try:
        with os.scandir(hooks) as it:
            for i, entry in enumerate(it):
                if i >= 256:
                    break
                if entry.name.endswith(".sample") or not entry.is_symlink():
                    continue
                try:
                    link = os.readlink(entry.path)
                except OSError:
                    continue
                refs.programs.append(
                    (os.path.normpath(os.path.join(hooks, link)), f"hooks/{entry.name}", via)
                )
    except OSError:
        return


def _gitdir_of(dotgit: str, worktree: str, roots: Sequence[str], refs: Refs) -> str | None:
    """The git dir `dotgit` (a worktree's `.git`, outside every root) leads to: itself when a directory,
    the `gitdir:` of a `.git` file; None when there is none (then watched, so that one made later is
    seen)."""
    try:
        st = os.lstat(dotgit)
    except OSError:
        refs.watched.append(dotgit)
        return None
    if stat.S_ISDIR(st.st_mode):
        return dotgit
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(dotgit)  # outside every root: the user's own link
        return real if os.path.isdir(real) else None
    refs.watched.append(dotgit)
    data = read(dotgit, roots)
    if data is None or not data.startswith(b"gitdir:"):
        return None
    target = data[7:].split(b"\0", 1)[0].strip().decode("utf-8", errors="surrogateescape")
    return os.path.normpath(os.path.join(worktree, target)) if target else None


def references(roots: Sequence[str], env: Mapping[str, str] | None = None) -> Refs:
    """What the global and system git configuration of the users who may run git on `roots` names
    (`Refs`), read as the module docstring says. Never raises for the filesystem's sake: what cannot be
    read is skipped (git could not read it either, or it lies behind a link corral does not follow)."""
    refs = Refs()
    env = os.environ if env is None else env
    queue: list[tuple[str, str, int, str | None]] = [
        (path, home, 0, None) for path, home in config_files(roots, env)
    ]
    home = env.get("HOME", "")
    via = "$GIT_CONFIG_KEY_<n> (the environment)"
    queue += [(target, home, 1, None) for target in _note(refs, _env_entries(env), via, None, home)]
    queue += [(path, home, 0, worktree) for path, worktree in enclosing(roots, refs)]
    seen: set[str] = set()
    while queue and len(seen) < MAX_FILES:
        path, home, depth, worktree = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        if _under(path, roots):
            # A global config, or a file one includes, that a sandbox may write: the scan reads it itself
            # beneath the root's fd (checked like an included file, with its own includes), each time.
            refs.in_roots.append((path, home))
            continue
        refs.watched.append(path)
        data = read(path, roots, refs.watched)
        if data is None:
            continue
        try:
            entries = _gitconfig.parse(data)
        except _gitconfig.ConfigSyntaxError:
            continue  # git refuses the file (and every command with it)
        if worktree is not None and path not in refs.enclosing:
            refs.enclosing[path] = f"the git config {path} (included by the repository's around a root)"
        for target in _note(refs, entries, path, os.path.dirname(path), home, worktree):
            if depth + 1 < MAX_DEPTH:
                queue.append((target, home, depth + 1, worktree))
    return refs


def of_config(
    entries: list[tuple[str, bytes | None]], via: str, home: str, worktree: str
) -> tuple[Refs, list[str]]:
    """What the settings `entries` of the config file `via` (outside the roots, which a repository's
    config in a root includes: relative paths from its directory; hooks directory and programs from the
    repository's `worktree`) name, and the files it includes (`_note`)."""
    refs = Refs()
    included = _note(refs, entries, via, os.path.dirname(via), home, worktree)
    return refs, included


def _note(
    refs: Refs,
    entries: list[tuple[str, bytes | None]],
    via: str,
    base: str | None,
    home: str,
    worktree: str | None = None,
) -> list[str]:
    """Add to `refs` what the settings `entries` of the config `via` name (relative paths from `base`;
    None: none allowed, as for git's command-line settings), and return the files they include.
    `worktree`: the config is a repository's (`enclosing`), whose relative hooks directory and programs
    are taken from its worktree, as git takes them."""
    included: list[str] = []
    for key, value in entries:
        if value is None:
            continue
        text = value.decode("utf-8", errors="surrogateescape")
        relative = not (text.startswith("/") or text.startswith("~"))
        if key.endswith(".path") and (key.startswith("include.") or key.startswith("includeif.")):
            target = None if relative and base is None else _expand(value, base or "/", home)
            if target is not None:
                refs.includes.append((target, via, home))
                included.append(target)
        elif runs_program(key, value):
            for program in program_paths(value, home, worktree):
                refs.programs.append((program, key, via))
        if key == "init.templatedir" and text and not relative:
            template = _expand(value, "/", home)
            if template is not None:
                refs.templates.append((template, via, home))
        if key == "core.hookspath" and text:
            if not relative:
                refs.hooks.append((_expand(value, "/", home), None, via))
            elif worktree is not None:
                refs.hooks.append((os.path.normpath(os.path.join(worktree, text)), None, via))
            else:
                refs.hooks.append((None, text, via))
    return included


def _env_entries(env: Mapping[str, str]) -> list[tuple[str, bytes | None]]:
    """git's command-line settings from the environment (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_<n>`,
    `GIT_CONFIG_VALUE_<n>`), named as _gitconfig names them (section and key in lower case)."""
    try:
        count = min(int(env.get("GIT_CONFIG_COUNT", "0")), 256)
    except ValueError:
        return []
    out: list[tuple[str, bytes | None]] = []
    for i in range(max(count, 0)):
        key = env.get(f"GIT_CONFIG_KEY_{i}", "")
        section, _, rest = key.partition(".")
        middle, _, last = rest.rpartition(".")
        name = ".".join(p for p in (section.lower(), middle, last.lower()) if p)
        out.append((name, os.fsencode(env.get(f"GIT_CONFIG_VALUE_{i}", ""))))
    return out


_CTIME = struct.Struct("=5Q")


def identity(paths: Sequence[str]) -> bytes:
    """What tells that none of `paths` changed since: device, inode, mode, owner and ctime of each, or its
    errno (`_csample.stat_at`: one C call, an fstatat with AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT each from
    an fd of `/` kept open; no link in the last component followed, nothing opened, so a FIFO or a device
    planted there cannot block the caller: the event loop's quick check uses this). An edit of a file the
    user reaches through a link shows in its real path, which `references` also watches."""
    key = tuple(paths)
    args = _ARGS.get(key)
    if args is None:
        if len(_ARGS) >= 64:  # bounded: one list per set of roots in use
            _ARGS.clear()
        args = _ARGS[key] = ([_absent.root_fd()] * len(paths), [_absent.relative(p) for p in paths])
    return stat_at(*args)


#: identity's arguments to stat_at per list of paths (the quick check asks for the same list after each run).
_ARGS: dict[tuple[str, ...], tuple[list[int], list[bytes]]] = {}


def newest_ctime(ident: bytes) -> int:
    """The latest ctime (ns) in an `identity`."""
    return max((_CTIME.unpack_from(ident, i)[4] for i in range(0, len(ident), 40)), default=0)
