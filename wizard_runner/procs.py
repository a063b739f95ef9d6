"""Stopping processes: a script's whole tree, and what it left running after it exited."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import psutil  # imported where used: only leftovers and stops need it

GRACE: Final = 5.0


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


def _is_zombie(process: psutil.Process) -> bool:
    import psutil

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


def descendants(pid: int) -> list[psutil.Process]:
    """The live descendants of `pid` (the spawner: every process a script left running)."""
    import psutil

    pids = _descendants(pid)
    if pids is None:  # no children lists in /proc: psutil reads every process's parent
        try:
            found = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
    else:
        found = []
        for child in pids:
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(child))
    return [process for process in found if not _is_zombie(process)]


def describe(process: psutil.Process) -> Leftover:
    """pid and command line, as far as they can still be read."""
    import psutil

    try:
        cmdline = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        cmdline = "?"
    return Leftover(process.pid, cmdline)


def stop_all(processes: list[psutil.Process], grace: float = GRACE) -> list[Leftover]:
    """Terminate, wait up to `grace` seconds, then kill what is left; return what was found."""
    import psutil

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
    import psutil

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
