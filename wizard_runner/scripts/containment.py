"""Everything the scripts step started, as one set: a cgroup of its own, or the fallback.

A cgroup is the kernel's answer to "everything this started": no process leaves it, its list
says what is left, and freezing it before killing ends its members however fast they fork.
The step makes one under the runner's own cgroup (cgroup v2, wherever mounted) and removes it
at its end; one a killed runner left is removed by the next step made beside it, or by the
next run once it finds that run was killed, wherever it was made. Without a writable cgroup v2,
or with WIZARD_RUNNER_CONTAINMENT=subreaper, the fallback follows parentage: the helper and the
runner are subreapers, and killing is SIGKILL to their children, again as those killed leave
theirs, until the same zombies are read twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from wizard_runner.procs import Leftover, ProcessSet, alive, describe, send
from wizard_runner.scripts.helper import PR_GET_CHILD_SUBREAPER, PR_SET_CHILD_SUBREAPER, prctl

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

#: Set to `subreaper` to use the fallback even where a cgroup could be made.
CONTAINMENT_ENV: Final = "WIZARD_RUNNER_CONTAINMENT"
PREFIX: Final = "wizard-runner."
#: How long a freeze or a removal may take, and how often to look meanwhile.
SETTLE: Final = 5.0
_LOOK: Final = 0.005


class Containment(ProcessSet, Protocol):
    """The set of every process the scripts step started."""

    name: str
    #: What ran in the sets of killed runners, killed as this one was made.
    cleared: list[Leftover]

    def adopt(self, pid: int) -> None:
        """Put the helper (and so whatever it starts) in the set."""

    def close(self) -> None:
        """Kill what is left and let the set go."""


def cgroup2_mount(mountinfo: str) -> tuple[Path, str] | None:
    """Where cgroup v2 is mounted and which of its directories the mount shows (field 4),
    from /proc/self/mountinfo."""
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(fields[4]), fields[3]
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """The process's cgroup v2 path (`0::/path` in /proc/self/cgroup)."""
    return next((line[3:] or "/" for line in proc_cgroup.splitlines()
                 if line.startswith("0::")), None)


def _cgroup_parent() -> Path | None:
    """The directory of the runner's own cgroup v2, if it is mounted and writable."""
    try:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        path = own_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    if mount is None or path is None:
        return None
    below = os.path.relpath(path, mount[1])
    if below.startswith(".."):
        return None  # ours lies outside what the mount shows (a namespace)
    parent = (mount[0] / below).resolve()
    ok = (parent / "cgroup.procs").exists() and os.access(parent, os.W_OK)
    return parent if ok else None


class Cgroup:
    """A cgroup v2 of the step's own."""

    name = "cgroup"

    def __init__(self, path: Path, cleared: list[Leftover] | None = None) -> None:
        self.path = path
        self.cleared = cleared or []

    @classmethod
    def create(cls, parent: Path, tag: str) -> Cgroup:
        """Make the step's cgroup under `parent`, first clearing those killed runners left
        (what ran in them is in `cleared`)."""
        cleared = _clear_stale(parent, os.listdir(parent))
        path = parent / f"{PREFIX}{os.getpid()}.{tag}"
        path.mkdir(mode=0o755)
        return cls(path, cleared)

    def adopt(self, pid: int) -> None:
        """Move the helper in (it has started nothing yet)."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def members(self) -> list[int]:
        """The live processes in it (an exited one leaves it before it is reaped)."""
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def _freeze(self, frozen: bool) -> None:
        """Freeze (waiting until every member is, so that none forks after the list is read)
        or thaw."""
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

    def kill(self, spare: int | None = None) -> list[Leftover]:
        """cgroup.kill when nothing is spared; else freeze, SIGKILL all but `spare`, thaw (a
        frozen process cannot fork, and a killed one dies as it thaws)."""
        if spare is None and (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.path / "cgroup.kill").write_text("1\n")
                return []
        self._freeze(True)
        try:
            found = [describe(pid) for pid in self.members() if pid != spare]
            send([leftover.pid for leftover in found], signal.SIGKILL)
        finally:
            self._freeze(False)
        return found

    def close(self) -> None:
        """Kill everything in it, then remove it once it is empty: its own cgroups first (a
        script run as root may make some)."""
        self.kill()  # (cgroup.kill ends the whole subtree)
        deadline = time.monotonic() + SETTLE
        for directory, _, _ in os.walk(self.path, topdown=False):
            while not _removed(Path(directory)) and time.monotonic() < deadline:
                time.sleep(_LOOK)  # its last members are exiting


def _removed(cgroup: Path) -> bool:
    """Remove an empty cgroup; False while it still has members (EBUSY). Gone, or not ours
    to remove: True (nothing more to do)."""
    try:
        cgroup.rmdir()
    except OSError as error:
        return error.errno != errno.EBUSY
    return True


def _clear_stale(parent: Path, names: Iterable[str], killed: str | None = None
                 ) -> list[Leftover]:
    """Empty and remove the step cgroups among `names` in `parent` whose runner is gone: the
    run `killed` (`PID.RUN_ID`) if given, else any whose pid no longer exists (beside the
    runner's own cgroup only: elsewhere a pid may be another namespace's); what ran in them."""
    cleared: list[Leftover] = []
    for name in names:
        owner = name.removeprefix(PREFIX)
        pid = owner.split(".", 1)[0]
        gone = owner == killed if killed is not None else \
            pid.isdigit() and not alive(int(pid))
        if name.startswith(PREFIX) and gone and os.access(parent / name, os.W_OK):
            old = Cgroup(parent / name)
            cleared += [describe(member) for member in old.members()]
            old.close()
    return cleared


def note_cleared(log: FilteringBoundLogger, cleared: list[Leftover]) -> None:
    """Log each process found running in a killed runner's cgroup, and killed."""
    for found in cleared:
        log.warning("leftover_killed", pid=found.pid, cmdline=found.cmdline,
                    of="an earlier run that was killed")


def clear_killed(pid: int, run_id: str) -> list[Leftover]:
    """Once a run is found killed: the step cgroup it left, looked for anywhere in the
    hierarchy (it may have been started from another session or unit), emptied and removed;
    what ran in it."""
    try:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []
    cleared: list[Leftover] = []
    for top, names, _ in os.walk(mount[0]) if mount is not None else ():
        cleared += _clear_stale(Path(top), names, f"{pid}.{run_id}")
        names[:] = [name for name in names if not name.startswith(PREFIX)]
    return cleared


def _children(pid: int) -> list[int]:
    """A process's direct children, from /proc (all its threads' lists)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


class Subreaper:
    """The fallback: the helper's descendants, and what a killed helper left to the runner."""

    name = "subreaper"

    def __init__(self) -> None:
        self.cleared: list[Leftover] = []
        self.helper: int | None = None
        self.ours = set(_children(os.getpid()))  # the runner's own children before the step
        self.was_subreaper = bool(prctl(PR_GET_CHILD_SUBREAPER))
        prctl(PR_SET_CHILD_SUBREAPER, 1)

    def adopt(self, pid: int) -> None:
        """Remember the helper: its descendants are the set."""
        self.helper = pid
        self.ours.discard(pid)

    def _adopted(self) -> list[int]:
        """The runner's children since the step began that are the step's: the helper, and
        what the runner adopted from it. Each step process is in a session the helper or a
        script began, never the runner's: a child an embedding application started meanwhile
        from another thread (in the runner's session) is not one of them."""
        own = os.getsid(0)
        found = []
        for pid in _children(os.getpid()):
            with contextlib.suppress(OSError):
                if pid not in self.ours and os.getsid(pid) != own:
                    found.append(pid)
        return found

    def members(self) -> list[int]:
        """The helper and its descendants, and what the runner adopted since the step began."""
        pending = self._adopted()
        found: list[int] = []
        while pending:
            pid = pending.pop()
            if pid not in found:
                found.append(pid)
                pending += _children(pid)
        return [pid for pid in found if alive(pid)]

    def _roots(self) -> set[int]:
        """The children of the helper and of the runner (those of the step): every process
        of the step is one, or below a live one. The kernel gives an orphan to its subreaper
        (the helper, or the runner once the helper is gone) before its parent turns zombie."""
        return set(_children(self.helper) if self.helper is not None else ()) | {
            pid for pid in self._adopted() if pid != self.helper}

    def kill(self, spare: int | None = None) -> list[Leftover]:
        """SIGKILL every process of the set but `spare`: the children of the helper and of the
        runner, again and again, as those killed leave theirs (a process with SIGKILL pending
        forks no more). Nothing is left once the children read twice are the same zombies:
        no list read by parentage is trusted before that. Those killed, as they were; OSError
        when they keep coming back past SETTLE seconds."""
        if spare is None and self.helper is not None:
            send([self.helper], signal.SIGKILL)  # its children come to the runner
        deadline = time.monotonic() + SETTLE
        seen: set[int] | None = None
        killed: list[Leftover] = []
        while True:
            roots = {pid for pid in self._roots() if pid != spare}
            live = [pid for pid in roots if alive(pid)]
            if not live and roots == seen:
                return killed
            killed += [describe(pid) for pid in live]
            send(live, signal.SIGKILL)
            self._reap()
            seen = None if live else roots
            if time.monotonic() >= deadline:
                raise OSError("processes the script left keep coming back faster than they "
                              "can be killed")

    def _reap(self) -> bool:
        """Reap what the runner adopted that has exited (the helper is its spawner's to reap);
        whether any adopted process is left."""
        left = False
        for pid in self._adopted():
            if pid != self.helper:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        left = True
        return left

    def close(self) -> None:
        """Kill what is left and reap it (a long-lived embedding process must not collect the
        zombies of the helper's last children), and stop being a subreaper if the runner was
        not one."""
        with contextlib.suppress(OSError):  # the step's own stops said so already
            self.kill()
        deadline = time.monotonic() + SETTLE
        while self._reap() and time.monotonic() < deadline:
            time.sleep(_LOOK)
        if not self.was_subreaper:
            prctl(PR_SET_CHILD_SUBREAPER, 0)


def contain(tag: str) -> Containment:
    """The step's containment: its own cgroup where one can be made, else the fallback."""
    if os.environ.get(CONTAINMENT_ENV) != "subreaper":
        parent = _cgroup_parent()
        if parent is not None:
            with contextlib.suppress(OSError):
                return Cgroup.create(parent, tag)
    return Subreaper()
