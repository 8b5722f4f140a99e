"""The environment a child receives: the caller's, minus secrets, plus what the policy sets.

Pure functions: the caller passes its environment in (normally `os.environ`); nothing here reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policies._model import DEFAULT_SECRET_MARKERS, Policy

__all__ = ["filter_environment", "is_secret_name"]


def is_secret_name(name: str, markers: Iterable[str] = DEFAULT_SECRET_MARKERS) -> bool:
    """Return True if `name` contains any of `markers`, compared case-insensitively (``api_key`` has
    KEY).

    Raises nothing; empty markers are ignored.
    """
    folded = name.casefold()
    return any(marker and marker.casefold() in folded for marker in markers)


def _valid(name: str, value: str) -> bool:
    # execve cannot carry these; a caller's mapping (not os.environ) might hold them.
    return bool(name) and "=" not in name and "\0" not in name and "\0" not in value


def filter_environment(policy: Policy, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the environment for a child run under `policy`, given the caller's `environ`.

    Start from `environ` (or from nothing if ``environment.clear``); drop every name containing a
    secret marker (case-insensitive) unless it is in ``environment.passthrough``; with ``clear``,
    passthrough names are still copied from `environ` when present; then apply ``environment.set``,
    which always wins. Entries of `environ` that no process could receive (empty names, '=' or NUL
    in a name, NUL in a value) are dropped. Raises nothing; `environ` is not modified.
    """
    rules = policy.environment
    passthrough = set(rules.passthrough)
    if rules.clear:
        env = {name: environ[name] for name in rules.passthrough if name in environ}
    else:
        env = {
            name: value
            for name, value in environ.items()
            if name in passthrough or not is_secret_name(name, rules.secret_markers)
        }
    env = {name: value for name, value in env.items() if _valid(name, value)}
    env.update(rules.set)
    return env
