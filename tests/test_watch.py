"""One script's watch under both containments: a script cannot escape it, stall it or outlive
it, whatever it does to the helper that ran it."""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import add_script, no_process_with, run_step, scripts_of
from wizard_runner.config import WizardConfig
from wizard_runner.result import RunStatus
from wizard_runner.scripts.containment import CONTAINMENT_ENV, _cgroup_parent
from wizard_runner.scripts.spawner import PIPE_SIZE
from wizard_runner.scripts.watch import Watch

pytestmark = pytest.mark.processes


@pytest.fixture(params=[
    pytest.param("cgroup", marks=pytest.mark.skipif(
        _cgroup_parent() is None, reason="needs a writable cgroup v2 (root, delegation)")),
    "subreaper",
])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each containment in turn: the step's own cgroup, and the subreaper fallback."""
    if request.param == "subreaper":
        monkeypatch.setenv(CONTAINMENT_ENV, "subreaper")
    else:
        monkeypatch.delenv(CONTAINMENT_ENV, raising=False)
    return str(request.param)


@pytest.fixture
def root(script_root: Path) -> Path:
    """A traversable root with an empty wizard.d."""
    return script_root


def marker(tag: str) -> str:
    """A command line no other process has: `sleep 3<pid><tag>`."""
    return f"sleep 3{os.getpid() % 1000}{tag}"


def test_a_script_that_kills_its_helper(config: WizardConfig, root: Path,
                                        containment: str) -> None:
    """`kill -KILL $PPID` after leaving a daemon behind: the script fails naming it, the rest
    are not run, and nothing is left running."""
    sleeper = marker("1")
    add_script(root, "10-escape", f"setsid {sleeper} </dev/null >/dev/null 2>&1 & "
               "sleep 0.3; kill -KILL $PPID; sleep 5")
    add_script(root, "20-after", "echo never")
    result = run_step(config, root)
    found = scripts_of(result)
    assert result.status is RunStatus.FAILED
    assert found["10-escape"]["status"] == "failed"
    assert found["10-escape"]["reason"] == "the script killed the helper that ran it (SIGKILL)"
    assert found["20-after"]["status"] == "not_run"
    assert no_process_with(sleeper)
    # What it left was killed with the rest, and is said like any other leftover.
    assert sleeper in [left.split(" ", 1)[1] for left in found["10-escape"]["leftovers"]]


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs /usr/bin/python3 for a process whose main thread exits")
def test_a_process_whose_main_thread_exited_is_found(config: WizardConfig, root: Path,
                                                      containment: str) -> None:
    """A process whose main thread has exited looks a zombie while its other thread runs: it
    is a leftover all the same, found, killed and said."""
    tag = marker("7")
    program = ("import ctypes, threading, time; "
               "threading.Thread(target=lambda: time.sleep(60)).start(); "
               "ctypes.CDLL(None).pthread_exit(None)")
    add_script(root, "10-half-dead",
               f"/usr/bin/python3 -c '{program}' {tag} </dev/null >/dev/null 2>&1 & sleep 0.5")
    result = run_step(config, root)
    found = scripts_of(result)["10-half-dead"]
    assert found["status"] == "succeeded"
    assert len(found["leftovers"]) == 1
    assert tag in found["leftovers"][0]
    assert no_process_with(tag)


def test_a_fork_hopper_deaf_to_sigterm(config: WizardConfig, root: Path,
                                       containment: str) -> None:
    """Generations of ~2 ms each, ignoring SIGTERM: all of them are gone when the step ends,
    within the grace and a little more."""
    hop = root / "hop.sh"
    hop.write_text(f"trap '' TERM\n{marker('2')}.002\nsh \"$0\" &\n")
    hop.chmod(0o755)
    add_script(root, "10-hopper", f"trap '' TERM; sh {hop} & echo started")
    started = time.monotonic()
    result = run_step(config, root)
    assert time.monotonic() - started < 8
    found = scripts_of(result)["10-hopper"]
    assert found["status"] == "succeeded"
    assert found["leftovers"]
    time.sleep(0.1)  # a survivor would fork again
    assert no_process_with(str(hop))


def test_a_script_that_stops_its_helper_with_no_timeout(config: WizardConfig, root: Path,
                                                        containment: str) -> None:
    """`kill -STOP $PPID` with no time limit cannot hang the step: it fails within seconds,
    naming what the script did, and nothing is left stopped."""
    add_script(root, "10-stop", f"{marker('3')} & kill -STOP $PPID; exit 0")
    add_script(root, "20-after", "echo never")
    started = time.monotonic()
    result = run_step(config, root, timeout=None)
    assert time.monotonic() - started < 5
    found = scripts_of(result)
    assert found["10-stop"]["status"] == "failed"
    assert found["10-stop"]["reason"] == "the script stopped the helper that ran it"
    assert found["20-after"]["reason"] == "not run: the script helper failed at 10-stop"
    assert no_process_with(marker("3"))


def test_the_result_says_which_containment(config: WizardConfig, root: Path,
                                           containment: str) -> None:
    """The result and the log name the containment the step used."""
    add_script(root, "10-ok", "true")
    result = run_step(config, root)
    log = (root / "var/log/wizard-runner/wizard-runner.log").read_text()
    assert result.status is RunStatus.SUCCEEDED
    assert result.containment == containment
    assert f'"containment": "{containment}"' in log


@pytest.mark.parametrize("signal_sent", ["STOP", "KILL"])
def test_what_a_script_left_cannot_get_the_next_one_blamed(
        config: WizardConfig, root: Path, containment: str, signal_sent: str) -> None:
    """A leftover that signals the helper as it is stopped: the script that left it fails
    for it, and the next one does not run (it is not blamed)."""
    add_script(root, "10-leaver", f"H=$PPID; ( trap 'kill -{signal_sent} '$H'; exit 0' TERM; "
               "exec >/dev/null 2>&1; while :; do sleep 0.05; done ) & echo left")
    add_script(root, "20-innocent", "echo innocent")
    result = run_step(config, root)
    found = scripts_of(result)
    assert found["10-leaver"]["status"] == "failed"
    assert found["10-leaver"]["reason"] in {
        "the script stopped the helper that ran it",
        "the script killed the helper that ran it (SIGKILL)",
        "the script, or what it left, signalled the helper that ran it"}
    assert found["20-innocent"]["status"] == "not_run"
    assert found["20-innocent"]["reason"] == "not run: the script helper failed at 10-leaver"


def test_the_helper_ignores_every_signal_it_can(config: WizardConfig, root: Path,
                                                containment: str) -> None:
    """Signals that would end a process by default, sent to the helper by a script, change
    nothing: only SIGSTOP and SIGKILL can reach it, and the watch looks for those."""
    add_script(root, "10-noisy", "for s in TERM INT HUP USR1 USR2 ALRM PIPE TSTP TTIN QUIT; "
               "do kill -$s $PPID; done; sleep 0.1; echo done")
    add_script(root, "20-next", "echo next")
    result = run_step(config, root)
    found = scripts_of(result)
    assert found["10-noisy"]["status"] == "succeeded", found["10-noisy"]
    assert found["20-next"]["status"] == "succeeded"


class _Refilling:
    """A script's output that a writer which escaped the kill keeps full: each feed writes
    as much again into the pipe."""

    def __init__(self, write_end: int) -> None:
        self.write_end = write_end
        self.fed = 0
        self.ended: list[str] = []

    def feed(self, _stream: str, data: bytes) -> None:
        self.fed += len(data)
        os.write(self.write_end, b"x" * len(data))

    def end(self, stream: str) -> None:
        self.ended.append(stream)


def test_reading_what_a_broken_step_left_is_bounded() -> None:
    """Once the helper failed and all is killed, what is left in the output pipes is read up
    to what a pipe holds: a writer that escaped the kill cannot keep the runner reading."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.write(write_end, b"x" * 4096)
    output = _Refilling(write_end)
    watch = Watch.__new__(Watch)
    watch.pipes, watch.poller = {read_end: "stdout"}, select.poll()
    watch.output = output  # type: ignore[assignment]  # what _read_the_rest uses of one
    reader = threading.Thread(target=watch._read_the_rest, daemon=True)
    try:
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "still reading a pipe that never empties"
    finally:
        os.close(write_end)
    assert output.ended == ["stdout"]
    assert PIPE_SIZE <= output.fed < PIPE_SIZE + 4096 + 1
    assert watch.pipes == {}
