"""corral's engine: the Supervisor, its children and results, and the errors it raises.

Note: the import name `supervisor` is also used by supervisord (`pip install supervisor`); the two cannot be
installed in the same environment.
"""

from policies import CorralError, PolicyError
from supervisor._child import Child, Result, Violation
from supervisor._errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    SandboxSetupError,
    SpawnError,
    SupervisorClosedError,
)
from supervisor._monitor import ChildStats, Rule, rss_above
from supervisor._supervisor import DEVNULL, PIPE, Event, Supervisor
from supervisor.sandbox.probe import Feature, KernelCaps

__all__ = [
    "DEVNULL",
    "PIPE",
    "Child",
    "ChildStats",
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CorralError",
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
    "Violation",
    "rss_above",
]
