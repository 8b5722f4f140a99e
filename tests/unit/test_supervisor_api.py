"""The public surface of `supervisor` (pinned: a change to it is deliberate) and the constructor's
validation, which needs no kernel: a Supervisor validates its arguments before anything starts."""

from __future__ import annotations

import math

import pytest

import supervisor
from supervisor import Supervisor


def test_all_is_pinned() -> None:
    assert supervisor.__all__ == [
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
    for name in supervisor.__all__:
        assert getattr(supervisor, name) is not None
    assert issubclass(supervisor.CommandFailedError, supervisor.CorralError)
    assert issubclass(supervisor.SupervisorRunningError, supervisor.CorralError)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be >= 1"),
        ({"max_concurrency": -3}, ValueError, "max_concurrency must be >= 1"),
        ({"max_concurrency": 2.5}, TypeError, "max_concurrency must be an int"),
        ({"max_concurrency": True}, TypeError, "max_concurrency must be an int"),
        ({"max_concurrency": "8"}, TypeError, "max_concurrency must be an int"),
        ({"prefork": -1}, ValueError, "prefork must be >= 0"),
        ({"prefork": None}, TypeError, "prefork must be an int"),
        ({"capture_limit": -1}, ValueError, "capture_limit must be >= 0"),
        ({"monitor_interval": 0}, ValueError, "monitor_interval"),
        ({"monitor_interval": -0.5}, ValueError, "monitor_interval"),
        ({"monitor_interval": math.nan}, ValueError, "monitor_interval"),
        ({"monitor_interval": math.inf}, ValueError, "monitor_interval"),
        ({"monitor_interval": "1"}, ValueError, "monitor_interval"),
        ({"cgroups": "yes"}, TypeError, "cgroups must be True or False"),
        ({"cgroup_delegate": 5}, TypeError, "cgroup_delegate"),
    ],
)
def test_constructor_arguments_are_validated(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Supervisor(**kwargs)  # type: ignore[arg-type]


def test_valid_constructor_arguments() -> None:
    sup = Supervisor(1, capture_limit=0, prefork=0, monitor_interval=0.01, cgroups=False)
    assert (sup.max_concurrency, sup.capture_limit, sup.prefork) == (1, 0, 0)
