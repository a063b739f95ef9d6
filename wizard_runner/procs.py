"""Stopping processes: a script's whole tree, and what it left running after it exited."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from typing import Final

import psutil

GRACE: Final = 5.0
_PR_SET_CHILD_SUBREAPER: Final = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (double-forked daemons) instead of letting init take them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_zombies() -> None:
    """Collect adopted children that have exited (only meaningful for a subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def signal_group(pgid: int, signum: int) -> bool:
    """Send a signal to a process group; False when the group is already gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # members we may not signal still exist
    return True


@dataclass(frozen=True)
class Leftover:
    """A process a script left running, as it was when found."""

    pid: int
    cmdline: str


def _belongs_to(process: psutil.Process, run_id: str, session: int) -> bool:
    if process.pid == os.getpid():
        return False
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # already dead, only waiting to be reaped
        if os.getsid(process.pid) == session:
            return True
        return bool(process.environ().get("WIZARD_RUN_ID") == run_id)
    except (psutil.Error, OSError):
        return False


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def _children(pid: int) -> list[int] | None:
    """A process's direct children from /proc (None when the kernel does not list them)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found += [int(child) for child in listing.read().split()]
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return found


def _descendants(pid: int) -> list[int] | None:
    """Every descendant of `pid`, walking /proc's children lists without recursion."""
    pending, found = [pid], []
    while pending:
        children = _children(pending.pop())
        if children is None:
            return None
        found += children
        pending += children
    return found


def find_leftovers(run_id: str, session: int, *, adopted: bool = False) -> list[psutil.Process]:
    """Processes a script left running.

    With `adopted` (the runner is a subreaper and runs nothing else meanwhile) every one of
    them is a descendant of the runner: its own children, or orphans re-parented to it, even a
    daemon that left the session and cleared its environment. That is a short walk of /proc's
    children lists. Otherwise (embedded in another process) they are found by session and by
    WIZARD_RUN_ID in their environment, which means reading the whole process table.
    """
    if adopted:
        return [p for p in _descendant_processes() if not _is_zombie(p)]
    return [p for p in psutil.process_iter() if _belongs_to(p, run_id, session)]


def _descendant_processes() -> list[psutil.Process]:
    pids = _descendants(os.getpid())
    if pids is None:  # no children lists in /proc: psutil reads every process's parent
        with contextlib.suppress(psutil.Error):
            return psutil.Process().children(recursive=True)
        return []
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def describe(process: psutil.Process) -> Leftover:
    """pid and command line, as far as they can still be read."""
    try:
        cmdline = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        cmdline = "?"
    return Leftover(process.pid, cmdline)


def stop_all(processes: list[psutil.Process], grace: float = GRACE) -> list[Leftover]:
    """Terminate, wait up to `grace` seconds, then kill what is left; return what was found."""
    found = [describe(process) for process in processes]
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    alive = _wait_dead(processes, grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_dead(alive, grace)
    return found


def _wait_dead(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie has); return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if p.is_running() and not _is_zombie(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and not _is_zombie(process):
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait until no live process is left in the group; True if it emptied in time.

    Zombies do not count: a killed member stays a zombie until its (adoptive) parent reaps it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.02)
    return False
