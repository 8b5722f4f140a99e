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
from supervisor._supervisor import DEVNULL, PIPE, Supervisor
from supervisor.sandbox.probe import Feature, KernelCaps

__all__ = [
    "DEVNULL",
    "PIPE",
    "Child",
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CorralError",
    "Feature",
    "KernelCaps",
    "PolicyError",
    "Result",
    "SandboxSetupError",
    "SpawnError",
    "Supervisor",
    "SupervisorClosedError",
    "Violation",
]
