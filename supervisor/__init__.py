"""corral's engine: the Supervisor, its children and results, and the errors it raises.

Note: the import name `supervisor` is also used by supervisord (`pip install supervisor`); the two cannot be
installed in the same environment.

The names below are loaded at their first use (PEP 562): the fork server imports supervisor.forkserver.server
and the mechanism modules under `python -I -S`, and must not load the API (anyio, the Supervisor) with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policies import CorralError, PolicyError
    from supervisor._child import Child
    from supervisor._errors import (
        CommandFailedError,
        CommandNotExecutableError,
        CommandNotFoundError,
        SandboxSetupError,
        SpawnError,
        SupervisorClosedError,
        SupervisorRunningError,
    )
    from supervisor._rules import Approver, CommandForbiddenError
    from supervisor._spawnfds import DEVNULL, PIPE
    from supervisor._supervisor import Event, Supervisor
    from supervisor._types import ChildStats, Denial, Result, Rule, Violation, rss_above
    from supervisor.sandbox.probe import Feature, KernelCaps

#: Where each public name lives.
_HOME = {
    "CorralError": "policies",
    "PolicyError": "policies",
    "Child": "supervisor._child",
    "Result": "supervisor._types",
    "Denial": "supervisor._types",
    "Violation": "supervisor._types",
    "CommandFailedError": "supervisor._errors",
    "CommandNotExecutableError": "supervisor._errors",
    "CommandNotFoundError": "supervisor._errors",
    "SandboxSetupError": "supervisor._errors",
    "SpawnError": "supervisor._errors",
    "SupervisorClosedError": "supervisor._errors",
    "SupervisorRunningError": "supervisor._errors",
    "Approver": "supervisor._rules",
    "CommandForbiddenError": "supervisor._rules",
    "ChildStats": "supervisor._types",
    "Rule": "supervisor._types",
    "rss_above": "supervisor._types",
    "DEVNULL": "supervisor._spawnfds",
    "PIPE": "supervisor._spawnfds",
    "Event": "supervisor._supervisor",
    "Supervisor": "supervisor._supervisor",
    "Feature": "supervisor.sandbox.probe",
    "KernelCaps": "supervisor.sandbox.probe",
}


if not TYPE_CHECKING:  # for mypy the imports above say what each name is

    def __getattr__(name: str) -> object:
        """A public name, imported from its module at first use. Raises AttributeError for any other."""
        home = _HOME.get(name)
        if home is None:
            msg = f"module 'supervisor' has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


__all__ = [
    "DEVNULL",
    "PIPE",
    "Approver",
    "Child",
    "ChildStats",
    "CommandFailedError",
    "CommandForbiddenError",
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CorralError",
    "Denial",
    "Event",
    "Feature",
    "KernelCaps",
    "PolicyError",
    "Result",
    "Rule",
    "SandboxSetupError",
    "SpawnError",
    "Supervisor",
    "SupervisorClosedError",
    "SupervisorRunningError",
    "Violation",
    "rss_above",
]
