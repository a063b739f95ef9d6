"""Stop signals: SIGTERM, SIGINT and SIGHUP become one recorded stop, acted on where it is safe.

With wizard-runner's handlers (the CLI installs them on its first line, the daemon its own), a
stop raises RunInterrupted at once outside a run. Inside one it is held: the scripts step's
event loop sees it through the wake-up pipe and stops the script there; the system step lets
it cut the file checks but never the replacements nor the live follow-ups; the end of the run
settles it. Once raised or settled, later stop signals are ignored, so nothing cuts the
clean-up short and a written result is never contradicted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from wizard_runner.errors import RunInterrupted

TYPE_CHECKING = False  # not typing's: this module loads before the stop handlers exist
if TYPE_CHECKING:
    from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
Handler = Callable[[int, FrameType | None], None]


class _Stop:
    """The process's stop: open hold sections, the signal held, whether it is over; and the
    pipe the interpreter writes a byte into for each signal, which event loops poll."""

    depth = 0
    held: int | None = None
    over = False
    swallowed: int | None = None  # raised where Python could only print it (a finalizer)
    wakeup: tuple[int, int] | None = None


def _ours() -> bool:
    return getattr(signal.getsignal(signal.SIGTERM), "defers_stops", False) is True


def _raise(signum: int) -> None:
    _Stop.over, _Stop.held = True, None
    raise RunInterrupted(signum)


def request_stop(signum: int) -> None:
    """What a stop handler does: raise RunInterrupted, or hold it while a section is open;
    nothing once the stop is over."""
    if _Stop.over:
        return
    if not _Stop.depth:
        _raise(signum)
    if _Stop.held is None:
        _Stop.held = signum


def _handle(signum: int, _frame: FrameType | None) -> None:
    request_stop(signum)


_handle.defers_stops = True  # type: ignore[attr-defined]


def install_stop_handlers(handler: Handler = _handle) -> None:
    """Install `handler` (marked `defers_stops`) for the stop signals, with the wake-up pipe;
    no section is open, no stop held. Without an argument: the CLI's, which raises
    RunInterrupted. A stop swallowed before (in a finalizer) is kept for `arm_stops`."""
    _Stop.depth, _Stop.held, _Stop.over = 0, None, False
    sys.unraisablehook = _quiet_unraisable
    if _Stop.wakeup is None:
        _Stop.wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(_Stop.wakeup[1], warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def arm_stops() -> None:
    """A run begins (the daemon serves many): a stop from now on is this run's. A stop raised
    before but swallowed on its way (in a finalizer) is raised again here, once."""
    if not _ours():
        return
    swallowed, _Stop.swallowed = _Stop.swallowed, None
    if swallowed is not None:
        raise RunInterrupted(swallowed)
    _Stop.depth, _Stop.held, _Stop.over = 0, None, False


def swallowed_stop() -> int | None:
    """A stop raised where Python could only print it (a finalizer), never acted on."""
    return _Stop.swallowed


def _quiet_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A stop raised where Python can only print it (a finalizer) is kept for the next known
    point (`arm_stops`, the end of the command), not printed as a traceback."""
    if isinstance(unraisable.exc_value, RunInterrupted):
        _Stop.swallowed = unraisable.exc_value.signum
    else:
        sys.__unraisablehook__(unraisable)


def pending_stop() -> int | None:
    """The stop signal held right now, if any (an event loop acts on it)."""
    return _Stop.held


def settle_stops() -> int | None:
    """The outcome is decided: later stop signals are ignored. The stop held until now (its
    result must say interrupted), or None."""
    held, _Stop.held, _Stop.over = _Stop.held, None, True
    return held


def wakeup_fileno() -> int | None:
    """A descriptor readable once a signal arrived, for an event loop to poll (None when
    embedded: the application's handlers are left alone)."""
    return _Stop.wakeup[0] if _Stop.wakeup is not None and _ours() else None


def drain_wakeup() -> None:
    """Empty the wake-up pipe once its bytes have woken the loop."""
    if _Stop.wakeup is not None:
        with contextlib.suppress(BlockingIOError):
            while os.read(_Stop.wakeup[0], 4096):
                pass


def _swappable() -> bool:
    """Handlers can be swapped and put back: in the main thread, not installed from C."""
    return threading.current_thread() is threading.main_thread() and all(
        signal.getsignal(signum) is not None for signum in STOP_SIGNALS)


@contextmanager
def _swapped(handler: Handler | signal.Handlers) -> Iterator[None]:
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def deferred_stop_signals(*, foreign: bool = True) -> Iterator[None]:
    """Hold stop signals back while the block runs; a stop held is raised when the outermost
    section ends. With an embedding application's handlers (`foreign`, main thread only) the
    signals are recorded meanwhile and sent again after the block."""
    if _ours():
        _Stop.depth += 1
        try:
            yield
        finally:
            _Stop.depth -= 1
            if not _Stop.depth and _Stop.held is not None and not _Stop.over:
                _raise(_Stop.held)
        return
    if not foreign or not _swappable():
        yield
        return
    received: list[int] = []
    with _swapped(lambda signum, _frame: received.append(signum)):
        yield
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside held sections, a part of the run a stop may cut at once (the Debian tools'
    checks): a stop held so far is raised on entry."""
    if not _ours():
        yield
        return
    depth, _Stop.depth = _Stop.depth, 0
    try:
        if _Stop.held is not None and not _Stop.over:
            _raise(_Stop.held)
        yield
    finally:
        _Stop.depth = depth


@contextmanager
def ignored_stop_signals() -> Iterator[None]:
    """Drop stop signals while the block runs (a withdrawal a second Ctrl-C must not cut)."""
    if not _swappable():
        yield
        return
    with _swapped(signal.SIG_IGN):
        yield
