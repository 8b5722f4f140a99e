"""Reading the files a person points corral at (a policy, a rules file, a seccomp profile) when they may lie
in a directory that sandboxes write.

Such a file may have been replaced since it was written: by a FIFO, which would hold the CLI for ever before
any `--timeout` applies (open(2) of a FIFO waits for a writer), by a symlink to a terminal or a device, by a
directory, or by a huge file. `read_bounded` follows no symlink a sandbox could have planted (a link in
the file's place, or in a directory on its path, is refused with the link named: a later run would
otherwise read the file of the sandbox's choosing, or one the sandbox may not read, whose parse errors
name its keys), opens non-blocking, accepts only a regular file, and reads at most `limit` bytes
(tests/unit/test_policy_file_kinds.py, tests/kernel/test_attack_cli_files.py). Its CONTENT is another
matter: keep such files outside the writable roots (docs/security.md).
"""

from __future__ import annotations

import errno
import os
import stat


def user_file(source: str) -> str:
    """The file a person named: a leading ``~`` or ``~/`` made the caller's home directory, as in a policy's
    paths and `--allow-write` (``os.path.expanduser``: ``$HOME``, else the password database). Raises
    ValueError for ``~user/...`` and a leading ``$``, which are not expanded.

    Why: `--policy=~/ci.toml` (no shell expands a ``~`` after ``=``, nor a quoted one) named ``./~/ci.toml``,
    a directory called ``~`` in the current directory, which a sandbox that may write the workdir can make:
    the next run read the sandbox's policy (full-access, say), rules or profile, and `--json=~/r.json` wrote
    there, while `--workdir=~` and `--allow-write=~/x` meant the home."""
    if source == "~" or source.startswith("~/"):
        home = os.path.expanduser("~")
        if not os.path.isabs(home) or home == "/":
            msg = "'~' has no home directory to expand to here; write the path out"
            raise ValueError(msg)
        return home + source[1:]
    if source.startswith("~"):
        msg = "only '~' and '~/...' (your home) are expanded; write other homes out"
        raise ValueError(msg)
    if source.startswith("$"):
        msg = "environment variables are not expanded in paths; write the path out"
        raise ValueError(msg)
    return source


def named_file(value: str, relative_to: str | None) -> str:
    """A file named inside another (a policy's ``syscalls.profile``, a rule's ``policy``): ``~`` expanded
    (`user_file`; it was joined to the naming file's directory as ``<dir>/~/...``), else relative to
    `relative_to` when given. Raises ValueError as `user_file`."""
    text = user_file(value)
    return text if os.path.isabs(text) or relative_to is None else os.path.join(relative_to, text)


def _open_unplanted(source: str) -> int:
    """An O_RDONLY | O_NONBLOCK fd of the file `source`, reached the way a workdir is: the symlinks no
    sandbox could have planted (in a directory only root may write; for a root caller, a system directory)
    are resolved (policies._validate.resolve_trusted), and every other component, the last one included, is
    opened O_NOFOLLOW from its parent's fd. A previous sandbox that may write the directory holding the file
    (the workdir, the usual place for a policy file) can replace it with a link to a file of its choosing,
    or to one it may not read, whose parse errors would then name its keys. Raises OSError, or ValueError
    naming the link and the fix."""
    from policies._validate import resolve_trusted  # _validate imports the loaders that import this

    where = resolve_trusted(os.path.abspath(source))
    parts = [p for p in where.split("/") if p]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if last and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                    # Refused before it is opened (opening a device or a FIFO can itself have effects), with
                    # what it is and what to do: a socket planted there used to say only "No such device
                    # or address" (ENXIO, from open).
                    link = "/" + "/".join(parts)
                    fix = (
                        "give a regular file"
                        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)  # no sandbox can make a device node
                        else "a sandbox that may write its directory could have made it: remove it, or give "
                        "another file"
                    )
                    msg = f"it is {_kind(mode)} ({link}), not a regular file; {fix}"
                    raise ValueError(msg)
                flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY if last else os.O_PATH | os.O_DIRECTORY
                nxt = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as err:
                if err.errno != errno.ELOOP:
                    raise
                link = "/" + "/".join(parts[: i + 1])
                what = "it is" if last else "it passes through"
                msg = (
                    f"{what} a symlink ({link}), which a sandbox that may write its directory could have "
                    "planted; corral does not follow it: give the file's real path, or replace the link "
                    "with the file"
                )
                raise ValueError(msg) from err
            os.close(fd)
            fd = nxt
        if not parts:
            msg = "it is a directory"
            raise ValueError(msg)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    """What a file of `mode` is, for messages."""
    for test, what in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a file"


def read_bounded(source: str, limit: int) -> bytes:
    """The bytes of the file `source` (``~`` expanded: `user_file`): reached without following a symlink a
    sandbox could have planted (`_open_unplanted`), opened O_NONBLOCK, a regular file only, at most `limit`
    bytes. Raises OSError, or ValueError saying what the path is instead ("it is not a regular file (a FIFO,
    socket or device)", "it is a directory", "it is larger than N MiB", "it is or passes through a symlink
    ...")."""
    fd = _open_unplanted(user_file(os.fspath(source)))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
            )
            msg = f"it is {kind}"
            raise ValueError(msg)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                msg = f"it is larger than {limit // (1 << 20)} MiB"
                raise ValueError(msg)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
