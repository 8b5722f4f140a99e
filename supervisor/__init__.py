"""Supervisor: the engine (spawn path, isolation, cgroups, monitoring, enforcement, API)."""
