"""The connection's life (sans-IO): its states, the table of the moves
between them, and the verdict on the end of the socket.

::

            stop_tls()              their close_notify (pop)
    OPEN ---------------> STOP_PENDING ----------------------> OPEN
     |  their close_notify                 stop_tls() (pop at once)
     +--------------------> PEER_CLOSED -----------------------> OPEN
     |                                  (a pop may uncover another
     |                                   PEER_CLOSED layer, or EOF)
     |  close() (any of the above)
     +--------------------> CLOSING ----> CLOSED   (socket closing)
    abort(), connection lost: CLOSED;  a failure: BROKEN (terminal)

The chain (:mod:`._chain`) holds the state and moves it, only through
:func:`check_move`.  Whether the end of the socket was clean or a
truncation is decided in one place, :func:`verdict`, for an EOF and for a
lost connection alike.

Imports: :mod:`._layer` (layer states), :mod:`.errors` - never asyncio.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ._layer import LayerState
from .errors import HandshakeError, OnionError, TruncatedError

if TYPE_CHECKING:
    from ._layer import Layer

__all__ = ["ENDED", "FINISHING", "PEER_DONE", "ConnState", "check_move", "verdict"]


class ConnState(enum.Enum):
    """Where the connection is in its life (see the diagram above)."""

    # Hashed by identity, in C, like ``LayerState`` (``state in FINISHING``
    # runs several times per record).
    __hash__ = object.__hash__

    OPEN = "open"
    STOP_PENDING = "stop pending"  # our close_notify on the innermost layer; theirs awaited
    PEER_CLOSED = "peer closed"  # their close_notify on the innermost layer; the app decides
    CLOSING = "closing"  # close(): close_notify on every layer, then the socket
    CLOSED = "closed"  # the socket is closed or going (close, abort, lost)
    BROKEN = "broken"  # failed for good (``Chain.error`` says why)


_C = ConnState
_MOVES: dict[ConnState, frozenset[ConnState]] = {
    _C.OPEN: frozenset({_C.STOP_PENDING, _C.PEER_CLOSED, _C.CLOSING, _C.CLOSED, _C.BROKEN}),
    _C.STOP_PENDING: frozenset({_C.OPEN, _C.PEER_CLOSED, _C.CLOSING, _C.CLOSED, _C.BROKEN}),
    _C.PEER_CLOSED: frozenset({_C.OPEN, _C.STOP_PENDING, _C.CLOSING, _C.CLOSED, _C.BROKEN}),
    _C.CLOSING: frozenset({_C.CLOSED, _C.BROKEN}),
    _C.CLOSED: frozenset({_C.BROKEN}),  # a close that timed out
    _C.BROKEN: frozenset(),
}
#: States in which nothing more is delivered to the application, and it may
#: neither write nor change layers.
FINISHING = frozenset({_C.CLOSING, _C.CLOSED, _C.BROKEN})
ENDED = frozenset({_C.CLOSED, _C.BROKEN})
#: Layer states in which the peer's close_notify has been read.
PEER_DONE = frozenset({LayerState.PEER_CLOSED, LayerState.CLOSED})


def check_move(old: ConnState, new: ConnState) -> None:
    """Refuse a move the table does not allow (a bug, not a peer's doing)."""
    if new is not old and new not in _MOVES[old]:
        raise AssertionError(f"connection: illegal move {old.value} -> {new.value}")


def verdict(
    state: ConnState,
    layers: tuple[Layer, ...],
    exc: BaseException | None,
    *,
    peer_eof: bool,
    tls_ended: bool,
) -> BaseException | None:
    """Clean or truncated: what the end of the socket (EOF, or its loss
    with ``exc``) means, given where the connection is (``state``, its
    ``layers``, whether the socket's EOF came, whether the peer had ended
    TLS on every layer since anything last moved).  The one place that
    decides it."""
    ours = state is ConnState.CLOSING or state is ConnState.CLOSED
    if ours and (exc is None or peer_eof):
        return None
    if not layers:
        if exc is not None and tls_ended:
            # The peer ended TLS on every layer, then dropped its socket
            # before our answering close_notify got there.
            return None
        return exc  # plaintext: as the socket said it
    for layer in reversed(layers):
        lstate = layer.state
        if lstate in PEER_DONE or lstate is LayerState.BROKEN:
            continue
        how = (
            "the connection ended"
            if exc is None
            else f"the connection was lost ({type(exc).__name__}: {exc})"
        )
        err: OnionError
        if lstate is LayerState.HANDSHAKING:
            who = "the peer closed the connection" if exc is None else how
            err = HandshakeError(f"{who} during the handshake", depth=layer.depth)
        elif lstate is LayerState.CLOSING:
            err = TruncatedError(
                f"{how} before the peer answered our close_notify", depth=layer.depth
            )
        else:
            err = TruncatedError(
                f"{how} without the peer's close_notify (truncated; a clean "
                "close sends close_notify first)",
                depth=layer.depth,
            )
        err.__cause__ = exc
        return err
    return None  # the peer closed every layer: a clean end
