"""Output streams that a closed pipe or a full disk cannot turn into a crash."""

from __future__ import annotations

from typing import Final, TextIO

#: Characters per write: at most 4 bytes each in UTF-8, within io.DEFAULT_BUFFER_SIZE (8 KiB).
_PIECE: Final = 2048


class SafeStream:
    """A stream whose write errors (a closed pipe, a full disk) are ignored: logging must never
    break a run, nor stop it from cleaning up and writing its result."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        """Write unless the stream already failed once; in pieces that fit the buffer: a
        bigger write goes straight to the pipe, and a signal that interrupts it there ends
        it short, the rest silently dropped."""
        if not self.broken:
            try:
                for start in range(0, len(text), _PIECE):
                    self.stream.write(text[start:start + _PIECE])
            except (OSError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        """Flush, ignoring the same errors."""
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        """Whether the stream is a terminal."""
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False
