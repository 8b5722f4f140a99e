"""The init's ops and plan records are defined once: the OPS table in supervisor/sandbox/_cinit.c. The C enum,
the extension's OP_* constants (which _ops.py and the mechanism modules use) come from it; the type stub and
the interpreter's switch are checked against it here; the plan's binary records are compared field by field
(offsets, not only sizes) between _ops.py and the C compiler."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor.sandbox import _cinit, _ops

SANDBOX = Path(__file__).resolve().parents[2] / "supervisor" / "sandbox"
C_SOURCE = (SANDBOX / "_cinit.c").read_text()


def _ops_table() -> dict[str, int]:
    start = C_SOURCE.index("#define OPS(X)")
    end = C_SOURCE.index("#define X_ENUM")
    return {name: int(num) for name, num in re.findall(r"X\((\w+), (\d+)\)", C_SOURCE[start:end])}


def test_the_ops_table_is_read() -> None:
    table = _ops_table()
    assert table["WRITE"] == 1
    assert table["SECCOMP"] == _cinit.OP_SECCOMP
    assert len(table) >= 30


def test_every_op_has_one_number_and_is_exported_under_it() -> None:
    table = _ops_table()
    assert len(set(table.values())) == len(table)
    exported = {name[3:]: getattr(_cinit, name) for name in dir(_cinit) if name.startswith("OP_")}
    assert exported == table


def test_the_type_stub_lists_exactly_the_ops_of_the_table() -> None:
    stub = (SANDBOX / "_cinit.pyi").read_text()
    assert set(re.findall(r"^OP_(\w+): int$", stub, re.MULTILINE)) == set(_ops_table())


def test_the_init_implements_every_op() -> None:
    handled = set(re.findall(r"case OP_(\w+):", C_SOURCE)) | set(re.findall(r"code == OP_(\w+)", C_SOURCE))
    assert handled >= set(_ops_table())


def test_the_plan_records_match_field_by_field() -> None:
    assert _ops.layout() == _cinit.LAYOUT


def test_a_reordered_field_of_the_same_size_is_caught() -> None:
    # Swapping two 4-byte fields keeps every size; only the offsets tell.
    fields = list(_ops._RECORDS["plan_header"])
    i, j = fields.index(("cmd_fd", "i")), fields.index(("status_w", "i"))
    fields[i], fields[j] = fields[j], fields[i]
    swapped = _ops.layout({"plan_header": fields})["plan_header"]
    assert swapped["sizeof"] == _cinit.LAYOUT["plan_header"]["sizeof"]
    assert swapped != _cinit.LAYOUT["plan_header"]
