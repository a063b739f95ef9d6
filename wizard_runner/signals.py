"""Stop signals: SIGTERM, SIGINT and SIGHUP become one recorded stop, acted on where it is safe.

With wizard-runner's handlers (the CLI installs them on its first line, the daemon its own), a
stop is recorded, never raised where it lands: an exception thrown into arbitrary code (an
import, a class being built, a finalizer) would come out as something else. It is raised as
RunInterrupted at known points only: a run's start (`run_stops`), the end of the outermost
deferred section, `stop_here`, and inside `interruptible` waits (a tool, a pause, reading the
body), which a stop cuts at once. The scripts step's event loop sees it through the wake-up
pipe and stops the script there; the end of the run settles it; the command line says one
still recorded when its command ends (`take_stop`). Once raised or settled, later stop
signals are ignored, so nothing cuts the clean-up short and a written result is never
contradicted.
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
    """The process's stop: open deferred sections, whether a wait may be cut at once, the
    signal recorded, whether it is over; and the pipe the interpreter writes a byte into for
    each signal, which event loops poll."""

    depth = 0
    cut = False
    held: int | None = None
    over = False
    came = False  # a stop signal came, acted on or not (a blocked output gives up)
    wakeup: tuple[int, int] | None = None


def _fresh(held: int | None = None) -> None:
    """No section open, no wait to cut, nothing settled; `held` recorded."""
    _Stop.depth, _Stop.cut, _Stop.held, _Stop.over = 0, False, held, False
    _Stop.came = held is not None


def _ours() -> bool:
    return getattr(signal.getsignal(signal.SIGTERM), "defers_stops", False) is True


def _raise(signum: int) -> None:
    _Stop.over, _Stop.held = True, None
    raise RunInterrupted(signum)


def request_stop(signum: int) -> None:
    """What a stop handler does: record the first stop; raise it inside an `interruptible`
    wait; nothing once the stop is over."""
    _Stop.came = True
    if _Stop.over:
        return
    if _Stop.held is None:
        _Stop.held = signum
    if _Stop.cut:
        _raise(_Stop.held)


def _handle(signum: int, _frame: FrameType | None) -> None:
    request_stop(signum)


_handle.defers_stops = True  # type: ignore[attr-defined]


def install_stop_handlers(handler: Handler = _handle) -> None:
    """Install `handler` (marked `defers_stops`) for the stop signals, with the wake-up pipe;
    no section is open. Without an argument: the CLI's. A stop recorded by wizard-runner's
    handlers before (the console script's, as the command loaded) is kept."""
    _fresh(_Stop.held if _ours() else None)
    sys.unraisablehook = _quiet_unraisable
    if _Stop.wakeup is None:
        _Stop.wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(_Stop.wakeup[1], warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def stop_here() -> None:
    """A point where the work may end: the stop recorded so far is raised as RunInterrupted."""
    if _Stop.held is not None and not _Stop.over and _ours():
        _raise(_Stop.held)


@contextmanager
def run_stops() -> Iterator[None]:
    """A run's span (the daemon serves many): a stop recorded before is raised on entry, so the
    run does not begin; inside, a stop is this run's; once the run has ended, the next stop is
    recorded again (for the next run, or the command's end)."""
    if not _ours():
        yield
        return
    stop_here()
    _fresh()
    try:
        yield
    finally:
        _Stop.over = False


def _quiet_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A stop raised where Python can only print it (a finalizer that ran inside an
    `interruptible` wait) is recorded again for the next known point, not printed."""
    if isinstance(unraisable.exc_value, RunInterrupted):
        _Stop.held, _Stop.over = unraisable.exc_value.signum, False
    else:
        sys.__unraisablehook__(unraisable)


def pending_stop() -> int | None:
    """The stop signal recorded right now, if any (an event loop acts on it)."""
    return _Stop.held


def stop_came() -> bool:
    """Whether a stop signal came since the run began (or the command), even one the run
    settled or ignored: output that waits on a reader gives up."""
    return _Stop.came


def settle_stops() -> int | None:
    """The outcome is decided: later stop signals are ignored. The stop recorded until now
    (the outcome must say interrupted), or None."""
    held, _Stop.held, _Stop.over = _Stop.held, None, True
    return held


def take_stop() -> int | None:
    """A command is over: the stop recorded and never acted on, if any (it came too late to
    cut anything short). The next command in the process starts with none."""
    held = _Stop.held
    _fresh()
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


@contextmanager
def _swapped(handler: Handler | signal.Handlers, swap: bool = True) -> Iterator[None]:
    """`handler` for the stop signals while the block runs, if `swap` and where handlers can
    be swapped and put back: in the main thread, not installed from C."""
    swap = swap and threading.current_thread() is threading.main_thread() and all(
        signal.getsignal(signum) is not None for signum in STOP_SIGNALS)
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS if swap}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def deferred_stop_signals(*, foreign: bool = True) -> Iterator[None]:
    """A block no stop may cut: one recorded meanwhile is raised when the outermost section
    ends. With an embedding application's handlers (`foreign`, main thread only) the signals
    are recorded meanwhile and sent again after the block."""
    if _ours():
        _Stop.depth += 1
        try:
            yield
        finally:
            _Stop.depth -= 1
            if not _Stop.depth:
                stop_here()
        return
    received: list[int] = []
    with _swapped(lambda signum, _frame: received.append(signum), foreign):
        yield
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """A wait a stop may cut at once (a tool, a pause, reading the body), also inside deferred
    sections: a stop recorded so far is raised on entry, one arriving meanwhile where it lands.
    Keep the block to the wait: stdlib code that cleans up after KeyboardInterrupt."""
    if not _ours():
        yield
        return
    stop_here()
    cut = _Stop.cut
    try:
        _Stop.cut = True
        yield
    finally:
        _Stop.cut = cut


@contextmanager
def ignored_stop_signals() -> Iterator[None]:
    """Drop stop signals while the block runs (a withdrawal a second Ctrl-C must not cut)."""
    with _swapped(signal.SIG_IGN):
        yield
