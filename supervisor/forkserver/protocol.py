"""The fork-server protocol: every message, reply and record that crosses the process boundary between the
supervisor, the fork server and a sandbox init, in the order they cross it. Nothing else crosses it.

Processes (docs/architecture.md draws them):
  supervisor   the caller's process: asyncio or trio, threads; forks nothing but the fork server
  fork server  `python -I -S` (supervisor/forkserver/server.py), single-threaded, standard library and
               corral's C extension only; started once per Supervisor (client.ForkServer)
  init         corral-init (supervisor/sandbox/_cinit.c), pid 1 of each sandbox, a child of the supervisor
               (CLONE_PARENT); runs the plan, then the command
  command      the caller's command, the init's child

The order, per Supervisor:
  1. start      supervisor -> fork server: argv `BOOT_ARGS`, the socket (SOCK_SEQPACKET) and the `SLOT` memfd
                fork server -> supervisor: one message, the probe report (`ProbeReport`)
  2. requests   supervisor -> fork server: a `SpawnRequest` or a `PreforkRequest`, one message each, with fds
                (SCM_RIGHTS): the command's stdio and passed fds (+ under network mode "proxy" the
                socket at `proxy_fd`, + the command's memfd when `cmd_fd`) for a spawn, none for a
                prefork. Pipelined: the server answers in the order it was asked.
                Before launching an init the server stores (pid, request number) in `SLOT`.
  3. replies    fork server -> supervisor: a `Reply`, one message, with fds: `SPAWN_REPLY_FDS` (pidfd,
                status pipe) or `PREFORK_REPLY_FDS` (pidfd, status pipe, ctl socket); none when nothing was
                started. A reply with fds AND an `error`: the init started and could not go on; reap it.
  4. plan       fork server -> init: the plan through a pipe (supervisor/sandbox/_ops.py lays it out; the
                C structs are in _cinit.c; it never reaches the supervisor)
  5. command    (pre-forked sandbox only) supervisor -> init on the ctl socket: `CTL_INLINE` + the command
                (`_ops.encode_command`), or `CTL_MEMFD` with the command's memfd as the last fd; the
                command's stdio fds with it
  5a. proxy     (network mode "proxy") init -> supervisor, during its plan (OP_PROXY_LISTEN): one message
                `PROXY_LISTENER` with the proxy's listening socket (SCM_RIGHTS), made in the sandbox's
                network namespace, on the spawn request's `proxy_fd` socket, or a pre-forked sandbox's
                ctl socket (before its R record)
  6. status     init -> supervisor on the status pipe, one write per record (`split_record`):
                  E `FailureRecord`   a step or the exec failed (the init exits 125, or 127 for the exec)
                  R `ReadyRecord`     pre-forked: confined, waiting for its command on the ctl socket
                  X `ExecRecord`      the command is running
                  S `ExitRecord`      the command's wait status and usage; then the init exits
                  D `DenialRecord`    a distinct refusal of the seccomp filter, once each (between X and
                                      S; only with a notifying filter: docs/denials.md)

Why TypedDicts over marshal, and not dataclasses or fixed binary records: the compiled policy is nested
builtins of every mechanism module's own making (Landlock rule lists, seccomp BPF bytes, mount plans), which
marshal carries as it is, faster than any other serialiser the standard library has (pickle would also
execute whatever it is given). A TypedDict is a plain dict at run time: the wire format and its cost stay as
they were (the spawn path's budget is a few hundred microseconds), while mypy checks every key at both ends.
Dataclasses would need a conversion on each side per message, and fixed binary records would need a layout
per record kind kept in sync by hand between Python and C: the status records are written by the C init,
which emits the marshal subset `split_record` reads. Every record the init writes is checked against the
kinds and the size bound here before it is trusted (`split_record`).
"""

from __future__ import annotations

import marshal
import struct
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast

from supervisor.sandbox._sys import FailureRecord as FailureRecord  # re-exported: part of the protocol

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from supervisor.sandbox import capabilities, landlock, mounts, namespaces

# ----------------------------------------------------------------------------------------------------------
# Transport.

#: At most this many fds travel with one message (both directions).
MAX_FDS = 64
#: The fork server's receive buffer for one request (the command and its environment come inline up to
#: _ops.INLINE_COMMAND_MAX, in a memfd beyond; a compiled policy is a few KiB to a few hundred KiB).
MAX_REQUEST = 1 << 20
#: The supervisor's receive buffer for one reply, and for the probe report.
MAX_REPLY = 1 << 16

#: The slot shared by the supervisor and the fork server (a memfd of one page): the pid of the fork server's
#: last clone, stored by the kernel (CLONE_PARENT_SETTID) before the init runs, and the number (1-based) of
#: the request it was for. If the server dies before its reply, the supervisor still knows that init.
SLOT = struct.Struct("=iI")

#: The fork server's command line after the interpreter: `python -I -S -c BOOT ROOT SOCK_FD SLOT_FD`. The
#: tree's root goes first on sys.path; supervisor/__init__.py loads the API lazily, so importing the server
#: loads no more than the standard library, the mechanism modules and the C extension.
BOOT = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from supervisor.forkserver.server import main\n"
    "main(int(sys.argv[2]), int(sys.argv[3]))\n"
)

#: The kernel features the fork server found (probe.probe_in_fork_server), its first message.
ProbeReport = dict[str, object]


def encode(message: Request | Reply | ProbeReport) -> bytes:
    """One message's bytes. (A TypedDict is a dict at run time; typeshed's marshal does not know that.)"""
    return marshal.dumps(cast("dict[str, Any]", message))


def decode_request(message: bytes | memoryview) -> Request:
    """A request the fork server received (from the supervisor, which it trusts: its own parent)."""
    request: Request = marshal.loads(message)
    return request


def decode_reply(message: bytes) -> Reply:
    """A reply the supervisor received (from the fork server, its own child)."""
    reply: Reply = marshal.loads(message)
    return reply


# ----------------------------------------------------------------------------------------------------------
# The compiled policy (supervisor/_plan.py makes it, once per policy; the fork server keeps it by id).


class CompiledPayload(TypedDict):
    """Each mechanism module's `prepare` output, which its `emit` reads in the fork server."""

    ns: namespaces.Prepared
    cgroupns: bool  # a cgroup namespace (step 7)
    mounts: mounts.Prepared | None  # None: no mount namespace
    landlock: landlock.Prepared | None  # None: no Landlock
    seccomp: dict[str, object] | None  # seccomp.prepare; None: no filter
    rlimits: list[tuple[int, int, int]]  # rlimits.prepare
    caps: capabilities.Prepared


# ----------------------------------------------------------------------------------------------------------
# Requests (supervisor -> fork server).


class _PolicyFields(TypedDict):
    """What every request carries about its policy. The compiled policy is sent with the first request
    naming its id, and again after the supervisor had the server forget it."""

    policy_id: int
    policy: NotRequired[CompiledPayload]
    once: NotRequired[bool]  # drop the policy after this request (the supervisor does not keep it)
    forget: NotRequired[list[int]]  # ids to drop before this request (the supervisor's LRU evicted them)


class SpawnRequest(_PolicyFields):
    """Build a sandbox now and run `cmd` in it. Fds: stdin, stdout, stderr, the passed fds, and with
    `cmd_fd` the command's memfd last. `ctty`: stdin (a pty) becomes the controlling terminal of the
    sandbox's session."""

    cwd: str
    cgroup_procs: NotRequired[list[str]]  # the leaf's placement files (step 4); none: no cgroup
    cmd: NotRequired[bytes]  # _ops.encode_command's bytes, when not in a memfd
    cmd_fd: NotRequired[bool]
    ctty: NotRequired[bool]
    proxy_fd: NotRequired[int]  # network mode "proxy": the index among the fds of the socket of step 5a


#: The message an init sends with the proxy's listening socket (step 5a; _cinit.c, proxy_listen).
PROXY_LISTENER = b"L"


class PreforkRequest(_PolicyFields):
    """Build a sandbox for this policy, workdir and cgroup that waits for its command (CTL_*). No fds.
    `view`: the digest (mounts.digest) of the fingerprint the supervisor took just before, which it compares
    the paths with at the sandbox's R record and at the request: a view the fork server packed for that
    same fingerprint is reused without a fingerprint of its own."""

    op: Literal["prefork"]
    cwd: str
    cgroup_procs: list[str]
    view: NotRequired[bytes]


Request = SpawnRequest | PreforkRequest


def is_prefork(request: Request) -> TypeIs[PreforkRequest]:
    """Whether `request` is a PreforkRequest (else a SpawnRequest)."""
    return request.get("op") == "prefork"


# ----------------------------------------------------------------------------------------------------------
# Replies (fork server -> supervisor), one per request, in order.


class Reply(TypedDict, total=False):
    """`pid`: the init's host pid, when one was cloned; `error`: why the sandbox cannot run; `absent`: the
    protected paths outside `.git` missing before it was cloned, as [root, the path relative to it]
    (noted when its view was built: _ops.Plan.absent)."""

    pid: int
    error: FailureRecord
    absent: list[list[str]]
    #: The writable roots without a `.git` when the sandbox's view was built (_ops.Plan.nogit).
    nogit: list[str]


def absent_pairs(reply: Reply) -> tuple[tuple[str, str], ...]:
    """The reply's `absent` (protected paths missing before the sandbox was cloned), checked."""
    absent = reply.get("absent")
    if not isinstance(absent, list):
        return ()
    return tuple(
        (pair[0], pair[1])
        for pair in absent
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
    )


def nogit_roots(reply: Reply) -> tuple[str, ...]:
    """The reply's `nogit`, checked."""
    nogit = reply.get("nogit")
    if not isinstance(nogit, list):
        return ()
    return tuple(r for r in nogit if isinstance(r, str))


#: Fds that come with a reply that started a sandbox.
SPAWN_REPLY_FDS = 2  # pidfd, status pipe (read end)
PREFORK_REPLY_FDS = 3  # pidfd, status pipe, ctl socket (the supervisor's end)


def bug_failure(exc: BaseException) -> FailureRecord:
    """The reply's error for an exception the fork server did not expect."""
    return {
        "layer": "fork server",
        "operation": repr(exc),
        "errno": 0,
        "path": None,
        "hint": "this is a corral bug; please report it",
    }


# ----------------------------------------------------------------------------------------------------------
# The ctl socket of a pre-forked sandbox (supervisor -> init), one message.

CTL_INLINE = b"I"  # the command follows in the message
CTL_MEMFD = b"F"  # the command is in the last fd sent


# ----------------------------------------------------------------------------------------------------------
# Status records (init -> supervisor), on the status pipe: kind byte, u32 length (native order), marshal
# payload (written by _cinit.c: dict, str, int, float, bool, None; a string that is not UTF-8 as bytes).

RECORD_HEADER = struct.Struct("=cI")
MAX_RECORD = 1 << 16

FAILED = b"E"
READY = b"R"
EXEC = b"X"
EXIT = b"S"
DENIED = b"D"
KINDS = (FAILED, READY, EXEC, EXIT, DENIED)


class ReadyRecord(TypedDict):
    """R: confined, waiting for the command (nothing in it)."""


class ExecRecord(TypedDict):
    """X: the command is running; `pid` is its pid inside the sandbox's pid namespace."""

    pid: int


class ExitRecord(TypedDict):
    """S: the command's wait status and usage.

    alone: every other process of the sandbox is gone (the init killed and reaped them), so the result is
    final before the init exits. ended: when the command ended (CLOCK_MONOTONIC, ns), by which its
    wall-clock limit is judged. elf: the command file's ABI, when SIGSYS killed it under the seccomp filter.
    protected: the protected configs the command tried to replace (OP_WATCH), when any.
    """

    status: int
    cpu: float
    maxrss: int
    alone: bool
    ended: NotRequired[int]
    elf: NotRequired[str]
    #: With a notifying seccomp filter: the calls refused per D record, in the order sent, and the refused
    #: calls past the init's bound (64 distinct). Absent: the kernel refused the init a listener.
    dcounts: NotRequired[list[int]]
    ddropped: NotRequired[int]
    protected: NotRequired[list[str]]


class DenialRecord(TypedDict):
    """D: the seccomp filter notified the init of a refused call of a kind not seen before in this sandbox
    (its number and decisive arguments, `seccomp.DECISIVE`), which the init answered with `errno`. `args`
    are the six raw arguments (signed 64-bit as marshal carries them), `pid` the caller in the sandbox."""

    nr: int
    arch: int
    args: list[int]
    pid: int
    errno: int
    #: A watched connect/sendto off loopback (layer "network"): its destination, "a.b.c.d:port" or
    #: "[v6]:port", as read from the caller's memory; errno is then what the kernel answers (ENETUNREACH).
    addr: NotRequired[str]
    #: The verdict when it is not an errno (then 0): SECCOMP_RET_LOG (a profile's log or trace: the call
    #: ran) or SECCOMP_RET_KILL_PROCESS (a profile's kill_process: the init killed the caller's process).
    act: NotRequired[int]


StatusPayload = FailureRecord | ReadyRecord | ExecRecord | ExitRecord | DenialRecord
Record = tuple[bytes, dict[str, object]]


class Malformed(Exception):
    """A status record that does not parse: the supervisor treats it as the end of the stream."""


def split_record(buf: bytes) -> tuple[Record, bytes] | None:
    """The first whole record in `buf` and what follows it, or None when `buf` does not hold one yet.
    Strings the init sent as bytes (not UTF-8: a path or name a sandbox chose) come back decoded with
    surrogateescape. Raises Malformed for an unknown kind, an oversized length or a payload that is not a
    marshal dict (only the init writes the pipe, but nothing it sends is trusted)."""
    if len(buf) < RECORD_HEADER.size:
        return None
    kind, n = RECORD_HEADER.unpack_from(buf)
    if kind not in KINDS or n > MAX_RECORD:
        raise Malformed(kind)
    end = RECORD_HEADER.size + n
    if len(buf) < end:
        return None
    try:
        payload = marshal.loads(buf[RECORD_HEADER.size : end])
    except (EOFError, ValueError, TypeError) as err:
        raise Malformed(kind) from err
    if not isinstance(payload, dict):
        raise Malformed(kind)
    for key, value in payload.items():
        if isinstance(value, bytes):
            payload[key] = value.decode("utf-8", "surrogateescape")
    return (kind, payload), buf[end:]


def exit_record(payload: dict[str, object]) -> ExitRecord | None:
    """An S record's payload, checked: None when a required field is missing or of the wrong type (the
    exit is then judged by the init's own wait status)."""
    status, cpu, maxrss = payload.get("status"), payload.get("cpu"), payload.get("maxrss")
    if not isinstance(status, int) or not isinstance(cpu, int | float) or not isinstance(maxrss, int):
        return None
    record: ExitRecord = {"status": status, "cpu": float(cpu), "maxrss": maxrss, "alone": False}
    record["alone"] = payload.get("alone") is True
    ended, elf = payload.get("ended"), payload.get("elf")
    if isinstance(ended, int):
        record["ended"] = ended
    if isinstance(elf, str):
        record["elf"] = elf
    dcounts, ddropped = payload.get("dcounts"), payload.get("ddropped")
    if isinstance(dcounts, list) and all(isinstance(c, int) for c in dcounts) and isinstance(ddropped, int):
        record["dcounts"] = dcounts
        record["ddropped"] = ddropped
    protected = payload.get("protected")
    if isinstance(protected, list):
        record["protected"] = [p for p in protected[:8] if isinstance(p, str)]
    return record


def denial_record(payload: dict[str, object]) -> DenialRecord | None:
    """A D record's payload, checked: None when a field is missing or of the wrong type."""
    nr, arch, args, pid, err = (payload.get(k) for k in ("nr", "arch", "args", "pid", "errno"))
    if not (isinstance(nr, int) and isinstance(arch, int) and isinstance(pid, int) and isinstance(err, int)):
        return None
    if not isinstance(args, list) or len(args) != 6 or not all(isinstance(a, int) for a in args):
        return None
    record: DenialRecord = {"nr": nr, "arch": arch, "args": args, "pid": pid, "errno": err}
    addr = payload.get("addr")
    if isinstance(addr, str):
        record["addr"] = addr[:100]
    act = payload.get("act")
    if isinstance(act, int):
        record["act"] = act
    return record
