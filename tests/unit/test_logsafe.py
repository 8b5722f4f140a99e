"""corral's loggers escape what they log (policies/_logsafe.py): the filter, and that it covers every logger
name the sources use."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import policies  # noqa: F401  (installs the filters)
from policies._logsafe import LOGGERS

ROOT = Path(__file__).resolve().parents[2]


def test_every_logger_the_sources_use_is_filtered() -> None:
    used: set[str] = set()
    for package in ("policies", "supervisor", "exporters"):
        for path in (ROOT / package).rglob("*.py"):
            used.update(re.findall(r"""getLogger\(\s*["'](corral[\w.]*)["']""", path.read_text()))
    assert used, "no corral logger found: the pattern is stale"
    assert used <= set(LOGGERS), sorted(used - set(LOGGERS))
    for name in used:
        assert logging.getLogger(name).filters, name


@pytest.mark.parametrize("name", LOGGERS)
def test_a_record_with_control_bytes_is_escaped(name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=name):
        logging.getLogger(name).warning("git: %s: %s", "a\x1b]0;t\x07b", "c\u009bd\ne")
        logging.getLogger(name).warning("plain %s", "text")
    first, second = caplog.records
    assert first.getMessage() == "git: a\\x1b]0;t\\x07b: c\\x9bd\\x0ae"
    assert second.getMessage() == "plain text"
    assert second.args == ("text",)  # an already printable record is left as it was
