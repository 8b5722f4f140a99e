"""git's own config file syntax, read the way git reads it (git_parse_source in git's config parser), for
the host side's decisions about configs a sandbox may have written.

A config is judged by the settings git will see in it, so the reader must not differ from git's on any
input: a line-based reader that took `; comment \\` for a continuation, or split lines at `\\r`, `\\x1c` or
U+2028 where git does not, let `core.fsmonitor` through unseen (tests/kernel/test_attack_git_syntax.py).
This module ports git's character-level parser instead: comments end at the newline only, a backslash
continues a value only outside a comment, a lone `\\r` is white space, `\\r\\n` is a newline, a UTF-8 byte
order mark is skipped at the start, and everything git refuses (a bad escape, an unterminated quote, a key
that does not start with a letter) is refused here too. No I/O.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"
_SPACE = frozenset(b" \t\n\r")  # git's sane_ctype isspace: not \v or \f
_ALPHA = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_KEYCHAR = _ALPHA | frozenset(b"0123456789-")
_NL = 0x0A
_ESCAPES = {ord("t"): 0x09, ord("b"): 0x08, ord("n"): 0x0A, ord("\\"): ord("\\"), ord('"'): ord('"')}


class ConfigSyntaxError(ValueError):
    """git would refuse this config ("bad config line N"). `line`: where."""

    def __init__(self, line: int) -> None:
        super().__init__(f"bad config line {line}")
        self.line = line


class _Source:
    """git's get_next_char over bytes: `\\r\\n` reads as `\\n`, the end of the data as a final `\\n`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.eof = False
        self.line = 1

    def next(self) -> int:
        data, pos = self.data, self.pos
        if pos >= len(data):
            self.eof = True
            return _NL
        c = data[pos]
        self.pos = pos + 1
        if c == 0x0D and self.pos < len(data) and data[self.pos] == _NL:
            self.pos += 1
            c = _NL
        if c == _NL:
            self.line += 1
        return c


def parse(data: bytes) -> list[tuple[str, bytes | None]]:
    """Every `(name, value)` git sees in config `data`, in order: `name` as git's callbacks get it
    (section and key lower case, a quoted subsection as written: `remote.Origin.url`), `value` None for a
    key given without `=` (a boolean true). Raises ConfigSyntaxError where git would refuse the file."""
    src = _Source(data)
    out: list[tuple[str, bytes | None]] = []
    section = b""
    comment = False
    if data.startswith(_BOM):
        src.pos = len(_BOM)
    elif data[:1] == _BOM[:1]:
        # git tolerates no partial BOM
        raise ConfigSyntaxError(1)
    while True:
        c = src.next()
        if c == _NL:
            if src.eof:
                return out
            comment = False
            continue
        if comment or c in _SPACE:
            continue
        if c in b"#;":
            comment = True
            continue
        if c == ord("["):
            section = _section(src)
            continue
        if c not in _ALPHA:
            raise ConfigSyntaxError(src.line)
        out.append(_entry(src, section, c))


def _section(src: _Source) -> bytes:
    """After `[`: the section name (`core`, `remote.origin` from old-style `[remote.Origin]`, or `remote.`
    + the subsection as written from `[remote "Origin"]`), up to and including `]`."""
    name = bytearray()
    while True:
        c = src.next()
        if src.eof:
            raise ConfigSyntaxError(src.line)
        if c == ord("]"):
            break
        if c in _SPACE:
            _subsection(src, name, c)
            break
        if c not in _KEYCHAR and c != ord("."):
            raise ConfigSyntaxError(src.line)
        name.append(c | 0x20 if c in _ALPHA else c)
    if not name:
        raise ConfigSyntaxError(src.line)
    return bytes(name)


def _subsection(src: _Source, name: bytearray, c: int) -> None:
    while c in _SPACE:
        if c == _NL:
            raise ConfigSyntaxError(src.line)
        c = src.next()
    if c != ord('"'):
        raise ConfigSyntaxError(src.line)
    name.append(ord("."))
    while True:
        c = src.next()
        if c == _NL:
            raise ConfigSyntaxError(src.line)
        if c == ord('"'):
            break
        if c == ord("\\"):
            c = src.next()
            if c == _NL:
                raise ConfigSyntaxError(src.line)
        name.append(c)
    if src.next() != ord("]"):
        raise ConfigSyntaxError(src.line)


def _entry(src: _Source, section: bytes, first: int) -> tuple[str, bytes | None]:
    """A `key [= value]` whose first letter `first` was read."""
    key = bytearray([first | 0x20])
    while True:
        c = src.next()
        if src.eof or c not in _KEYCHAR:
            break
        key.append(c | 0x20 if c in _ALPHA else c)
    while c in (0x20, 0x09):
        c = src.next()
    value: bytes | None = None
    if c != _NL:
        if c != ord("="):
            raise ConfigSyntaxError(src.line)
        value = _value(src)
    name = (section + b"." + bytes(key)) if section else bytes(key)
    return name.decode("utf-8", errors="surrogateescape"), value


def _value(src: _Source) -> bytes:
    """git's parse_value: quotes, escapes, comments and continuations, up to the end of the line."""
    out = bytearray()
    quote = comment = False
    space = 0
    while True:
        c = src.next()
        if c == _NL:
            if quote:
                raise ConfigSyntaxError(src.line - 1)
            return bytes(out).split(b"\0", 1)[0]  # git's callbacks get a C string
        if comment:
            continue
        if c in _SPACE and not quote:
            if out:
                space += 1
            continue
        if not quote and c in b";#":
            comment = True
            continue
        out += b" " * space
        space = 0
        if c == ord("\\"):
            c = src.next()
            if c == _NL:
                continue  # a continuation line
            escaped = _ESCAPES.get(c)
            if escaped is None:
                raise ConfigSyntaxError(src.line)
            out.append(escaped)
            continue
        if c == ord('"'):
            quote = not quote
            continue
        out.append(c)
