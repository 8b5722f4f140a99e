"""A sandbox's confinement as data: the ops that the sandbox init (supervisor/sandbox/_cinit.c) executes,
in order, one syscall each.

Each mechanism module's `emit` appends its ops to a `Plan` in the fork server, after deciding there, in
Python, everything that can be decided before the clone: which paths exist, which rules apply, which errnos
are harmless, what a failure is called and what to do about it. The init then runs the list without a
single Python instruction (see _cinit.c for why: copy-on-write). `Plan.run` runs a list in the calling
process instead, for the mechanism modules' own `apply` functions and their tests.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from supervisor.sandbox import _cinit, _sys

#: The plan's binary records, field by field, as _cinit.c declares them (struct op, plan_header, segment;
#: native byte order, no padding: `=`). The struct formats are made from this table, and at import every
#: field's offset and each record's size are compared with the C compiler's (_cinit.LAYOUT).
_RECORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "op": (
        ("code", "I"), ("on_fail", "i"), ("a", "4q"), ("s", "4I"), ("layer", "I"), ("operation", "I"),
        ("path", "I"), ("hint", "I"), ("ok_errno", "2i"),
    ),
    "plan_header": (
        ("magic", "I"), ("mode", "I"), ("n_segs", "I"), ("segs_off", "I"), ("cmd_off", "I"), ("cmd_len", "I"),
        ("stdio_off", "I"), ("keep_off", "I"), ("cmd_fd", "i"), ("status_w", "i"), ("ctl_fd", "i"),
        ("n_stdio", "i"), ("n_keep", "I"), ("net_sysfs_fd", "i"), ("flags", "I"), ("proxy_fd", "i"),
    ),
    "segment": (("ops_off", "I"), ("n_ops", "I"), ("strtab_off", "I"), ("strtab_len", "I")),
}  # fmt: skip


def layout(records: Mapping[str, Sequence[tuple[str, str]]] = _RECORDS) -> dict[str, dict[str, int]]:
    """{record: {field: offset, ..., "sizeof": size}} of `records`, in the form of _cinit.LAYOUT."""
    out = {}
    for record, fields in records.items():
        offsets, at = {}, 0
        for name, fmt in fields:
            offsets[name] = at
            at += struct.calcsize("=" + fmt)
        out[record] = {**offsets, "sizeof": at}
    return out


_OP, _HEADER, _SEGMENT = (
    struct.Struct("=" + "".join(fmt for _name, fmt in _RECORDS[r])) for r in ("op", "plan_header", "segment")
)
_NO_STR = 0xFFFFFFFF
if getattr(_cinit, "LAYOUT", None) != layout():
    _stale = "corral's C extension does not match this source (a stale build): run pip install -e . again"
    raise ImportError(_stale)

MODE_APPLY, MODE_SPAWN, MODE_STUB = 0, 1, 2
PLAN_CTTY = 1  # header flag: the init makes the command's stdin its session's controlling terminal
PLAN_OWN_MAPS = 2  # header flag: the launched child wrote the id maps (the caller's ids only: no owner)

#: A hint: plain text, or by errno ("*" for any other errno).
Hint = str | Mapping[int | str, str]


@dataclass(slots=True)
class Op:
    """One step: opcode, integer and string arguments, and how its failure is reported (the fields of a
    SetupFailure). `ok`: errnos that count as success; `on_fail`: the op index to continue at on any
    other failure, instead of failing the sandbox."""

    code: int
    layer: str
    operation: str
    a: tuple[int, ...] = ()
    s: tuple[str | bytes | None, ...] = ()
    path: str | None = None
    hint: Hint = ""
    ok: tuple[int, ...] = ()
    on_fail: int = -1


class Plan:
    """An ordered list of ops, packed by `segment`."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        #: The writable roots of a policy that protects git where no `.git` existed when the view was built
        #: (mounts._protect): nothing of a top `.git` was bound read-only there, so the post-run git scan
        #: trusts nothing in one it finds (supervisor/_gitscan.py, `unbound`).
        self.nogit: list[str] = []
        #: The writable roots and the policy's own protected paths (outside `.git`) in them that did not exist
        #: when the view was built (mounts._protect): a mount cannot cover them, so the supervisor moves aside
        #: after the run what the command made there (supervisor/_protectscan.py).
        self.absent: list[tuple[str, str]] = []

    def add(
        self,
        code: int,
        layer: str,
        operation: str,
        *,
        a: Sequence[int] = (),
        s: Sequence[str | bytes | None] = (),
        path: str | None = None,
        hint: Hint = "",
        ok: Iterable[int] = (),
    ) -> int:
        """Append an op; returns its index."""
        ok = tuple(ok)
        if len(a) > 4 or len(s) > 4 or len(ok) > 2:
            raise ValueError("an op takes at most 4 integers, 4 strings and 2 tolerated errnos")
        self.ops.append(Op(code, layer, operation, tuple(a), tuple(s), path, hint, ok))
        return len(self.ops) - 1

    def jump(self) -> int:
        """Append an unconditional jump, to be aimed with `land`; returns its index."""
        self.ops.append(Op(_cinit.OP_JUMP, "plan", "jump", (-1,)))
        return len(self.ops) - 1

    def land(self, index: int) -> None:
        """Aim the jump at `index`, or the on-failure exit of the op at `index`, at the next op added."""
        op = self.ops[index]
        if op.code == _cinit.OP_JUMP:
            op.a = (len(self.ops),)
        else:
            op.on_fail = len(self.ops)

    def segment(self) -> Segment:
        """The ops packed with their own string table, ready for `blob` (and reusable across blobs)."""
        strtab = bytearray(b"\0")
        offsets: dict[bytes, int] = {}

        def ref(value: str | bytes | None) -> int:
            if value is None:
                return _NO_STR
            data = os.fsencode(value) if isinstance(value, str) else value
            off = offsets.get(data)
            if off is None:
                off = offsets[data] = len(strtab)
                strtab.extend(data + b"\0")
            return off

        packed = bytearray()
        for op in self.ops:
            a = (*op.a, 0, 0, 0, 0)[:4]
            s = [ref(v) for v in (*op.s, None, None, None, None)[:4]]
            ok = (*op.ok, 0, 0)[:2]
            packed += _OP.pack(
                op.code, op.on_fail, *a, *s,
                ref(op.layer), ref(op.operation), ref(op.path), ref(_encode_hint(op.hint)), *ok,
            )  # fmt: skip
        strtab.extend(b"\0" * (-len(strtab) % 8))  # keeps the next segment's ops 8-byte aligned
        return Segment(tuple(self.ops), bytes(packed), bytes(strtab), tuple(self.nogit), tuple(self.absent))

    def run(self) -> None:
        """Run the ops in this process, now. Raises SetupFailure for the first op that fails."""
        failed = _cinit.apply(blob([self.segment()]))
        if failed is not None:
            index, errno, detail = failed
            op = self.ops[index]
            raise _sys.SetupFailure(
                op.layer, detail or op.operation, errno, op.path, pick_hint(op.hint, errno)
            )


@dataclass(frozen=True, slots=True)
class Segment:
    """A packed list of ops (`Plan.segment`): its ops, for reporting, and their binary form; `nogit` and
    `absent`: what the view's build noted (Plan.nogit, Plan.absent), cached with it."""

    ops: tuple[Op, ...]
    packed: bytes
    strtab: bytes
    nogit: tuple[str, ...] = ()
    absent: tuple[tuple[str, str], ...] = ()


def write_segment(layer: str, writes: Sequence[tuple[str, str, str]]) -> Segment:
    """A segment of OP_WRITE ops, one per (path, data, operation), packed directly: what `Plan.segment` would
    make of them (failures reported under `layer`, with the path), at a tenth of its cost, for the part of
    a plan that differs for every sandbox."""
    strtab = bytearray(b"\0")  # offset 0: the empty hint

    def put(text: str) -> int:
        off = len(strtab)
        strtab.extend(os.fsencode(text) + b"\0")
        return off

    layer_off = put(layer)
    ops: list[Op] = []
    packed = bytearray()
    for path, data, operation in writes:
        p, d = put(path), put(data)
        packed += _OP.pack(
            _cinit.OP_WRITE, -1, 0, 0, 0, 0, p, d, _NO_STR, _NO_STR, layer_off, put(operation), p, 0, 0, 0
        )
        ops.append(Op(_cinit.OP_WRITE, layer, operation, (), (path, data), path))
    strtab.extend(b"\0" * (-len(strtab) % 8))
    return Segment(tuple(ops), bytes(packed), bytes(strtab))


def blob(
    segments: Sequence[Segment],
    mode: int = MODE_APPLY,
    *,
    status_w: int = -1,
    ctl_fd: int = -1,
    stdio: Sequence[int] = (),
    keep: Sequence[int] = (),
    command: bytes = b"",
    command_fd: int = -1,
    net_sysfs_fd: int = -1,
    ctty: bool = False,
    proxy_fd: int = -1,
    own_maps: bool = False,
) -> bytes:
    """The binary plan (layout: _cinit.c): the segments' ops run in order. `stdio`: the fds that become
    the command's 0, 1, 2, 3...; `keep`: further fds the init must not close (the supervisor's pidfd);
    `command_fd`: a file holding the command (a large one), instead of `command`; `net_sysfs_fd`: the
    sysfs mount of a pooled network namespace (the init's slot SLOT_NET_SYSFS); `ctty`: the command's stdin
    (a pty) becomes the sandbox session's controlling terminal (the init's TIOCSCTTY); `proxy_fd`: the socket
    OP_PROXY_LISTEN sends the proxy's listening socket on (network mode "proxy"); `own_maps`: the
    launched child wrote the id maps (namespaces.launch_maps), so OP_SETID has no owner to become. Raises
    ValueError past _cinit.MAX_SEGMENTS segments."""
    if len(segments) > _cinit.MAX_SEGMENTS:
        raise ValueError("too many plan segments")
    table = bytearray()
    body = bytearray()
    base = _HEADER.size + _SEGMENT.size * len(segments)
    for seg in segments:
        ops_off = base + len(body)
        body += seg.packed
        table += _SEGMENT.pack(ops_off, len(seg.ops), base + len(body), len(seg.strtab))
        body += seg.strtab
    stdio_off = base + len(body)
    keep_off = stdio_off + 4 * len(stdio)
    cmd_off = keep_off + 4 * len(keep)
    header = _HEADER.pack(
        _cinit.MAGIC, mode, len(segments), _HEADER.size, cmd_off, len(command), stdio_off, keep_off,
        command_fd, status_w, ctl_fd, len(stdio), len(keep), net_sysfs_fd,
        (PLAN_CTTY if ctty else 0) | (PLAN_OWN_MAPS if own_maps else 0), proxy_fd,
    )  # fmt: skip
    fds = struct.pack(f"={len(stdio)}i{len(keep)}i", *stdio, *keep)
    return b"".join((header, table, body, fds, command))


def _encode_hint(hint: Hint) -> str:
    if isinstance(hint, str):
        return hint
    return "".join(f"\x1e{key}={text}" for key, text in hint.items())


def pick_hint(hint: Hint, errno: int) -> str:
    """The hint for a failure with `errno` (the C init's choice, for failures seen in this process)."""
    if isinstance(hint, str):
        return hint
    return hint.get(errno, hint.get("*", ""))


@dataclass(frozen=True, slots=True)
class EncodedEnv:
    """An environment as the init reads it (`encode_env`): its entry count and its NUL-terminated
    NAME=VALUE strings."""

    count: int
    block: bytes


def encode_env(env: Mapping[bytes, bytes]) -> EncodedEnv:
    """Encode `env` once for many commands. Raises ValueError on an embedded NUL."""
    items = [k + b"=" + v for k, v in env.items()]
    if any(b"\0" in item for item in items):
        raise ValueError("embedded null byte in the environment")
    return EncodedEnv(len(items), b"".join(item + b"\0" for item in items))


#: A command larger than this goes to the init in a memfd, not inline: the fork server's and a pre-forked
#: sandbox's sockets take one message of ~200 KiB at most (SOCK_SEQPACKET, net.core.wmem_max).
INLINE_COMMAND_MAX = 64 * 1024


def encode_command(
    argv: Sequence[bytes], env: Mapping[bytes, bytes] | EncodedEnv, cwd: bytes | None = None
) -> bytes:
    """The command as the init reads it: argc, envc, then each string NUL-terminated, then the cwd (one
    more string) when given. Raises ValueError on an embedded NUL (no exec could carry it) or an empty
    argv."""
    if not argv:
        raise ValueError("empty command")
    if any(b"\0" in arg for arg in argv) or (cwd is not None and (b"\0" in cwd or not cwd)):
        raise ValueError("embedded null byte in the command")
    encoded = env if isinstance(env, EncodedEnv) else encode_env(env)
    tail = (cwd + b"\0",) if cwd is not None else ()
    return b"".join(
        (struct.pack("=II", len(argv), encoded.count), *(a + b"\0" for a in argv), encoded.block, *tail)
    )
