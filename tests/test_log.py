"""Logging: JSON lines or readable lines on stderr, JSON lines in the file, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from wizard_runner.log import (
    REDACTED,
    JsonLinesFile,
    LogFile,
    make_logger,
    open_log_file,
    quiet_logger,
)


def test_json_lines_with_bound_context() -> None:
    """Each event is one JSON object with its name, level, UTC timestamp and bound fields."""
    stream = io.StringIO()
    log = make_logger(stream, json_lines=True, run_id="r1")
    log.info("file_written", path="/etc/hosts")
    event = json.loads(stream.getvalue())
    assert event["event"] == "file_written"
    assert event["level"] == "info"
    assert event["run_id"] == "r1"
    assert event["path"] == "/etc/hosts"
    assert event["timestamp"].endswith("Z")


def test_console_lines_are_readable() -> None:
    """On a terminal the events are plain lines, not JSON."""
    stream = io.StringIO()
    make_logger(stream, json_lines=False).warning("file_skipped", path="/etc/resolv.conf")
    line = stream.getvalue()
    assert "file_skipped" in line
    assert "path=/etc/resolv.conf" in line
    assert not line.startswith("{")


def test_file_gets_json_whatever_the_terminal_shows(tmp_path: Path) -> None:
    """The log file always receives JSON lines, appended, with mode 0640."""
    path = tmp_path / "log" / "wizard-runner.log"
    for run in ("a", "b"):
        with open_log_file(path) as handle:
            make_logger(io.StringIO(), json_lines=False, log_file=LogFile(handle), run_id=run).info("x")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [event["run_id"] for event in events] == ["a", "b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("reader", [False, True], ids=["fifo", "fifo-with-a-reader"])
def test_a_log_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path,
                                                            reader: bool) -> None:
    """A FIFO where the log should be is refused, whether or not something reads it: never
    a wait for a reader, never the run's events sent into a pipe."""
    path = tmp_path / "wizard-runner.log"
    os.mkfifo(path)
    held = os.open(path, os.O_RDONLY | os.O_NONBLOCK) if reader else None
    try:
        with pytest.raises(OSError, match="not a regular file"):
            open_log_file(path)
    finally:
        if held is not None:
            os.close(held)


@pytest.mark.parametrize("target", ["victim", "missing"])
def test_a_log_that_is_a_symlink_is_refused_and_not_followed(tmp_path: Path, target: str
                                                             ) -> None:
    """A symlink where the log should be is refused, naming what it is: the run's events are
    never appended to the file it points at, nor a file created there."""
    victim = tmp_path / target
    if target == "victim":
        victim.write_text("root:x:0:0::/root:/bin/bash\n")
    path = tmp_path / "wizard-runner.log"
    path.symlink_to(victim)
    with pytest.raises(OSError, match=r"not a regular file \(a symlink\)"):
        open_log_file(path)
    if target == "victim":
        assert victim.read_text() == "root:x:0:0::/root:/bin/bash\n"
    else:
        assert not victim.exists()


def test_secrets_are_redacted() -> None:
    """A field named like a secret is blanked in every output, file included."""
    stream, handle = io.StringIO(), io.StringIO()
    log = make_logger(stream, json_lines=True, log_file=LogFile(handle))
    log.info("oops", admin_password="Sup3rSecret!", token="t", path="/etc/hosts")
    for text in (stream.getvalue(), handle.getvalue()):
        assert "Sup3rSecret!" not in text
        event = json.loads(text)
        assert event["admin_password"] == REDACTED
        assert event["token"] == REDACTED
        assert event["path"] == "/etc/hosts"


def test_level_filter() -> None:
    """Debug events are dropped at the default level."""
    stream = io.StringIO()
    log = make_logger(stream, json_lines=True)
    log.debug("noise")
    log.info("kept")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["kept"]
    verbose = io.StringIO()
    make_logger(verbose, json_lines=True, level=logging.DEBUG).debug("noise")
    assert "noise" in verbose.getvalue()


def test_broken_log_file_never_breaks_the_run(tmp_path: Path) -> None:
    """A closed or full log file is ignored; the event still reaches stderr."""
    handle = (tmp_path / "log").open("w")
    handle.close()
    stream = io.StringIO()
    make_logger(stream, json_lines=True, log_file=LogFile(handle)).info("still_here")
    assert "still_here" in stream.getvalue()
    tee = JsonLinesFile(LogFile(open(os.devnull, "w")))  # noqa: SIM115 - closed below
    assert tee(None, "info", {"event": "x"}) == {"event": "x"}
    tee.file.handle.close()


def test_quiet_logger_prints_nothing(capsys: object) -> None:
    """The API's default logger is silent."""
    quiet_logger().error("nothing", path="/etc/hosts")
    assert capsys.readouterr() == ("", "")  # type: ignore[attr-defined]


def test_json_stream_and_file_get_the_same_line() -> None:
    """With both outputs in JSON, each event is rendered once: the same line lands in both."""
    stream, handle = io.StringIO(), io.StringIO()
    log = make_logger(stream, json_lines=True, log_file=LogFile(handle), run_id="r1")
    log.info("script_output", line="héllo \x1b[31m", count=3)
    assert stream.getvalue() == handle.getvalue()
    event = json.loads(stream.getvalue())
    assert (event["line"], event["count"], event["run_id"]) == ("héllo \x1b[31m", 3, "r1")
