"""structlog setup: readable lines on a terminal, JSON lines otherwise, JSON lines to the log file.

Loggers are built per run and passed along, never configured globally, so that a process that
imports wizard-runner (xivo-confd) keeps its own structlog configuration.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from wizard_runner.errors import PrivilegeError, RunnerIOError
from wizard_runner.escape import printable
from wizard_runner.fsio import NotRegularFileError
from wizard_runner.layout import LOG_DIR_MODE
from wizard_runner.streams import SafeStream

_SECRET_KEY: Final = re.compile(r"pass(word)?|secret|token", re.IGNORECASE)
REDACTED: Final = "**********"


def redact_secrets(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Blank any field whose name says it is a secret: a last line of defence for the password."""
    for key in list(event):
        if _SECRET_KEY.search(key):
            event[key] = REDACTED
    return event


class LogFile:
    """The run's JSON-lines log file, and the first error writing it, if any (lines from
    then on may be lost: the run's result says so)."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.lost: str | None = None

    def write(self, line: str) -> None:
        """Append one line; a full disk or a closed file never breaks the run."""
        try:
            self.handle.write(line + "\n")
            self.handle.flush()
        except (OSError, ValueError) as error:
            if self.lost is None:
                self.lost = getattr(error, "strerror", None) or str(error)


class JsonLinesFile:
    """A processor that appends each event as one JSON line to the log file, then passes it
    on; as the last processor (`renders=True`) it hands the same line on to the stream
    instead, so that an event bound for two JSON outputs is rendered once."""

    def __init__(self, file: LogFile, *, renders: bool = False) -> None:
        self.file = file
        self.renders = renders

    def __call__(self, _logger: WrappedLogger, _method: str, event: EventDict) -> Any:
        """Write the event (see LogFile.write)."""
        line = json.dumps(event, default=str, ensure_ascii=False)
        self.file.write(line)
        return line if self.renders else event


class _StreamFilter:
    """Stop events under a level, or named ones, from reaching the stream (the file has had
    them already): on a terminal, the run's progress and summary say the rest."""

    def __init__(self, level: int, skipped: frozenset[str]) -> None:
        self.level = level
        self.skipped = skipped

    def __call__(self, _logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        if logging.getLevelName(method.upper()) < self.level or event.get("event") in self.skipped:
            raise structlog.DropEvent
        return event


#: Fields a person at a terminal does not need on every line.
_CONSOLE_HIDDEN: Final = frozenset({"timestamp", "run_id"})


def _console_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_console_value(item) for item in value) or "[]"
    text = str(value)
    lines = text.splitlines()
    if len(lines) > 1:
        text = f"{lines[-1]} (last of {len(lines)} lines)"
    return f'"{text}"' if not text or any(char.isspace() for char in text) else text


def console_renderer(_logger: WrappedLogger, method: str, event: EventDict) -> str:
    """One readable line per event: `warning: leftover_killed pid=412 cmdline="sleep 99"`.
    Fields without a value are left out, multi-line ones shortened, and every control
    character escaped, so that what a script printed cannot drive the terminal."""
    level = str(event.pop("level", method))
    name = str(event.pop("event", ""))
    fields = " ".join(f"{key}={_console_value(value)}" for key, value in event.items()
                      if value is not None and key not in _CONSOLE_HIDDEN)
    return printable(f"{level}: {name} {fields}".rstrip())


def open_log_file(path: Path) -> TextIO:
    """Open the JSON-lines log for appending (0640), creating its directory (0750). Anything
    but a regular file there (a symlink, a FIFO, a device) is refused, never followed nor
    waited on."""
    path.parent.mkdir(mode=LOG_DIR_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
                     | os.O_NOFOLLOW, 0o640)
    except OSError as error:
        kinds = {errno.ENXIO: stat.S_IFIFO, errno.ELOOP: stat.S_IFLNK}  # (a FIFO: no reader)
        if error.errno in kinds:
            raise NotRegularFileError(str(path), kinds[error.errno]) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(str(path), mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")


@contextmanager
def run_log_file(path: Path) -> Iterator[LogFile]:
    """The run's log file, open for the block: PrivilegeError or RunnerIOError (naming it)
    when it cannot be opened; closing it never fails the run (a full disk at the last
    flush loses log lines, not the run's outcome)."""
    try:
        handle = open_log_file(path)
    except PermissionError as error:
        raise PrivilegeError(f"{path}: cannot open the log: {error.strerror}") from error
    except OSError as error:
        raise RunnerIOError(f"{path}: the run's log could not be written: "
                            f"{error.strerror}") from error
    try:
        yield LogFile(handle)
    finally:
        with contextlib.suppress(OSError, ValueError):
            handle.close()


#: syslog priorities, which journald reads from a `<N>` prefix on each stderr line.
_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2,
                    "exception": 3}


def journal_renderer(_logger: WrappedLogger, _method: str, event: EventDict) -> str:
    """One line per event for the journal: `<priority>event key=value ...`, no timestamp
    (journald stamps each line itself)."""
    priority = _PRIORITY.get(str(event.pop("level", "info")), 6)
    event.pop("timestamp", None)
    name = event.pop("event", "")
    fields = " ".join(f"{key}={json.dumps(value, default=str, ensure_ascii=False)}"
                      for key, value in event.items())
    return f"<{priority}>{name} {fields}".rstrip()


def _common_processors(log_file: LogFile | None, *, renders: bool = False) -> list[Any]:
    """Level, UTC timestamp, redaction, then the JSON-lines file (when there is one)."""
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if log_file is not None:
        processors.append(JsonLinesFile(log_file, renders=renders))
    return processors


def make_logger(
    stream: TextIO,
    *,
    json_lines: bool | None = None,
    log_file: LogFile | None = None,
    level: int = logging.INFO,
    stream_level: int | None = None,
    stream_skips: frozenset[str] = frozenset(),
    journal: bool = False,
    **context: Any,
) -> FilteringBoundLogger:
    """A logger writing to `stream` (JSON unless it is a terminal) and, if given, `log_file`.

    `stream_level` keeps `stream` quieter than the file, and `stream_skips` names events it
    does not show (the CLI's progress view and summary say them).
    """
    if json_lines is None:
        json_lines = not stream.isatty()
    filtered = (stream_level is not None and stream_level > level) or bool(stream_skips)
    if json_lines and not journal and not filtered and log_file is not None:
        processors = _common_processors(log_file, renders=True)  # one line, both outputs
    else:
        processors = _common_processors(log_file)
        if filtered:
            processors.append(_StreamFilter(stream_level or level, stream_skips))
        processors.append(
            journal_renderer
            if journal
            else structlog.processors.JSONRenderer(default=str)
            if json_lines
            else console_renderer
        )
    logger: FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(SafeStream.over(stream)),  # type: ignore[arg-type]
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
    )
    return logger.bind(**context) if context else logger


#: Attributes of logging.LogRecord that an event's fields must not overwrite.
_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime"}


def _to_stdlib(_logger: WrappedLogger, _method: str, event: EventDict) -> dict[str, Any]:
    """Hand the event to a standard logging.Logger: its name and fields as the message, the
    name as the record's `event`, each field as an attribute of its own (`wr_` before a name
    the record has already)."""
    message = str(event.pop("event", ""))
    extra = {(f"wr_{k}" if k in _RECORD_ATTRIBUTES else k): v for k, v in event.items()}
    fields = " ".join(f"{k}={v!r}" for k, v in event.items()
                      if k not in {"level", "timestamp"})
    return {"msg": f"{message} {fields}".strip(), "extra": {**extra, "event": message}}


def stdlib_logger(
    target: logging.Logger,
    *,
    log_file: LogFile | None = None,
    **context: Any,
) -> FilteringBoundLogger:
    """A logger that sends every event to a standard `logging.Logger` (confd's handlers)."""
    processors = [*_common_processors(log_file), _to_stdlib]
    logger: FilteringBoundLogger = structlog.wrap_logger(
        target,
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        context_class=dict,
    )
    return logger.bind(**context) if context else logger


def quiet_logger() -> FilteringBoundLogger:
    """A logger that shows nothing (ReturnLogger only hands the line back), for API callers."""
    logger: FilteringBoundLogger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
    )
    return logger
