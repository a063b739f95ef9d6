"""The runner's side of the helper: start it contained, one script per order, and every way
the helper can go wrong named as a HelperError."""

from __future__ import annotations

import errno
import os
import pwd
import select
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import traversable_dir, write_script
from wizard_runner.scripts.containment import Subreaper
from wizard_runner.scripts.helper import Kind
from wizard_runner.scripts.spawner import HelperError, Spawner, Switch

pytestmark = pytest.mark.processes
ROOT = os.geteuid() == 0


def www_data() -> Switch | None:
    """The switch to www-data when the tests run as root, else none (scripts run as us)."""
    if not ROOT:
        return None
    entry = pwd.getpwnam("www-data")
    return Switch(entry.pw_uid, entry.pw_gid, (entry.pw_gid,))


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


def until_exited(spawner: Spawner, index: int) -> tuple[int, bool]:
    """Wait for the EXITED of script `index`: its exit code and whether anything is left."""
    assert select.select([spawner.control], [], [], 10)[0]
    exited = spawner.exited(spawner.receive(), index)
    return exited.returncode, exited.left


def test_runs_a_script_as_the_run_user(spawner: Spawner, place: Path) -> None:
    """The script runs as the switched user; its output comes through the pipes handed back."""
    script = write_script(place, "10-id", "id -u")
    started = spawner.run(0, str(script))
    with os.fdopen(started.stdout, "rb") as out, os.fdopen(started.stderr, "rb"):
        expected = str(www_data().uid if ROOT else os.geteuid())  # type: ignore[union-attr]
        assert out.read().decode().strip() == expected
    assert until_exited(spawner, 0) == (0, False)


def test_a_script_that_cannot_start_is_an_os_error(spawner: Spawner, place: Path) -> None:
    """No #! line: OSError ENOEXEC naming the path; the helper goes on."""
    script = place / "10-plain"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    with pytest.raises(OSError) as caught:
        spawner.run(0, str(script))
    assert caught.value.errno == errno.ENOEXEC
    assert caught.value.filename == str(script)
    started = spawner.run(1, "/bin/true")
    os.close(started.stdout)
    os.close(started.stderr)
    assert until_exited(spawner, 1) == (0, False)


def test_a_killed_helper_is_named(spawner: Spawner, place: Path) -> None:
    """The helper killed: the next order fails saying it was killed by SIGKILL."""
    os.kill(spawner.pid, signal.SIGKILL)
    with pytest.raises(HelperError, match="the script helper was killed by SIGKILL"):
        spawner.run(0, str(write_script(place, "10-x", "true")))


def test_a_stopped_helper_is_seen_at_once(spawner: Spawner) -> None:
    """A stopped helper sends nothing: its state says so."""
    assert spawner.state() is None
    os.kill(spawner.pid, signal.SIGSTOP)
    assert select.select([], [], [], 0.1) == ([], [], [])  # the stop takes effect
    assert spawner.state() == "was stopped"
    os.kill(spawner.pid, signal.SIGKILL)


def test_an_answer_out_of_turn_is_a_helper_error(spawner: Spawner, place: Path) -> None:
    """An EXITED for another script than the one running is refused."""
    started = spawner.run(0, str(write_script(place, "10-x", "true")))
    os.close(started.stdout)
    os.close(started.stderr)
    assert select.select([spawner.control], [], [], 10)[0]
    with pytest.raises(HelperError, match="said EXITED while script #5 ran"):
        message = spawner.receive()
        spawner.exited((message[0], (9, *message[1][1:]), message[2]), 5)
    assert Kind.EXITED is message[0]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"A\0B": "x"}, "cannot be passed on", id="nul"),
        pytest.param({"A=B": "x"}, "cannot be passed on", id="equals"),
        pytest.param({"BIG": "x" * 70000}, "more than the 65536 the helper takes", id="size"),
    ],
)
def test_an_environment_the_helper_cannot_take_is_named(env: dict[str, str],
                                                        message: str) -> None:
    """The scripts' environment is checked before the helper starts."""
    with pytest.raises(HelperError, match=message):
        Spawner(env, None, Subreaper())


def test_no_interpreter_is_a_helper_error() -> None:
    """An embedding process without sys.executable cannot start the helper: said so."""
    box = Subreaper()
    try:
        with pytest.raises(HelperError, match="no Python interpreter known"):
            Spawner({}, None, box, python="").start()
    finally:
        box.close()


def test_a_helper_that_cannot_switch_says_why(place: Path) -> None:
    """A helper that fails before READY (here: an unknown group list) is named with its
    reason, not a timeout."""
    box = Subreaper()
    broken = Spawner({}, Switch(65534, 65534, (-5,)), box)
    try:
        with pytest.raises(HelperError, match="the script helper failed: "):
            broken.start()
    finally:
        broken.close()
        box.close()
