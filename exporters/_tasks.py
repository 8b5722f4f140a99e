"""Background tasks tied to an `async with` block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio


@asynccontextmanager
async def background(*tasks: Callable[[], Coroutine[Any, Any, object]]) -> AsyncIterator[None]:
    """Run `tasks` while the body runs; cancel them and wait for them when it ends.

    The body's own exception propagates as itself, not wrapped in the ExceptionGroup an anyio task group
    would put around it (callers should be able to `except` what they raised); a task's own failure
    propagates as a group. On cancellation the tasks are cancelled with the body.
    """
    body_exc: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(task)
            try:
                yield
            except BaseException as exc:
                body_exc = exc
                raise
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is body_exc:
            raise body_exc from body_exc.__cause__
        raise
