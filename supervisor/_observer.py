"""The syscall-exit observer: the refusals of the mount view, Landlock and RLIMIT_NOFILE, reported.

A supervisor running as root starts one `corral-observer` (supervisor/observer/loader.c, libbpf), which
loads supervisor/observer/denials.bpf.o (built from denials.bpf.c at install time when clang, bpftool and
libbpf-dev are there) and attaches it: a BTF tracepoint program on every syscall's exit that, for the
pid namespaces its fork server created (registered by the kernel itself at the fork: nothing on the spawn
path), sends each distinct failing path syscall (EROFS, or EACCES/EXDEV while Landlock's denial count
went up) and each EMFILE once, and counts the repeats in a kernel map. docs/denials.md has the why, the
cost and the blind spots.

This module: `Observer.start` (the loader process, its socket, the maps' fds), the event reader (one
task), per-sandbox `Watch`es that collect their events, and `settle`, which waits for a finished
sandbox's events (the kernel counts what it sent), reads its repeat counts and frees its map entries.
Nothing a sandbox writes is trusted: events come from the kernel program, paths are shown escaped, the
numbers are checked, and each sandbox sends at most MAX_DISTINCT events whatever it does.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno as _errno
import logging
import os
import platform
import socket
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

log = logging.getLogger("corral")

_HERE = Path(__file__).parent / "observer"
OBJECT = _HERE / "denials.bpf.o"
LOADER = _HERE / "corral-observer"

#: The kernel program's bound on distinct events per sandbox (MAX_DISTINCT in denials.bpf.c).
MAX_DISTINCT = 64
#: Denied directories watched for ENOENT per sandbox, and their length bound (struct denied).
MAX_DENIED, DENIED_LEN = 4, 128
#: Denied paths matched by hash (struct denied_file, in sets: one per distinct deny list, filled once;
#: the kernel reads at most 255 bytes of a path). A set holds the paths and their ancestors;
#: MAX_SETS * MAX_DENIED_FILES * 2 (a list of 256 deep paths may not all fit) is the map's size.
MAX_DENIED_FILES, DENIED_FILE_LEN, MAX_SETS = 256, 255, 64
_DENIED_FILE = struct.Struct("=IIQ")
_FNV_OFFSET, _FNV_PRIME = 14695981039346656037, 1099511628211


def path_hash(path: bytes) -> int:
    """FNV-1a (64 bits) of `path`, as the kernel program hashes the path a sandbox opened (fnv)."""
    h = _FNV_OFFSET
    for c in path:
        h = ((h ^ c) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


#: struct event: hash, ns, pid, nr, err, landlock, port, flags, pad, path[256], path2[256].
EVENT = struct.Struct("=QIiiiIIII256s256s")
#: struct sandbox: emitted, dropped, distinct, ll_seen, dead, pad.
SANDBOX = struct.Struct("=QQQQII")
_FOLD_KEY = struct.Struct("=IIQ")
_ELEM_ATTR = struct.Struct("=IIQQQ")  # union bpf_attr, the map element commands' part
_BPF_MAP_LOOKUP_ELEM, _BPF_MAP_UPDATE_ELEM, _BPF_MAP_DELETE_ELEM = 1, 2, 3
_NR_BPF = {"x86_64": 321}

#: How long `settle` waits for the events the kernel says it sent (they are in the loader's pipeline).
SETTLE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Observed:
    """One distinct refusal the kernel program saw in a sandbox (`count`: its repeats, set by settle)."""

    pid: int
    nr: int
    err: int
    landlock: bool
    port: int
    flags: int
    path: str
    path2: str
    count: int = 1


def _text(raw: bytes) -> str:
    """A path from a sandbox's memory, as text that cannot forge a line: up to its NUL, non-UTF-8 bytes
    and control characters escaped."""
    raw = raw.split(b"\0", 1)[0]
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def ll_offset() -> int:
    """Where Landlock's part of a cred's security blob is: 0 when it is the first LSM with a cred blob
    (the kernel's default order since 5.13), else -1 (unknown: Landlock's refusals are then not told
    from a file mode's). Read from the boot command line's lsm= (the build's CONFIG_LSM otherwise, which
    puts landlock first by default)."""
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        return -1
    for word in cmdline.split():
        if word.startswith("lsm="):
            order = [n for n in word[4:].split(",") if n and n not in ("capability", "lockdown", "yama")]
            return 0 if order and order[0] == "landlock" else -1
    return 0


def unavailable() -> str | None:
    """Why this process cannot run the observer, or None."""
    if platform.machine() not in _NR_BPF:
        return f"the observer knows x86_64's syscall numbers only (this is {platform.machine()})"
    if os.geteuid() != 0:
        return "needs root (a BPF program: CAP_BPF and CAP_PERFMON); a non-root supervisor has none"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux): the observer's program cannot be loaded"
    if not (OBJECT.is_file() and LOADER.is_file()):
        return "the BPF observer was not built (clang, bpftool and libbpf-dev were missing at install)"
    return None


class _Bpf:
    """bpf(2) map element calls on the maps the loader sent (their fds are ours)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._nr = _NR_BPF[platform.machine()]

    def _call(self, cmd: int, fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None) -> int:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vaddr = ctypes.addressof(value) if value is not None else 0
        attr = ctypes.create_string_buffer(_ELEM_ATTR.pack(fd, 0, ctypes.addressof(kbuf), vaddr, 0), 40)
        ret: int = self._libc.syscall(self._nr, cmd, attr, 40)
        return 0 if ret == 0 else ctypes.get_errno()

    def lookup(self, fd: int, key: bytes, size: int) -> bytes | None:
        value = ctypes.create_string_buffer(size)
        return value.raw if self._call(_BPF_MAP_LOOKUP_ELEM, fd, key, value) == 0 else None

    def update(self, fd: int, key: bytes, value: bytes) -> int:
        return self._call(_BPF_MAP_UPDATE_ELEM, fd, key, ctypes.create_string_buffer(value, len(value)))

    def delete(self, fd: int, key: bytes) -> None:
        self._call(_BPF_MAP_DELETE_ELEM, fd, key, None)


@dataclass(slots=True)
class Watch:
    """One sandbox's observed refusals, in the order first seen (at most MAX_DISTINCT)."""

    ns: int
    events: list[tuple[int, Observed]] = field(default_factory=list)
    on_event: object = None  # Callable[[Observed], None] | None
    #: Set at the next delivery; made only by a settle that waits (an Event per watch, with its waiters'
    #: deque, was ~1 KiB of the supervisor's memory for each child alive).
    arrived: anyio.Event | None = None


class Launch:
    """A loader started by `Observer.launch` that has not said yet whether it runs: `ready` waits for it,
    `abort` ends it (for a supervisor that failed to start)."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, offset: int) -> None:
        self._proc, self._sock, self._offset = proc, sock, offset
        self._done = False

    async def ready(self) -> Observer:
        """Wait for the loader's maps (at most 30 s). Raises OSError (the loader's reason as its strerror)
        when it cannot run here, TimeoutError when it does not answer; the loader is then ended. On
        cancellation the loader is killed."""
        if self._done:
            raise OSError(_errno.EPERM, "the BPF observer's loader was already used")
        self._done = True
        ours, proc = self._sock, self._proc
        fds: list[int] = []
        try:
            with anyio.fail_after(30):
                while True:
                    await anyio.wait_readable(ours)
                    try:
                        msg, fds, _flags, _addr = socket.recv_fds(ours, 2048, 5)
                        break
                    except BlockingIOError:
                        continue
            if msg[:1] != b"R" or len(fds) != 5:
                why = msg[1:].decode(errors="replace") if msg[:1] == b"F" else "the loader ended"
                raise OSError(_errno.EPERM, f"the BPF observer did not start: {why}")
            (flags,) = struct.unpack_from("=I", msg, 5)
            note = msg[9:].decode(errors="replace")
        except BaseException:
            for fd in fds:
                os.close(fd)
            self.abort()
            raise
        obs = Observer(proc, ours, list(fds), note)
        obs.landlock_counted = bool(flags & 1)
        obs.landlock_placed = self._offset >= 0
        return obs

    def abort(self) -> None:
        """End the loader (killed and reaped: it has loaded nothing it keeps) and close our end."""
        self._done = True
        self._sock.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


class Observer:
    """The loader process of one supervisor, its event reader and the sandboxes it watches."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, fds: list[int], note: str) -> None:
        self._proc, self._sock = proc, sock
        self._spawners_fd, self._sandboxes_fd, self._folds_fd, self._denieds_fd, self._files_fd = fds
        self._bpf = _Bpf()
        self._spawners: set[int] = set()
        self._watches: dict[int, Watch] = {}
        #: Deny lists already in denied_files, by their set number (never freed while the loader lives).
        self._sets: dict[tuple[bytes, ...], int] = {}
        #: The `denieds` value per deny list as a policy spells it (hide's per-spawn work: one lookup).
        self._hide_values: dict[tuple[str, ...], bytes] = {}
        #: Programs the loader left out (their kernel function is missing), for the docs' honesty.
        self.note = note
        #: The kernel's Landlock keeps a denial count (Linux 6.15): its refusals can be told apart.
        self.landlock_counted = False
        #: Landlock is the first LSM with a cred blob (ll_offset): where the loader reads its domain.
        self.landlock_placed = False
        #: False once the loader is gone (its programs detached).
        self.alive = True

    @classmethod
    async def start(cls) -> Observer:
        """Start the loader and wait for its maps (~0.2 s, not blocking the loop): `launch`, then `ready`.

        Call it from the event loop's thread (see `launch`). Raises OSError (with the loader's reason as
        its strerror) when it cannot run here. On cancellation the loader is killed.
        """
        return await cls.launch().ready()

    @classmethod
    def launch(cls) -> Launch:
        """Start the loader process (a fork and exec, ~1 ms) without waiting for it: its ~0.2 s of loading
        and verifying then overlaps whatever the caller does next (the supervisor starts its fork server
        and opens its cgroups meanwhile). Call it from the event loop's thread: the loader's PDEATHSIG is
        tied to the thread that started it (a worker thread's exit would kill it, and detach its
        programs). Raises OSError when the loader cannot be started."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            offset = ll_offset()
            proc = subprocess.Popen(
                [str(LOADER), str(OBJECT), str(offset), str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return Launch(proc, ours, offset)

    @property
    def pid(self) -> int:
        """The loader's pid."""
        return self._proc.pid

    def spawner(self, pid: int) -> None:
        """Watch the pid namespaces process `pid` (the fork server) creates from now on."""
        if pid not in self._spawners:
            self._spawners.add(pid)
            self._bpf.update(self._spawners_fd, struct.pack("=I", pid), struct.pack("=I", 1))

    def watch(self, init_pid: int) -> Watch | None:
        """The Watch of the sandbox whose init is `init_pid` (its pid namespace), or None when the kernel
        program did not register it (no pid namespace of its own; made before the fork server was
        registered)."""
        try:
            ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
        except OSError:
            return None
        if self._bpf.lookup(self._sandboxes_fd, struct.pack("=I", ns), SANDBOX.size) is None:
            return None
        watch = self._watches.get(ns)
        if watch is None:
            watch = self._watches[ns] = Watch(ns)
        return watch

    def hide(self, watch: Watch, denied: Sequence[str]) -> None:
        """Report ENOENT and EACCES (not Landlock's) at or below these paths of the sandbox (its
        filesystem.deny: directories under an empty tmpfs, files under the null device on a nodev mount):
        one map update, its value made once per deny list (`_denied_value`)."""
        key = tuple(denied)
        value = self._hide_values.get(key)
        if value is None:
            if len(self._hide_values) >= 4 * MAX_SETS:  # bounded: a caller generating policies
                self._hide_values.clear()
            value = self._hide_values[key] = self._denied_value(key)
        if value:
            self._bpf.update(self._denieds_fd, struct.pack("=I", watch.ns), value)

    def _denied_value(self, denied: tuple[str, ...]) -> bytes:
        """The `denieds` map value of a deny list (b"" when nothing of it can be watched). The first
        MAX_DENIED absolute paths shorter than DENIED_LEN bytes are compared in the kernel byte by byte;
        every one, up to MAX_DENIED_FILES shorter than DENIED_FILE_LEN bytes, by the hash of its exact
        spelling, in a set of `denied_files` made the first time this list is seen (at most MAX_SETS
        lists; later ones get only the first MAX_DENIED)."""
        paths = [os.fsencode(p.rstrip("/")) for p in denied if p.startswith("/") and p.rstrip("/")]
        dirs = [p for p in paths if len(p) < DENIED_LEN][:MAX_DENIED]
        hashed = tuple(dict.fromkeys(p for p in paths if len(p) < DENIED_FILE_LEN))[:MAX_DENIED_FILES]
        set_id = self._sets.get(hashed, 0)
        if hashed and not set_id and len(self._sets) < MAX_SETS:
            set_id = self._sets[hashed] = len(self._sets) + 1
            # The denied paths (1), and their ancestors (2: the kernel's walk of a path goes on past them)
            ancestors = (b"/".join(p.split(b"/")[:i]) for p in hashed for i in range(2, p.count(b"/") + 1))
            entries: dict[bytes, int] = {q: 2 for q in ancestors if q not in hashed}
            entries.update((p, 1) for p in hashed)
            for q, v in entries.items():
                self._bpf.update(self._files_fd, _DENIED_FILE.pack(set_id, 0, path_hash(q)), bytes((v,)))
        if not (dirs or set_id):
            return b""
        value = struct.pack("=II", len(dirs), set_id) + b"".join(p.ljust(DENIED_LEN, b"\0") for p in dirs)
        return value.ljust(8 + MAX_DENIED * DENIED_LEN, b"\0")

    async def run(self) -> None:
        """Read the loader's events until it ends, each to its sandbox's Watch (one task); then `alive`
        is False (its programs are detached: nothing more will be seen). On cancellation, it stops
        reading."""
        try:
            while True:
                await anyio.wait_readable(self._sock)
                while True:
                    try:
                        msg = self._sock.recv(2048)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    if not msg:
                        return
                    if msg[:1] == b"E" and len(msg) == 1 + EVENT.size:
                        self._deliver(msg[1:])
        finally:
            self.alive = False
            for watch in self._watches.values():
                if watch.arrived is not None:
                    watch.arrived.set()  # a settle waiting for events that will not come

    def _deliver(self, raw: bytes) -> None:
        h, ns, pid, nr, err, landlock, port, flags, _pad, path, path2 = EVENT.unpack(raw)
        watch = self._watches.get(ns)
        if watch is None:
            # A sandbox not (yet) watched: made by the fork server, but its Child not made yet. Kept,
            # bounded like any other (the kernel sends at most MAX_DISTINCT per sandbox).
            if len(self._watches) > 4096:
                return
            watch = self._watches[ns] = Watch(ns)
        if len(watch.events) >= MAX_DISTINCT:
            return
        ev = Observed(pid, nr, err, bool(landlock), port & 0xFFFF, flags, _text(path), _text(path2))
        watch.events.append((h, ev))
        arrived, watch.arrived = watch.arrived, None
        if arrived is not None:
            arrived.set()
        if callable(watch.on_event):
            watch.on_event(ev)

    async def settle(self, watch: Watch) -> tuple[list[Observed], int]:
        """The finished sandbox's refusals with their counts, and how many were dropped (past the kernel's
        bound, or lost to a full ring buffer); frees its map entries. Waits (at most SETTLE_TIMEOUT) for
        the events the kernel sent and the reader has not delivered yet; shielded from cancellation by
        the caller's finish."""
        key = struct.pack("=I", watch.ns)
        raw = self._bpf.lookup(self._sandboxes_fd, key, SANDBOX.size)
        emitted, dropped = (SANDBOX.unpack(raw)[:2]) if raw is not None else (0, 0)
        with anyio.move_on_after(SETTLE_TIMEOUT):
            while len(watch.events) < min(emitted, MAX_DISTINCT) and self.alive:
                if watch.arrived is None:
                    watch.arrived = anyio.Event()
                await watch.arrived.wait()
        out: list[Observed] = []
        for h, ev in watch.events:
            fold = _FOLD_KEY.pack(watch.ns, 0, h)
            count = self._bpf.lookup(self._folds_fd, fold, 8)
            self._bpf.delete(self._folds_fd, fold)
            n = struct.unpack("=Q", count)[0] if count is not None else 1
            out.append(dataclasses.replace(ev, count=max(n, 1)))
        lost = max(emitted - len(watch.events), 0)
        self._bpf.delete(self._sandboxes_fd, key)
        self._bpf.delete(self._denieds_fd, key)
        self._watches.pop(watch.ns, None)
        return out, dropped + lost

    def forget(self, init_pid: int) -> None:
        """A sandbox that never became a Child (a discarded pre-forked one): free its entry."""
        with contextlib.suppress(OSError):
            ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
            self._bpf.delete(self._sandboxes_fd, struct.pack("=I", ns))
            self._watches.pop(ns, None)

    def close(self) -> None:
        """Stop the loader (the kernel then detaches its programs and frees the maps)."""
        self._sock.close()
        for fd in (self._spawners_fd, self._sandboxes_fd, self._folds_fd, self._denieds_fd, self._files_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._proc.kill()
        self._proc.wait()
