"""Value checks shared by the model, the profiles and the TOML loader.

Each check takes the raw value and the dotted key path it came from, returns the value in its one
canonical form (absolute normalised path, int bytes, float seconds, tuple...) and raises
`PolicyError(path, reason, value)` for anything else. They never let TypeError, ValueError or
KeyError escape: the fuzz tests hold them to that. Pure functions: nothing here touches the
filesystem, except `resolve_workdir` and `resolve_trusted` (getcwd, lstat, readlink).
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from policies._errors import PolicyError

#: Largest size in bytes: the kernel's limits are signed 64-bit.
MAX_BYTES = 2**63 - 1
#: Largest CPU quota, in cores.
MAX_CPUS = 1024.0
#: Largest task count: the kernel's PID_MAX_LIMIT.
MAX_PIDS = 4_194_304
#: Largest file descriptor limit (RLIMIT_NOFILE is an int in the kernel).
MAX_FDS = 2**31 - 1
#: Longest duration, in seconds (about 31 years): keeps timers and RLIMIT_CPU far from overflow.
MAX_SECONDS = 1e9
#: Longest path in bytes, terminating NUL included (Linux PATH_MAX).
PATH_MAX = 4096
#: Strings that mean "no limit" where a size, count or duration is expected (in files and profile
#: options; the model itself takes None).
UNLIMITED = ("unlimited", "max")

_MAX_TEXT = 64  # longest size/duration/number string we parse: bounds the work on hostile input

_SIZE_HELP = "a size: a positive number of bytes, or a string like '100k', '512M', '1.5G', '2GiB'"
_DURATION_HELP = "a duration: positive seconds, or a string like '90', '1.5s', '500ms', '2m', '1h'"

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"\s*{_NUMBER}\s*(?:([kmgtp])(?:i?b)?|b)?\s*", re.IGNORECASE | re.ASCII)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_BARE_NUMBER_RE = re.compile(rf"\s*{_NUMBER}\s*", re.ASCII)
_DURATION_RE = re.compile(rf"(?:\s*{_NUMBER}\s*(ms|s|m|h|d))+\s*", re.IGNORECASE | re.ASCII)
_DURATION_PART_RE = re.compile(rf"{_NUMBER}\s*(ms|s|m|h|d)", re.IGNORECASE | re.ASCII)
_DURATION_UNITS = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_INT_RE = re.compile(r"\s*\d+\s*", re.ASCII)
_FLOAT_RE = re.compile(rf"\s*{_NUMBER}\s*", re.ASCII)
_SYSCALL_RE = re.compile(r"[a-z0-9_]+", re.ASCII)
_MAX_SYSCALL_NAME = 64


def _is_number(value: object) -> bool:
    # bool is an int subclass; `memory = true` is a mistake, not one byte.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: object, path: str, expected: str) -> str:
    """The stripped, length-bounded string form of a size/duration/number, or PolicyError."""
    if not isinstance(value, str):
        raise PolicyError(path, f"expected {expected}", value)
    if len(value) > _MAX_TEXT:
        raise PolicyError(path, f"too long; expected {expected}", value)
    return value.strip()


def parse_size(value: object, path: str = "size") -> int:
    """Return `value` as a number of bytes.

    Accepts a positive int, a float holding a whole number, or a string: a number (a decimal point
    is allowed) followed by an optional unit. Units are binary and case-insensitive: ``b`` (bytes),
    ``k``/``KB``/``KiB`` (1024), ``M``/``MB``/``MiB`` (1024²), ``G``, ``T``, ``P``; so ``"512MB"``
    is 512 MiB. A fractional byte count is rounded down. Raises PolicyError naming `path` if the
    value is not such a size, is below one byte or above 2**63-1.
    """
    if isinstance(value, float) and not isinstance(value, bool):
        if not math.isfinite(value) or not value.is_integer():
            raise PolicyError(path, f"expected {_SIZE_HELP}", value)
        amount = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = value
    else:
        text = _text(value, path, _SIZE_HELP)
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise PolicyError(path, f"expected {_SIZE_HELP}", value)
        number, unit = match.group(1), (match.group(2) or "").lower()
        amount = math.floor(Fraction(number) * 1024 ** _SIZE_POWERS[unit])
    if amount < 1:
        raise PolicyError(path, f"must be at least 1 byte; expected {_SIZE_HELP}", value)
    if amount > MAX_BYTES:
        raise PolicyError(path, f"must be at most {MAX_BYTES} bytes (2**63-1)", value)
    return amount


def parse_duration(value: object, path: str = "duration") -> float:
    """Return `value` as a number of seconds.

    Accepts a positive finite int or float (seconds), or a string: a bare number of seconds
    (``"90"``, ``"1.5"``) or one or more number+unit parts, units ``ms``, ``s``, ``m``, ``h``, ``d``
    (``"1.5s"``, ``"2m"``, ``"1h30m"``). Raises PolicyError naming `path` if the value is not such a
    duration, is not above zero, or exceeds 1e9 seconds.
    """
    if _is_number(value):
        assert isinstance(value, int | float)
        if isinstance(value, float) and not math.isfinite(value):
            raise PolicyError(path, f"must be finite; expected {_DURATION_HELP}", value)
        seconds = Fraction(value)
    else:
        text = _text(value, path, _DURATION_HELP)
        bare = _BARE_NUMBER_RE.fullmatch(text)
        if bare is not None:
            seconds = Fraction(bare.group(1))
        elif _DURATION_RE.fullmatch(text) is not None:
            seconds = sum(
                (Fraction(n) * _DURATION_UNITS[u.lower()] for n, u in _DURATION_PART_RE.findall(text)),
                Fraction(0),
            )
        else:
            raise PolicyError(path, f"expected {_DURATION_HELP}", value)
    if seconds <= 0:
        raise PolicyError(path, f"must be greater than zero; expected {_DURATION_HELP}", value)
    if seconds > MAX_SECONDS:
        raise PolicyError(path, f"must be at most {MAX_SECONDS:.0f} seconds", value)
    return float(seconds)


def check_count(value: object, path: str, minimum: int, maximum: int, what: str) -> int:
    """Return `value` as an int in [minimum, maximum]; accepts ints and strings of digits.

    Raises PolicyError naming `path` and `what` the number counts otherwise.
    """
    expected = f"a whole number of {what} from {minimum} to {maximum}"
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and math.isfinite(value) and value.is_integer()) or (
        isinstance(value, str) and len(value) <= _MAX_TEXT and _INT_RE.fullmatch(value)
    ):
        number = int(value)
    else:
        raise PolicyError(path, f"expected {expected}", value)
    if not minimum <= number <= maximum:
        raise PolicyError(path, f"out of range; expected {expected}", value)
    return number


#: The smallest limits a sandbox can start a command under: the sandbox init is a task of the child's cgroup
#: beside the command; the init holds up to 11 descriptors while it starts the command (RLIMIT_NOFILE is per
#: process, so the command's first fds must fit under it too); the init and a small command's exec take about
#: 300 KiB of the cgroup's memory. Below these the command cannot start, and the errors it then gets (EAGAIN,
#: EMFILE, an OOM kill of the init) would blame something else.
MIN_PIDS = 2
MIN_FDS = 16
MIN_MEMORY = 1 << 20


def _at_least(number: int, minimum: int, path: str, why: str, value: object, shown: str = "") -> int:
    if number < minimum:
        raise PolicyError(path, f"at least {shown or minimum} needed: {why}", value)
    return number


def check_pids(value: object, path: str) -> int:
    """Return `value` as a task limit from MIN_PIDS to PID_MAX_LIMIT; else raise PolicyError(path)."""
    number = check_count(value, path, 1, MAX_PIDS, "tasks")
    return _at_least(number, MIN_PIDS, path, "the sandbox's init is one task and the command another", value)


def check_fds(value: object, path: str) -> int:
    """Return `value` as a file descriptor limit from MIN_FDS to 2**31-1; else raise PolicyError(path)."""
    number = check_count(value, path, 1, MAX_FDS, "descriptors")
    why = "the sandbox's init holds up to 11 descriptors while it starts the command, which needs its own"
    return _at_least(number, MIN_FDS, path, why, value)


def check_memory(value: object, path: str) -> int:
    """Return `value` as a memory limit in bytes, at least MIN_MEMORY (1 MiB); else raise PolicyError."""
    number = parse_size(value, path)
    why = "the sandbox's init and the command's start take about 300 KiB of it"
    return _at_least(number, MIN_MEMORY, path, why, value, "1 MiB")


def check_cpus(value: object, path: str) -> float:
    """Return `value` as a CPU quota in cores, > 0 and <= 1024; accepts numbers and decimal strings.

    Raises PolicyError naming `path` otherwise.
    """
    expected = f"a number of CPU cores greater than 0 and at most {MAX_CPUS:.0f}, such as 0.5 or 2"
    if _is_number(value):
        assert isinstance(value, int | float)
        cores = float(value)
    elif isinstance(value, str) and len(value) <= _MAX_TEXT and _FLOAT_RE.fullmatch(value):
        cores = float(value)
    else:
        raise PolicyError(path, f"expected {expected}", value)
    if not (math.isfinite(cores) and 0 < cores <= MAX_CPUS):
        raise PolicyError(path, f"out of range; expected {expected}", value)
    return cores


def is_unlimited(value: object) -> bool:
    """True for None and the strings that mean "no limit" ("unlimited", "max", any case)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in UNLIMITED)


def check_bool(value: object, path: str) -> bool:
    """Return `value` if it is a bool; else raise PolicyError(path) (1 and "yes" are rejected)."""
    if not isinstance(value, bool):
        raise PolicyError(path, "expected true or false", value)
    return value


def check_choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    """Return `value` if it is one of the strings `choices`; else raise PolicyError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(path, f"expected one of: {', '.join(map(repr, choices))}", value)
    return value


def check_names_in(value: object, path: str, known: Mapping[str, int]) -> tuple[str, ...]:
    """Return a list of names, each a key of `known`, as a deduplicated tuple; PolicyError names a bad
    item and lists the names it may be."""
    names: list[str] = []
    for i, item in enumerate(check_list(value, path, "names")):
        if not isinstance(item, str) or item not in known:
            where = f"{path}[{i}]"
            raise PolicyError(where, f"expected one of: {', '.join(known)}", item)
        names.append(item)
    return dedupe(names)


def check_name(value: object, path: str, what: str) -> str:
    """Return `value` if it is a non-empty string without NUL bytes; raise PolicyError otherwise."""
    if not isinstance(value, str) or not value:
        raise PolicyError(path, f"expected a non-empty string ({what})", value)
    if "\0" in value:
        raise PolicyError(path, f"{what} must not contain a NUL byte", value)
    return value


def _encodable(text: str, path: str, what: str) -> None:
    # Lone surrogates that are not surrogateescape'd bytes cannot be passed to the kernel.
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise PolicyError(path, f"{what} cannot be encoded for the operating system", text) from None


def _path_text(value: object, path: str) -> str:
    """The str form of a path-like value, checked for type, emptiness, NUL and encodability."""
    text: object = value
    if isinstance(value, os.PathLike):
        try:
            text = os.fspath(value)
        except (TypeError, ValueError):
            raise PolicyError(path, "expected a path string", value) from None
    if not isinstance(text, str):
        raise PolicyError(path, "expected a path string", value)
    if not text:
        raise PolicyError(path, "expected a path, got an empty string", value)
    if "\0" in text:
        raise PolicyError(path, "a path must not contain a NUL byte", value)
    _encodable(text, path, "the path")
    return text


def _normalise(text: str, path: str, value: object) -> str:
    # Lexical: "a/../b" -> "b". Symlinks are not resolved here; the sandbox follows them when it
    # opens the path.
    norm = os.path.normpath(text)
    if norm.startswith("//"):  # POSIX keeps a leading "//"; Linux gives it no meaning
        norm = "/" + norm.lstrip("/")
    if len(os.fsencode(norm)) >= PATH_MAX:
        raise PolicyError(path, f"path longer than PATH_MAX ({PATH_MAX} bytes)", value)
    return norm


def check_path(value: object, path: str, relative_to: str | None = None) -> str:
    """Return `value` as an absolute, lexically normalised path string.

    A relative path is resolved against `relative_to` (an absolute directory); without one it is an
    error. Accepts str and os.PathLike. Raises PolicyError naming `path` for other types, empty
    strings, NUL bytes, unencodable text, relative paths with nothing to resolve them against, and
    paths over PATH_MAX.
    """
    text = _path_text(value, path)
    if not os.path.isabs(text):
        if relative_to is None:
            raise PolicyError(path, "expected an absolute path (starting with '/')", value)
        text = os.path.join(relative_to, text)
    return _normalise(text, path, value)


def check_list(value: object, path: str, what: str) -> list[object]:
    """Return the items of `value`, a list/tuple/other iterable but not a string, bytes or mapping.

    Raises PolicyError naming `path` otherwise (a single string is the common mistake, so it is
    named).
    """
    if isinstance(value, str | bytes):
        raise PolicyError(path, f"expected a list of {what}, not a single string", value)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise PolicyError(path, f"expected a list of {what}", value)
    return list(value)


def dedupe(items: Iterable[str]) -> tuple[str, ...]:
    """Return `items` without repeats, first occurrence first."""
    return tuple(dict.fromkeys(items))


def check_paths(value: object, path: str, relative_to: str | None = None) -> tuple[str, ...]:
    """Return a list of paths as a tuple of absolute normalised paths (see `check_path`), without
    repeats.

    Raises PolicyError naming the list (``path``) or the bad item (``path[i]``).
    """
    items = check_list(value, path, "paths")
    return dedupe(check_path(item, f"{path}[{i}]", relative_to) for i, item in enumerate(items))


def check_protected(value: object, path: str) -> str:
    """Return `value` as a normalised path relative to a writable root (``.git/hooks``).

    Raises PolicyError naming `path` if it is not a path string, is absolute, climbs out with ``..``
    or names the root itself.
    """
    text = _path_text(value, path)
    if text.startswith("/"):
        raise PolicyError(path, "expected a path relative to each writable root, such as '.git/hooks'", value)
    norm = _normalise(text, path, value)
    if norm == "." or ".." in norm.split("/"):
        raise PolicyError(path, "must name something inside the writable root (no '..', not '.')", value)
    return norm


def check_protected_list(value: object, path: str) -> tuple[str, ...]:
    """Return a list of protected relative paths (see `check_protected`), deduplicated."""
    items = check_list(value, path, "relative paths")
    return dedupe(check_protected(item, f"{path}[{i}]") for i, item in enumerate(items))


def check_syscall(value: object, path: str) -> str:
    """Return `value` if it is a syscall name: ``[a-z0-9_]+``, at most 64 characters.

    Raises PolicyError naming `path` otherwise.
    """
    if not isinstance(value, str) or len(value) > _MAX_SYSCALL_NAME or _SYSCALL_RE.fullmatch(value) is None:
        raise PolicyError(path, "expected a syscall name of lowercase letters, digits and '_'", value)
    return value


def check_syscalls(value: object, path: str) -> tuple[str, ...]:
    """Return a list of syscall names as a deduplicated tuple; PolicyError names a bad item."""
    items = check_list(value, path, "syscall names")
    return dedupe(check_syscall(item, f"{path}[{i}]") for i, item in enumerate(items))


def check_env_name(value: object, path: str) -> str:
    """Return `value` if it is a valid environment variable name: a non-empty string without '=' or
    NUL.

    Raises PolicyError naming `path` otherwise.
    """
    if not isinstance(value, str) or not value or "=" in value or "\0" in value:
        raise PolicyError(
            path, "expected an environment variable name (non-empty, no '=' or NUL byte)", value
        )
    _encodable(value, path, "the name")
    return value


def check_env_value(value: object, path: str) -> str:
    """Return `value` if it is a string usable as an environment value (no NUL byte).

    Raises PolicyError naming `path` otherwise.
    """
    if not isinstance(value, str):
        raise PolicyError(path, "expected a string value", value)
    if "\0" in value:
        raise PolicyError(path, "an environment value must not contain a NUL byte", value)
    _encodable(value, path, "the value")
    return value


def check_env_names(value: object, path: str) -> tuple[str, ...]:
    """Return a list of environment variable names as a deduplicated tuple; PolicyError names a bad
    item.
    """
    items = check_list(value, path, "environment variable names")
    return dedupe(check_env_name(item, f"{path}[{i}]") for i, item in enumerate(items))


def check_markers(value: object, path: str) -> tuple[str, ...]:
    """Return a list of secret markers (non-empty strings) as a deduplicated tuple; PolicyError
    names a bad item.
    """
    items = check_list(value, path, "strings")
    return dedupe(check_name(item, f"{path}[{i}]", "a secret marker") for i, item in enumerate(items))


def cwd() -> str:
    """Return the current directory as an absolute real path.

    Raises PolicyError("workdir") if it cannot be read (for example, it was deleted).
    """
    try:
        return os.path.realpath(os.getcwd())
    except OSError as err:
        where = "workdir"
        raise PolicyError(
            where,
            f"cannot read the current directory ({err.strerror or err}); pass a workdir explicitly",
        ) from err


#: Directories a root caller's sandbox is never given to write, whose links `resolve_trusted` follows for
#: a root caller (/var/run -> /run, /bin -> usr/bin, /usr/bin/python3 -> python3.11, update-alternatives).
#: Exact directories, not trees: a root caller's workspace may well live below one (/usr/src/app, /srv/repo).
_SYSTEM_DIRS = frozenset(
    (
        "/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/etc/alternatives", "/opt",
        "/srv", "/var", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64",
        "/usr/libexec", "/usr/share", "/usr/local", "/usr/local/bin", "/usr/local/lib",
    )
)  # fmt: skip


def _trusted_dir(directory: str, st: os.stat_result) -> bool:
    """Whether no sandbox of this caller could have written `directory` (made a symlink in it): it belongs
    to root and nobody else may write it, and, for a root caller (whose uid writes anything), it is one of
    the system directories a policy does not make writable."""
    if st.st_uid != 0 or st.st_mode & 0o022:
        return False
    return os.geteuid() != 0 or directory in _SYSTEM_DIRS


def resolve_trusted(text: str) -> str:
    """`text` (absolute) with the symlinks resolved that no sandbox could have planted: those in a
    directory only root may write, and for a root caller only in a system directory (/usr, /var, ...:
    /var/run -> /run, /lib -> usr/lib). Any other symlink, and everything after it, is kept as written:
    a sandbox that could write that directory may have made it (`build -> /etc`), so the sandbox's init,
    which never follows a symlink in these paths, refuses it instead (SandboxSetupError). Components that
    do not exist are kept as written. Never raises for the filesystem's sake: what cannot be looked up is
    kept as written."""
    parts = [p for p in os.path.normpath(text).split("/") if p]
    done = "/"
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            done = os.path.dirname(done)
            continue
        candidate = os.path.join(done, name)
        try:
            st = os.lstat(candidate)
            if not stat.S_ISLNK(st.st_mode):
                done = candidate
                continue
            hops += 1
            if hops > 40 or not _trusted_dir(done, os.lstat(done)):
                return os.path.join(candidate, *parts)
            target = os.readlink(candidate)
        except OSError:
            return os.path.join(candidate, *parts)
        if target.startswith("/"):
            done = "/"
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return done


def resolve_workdir(value: object, path: str = "workdir", relative_to: str | None = None) -> str:
    """Return the working directory `value` as an absolute path, with the symlinks resolved that no
    sandbox could have planted (`resolve_trusted`; the current directory is always its real path).

    None means the current directory. ``~`` and ``~/...`` are the caller's home (as in the other paths of a
    policy file: a policy file's ``workdir = "~"`` was a directory named ``~`` beside the file). A relative
    path is resolved against `relative_to`, else the current directory. Raises PolicyError naming `path`
    for values that are not paths (see `check_path`), ``~user`` and a leading ``$`` (`_expand_home`).
    """
    if value is None:
        return cwd()
    text = _expand_home(_path_text(value, path), path, value)
    if not os.path.isabs(text):
        text = os.path.join(relative_to if relative_to is not None else cwd(), text)
    try:
        real = resolve_trusted(text)
    except (OSError, ValueError) as err:
        raise PolicyError(path, f"cannot resolve the directory ({err})", value) from err
    return _normalise(real, path, value)


def check_user_path(value: object, path: str, relative_to: str, *, parent: bool = True) -> str:
    """A path written by a user (a policy file's `[filesystem]` list, a CLI or `override` option) as an
    absolute, lexically normalised path, in one of the forms whose meaning is plain:

    - absolute (``/srv/cache``);
    - ``~`` or ``~/...``: the caller's home directory (``$HOME``, else the password database);
    - relative (``build``, ``./out``): beneath `relative_to` (the workdir); with `parent` False (policy
      files, where the workdir may be far from the file) not starting with ``..``.

    Raises PolicyError naming `path` for ``~user/...`` (another user's home: write it out), a leading
    ``$`` (environment variables are not expanded: ``$HOME/x`` would be ``<workdir>/$HOME/x``), a
    relative path starting with ``..`` (outside the workdir: write it absolute), and a wildcard (``*``,
    ``?``, ``[``) in a path that does not exist under its literal name (globs are not expanded: the path
    would name nothing), besides what `check_path` refuses.
    """
    text = _expand_home(_path_text(value, path), path, value)
    if not parent and not text.startswith("/") and os.path.normpath(text).split("/")[0] == "..":
        reason = "a relative path may not climb out of the workdir ('..'); write it absolute"
        raise PolicyError(path, reason, value)
    result = check_path(text, path, relative_to)
    if _WILDCARD.intersection(text) and not os.path.lexists(result):
        # `deny = ["~/.aws/*", "keys/*.pem"]` named files called `*` and `*.pem`, which do not exist: the
        # policy hid nothing, and said nothing.
        reason = (
            "wildcards ('*', '?', '[') are not expanded, and no file has this literal name; list the paths "
            "themselves (or the directory that holds them)"
        )
        raise PolicyError(path, reason, value)
    return result


_WILDCARD = frozenset("*?[")


def _expand_home(text: str, path: str, value: object) -> str:
    """`text` with a leading ``~`` or ``~/`` made the caller's home directory. Raises PolicyError naming
    `path` for ``~user/...`` (another user's home: write it out) and a leading ``$`` (environment variables
    are not expanded: ``$HOME/x`` would silently be a directory named ``$HOME`` beneath the workdir)."""
    if text == "~" or text.startswith("~/"):
        home = os.path.expanduser("~")
        if not os.path.isabs(home) or home == "/":
            raise PolicyError(path, "'~' has no home directory to expand to here; write the path out", value)
        return home + text[1:]
    if text.startswith("~"):
        raise PolicyError(path, "only '~' and '~/...' (your home) are expanded; write other homes out", value)
    if text.startswith("$"):
        raise PolicyError(path, "environment variables are not expanded in paths; write the path out", value)
    return text


def check_user_paths(value: object, path: str, relative_to: str, *, parent: bool = True) -> tuple[str, ...]:
    """A list of user-written paths (see `check_user_path`), without repeats; errors name ``path[i]``."""
    items = check_list(value, path, "paths")
    return dedupe(
        check_user_path(item, f"{path}[{i}]", relative_to, parent=parent) for i, item in enumerate(items)
    )


def check_table(value: object, path: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """`value` as a mapping with only `keys`.

    Raises PolicyError naming the unknown key and listing `keys`, or naming `path` if `value` is not
    a mapping.
    """
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"expected a table with keys: {', '.join(keys)}", value)
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(path, f"keys must be strings; valid keys: {', '.join(keys)}", key)
        if key not in keys:
            where = f"{path}.{key}" if path else key
            raise PolicyError(where, f"unknown key; valid keys: {', '.join(keys)}", key)
    return value
