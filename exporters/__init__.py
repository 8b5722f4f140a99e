"""Exporters: metrics out of a running supervisor. They attach to a running Supervisor and read its public
state (children, their last samples, totals, lifecycle events); the supervisor knows nothing of them.

    async with Supervisor() as sup, serve_metrics(sup, port=9464):
        ...
"""

from exporters.prometheus import (
    DURATION_BUCKETS,
    METRICS,
    SPAWN_LATENCY_BUCKETS,
    MetricSpec,
    MetricsServer,
    SupervisorCollector,
    attach_metrics,
    serve_metrics,
)

__all__ = [
    "DURATION_BUCKETS",
    "METRICS",
    "SPAWN_LATENCY_BUCKETS",
    "MetricSpec",
    "MetricsServer",
    "SupervisorCollector",
    "attach_metrics",
    "serve_metrics",
]
