"""The runner's side of the helper: start it contained, one script per order, and every way
the helper can go wrong named as a HelperError."""

from __future__ import annotations

import errno
import io
import json
import os
import pwd
import select
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import traversable_dir, write_script
from wizard_runner.log import make_logger
from wizard_runner.runuser import RunUser
from wizard_runner.scripts.containment import Subreaper
from wizard_runner.scripts.helper import Kind
from wizard_runner.scripts.output import ScriptOutput
from wizard_runner.scripts.spawner import HelperError, Spawner
from wizard_runner.scripts.watch import Watch
from wizard_runner.signals import install_stop_handlers, request_stop, take_stop

pytestmark = pytest.mark.processes
ROOT = os.geteuid() == 0


def www_data() -> RunUser | None:
    """www-data when the tests run as root, else none (scripts run as us)."""
    if not ROOT:
        return None
    entry = pwd.getpwnam("www-data")
    return RunUser("www-data", entry.pw_uid, entry.pw_gid, (entry.pw_gid,), entry.pw_dir)


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory every user can traverse, for the scripts."""
    with traversable_dir() as base:
        yield base


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    """A started helper (www-data when root) in a fallback containment."""
    box = Subreaper()
    started = Spawner({"PATH": "/usr/bin:/bin"}, www_data(), box)
    started.start()
    yield started
    started.close()
    box.close()


def answer(spawner: Spawner) -> tuple[Kind, tuple[int, ...]]:
    """The helper's next message (10 s at most)."""
    assert select.select([spawner.control], [], [], 10)[0]
    return spawner.receive()


def read_all(fd: int) -> bytes:
    """Everything a pipe gives until its end."""
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_pipes_made_ahead_serve_the_next_order(place: Path) -> None:
    """Pipes made while a script runs serve the next order (its output comes through them,
    the write ends the run user's); pipes made ahead and never used are closed with the
    helper: nothing is left open."""
    before = _open_fds()
    box = Subreaper()
    spawner = Spawner({"PATH": "/usr/bin:/bin"}, www_data(), box)
    spawner.start()
    try:
        spawner.prepare()
        made = _open_fds() - before
        out, err = spawner.order(0, str(write_script(place, "10-id", "id -u; echo e >&2")))
        assert {out, err} <= made
        assert answer(spawner)[0] is Kind.STARTED
        expected = str(www_data().uid if ROOT else os.geteuid())  # type: ignore[union-attr]
        assert read_all(out).decode().strip() == expected
        assert read_all(err) == b"e\n"
        assert answer(spawner)[0] is Kind.EXITED
        spawner.prepare()
        spawner.prepare()  # once made, kept for the next order
        assert len(_open_fds() - before) == len(made)
    finally:
        spawner.close()
        box.close()
    assert _open_fds() <= before


def test_runs_a_script_as_the_run_user(spawner: Spawner, place: Path) -> None:
    """The script runs as the switched user; its output comes through the pipes of the order;
    the helper says it started, then how it ended."""
    out, err = spawner.order(0, str(write_script(place, "10-id", "id -u")))
    kind, numbers = answer(spawner)
    assert (kind, numbers[0]) == (Kind.STARTED, 0)
    expected = str(www_data().uid if ROOT else os.geteuid())  # type: ignore[union-attr]
    assert read_all(out).decode().strip() == expected
    assert read_all(err) == b""
    kind, numbers = answer(spawner)
    assert (kind, numbers[0], os.waitstatus_to_exitcode(numbers[1])) == (Kind.EXITED, 0, 0)


def test_a_script_that_cannot_start_is_said_with_its_errno(spawner: Spawner,
                                                          place: Path) -> None:
    """No #! line: FAILED with ENOEXEC; the helper runs the next order."""
    script = place / "10-plain"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    for fd in spawner.order(0, str(script)):
        os.close(fd)
    assert answer(spawner) == (Kind.FAILED, (0, errno.ENOEXEC))
    for fd in spawner.order(1, "/bin/true"):
        os.close(fd)
    assert answer(spawner)[0] is Kind.STARTED
    assert answer(spawner)[0] is Kind.EXITED


def test_a_killed_helper_is_named(spawner: Spawner, place: Path) -> None:
    """The helper killed: the next order, or the wait for its answer, says it was killed by
    SIGKILL."""
    os.kill(spawner.pid, signal.SIGKILL)
    assert select.select([spawner.pidfd], [], [], 10)[0]
    with pytest.raises(HelperError, match="the script helper was killed by SIGKILL"):
        for fd in spawner.order(0, str(write_script(place, "10-x", "true"))):
            os.close(fd)
        answer(spawner)


def test_a_silent_helper_is_not_waited_for(spawner: Spawner) -> None:
    """Why an exchange broke is looked for without blocking: a live helper that says nothing
    leaves the runner's own reason."""
    found: list[HelperError] = []
    looking = threading.Thread(target=lambda: found.append(spawner.failure("broke off (x)")))
    looking.start()
    looking.join(10)
    assert not looking.is_alive()
    assert [str(error) for error in found] == ["the script helper broke off (x)"]


def test_a_look_for_why_leaves_the_helpers_word_for_the_watch(spawner: Spawner,
                                                                place: Path) -> None:
    """Looking for the helper's last word (ERROR) takes no other message away."""
    for fd in spawner.order(0, str(write_script(place, "10-x", "exit 0"))):
        os.close(fd)
    assert select.select([spawner.control], [], [], 10)[0]
    assert str(spawner.failure("broke off (x)")) == "the script helper broke off (x)"
    assert answer(spawner)[0] is Kind.STARTED


@pytest.mark.skipif(not ROOT, reason="needs root (the helper switches to www-data)")
def test_no_script_can_trace_the_helper() -> None:
    """The helper runs as www-data like the scripts, yet is not dumpable, even where
    fs.suid_dumpable would leave it so: its /proc entries stay root's, and no process of the
    same user may read or trace it."""
    knob = Path("/proc/sys/fs/suid_dumpable")
    before = knob.read_text()
    box = Subreaper()
    started = Spawner({"PATH": "/usr/bin:/bin"}, www_data(), box)
    try:
        knob.write_text("1\n")  # a switch of user leaves the process dumpable
        started.start()
        for fd in started.order(0, "/bin/true"):
            os.close(fd)
        assert [answer(started)[0] for _ in range(2)] == [Kind.STARTED, Kind.EXITED]
    finally:
        knob.write_text(before)
    try:
        assert os.stat(f"/proc/{started.pid}/mem").st_uid == 0
    finally:
        started.close()
        box.close()


def test_a_stopped_helper_is_seen_at_once(spawner: Spawner) -> None:
    """A stopped helper sends nothing: its state says so."""
    assert spawner.state() is None
    os.kill(spawner.pid, signal.SIGSTOP)
    assert select.select([], [], [], 0.1) == ([], [], [])  # the stop takes effect
    assert spawner.state() == "was stopped"
    os.kill(spawner.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"A\0B": "x"}, "cannot be passed on", id="nul"),
        pytest.param({"A=B": "x"}, "cannot be passed on", id="equals"),
        pytest.param({"BIG": "x" * 200_000}, "Argument list too long", id="size"),
    ],
)
def test_an_environment_the_helper_cannot_take_is_named(env: dict[str, str],
                                                        message: str) -> None:
    """An environment the helper cannot be started with is named, and nothing runs."""
    box = Subreaper()
    try:
        with pytest.raises(HelperError, match=message):
            Spawner(env, None, box).start()
    finally:
        box.close()


def test_no_interpreter_is_a_helper_error() -> None:
    """An embedding process without sys.executable cannot start the helper: said so."""
    box = Subreaper()
    try:
        with pytest.raises(HelperError, match="no Python interpreter known"):
            Spawner({}, None, box, python="").start()
    finally:
        box.close()


@pytest.mark.parametrize("watched", [False, True])
def test_a_helper_that_cannot_switch_says_why(watched: bool) -> None:
    """A helper that fails as it starts (here: an unknown group list) says why in its answer
    to the first order, not a timeout; watched, the script cannot start for that reason, and
    the log says it was to start."""
    box = Subreaper()
    broken = Spawner({}, RunUser("nobody", 65534, 65534, (-5,), "/"), box)
    try:
        broken.start()
        pipes = broken.order(0, "/bin/true")
        if not watched:
            for fd in pipes:
                os.close(fd)
            with pytest.raises(HelperError, match="the script helper failed: "):
                answer(broken)
            return
        logs = io.StringIO()
        log = make_logger(logs, json_lines=True)
        seen = Watch(broken, 0, pipes, ScriptOutput("10-x", None, log), timeout=None,
                     grace=1.0, log=log, shown={"path": "/bin/true"}).run()
        assert (seen.broken or "").startswith("cannot start: the script helper failed: ")
        events = [json.loads(line)["event"] for line in logs.getvalue().splitlines()]
        assert events == ["script_started"]
    finally:
        broken.close()
        box.close()


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_does_not_wait_for_a_hung_helper(place: Path) -> None:
    """A helper that never says the script started (hung in its start): a stop is acted on
    once its grace is over, not after the 30 s the helper is otherwise given."""
    hung = write_script(place, "hung-python", "exec sleep 60")
    box = Subreaper()
    spawner = Spawner({}, None, box, python=str(hung))
    logs = io.StringIO()
    log = make_logger(logs, json_lines=True)
    install_stop_handlers()
    try:
        spawner.start()
        pipes = spawner.order(0, "/bin/true")
        request_stop(signal.SIGTERM)
        started = time.monotonic()
        seen = Watch(spawner, 0, pipes, ScriptOutput("10-x", None, log), timeout=None,
                     grace=0.5, log=log, shown={"path": "/bin/true"}).run()
        took = time.monotonic() - started
    finally:
        take_stop()
        spawner.close()
        box.close()
    assert seen.broken == "cannot start: the script helper did not start it within 0.5 s"
    assert seen.stopped_by == signal.SIGTERM
    assert took < 5, took
