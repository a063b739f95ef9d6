"""The step's containment: a cgroup of its own where one can be made, else the fallback that
follows parentage; both list every process the step started and kill them all at once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, Reliability
from tests.helpers import add_script, alive, run_step, scripts_of, shared_dir, wait_until
from wizard_runner.config import WizardConfig
from wizard_runner.procs import Leftover
from wizard_runner.result import RunStatus
from wizard_runner.scripts.containment import (
    CONTAINMENT_ENV,
    PREFIX,
    Cgroup,
    Containment,
    Subreaper,
    _cgroup_parent,
    _children,
    cgroup2_mount,
    clear_killed,
    contain,
    own_cgroup,
)

CGROUP_PARENT = _cgroup_parent()
needs_cgroup = pytest.mark.skipif(CGROUP_PARENT is None,
                                  reason="needs a writable cgroup v2 (root, delegation)")

MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(MOUNTINFO, (Path("/sys/fs/cgroup/unified"), "/"), id="hybrid-unified"),
        pytest.param("29 23 0:26 /init.scope /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                     (Path("/sys/fs/cgroup"), "/init.scope"), id="namespaced-root"),
        pytest.param("25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n", None, id="none"),
    ],
)
def test_the_cgroup2_mount_is_found_wherever_it_is(text: str,
                                                   expected: tuple[Path, str] | None) -> None:
    """/sys/fs/cgroup on Debian 12, /sys/fs/cgroup/unified on hybrid hosts, or none."""
    assert cgroup2_mount(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0::/system.slice/wizard-runnerd.service\n",
                     "/system.slice/wizard-runnerd.service", id="unit"),
        pytest.param("4:memory:/x\n0::/\n", "/", id="hybrid-root"),
        pytest.param("4:memory:/x\n", None, id="v1-only"),
    ],
)
def test_the_own_cgroup_is_the_v2_line(text: str, expected: str | None) -> None:
    """The `0::` line of /proc/self/cgroup, the v1 lines ignored."""
    assert own_cgroup(text) == expected


@pytest.fixture(params=[pytest.param("cgroup", marks=needs_cgroup), "subreaper"])
def box(request: pytest.FixtureRequest) -> Iterator[Containment]:
    """A containment of each kind (the cgroup one where it can be made)."""
    made: Containment
    if request.param == "cgroup":
        assert CGROUP_PARENT is not None
        made = Cgroup.create(CGROUP_PARENT, f"test{os.getpid()}")
    else:
        made = Subreaper()
    yield made
    made.close()


def forker(box: Containment, script: str) -> subprocess.Popen[bytes]:
    """A shell running `script`, in a session of its own as the helper is, put in `box`
    before it starts anything (it waits for a line on stdin), started once it said so on
    stdout."""
    process = subprocess.Popen(["sh", "-c", f"read go; {script}"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, start_new_session=True)
    box.adopt(process.pid)
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.close()
    return process


def settle(box: Containment, count: int) -> list[int]:
    """The members once there are `count` of them (5 s at most)."""
    deadline = time.monotonic() + 5
    while len(members := box.members()) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return members


@pytest.mark.processes
def test_members_are_everything_started_within(box: Containment) -> None:
    """What the adopted process starts is a member too, even after it left its session."""
    process = forker(box, "setsid sleep 60 & sleep 60 & echo ready; wait")
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    assert len(settle(box, 3)) == 3
    box.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert settle(box, 0) == []
    process.stdout.close()


def hopper_is_killed(box: Containment, command: str, marker: str) -> None:
    """Start the hopper `command` in `box`, let generations come and go, kill all but the
    process that started it: nothing of it is left, in the set or out of it (to init, say)."""
    process = forker(box, f"{command} & echo ready; sleep 60")
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == b"ready\n"
        time.sleep(0.3)  # let generations come and go
        box.kill(spare=process.pid)
        time.sleep(0.3)  # any survivor would have forked again by now
        assert [pid for pid in box.members() if pid != process.pid] == []
        assert alive(marker) == []
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        for pid in alive(marker):  # (a survivor, should the test fail)
            os.kill(pid, signal.SIGKILL)


@pytest.mark.processes
def test_a_fork_hopper_is_killed_at_once(box: Containment, tmp_path: Path) -> None:
    """Each generation forks the next and exits within milliseconds, deaf to SIGTERM: one
    kill ends them all, nothing comes back."""
    hop = tmp_path / "hop.sh"
    hop.write_text("trap '' TERM\nsleep 0.002\nsh \"$0\" &\n")
    hopper_is_killed(box, f"trap '' TERM; sh {hop}", str(hop))


#: A hopper with no pause at all, as fast as fork goes: each generation forks the next at
#: once and exits (SIGTERM ignored, in a session of its own), for argv[1] seconds.
FAST_HOPPER = r"""
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 10);
    signal(SIGTERM, SIG_IGN);
    setsid();
    while (time(NULL) < end)
        if (fork() > 0)
            _exit(0);
    return 0;
}
"""


@pytest.fixture
def fast_hopper(script_root: Path) -> Path:
    """FAST_HOPPER, compiled (Python forks too slowly to be one), where scripts may run it."""
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("needs a C compiler for the hopper (apt-get install gcc; CI installs it)")
    source = script_root / "fast-hopper.c"
    source.write_text(FAST_HOPPER)
    binary = script_root / "fast-hopper"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True, timeout=60)
    binary.chmod(0o755)
    return binary


@pytest.mark.processes
def test_a_hopper_without_pause_is_killed_too(box: Containment, fast_hopper: Path) -> None:
    """A hopper that forks as fast as it can: the kill ends it as well (the fallback kills
    what each death leaves to a subreaper until nothing comes), nothing survives."""
    hopper_is_killed(box, f"{fast_hopper} 3", str(fast_hopper))


@pytest.mark.processes
@pytest.mark.parametrize("containment", [pytest.param("cgroup", marks=needs_cgroup),
                                         "subreaper"])
def test_a_hopper_without_pause_left_by_a_script_is_killed(
    config: WizardConfig, script_root: Path, fast_hopper: Path, containment: str,
    monkeypatch: pytest.MonkeyPatch, reliability: Reliability
) -> None:
    """A script leaves a hopper that forks as fast as it can: it is killed before the next
    script starts (which sees it no more), and nothing of it outlives the step."""
    monkeypatch.setenv(CONTAINMENT_ENV, containment)
    add_script(script_root, "10-hops", f"{fast_hopper} 3 >/dev/null 2>&1 &\nsleep 0.2")
    add_script(script_root, "20-next", "echo next")
    try:
        result = run_step(config, script_root)
        hops, after = (scripts_of(result)[name] for name in ("10-hops", "20-next"))
        ok = (alive(str(fast_hopper)) == [] and hops["status"] == "succeeded"
              and bool(hops["leftovers"]) and after["leftovers"] == [])
        reliability.record(area="scripts", fault=f"a fork-hopper without pause ({containment})",
                           injection="a compiled hopper left running: fork, exit, again, "
                           "SIGTERM ignored, own session", trials=1, lost=0 if ok else 1,
                           outcome="killed before the next script, listed as left; none "
                           "outlives the step")
        assert ok, (hops, after)
    finally:
        for pid in alive(str(fast_hopper)):  # (a survivor, should the test fail)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.processes
def test_the_fallback_says_when_what_it_kills_keeps_coming(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The fallback never says a set is empty on a guess: a process its SIGKILL does not end
    (as if the kernel could not deliver it) past SETTLE is an OSError, which fails the
    script that left it."""
    box = Subreaper()
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the step's: adopted
    monkeypatch.setattr("wizard_runner.scripts.containment.SETTLE", 0.3)
    monkeypatch.setattr("wizard_runner.scripts.containment.send", lambda pids, signum: None)
    try:
        with pytest.raises(OSError, match="keep coming back faster than they can be killed"):
            box.kill()
    finally:
        process.kill()
        process.wait()
        monkeypatch.undo()
        box.close()


def stale_cgroup(*command: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """A step cgroup as a killed runner leaves it (named for a pid that is gone), with
    `command` running in it."""
    assert CGROUP_PARENT is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = CGROUP_PARENT / f"{PREFIX}{dead.pid}.stale"
    stale.mkdir()
    orphan = subprocess.Popen(list(command))
    (stale / "cgroup.procs").write_text(f"{orphan.pid}\n")
    return stale, orphan


@needs_cgroup
@pytest.mark.processes
def test_a_cgroup_made_inside_the_steps_goes_with_it() -> None:
    """A script run as root may make a cgroup inside the step's and move there: the step's
    end kills what runs in it and removes both (one left would hold up every later run)."""
    assert CGROUP_PARENT is not None
    box = Cgroup.create(CGROUP_PARENT, f"nested{os.getpid()}")
    inner = box.path / "made-by-a-script"
    inner.mkdir()
    process = subprocess.Popen(["sleep", "60"])
    try:
        (inner / "cgroup.procs").write_text(f"{process.pid}\n")
        box.close()
        assert process.wait(timeout=10) == -signal.SIGKILL
        assert not box.path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_cgroup
@pytest.mark.processes
def test_a_cgroup_left_by_a_killed_runner_is_cleared() -> None:
    """A step cgroup whose runner is gone is emptied and removed by the next step's start."""
    assert CGROUP_PARENT is not None
    renamed, orphan = stale_cgroup("sleep", "60")
    fresh = Cgroup.create(CGROUP_PARENT, "fresh")
    try:
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert not renamed.exists()
        assert fresh.cleared == [Leftover(orphan.pid, "sleep 60")]
    finally:
        fresh.close()
    assert not fresh.path.exists()


@needs_cgroup
@pytest.mark.processes
def test_a_killed_runs_cgroup_is_the_only_one_cleared_across_the_hierarchy() -> None:
    """The next run clears the killed run's cgroup wherever it is, and only that one: a
    cgroup named for a pid this namespace does not have may be a container's live run."""
    assert CGROUP_PARENT is not None
    killed, killed_orphan = stale_cgroup("sleep", "62")
    pid, run_id = killed.name.removeprefix(PREFIX).split(".", 1)
    elsewhere = CGROUP_PARENT / f"{PREFIX}4000001.20261205T000000Z-0badc0de"
    elsewhere.mkdir()
    theirs = subprocess.Popen(["sleep", "63"])
    try:
        (elsewhere / "cgroup.procs").write_text(f"{theirs.pid}\n")
        assert clear_killed(int(pid), run_id) == [Leftover(killed_orphan.pid, "sleep 62")]
        assert killed_orphan.wait(timeout=10) == -signal.SIGKILL
        assert not killed.exists()
        assert theirs.poll() is None
        assert elsewhere.exists()
    finally:
        theirs.kill()
        theirs.wait()
        Cgroup(elsewhere).close()


@needs_cgroup
@pytest.mark.processes
def test_what_a_killed_runner_left_is_logged_as_it_is_killed(config: WizardConfig,
                                                            script_root: Path) -> None:
    """The next step kills what ran in a killed runner's cgroup, and logs each with its pid
    and command line."""
    _, orphan = stale_cgroup("sleep", "61")
    add_script(script_root, "10-ok", "true")
    result = run_step(config, script_root)
    assert orphan.wait(timeout=10) == -signal.SIGKILL
    assert result.status is RunStatus.SUCCEEDED
    events = [json.loads(line) for line in
              (script_root / "var/log/wizard-runner/wizard-runner.log").read_text().splitlines()]
    assert {"pid": orphan.pid, "cmdline": "sleep 61", "of": "an earlier run that was killed"
            }.items() <= next(e for e in events if e["event"] == "leftover_killed").items()


@needs_cgroup
@pytest.mark.processes
def test_a_killed_runs_leftovers_are_killed_by_the_next_run_wherever_it_starts(
    script_root: Path,
) -> None:
    """SIGKILL of the runner while its script runs and has left a process: the next run,
    with no scripts step and started from another cgroup, finds that run killed, kills what
    it left, logs each, and removes its cgroup."""
    assert CGROUP_PARENT is not None
    marker = f"sleep 7{os.getpid() % 1000}1"
    ready = shared_dir(script_root) / "ready"
    add_script(script_root, "10-leaves", f"setsid {marker} </dev/null >/dev/null 2>&1 & "
               f"touch {ready}; exec {marker}")
    run = [str(Path(sys.executable).parent / "wizard-runner"), "run", "--config",
           str(EXAMPLES / "wizard.json"), "--root", str(script_root), "--no-system-conf"]
    with subprocess.Popen([*run, "--scripts", "--user", "www-data"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as first:
        wait_until(ready.exists, what="the script to start")
        wait_until(lambda: len(alive(marker)) == 2, what="both processes to run")
        left = list(CGROUP_PARENT.glob(f"{PREFIX}{first.pid}.*"))
        first.kill()
    assert len(left) == 1
    other = CGROUP_PARENT / f"wizard-runner-test-other.{os.getpid()}"
    other.mkdir()
    try:
        second = subprocess.run(
            [*run, "--no-scripts", "--json"], capture_output=True, text=True, timeout=60,
            check=False,
            preexec_fn=lambda: (other / "cgroup.procs").write_text(f"{os.getpid()}\n"))
    finally:
        wait_until(lambda: not (other / "cgroup.procs").read_text(), what="the run to exit")
        other.rmdir()
    assert second.returncode == 0, second.stderr
    assert alive(marker) == []
    assert not left[0].exists()
    events = [json.loads(line) for line in
              (script_root / "var/log/wizard-runner/wizard-runner.log").read_text().splitlines()]
    assert sorted((e["cmdline"], e["of"]) for e in events if e["event"] == "leftover_killed"
                  ) == [(marker, "an earlier run that was killed")] * 2


@pytest.mark.processes
def test_the_fallback_spares_an_embedding_applications_children_and_leaves_no_zombie(
    config: WizardConfig, script_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (confd's API) under the fallback: a child the application starts from
    another thread while a script runs is not the step's (it is in the application's
    session): it lives on and ends as it would. What the scripts left is killed, and reaped:
    a long-lived process collects no zombie of theirs."""
    monkeypatch.setenv(CONTAINMENT_ENV, "subreaper")
    ready = shared_dir(script_root) / "ready"
    add_script(script_root, "10-runs", f"sleep 1000 & touch {ready}; sleep 1")
    add_script(script_root, "20-kills-its-helper", "sleep 1000 & sleep 0.2; kill -KILL $PPID")
    before = set(_children(os.getpid()))
    children: list[subprocess.Popen[bytes]] = []

    def application() -> None:
        wait_until(ready.exists, what="the script to run")
        children.append(subprocess.Popen(["sleep", "2"]))

    thread = threading.Thread(target=application)
    thread.start()
    result = run_step(config, script_root)
    thread.join()
    assert scripts_of(result)["20-kills-its-helper"]["reason"] == \
        "the script killed the helper that ran it (SIGKILL)"
    assert children[0].poll() is None  # still running, not killed with the step
    assert children[0].wait(timeout=10) == 0
    assert set(_children(os.getpid())) - before == set()  # nothing left, not even a zombie


def test_the_fallback_is_chosen_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """WIZARD_RUNNER_CONTAINMENT=subreaper makes the step use the fallback."""
    monkeypatch.setenv("WIZARD_RUNNER_CONTAINMENT", "subreaper")
    chosen = contain("test")
    try:
        assert chosen.name == "subreaper"
    finally:
        chosen.close()
