"""The exception root shared by every corral package.

It lives in `policies` because data flows one way (policies -> supervisor -> exporters): the
supervisor may import from here, never the reverse.
"""

from __future__ import annotations

#: Longest rendering of an offending value in a message; policies may hold arbitrarily large values.
_MAX_SHOWN = 200


class _NoValue:
    """Marks "no offending value given", so that an offending value of None is still shown."""

    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE = _NoValue()


def _show(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__, or an int too long to print, must not mask the real error
        text = f"<unprintable {type(value).__name__}>"
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text


class CorralError(Exception):
    """Root of every error corral raises on purpose. Subclasses carry structured fields."""


class PolicyError(CorralError, ValueError):
    """A policy value is invalid.

    `path` is the dotted key path in the policy (for example ``resources.memory`` or
    ``filesystem.write[2]``; ``""`` for the policy as a whole), `value` the offending value (None
    when none was given) and `reason` what was expected instead. `source` names the file, when the
    policy came from one.
    """

    def __init__(
        self,
        path: str,
        reason: str,
        value: object = _NO_VALUE,
        source: str | None = None,
    ) -> None:
        self.path = path
        self.reason = reason
        self._has_value = value is not _NO_VALUE
        self.value = value if self._has_value else None
        self.source = source
        where = f"{source}: " if source else ""
        shown = f" (got {_show(value)})" if self._has_value else ""
        super().__init__(f"{where}{path or '<policy>'}: {reason}{shown}")

    def with_source(self, source: str | None) -> PolicyError:
        """Return a copy of this error that names `source` (the policy file) in its message."""
        value = self.value if self._has_value else _NO_VALUE
        return PolicyError(self.path, self.reason, value, source)
