"""After a run: protected paths that the command created (`filesystem.protected`, outside `.git`).

A protected path is bound read-only over itself in each writable root when the sandbox starts, with every
directory between the root and it pinned (a mount point cannot be renamed); a mount can only cover a name
that exists, so a protected path missing then (`protected = [".envrc"]` in a checkout without one) was
writable for the run, and a tool on the host (direnv, an editor's task runner, make) would run what the
command put there. The fork server notes each such path that is missing when it builds the sandbox's
view (`_ops.Plan.absent`, cached with the view, which is used only while those paths are as they were);
after the run, what exists at that path (a file, a directory, a symlink), or a symlink the command put on
the way to it, is moved out of the way like the git scan's quarantine
(`<name>.corral-quarantined`) and reported in `Result.quarantined`; the directories the command made on
the way stay (a `.vscode/settings.json` beside a protected `.vscode/tasks.json` is not the protected
path). A protected path that
existed at the start was read-only for the whole run, and is not looked at. `.git/...` entries are the git
scan's (supervisor/_gitscan.py).

Nothing is followed: the path is walked from an O_PATH fd of the root one component at a time. Runs in a
worker thread: a few lstats per missing path.
"""

from __future__ import annotations

import os
import stat

from supervisor import _gitscan
from supervisor.sandbox import _hostfs


def scan(absent: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Move aside what the run created at `absent`, the (root, protected path relative to it) pairs the fork
    server found missing before the sandbox was cloned; returns (path, reason) pairs. Never raises."""
    found: list[tuple[str, str]] = []
    for root, rel in absent:
        try:
            rootfd = _hostfs.open_root(root)
        except OSError:
            continue  # gone, or not a directory: nothing of it is there to run
        try:
            _check(rootfd, root, rel, found)
        except OSError:
            pass  # unreadable on the way: what cannot be reached cannot be moved (nor run from this name)
        finally:
            os.close(rootfd)
    return found


def _check(rootfd: int, root: str, rel: str, found: list[tuple[str, str]]) -> None:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return
    fd = os.dup(rootfd)
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return  # not created
            last = i == len(parts) - 1
            if last or stat.S_ISLNK(st.st_mode):
                # The name that was missing, now there; or a symlink put on the way to it (there was none
                # when the sandbox started: it would have been refused).
                what = "a protected path" if last else f"a symlink on the way to a protected path ({rel})"
                reason = (
                    f"{what} (filesystem.protected) missing when the sandbox started, made during the run"
                )
                found.extend(_gitscan.move_aside(fd, os.path.join(root, *parts[:i]), part, reason))
                return
            if not stat.S_ISDIR(st.st_mode):
                return  # a file on the way: the protected path cannot exist below it
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
