"""Stopping processes, the one way: SIGTERM (and SIGCONT), the grace, then SIGKILL.

Every stop in wizard-runner goes through `stop`: a script past its deadline, what a script
left running, a step stopped by a signal. The set it stops says who its members are and how
to kill them all at once (a cgroup freezes them first); `stop` only escalates and waits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from wizard_runner.defaults import GRACE

_LOOK: Final = 0.01
#: How much of a process's command line is read (and logged) at most.
MAX_CMDLINE: Final = 4096


class ProcessSet(Protocol):
    """Processes that are stopped together."""

    def members(self) -> list[int]:
        """The live processes of the set now."""

    def kill(self, spare: int | None = None) -> list[Leftover]:
        """SIGKILL them all at once (but `spare`), none escaping meanwhile: those it found to
        kill, as they were just before (a cgroup lists none when nothing is spared); OSError
        when some cannot be."""


class Leftover(NamedTuple):
    """A process found running where nothing should, as it was when found."""

    pid: int
    cmdline: str

    def __str__(self) -> str:
        return f"{self.pid} {self.cmdline}"


def signal_name(signum: int) -> str:
    """A signal's name (`SIGKILL`), or `signal N` for one without."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _cmdline(pid: int) -> bytes:
    """The first bytes of a process's command line: its main thread's, or (that one exited
    while others run) another thread's."""
    with open(f"/proc/{pid}/cmdline", "rb") as source:
        raw = source.read(MAX_CMDLINE + 1)
    for task in os.listdir(f"/proc/{pid}/task") if not raw else ():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/cmdline", "rb") as f:
            raw = f.read(MAX_CMDLINE + 1)
        if raw:
            break
    return raw


def describe(pid: int) -> Leftover:
    """pid and command line (its first MAX_CMDLINE bytes: a process may make its own any
    size), as far as they can still be read."""
    try:
        raw = _cmdline(pid)
        words = raw[:MAX_CMDLINE].rstrip(b"\0").split(b"\0")
        cmdline = " ".join(os.fsdecode(word) for word in words)
        if len(raw) > MAX_CMDLINE:
            cmdline += " ..."
        if not cmdline:
            with open(f"/proc/{pid}/comm", "rb") as source:
                cmdline = f"[{os.fsdecode(source.read().strip())}]"
    except OSError:
        cmdline = "?"
    return Leftover(pid, cmdline)


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first, start time at 19),
    or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie: its main thread shows Z once it exited,
    though other threads of it may still run (then it is alive)."""
    fields = proc_stat(pid)
    if fields is None or fields[0] != b"Z":
        return fields is not None
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def readable(fd: int, seconds: float = 0.0) -> bool:
    """Whether a descriptor (a pidfd: the process ended) is readable within `seconds`: by
    poll, which takes any descriptor (select stops at 1023: an embedding application may hold
    more); a negative one never is."""
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def send(pids: list[int], signum: int) -> None:
    """Send `signum` to each process that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_empty(members: Callable[[], list[int]], seconds: float) -> list[int]:
    """Wait until nothing is left, up to `seconds`: what is left. Empty counts when two looks
    a moment apart agree: a list walked by parentage can miss a process that is being
    re-parented while it is read."""
    deadline = time.monotonic() + seconds
    empty_once = False
    while True:
        left = members()
        if (not left and empty_once) or time.monotonic() >= deadline:
            return left
        empty_once = not left
        time.sleep(_LOOK)


def stop(processes: ProcessSet, grace: float = GRACE, *, spare: int | None = None
         ) -> list[Leftover]:
    """Stop every member of `processes` but `spare`: SIGTERM and SIGCONT (a stopped process
    must see it), up to `grace` seconds to end, then SIGKILL all at once. Returns every
    process seen; OSError if some are still there `grace` seconds after SIGKILL (stuck in
    the kernel)."""
    seen: dict[int, Leftover] = {}

    def members() -> list[int]:  # each noted as it is first seen
        found = [pid for pid in processes.members() if pid != spare]
        for pid in found:
            if pid not in seen:
                seen[pid] = describe(pid)
        return found

    # One empty look is not trusted (see _wait_empty).
    first = members() or _wait_empty(members, 2 * _LOOK)
    if first:
        send(first, signal.SIGTERM)
        send(first, signal.SIGCONT)
        _wait_empty(members, grace)
    # Whatever is left, at once; also when the list looks empty: one read by parentage can
    # miss a process in transit to its subreaper (a fork-hopper, always), which the set's
    # kill does not.
    for found in processes.kill(spare):
        seen.setdefault(found.pid, found)
    left = _wait_empty(members, grace)
    if left:
        raise OSError(f"processes {', '.join(map(str, left))} did not end after SIGKILL")
    return list(seen.values())
