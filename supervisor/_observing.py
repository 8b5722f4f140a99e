"""A supervisor's use of the syscall-exit observer (supervisor/_observer.py): started once with the
supervisor, a Watch per child, the child's observed refusals turned into Denials (told as they come, their
repeats counted at the exit), and `denials_unobservable` said honestly where it cannot run.

The layers it reports: `mounts` (EROFS from the read-only view), `landlock` (EACCES/EXDEV counted by
Landlock; execute, read, write, bind, connect) and `rlimit` (EMFILE at RLIMIT_NOFILE). docs/denials.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from supervisor import _observer
from supervisor._denials import observed_denial
from supervisor._observer import Launch, Observed, Observer, Watch
from supervisor._types import Denial

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from supervisor._child import Child

log = logging.getLogger("corral")

#: False: no observer is started (benchmarks compare with and without it in one run).
ENABLED = True

#: The layers the observer reports, by the first words of the reason `_denials.unobservable` gives.
_LAYERS = ("landlock", "mounts", "rlimit")


class Observing:
    """The observer of one supervisor, or why there is none (`reason`)."""

    def __init__(self) -> None:
        self.observer: Observer | None = None
        self.reason = "not started"
        self._watches: dict[int, tuple[Watch, list[int]]] = {}  # id(child) -> its watch, denial indices
        #: Why Landlock's EACCES cannot be told from a file mode's here ("": it can).
        self._landlock_why = ""
        #: The loader `launch` started, until `start` waits for it.
        self._launch: Launch | None = None

    def launch(self, enabled: bool = True) -> None:
        """Start the observer's loader now, from the event loop's thread, so that its ~0.2 s of loading
        overlaps the rest of the supervisor's start; `start` waits for it. `enabled` False
        (Supervisor(observe_denials=False)) starts nothing. Never raises for a missing mechanism."""
        if not enabled:
            why: str | None = "turned off (Supervisor(observe_denials=False))"
        else:
            why = _observer.unavailable() if ENABLED else "turned off (supervisor._observing.ENABLED)"
        if why is not None:
            self.reason = why
            return
        try:
            self._launch = Observer.launch()
        except OSError as err:
            self.reason = f"the loader could not be started: {err.strerror or err}"

    def abort(self) -> None:
        """End a launched loader that `start` will not wait for (the supervisor failed to start)."""
        if self._launch is not None:
            self._launch.abort()
            self._launch = None

    async def start(self, tg: TaskGroup, spawner: int | None) -> None:
        """Wait for the loader `launch` started and watch the fork server `spawner`'s sandboxes, or note
        why not. Never raises for a missing mechanism: everything else works without it. On
        cancellation the loader is killed."""
        launch, self._launch = self._launch, None
        if launch is None:
            return
        if spawner is None:
            launch.abort()
            self.reason = "no fork server"
            return
        try:
            obs = await launch.ready()
        except (OSError, TimeoutError) as err:
            self.reason = (err.strerror if isinstance(err, OSError) else None) or "the loader did not answer"
            log.info("denials of the mount view, Landlock and RLIMIT_NOFILE not reported: %s", self.reason)
            return
        obs.spawner(spawner)
        if not obs.landlock_counted:
            self._landlock_why = "this kernel's Landlock keeps no denial count (Linux < 6.15)"
        elif not obs.landlock_placed:
            self._landlock_why = "Landlock is not the first LSM with a cred blob (lsm=)"
        self.observer = obs
        tg.start_soon(obs.run)

    def spawner(self, pid: int) -> None:
        """A fork server started again (`pid`): watch the sandboxes it makes (before it makes any)."""
        if self.observer is not None and self.observer.alive:
            self.observer.spawner(pid)

    def attach(
        self, child: Child, init_pid: int, note: Callable[[Denial], None], spawner: int | None
    ) -> None:
        """Watch `child`'s sandbox (its init `init_pid`): each new refusal becomes a Denial in its log,
        told through `note` (the `denied` event). Updates the child's `unobservable` either way.
        `spawner`: the fork server now (a restarted one is registered for the sandboxes it makes next)."""
        obs = self.observer
        if obs is not None and not obs.alive:
            self.reason = "the observer's loader ended (its programs are detached)"
            log.warning("denial observer: %s", self.reason)
            obs.close()
            self.observer = obs = None
        if obs is not None and spawner is not None:
            obs.spawner(spawner)
        watch = obs.watch(init_pid) if obs is not None else None
        if watch is None:
            why = self.reason if obs is None else "the sandbox has no pid namespace of its own to scope it"
            child.unobservable = _said(child.unobservable, why)
            return
        assert obs is not None
        indices: list[int] = []
        self._watches[id(child)] = (watch, indices)
        if child.policy is not None and child.policy.filesystem.confine and child.policy.filesystem.deny:
            obs.hide(watch, child.policy.filesystem.deny)
        keep: tuple[str, ...] = ()
        if self._landlock_why:
            child.unobservable = _said(child.unobservable, self._landlock_why, only=("landlock",))
            keep = ("landlock",)
        child.unobservable = tuple(u for u in child.unobservable if u[0] not in _LAYERS or u[0] in keep)

        seen: dict[tuple[str, str, str], int] = {}

        def on_event(ev: Observed) -> None:
            # Calls that differ only in the syscall (open and unlink of one path) are one Denial.
            denial = observed_denial(ev, child.policy)
            key = (denial.layer, denial.operation, denial.target) if denial is not None else None
            if key is not None and key in seen:
                indices.append(seen[key])
                return
            if denial is None or not child.denials.add(denial):
                indices.append(-1)
                return
            indices.append(len(child.denials.items) - 1)
            assert key is not None
            seen[key] = indices[-1]
            note(denial)

        for _h, ev in list(watch.events):  # arrived before the child was made
            on_event(ev)
        watch.on_event = on_event

    async def settle(self, child: Child) -> None:
        """At the child's exit: wait for its refusals still on their way, and fold their repeat counts
        (and the ones dropped) into its log. The caller shields it."""
        entry = self._watches.pop(id(child), None)
        if entry is None or self.observer is None:
            return
        watch, indices = entry
        found, dropped = await self.observer.settle(watch)
        counts: dict[int, int] = {}
        for index, ev in zip(indices, found, strict=False):
            if index < 0:
                dropped += ev.count
            else:
                counts[index] = counts.get(index, 0) + ev.count
        for index, count in counts.items():
            d = child.denials.items[index]
            child.denials.items[index] = Denial(d.layer, d.operation, d.target, d.pid, count, d.hint)
        child.denials.dropped += dropped
        child.denials.dropped_observed += dropped

    @property
    def pid(self) -> int | None:
        """The loader's pid (a child of the supervisor, like the fork server), or None."""
        return self.observer.pid if self.observer is not None else None

    def close(self) -> None:
        """Stop the observer (its programs are detached by the kernel), or a loader never waited for."""
        self.abort()
        if self.observer is not None:
            self.observer.close()
            self.observer = None


def _said(
    unobservable: tuple[tuple[str, str], ...], why: str, only: tuple[str, ...] = _LAYERS
) -> tuple[tuple[str, str], ...]:
    """`unobservable` with the observer's layers' reasons replaced by `why`."""
    return tuple(
        (layer, f"not reported: {why}") if layer in only else (layer, r) for layer, r in unobservable
    )
