"""`corral` command line: the composition root (the only module that wires policies, supervisor and
exporters together).

Exit status of `corral run` (the contract in README.md, "The CLI"): the command's own; 128+N when it was
killed by signal N; 137 when corral killed it for a limit violation; 125 when corral itself failed (bad
option, bad policy, setup failure: one line on stderr); 126 command not executable; 127 command not found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import gc
import importlib.metadata
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import click
from anyio.abc import ByteReceiveStream

from policies import CommandRules, CorralError, Policy, PolicyError, load_policy, load_rules, profiles
from policies._seccomp import load_seccomp_profile
from supervisor._child import Child
from supervisor._errors import SandboxSetupError, SpawnError, printable
from supervisor._rules import CommandForbiddenError
from supervisor._spawnfds import PIPE
from supervisor._supervisor import Supervisor
from supervisor._terminal import PtyRelay, TerminalGuard
from supervisor._types import Result

EXIT_CORRAL = 125

#: `corral check`'s exit status per decision (README, "corral check"); 125 when the rules cannot be read.
CHECK_EXIT = {"allow": 0, "prompt": 1, "forbidden": 2}

_FORWARD = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


class _Fail(Exception):
    """A corral failure that ends the CLI with exit status 125 and one line on stderr."""


def _version() -> str:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never pip-installed
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(version=_version(), prog_name="corral", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """corral: run commands confined and bounded."""
    if ctx.invoked_subcommand is None:  # bare `corral`: the help, as git and docker print it
        click.echo(ctx.get_help())


@cli.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option(
    "--profile",
    type=click.Choice(profiles.NAMES),
    default=None,
    help="Built-in profile (default workspace-write, or the policy file's).",
)
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="Policy TOML file.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Working directory (default: cwd).")
@click.option("--allow-write", multiple=True, metavar="PATH", help="Also writable (repeatable).")
@click.option("--allow-read", multiple=True, metavar="PATH", help="Also readable (repeatable).")
@click.option("--deny", multiple=True, metavar="PATH", help="Hidden from the command (repeatable).")
@click.option(
    "--allow-system-write",
    is_flag=True,
    default=None,
    help="Let /, /etc, /usr, ... be the workdir or a writable root (refused otherwise).",
)
@click.option(
    "--network",
    type=click.Choice(["none", "host", "proxy"]),
    default=None,
    help="none: loopback only; host: the host's network; proxy: --allow-domain hosts only, by proxy.",
)
@click.option(
    "--allow-domain",
    "network_allow",
    multiple=True,
    metavar="NAME",
    help="Reachable by the proxy: NAME, *.NAME, NAME:PORT or an address (repeatable; implies proxy).",
)
@click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 512M.")
@click.option("--cpus", metavar="FLOAT", help="CPU quota in cores.")
@click.option("--pids", metavar="N", help="Maximum number of tasks.")
@click.option("--timeout", metavar="SECONDS", help="Wall-clock limit.")
@click.option("--cpu-time", metavar="SECONDS", help="CPU time limit.")
@click.option("--max-fds", metavar="N", help="Open file descriptor limit.")
@click.option("--max-output", metavar="SIZE", help="stdout+stderr byte limit.")
@click.option("--fsize", metavar="SIZE", help="Largest file the command may write (RLIMIT_FSIZE).")
@click.option("--disk", metavar="SIZE", help="Bytes the command may write into its writable roots in total.")
@click.option("--env", multiple=True, metavar="NAME[=VALUE]", help="Pass NAME through, or set it.")
@click.option("--clear-env", is_flag=True, default=None, help="Start from an empty environment.")
@click.option("--best-effort", is_flag=True, default=None, help="Run even if a layer is missing.")
@click.option(
    "--no-cgroup",
    "no_cgroup",
    is_flag=True,
    default=False,
    help="Use no cgroup (Supervisor(cgroups=False)): memory/cpus/pids then need --best-effort.",
)
@click.option(
    "--json",
    "json_file",
    metavar="FILE",
    help="Write the result here ('-': stdout). Opened before the command starts: never a symlink.",
)
@click.option(
    "--tty",
    "use_tty",
    is_flag=True,
    default=False,
    help="Run the command on a pty corral owns (its controlling terminal), relayed to this terminal.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics on PORT while the command runs.",
)
@click.option("--metrics-addr", metavar="ADDR", help="Bind address for --metrics-port (default 127.0.0.1).")
@click.option(
    "--seccomp-profile",
    "seccomp_profile",
    metavar="FILE",
    help="A seccomp profile in the OCI/Docker JSON format, added to the built-in filter.",
)
@click.option(
    "--rules",
    "rules_files",
    multiple=True,
    metavar="FILE",
    help="Command rules (TOML, or Codex .rules): a forbidden command exits 126 (repeatable).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    command: tuple[str, ...],
    rules_files: tuple[str, ...],
    policy_file: str | None,
    profile: str | None,
    json_file: str | None,
    metrics_port: int | None,
    metrics_addr: str | None,
    no_cgroup: bool,
    use_tty: bool,
    **opts: Any,
) -> None:
    """Run COMMAND in a sandbox. Put `--` before the command."""
    if metrics_addr is not None and metrics_port is None:
        msg = "--metrics-addr needs --metrics-port"
        raise click.UsageError(msg)
    metrics = (metrics_addr or "127.0.0.1", metrics_port) if metrics_port is not None else None
    # Opened first, before the command can plant anything at that path (a symlink to a host file that root
    # would then overwrite), and before the policy is read: once the file is accepted, every way this run
    # ends with an exit status corral chose (a bad policy: 125, a command not found: 127, forbidden by the
    # rules: 126) is recorded in it too, its `error` saying why (README, "The CLI").
    out = _JsonOut.open(json_file) if json_file is not None else None
    started = time.monotonic()
    try:
        try:
            policy = _build_policy(profile, policy_file, opts)
            rules = _load_rules(rules_files, policy.workdir)
            # The caller's terminal is put back as it was however the run ends (the command shares it, or
            # --tty puts it in raw mode). The files given as stdio (corral's own 0/1/2, the command's too)
            # are reopened out of the command's reach for metadata, or their mode put back when it ends
            # (the Supervisor's StdioShield: supervisor/_stdio_files.py).
            with TerminalGuard():
                code = anyio.run(_run, list(command), policy, out, metrics, not no_cgroup, use_tty, rules)
        except Exception as err:  # (every failure: main() maps each to its exit status)
            if out is not None and not out.written:
                out.write_failure(_leaf(err), time.monotonic() - started)
            raise
    finally:
        if out is not None:
            out.close()
    sys.exit(code)


def _build_policy(profile: str | None, policy_file: str | None, opts: dict[str, Any]) -> Policy:
    workdir = opts.pop("workdir")
    seccomp_file = opts.pop("seccomp_profile", None)
    given: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()}
    given = {k: v for k, v in given.items() if v not in (None, [])}
    if policy_file is not None:
        # --profile supplies the defaults for what the file does not say; the file's own `profile` key,
        # when present, is more specific and wins.
        base = load_policy(policy_file, workdir=workdir, base=profile)
        policy = profiles.override(base, **given)
    else:
        policy = profiles.get(profile or "workspace-write", workdir, **given)
    _refuse_ambiguous_paths(given, policy.workdir)
    if seccomp_file is not None:
        # An OCI/Docker JSON profile, added to the built-in filter (docs/seccomp.md, "Profiles").
        syscalls = dataclasses.replace(policy.syscalls, profile=load_seccomp_profile(seccomp_file))
        policy = dataclasses.replace(policy, syscalls=syscalls)
    return policy


#: The path options whose relative values a policy resolves against the workdir.
_PATH_OPTIONS = ("allow_write", "allow_read", "deny")


def _refuse_ambiguous_paths(given: dict[str, Any], workdir: str | None) -> None:
    """Raise PolicyError for a relative --allow-write/--allow-read/--deny when the workdir is not the current
    directory. The policy resolves it against the workdir, the shell's habit against the current
    directory: `cd ~/proj && corral run --workdir build --deny .env` hid build/.env and left ~/proj/.env,
    the one meant, readable. When both are the same directory (the default workdir) there is no doubt."""
    if workdir is None:
        return
    try:
        here = os.path.realpath(os.getcwd())
    except OSError:  # the current directory was removed: nothing relative can mean it
        return
    if os.path.realpath(workdir) == here:
        return
    for key in _PATH_OPTIONS:
        for value in given.get(key, ()):
            text = os.fspath(value)
            if not os.path.isabs(text) and not text.startswith("~"):
                flag = "--" + key.replace("_", "-")
                msg = (
                    f"{text!r} is relative, and the workdir ({workdir}) is not the current directory "
                    f"({here}): give it as an absolute path (or ~/...)"
                )
                raise PolicyError(flag, msg, text)


def _load_rules(files: Sequence[str], workdir: str | None) -> CommandRules | None:
    """The command rules of every --rules file, as one set; None without any."""
    if not files:
        return None
    sets = [load_rules(f, workdir=workdir) for f in files]
    return sets[0] if len(sets) == 1 else CommandRules.merge(*sets)


def _serve_metrics(
    sup: Supervisor, metrics: tuple[str, int] | None
) -> contextlib.AbstractAsyncContextManager[object]:
    """A Prometheus endpoint on (addr, port) for the supervisor's lifetime, or nothing. Raises OSError when
    the address cannot be bound (before the command starts)."""
    if metrics is None:
        return contextlib.nullcontext()
    # Imported only when asked for: prometheus_client would add to every `corral run`'s start-up time.
    from exporters import serve_metrics

    addr, port = metrics
    return serve_metrics(sup, port, addr)


async def _run(
    command: list[str],
    policy: Policy,
    out: _JsonOut | None,
    metrics: tuple[str, int] | None = None,
    cgroups: bool = True,
    use_tty: bool = False,
    rules: CommandRules | None = None,
) -> int:
    # With an output limit corral must see the bytes, so stdout/stderr go through pipes it copies to its
    # own; otherwise the command writes straight to corral's stdout/stderr (a terminal stays a terminal).
    # With --tty, a pty of corral's is all three, and corral relays (and counts) what goes through it.
    # A command rule may run the command under another policy: its output limit is the one counted.
    effective = rules.evaluate(command).policy_for(policy) if rules is not None else policy
    counted = effective.resources.output is not None
    pipe = PIPE if counted else None
    if use_tty:
        return await _run_on_pty(command, policy, out, metrics, cgroups, rules)
    # The signal receiver is installed before the command starts, so no forwarded signal can kill corral
    # itself in between; signals that arrive before the command runs are delivered once it does.
    with anyio.open_signal_receiver(*_FORWARD) as signals:
        async with (
            Supervisor(max_concurrency=1, prefork=0, cgroups=cgroups, rules=rules) as sup,
            _serve_metrics(sup, metrics),
        ):
            child = await sup.start(command, policy=policy, stdin=None, stdout=pipe, stderr=pipe)
            async with anyio.create_task_group() as tg:

                async def forward() -> None:
                    async for signum in signals:
                        child.send_signal(signum)

                tg.start_soon(forward)
                if counted:
                    limit = effective.resources.output
                    assert limit is not None
                    async with anyio.create_task_group() as copiers:
                        copiers.start_soon(_copy, child, child.stdout, 1, limit)
                        copiers.start_soon(_copy, child, child.stderr, 2, limit)
                        result = await child.wait()
                else:
                    result = await child.wait()
                tg.cancel_scope.cancel()
    return _finish(result, out)


async def _run_on_pty(
    command: list[str],
    policy: Policy,
    out: _JsonOut | None,
    metrics: tuple[str, int] | None,
    cgroups: bool,
    rules: CommandRules | None = None,
) -> int:
    """`corral run --tty`: the command on a pty of corral's (PtyRelay), signals forwarded as usual."""
    try:
        pty = PtyRelay()
    except OSError as err:
        msg = f"--tty: cannot allocate a pty (openpty: {err.strerror})"
        raise _Fail(msg) from err
    try:
        with anyio.open_signal_receiver(*_FORWARD) as signals:
            async with (
                Supervisor(max_concurrency=1, prefork=0, cgroups=cgroups, rules=rules) as sup,
                _serve_metrics(sup, metrics),
            ):
                child = await sup.start(
                    command,
                    policy=policy,
                    stdin=pty.slave,
                    stdout=pty.slave,
                    stderr=pty.slave,
                    controlling_tty=True,
                )
                pty.close_slave()
                async with anyio.create_task_group() as tg:

                    async def forward() -> None:
                        async for signum in signals:
                            child.send_signal(signum)

                    tg.start_soon(forward)
                    relayed = anyio.Event()

                    async def relay() -> None:
                        try:
                            await pty.relay(child, policy.resources.output)
                        finally:
                            relayed.set()

                    tg.start_soon(relay)
                    result = await child.wait()
                    # What the command wrote last may still be in the pty: the relay ends at its EOF (every
                    # process of the sandbox is gone by now), or soon after in any case.
                    with anyio.move_on_after(2):
                        await relayed.wait()
                    tg.cancel_scope.cancel()
    finally:
        pty.close()
    return _finish(result, out)


def _finish(result: Result, out: _JsonOut | None) -> int:
    if out is not None:
        out.write(result)
    v = result.violation
    if v is not None and result.exit_code == 137:
        limit, observed = _human(v.kind, v.limit), _human(v.kind, v.observed)
        click.echo(f"corral: killed: {v.kind} limit {limit} exceeded (observed {observed})", err=True)
    elif v is not None:  # held by the kernel, survived (pids.max refused forks)
        click.echo(f"corral: {v.kind} limit {_human(v.kind, v.limit)} reached: the kernel refused", err=True)
    for denial in result.denials:  # one line per distinct denial, repeats folded
        _say(denial.line())
    if result.denials_dropped:
        _say(f"denied {result.denials_dropped} more calls (past the first {len(result.denials)} distinct)")
    if result.signal == signal.SIGSYS and result.refused_abi is None and "seccomp" in result.enforced:
        click.echo("corral: killed by SIGSYS: a syscall the seccomp profile kills", err=True)
    if result.refused_abi is not None:
        click.echo(
            f"corral: killed by SIGSYS: the seccomp filter kills every {result.refused_abi} syscall "
            "(a 32-bit program?); sandboxed commands run x86_64 code only",
            err=True,
        )
    return result.exit_code


def exit_status(error: BaseException) -> int:
    """The exit status a failure ends `corral run` with: 126 or 127 for a command that could not be started
    or that the rules forbid (the error's `exit_code`), else 125 (corral itself failed)."""
    if isinstance(error, (SpawnError, CommandForbiddenError)):
        return error.exit_code
    return EXIT_CORRAL


#: The structured fields each error class carries into the --json record's `error` (its own attribute names).
_ERROR_FIELDS: tuple[tuple[type[BaseException], tuple[str, ...]], ...] = (
    (SandboxSetupError, ("layer", "operation", "path", "errno", "hint")),
    (SpawnError, ("argv0", "errno")),
    (PolicyError, ("path", "reason", "source")),
    (CommandForbiddenError, ("justification", "approval")),
    (OSError, ("errno", "filename")),
)


def failure_json(error: BaseException) -> dict[str, object]:
    """The --json record's `error`: the error's class name (`type`), its one-line message as printed on
    stderr (`message`) and its structured fields (strings made printable: a path a sandbox chose)."""
    out: dict[str, object] = {"type": type(error).__name__, "message": printable(error)}
    for cls, names in _ERROR_FIELDS:
        if isinstance(error, cls):
            for name in names:
                value = getattr(error, name, None)
                if isinstance(value, bytes | os.PathLike):
                    value = os.fsdecode(value)
                out[name] = printable(value) if isinstance(value, str) else value
            break
    return out


def _human(kind: str, value: float) -> str:
    """A limit or observation in the unit people read: sizes in KiB/MiB/GiB, times in seconds."""
    if kind in ("memory", "output", "disk"):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.4g} {unit}"
        return f"{value:g} bytes"
    if kind in ("wall_time", "cpu_time"):
        return f"{value:g} s"
    return f"{value:g}"


async def _copy(child: Child, stream: ByteReceiveStream | None, fd: int, limit: int) -> None:
    """Copy the child's output to our fd `fd`, counting stdout and stderr together against `limit`: the
    bytes up to the limit are written, then the child is killed for an output violation. When our fd is a
    pipe nobody reads any more (`corral run --max-output 1M -- yes | head -1`), or cannot be written at all,
    copying stops and the child's pipe is closed: its next write gets SIGPIPE, as it would writing to our
    fd itself (exit 141)."""
    if stream is None:
        return
    async with stream:
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                return
            room = child.count_output(len(data), limit)
            if room > 0:
                try:
                    await anyio.to_thread.run_sync(_write_all, fd, data[:room])
                except OSError:  # EPIPE; or EBADF, EIO: a closed fd, a hung-up terminal
                    return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _JsonOut:
    """Where `--json` goes: stdout ('-') or a file opened before the command starts.

    The command may write the file's directory (the workdir, the natural place for it), and corral may run
    as root: whatever it leaves at the path after the run (a symlink to /etc/passwd, a FIFO) must not be
    what corral writes through. So the file is opened once, up front, without following a symlink
    (O_NOFOLLOW), and must be a regular file with no other hard link; the result is written through that
    fd at the end (truncated first). A file corral created that was never written (corral was interrupted
    before any record: every ordinary failure writes one) is removed again, by the fd of its directory and
    only while the name is still that file.
    """

    def __init__(self, path: str, fd: int | None, dirfd: int | None = None, created: bool = False) -> None:
        self.path = path
        self._fd = fd
        self._dirfd = dirfd
        self._created = created
        self._written = False

    @classmethod
    def open(cls, path: str) -> _JsonOut:
        """Open (or create, mode 0666 & ~umask) the --json file. Raises _Fail (exit 125, before the command
        runs) when it is a symlink, not a regular file, has other hard links, or cannot be opened."""
        if path == "-":
            return cls(path, None)
        from policies._files import user_file

        try:
            # `--json=~/r.json` is the home's (no shell expands a `~` after `=`): it created `./~/r.json`,
            # in a directory called `~` that a sandbox may make in the workdir.
            path = user_file(path)
        except ValueError as err:
            msg = f"--json {path!r}: {err}"
            raise _Fail(msg) from err
        parent, name = os.path.split(path)
        if name in ("", ".", ".."):
            msg = f"--json {path!r} names a directory, not a file"
            raise _Fail(msg)
        dirfd = cls._open_dir(parent)
        try:
            fd, created = cls._open_file(dirfd, path, name)
        except BaseException:
            os.close(dirfd)
            raise
        return cls(path, fd, dirfd, created)

    @staticmethod
    def _open_dir(parent: str) -> int:
        """An O_PATH fd of the --json file's directory, reached without following a symlink a sandbox could
        have planted: an earlier run that may write the workdir can make `reports` a link to `/etc/cron.d`,
        and `--json reports/r.json` would then have corral (root) create a file there. The symlinks
        resolved are those no sandbox could have made (policies._validate.resolve_trusted, as for the
        workdir); any other on the way is refused (_Fail, exit 125), as `--workdir` through one is."""
        from policies._validate import resolve_trusted
        from supervisor.sandbox import _hostfs

        where = resolve_trusted(os.path.abspath(parent or "."))
        try:
            root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if where == "/":
                    return os.dup(root)
                return _hostfs.open_beneath(root, where.lstrip("/"), os.O_PATH | os.O_DIRECTORY)
            finally:
                os.close(root)
        except OSError as err:
            why = (
                "it passes through a symlink that a sandbox could have planted (give its real path)"
                if err.errno == errno.ELOOP
                else err.strerror
            )
            msg = f"cannot open --json file's directory {parent or '.'!r}: {why}"
            raise _Fail(msg) from err

    @staticmethod
    def _open_file(dirfd: int, path: str, name: str) -> tuple[int, bool]:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=dirfd), True
        except FileExistsError:
            pass
        except OSError as err:
            msg = f"cannot create --json file {path!r}: {err.strerror}"
            raise _Fail(msg) from err
        try:
            # Looked at before it is opened: opening a device or a FIFO can itself have effects.
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            _JsonOut._check(path, st)
            fd = os.open(name, flags, dir_fd=dirfd)
        except OSError as err:
            hint = "it is a symlink" if err.errno == errno.ELOOP else err.strerror
            msg = f"cannot open --json file {path!r}: {hint}; corral writes only a regular file there"
            raise _Fail(msg) from err
        try:
            _JsonOut._check(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd, False

    @staticmethod
    def _check(path: str, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            msg = f"--json file {path!r} is a symlink; corral does not write through one: remove it"
            raise _Fail(msg)
        if not stat.S_ISREG(st.st_mode):
            msg = f"--json file {path!r} is not a regular file; remove it or choose another path"
            raise _Fail(msg)
        if st.st_nlink > 1:
            msg = f"--json file {path!r} has {st.st_nlink} hard links; corral writes only a file of its own"
            raise _Fail(msg)

    @property
    def written(self) -> bool:
        """Whether a record was written."""
        return self._written

    def write(self, result: Result, error: Exception | None = None) -> None:
        """Write the result's record, its `error` null or what `error` says (`failure_json`), truncating
        what the file held. Raises _Fail."""
        record = {**result.to_json(), "error": failure_json(error) if error is not None else None}
        data = (json.dumps(record, indent=2) + "\n").encode()
        try:
            if self._fd is None:
                sys.stdout.flush()
                _write_all(1, data)
            else:
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
                _write_all(self._fd, data)
        except OSError as err:
            msg = f"cannot write --json file {self.path}: {err.strerror}"
            raise _Fail(msg) from err
        self._written = True

    def write_failure(self, error: Exception, duration_s: float) -> None:
        """The record of a run that ended in `error` before the command ran (or could be waited for): the
        exit status corral exits with (`exit_status`), every field of an ordinary record (nothing
        enforced, nothing measured) and `error`. Raises _Fail."""
        decision = error.decision if isinstance(error, CommandForbiddenError) else None
        result = Result(exit_status(error), None, None, duration_s, 0.0, 0, decision=decision)
        self.write(result, error)

    def close(self) -> None:
        """Close the file; remove it when corral created it and wrote nothing (the command never ran)."""
        if self._fd is None or self._dirfd is None:
            return
        try:
            if self._created and not self._written:
                with contextlib.suppress(OSError):
                    mine = os.fstat(self._fd)
                    there = os.stat(os.path.basename(self.path), dir_fd=self._dirfd, follow_symlinks=False)
                    if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                        os.unlink(os.path.basename(self.path), dir_fd=self._dirfd)
        finally:
            os.close(self._fd)
            os.close(self._dirfd)
            self._fd = self._dirfd = None


#: `corral run` options that make no sense for a server (one command, its terminal, its --json file).
_NOT_MCP = frozenset({"command", "json_file", "use_tty"})


@cli.command("mcp", context_settings={"ignore_unknown_options": False})
@click.option(
    "--http",
    "http",
    metavar="HOST:PORT",
    help="Serve streamable HTTP on HOST:PORT (path /mcp; port 0: any free port) instead of stdio.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File whose first line is the bearer token HTTP clients must send (or set CORRAL_MCP_TOKEN). "
    "Required to bind a non-loopback address.",
)
@click.option("--no-shell", is_flag=True, default=False, help="Refuse shell strings; argv lists only.")
@click.option(
    "--max-background", type=click.IntRange(0, 1024), default=8, show_default=True, help="Per session."
)
@click.option("--max-concurrency", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop a background command nobody has read or written for this long.",
)
@click.option(
    "--approval-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the client's user has to approve a command the --rules mark `prompt`.",
)
def mcp(
    http: str | None,
    token_file: str | None,
    no_shell: bool,
    max_background: int,
    max_concurrency: int,
    idle_timeout: float,
    approval_timeout: float,
    **opts: Any,
) -> None:
    """Serve sandboxed command execution to MCP clients (stdio by default). Takes `corral run`'s policy,
    limit and metrics options; every command a client runs is confined by them. See docs/mcp.md."""
    try:
        from supervisor import mcp_server
    except ImportError as err:
        msg = f"corral mcp needs the MCP SDK ({err.name or err}): pip install 'corral[mcp]'"
        raise _Fail(msg) from err
    for flag, seconds in (("--idle-timeout", idle_timeout), ("--approval-timeout", approval_timeout)):
        if seconds != seconds:  # NaN passes click's range checks (every comparison with it is false)
            msg = f"{flag}: nan is not a number of seconds"
            raise click.UsageError(msg)
    metrics_port, metrics_addr = opts.pop("metrics_port"), opts.pop("metrics_addr")
    if metrics_addr is not None and metrics_port is None:
        msg = "--metrics-addr needs --metrics-port"
        raise click.UsageError(msg)
    metrics = (metrics_addr or "127.0.0.1", metrics_port) if metrics_port is not None else None
    cgroups = not opts.pop("no_cgroup")
    rules_files = opts.pop("rules_files")
    policy = _build_policy(opts.pop("profile"), opts.pop("policy_file"), opts)
    rules = _load_rules(rules_files, policy.workdir)
    workdir = policy.workdir or os.getcwd()
    if not os.path.isdir(workdir):
        msg = f"--workdir {workdir!r} is not a directory"
        raise _Fail(msg)
    address = _host_port(http) if http is not None else None
    token = _token(token_file)
    settings = mcp_server.McpSettings(
        policy=policy,
        shell=not no_shell,
        max_background=max_background,
        max_concurrency=max_concurrency,
        idle_timeout=idle_timeout,
        cgroups=cgroups,
        rules=rules,
        approval_timeout=approval_timeout,
    )

    def ready(where: str) -> None:
        _say(f"mcp: serving on {where} (workdir {workdir}, profile {policy.profile})")

    # The SDK and pydantic leave ~90,000 long-lived objects; frozen, the collector stops walking them (a
    # full collection of them took ~0.1 s under load, every ~1,000 calls). This process is the server's.
    gc.freeze()
    try:
        anyio.run(
            functools.partial(
                mcp_server.serve,
                settings,
                http=address,
                token=token,
                around=lambda sup: _serve_metrics(sup, metrics),
                ready=ready,
            )
        )
    except ValueError as err:
        raise _Fail(str(err)) from err


def _host_port(value: str) -> tuple[str, int]:
    """--http HOST:PORT ([::1]:PORT for IPv6; PORT alone means 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535 or not host:
        msg = f"--http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765"
        raise click.UsageError(msg)
    return host, number


def _token(token_file: str | None) -> str | None:
    """The bearer token: --token-file's first line, else $CORRAL_MCP_TOKEN, else None."""
    if token_file is not None:
        from policies._files import read_bounded

        try:
            # As a policy file is read (policies/_files.py): a FIFO planted there held the server's start
            # for ever, and a symlink a sandbox could have planted is not followed.
            data = read_bounded(token_file, 1 << 16)
            token = data.decode("utf-8").split("\n", 1)[0].strip()
        except OSError as err:
            msg = f"cannot read --token-file {token_file!r}: {err.strerror}"
            raise _Fail(msg) from err
        except ValueError as err:  # UnicodeDecodeError among them
            msg = f"cannot read --token-file {token_file!r}: {err}"
            raise _Fail(msg) from err
        if not token:
            msg = f"--token-file {token_file!r} is empty"
            raise _Fail(msg)
        return token
    return os.environ.get("CORRAL_MCP_TOKEN") or None


# Every `corral run` option the server can use, parsed and turned into a policy the same way (one list of
# options: what `run` gains, `mcp` gains).
mcp.params[:0] = [p for p in run.params if p.name not in _NOT_MCP]


@cli.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option(
    "--rules",
    "rules_files",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Command rules (TOML, or Codex .rules); repeat to combine files.",
)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the decision as one JSON object.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def check(rules_files: tuple[str, ...], as_json: bool, command: tuple[str, ...]) -> None:
    """Print what the command rules decide for COMMAND, and the rule that decided it; run nothing.

    Exit status: 0 allow, 1 prompt, 2 forbidden, 125 when a rules file cannot be read (or its examples
    fail). Put `--` before the command."""
    rules = _load_rules(rules_files, None)
    assert rules is not None
    decision = rules.evaluate(list(command))
    if as_json:
        click.echo(json.dumps(decision.to_dict()))
    else:
        rule = decision.rule
        click.echo(f"decision: {decision.decision}")
        if rule is not None:
            click.echo(
                f"rule: {printable(rule.name or '?')} `{printable(rule.describe())}` ({rule.decision})"
            )
            if rule.justification:
                click.echo(f"justification: {printable(rule.justification)}")
        else:
            click.echo("rule: none")
        click.echo(f"reason: {printable(decision.reason)}")
    sys.exit(CHECK_EXIT[decision.decision])


@cli.command()
def probe() -> None:
    """Print what this kernel offers to the sandbox."""

    async def go() -> None:
        async with Supervisor(max_concurrency=1, prefork=0) as sup:
            caps = sup.caps
            click.echo(f"landlock: {caps.landlock.reason} (ABI {caps.landlock_abi})")
            click.echo(f"seccomp: {caps.seccomp.reason}")
            click.echo(f"seccomp user notification (denial reports): {caps.seccomp_notify.reason}")
            click.echo(f"audit: {caps.audit.detail or caps.audit.reason}")
            for name, feat in caps.namespaces.items():
                click.echo(f"{name} namespace: {feat.reason}")
            click.echo(f"ia32 ABI: {caps.ia32.reason}")
            click.echo(f"x32 ABI: {caps.x32.reason}")
            click.echo(f"cgroups: {sup.cgroup_status}")

    anyio.run(go)


class _PrintableFormatter(logging.Formatter):
    """Log lines as one printable, bounded line each: a warning may name a path a sandbox chose."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _say(message: object) -> None:
    """One line on stderr, `corral: ` and the escaped message (never a raw sandbox-chosen name)."""
    click.echo(f"corral: {printable(message)}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: maps every failure to the exit-status contract."""
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("corral: %(levelname)s: %(message)s"))
    logging.basicConfig(handlers=[handler], level=logging.WARNING)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="corral", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as e:
        _say(e.format_message())
        sys.exit(EXIT_CORRAL)
    except Exception as e:
        err = _leaf(e)
        if isinstance(err, CorralError | _Fail | OSError):
            _say(err)
        else:
            # corral's own bug: still 125 and one line (a traceback with CORRAL_DEBUG=1), never Python's 1,
            # which a script would take for the command's own status.
            if os.environ.get("CORRAL_DEBUG"):
                import traceback

                traceback.print_exception(e)
            _say(f"internal error: {type(err).__name__}: {err} (CORRAL_DEBUG=1 shows the traceback)")
        sys.exit(exit_status(err))
    sys.exit(0)


def _leaf(error: Exception) -> Exception:
    """The one error inside task groups' exception groups (anyio wraps what a task raised); the group
    itself when it holds several."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    main()
