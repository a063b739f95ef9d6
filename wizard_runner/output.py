"""A script's output: split into lines, kept in its log file up to a cap, its tail in memory."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Final, TextIO

MAX_LINE: Final = 16 * 1024
TAIL_BYTES: Final = 4096
DEFAULT_CAP: Final = 16 * 1024 * 1024


# Control characters (ESC, CR, NUL, ...) would drive the admin's terminal; tab is harmless.
_CONTROLS: Final = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F] if code != 0x09}


def shown_line(data: bytes) -> str:
    """A line as text: UTF-8, invalid bytes and control characters shown escaped (\\xff)."""
    return data.decode("utf-8", "backslashreplace").translate(_CONTROLS)


class LineSplitter:
    """Cut a byte stream into lines without ever holding more than one long line's worth."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines `data` finishes (without their newline); long ones are cut."""
        self._pending += data
        lines: list[bytes] = []
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            lines += [line[at : at + self.max_line] for at in range(0, len(line), self.max_line)]
            if not line:
                lines.append(line)
        while len(self._pending) >= self.max_line:
            lines.append(bytes(self._pending[: self.max_line]))
            del self._pending[: self.max_line]
        return lines

    def flush(self) -> list[bytes]:
        """The last, unterminated line, if any."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest] if rest else []


class OutputRecord:
    """Where one script's lines go: its log file (capped) and a bounded tail."""

    def __init__(self, path: Path | None, cap: int = DEFAULT_CAP, tail: int = TAIL_BYTES) -> None:
        self.cap = cap
        self.tail_limit = tail
        self.written = 0
        self.lines = 0
        self.truncated = False
        self._tail: deque[str] = deque()
        self._tail_size = 0
        self._raw = bytearray()
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            self._file = os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace")

    def add(self, stream: str, line: str) -> bool:
        """Record a line; False once the cap is reached (the caller stops logging lines too)."""
        self.lines += 1
        self._remember(line)
        if self.truncated:
            return False
        entry = f"{stream}: {line}\n"
        size = len(entry.encode("utf-8"))
        if self.written + size > self.cap:
            self.truncated = True
            if self._file is not None:
                self._file.write(f"[wizard-runner: output truncated after {self.cap} bytes; "
                                 "the last lines are in the result's output_tail]\n")
            return False
        self.written += size
        if self._file is not None:
            self._file.write(entry)
        return True

    def _remember(self, line: str) -> None:
        self._tail.append(line)
        self._tail_size += len(line.encode("utf-8")) + 1
        while self._tail_size > self.tail_limit and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft().encode("utf-8")) + 1

    @property
    def full(self) -> bool:
        """Whether the log file is full: from then on, only the tail is kept."""
        return self.truncated

    def add_raw(self, data: bytes) -> None:
        """Keep raw output for the tail only, without splitting it into lines (bulk mode)."""
        self._raw += data
        self.lines += data.count(b"\n")
        if len(self._raw) > 2 * self.tail_limit:
            del self._raw[: -self.tail_limit]

    @property
    def tail(self) -> str:
        """The last lines of output, at most about TAIL_BYTES."""
        text = "\n".join(self._tail)
        if self._raw:
            raw = bytes(self._raw).rstrip(b"\n")
            text += "\n" + "\n".join(shown_line(line) for line in raw.split(b"\n"))
        data = text.encode("utf-8")[-self.tail_limit :]
        return data.decode("utf-8", "ignore")  # a cut may split one character

    def close(self) -> None:
        """Flush and close the log file."""
        if self._file is not None:
            self._file.close()
            self._file = None
