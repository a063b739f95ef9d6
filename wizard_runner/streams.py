"""Output streams that a closed pipe, a full disk or a reader that stopped reading cannot turn
into a crash or a hang."""

from __future__ import annotations

import contextlib
import os
import select
from typing import Final, TextIO

from wizard_runner.signals import drain_wakeup, stop_came, wakeup_fileno

#: Characters per write: at most 6 bytes each once encoded (`\udcff` for a byte that is not
#: UTF-8), so that a piece fits what a pipe that polls writable takes without blocking (a page).
_PIECE: Final = 512
#: Once a stop came, how long a reader that does not read is waited for before giving up.
_SLOW_READER: Final = 1.0


def _room(fd: int, seconds: float | None, wakeup: int | None = None) -> bool:
    """Whether `fd` takes a write (or fails at once: a closed reader) within `seconds` (None:
    until it does, or `wakeup` is readable). By poll, not select: select stops at descriptor
    1023, and an embedding application may hold more."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if wakeup is not None:
        poller.register(wakeup, select.POLLIN)
    return any(ready == fd for ready, _ in
               poller.poll(None if seconds is None else seconds * 1000))


class SafeStream:
    """A stream whose write errors (a closed pipe, a full disk) are ignored: logging must never
    break a run, nor stop it from cleaning up and writing its result.

    Each write goes out in small pieces, each flushed once the stream takes it: a pipe whose
    reader stopped reading is waited on, but a stop signal (recorded by wizard-runner's
    handlers) gives the stream up, pointed at /dev/null, so that the command still ends and
    says how. (A big write blocked on a pipe would go on after a signal; one Python ends
    short there drops the rest silently.)"""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False
        #: The first write error, if one broke the stream (a stop giving it up is none).
        self.error: OSError | None = None
        try:
            self.fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):
            self.fd = None  # an in-memory stream: it never blocks

    @classmethod
    def over(cls, stream: TextIO | SafeStream) -> SafeStream:
        """`stream` made safe (itself when it is already)."""
        return stream if isinstance(stream, SafeStream) else cls(stream)

    def write(self, text: str) -> int:
        """Write unless the stream already failed, or was given up."""
        if not self.broken:
            try:
                for start in range(0, len(text), _PIECE):
                    if not self._ready():
                        self._give_up()
                        break
                    self.stream.write(text[start:start + _PIECE])
                    self.stream.flush()
            except (OSError, ValueError) as error:
                self._broke(error)
        return len(text)

    def flush(self) -> None:
        """Flush, ignoring the same errors."""
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError) as error:
                self._broke(error)

    def _broke(self, error: OSError | ValueError) -> None:
        self.broken = True
        if isinstance(error, OSError):
            self.error = error

    def isatty(self) -> bool:
        """Whether the stream is a terminal."""
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def _ready(self) -> bool:
        """Wait until the stream takes a piece; False when, a stop having come, it still does
        not a moment later (a reader only slow gets that moment)."""
        fd = self.fd
        if fd is None:
            return True
        stopped = False
        while not _room(fd, 0):
            if stop_came():
                if stopped:
                    return False
                stopped = True
                _room(fd, _SLOW_READER)
                continue
            wakeup = wakeup_fileno()
            if not _room(fd, None, wakeup):
                drain_wakeup()  # the stop it says is in pending_stop, for every reader
        return True

    def _give_up(self) -> None:
        """Point the descriptor at /dev/null: what is still buffered, and the interpreter's
        last flush, go nowhere instead of waiting on a reader that does not read."""
        self.broken = True
        fd = self.fd
        if fd is not None:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                os.dup2(null, fd)
                os.close(null)
