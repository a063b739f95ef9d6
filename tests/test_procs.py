"""Stopping process trees and finding what a script left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from wizard_runner.procs import (
    describe,
    find_leftovers,
    signal_group,
    stop_all,
    wait_group_gone,
)

pytestmark = pytest.mark.processes


def test_descendants_are_leftovers_for_a_subreaper() -> None:
    """In subreaper mode every live descendant counts, whatever its session or environment."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True, env={})
    try:
        found = {p.pid for p in find_leftovers("no-such-run", -1, adopted=True)}
        assert child.pid in found
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {p.pid for p in find_leftovers("no-such-run", -1, adopted=True)}


def test_session_and_run_id_when_embedded() -> None:
    """Embedded (no subreaper): the script's session, or its WIZARD_RUN_ID, marks a leftover."""
    by_session = subprocess.Popen(["sleep", "30"], start_new_session=True)
    by_env = subprocess.Popen(["sleep", "31"], start_new_session=True,
                              env={"WIZARD_RUN_ID": "run-42"})
    try:
        found = {p.pid for p in find_leftovers("run-42", by_session.pid)}
        assert {by_session.pid, by_env.pid} <= found
        assert os.getpid() not in found
    finally:
        for process in (by_session, by_env):
            process.kill()
            process.wait()


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
