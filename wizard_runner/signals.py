"""Stop signals: SIGTERM, SIGINT and SIGHUP become one recorded stop, acted on where it is safe.

A process has one stop. With wizard-runner's handlers installed (the CLI does it on its first
line, the daemon installs its own), the first stop signal raises RunInterrupted at once where
that is safe, and is held back in a deferred section (a run's bookkeeping, the file
replacements, the live follow-ups) until the section ends, an interruptible part of the run
starts, or the run settles its outcome. After one stop has been raised, or once the outcome is
settled (the result is about to be written), further stop signals are ignored: nothing can cut
the clean-up short, and a written result is never contradicted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from wizard_runner.errors import RunInterrupted

TYPE_CHECKING = False  # not typing's: this module loads before the stop handlers exist
if TYPE_CHECKING:
    from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stops:
    """The process's stop: how many deferred sections are open, the request held back, and
    whether the stop is over (raised once already, or the outcome settled); and the pipe the
    kernel-level handler writes a byte into for every signal, which event loops poll."""

    depth = 0
    pending: int | None = None
    over = False
    wakeup: tuple[int, int] | None = None


def _reset() -> None:
    _Stops.depth, _Stops.pending, _Stops.over = 0, None, False


def arm_stops() -> None:
    """A run begins (the daemon serves many): a stop from now on is this run's."""
    if _handlers_defer():
        _reset()


def _raise(signum: int) -> None:
    _Stops.over = True
    _Stops.pending = None
    raise RunInterrupted(signum)


def request_stop(signum: int) -> None:
    """What a stop handler does: raise RunInterrupted, or hold it for the end of a deferred
    section; nothing once the stop is over. Handlers built on it are marked `defers_stops`."""
    if _Stops.over:
        return
    if _Stops.depth:
        if _Stops.pending is None:
            _Stops.pending = signum
        return
    _raise(signum)


def pending_stop() -> int | None:
    """The stop signal held back right now, if any (an event loop acts on it)."""
    return _Stops.pending


def take_stop() -> int | None:
    """Act on the stop held back: it is over (later signals are ignored); its signal."""
    held = _Stops.pending
    if held is not None:
        _Stops.over = True
        _Stops.pending = None
    return held


def wakeup_fileno() -> int | None:
    """A descriptor that becomes readable when a signal arrives (with wizard-runner's handlers
    installed), for an event loop to poll; None when embedded."""
    return _Stops.wakeup[0] if _Stops.wakeup is not None and _handlers_defer() else None


def drain_wakeup() -> None:
    """Empty the wake-up pipe once its bytes have woken the loop."""
    if _Stops.wakeup is not None:
        with contextlib.suppress(BlockingIOError):
            while os.read(_Stops.wakeup[0], 4096):
                pass


def settle_stops() -> int | None:
    """The run's outcome is decided: later stop signals are ignored. Returns the stop that was
    held back until now (its result must say interrupted), or None."""
    held = _Stops.pending
    _Stops.over = True
    _Stops.pending = None
    return held


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    request_stop(signum)


_raise_interrupted.defers_stops = True  # type: ignore[attr-defined]


def install_handler(handler: Callable[[int, FrameType | None], None]) -> None:
    """Install `handler` (marked `defers_stops`) for the stop signals, with the wake-up pipe
    that lets an event loop see a signal at once. Starts a fresh stop."""
    _reset()
    if _Stops.wakeup is None:
        _Stops.wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(_Stops.wakeup[1], warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def install_stop_handlers() -> None:
    """Turn SIGTERM, SIGINT and SIGHUP into RunInterrupted (the CLI does this; the API does
    not). Starts a fresh stop: nothing held, nothing over."""
    install_handler(_raise_interrupted)


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
    """Hold stop signals back while the block runs, then deliver them to the usual handler.

    With wizard-runner's own handlers this is a counter, and a request held back is raised
    when the outermost section ends. With others (or none) the handlers are swapped for the
    block, which only the main thread can do: elsewhere the block runs unguarded. With
    `foreign=False` other handlers are left alone (hot paths, where swapping would cost more
    than what it guards, and a whole run, which an embedding application may stop as it likes).
    """
    if _handlers_defer():
        _Stops.depth += 1
        try:
            yield
        finally:
            _Stops.depth -= 1
            if not _Stops.depth and _Stops.pending is not None and not _Stops.over:
                _raise(_Stops.pending)
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
def interruptible() -> Iterator[None]:
    """Inside deferred sections, a part of the run a stop may cut at once (checking files with
    the Debian tools, the scripts step): a request held back so far is raised on entry."""
    if not _handlers_defer():
        yield
        return
    depth, _Stops.depth = _Stops.depth, 0
    try:
        if _Stops.pending is not None and not _Stops.over:
            _raise(_Stops.pending)
        yield
    finally:
        _Stops.depth = depth


@contextmanager
def ignored_stop_signals() -> Iterator[None]:
    """Drop stop signals while the block runs: used while already stopping, so that a second
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
