"""Signal handling: SIGTERM/SIGINT become a recorded stop, deferred during critical sections."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

from wizard_runner.errors import RunInterrupted

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise RunInterrupted(signum)


def install_stop_handlers() -> None:
    """Turn SIGTERM and SIGINT into RunInterrupted (the CLI does this; the API does not)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupted)


@contextmanager
def deferred_stop_signals() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back while the block runs, then deliver them to the usual handler.

    Used around the file replacements so that a stop request never lands between two renames.
    Only the main thread can change handlers; elsewhere the block runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread():
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
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
