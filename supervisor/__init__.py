"""corral's engine: the Supervisor, its children and results, and the errors it raises.

Note: the import name `supervisor` is also used by supervisord (`pip install supervisor`); the two cannot be
installed in the same environment.
"""

from policies import CorralError, PolicyError
from supervisor._child import Child, Result, Violation
from supervisor._errors import (
    CommandFailedError,
    CommandNotExecutableError,
    CommandNotFoundError,
    SandboxSetupError,
    SpawnError,
    SupervisorClosedError,
    SupervisorRunningError,
)
from supervisor._monitor import ChildStats, Rule, rss_above
from supervisor._supervisor import DEVNULL, PIPE, Event, Supervisor
from supervisor.sandbox.probe import Feature, KernelCaps

__all__ = [
    "DEVNULL",
    "PIPE",
    "Child",
    "ChildStats",
    "CommandFailedError",
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
    "SupervisorRunningError",
    "Violation",
    "rss_above",
]
