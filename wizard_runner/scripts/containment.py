"""Everything the scripts step started, as one set: a cgroup of its own, or the fallback.

A cgroup is the kernel's answer to "everything this started": no process can leave it, so
its member list says whether anything is left after a script, and freezing it then killing
its members ends everything at once, however fast it forks. The runner creates one per
scripts step under its own cgroup (cgroup v2, wherever it is mounted), puts the helper in it
(scripts and all they start follow), and removes it at the end of the step; one a killed
runner left behind is emptied and removed by the next run.

Where no writable cgroup v2 exists (a container, an embedding without delegation), or when
WIZARD_RUNNER_CONTAINMENT=subreaper asks for it, the fallback follows parentage: the helper
is the subreaper of what the scripts start, and the runner is one for the step's duration, so
that what a killed helper left is re-parented to the runner and still found. Stopping
everything there means SIGSTOP sweeps until nothing runs, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Final, Protocol

#: Set to `subreaper` to use the fallback even where a cgroup could be made.
CONTAINMENT_ENV: Final = "WIZARD_RUNNER_CONTAINMENT"
PREFIX: Final = "wizard-runner."
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
#: How long a kill may take to empty the set, and how often to look meanwhile.
SETTLE: Final = 5.0
_LOOK: Final = 0.005


class Containment(Protocol):
    """The set of every process the scripts step started."""

    name: str

    def adopt(self, pid: int) -> None:
        """Put the helper (and so whatever it starts) in the set."""

    def members(self) -> list[int]:
        """The live processes in the set."""

    def kill(self, spare: int | None = None) -> None:
        """SIGKILL every member but `spare` at once: none can fork meanwhile."""

    def close(self) -> None:
        """Kill what is left and let the set go."""


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


# --- cgroup v2 ----------------------------------------------------------------------------------


def cgroup2_mount(mountinfo: str) -> tuple[Path, str] | None:
    """Where the cgroup v2 hierarchy is mounted and which of its directories that mount shows
    (the 4th field), from /proc/self/mountinfo's text."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 10:
            continue
        after = line.split(" - ", 1)[1].split()
        if after and after[0] == "cgroup2":
            return Path(fields[4]), fields[3]
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """The process's cgroup v2 path (`0::/path` in /proc/self/cgroup)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def _cgroup_parent() -> Path | None:
    """The directory of the runner's own cgroup v2, if it is mounted and writable."""
    try:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        path = own_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    if mount is None or path is None:
        return None
    point, shown = mount
    relative = os.path.relpath(path, shown)
    if relative.startswith(".."):
        return None  # our cgroup lies outside what this mount shows (a namespace)
    parent = (point / relative).resolve()
    if not (parent / "cgroup.procs").exists() or not os.access(parent, os.W_OK):
        return None
    return parent


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []


class Cgroup:
    """A cgroup v2 of the step's own."""

    name = "cgroup"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, parent: Path, tag: str) -> Cgroup:
        """Make the step's cgroup under `parent`, first clearing those killed runners left."""
        for stale in parent.glob(f"{PREFIX}*"):
            owner = stale.name.removeprefix(PREFIX).split(".", 1)[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                Cgroup(stale).close()
        path = parent / f"{PREFIX}{os.getpid()}.{tag}"
        path.mkdir(mode=0o755)
        return cls(path)

    def adopt(self, pid: int) -> None:
        """Move the helper in (it has started nothing yet)."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def members(self) -> list[int]:
        """The live processes in it (an exited one leaves the cgroup before it is reaped)."""
        return _read_pids(self.path / "cgroup.procs")

    def _freeze(self, frozen: bool) -> None:
        """Freeze or thaw; freezing waits (briefly) until every member is frozen, so that none
        forks after the members are listed."""
        with contextlib.suppress(OSError):
            (self.path / "cgroup.freeze").write_text("1\n" if frozen else "0\n")
        deadline = time.monotonic() + SETTLE
        while frozen and time.monotonic() < deadline:
            try:
                events = (self.path / "cgroup.events").read_text().split()
            except OSError:
                return
            if "frozen" not in events or events[events.index("frozen") + 1] == "1":
                return
            time.sleep(_LOOK)

    def kill(self, spare: int | None = None) -> None:
        """Freeze it, SIGKILL every member but `spare`, thaw: a frozen process cannot fork,
        and a killed one dies as it thaws."""
        if spare is None and (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.path / "cgroup.kill").write_text("1\n")
                return
        self._freeze(True)
        try:
            for pid in self.members():
                if pid != spare:
                    _signal(pid, signal.SIGKILL)
        finally:
            self._freeze(False)

    def close(self) -> None:
        """Kill everything in it, wait until it is empty, remove it."""
        self.kill()
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
            except FileNotFoundError:
                return
            except OSError:  # EBUSY while its last members exit
                time.sleep(_LOOK)
            else:
                return


# --- the fallback -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """A process's direct children, from /proc (threads' lists merged)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _set_subreaper(on: bool) -> bool:
    """Make the runner a child subreaper (or stop being one); False where it cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)


def _is_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(0)
    return bool(libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) == 0
                and value.value)


class Subreaper:
    """The fallback: the helper's descendants, and what a killed helper left to the runner."""

    name = "subreaper"

    def __init__(self) -> None:
        self.helper: int | None = None
        self.ours = set(_children(os.getpid()))  # the runner's own children before the step
        self.was_subreaper = _is_subreaper()
        _set_subreaper(True)

    def adopt(self, pid: int) -> None:
        """Remember the helper: its descendants are the set."""
        self.helper = pid
        self.ours.discard(pid)

    def members(self) -> list[int]:
        """The helper and its descendants, and what the runner adopted since the step began."""
        pending = [pid for pid in _children(os.getpid()) if pid not in self.ours]
        found: list[int] = []
        while pending:
            pid = pending.pop()
            if pid in found:
                continue
            found.append(pid)
            pending += _children(pid)
        return [pid for pid in found if _alive(pid)]

    def kill(self, spare: int | None = None) -> None:
        """SIGSTOP sweeps until no member runs (a stopped process cannot fork), then SIGKILL."""
        deadline = time.monotonic() + SETTLE
        stopped: set[int] = set()
        while time.monotonic() < deadline:
            fresh = [pid for pid in self.members() if pid != spare and pid not in stopped]
            if not fresh:
                break
            for pid in fresh:
                _signal(pid, signal.SIGSTOP)
            stopped.update(fresh)
        for pid in stopped:
            _signal(pid, signal.SIGKILL)
        self._reap(stopped)

    def _reap(self, killed: set[int]) -> None:
        """Reap what the runner adopted (a dead helper's orphans) and killed; the helper
        itself is its spawner's to reap."""
        adopted = set(_children(os.getpid())) & killed - {self.helper}
        for pid in adopted:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # dying now; a later call reaps a late one

    def close(self) -> None:
        """Kill what is left, reap it, and stop being a subreaper if the runner was not."""
        self.kill()
        if not self.was_subreaper:
            _set_subreaper(False)


def contain(tag: str) -> Containment:
    """The step's containment: its own cgroup where one can be made, else the fallback."""
    if os.environ.get(CONTAINMENT_ENV) != "subreaper":
        parent = _cgroup_parent()
        if parent is not None:
            with contextlib.suppress(OSError):
                return Cgroup.create(parent, tag)
    return Subreaper()
