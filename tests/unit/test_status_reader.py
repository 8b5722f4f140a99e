"""The status pipe reader: well-formed records come through, anything else ends the stream without
raising (a real pipe, no sandbox)."""

from __future__ import annotations

import marshal
import os
import struct

import pytest

from supervisor.forkserver.client import StatusReader


def _record(kind: bytes, payload: object) -> bytes:
    data = marshal.dumps(payload)
    return kind + struct.pack("=I", len(data)) + data


async def _read_all(raw: bytes) -> list[tuple[bytes, dict[str, object]]]:
    r, w = os.pipe()
    os.write(w, raw)
    os.close(w)
    reader = StatusReader(r)
    out = []
    while (rec := await reader.next()) is not None:
        out.append(rec)
    reader.close()
    return out


async def test_records_round_trip() -> None:
    raw = _record(b"X", {"pid": 2}) + _record(b"S", {"status": 0, "cpu": 0.1, "maxrss": 1})
    assert await _read_all(raw) == [(b"X", {"pid": 2}), (b"S", {"status": 0, "cpu": 0.1, "maxrss": 1})]


@pytest.mark.parametrize(
    "bad",
    [
        b"Q" + struct.pack("=I", 2) + b"{}",  # unknown kind
        b"S" + struct.pack("=I", 1 << 30),  # absurd length
        b"S" + struct.pack("=I", 3) + b"\xff\xfe\xfd",  # not marshal
        _record(b"S", [1, 2, 3]),  # not a dict
    ],
)
async def test_malformed_input_ends_the_stream(bad: bytes) -> None:
    assert await _read_all(_record(b"X", {"pid": 2}) + bad + _record(b"S", {"status": 0})) == [
        (b"X", {"pid": 2})
    ]
