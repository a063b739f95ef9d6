"""Stopping processes, the one way: SIGTERM and SIGCONT, the grace, SIGKILL all at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import wait_until
from wizard_runner.procs import MAX_CMDLINE, Leftover, describe, stop

pytestmark = pytest.mark.processes


class Listed:
    """A set of processes given by hand; `kill` sends SIGKILL to each (and counts those it
    found to kill)."""

    def __init__(self, *processes: subprocess.Popen[bytes]) -> None:
        self.processes = list(processes)
        self.kills = 0

    def members(self) -> list[int]:
        """The ones that have not exited (reaped as they exit)."""
        return [p.pid for p in self.processes if p.poll() is None]

    def kill(self, spare: int | None = None) -> list[Leftover]:
        """SIGKILL all but `spare`."""
        found = [describe(pid) for pid in self.members() if pid != spare]
        for leftover in found:
            self.kills += 1
            os.kill(leftover.pid, signal.SIGKILL)
        return found


Sleeper = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def sleeper() -> Iterator[Sleeper]:
    """Start processes that sleep for a minute (optionally deaf to SIGTERM), each once it says
    so; whatever is left is killed and reaped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*, ignore_term: bool = False) -> subprocess.Popen[bytes]:
        trap = "trap '' TERM; " if ignore_term else ""
        process = subprocess.Popen(["sh", "-c", f"{trap}echo ready; exec sleep 60"],
                                   stdout=subprocess.PIPE)
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        wait_until(lambda: describe(process.pid).cmdline == "sleep 60", what="the exec")
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_sigterm_is_enough_for_a_process_that_listens(sleeper: Sleeper) -> None:
    """A process that ends on SIGTERM is not killed (the set's kill, made all the same,
    finds nothing left); it is reported with its command line."""
    process = sleeper()
    listed = Listed(process)
    found = stop(listed, grace=5)
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert listed.kills == 0
    assert [(leftover.pid, leftover.cmdline) for leftover in found] == [
        (process.pid, "sleep 60")]


class MissedOnce(Listed):
    """A set whose first look misses its members, as a list read by parentage can while a
    process moves to the subreaper."""

    def __init__(self, *processes: subprocess.Popen[bytes]) -> None:
        super().__init__(*processes)
        self.looks = 0

    def members(self) -> list[int]:
        """Nothing the first time."""
        self.looks += 1
        return [] if self.looks == 1 else super().members()


def test_one_empty_look_is_not_trusted(sleeper: Sleeper) -> None:
    """A member missed by the first look is found by the next and stopped."""
    process = sleeper()
    found = stop(MissedOnce(process), grace=5)
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert [leftover.pid for leftover in found] == [process.pid]


def test_a_process_deaf_to_sigterm_is_killed_after_the_grace(sleeper: Sleeper) -> None:
    """SIGTERM ignored: SIGKILL once the grace has passed, not before."""
    process = sleeper(ignore_term=True)
    started = time.monotonic()
    stop(Listed(process), grace=0.5)
    assert process.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5


def test_a_stopped_process_is_continued_so_that_it_sees_sigterm(sleeper: Sleeper) -> None:
    """A process stopped with SIGSTOP still ends on SIGTERM (SIGCONT goes with it)."""
    process = sleeper()
    os.kill(process.pid, signal.SIGSTOP)
    listed = Listed(process)
    stop(listed, grace=5)
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert listed.kills == 0


def test_the_spared_process_is_left_alone(sleeper: Sleeper) -> None:
    """`spare` (the helper) gets no signal at all."""
    spared, other = sleeper(ignore_term=True), sleeper(ignore_term=True)
    stop(Listed(spared, other), grace=0.2, spare=spared.pid)
    assert other.wait(timeout=5) == -signal.SIGKILL
    assert spared.poll() is None


def test_members_that_never_go_are_an_error(sleeper: Sleeper) -> None:
    """A set that still lists members after SIGKILL (stuck in the kernel) raises, naming them."""

    class Stuck(Listed):
        def kill(self, spare: int | None = None) -> list[Leftover]:
            self.kills += 1  # as if the kernel could not deliver it
            return []

    process = sleeper(ignore_term=True)
    with pytest.raises(OSError, match=f"processes {process.pid} did not end after SIGKILL"):
        stop(Stuck(process), grace=0.1)


def test_describe_says_what_runs_or_that_it_is_gone(sleeper: Sleeper) -> None:
    """pid and command line; `?` once the process is gone."""
    process = sleeper()
    assert describe(process.pid).cmdline == "sleep 60"
    process.kill()
    process.wait()
    assert describe(process.pid).cmdline == "?"


def test_describe_reads_a_huge_command_line_only_in_part() -> None:
    """A process may make its command line any size: only its first MAX_CMDLINE bytes are
    read and kept, marked as cut."""
    word = "x" * 100_000
    inner = "sleep 60; :"  # the shell waits for sleep, its own command line kept
    process = subprocess.Popen(["sh", "-c", f"echo ready; exec sh -c '{inner}' sh \"$@\"", "sh",
                                word, word], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        wait_until(lambda: describe(process.pid).cmdline.startswith(f"sh -c {inner}"),
                   what="the exec")
        cmdline = describe(process.pid).cmdline
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert cmdline.startswith(f"sh -c {inner} sh xxx")
    assert cmdline.endswith(" ...")
    assert len(cmdline) == MAX_CMDLINE + len(" ...")
