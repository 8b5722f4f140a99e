"""The exception root shared by every corral package.

It lives in `policies` because data flows one way (policies -> supervisor -> exporters): the
supervisor may import from here, never the reverse.
"""

from __future__ import annotations

#: Longest rendering of an offending value in a message; policies may hold arbitrarily large values.
_MAX_SHOWN = 200

#: Longest message an error renders (`printable`'s default bound).
MAX_MESSAGE = 2000

#: Characters `str.isprintable` accepts that still move a terminal's cursor or text direction.
_UNSAFE_PRINTABLE = frozenset("\u2028\u2029")


def printable(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` as one safe line for a terminal or a log: every character that is not printable (C0 and C1
    controls such as ESC, the CSI byte U+009B, BEL, newlines, bidirectional overrides, the surrogates that
    stand for undecodable bytes of a file name) becomes a ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN`` escape,
    and a text longer than `limit` is cut in the middle around ``...``.

    Strings a sandbox controls (file names, paths, command names) reach corral's messages: printed raw,
    an OSC sequence in a planted file name rewrote the caller's terminal title. Idempotent: an escaped
    text is printable ASCII where it was changed, so escaping twice changes nothing. Never raises.
    """
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # a broken __str__ must not hide the error being reported
            text = f"<unprintable {type(text).__name__}>"
    if not (text.isprintable() and text.isascii()):
        out = []
        for ch in text:
            if ch.isprintable() and ch not in _UNSAFE_PRINTABLE:
                out.append(ch)
                continue
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        text = "".join(out)
    if len(text) > limit:
        head = max(limit - 3, 0) * 2 // 3
        tail = max(limit - 3 - head, 0)
        text = text[:head] + "..." + (text[-tail:] if tail else "")
    return text


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
    """Root of every error corral raises on purpose. Subclasses carry structured fields.

    Its text (``str(err)``) is always one printable, bounded line (`printable`): messages embed paths
    and names a sandbox could have chosen. The structured fields keep the raw values.
    """

    def __str__(self) -> str:
        return printable(super().__str__())


#: A loader that re-raises a PolicyError under a longer path (policies/_rules_load.py) keeps whether the
#: error carried a value through PolicyError._has_value.
SEAM = frozenset({"_has_value"})


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
