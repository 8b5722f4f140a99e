"""Workspace files on a node: unpacking a caller's tarball into a fresh workdir, reading files and trees back
out of it, removing it. No Ray here (unit-tested on its own).

The workdir is written by sandboxes, so the host side trusts nothing in it: every path is walked one
component at a time from an fd of the workdir with O_NOFOLLOW (a symlink anywhere in the path fails the
walk with ELOOP or ENOTDIR instead of leading out of the workdir), files are opened O_NONBLOCK (a FIFO
does not hang the reader), checked to be regular files with fstat on the open fd, and read up to a bound.
Trees are walked with os.fwalk, fd-relative and never following a link; links are archived as links.
Every function here does blocking filesystem work: callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import io
import logging
import os
import secrets
import shutil
import stat
import tarfile

from policies import CorralError
from policies._errors import printable

_log = logging.getLogger("corral")

#: The most bytes `read_file` and `archive` return unless told otherwise.
DEFAULT_FETCH_LIMIT = 64 * 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WorkspaceError(CorralError):
    """A workspace file operation was refused or failed.

    path: the path inside the workspace (as given); reason: what was wrong; errno: the OS error number, 0
    when the refusal is corral's own (a path leaving the workspace, a file that is not regular, a size
    bound reached).
    """

    def __init__(self, path: str, reason: str, errno: int = 0) -> None:
        self.path = path
        self.reason = reason
        self.errno = errno
        code = f" ({_errno.errorcode.get(errno, errno)})" if errno else ""
        super().__init__(f"workspace path {path[:400]}: {reason}{code}")


def split_relative(path: str) -> list[str]:
    """The components of `path`, a path relative to the workspace ("." or "" for the workspace itself).
    Raises WorkspaceError for an absolute path, a ".." component or a NUL byte."""
    if "\0" in path:
        raise WorkspaceError(path, "contains a NUL byte")
    if path.startswith("/"):
        raise WorkspaceError(path, "must be relative to the workspace")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WorkspaceError(path, "must not contain '..'")
    return parts


def open_dir(root: str, parts: list[str], path: str, *, create: bool = False) -> int:
    """An O_DIRECTORY fd of root/parts..., every component opened with O_NOFOLLOW from the one before
    (the root itself too: the workdir's own path is corral's, but its last component is checked alike).
    `create` makes missing directories (mode 0755) on the way. Raises WorkspaceError (ELOOP/ENOTDIR for
    a symlink on the way, ENOENT when missing)."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as err:
        raise WorkspaceError(path, "cannot open the workspace", err.errno or 0) from err
    try:
        for name in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as err:
        os.close(fd)
        raise WorkspaceError(
            path, "not a directory inside the workspace (symlinks are not followed)", err.errno or 0
        ) from err
    return fd


def read_file(root: str, path: str, limit: int = DEFAULT_FETCH_LIMIT) -> bytes:
    """The contents of the regular file `path` (relative to the workspace `root`). Raises WorkspaceError
    when a component is a symlink or missing, when the file is not a regular file, or when it holds more
    than `limit` bytes (nothing is returned then: a truncated file would pass for a whole one)."""
    parts = split_relative(path)
    if not parts:
        raise WorkspaceError(path, "names the workspace itself, not a file")
    dfd = open_dir(root, parts[:-1], path)
    try:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dfd)
        except OSError as err:
            raise WorkspaceError(path, "cannot open (symlinks are not followed)", err.errno or 0) from err
    finally:
        os.close(dfd)
    try:
        return _read_regular(fd, path, limit)
    finally:
        os.close(fd)


def _read_regular(fd: int, path: str, limit: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise WorkspaceError(path, "is not a regular file")
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        except OSError as err:
            raise WorkspaceError(path, "read failed", err.errno or 0) from err
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise WorkspaceError(path, f"holds more than {limit} bytes (raise limit=)")
        chunks.append(chunk)


def archive(root: str, path: str = ".", limit: int = DEFAULT_FETCH_LIMIT) -> bytes:
    """A tar of the tree at `path` (relative to the workspace `root`; names in it relative to `path`):
    directories, regular files, and symlinks as links (never followed). Other file types (FIFOs,
    sockets, devices a sandbox could make) are left out. Raises WorkspaceError as `read_file` does, and
    when the archive itself (every member's header and padding, not only the files' contents) passes
    `limit` bytes: a sandbox's million empty files (or links, or directories) weigh half a GiB of
    headers, which used to be built in memory whatever the limit."""
    parts = split_relative(path)
    top = open_dir(root, parts, path)
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                rel = os.path.normpath(dirpath)
                if dirnames and rel != "." and rel.count("/") + 1 >= MAX_ARCHIVE_DEPTH:
                    # os.fwalk recurses: a command's tree 3,000 levels deep ended it in RecursionError
                    raise WorkspaceError(path, f"holds directories more than {MAX_ARCHIVE_DEPTH} levels deep")
                for name in sorted(dirnames) + sorted(filenames):
                    arcname = name if rel == "." else f"{rel}/{name}"
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile
                    info = tarfile.TarInfo(arcname)
                    info.mode = st.st_mode & 0o777
                    info.mtime = int(st.st_mtime)
                    if buf.tell() > limit:
                        raise _too_big(path, limit)
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = os.readlink(name, dir_fd=dfd)
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        try:
                            fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
                        except OSError:
                            continue  # replaced by a link or removed meanwhile
                        try:
                            data = _read_regular(fd, arcname, max(limit - buf.tell(), 0))
                        finally:
                            os.close(fd)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        if buf.tell() > limit:  # the last member's header and padding, the end-of-archive blocks
            raise _too_big(path, limit)
    finally:
        os.close(top)
    return buf.getvalue()


def _too_big(path: str, limit: int) -> WorkspaceError:
    return WorkspaceError(path, f"holds more than {limit} bytes as an archive (raise limit=)")


def unpack(root: str, data: bytes) -> int:
    """Unpack the tar (optionally gzip/bzip2/xz compressed) `data` into the existing, empty directory
    `root`. Directories, regular files and symlinks are created (set-id bits dropped); every member's
    parent is walked from `root` with O_NOFOLLOW, so a symlink in the archive can never redirect a later
    member out of the workspace; files are created O_EXCL|O_NOFOLLOW. Returns the number of members made.
    Raises WorkspaceError for a member path that is absolute or holds "..", a hard link, a device or
    FIFO, or a malformed archive."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 (closed by the with below)
    except tarfile.TarError as err:
        raise WorkspaceError("<archive>", f"not a tar archive: {err}") from err
    made = 0
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as err:
            raise WorkspaceError("<archive>", f"malformed tar archive: {err}") from err
        for member in members:
            parts = split_relative(member.name)
            if not parts:
                continue  # "." itself
            if not (member.isdir() or member.isreg() or member.issym()):
                raise WorkspaceError(member.name, "only directories, regular files and symlinks are unpacked")
            dfd = open_dir(root, parts[:-1], member.name, create=True)
            try:
                name = parts[-1]
                mode = member.mode & 0o777
                try:
                    if member.isdir():
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, mode | 0o700, dir_fd=dfd)
                    elif member.issym():
                        os.symlink(member.linkname, name, dir_fd=dfd)
                    else:
                        src = tar.extractfile(member)
                        assert src is not None  # a regular member always has a file object
                        fd = os.open(
                            name,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            mode,
                            dir_fd=dfd,
                        )
                        with os.fdopen(fd, "wb") as out:
                            shutil.copyfileobj(src, out)
                except OSError as err:
                    raise WorkspaceError(member.name, "cannot create", err.errno or 0) from err
            finally:
                os.close(dfd)
            made += 1
    return made


#: Directory levels `remove_tree` holds open at once; a directory deeper is moved up to the top first.
_REMOVE_DEPTH = 64
#: Levels `archive` descends (os.fwalk recurses, a Python frame and an fd per level).
MAX_ARCHIVE_DEPTH = 256


def _open_up(dir_fd: int) -> None:
    """Make the directory `dir_fd` writable and searchable by its owner (a command may have locked it)."""
    with contextlib.suppress(OSError):
        os.fchmod(dir_fd, 0o700)


def _open_child(parent: int, name: str) -> int | None:
    """An O_DIRECTORY fd of `name` in `parent`, never through a link (opened up first when a command made
    it unreadable); None when it cannot be opened."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        pass
    except OSError:
        return None
    try:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return None
    try:
        os.chmod(f"/proc/self/fd/{handle}", 0o700)  # the inode of our fd, not a name
        return os.open(".", _DIR_FLAGS, dir_fd=handle)
    except OSError:
        return None
    finally:
        os.close(handle)


def _clear(top: int) -> None:
    """Remove everything in the directory `top`: depth-first with an explicit stack (no recursion: a command's
    tree 3,000 directories deep ended shutil.rmtree in RecursionError), names only through the fd of their
    directory, never following a link; at most _REMOVE_DEPTH directories open at once (a deeper one is moved
    up into `top` under a fresh name and removed from there)."""
    frames: list[tuple[int, list[str], str]] = []  # (fd, names left, its name in the frame below)
    try:
        names = os.listdir(top)
    except OSError:
        return
    frames.append((top, names, ""))
    moved = 0
    while frames:
        fd, names, _ = frames[-1]
        if not names:
            _, _, own = frames.pop()
            if frames:  # an emptied subdirectory: close it, remove it from its parent
                os.close(fd)
                parent = frames[-1][0]
                try:
                    os.rmdir(own, dir_fd=parent)
                except PermissionError:
                    _open_up(parent)
                    with contextlib.suppress(OSError):
                        os.rmdir(own, dir_fd=parent)
                except OSError:
                    pass
            continue
        name = names.pop()
        try:
            os.unlink(name, dir_fd=fd)
            continue
        except FileNotFoundError:
            continue
        except PermissionError:
            _open_up(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
                continue
        except IsADirectoryError:
            pass
        except OSError:
            continue
        if len(frames) >= _REMOVE_DEPTH:
            moved += 1
            # A fresh name (a sandbox cannot have made it): renaming onto a directory it left there would
            # fail, and leave this one.
            flat = f".corral-remove-{secrets.token_hex(8)}-{moved}"
            with contextlib.suppress(OSError):
                os.rename(name, flat, src_dir_fd=fd, dst_dir_fd=top)
                frames[0][1].append(flat)
            continue
        sub = _open_child(fd, name)
        if sub is None:
            continue
        try:
            children = os.listdir(sub)
        except OSError:
            os.close(sub)
            continue
        frames.append((sub, children, name))


def remove_tree(path: str) -> bool:
    """Remove the workspace `path` and everything in it, never following a link (`_clear`: fd-relative,
    iterative, bounded in open fds whatever the depth); directories a sandbox made unwritable or
    unsearchable are opened up (through an `O_NOFOLLOW` fd) first. Missing is fine. Never raises: returns
    False, with a warning logged, when something could not be removed (left in place)."""
    try:
        top = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a link or other file where the workspace was: removed, not followed
            return True
        top = -1
        with contextlib.suppress(OSError):
            handle = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.chmod(f"/proc/self/fd/{handle}", 0o700)
                top = os.open(".", _DIR_FLAGS, dir_fd=handle)
            finally:
                os.close(handle)
        if top < 0:
            _log.warning("corral: cannot remove the workspace %s (left in place)", printable(path))
            return False
    try:
        _open_up(top)
        _clear(top)
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as err:
        _log.warning(
            "corral: cannot remove the workspace %s (left in place): %s", printable(path), err.strerror
        )
        return False
    return True
