"""The helper that runs the scripts: back to back, bounded, pausing, stopping, failing loudly."""

from __future__ import annotations

import errno
import os
import pwd
import resource
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from wizard_runner.spawner import Spawner, SpawnerError, Switch, _chunks
from wizard_runner.spawnhelper import WINDOW

pytestmark = pytest.mark.processes
ROOT = os.geteuid() == 0


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory every user can use (pytest's tmp dirs are 0700): scripts and their traces."""
    base = Path(tempfile.mkdtemp(prefix="wizard-runner-spawner-", dir="/tmp"))
    base.chmod(0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def scripts(place: Path, *bodies: str) -> list[str]:
    """Write one /bin/sh script per body, in order; their paths."""
    paths = []
    for index, body in enumerate(bodies):
        path = place / f"{index:02d}.sh"
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        paths.append(str(path))
    return paths


def www_data() -> Switch | None:
    """The switch to www-data when the tests run as root, else none (scripts run as us)."""
    if not ROOT:
        return None
    entry = pwd.getpwnam("www-data")
    return Switch(entry.pw_uid, entry.pw_gid, (entry.pw_gid,))


def follow(spawner: Spawner, *, go_on: bool = True) -> int | None:
    """Follow the next script to its end (its output unread); its exit code."""
    script = spawner.next_script()
    os.close(script.stdout)
    os.close(script.stderr)
    code = spawner.wait(script, 10)
    spawner.done_with(script, go_on=go_on)
    return code


def settle(path: Path, seconds: float = 0.5) -> str:
    """The file's text once it stopped changing for `seconds`."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < seconds:
        text = path.read_text() if path.exists() else ""
        if text != last:
            last, since = text, time.monotonic()
        time.sleep(0.02)
    return last or ""


def alive(marker: str) -> bool:
    """Whether a live process's command line contains `marker`."""
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(process.info["cmdline"] or []) and \
                process.info["status"] != psutil.STATUS_ZOMBIE:
            return True
    return False


def test_runs_the_list_in_order_as_the_run_user(place: Path) -> None:
    """Each script runs once, in order, as the switched user, with the given environment."""
    trace = place / "trace"
    paths = scripts(place, *[f'echo "{n} $(id -un) $GREETING" >> {trace}' for n in range(5)])
    user = "www-data" if ROOT else pwd.getpwuid(os.geteuid()).pw_name
    with Spawner({"GREETING": "hi", "PATH": "/usr/bin:/bin"}, paths, www_data()) as spawner:
        codes = [follow(spawner) for _ in paths]
    assert codes == [0] * 5
    assert trace.read_text().splitlines() == [f"{n} {user} hi" for n in range(5)]


def test_times_are_the_helpers(place: Path) -> None:
    """Start and end come from the helper's clock: the duration is the script's own."""
    paths = scripts(place, "sleep 0.3")
    with Spawner({}, paths, www_data()) as spawner:
        script = spawner.next_script()
        spawner.wait(script, 10)
        time.sleep(0.3)  # the runner looking late must not stretch the duration
        assert script.ended is not None
        assert 0.25 <= script.ended - script.started < 0.55
        for fd in script.pipes:
            os.close(fd)


def test_a_failure_pauses_the_helper(place: Path) -> None:
    """After a failing script nothing else starts, until the runner says so; close() ends it."""
    marker = place / "second-ran"
    paths = scripts(place, "exit 3", f"touch {marker}")
    with Spawner({}, paths, www_data()) as spawner:
        assert follow(spawner, go_on=False) == 3
        time.sleep(0.3)
        assert not marker.exists()
    assert not marker.exists()


def test_go_on_after_a_pause(place: Path) -> None:
    """A script that left a process running: the helper waits, the runner cleans, it goes on."""
    marker = f"sleep 9{os.getpid() % 1000}3"
    done = place / "second-ran"
    paths = scripts(place, f"setsid {marker} >/dev/null 2>&1 &", f"touch {done}")
    with Spawner({}, paths, www_data()) as spawner:
        first = spawner.next_script()
        for fd in first.pipes:
            os.close(fd)
        assert spawner.wait(first, 10) == 0
        assert first.left_behind and not first.clean
        time.sleep(0.2)
        assert not done.exists()  # paused
        for process in psutil.Process(spawner.pid).children(recursive=True):
            process.kill()
        deadline = time.monotonic() + 5
        while spawner.anything_left():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        spawner.done_with(first, go_on=True)
        assert follow(spawner) == 0
    assert done.exists()
    assert not alive(marker)


def test_the_helper_runs_at_most_a_window_ahead(place: Path) -> None:
    """With the runner not keeping up, the helper stops WINDOW scripts ahead of it."""
    trace = place / "trace"
    paths = scripts(place, *[f"echo {n} >> {trace}" for n in range(WINDOW + 10)])
    with Spawner({}, paths, www_data()) as spawner:
        script = spawner.next_script()  # starts the helper; the runner then falls behind
        assert len(settle(trace).splitlines()) == WINDOW
        for fd in script.pipes:
            os.close(fd)
    assert len(trace.read_text().splitlines()) == WINDOW


def wait_alive(marker: str) -> None:
    """Wait until a process with `marker` in its command line runs."""
    deadline = time.monotonic() + 10
    while not alive(marker):
        assert time.monotonic() < deadline, f"{marker} never started"
        time.sleep(0.02)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("{marker}", id="the-script-itself"),
        pytest.param("trap '' TERM; {marker} & wait", id="ignoring-sigterm"),
        pytest.param("setsid {marker} >/dev/null 2>&1 &", id="a-daemon-it-left"),
    ],
)
def test_close_stops_what_ran_past_the_last_followed_script(place: Path, body: str) -> None:
    """The helper went on to a script the runner never followed: closing stops it (SIGKILL
    after the grace), and what it left (re-parented to init otherwise) too."""
    marker = f"sleep 8{os.getpid() % 1000}{len(body)}"
    paths = scripts(place, "exit 0", body.format(marker=marker))
    started = time.monotonic()
    with Spawner({}, paths, www_data(), grace=0.5) as spawner:
        assert follow(spawner) == 0
        wait_alive(marker)
    assert not alive(marker)
    assert time.monotonic() - started < 5


def test_a_dead_helper_is_an_error_naming_it(place: Path) -> None:
    """The helper killed under a running script: the runner is told, it does not hang."""
    paths = scripts(place, "exec sleep 30")
    with Spawner({}, paths, www_data()) as spawner:
        script = spawner.next_script()
        assert spawner.pid is not None
        os.kill(spawner.pid, signal.SIGKILL)
        with pytest.raises(SpawnerError, match=rf"helper \(pid {spawner.pid}\) failed"):
            spawner.wait(script, 10)
        os.killpg(script.pid, signal.SIGKILL)
        for fd in script.pipes:
            os.close(fd)


def test_a_script_that_cannot_start_is_an_os_error(place: Path) -> None:
    """No #! line: the errno comes back as OSError, and the helper pauses."""
    path = place / "00-plain"
    path.write_text("echo no shebang\n")
    path.chmod(0o755)
    with Spawner({}, [str(path)], www_data()) as spawner:
        with pytest.raises(OSError, match="Exec format error") as caught:
            spawner.next_script()
        assert caught.value.filename == str(path)


def test_setup_failure_is_reported_with_its_reason(place: Path) -> None:
    """A user switch the helper cannot make ends with the helper's own words."""
    paths = scripts(place, "exit 0")
    with Spawner({}, paths, Switch(os.geteuid(), os.getegid(), (2**40,))) as spawner, \
            pytest.raises(SpawnerError, match="OverflowError"):
        spawner.next_script()


def test_a_missing_interpreter_is_reported() -> None:
    """The helper's Python itself cannot start: say which."""
    with Spawner({}, ["/bin/true"], None, python="/nonexistent/python3") as spawner, \
            pytest.raises(SpawnerError, match="/nonexistent/python3"):
        spawner.next_script()


@pytest.mark.parametrize(
    ("sizes", "limit", "groups"),
    [
        pytest.param([3, 3, 3], 8, [[3, 3], [3]], id="split"),
        pytest.param([3, 3], 8, [[3, 3]], id="fits"),
        pytest.param([20], 8, [[20]], id="one-too-long-still-sent"),
        pytest.param([], 8, [[]], id="none"),
    ],
)
def test_path_lists_are_cut_into_messages(sizes: list[int], limit: int,
                                          groups: list[list[int]]) -> None:
    """Each message holds as many paths (plus separators) as fit; order is kept."""
    items = [bytes([65 + n]) * size for n, size in enumerate(sizes)]
    chunks = _chunks(items, limit)
    assert [[len(item) for item in chunk] for chunk in chunks] == groups
    assert [item for chunk in chunks for item in chunk] == items


def test_hold_stops_the_helper_after_a_clean_end(place: Path) -> None:
    """Held (before the runner signals a script), the helper does not follow even an exit 0."""
    marker = place / "second-ran"
    paths = scripts(place, "sleep 0.3", f"touch {marker}")
    with Spawner({}, paths, www_data()) as spawner:
        script = spawner.next_script()
        spawner.hold(script)
        assert spawner.wait(script, 10) == 0
        time.sleep(0.3)
        assert not marker.exists()
        script.close_pipes()
        spawner.done_with(script, go_on=True)  # the runner's word releases it
        assert follow(spawner) == 0
    assert marker.exists()


def test_stop_started_reports_scripts_run_ahead(place: Path) -> None:
    """What the helper started past the runner comes back, ended, with its output unread."""
    paths = scripts(place, "exit 0", "echo ahead; exit 0", "sleep 30")
    with Spawner({}, paths, www_data(), grace=0.5) as spawner:
        assert follow(spawner) == 0
        time.sleep(0.5)  # the helper runs the second, then the third
        ahead = spawner.stop_started()
        assert [script.index for script in ahead] == [1, 2]
        assert ahead[0].returncode == 0
        assert os.read(ahead[0].stdout, 100) == b"ahead\n"
        assert ahead[1].returncode == -signal.SIGTERM
        for script in ahead:
            script.close_pipes()


def test_a_late_hold_cannot_release_a_later_pause(place: Path) -> None:
    """The hold came after its script ended (the helper went on): its go-on must not release
    the pause after the next, failing script."""
    marker = place / "third-ran"
    paths = scripts(place, "exit 0", "sleep 0.3; exit 1", f"touch {marker}")
    with Spawner({}, paths, www_data()) as spawner:
        first = spawner.next_script()
        time.sleep(0.1)  # the first ended; the helper is running the second
        spawner.hold(first)
        assert spawner.wait(first, 10) == 0
        first.close_pipes()
        spawner.done_with(first, go_on=True)
        assert follow(spawner, go_on=False) == 1
        time.sleep(0.3)
        assert not marker.exists()
    assert not marker.exists()


def test_descriptor_numbers_above_1024_do_not_matter(place: Path) -> None:
    """An embedding process holding many files: the helper's socket lands above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"needs an fd limit of at least 2048 (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with Spawner({}, scripts(place, "exit 0"), www_data()) as spawner:
            assert follow(spawner) == 0
            assert spawner.fileno() >= 1024
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_script_that_could_not_start_ahead_is_known(place: Path) -> None:
    """The helper ran ahead into a file it cannot execute: the errno is kept for the report."""
    plain = place / "01-plain"
    plain.write_text("echo no shebang\n")
    plain.chmod(0o755)
    paths = [*scripts(place, "exit 0"), str(plain)]
    with Spawner({}, paths, www_data()) as spawner:
        assert follow(spawner) == 0
        time.sleep(0.3)  # the helper tries the second one meanwhile
        assert spawner.stop_started() == []
        assert spawner.could_not_start() == {1: errno.ENOEXEC}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"BAD": "a\0b"}, "'BAD' cannot be passed on", id="nul"),
        pytest.param({"A=B": "c"}, "'A=B' cannot be passed on", id="equals-in-name"),
        pytest.param({"BIG": "x" * 70000}, "more than the 65536", id="too-large"),
    ],
)
def test_an_environment_the_helper_cannot_take_is_named(place: Path, env: dict[str, str],
                                                       message: str) -> None:
    """Refused before the helper starts, naming the variable or the size."""
    with Spawner(env, scripts(place, "exit 0"), www_data()) as spawner, \
            pytest.raises(SpawnerError, match=message):
        spawner.next_script()
    assert spawner.pid is None


def test_a_malformed_answer_is_a_helper_failure(place: Path) -> None:
    """A message too short for its kind: SpawnerError naming it, not a struct error."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spawner = Spawner({}, scripts(place, "exit 0"), grace=0.2)
    spawner._control = ours  # a fake helper on the other end
    theirs.send(b"L")  # an answer to C without its byte
    try:
        with pytest.raises(SpawnerError, match="malformed answer to a reap"):
            spawner.anything_left()
        assert theirs.recv(10) == b"C"
    finally:
        spawner.close()
        theirs.close()
