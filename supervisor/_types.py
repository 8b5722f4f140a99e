"""The value types: what a child's run produces and what the caller gives to judge it. The bottom floor of
the engine: it imports the standard library and `policies` (to print) only, and every other module of the
engine may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

from policies._errors import printable

if TYPE_CHECKING:
    from policies._commands import CommandDecision

ViolationKind = Literal["memory", "pids", "wall_time", "cpu_time", "fds", "output", "disk"]


@dataclass(frozen=True, slots=True)
class Violation:
    """Why the supervisor (or the kernel, for memory) killed a child: the limit and what was observed."""

    kind: ViolationKind
    limit: float
    observed: float

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "limit": self.limit, "observed": self.observed}


@dataclass(frozen=True, slots=True)
class Denial:
    """One kind of refused action, with how often it was refused (docs/denials.md).

    layer:     which wall refused it: seccomp, landlock, mounts, network, proxy, cgroup, rlimit
               (supervisor._denials.LAYERS).
    operation: what was tried: syscall, write, read, execute, connect, bind, fork, ... (OPERATIONS).
    target:    the path, address, limit or syscall with its decisive argument (``unshare(CLONE_NEWUSER)``).
    pid:       the process refused first, as the sandbox numbers it (None when not known).
    count:     how many times it was refused (repeats fold into one record).
    hint:      one line a model can act on: which policy key or flag would allow it, or that none will.

    `target` and `hint` are printable, bounded text whoever made the record (`printable`, applied here):
    both may hold what a sandbox chose (a path, a proxy request's host), and a record reaches callers
    raw through `Result.denials`, the `denied` event and `line()`. The proxy's records carried a
    CONNECT target's ESC and BEL bytes into them until session 13.
    """

    layer: str
    operation: str
    target: str
    pid: int | None = None
    count: int = 1
    hint: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", printable(self.target))
        object.__setattr__(self, "hint", printable(self.hint))

    def to_dict(self) -> dict[str, object]:
        """The `corral run --json` form (README.md, "The CLI"): layer, operation, target, count, hint."""
        return {
            "layer": self.layer,
            "operation": self.operation,
            "target": self.target,
            "count": self.count,
            "hint": self.hint,
        }

    def line(self) -> str:
        """The CLI's stderr line, without its `corral: ` prefix."""
        times = f", {self.count} times" if self.count > 1 else ""
        return f"denied {self.operation} {self.target} ({self.layer}: {self.hint}{times})"


@dataclass(frozen=True, slots=True)
class Result:
    """How a child ended.

    exit_code: the shell-style status, as `corral run` exits: the command's own code, 128+N when killed by
               signal N, 137 when killed for a violation.
    signal:    the signal that ended the command, or None.
    violation: the limit that got it killed, or None.
    stdout/stderr: captured output (bounded; `*_truncated` says whether bytes were dropped).
    enforced:  the isolation layers that took effect; missing: (layer, reason) pairs skipped by best_effort.
    limit_hits: limits the kernel held without killing the command, with a count: "pids" (forks refused at
               pids.max), "memory_oom" (processes the OOM killer ended), "memory_socket" (cgroup v1: socket
               buffers reached the memory limit).
    quarantined: what was moved aside after the run, as (path, reason) pairs: files the command wrote in
               git repositories under its writable roots that would make the host user's git run code
               (hooks, config settings that run programs, a commondir pointing elsewhere: the git scan),
               and what it created at a protected path missing when it started (filesystem.protected).
    killed:    True when the violation is what ended the command (corral, or the kernel's OOM killer, killed
               it for the limit); False when a violation is only reported (pids.max held it).
    protected_writes: the read-only protected git configs (a repository's `.git/config`) the command tried
               to replace: `git config`, `git remote add`, `git branch -u` and `git submodule add` inside
               fail on them (git's message says "Device or resource busy"; `git branch -u` even claims
               success). Make such changes outside the sandbox (docs/security.md, "git: the post-run scan").
    refused_abi: when the command was killed by SIGSYS under the seccomp filter, which kills every syscall
               of a foreign ABI: "i386" or "x32" when the command's own file is such a binary, "i386 or
               x32" when it is a 64-bit one (a descendant, or `int $0x80` in 64-bit code); else None.
    network:   under network mode "proxy", the proxy's counters for this child: bytes_up (sent by the
               sandbox), bytes_down, allowed and denied connections, peak_connections; else None.
    denials:   what a layer refused (Denial: layer, operation, target, pid, count, hint), the first
               MAX_DENIALS (64) distinct ones in order; denials_dropped: refused calls past them.
    denials_unobservable: (layer, reason) pairs of layers in force whose refusals cannot be reported here
               (docs/denials.md): an empty `denials` says nothing about those.
    decision:  what the command rules decided (policies.CommandDecision: decision, rule, reason), or None
               when no rules were in use (docs/rules.md).
    """

    exit_code: int
    signal: int | None
    violation: Violation | None
    duration_s: float
    cpu_s: float
    peak_memory_bytes: int
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    enforced: tuple[str, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()
    pid: int = 0
    limit_hits: dict[str, int] = field(default_factory=dict)
    killed: bool = False
    quarantined: tuple[tuple[str, str], ...] = ()
    refused_abi: str | None = None
    network: dict[str, int] | None = None
    denials: tuple[Denial, ...] = ()
    denials_dropped: int = 0
    denials_unobservable: tuple[tuple[str, str], ...] = ()
    decision: CommandDecision | None = None
    protected_writes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.violation is None

    @property
    def outcome(self) -> Literal["ok", "error", "signal", "violation"]:
        """The bounded label exits are counted by: violation (killed for a limit), signal, error or ok."""
        if self.violation is not None and self.killed:
            return "violation"
        if self.signal is not None:
            return "signal"
        return "ok" if self.exit_code == 0 else "error"

    def to_json(self) -> dict[str, object]:
        """The `corral run --json` record (the CLI contract in README.md, "The CLI", plus `missing`)."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "violation": self.violation.to_dict() if self.violation else None,
            "duration_s": round(self.duration_s, 6),
            "cpu_s": round(self.cpu_s, 6),
            "peak_memory_bytes": self.peak_memory_bytes,
            "enforced": list(self.enforced),
            "missing": [{"layer": a, "reason": printable(b)} for a, b in self.missing],
            # Every key documented, 0 when nothing was held.
            "limit_hits": {**dict.fromkeys(LIMIT_HIT_KEYS, 0), **self.limit_hits},
            "refused_abi": self.refused_abi,
            "quarantined": [{"path": printable(p), "reason": printable(r)} for p, r in self.quarantined],
            "protected_writes": [printable(p) for p in self.protected_writes],
            "network": self.network,
            "denials": [d.to_dict() for d in self.denials],
            "denials_dropped": self.denials_dropped,
            "denials_unobservable": [{"layer": a, "reason": b} for a, b in self.denials_unobservable],
            # What the command rules decided (--rules), null without rules.
            "decision": self.decision.to_dict() if self.decision is not None else None,
        }


#: The keys `--json`'s limit_hits always carries (README): 0 when the kernel held nothing of that kind.
LIMIT_HIT_KEYS = ("pids", "memory_oom", "memory_socket", "disk_tmpfs")


class ChildStats(NamedTuple):
    """One sample of a child's whole tree. None where no source could measure it.

    memory_bytes: current memory (cgroup memory.current / usage_in_bytes; else the tree's summed RSS).
    memory_peak_bytes: high-water mark (cgroup memory.peak / max_usage_in_bytes).
    cpu_seconds: user + system CPU of the tree (cgroup; else psutil over the live tree).
    pids: tasks in the tree; open_fds: fds held across the tree, open or parked in flight in the receive
    queues of its unix sockets (`held_fds`; sampled only when needed).
    oom_kills: processes the kernel's OOM killer ended; pids_limit_hits: forks refused at pids.max.
    net_bytes_up, net_bytes_down, net_allowed, net_denied: under network mode "proxy", the bytes the proxy
    relayed from and to the sandbox so far and the connections it allowed and refused; None otherwise.
    at: when the sample was taken (time.monotonic()).

    How fresh (docs/architecture.md, "The sampler"): in `Child.last_stats` of a child whose limits need no
    live value (limits the kernel enforces, or none), the event counts are read at `at`; memory_bytes,
    memory_peak_bytes, cpu_seconds and pids are each read every fourth or fifth full round (4-5 s at the
    default monitor_interval) and carried in between, the peak then raised to the usage at each of its
    reads since (a lower bound of the kernel's peak, never above it). A Result's peak memory and CPU time
    are read at the exit, exact.
    """

    memory_bytes: int | None
    memory_peak_bytes: int | None
    cpu_seconds: float | None
    pids: int | None
    open_fds: int | None
    oom_kills: int
    pids_limit_hits: int
    at: float
    net_bytes_up: int | None = None
    net_bytes_down: int | None = None
    net_allowed: int | None = None
    net_denied: int | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """A user rule, as circus has them: kill the child when `metric` (a ChildStats field) stays above
    `threshold` for `samples` consecutive samples. Reported as a violation of `kind`."""

    metric: str
    threshold: float
    samples: int = 1
    kind: ViolationKind = "memory"


def rss_above(limit_bytes: int, samples: int = 3) -> Rule:
    """The classic: memory above `limit_bytes` for `samples` consecutive samples."""
    return Rule("memory_bytes", limit_bytes, samples, "memory")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the Enforcer concluded from a sample; `Child.apply` carries it out, in this order:

    limit_hits: counts of limits the kernel held (merged into the child's).
    report:     a violation to report without killing (the kernel held pids.max, or v1 socket buffers, and
                the command lives on), unless one is reported already.
    kill:       kill the child for this violation now (the first violation that kills wins).
    ended:      the violation that ended a child already gone (the kernel's OOM kill, SIGXFSZ, a disk
                budget reached after the last sample): reported as its killer.
    """

    limit_hits: dict[str, int] = field(default_factory=dict)
    report: Violation | None = None
    kill: Violation | None = None
    ended: Violation | None = None


#: The verdict that changes nothing.
NOTHING = Verdict()
