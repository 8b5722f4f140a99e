"""Every log record corral emits is one printable, bounded line, whoever formats it.

Log messages name paths and names a sandbox chose (a repository moved aside, a cgroup, a command). The CLI
formats its own lines printable, but a library user's handler (`logging.basicConfig()`, a journal, a
service's log file read in a terminal) got the records raw: an OSC sequence in a planted directory name
reached the caller's terminal through the "git: ... moved aside" warning. So a filter on each of corral's
loggers escapes the formatted message (`printable`) before any handler sees it; the record's `msg` becomes
that text and its `args` None. Filters on a logger run only for records made through that logger, so each
logger name corral uses is listed here (tests/unit/test_logsafe.py checks the sources use no other).
"""

from __future__ import annotations

import logging

from policies._errors import printable

#: The loggers corral's packages log through.
LOGGERS = (
    "corral",
    "corral.cgroups",
    "corral.exporters",
    "corral.mcp",
    "corral.ray",
    "corral.rules",
)


class PrintableFilter(logging.Filter):
    """Replaces a record's message by its printable form (`printable`) when it is not already one. Never
    drops a record; a record whose message cannot be formatted is left for logging to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # logging's own handler reports a bad format string; do not mask it
            return True
        safe = printable(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


_FILTER = PrintableFilter()


def install() -> None:
    """Add the filter to each of `LOGGERS` (once: adding the same filter twice is a no-op)."""
    for name in LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
