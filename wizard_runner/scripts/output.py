"""A script's output: split into lines, logged as events up to a budget, kept in its log file up
to a cap, its tail in memory."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol

from structlog.typing import FilteringBoundLogger

from wizard_runner.defaults import DEFAULT_CAP
from wizard_runner.escape import OUTPUT, printable_lines

if TYPE_CHECKING:
    from wizard_runner.result import ScriptOutcome

MAX_LINE: Final = 16 * 1024
TAIL_BYTES: Final = 4096
#: How much of one script's output also becomes log events, counted as the size those events
#: take in the JSON log (text plus about EVENT_OVERHEAD bytes of fields each); the rest is in
#: the script's own log file only, so that a chatty script cannot flood the main log.
EVENT_CAP: Final = 1024 * 1024
EVENT_OVERHEAD: Final = 200


def shown_line(data: bytes) -> str:
    """A line as text: UTF-8, invalid bytes, control characters and bidirectional overrides
    shown escaped (\\xff, \\x1b, \\u202e): they would drive the admin's terminal."""
    return data.decode("utf-8", "backslashreplace").translate(OUTPUT)


def shown_lines(lines: list[bytes]) -> str:
    """Many lines as shown_line shows each, joined by newlines, in one pass over the text."""
    return printable_lines(b"\n".join(lines).decode("utf-8", "backslashreplace"))


class LineSplitter:
    """Cut a byte stream into lines without ever holding more than one long line's worth."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines `data` finishes (without their newline); long ones are cut."""
        if b"\n" not in data:
            self._pending += data
            return self._cut_pending()
        *lines, rest = (bytes(self._pending) + data).split(b"\n")
        self._pending = bytearray(rest)
        if max(map(len, lines)) > self.max_line:
            lines = [piece for line in lines for piece in self._cut(line)]
        return lines + self._cut_pending()

    def _cut(self, line: bytes) -> list[bytes]:
        if len(line) <= self.max_line:
            return [line]
        return [line[at : at + self.max_line] for at in range(0, len(line), self.max_line)]

    def _cut_pending(self) -> list[bytes]:
        """Whole max_line pieces of an unterminated line, so that memory stays bounded."""
        pieces = []
        while len(self._pending) >= self.max_line:
            pieces.append(bytes(self._pending[: self.max_line]))
            del self._pending[: self.max_line]
        return pieces

    def flush(self) -> list[bytes]:
        """The last, unterminated line, if any."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest] if rest else []


#: File names are at most 255 bytes; a script's log name keeps this much of the script's name.
_NAME_BYTES: Final = 200


def script_log_path(log_dir: Path, script: str) -> Path:
    """Where one script's full output goes: `<log_dir>/<script>.log`, or for a name too long
    for a file name, its first bytes and a digest of the whole name."""
    encoded = script.encode("utf-8", "surrogateescape")
    if len(encoded) + len(".log") <= 255:
        return log_dir / f"{script}.log"
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    head = encoded[:_NAME_BYTES].decode("utf-8", "ignore")
    return log_dir / f"{head}...{digest}.log"


class OutputRecord:
    """Where one script's lines go: its log file (capped) and a bounded tail.

    The log file is created with the first line: a script that printed nothing has none.
    """

    def __init__(self, path: Path | None, cap: int = DEFAULT_CAP, tail: int = TAIL_BYTES) -> None:
        self.path = path
        self.cap = cap
        self.tail_limit = tail
        self.written = 0
        self.truncated = False
        self._tail: deque[str] = deque()
        self._tail_size = 0
        self._raw = bytearray()
        self._file: BinaryIO | None = None
        self.error: str | None = None  # why the log file is incomplete, if it is

    def add(self, stream: str, line: str) -> bool:
        """Record a line; False once the cap is reached (the caller stops logging lines too)."""
        self._remember(line)
        return self._write(f"{stream}: {line}\n".encode())

    def add_lines(self, stream: str, lines: list[bytes]) -> None:
        """Record many lines at once (raw, as read): what add() does for each, in one pass."""
        if not lines:
            return
        self._keep_raw(b"\n".join(lines) + b"\n")
        if self.truncated:
            return
        prefix = f"{stream}: "
        entry = (prefix + shown_lines(lines).replace("\n", "\n" + prefix) + "\n").encode()
        if self.written + len(entry) <= self.cap:
            self._write(entry)
            return
        for line in lines:  # the cap falls inside: cut at the last line that fits
            if not self._write(f"{prefix}{shown_line(line)}\n".encode()):
                return

    def _write(self, entry: bytes) -> bool:
        if self.truncated:
            return False
        if self.written + len(entry) > self.cap:
            self.truncated = True
            self._put(f"[wizard-runner: output truncated after {self.cap} bytes; "
                      "the last lines are in the result's output_tail]\n".encode())
            return False
        self.written += len(entry)
        self._put(entry)
        return True

    def _put(self, data: bytes) -> None:
        if self.path is None or self.error is not None:
            return  # kept in memory only
        try:
            if self._file is None:
                self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
                self._file = os.fdopen(os.open(self.path, flags, 0o640), "wb")
            self._file.write(data)
        except OSError as error:
            # A full disk must not stop the script nor the run: the output still reaches the
            # main log and the tail; the caller reports the log file as incomplete.
            self.error = f"{self.path}: {error.strerror}"
            self._close_quietly()

    def _close_quietly(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

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
        self._keep_raw(data)

    def _keep_raw(self, data: bytes) -> None:
        keep = 2 * self.tail_limit
        if len(data) >= keep:  # a big chunk: only its end can reach the tail
            self._raw[:] = data[-keep:]
            return
        self._raw += data
        if len(self._raw) > keep:
            del self._raw[: -self.tail_limit]

    @property
    def tail(self) -> str:
        """The last lines of output, at most about TAIL_BYTES."""
        lines = list(self._tail)
        if self._raw:
            raw = bytes(self._raw)
            raw = raw.removesuffix(b"\n")  # the last line's end, not one more empty line
            lines += [shown_line(line) for line in raw.split(b"\n")]
        data = "\n".join(lines).encode("utf-8")[-self.tail_limit :]
        return data.decode("utf-8", "ignore")  # a cut may split one character

    def close(self) -> None:
        """Flush and close the log file (a failure to flush is recorded in `error`)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                self.error = self.error or f"{self.path}: {error.strerror}"
            self._file = None


class Progress(Protocol):
    """Something that shows the step as it goes (the CLI on a terminal)."""

    def started(self, index: int, total: int, name: str) -> None:
        """A script starts."""

    def output(self, name: str, stream: str, line: str) -> None:
        """A script printed a line (already escaped)."""

    def finished(self, outcome: ScriptOutcome) -> None:
        """A script ended."""


class ScriptOutput:
    """Where one script's output goes as it is read: split into lines, each a `script_output`
    event (up to EVENT_CAP, counted as the JSON log's size) and a progress line, all of them
    in the script's log file (capped) and the tail. Past both caps only the tail is kept, from
    raw chunks: a flood costs little more than reading it."""

    def __init__(self, name: str, log_dir: Path | None, log: FilteringBoundLogger,
                 progress: Progress | None = None, cap: int = DEFAULT_CAP) -> None:
        self.name = name
        self.log = log
        self.progress = progress
        self.path = script_log_path(log_dir, name) if log_dir is not None else None
        self.record = OutputRecord(self.path, cap)
        self.splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self.events = 0
        self.over_budget = False

    @property
    def bulk(self) -> bool:
        """Past both caps: only the tail is left to keep."""
        return self.over_budget and self.record.full

    def feed(self, stream: str, data: bytes) -> None:
        """Take a chunk read from one stream."""
        if self.bulk:
            self._emit(stream, self.splitters[stream].flush())
            self.record.add_raw(data)
        else:
            self._emit(stream, self.splitters[stream].feed(data))

    def end(self, stream: str) -> None:
        """The stream is closed: its last, unterminated line."""
        self._emit(stream, self.splitters[stream].flush())

    def _emit(self, stream: str, lines: list[bytes]) -> None:
        for index, raw in enumerate(lines):
            if self.over_budget:
                self.record.add_lines(stream, lines[index:])  # one batch: the file only
                return
            line = shown_line(raw)
            self.record.add(stream, line)
            self.events += len(line) + EVENT_OVERHEAD
            if self.events <= EVENT_CAP:
                self.log.info("script_output", stream=stream, line=line)
                if self.progress is not None:
                    self.progress.output(self.name, stream, line)
            else:
                self.over_budget = True
                self.log.warning("script_output_not_logged", after_bytes=EVENT_CAP,
                                 full_output=str(self.path) if self.path else None)
                if self.progress is not None:
                    self.progress.output(self.name, "stderr", "[more output: see the script's log]")

    def close(self) -> str:
        """Close the log file (saying so when it could not be written whole); the tail."""
        for stream in self.splitters:
            self.end(stream)
        self.record.close()
        if self.record.error is not None:
            self.log.warning("script_log_incomplete", error=self.record.error,
                             reason="the output is in this log (first MiB) and output_tail only")
        return self.record.tail
