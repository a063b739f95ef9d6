"""Stopping process trees and finding what a script left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from wizard_runner.procs import (
    descendants,
    describe,
    signal_group,
    stop_all,
    wait_group_gone,
)

pytestmark = pytest.mark.processes


def test_descendants_are_the_whole_live_tree() -> None:
    """Children and grandchildren count, whatever their session; the process itself does not."""
    parent = subprocess.Popen(["sh", "-c", "setsid sleep 30 & (sleep 31 & wait) & wait"],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = {" ".join(p.cmdline()) for p in descendants(parent.pid)}
            if {"sleep 30", "sleep 31"} <= found:
                break
            time.sleep(0.02)
        assert {"sleep 30", "sleep 31"} <= found
        assert parent.pid not in {p.pid for p in descendants(parent.pid)}
    finally:
        for process in descendants(parent.pid):
            process.kill()
        parent.kill()
        parent.wait()
    assert descendants(parent.pid) == []


def test_zombies_are_not_descendants() -> None:
    """A child that exited but was not reaped yet is dead already: not a leftover."""
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert zombie.pid not in {p.pid for p in descendants(os.getpid())}
    zombie.wait()


def test_stop_all_escalates_to_kill() -> None:
    """A process ignoring SIGTERM is killed after the grace period, and described first."""
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30 & wait"],
                                start_new_session=True)
    time.sleep(0.2)
    target = psutil.Process(stubborn.pid)
    started = time.monotonic()
    found = stop_all([target], grace=0.5)
    stubborn.wait(timeout=10)
    assert time.monotonic() - started < 5
    assert found[0].pid == stubborn.pid
    assert "trap" in found[0].cmdline
    signal_group(stubborn.pid, signal.SIGKILL)


def test_group_helpers() -> None:
    """A group is signalled while it lives; once gone, the helpers say so."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    assert signal_group(child.pid, signal.SIGTERM) is True
    child.wait(timeout=10)
    assert wait_group_gone(child.pid, 2) is True
    assert signal_group(child.pid, signal.SIGTERM) is False
    assert describe(psutil.Process()).pid == os.getpid()
