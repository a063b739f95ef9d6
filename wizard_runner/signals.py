"""Signal handling: SIGTERM/SIGINT become a recorded stop, deferred during critical sections."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

from wizard_runner.errors import RunInterrupted

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Deferral:
    """How many deferred sections are open, and the stop requests that arrived meanwhile."""

    depth = 0
    pending: list[int] = []  # noqa: RUF012 - one process-wide list, on purpose


def request_stop(signum: int) -> None:
    """What a stop handler does: raise RunInterrupted, or keep it for the end of a deferred
    section. Handlers built on it are marked `defers_stops` so that a deferral costs a counter,
    not four handler swaps (deferred sections wrap every message from the script helper)."""
    if _Deferral.depth:
        _Deferral.pending.append(signum)
        return
    raise RunInterrupted(signum)


def stop_pending() -> bool:
    """Whether a stop request is being held back by a deferred section right now."""
    return bool(_Deferral.pending)


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    request_stop(signum)


_raise_interrupted.defers_stops = True  # type: ignore[attr-defined]


def install_stop_handlers() -> None:
    """Turn SIGTERM and SIGINT into RunInterrupted (the CLI does this; the API does not)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupted)


def _handlers_defer() -> bool:
    # Both handlers are always installed together: one look is enough (this runs per message).
    return getattr(signal.getsignal(signal.SIGTERM), "defers_stops", False) is True


def _swappable() -> bool:
    """Handlers can be swapped and put back: in the main thread, and not installed from C
    (getsignal() gives None for those, and None cannot be reinstalled)."""
    return threading.current_thread() is threading.main_thread() and all(
        signal.getsignal(signum) is not None for signum in STOP_SIGNALS)


@contextmanager
def deferred_stop_signals(*, foreign: bool = True) -> Iterator[None]:
    """Hold SIGTERM/SIGINT back while the block runs, then deliver them to the usual handler.

    Used around the file replacements so that a stop request never lands between two renames,
    and around each message from the script helper so that none is lost. With wizard-runner's
    own handlers this is a counter; with others (or none) the handlers are swapped for the
    block, which only the main thread can do: elsewhere the block runs unguarded. With
    `foreign=False` other handlers are left alone (hot paths, where swapping would cost more
    than what it guards: an embedding application's own handler interrupting a wait).
    """
    if _handlers_defer():
        _Deferral.depth += 1
        try:
            yield
        finally:
            _Deferral.depth -= 1  # first: a signal from here on raises by itself
            if not _Deferral.depth and _Deferral.pending:
                signum = _Deferral.pending[0]
                _Deferral.pending.clear()
                raise RunInterrupted(signum)
        return
    if not foreign or not _swappable():
        yield
        return
    received: list[int] = []  # signal numbers, in arrival order

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for pending in dict.fromkeys(received):
            signal.raise_signal(pending)


@contextmanager
def ignored_stop_signals() -> Iterator[None]:
    """Drop SIGTERM/SIGINT while the block runs: used while already stopping, so that a second
    Ctrl-C cannot cut the clean-up of the first one short."""
    if not _swappable():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
