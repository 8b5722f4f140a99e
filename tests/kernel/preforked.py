"""Every request served by a pre-forked sandbox: the attack suites run once more this way (Makefile,
CORRAL_TEST_PREFORKED=1), so that sandboxes confined ahead of their command are attacked too."""

from __future__ import annotations

import contextlib

from policies import Policy
from supervisor import Supervisor
from supervisor._plan import CompiledPolicy
from supervisor.forkserver.prefork import Stub


def always_preforked(sup: Supervisor) -> None:
    """Make `sup` serve every request that could use a pre-forked sandbox with one: a ready one, else one
    built for it then and there (Prefork.build), which must pass the same freshness check (Prefork.fresh).
    A build that fails leaves the request to its own spawn, which reports the error."""
    pool = sup._prefork
    assert pool is not None
    take = pool.take

    async def take_or_build(policy: Policy, compiled: CompiledPolicy, cwd: str) -> Stub | None:
        stub = await take(policy, compiled, cwd)
        if stub is None and not pool._closed:
            with contextlib.suppress(Exception):
                stub = await pool.build(policy, compiled, cwd)
            if stub is not None:
                stub = await pool.fresh(stub, compiled, cwd)
        return stub

    pool.take = take_or_build  # type: ignore[method-assign]
