"""The seccomp layer against real attacks on this kernel.

Each attack runs in a fresh interpreter started as the fork server starts (``python -I -S``, the
supervisor package loaded without its __init__), which sets no_new_privs, applies the filter
prepared here, and execs the attack program (C sources in tests/kernel/c, compiled once per
session). Every attack also runs once without the filter (the control): a test only counts a
result as the filter's doing when the control shows the kernel answering differently, so each
test fails if the filter stops working. The C programs call each syscall with arguments that fail
harmlessly even as root when nothing filters them.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import marshal
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from policies import Policy, SyscallPolicy
from supervisor.sandbox import seccomp
from supervisor.sandbox.probe import Feature, KernelCaps

pytestmark = pytest.mark.kernel

ROOT = pathlib.Path(__file__).resolve().parents[2]
C_DIR = pathlib.Path(__file__).resolve().parent / "c"
X86_64 = platform.machine() == "x86_64"
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="x86_64 ABIs (i386, x32)")
SIGSYS_KILLED = -signal.SIGSYS

# The fork server's way in (supervisor/forkserver/protocol.py, BOOT): `python -I -S`, the tree's root
# first on sys.path.
_STUB = "import sys\nsys.path.insert(0, sys.argv[1])\n"
HARNESS = (
    _STUB
    + """
import marshal, os
from supervisor.sandbox import _sys, seccomp
with open(sys.argv[2], "rb") as f:
    prepared, set_nnp = marshal.load(f)
if set_nnp:
    _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
if prepared is not None:
    try:
        seccomp.apply(prepared)
    except _sys.SetupFailure as err:
        print(repr(err.to_dict()), flush=True)
        os._exit(97)
os.execv(sys.argv[3], sys.argv[3:])
"""
)
PROBE = (
    _STUB
    + "import marshal\n"
    + "from supervisor.sandbox import probe\n"
    + "sys.stdout.buffer.write(marshal.dumps(probe.probe_in_fork_server()))\n"
)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def results(self) -> dict[str, tuple[str, str]]:
        """'<name> <ret> <errno>' lines -> {name: (ret, errno)}."""
        out: dict[str, tuple[str, str]] = {}
        for line in self.stdout.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3:
                out[parts[0]] = (parts[1], parts[2])
        return out


class Harness:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.count = 0

    def run(
        self,
        argv: Sequence[str],
        prepared: dict[str, object] | None,
        *,
        set_nnp: bool = True,
        stdin: int | None = subprocess.DEVNULL,
    ) -> Run:
        """Run argv under `prepared` (None: the control, no filter) in a new session."""
        self.count += 1
        blob = self.tmp / f"prepared-{self.count}.marshal"
        blob.write_bytes(marshal.dumps((prepared, set_nnp)))
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", HARNESS, str(ROOT), str(blob), *argv],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,  # no controlling terminal: vhangup and TIOCSTI stay harmless
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    return Harness(tmp_path_factory.mktemp("seccomp-harness"))


@pytest.fixture(scope="session")
def caps() -> KernelCaps:
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(ROOT)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return KernelCaps.from_dict(marshal.loads(out.stdout))


@pytest.fixture(scope="session")
def prepared(caps: KernelCaps) -> dict[str, object]:
    if not caps.seccomp.available:
        pytest.skip(f"seccomp {caps.seccomp.reason}")
    result = seccomp.prepare(Policy(), caps)
    assert result is not None
    return result


@pytest.fixture(scope="session")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Compiled attack programs: name -> path, or name -> 'error: ...' when it did not build."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build the attack programs")
    out_dir = tmp_path_factory.mktemp("seccomp-c")
    os.chmod(out_dir, 0o755)
    built: dict[str, str] = {}
    for src in sorted(C_DIR.glob("*.c")):
        name = src.stem
        if name in ("int80", "x32") and not X86_64:
            continue
        flags = ["-m32", "-static"] if name == "m32" else []
        exe = out_dir / name
        proc = subprocess.run(
            [gcc, "-O0", *flags, "-o", str(exe), str(src)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        built[name] = str(exe) if proc.returncode == 0 else f"error: {proc.stderr.strip()[-500:]}"
    for name in ("denied", "clone", "tty"):
        assert not built[name].startswith("error"), built[name]
    return built


@pytest.fixture(scope="session")
def denied_runs(
    harness: Harness, bins: dict[str, str], prepared: dict[str, object]
) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(control, filtered) results of the denied-syscall program."""
    control = harness.run([bins["denied"]], None)
    filtered = harness.run([bins["denied"]], prepared)
    assert control.returncode == 0, control
    assert filtered.returncode == 0, filtered
    return control.results(), filtered.results()


@pytest.fixture(scope="session")
def clone_runs(
    harness: Harness, bins: dict[str, str], prepared: dict[str, object]
) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    control = harness.run([bins["clone"]], None)
    filtered = harness.run([bins["clone"]], prepared)
    assert control.returncode == 0, control
    assert filtered.returncode == 0, filtered
    return control.results(), filtered.results()


def _not_eperm_without_filter(control: dict[str, tuple[str, str]], name: str) -> None:
    assert name in control, f"no result for {name}"
    if control[name][0] == "skip":
        pytest.skip(f"{name}: {control[name][1]}")
    if control[name][1] == "EPERM":
        pytest.skip(f"{name} answers EPERM here even without the filter: the test cannot tell")


# --- denied outright -----------------------------------------------------------------------------


# The attacks in denied.c, read from the source so that this list does not come from the module
# under test; the entries checked by other tests are left out.
_OTHER_CHECKS = {
    "getpid",
    "personality_query",
    "personality_set",
    "personality_set_hibits",
    "personality_bit7",
    "personality_linux32",
    "unshare_newuser",
    *seccomp.TRACING,  # allowed with a pid namespace: test_tracing_*
}
ATTACKS = sorted(set(re.findall(r'CALL\("(\w+)"', (C_DIR / "denied.c").read_text())) - _OTHER_CHECKS)


def test_every_builtin_denial_has_an_attack() -> None:
    missing = set(seccomp.DEFAULT_DENY) - set(ATTACKS)
    assert not missing, f"tests/kernel/c/denied.c has no attack for {sorted(missing)}"


@pytest.mark.parametrize("name", ATTACKS)
def test_denied_syscall_answers_eperm(
    name: str,
    denied_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    if seccomp._resolve(name) < 0:
        pytest.skip(f"{name} is not a syscall on {platform.machine()}")
    control, filtered = denied_runs
    _not_eperm_without_filter(control, name)
    assert filtered[name] == ("-1", "EPERM")


def test_unshare_new_user_namespace_is_refused(
    denied_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    control, filtered = denied_runs
    _not_eperm_without_filter(control, "unshare_newuser")
    assert filtered["unshare_newuser"] == ("-1", "EPERM")


def test_personality_query_works_change_refused(
    denied_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    control, filtered = denied_runs
    assert filtered["personality_query"][1] == "0"
    for name in ("personality_set", "personality_set_hibits", "personality_bit7"):
        _not_eperm_without_filter(control, name)
        assert filtered[name] == ("-1", "EPERM"), name
    assert filtered["personality_linux32"][1] == "0"  # linux32's persona


TRACING_ATTACKS = sorted(
    set(seccomp.TRACING) & set(re.findall(r'CALL\("(\w+)"', (C_DIR / "denied.c").read_text()))
)


def test_every_tracing_syscall_has_a_probe() -> None:
    assert set(TRACING_ATTACKS) == set(seccomp.TRACING)


@pytest.mark.parametrize("name", TRACING_ATTACKS)
def test_tracing_is_not_filtered_where_the_pid_namespace_holds_it(
    name: str,
    denied_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    control, filtered = denied_runs
    assert filtered[name] == control[name], name  # the kernel's own answer, as without a filter


@pytest.mark.parametrize("name", TRACING_ATTACKS)
def test_tracing_is_denied_without_a_pid_namespace(
    name: str,
    harness: Harness,
    bins: dict[str, str],
    caps: KernelCaps,
    denied_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    control, _ = denied_runs
    _not_eperm_without_filter(control, name)
    no_pid = dataclasses.replace(caps, namespaces={**caps.namespaces, "pid": Feature(False, errno.EPERM)})
    strict = seccomp.prepare(Policy(), no_pid)
    assert strict is not None
    run = harness.run([bins["denied"]], strict)
    assert run.returncode == 0, run
    assert run.results()[name] == ("-1", "EPERM")


def test_allowed_syscall_still_works_in_the_attack_run(
    denied_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    _, filtered = denied_runs
    ret, err = filtered["getpid"]
    assert err == "0"
    assert int(ret) > 0


# --- clone / clone3 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        "CLONE_NEWNS",
        "CLONE_NEWCGROUP",
        "CLONE_NEWUTS",
        "CLONE_NEWIPC",
        "CLONE_NEWUSER",
        "CLONE_NEWPID",
        "CLONE_NEWNET",
        "CLONE_NEWUSER_hibits",
    ],
)
def test_clone_with_namespace_flag_is_refused(
    flag: str,
    clone_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    control, filtered = clone_runs
    _not_eperm_without_filter(control, flag)
    assert filtered[flag] == ("-1", "EPERM")


def test_plain_clone_and_fork_still_work(
    clone_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    _, filtered = clone_runs
    assert filtered["clone_plain"] == ("1", "0")
    assert filtered["fork"] == ("1", "0")


def test_clone3_answers_enosys(
    clone_runs: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]],
) -> None:
    control, filtered = clone_runs
    if control["clone3"] != ("1", "0"):
        pytest.skip(f"clone3 does not work here without the filter: {control['clone3']}")
    assert filtered["clone3"] == ("-1", "ENOSYS")
    assert filtered["clone3_newuser"] == ("-1", "ENOSYS")


# --- terminal ioctls -----------------------------------------------------------------------------


def test_tiocsti_and_tioclinux_are_refused(
    harness: Harness, bins: dict[str, str], prepared: dict[str, object]
) -> None:
    def on_pty(prep: dict[str, object] | None) -> dict[str, tuple[str, str]]:
        master, slave = os.openpty()
        try:
            run = harness.run([bins["tty"]], prep, stdin=slave)
        finally:
            os.close(slave)
            os.close(master)
        assert run.returncode == 0, run
        return run.results()

    control, filtered = on_pty(None), on_pty(prepared)
    assert filtered["TCGETS"] == ("0", "0")  # ordinary terminal ioctls still work
    for name in ("TIOCSTI", "TIOCSTI_hibits", "TIOCLINUX"):
        _not_eperm_without_filter(control, name)
        assert filtered[name] == ("-1", "EPERM"), name
    # The control must really have injected input, or TIOCSTI was never dangerous here.
    assert control["TIOCSTI"] == ("0", "0")
    assert control["TIOCSTI_hibits"] == ("0", "0")


# --- other ABIs ----------------------------------------------------------------------------------


@needs_x86_64
def test_int80_from_a_64_bit_program_is_killed(
    harness: Harness, bins: dict[str, str], prepared: dict[str, object], caps: KernelCaps
) -> None:
    control = harness.run([bins["int80"]], None)
    assert control.returncode == 0, control
    if caps.ia32.available:  # the i386 entry is live: the attack reaches the kernel unfiltered
        assert f"int80_getpid {control.stdout.split()[-1]}" in control.stdout
        assert int(control.stdout.split()[-1]) > 0
    filtered = harness.run([bins["int80"]], prepared)
    assert filtered.stdout.startswith("start"), filtered  # it died at the int $0x80, not before
    assert "int80_getpid" not in filtered.stdout
    assert filtered.returncode == SIGSYS_KILLED, filtered


@needs_x86_64
def test_32_bit_binary_is_killed(
    harness: Harness, bins: dict[str, str], prepared: dict[str, object], caps: KernelCaps
) -> None:
    if not caps.ia32.available:
        pytest.skip(f"ia32 emulation {caps.ia32.reason}")
    if bins["m32"].startswith("error"):
        pytest.skip(f"gcc -m32 -static failed: {bins['m32']}")
    control = harness.run([bins["m32"]], None)
    assert control.returncode == 0, control
    assert "m32_getpid" in control.stdout
    filtered = harness.run([bins["m32"]], prepared)
    assert filtered.returncode == SIGSYS_KILLED, filtered
    assert "m32_getpid" not in filtered.stdout


@needs_x86_64
@pytest.mark.parametrize("which", ["getpid", "ptrace"])
def test_x32_syscall_numbers_are_killed_by_the_filter(
    which: str, harness: Harness, bins: dict[str, str], prepared: dict[str, object]
) -> None:
    # Seccomp runs before syscall dispatch, so this holds whether or not the kernel has x32.
    control = harness.run([bins["x32"], which[0]], None)
    assert control.returncode == 0, control
    filtered = harness.run([bins["x32"], which[0]], prepared)
    assert filtered.stdout.startswith("start"), filtered
    assert filtered.returncode == SIGSYS_KILLED, filtered


@needs_x86_64
def test_x32_abi_attack(
    harness: Harness, bins: dict[str, str], prepared: dict[str, object], caps: KernelCaps
) -> None:
    """With x32 compiled in, PTRACE_TRACEME through the x32 table must still be stopped."""
    if not caps.x32.available:
        pytest.skip(f"x32 ABI {caps.x32.reason}: the probe found nothing to attack through")
    control = harness.run([bins["x32"], "p"], None)
    assert "x32_ptrace_traceme 0" in control.stdout, control  # reaches ptrace unfiltered
    filtered = harness.run([bins["x32"], "p"], prepared)
    assert filtered.returncode == SIGSYS_KILLED, filtered


# --- legitimate work under the filter ------------------------------------------------------------

LEGIT_PYTHON = """
import os, subprocess, threading
with open("/proc/self/status") as f:
    assert "Seccomp:\\t2" in f.read(), "no filter installed"
results = []
threads = [threading.Thread(target=results.append, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert sorted(results) == [0, 1, 2, 3]
pid = os.fork()
if pid == 0:
    os._exit(7)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
out = subprocess.run(["/bin/echo", "spawned"], capture_output=True, text=True, check=True)
assert out.stdout == "spawned\\n"
import asyncio
async def main():
    proc = await asyncio.create_subprocess_exec("/bin/true")
    assert await proc.wait() == 0
asyncio.run(main())
print("legit ok")
"""


def test_python_threads_fork_subprocess_work(harness: Harness, prepared: dict[str, object]) -> None:
    run = harness.run([sys.executable, "-c", LEGIT_PYTHON], prepared)
    assert run.returncode == 0, run
    assert run.stdout.strip() == "legit ok"


def test_shell_pipeline_works(harness: Harness, prepared: dict[str, object]) -> None:
    script = "ls / | wc -l; grep '^Seccomp:' /proc/self/status"
    run = harness.run(["/bin/sh", "-c", script], prepared)
    assert run.returncode == 0, run
    count, seccomp_line = run.stdout.splitlines()
    assert int(count) > 3
    assert seccomp_line.split() == ["Seccomp:", "2"]


# --- apply itself --------------------------------------------------------------------------------


def test_apply_sets_no_new_privs_when_missing(harness: Harness, prepared: dict[str, object]) -> None:
    argv = ["/bin/grep", "-E", "^(NoNewPrivs|Seccomp|Seccomp_filters):"]
    control = harness.run([*argv, "/proc/self/status"], None, set_nnp=False)
    assert "NoNewPrivs:\t0" in control.stdout, control
    run = harness.run([*argv, "/proc/self/status"], prepared, set_nnp=False)
    assert run.returncode == 0, run
    fields = dict(line.split(":\t") for line in run.stdout.splitlines())
    assert fields == {"NoNewPrivs": "1", "Seccomp": "2", "Seccomp_filters": "1"}


def test_apply_reports_a_rejected_program(harness: Harness, bins: dict[str, str]) -> None:
    bad: dict[str, object] = {"bpf": b"\xff\xff\0\0\0\0\0\0", "denied": []}  # an opcode the kernel refuses
    run = harness.run([bins["denied"]], bad)
    assert run.returncode == 97, run
    failure = ast.literal_eval(run.stdout.strip())
    assert failure["layer"] == "seccomp"
    assert failure["operation"] == "seccomp(SECCOMP_SET_MODE_FILTER)"
    assert failure["errno"] == 22  # EINVAL
    assert "rejected" in failure["hint"]


def test_policy_adjustments_reach_the_kernel(
    harness: Harness, bins: dict[str, str], caps: KernelCaps
) -> None:
    if not caps.seccomp.available:
        pytest.skip(f"seccomp {caps.seccomp.reason}")
    policy = Policy(syscalls=SyscallPolicy(allow=("ptrace",), deny=("getpid",)))
    # Without a pid namespace ptrace is on the list (seccomp.TRACING); `allow` takes it off.
    no_pid = dataclasses.replace(caps, namespaces={**caps.namespaces, "pid": Feature(False, errno.EPERM)})
    adjusted = seccomp.prepare(policy, no_pid)
    assert adjusted is not None
    results = harness.run([bins["denied"]], adjusted).results()
    assert results["getpid"] == ("-1", "EPERM")
    assert results["ptrace"] == ("-1", "ESRCH")  # the kernel's own answer: no longer filtered
    assert results["bpf"] == ("-1", "EPERM")  # the rest of the list holds
