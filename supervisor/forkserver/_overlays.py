"""The fork server's shared overlays: one detached overlay per overlaid directory of a view (mounts._overlay,
mounts.overlay_roots), made here and copied into each sandbox (OP_CLONE_AT: open_tree + move_mount), instead
of a new overlay superblock mounted and torn down by every sandbox.

Why: a new overlay per sandbox cost it ~0.2-0.4 ms of CPU (the mount, the first lookups through it, the
teardown at exit): for the default profile under root (`/etc` and `/root` overlaid), 5-8 % of the throughput
of /bin/true. A copy of a detached mount is a mount of its own in the sandbox's namespace (its own flags,
place and the hiding mounts made on it later), of a superblock, and so dentries, shared with every other copy.

Who owns what: the superblock belongs to this process's user namespace (the initial one: only a root caller's
fork server can make an overlay in its own namespaces; for any other caller the first attempt fails, EPERM,
and every sandbox makes its own, as before). No sandbox has a capability over it, so none can reconfigure it
for the others; each sandbox's copy is its own mount, which it alone can change or unmount.

Freshness: an overlay's dentries keep showing what they found when first looked up (the host's local
filesystems are not revalidated): a file the host renames over or removes keeps its old content, and a name
looked up while missing stays missing when the host creates it, for as long as the dentry lives. A sandbox's
own overlay lived as long as the sandbox; a shared one lives longer, so it is made anew (`refresh`, at each
spawn) when the directory itself changed (its inode or ctime: an entry of it created, removed or renamed:
`~/.gitconfig`, `/etc/ld.so.cache`, `/etc/resolv.conf` rewritten) and when it is older than MAX_AGE (a change
deeper down, which moves no ctime of the directory). A new sandbox then sees the host's state of at most
MAX_AGE ago below the directory's own entries, which it sees as they are.

The fd numbers are baked into the cached view segments: an overlay made anew is dup2'ed onto its old number,
and a number is closed only when no cached view uses it (`release`), so that a later fd on that number (a
directory of this process's) is never taken for an overlay.
"""

from __future__ import annotations

import errno
import os
import time

from supervisor.sandbox import _cinit

#: Seconds a shared overlay is used for new sandboxes before it is made anew (see the module docstring).
MAX_AGE = 0.1
#: Overlays held at once (each an fd); past it, a view's sandboxes make their own.
MAX_HELD = 64
#: What says this process cannot make an overlay at all: not allowed (an ordinary user's, outside a user
#: namespace of its own), no overlayfs, no fsopen/fsmount.
_REFUSED = frozenset((errno.EPERM, errno.ENODEV, errno.ENOSYS, errno.EOPNOTSUPP))


class _Shared:
    __slots__ = ("fd", "ident", "layers", "made", "top")

    def __init__(self, fd: int, top: str, layers: str, made: float, ident: tuple[int, ...] | None) -> None:
        self.fd = fd
        self.top = top
        self.layers = layers
        self.made = made
        self.ident = ident


def _ident(top: str) -> tuple[int, ...] | None:
    """What a change of the directory's own entries moves: its device, inode and ctime (None: unreadable)."""
    try:
        st = os.lstat(top)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class SharedOverlays:
    """The detached overlays this fork server holds, by their layers (mounts.overlay_layers' lowerdir)."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        #: Seconds an overlay is used for new sandboxes before it is made anew.
        self.max_age = max_age
        #: None until the first attempt; False once the kernel refused one (no later attempt).
        self.available: bool | None = None
        self._by_layers: dict[str, _Shared] = {}
        self._by_fd: dict[int, _Shared] = {}
        #: Overlays made so far (each `make` that made one).
        self.made = 0

    def make(self, top: str, layers: str) -> int | None:
        """A new detached overlay of `layers` (lowerdir, topmost first) for a view being built; its fd (the
        same number as for an earlier one of the same layers), or None: the sandboxes make their own."""
        if self.available is False:
            return None
        held = self._by_layers.get(layers)
        if held is not None:
            self._renew(held, _ident(top))
            return held.fd
        if len(self._by_layers) >= MAX_HELD:
            return None
        ident = _ident(top)
        fd = self._new(layers)
        if fd is None:
            return None
        shared = _Shared(fd, top, layers, time.monotonic(), ident)
        self._by_layers[layers] = self._by_fd[fd] = shared
        return fd

    def refresh(self, fds: tuple[int, ...]) -> None:
        """Before a sandbox of a cached view is launched: make anew each of its overlays (`fds`) that is older
        than `max_age` or whose directory changed since. One that cannot be made again is replaced by a pipe
        on its number, which the init cannot copy (OP_CLONE_AT fails): its sandboxes mount their own, fresh,
        until it can be made again (tried again after `max_age`)."""
        if not fds:
            return
        now = time.monotonic()
        for fd in fds:
            shared = self._by_fd.get(fd)
            if shared is None:
                continue
            ident = _ident(shared.top)
            if (now - shared.made > self.max_age or ident != shared.ident) and not self._renew(shared, ident):
                self._unusable(shared, now)

    def _new(self, layers: str) -> int | None:
        """A detached overlay of `layers`, or None: refused (the first refusal that says this process cannot
        make one at all ends every later attempt)."""
        if self.available is False:
            return None
        try:
            fd = _cinit.overlay_new(layers)
        except OSError as err:
            if err.errno in _REFUSED:
                self.available = False  # the kernel's answer does not change for this process: asked once
            return None
        self.available = True
        self.made += 1
        return fd

    def _renew(self, shared: _Shared, ident: tuple[int, ...] | None) -> bool:
        """Make `shared` anew on its fd number (`ident`: its directory's, taken before); False when it could
        not be made (it stays as it was)."""
        fd = self._new(shared.layers)
        if fd is None:
            return False
        os.dup2(fd, shared.fd, inheritable=False)
        os.close(fd)
        shared.made, shared.ident = time.monotonic(), ident
        return True

    def _unusable(self, shared: _Shared, now: float) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        os.dup2(r, shared.fd, inheritable=False)
        os.close(r)
        os.close(w)
        shared.made, shared.ident = now, _ident(shared.top)

    def release(self, used: set[int]) -> None:
        """Close every overlay whose fd is not in `used` (those of the cached views and of the request being
        served)."""
        for fd in [fd for fd in self._by_fd if fd not in used]:
            shared = self._by_fd.pop(fd)
            del self._by_layers[shared.layers]
            os.close(fd)

    def held(self) -> list[int]:
        """The fds held (tests)."""
        return list(self._by_fd)


def probe_error() -> str:
    """Why this process could not make a shared overlay ('' when it can): an overlay of two empty
    directories made and dropped, as the fork server's first attempt would be for a process of its ids."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="corral-overlay-probe-") as d:
            os.mkdir(os.path.join(d, "a"))
            os.mkdir(os.path.join(d, "b"))
            os.close(_cinit.overlay_new(f"{d}/a:{d}/b"))
    except OSError as err:
        return f"fsopen/fsconfig/fsmount(overlay): {os.strerror(err.errno or 0)}"
    return ""
