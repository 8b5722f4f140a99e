"""The direct call channel: `run` calls go from a client to a node's actor over one TCP connection per
(client, node), not as Ray actor tasks.

Why: a Ray actor task crosses six threads and two processes' schedulers each way (the driver's submission
and io threads, the actor's gRPC thread, its task thread, the hop onto the actor's event loop and back, the
reply's way back to the driver's loop); on a busy machine each wake-up costs a scheduler slice, and Ray's
submission and serialisation cost CPU on both sides. A frame on a socket that the node's event loop reads
itself, and whose reply the client's event loop reads itself, crosses two wake-ups. Ray stays the control
plane: it places the actors, hands out each channel's address and secret (`NodeInfo.channel`, returned by
the actor's `open()` through Ray), reports nodes and actors dead, and carries every call other than `run`.

Trust: the node listens on its Ray address only and talks to a connection only after it has sent the
actor's 32-byte secret (compared in constant time, before anything is unpickled). Frames are pickles, as
Ray's own messages between its workers are: the channel is as trusted as the cluster's network is for Ray.

Frames: an 8-byte big-endian length, then a pickle (ray.cloudpickle where plain pickle cannot: a session's
policy may be a function). Client to node: (RUN, call id, cmd, policy, session, kwargs, decision) and
(CANCEL, call id). Node to client: (call id, (Result or Failure, NodeLoad)), or (call id, None) for a call
that ended cancelled (its child killed and reaped). A connection that closes cancels the calls it carried
on the node (their children are killed and reaped): a client that is gone waits for nothing.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

#: The secret's length, and the largest frame either side accepts (a call's `input` travels in its frame).
TOKEN_BYTES = 32
MAX_FRAME = 1 << 30

RUN = 0
CANCEL = 1

_HEADER = struct.Struct("!Q")


class ChannelClosedError(Exception):
    """The connection ended (or could not be used) while calls were waiting on it: `reason` says why."""


def encode(message: object) -> bytes:
    """A frame: the length, then the pickle."""
    try:
        body = pickle.dumps(message, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):  # a function: a session's policy
        import ray.cloudpickle

        body = ray.cloudpickle.dumps(message, protocol=5)
    return _HEADER.pack(len(body)) + body


async def receive(stream: BufferedByteReceiveStream) -> Any:
    """The next frame's message. Raises anyio.IncompleteRead or EndOfStream when the peer is gone, ValueError
    for a frame over MAX_FRAME."""
    (size,) = _HEADER.unpack(await stream.receive_exactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes (at most {MAX_FRAME})")
    return pickle.loads(await stream.receive_exactly(size))


class Channel:
    """A client's connection to one node's channel: calls multiplexed by id, one reader task (in the
    client's task group) handing each reply to its waiter."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._send_lock = anyio.Lock()
        self._next = 0
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self.closed: str | None = None

    @classmethod
    async def connect(cls, address: str, port: int, token: bytes) -> Channel:
        """Connect and authenticate. Raises OSError when the node cannot be reached (bound it with a
        timeout)."""
        stream = await anyio.connect_tcp(address, port)
        try:
            await stream.send(token)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return cls(stream)

    async def read_replies(self) -> None:
        """Hand each reply to its waiter until the connection ends; then every waiter is woken with the
        channel closed (`closed` says why)."""
        reason = "the node closed the connection"
        try:
            while True:
                cid, value = await receive(self._reader)
                waiter = self._waiting.pop(cid, None)
                if waiter is not None:
                    waiter[1].append(value)
                    waiter[0].set()
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            pass
        except (OSError, ValueError, pickle.UnpicklingError) as err:
            reason = f"the connection failed: {err!r}"
        finally:
            self.fail(reason)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    def fail(self, reason: str) -> None:
        """Close the channel for its callers: every waiting call wakes and raises ChannelClosedError."""
        if self.closed is None:
            self.closed = reason
        waiting, self._waiting = self._waiting, {}
        for event, _box in waiting.values():
            event.set()

    async def _send(self, message: object) -> None:
        frame = encode(message)
        async with self._send_lock:
            await self._stream.send(frame)

    async def call(self, request: tuple[Any, ...], cancel_grace: float) -> Any:
        """Send a RUN request (without its id) and return the node's reply: (reply, load), or None when the
        call ended cancelled. Raises ChannelClosedError when the connection ends first. On cancellation a
        CANCEL is sent and the reply (the node's word that the call's child was killed and reaped) awaited,
        shielded, for up to `cancel_grace` seconds before the cancellation goes on."""
        if self.closed is not None:
            raise ChannelClosedError(self.closed)
        self._next += 1
        cid = self._next
        event = anyio.Event()
        box: list[Any] = []
        self._waiting[cid] = (event, box)
        try:
            with anyio.CancelScope(shield=True):  # never half a frame on the connection
                await self._send((RUN, cid, *request))
            await event.wait()
        except anyio.get_cancelled_exc_class():
            shield = anyio.CancelScope(shield=True)
            with shield, anyio.move_on_after(cancel_grace), contextlib.suppress(Exception):
                await self._send((CANCEL, cid))
                await event.wait()
            self._waiting.pop(cid, None)
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as err:
            self._waiting.pop(cid, None)
            self.fail(f"sending failed: {err!r}")
            raise ChannelClosedError(self.closed) from err
        if not box:
            raise ChannelClosedError(self.closed or "closed")
        return box[0]

    async def aclose(self) -> None:
        self.fail("the client closed it")
        await anyio.aclose_forcefully(self._stream)
