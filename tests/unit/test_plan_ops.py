"""The sandbox init's plan executor (supervisor/sandbox/_cinit.c) and its Python side (_ops.py), run in
this process through `Plan.run` with ops that need no privilege (directories and files under tmp_path).
The kernel-facing ops are exercised by the kernel tests, in real sandboxes."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from supervisor.sandbox import _cinit, _sys
from supervisor.sandbox._ops import Plan, blob, encode_command, encode_env, pick_hint, write_segment


def test_ops_run_in_order(tmp_path: Path) -> None:
    plan = Plan()
    plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o700,), s=(str(tmp_path / "d"),))
    plan.add(_cinit.OP_SYMLINK, "mounts", "symlink", s=("d", str(tmp_path / "link")))
    plan.add(_cinit.OP_CREAT, "mounts", "creat", a=(0o600,), s=(str(tmp_path / "link" / "f"),))
    plan.run()
    assert (tmp_path / "d").is_dir()
    assert os.readlink(tmp_path / "link") == "d"
    assert (tmp_path / "d" / "f").is_file()
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700


def test_ensure_creates_parents_once(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file"
    plan = Plan()
    plan.add(_cinit.OP_ENSURE, "mounts", "mkdir(mount point)", a=(0,), s=(str(target),))
    plan.add(_cinit.OP_ENSURE, "mounts", "mkdir(mount point)", a=(1,), s=(str(tmp_path / "c" / "dir"),))
    plan.run()
    plan.run()  # already there: nothing to do, no error
    assert target.is_file()
    assert (tmp_path / "c" / "dir").is_dir()


def test_failure_names_the_op_and_stops_the_plan(tmp_path: Path) -> None:
    plan = Plan()
    plan.add(_cinit.OP_MKDIR, "mounts", "mkdir(first)", a=(0o755,), s=(str(tmp_path / "x" / "y"),), path="p")
    plan.add(_cinit.OP_MKDIR, "mounts", "mkdir(second)", a=(0o755,), s=(str(tmp_path / "z"),))
    with pytest.raises(_sys.SetupFailure) as info:
        plan.run()
    assert (info.value.layer, info.value.operation, info.value.errno, info.value.path) == (
        "mounts",
        "mkdir(first)",
        errno.ENOENT,
        "p",
    )
    assert not (tmp_path / "z").exists()


def test_tolerated_errno_counts_as_success(tmp_path: Path) -> None:
    plan = Plan()
    plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path),), ok=(errno.EEXIST,))
    plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "after"),))
    plan.run()
    assert (tmp_path / "after").is_dir()


def test_on_fail_jumps_to_the_fallback_and_jump_skips_it(tmp_path: Path) -> None:
    def build(first: Path) -> Plan:
        plan = Plan()
        op = plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(first),))
        plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "ok"),))
        done = plan.jump()
        plan.land(op)
        plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "fallback"),))
        plan.land(done)
        plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "end"),))
        return plan

    build(tmp_path / "new").run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end", "new", "ok"]
    (tmp_path / "end").rmdir()
    build(tmp_path / "missing" / "parent").run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end", "fallback", "new", "ok"]


def test_segments_run_in_order_and_failures_count_across_them(tmp_path: Path) -> None:
    first, second = Plan(), Plan()
    first.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "one"),))
    second.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "two"),))
    second.add(_cinit.OP_RMDIR, "mounts", "rmdir", s=(str(tmp_path / "absent"),))
    assert _cinit.apply(blob([first.segment(), second.segment()])) == (2, errno.ENOENT, None)
    assert (tmp_path / "one").is_dir()
    assert (tmp_path / "two").is_dir()


def test_hint_tables_choose_by_errno() -> None:
    hint = {errno.EPERM: "not allowed", "*": "something else"}
    assert pick_hint(hint, errno.EPERM) == "not allowed"
    assert pick_hint(hint, errno.EINVAL) == "something else"
    assert pick_hint("plain", errno.EINVAL) == "plain"


def test_the_init_picks_the_same_hint(tmp_path: Path) -> None:
    plan = Plan()
    hint = {errno.ENOENT: "make the parent first", "*": "other"}
    plan.add(_cinit.OP_RMDIR, "mounts", "rmdir", s=(str(tmp_path / "absent"),), hint=hint)
    with pytest.raises(_sys.SetupFailure) as info:
        plan.run()
    assert info.value.hint == "make the parent first"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:10],  # shorter than a header
        lambda b: b"XXXX" + b[4:],  # wrong magic
        lambda b: b[:8] + struct.pack("=I", 999) + b[12:],  # more segments than there are
    ],
)
def test_a_malformed_plan_is_refused(mangle: object, tmp_path: Path) -> None:
    plan = Plan()
    plan.add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(0o755,), s=(str(tmp_path / "never"),))
    good = blob([plan.segment()])
    with pytest.raises(ValueError, match="malformed"):
        _cinit.apply(mangle(good))  # type: ignore[operator]
    assert not (tmp_path / "never").exists()


def test_an_out_of_range_string_fails_the_op_cleanly() -> None:
    plan = Plan()
    plan.add(_cinit.OP_SECCOMP, "seccomp", "seccomp", a=(1 << 20,), s=(b"\0" * 8,))  # length past the table
    with pytest.raises(_sys.SetupFailure) as info:
        plan.run()
    assert info.value.errno == errno.EINVAL


def test_encode_command_layout_and_refusals() -> None:
    data = encode_command([b"/bin/echo", b"hi"], {b"A": b"1"})
    assert data == struct.pack("=II", 2, 1) + b"/bin/echo\0hi\0A=1\0"
    with pytest.raises(ValueError, match="null byte"):
        encode_command([b"/bin/echo", b"a\0b"], {})
    with pytest.raises(ValueError, match="null byte"):
        encode_command([b"/bin/echo"], {b"A": b"x\0y"})
    with pytest.raises(ValueError, match="empty"):
        encode_command([], {})
    assert encode_command([b"/bin/echo", b"hi"], encode_env({b"A": b"1"})) == data


def test_op_arity_is_checked() -> None:
    with pytest.raises(ValueError, match="at most"):
        Plan().add(_cinit.OP_MKDIR, "mounts", "mkdir", a=(1, 2, 3, 4, 5))


def test_write_segment_packs_what_a_plan_would(tmp_path: Path) -> None:
    """The directly packed placement segment: same bytes of ops as Plan.segment would give, writes in order,
    and a failure reported with its layer, operation and path by the same executor."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("")
    b.write_text("")
    writes = [(str(a), "0", "write tasks"), (str(b), "12", "write cgroup.procs")]
    seg = write_segment("cgroups", writes)
    plan = Plan()
    for path, data, operation in writes:
        plan.add(_cinit.OP_WRITE, "cgroups", operation, s=(path, data), path=path)
    assert len(seg.packed) == len(plan.segment().packed)
    assert [(op.code, op.layer, op.operation, op.s, op.path) for op in seg.ops] == [
        (op.code, op.layer, op.operation, op.s, op.path) for op in plan.ops
    ]
    assert _cinit.apply(blob([seg])) is None
    assert (a.read_text(), b.read_text()) == ("0", "12")
    missing = str(tmp_path / "gone" / "tasks")
    failed = _cinit.apply(
        blob([write_segment("cgroups", [(str(a), "1", "write tasks"), (missing, "0", "write x")])])
    )
    assert failed is not None
    assert failed[:2] == (1, errno.ENOENT)
    assert a.read_text() == "1"
