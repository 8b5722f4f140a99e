"""The exception root shared by every corral package.

It lives in `policies` because data flows one way (policies -> supervisor -> exporters): the supervisor may
import from here, never the reverse.
"""

from __future__ import annotations


class CorralError(Exception):
    """Root of every error corral raises on purpose. Subclasses carry structured fields."""


class PolicyError(CorralError, ValueError):
    """A policy value is invalid.

    `path` is the dotted key path in the policy (for example ``resources.memory``), `value` the offending value
    and `reason` what was expected instead. `source` names the file, when the policy came from one.
    """

    def __init__(self, path: str, reason: str, value: object = None, source: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.value = value
        self.source = source
        where = f"{source}: " if source else ""
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{where}{path or '<policy>'}: {reason}{shown}")
