"""Put back the metadata of the files `corral run` hands the command as its stdio.

A shell redirection (`corral run -- cmd < secret.pem > ~/log.txt`) gives the command open files of the host's
mounts, not of its read-only view, wherever they lie. As their owner (the sandbox's uid) the command may
`fchmod` them (a 0600 secret made 0644 for every local user) and set `user.*` extended attributes, through
the fd or /proc/self/fd/N; no sandbox layer can refuse that without refusing the reads and writes asked for
(docs/security.md, Known gaps). The CLI records each standard fd's mode and user attributes before the
command starts and puts them back when it ends, however corral exits: the change lasts at most as long as
the run. Times are not restored (the command's own writes move them legitimately), nor is the group (the
command can only give the file its own, which is the caller's or the workdir owner's).
"""

from __future__ import annotations

import contextlib
import os
import stat
import types

_STD_FDS = (0, 1, 2)
_SETID = stat.S_ISUID | stat.S_ISGID


class StdioMetaGuard:
    """Saves, on entry, the mode and the `user.*` extended attributes of each standard fd that is a regular
    file, a directory or a character device (a terminal); on exit, for each fd still open on the same file,
    restores a mode that changed (never adding a set-id bit), removes `user.*` attributes that were not
    there and puts back those that were. Never raises; nothing here blocks (fstat, fchmod and the xattr
    calls on open fds)."""

    def __init__(self, fds: tuple[int, ...] = _STD_FDS) -> None:
        self._fds = fds
        self.saved: list[tuple[int, int, int, int, dict[str, bytes]]] = []

    def __enter__(self) -> StdioMetaGuard:
        for fd in self._fds:
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue  # a pipe or a socket: no metadata anyone else reads
            self.saved.append((fd, st.st_dev, st.st_ino, st.st_mode, _user_xattrs(fd)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back what the command changed. Never raises."""
        for fd, dev, ino, mode, attrs in self.saved:
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (dev, ino):
                continue  # corral's own fd now names another file: not ours to touch
            # Never a set-id bit back: the kernel cleared it when the command wrote to the file, and putting
            # it back would make the command's content set-id. Those bits stay as the run left them.
            current = stat.S_IMODE(st.st_mode)
            want = (stat.S_IMODE(mode) & ~_SETID) | (current & _SETID)
            if want != current:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, want)
            now = _user_xattrs(fd)
            for name in now.keys() - attrs.keys():
                with contextlib.suppress(OSError):
                    os.removexattr(fd, name)
            for name, value in attrs.items():
                if now.get(name) != value:
                    with contextlib.suppress(OSError):
                        os.setxattr(fd, name, value)


def _user_xattrs(fd: int) -> dict[str, bytes]:
    """The `user.*` extended attributes of open file `fd` (empty where the filesystem has none)."""
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        if name.startswith("user."):
            with contextlib.suppress(OSError):
                out[name] = os.getxattr(fd, name)
    return out
