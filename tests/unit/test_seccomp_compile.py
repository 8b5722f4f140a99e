"""The seccomp filter as compiled: no privileges, no filter installed, no claims about the kernel.

Verdicts are checked two ways: in the text `seccomp.explain` writes (the rules as compiled), and by
running the BPF through `seccomp.run_bpf` on chosen syscall numbers, architectures and arguments.
tests/unit/test_seccomp_bpf.py checks the compiler itself (against its reference semantics and against
libseccomp).
"""

from __future__ import annotations

import errno
import marshal
import pathlib
import platform
import re
import sys

import pytest

from policies import (
    FilesystemPolicy,
    NetworkPolicy,
    Policy,
    PolicyError,
    SeccompProfile,
    SeccompRule,
    SyscallPolicy,
)
from supervisor._errors import SandboxSetupError
from supervisor.sandbox import _sys, seccomp
from supervisor.sandbox.probe import Feature, KernelCaps
from tests.unit.test_forkserver_protocol import run_as_fork_server

pyseccomp = pytest.importorskip("pyseccomp")

ROOT = pathlib.Path(__file__).resolve().parents[2]
CAPS = KernelCaps(seccomp=Feature(True), namespaces={"pid": Feature(True)})
#: A kernel (or best_effort policy) without a pid namespace: tracing stays denied.
NO_PID_NS = KernelCaps(seccomp=Feature(True), namespaces={"pid": Feature(False, errno.EPERM)})
X86_64 = platform.machine() == "x86_64"
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="x86_64 syscall numbers and ABIs")

ALLOW = 0x7FFF0000
KILL_PROCESS = 0x80000000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
SIGCHLD = 17
# What glibc's pthread_create passes to clone when clone3 answers ENOSYS.
THREAD_FLAGS = 0x3D0F00
TCGETS, TIOCSTI, TIOCLINUX = 0x5401, 0x5412, 0x541C


def nr(name: str) -> int:
    n = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return int(n) if n >= 0 else seccomp._UNIFIED_NR[name]


def compiled(policy: Policy | None = None) -> dict[str, object]:
    prepared = seccomp.prepare(policy or Policy(), CAPS)
    assert prepared is not None
    return prepared


def verdict(prepared: dict[str, object], name: str, *args: int, arch: int | None = None) -> int:
    bpf = prepared["bpf"]
    assert isinstance(bpf, bytes)
    return seccomp.run_bpf(bpf, nr(name), arch=arch, args=args)


@pytest.fixture(scope="module")
def default() -> dict[str, object]:
    return compiled()


@pytest.fixture(scope="module")
def pfc() -> str:
    return seccomp.explain(Policy())


# --- shape of the prepared data ------------------------------------------------------------------


def test_prepare_returns_plain_bpf_bytes(default: dict[str, object]) -> None:
    bpf = default["bpf"]
    assert isinstance(bpf, bytes)
    assert bpf
    assert len(bpf) % 8 == 0
    assert len(bpf) // 8 <= 4096
    assert set(default) == {"bpf", "denied"}
    # It crosses to the fork server with marshal: builtins only.
    assert marshal.loads(marshal.dumps(default)) == default


def test_denied_lists_every_builtin_name_known_here(default: dict[str, object]) -> None:
    denied = default["denied"]
    assert isinstance(denied, list)
    assert denied == sorted(denied)
    expected = {
        n
        for n in (*seccomp.DEFAULT_DENY, *seccomp.CONDITIONAL)
        if seccomp._resolve(n) >= 0  # names not on this arch are skipped
    }
    assert set(denied) == expected
    if X86_64:  # every built-in name exists on x86_64
        assert set(denied) == set(seccomp.DEFAULT_DENY) | set(seccomp.CONDITIONAL)


def test_argument_rule_constants() -> None:
    # Pinned here so that a change to the module's tables cannot pass the tests derived from them.
    assert seccomp.CLONE_NAMESPACE_FLAGS == {
        "CLONE_NEWNS": 0x00020000,
        "CLONE_NEWCGROUP": 0x02000000,
        "CLONE_NEWUTS": 0x04000000,
        "CLONE_NEWIPC": 0x08000000,
        "CLONE_NEWUSER": 0x10000000,
        "CLONE_NEWPID": 0x20000000,
        "CLONE_NEWNET": 0x40000000,
        "CLONE_NEWTIME": 0x00000080,
    }
    assert seccomp.DENIED_IOCTLS == {"TIOCSTI": TIOCSTI, "TIOCLINUX": TIOCLINUX, "TIOCSETD": 0x5423}
    assert set(seccomp.CONDITIONAL) == {
        "clone",
        "clone3",
        "ioctl",
        "personality",
        "openat2",
        "setxattrat",
        "socket",
        "socketpair",
    } | set(seccomp.SETID_MODE_ARG)
    assert seccomp.XATTR_WATCH == ("setxattr", "lsetxattr", "fsetxattr")
    assert seccomp.SETID_BITS == {"S_ISUID": 0o4000, "S_ISGID": 0o2000}
    assert seccomp.CREATE_FLAGS == {"O_CREAT": 0o100, "__O_TMPFILE": 0o20000000}


def test_disabled_policy_compiles_nothing() -> None:
    assert seccomp.prepare(Policy(syscalls=SyscallPolicy(enabled=False)), CAPS) is None


def test_module_imports_only_stdlib_at_module_level() -> None:
    # The fork server runs `python -I -S` (no site-packages, so no pyseccomp) with the tree's root first on
    # sys.path (supervisor/forkserver/protocol.py, BOOT).
    out = run_as_fork_server(
        "import supervisor.sandbox.seccomp\n"
        "print([m for m in ('pyseccomp', 'policies', 'supervisor._errors') if m in sys.modules])\n"
    )
    assert out.strip() == "[]"


# --- unavailable seccomp / libseccomp ------------------------------------------------------------


def test_unavailable_kernel_fails_closed() -> None:
    caps = KernelCaps(seccomp=Feature(False, errno.ENOSYS, "seccomp(SECCOMP_GET_ACTION_AVAIL)"))
    with pytest.raises(SandboxSetupError) as info:
        seccomp.prepare(Policy(), caps)
    err = info.value
    assert err.layer == "seccomp"
    assert err.operation == "seccomp(SECCOMP_GET_ACTION_AVAIL)"
    assert err.errno == errno.ENOSYS
    assert "best_effort" in err.hint
    assert "ENOSYS" in str(err)


def test_a_filter_the_compiler_cannot_write_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiler failing on the installed (notifying) program refuses the policy with the seccomp layer's
    SandboxSetupError naming what failed (it once fell through to an UnboundLocalError)."""
    caps = KernelCaps(seccomp=Feature(True), seccomp_notify=Feature(True), namespaces={"pid": Feature(True)})
    real = seccomp._bpf.assemble

    def failing(spec: object, notify: bool) -> bytes:
        if notify:
            msg = "the filter has 5000 instructions (the kernel takes 4096)"
            raise ValueError(msg)
        return real(spec, notify)  # type: ignore[arg-type]

    monkeypatch.setattr(seccomp._bpf, "assemble", failing)
    with pytest.raises(SandboxSetupError, match="5000 instructions"):
        seccomp.prepare(Policy(), caps)


def test_blocked_seccomp_hint_names_the_outer_sandbox() -> None:
    caps = KernelCaps(seccomp=Feature(False, errno.EPERM))
    with pytest.raises(SandboxSetupError, match="outer sandbox") as info:
        seccomp.prepare(Policy(), caps)
    assert info.value.errno == errno.EPERM


def test_unavailable_kernel_best_effort_returns_none() -> None:
    caps = KernelCaps(seccomp=Feature(False, errno.ENOSYS))
    assert seccomp.prepare(Policy(best_effort=True), caps) is None


def test_missing_libseccomp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import raises ImportError
    with pytest.raises(SandboxSetupError, match="libseccomp") as info:
        seccomp.prepare(Policy(), CAPS)
    assert info.value.layer == "seccomp"
    assert seccomp.prepare(Policy(best_effort=True), CAPS) is None


def test_self_check_rejects_a_filter_that_lets_other_abis_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allow_all = (0x06).to_bytes(2, sys.byteorder) + b"\0\0" + ALLOW.to_bytes(4, sys.byteorder)
    monkeypatch.setattr(seccomp._bpf, "assemble", lambda spec, notify: allow_all)
    with pytest.raises(SandboxSetupError, match="self-check") as info:
        seccomp.prepare(Policy(), CAPS)
    assert "not killed" in info.value.hint


# --- the text explain() writes ---------------------------------------------------------------


def test_pfc_names_every_denied_syscall(pfc: str, default: dict[str, object]) -> None:
    denied = default["denied"]
    assert isinstance(denied, list)
    for name in denied:
        assert f'# filter for syscall "{name}" ({nr(name)})' in pfc, name


def test_pfc_default_allow_and_bad_arch_kill(pfc: str) -> None:
    assert re.search(r"# default action\n\s*action ALLOW;", pfc)
    assert re.search(r"# invalid architecture action\n\s*action KILL_PROCESS;", pfc)
    # Only the native arch is in the filter: i386 and x32 are not added, so they are killed.
    assert len(re.findall(r"# filter for arch ", pfc)) == 1
    if X86_64:
        assert re.search(r"# x32 syscall numbers .*\n\s*action KILL_PROCESS;", pfc)
    if X86_64:
        assert "# filter for arch x86_64 (3221225534)" in pfc


def test_pfc_clone_rules(pfc: str) -> None:
    block = _syscall_block(pfc, "clone")
    for name, flag in seccomp.CLONE_NAMESPACE_FLAGS.items():
        assert f"if (($a0 & {flag:#x}) == {flag:#x}) action ERRNO(1) [reported];" in block, name
    # ENOSYS is a fallback, not a refusal: not reported.
    assert "  action ERRNO(38);" in _syscall_block(pfc, "clone3")


def test_pfc_ioctl_rules(pfc: str) -> None:
    block = _syscall_block(pfc, "ioctl")
    # The mask drops the high half: the command is an unsigned int.
    assert f"if (($a1 & 0xffffffff) == {TIOCSTI:#x})" in block
    assert f"if (($a1 & 0xffffffff) == {TIOCLINUX:#x})" in block


def test_pfc_personality_is_refused_by_argument(pfc: str) -> None:
    block = _syscall_block(pfc, "personality")
    assert "($a0 & 0x100080) == 0x100000" in block  # MMAP_PAGE_ZERO on a real persona
    assert "action ERRNO(1) [reported];" in block


def _syscall_block(pfc: str, name: str) -> str:
    """The explain() lines of one syscall's rules: from its header to the next header or the end."""
    start = pfc.index(f'# filter for syscall "{name}" ')
    nxt = pfc.find("# filter for syscall", start + 1)
    return pfc[start : nxt if nxt != -1 else None]


# --- verdicts of the BPF itself ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(seccomp.DEFAULT_DENY))
def test_bpf_denies_each_builtin_with_eperm(default: dict[str, object], name: str) -> None:
    if seccomp._resolve(name) < 0:
        pytest.skip(f"{name} is not a syscall on {platform.machine()}")
    assert verdict(default, name) == EPERM


@pytest.mark.parametrize("name", ["read", "write", "openat", "execve", "exit_group", "wait4"])
def test_bpf_allows_ordinary_syscalls(default: dict[str, object], name: str) -> None:
    assert verdict(default, name, 3, 4, 5) == ALLOW


@pytest.mark.parametrize(("flag_name", "flag"), sorted(seccomp.CLONE_NAMESPACE_FLAGS.items()))
def test_bpf_clone_namespace_flags(default: dict[str, object], flag_name: str, flag: int) -> None:
    assert verdict(default, "clone", flag | SIGCHLD) == EPERM
    assert verdict(default, "clone", flag | THREAD_FLAGS) == EPERM
    # The kernel uses the low 32 bits of the flags; junk above must not hide a flag.
    assert verdict(default, "clone", flag | SIGCHLD | 0xDEAD_0000_0000) == EPERM


def test_bpf_clone_without_namespace_flags_is_allowed(default: dict[str, object]) -> None:
    assert verdict(default, "clone", SIGCHLD) == ALLOW  # fork
    assert verdict(default, "clone", THREAD_FLAGS) == ALLOW  # pthread_create
    assert verdict(default, "clone", 0x4111) == ALLOW  # vfork-style CLONE_VM|CLONE_VFORK|SIGCHLD
    assert verdict(default, "clone3") == ENOSYS


def test_bpf_ioctl(default: dict[str, object]) -> None:
    assert verdict(default, "ioctl", 0, TIOCSTI) == EPERM
    assert verdict(default, "ioctl", 0, TIOCLINUX) == EPERM
    assert verdict(default, "ioctl", 0, TIOCSTI | 0xDEAD_0000_0000) == EPERM
    assert verdict(default, "ioctl", 0, TCGETS) == ALLOW
    assert verdict(default, "ioctl", 0, TIOCSTI + 0x1_0000) == ALLOW


PER_LINUX, PER_LINUX32, PER_SVR4, PER_BSD = 0x0, 0x8, 0x1, 0x6
UNAME26, ADDR_NO_RANDOMIZE, ADDR_COMPAT_LAYOUT, ADDR_LIMIT_3GB = 0x20000, 0x40000, 0x200000, 0x8000000
MMAP_PAGE_ZERO, READ_IMPLIES_EXEC, ADDR_LIMIT_32BIT, STICKY_TIMEOUTS = 0x100000, 0x400000, 0x800000, 0x4000000


@pytest.mark.parametrize(
    "flags",
    [
        0,
        UNAME26,
        ADDR_NO_RANDOMIZE,
        ADDR_COMPAT_LAYOUT,
        ADDR_LIMIT_3GB,
        UNAME26 | ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT | ADDR_LIMIT_3GB,
    ],
)
@pytest.mark.parametrize("persona", [PER_LINUX, PER_LINUX32])
def test_bpf_personality_allows_the_harmless_personas(
    default: dict[str, object], persona: int, flags: int
) -> None:
    # setarch -R, linux32, setarch --uname-2.6, setarch -L, linux32 --3gb
    assert verdict(default, "personality", persona | flags) == ALLOW


@pytest.mark.parametrize(
    "value",
    [
        MMAP_PAGE_ZERO,
        READ_IMPLIES_EXEC,
        ADDR_LIMIT_32BIT,
        STICKY_TIMEOUTS,
        PER_LINUX32 | MMAP_PAGE_ZERO,
        ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC,
        PER_SVR4,
        PER_BSD,
        0x80,  # bit 7 alone: not the query
        0x80 | MMAP_PAGE_ZERO,  # bit 7 set to look like the query
        0xFFFFFF7F,  # every bit but 7
        0x7FFFFFFF,  # the query with one bit missing
        0x1_0010_0000,  # MMAP_PAGE_ZERO with junk in the upper half (the kernel reads 32 bits)
    ],
)
def test_bpf_personality_refuses_every_other_persona_and_flag(default: dict[str, object], value: int) -> None:
    assert verdict(default, "personality", value) == EPERM


def test_bpf_personality_query(default: dict[str, object]) -> None:
    assert verdict(default, "personality", 0xFFFFFFFF) == ALLOW
    assert verdict(default, "personality", 0xFFFF_FFFF_FFFF_FFFF) == ALLOW  # (unsigned long)-1: a query too


@pytest.mark.parametrize("name", sorted(seccomp.TRACING))
def test_tracing_is_allowed_with_a_pid_namespace_and_denied_without(
    default: dict[str, object], name: str
) -> None:
    assert verdict(default, name) == ALLOW
    assert name not in default["denied"]  # type: ignore[operator]
    strict = seccomp.prepare(Policy(), NO_PID_NS)
    assert strict is not None
    assert verdict(strict, name) == EPERM
    assert name in strict["denied"]  # type: ignore[operator]
    denied = seccomp.prepare(Policy(syscalls=SyscallPolicy(deny=(name,))), CAPS)
    assert denied is not None
    assert verdict(denied, name) == EPERM  # a policy may still deny it


EAFNOSUPPORT = 0x00050000 | errno.EAFNOSUPPORT
EPROTONOSUPPORT = 0x00050000 | errno.EPROTONOSUPPORT
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_ALG, AF_VSOCK = 1, 2, 10, 16, 17, 38, 40


@pytest.mark.parametrize("name", ["socket", "socketpair"])
def test_bpf_socket_families(default: dict[str, object], name: str) -> None:
    for family in (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK):
        assert verdict(default, name, family, 1, 0) == ALLOW, family
    for family in (*range(0, 46), 46, 64, 2**31, 2**32 - 1, 2**64 - 1):
        if family not in (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK):
            assert verdict(default, name, family, 1, 0) == EAFNOSUPPORT, family
    # Junk above the int the kernel reads never lets a refused family (or any) through.
    assert verdict(default, name, (1 << 32) | AF_VSOCK, 1, 0) == EAFNOSUPPORT
    assert verdict(default, name, (1 << 32) | AF_INET, 1, 0) == EAFNOSUPPORT


def test_bpf_netlink_protocols(default: dict[str, object]) -> None:
    assert verdict(default, "socket", AF_NETLINK, 3, 0) == ALLOW  # route
    assert verdict(default, "socket", AF_NETLINK, 3, 4) == ALLOW  # sock_diag
    for proto in (1, 2, 3, *range(5, 32), 2**32 + 12):
        assert verdict(default, "socket", AF_NETLINK, 3, proto) == EPROTONOSUPPORT, proto
    assert verdict(default, "socket", AF_INET, 3, 12) == ALLOW  # the protocol rule is netlink's only


def test_network_families_and_netlink_widen_the_socket_rules() -> None:
    network = NetworkPolicy(families=("vsock", "packet"), netlink=("generic",))
    prepared = compiled(Policy(network=network))
    assert verdict(prepared, "socket", AF_VSOCK, 1, 0) == ALLOW
    assert verdict(prepared, "socket", AF_PACKET, 3, 0) == ALLOW
    assert verdict(prepared, "socket", AF_ALG, 5, 0) == EAFNOSUPPORT
    assert verdict(prepared, "socket", 41, 1, 0) == EAFNOSUPPORT
    assert verdict(prepared, "socket", AF_NETLINK, 3, 16) == ALLOW
    assert verdict(prepared, "socket", AF_NETLINK, 3, 12) == EPROTONOSUPPORT
    assert verdict(prepared, "socketpair", AF_VSOCK, 1, 0) == ALLOW


def test_watch_false_refuses_inotify() -> None:
    default = compiled()
    for name in ("inotify_init1", "inotify_add_watch"):
        assert verdict(default, name, 0, 0, 0) == ALLOW
    no_watch = compiled(Policy(filesystem=FilesystemPolicy(watch=False)))
    for name in seccomp.INOTIFY:
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) >= 0:  # inotify_init: not on aarch64
            assert verdict(no_watch, name, 0, 0, 0) == EPERM, name
    assert verdict(no_watch, "inotify_rm_watch", 3, 1) == ALLOW


def test_allow_socket_removes_the_family_rules() -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(allow=("socket",))))
    assert verdict(prepared, "socket", AF_VSOCK, 1, 0) == ALLOW
    assert verdict(prepared, "socketpair", AF_VSOCK, 1, 0) == EAFNOSUPPORT


def test_bpf_kills_foreign_architectures(default: dict[str, object]) -> None:
    foreign = AUDIT_ARCH_I386 if X86_64 else 0x40000028  # i386 / arm
    assert verdict(default, "getpid", arch=foreign) == KILL_PROCESS
    bpf = default["bpf"]
    assert isinstance(bpf, bytes)
    assert seccomp.run_bpf(bpf, 20, arch=foreign) == KILL_PROCESS
    other = AUDIT_ARCH_AARCH64 if X86_64 else 0xC000003E
    assert seccomp.run_bpf(bpf, 0, arch=other) == KILL_PROCESS


@needs_x86_64
def test_bpf_kills_x32_syscall_numbers(default: dict[str, object]) -> None:
    bpf = default["bpf"]
    assert isinstance(bpf, bytes)
    for x32_nr in (39, 0, 1, 59, 521, 545):  # getpid read write execve ptrace execveat (x32)
        assert seccomp.run_bpf(bpf, 0x40000000 | x32_nr) == KILL_PROCESS, x32_nr
    # nr -1 (a tracer skipping a syscall) is not x32: it must reach the ordinary rules.
    assert seccomp.run_bpf(bpf, -1) == ALLOW


def test_run_bpf_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        seccomp.run_bpf(b"\xff\xff\0\0\0\0\0\0", 0)
    with pytest.raises(ValueError, match="without a return"):
        seccomp.run_bpf(b"", 0)


# --- policy adjustments --------------------------------------------------------------------------


def test_allow_removes_builtin_rules() -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(allow=("ptrace", "clone", "ioctl"))))
    denied = prepared["denied"]
    assert isinstance(denied, list)
    assert {"ptrace", "clone", "ioctl"}.isdisjoint(denied)
    assert verdict(prepared, "ptrace") == ALLOW
    assert verdict(prepared, "clone", 0x10000000 | SIGCHLD) == ALLOW
    assert verdict(prepared, "ioctl", 0, TIOCSTI) == ALLOW
    assert verdict(prepared, "bpf") == EPERM  # the rest stays


def test_allow_of_a_name_not_denied_is_a_no_op() -> None:
    assert compiled(Policy(syscalls=SyscallPolicy(allow=("read",))))["bpf"] == compiled()["bpf"]


def test_deny_adds_eperm_rules() -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(deny=("chroot", "mknodat"))))
    denied = prepared["denied"]
    assert isinstance(denied, list)
    assert {"chroot", "mknodat"} <= set(denied)
    assert verdict(prepared, "chroot") == EPERM
    assert verdict(prepared, "mknodat", 1, 2, 3) == EPERM
    assert '# filter for syscall "chroot"' in seccomp.explain(
        Policy(syscalls=SyscallPolicy(deny=("chroot",)))
    )


def test_deny_replaces_a_conditional_builtin_rule() -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(deny=("clone3", "ioctl"))))
    assert verdict(prepared, "clone3") == EPERM  # EPERM, no longer ENOSYS
    assert verdict(prepared, "ioctl", 0, TCGETS) == EPERM  # every ioctl now


@pytest.mark.parametrize("field", ["deny", "allow"])
def test_unknown_name_is_an_error(field: str) -> None:
    names = ("read", "no_such_call")
    syscalls = SyscallPolicy(deny=names) if field == "deny" else SyscallPolicy(allow=names)
    with pytest.raises(PolicyError, match="not a syscall libseccomp knows") as info:
        seccomp.prepare(Policy(syscalls=syscalls), CAPS)
    assert info.value.path == f"syscalls.{field}[1]"
    assert info.value.value == "no_such_call"


@needs_x86_64
def test_name_from_another_architecture_is_an_error() -> None:
    with pytest.raises(PolicyError, match="not a syscall on x86_64") as info:
        seccomp.prepare(Policy(syscalls=SyscallPolicy(deny=("socketcall",))), CAPS)
    assert info.value.path == "syscalls.deny[0]"


def test_syscall_newer_than_libseccomp_can_be_listed() -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(allow=("open_tree_attr",))))
    denied = prepared["denied"]
    assert isinstance(denied, list)
    assert "open_tree_attr" not in denied
    assert verdict(prepared, "open_tree_attr") == ALLOW


def test_denying_execve_is_refused() -> None:
    with pytest.raises(PolicyError, match="execve") as info:
        seccomp.prepare(Policy(syscalls=SyscallPolicy(deny=("execve",))), CAPS)
    assert info.value.path == "syscalls.deny[0]"


# --- apply's own checks (nothing reaches the kernel) ---------------------------------------------


@pytest.mark.parametrize("bpf", [b"", b"\0" * 7, "text", None])
def test_apply_rejects_malformed_prepared_data(bpf: object) -> None:
    with pytest.raises(_sys.SetupFailure) as info:
        seccomp.apply({"bpf": bpf, "denied": []})
    assert info.value.layer == "seccomp"
    assert info.value.errno == errno.EINVAL
    assert info.value.operation == "seccomp(SECCOMP_SET_MODE_FILTER)"


# --- docs ----------------------------------------------------------------------------------------


def test_docs_explain_every_rule() -> None:
    text = (ROOT / "docs" / "seccomp.md").read_text()
    for name in (*seccomp.DEFAULT_DENY, *seccomp.CONDITIONAL):
        assert f"`{name}`" in text, name


# --- set-id bits (issue 11, item 2) -----------------------------------------------------------------

O_CREAT, O_TMPFILE, O_WRONLY = 0o100, 0o20200000, 0o1


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o6755, 0o4000, 0o2000, 0o2010, (1 << 40) | 0o4644])
@pytest.mark.parametrize(
    ("name", "before"),
    [
        ("chmod", (0,)),
        ("fchmod", (3,)),
        ("fchmodat", (3, 0)),
        ("fchmodat2", (3, 0)),
        ("creat", (0,)),
        ("mknod", (0,)),
        ("mknodat", (3, 0)),
        ("open", (0, O_CREAT | O_WRONLY)),
        ("open", (0, O_TMPFILE | O_WRONLY)),
        ("openat", (3, 0, O_CREAT | O_WRONLY)),
        ("openat", (3, 0, O_TMPFILE | O_WRONLY)),
    ],
)
def test_setid_modes_are_refused(
    default: dict[str, object], name: str, before: tuple[int, ...], mode: int
) -> None:
    assert verdict(default, name, *before, mode) == EPERM


@pytest.mark.parametrize("mode", [0o755, 0o644, 0o775, 0o1777, 0o7777 & ~0o6000])
@pytest.mark.parametrize(
    ("name", "before"),
    [("chmod", (0,)), ("fchmod", (3,)), ("fchmodat", (3, 0)), ("creat", (0,)), ("mknodat", (3, 0))],
)
def test_ordinary_modes_pass(
    default: dict[str, object], name: str, before: tuple[int, ...], mode: int
) -> None:
    assert verdict(default, name, *before, mode) == ALLOW


def test_open_without_a_creation_flag_ignores_the_mode(default: dict[str, object]) -> None:
    # The kernel ignores the mode then: a garbage third argument must not break an ordinary open.
    assert verdict(default, "open", 0, 0, 0o4755) == ALLOW
    assert verdict(default, "openat", 3, 0, 0o2, 0o6755) == ALLOW
    assert verdict(default, "openat", 3, 0, O_CREAT | O_WRONLY, 0o644) == ALLOW


def test_openat2_answers_enosys(default: dict[str, object]) -> None:
    assert verdict(default, "openat2", 3, 0, 0, 24) == ENOSYS


@pytest.mark.parametrize("name", ["chmod", "fchmodat", "openat", "openat2"])
def test_allow_does_not_remove_the_setid_rules(name: str) -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(allow=(name,))))
    if name == "openat2":
        assert verdict(prepared, name, 3, 0, 0, 24) == ENOSYS
    elif name == "openat":
        assert verdict(prepared, name, 3, 0, O_CREAT, 0o4755) == EPERM
    else:
        assert verdict(prepared, name, *((0,) if name == "chmod" else (3, 0)), 0o4755) == EPERM


def test_deny_still_refuses_every_mode() -> None:
    prepared = compiled(Policy(syscalls=SyscallPolicy(deny=("chmod",))))
    assert verdict(prepared, "chmod", 0, 0o644) == EPERM
    assert verdict(prepared, "chmod", 0, 0o4755) == EPERM


@pytest.mark.parametrize(
    "profile",
    [None, SeccompProfile("allow", (SeccompRule(("mmap",), "allow"),))],
    ids=["built-in", "a profile allowing mmap"],
)
def test_shared_file_mappings_are_watched_and_only_they(profile: SeccompProfile | None) -> None:
    """The installed program notifies the init of mmap with MAP_SHARED or MAP_SHARED_VALIDATE of a file
    (SHARED_MAP_WATCH), junk flags around them included; never of a private or anonymous mapping. The
    decision program (what runs without a listener) allows them all."""
    caps = KernelCaps(seccomp=Feature(True), seccomp_notify=Feature(True), namespaces={"pid": Feature(True)})
    prepared = seccomp.prepare(Policy(syscalls=SyscallPolicy(profile=profile)), caps)
    assert prepared is not None
    installed, decision = prepared["notify"], prepared["bpf"]
    assert isinstance(installed, bytes)
    assert isinstance(decision, bytes)
    notify = 0x7FC00000
    shared, validate, private, anon, fixed = 0x01, 0x03, 0x02, 0x20, 0x10
    for flags, want in [
        (shared, notify),
        (validate, notify),
        (shared | fixed | 0x100000, notify),  # MAP_FIXED, MAP_NORESERVE-like bits do not hide it
        (validate | 0x80000000_00000000, notify),  # junk in the upper half either
        (private, ALLOW),
        (private | fixed, ALLOW),
        (shared | anon, ALLOW),
        (validate | anon, ALLOW),
    ]:
        args = (0, 4096, 3, flags, 5, 0)
        assert seccomp.run_bpf(installed, nr("mmap"), args=args) == want, hex(flags)
        assert seccomp.run_bpf(decision, nr("mmap"), args=args) == ALLOW, hex(flags)
    assert prepared["names"][nr("mmap")] == "mmap"  # type: ignore[index]
