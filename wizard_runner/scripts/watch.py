"""One script's watch: one poll loop over its output, its helper and the runner's stop
signals, one deadline; what it left running is stopped when it ends.

The loop learns everything as an event: output on either pipe, the helper's word that the
script ended, the helper's death (its pidfd), a stop signal (the wake-up pipe the signal
handler writes to). A stopped helper sends no event: its state is looked at on every
wake-up, and at least every HELPER_LOOK seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Final

from structlog.typing import FilteringBoundLogger

from wizard_runner import procs
from wizard_runner.procs import Leftover
from wizard_runner.scripts.containment import Containment
from wizard_runner.scripts.helper import PIPE_SIZE
from wizard_runner.scripts.output import ScriptOutput
from wizard_runner.scripts.spawner import Exited, HelperError, Spawner, Started
from wizard_runner.signals import drain_wakeup, pending_stop, wakeup_fileno

#: After a script exits, how long its pipes may stay open before what holds them is looked
#: for, and how long in all before the runner stops reading a pipe something unknown holds.
DRAIN: Final = 0.2
DRAIN_LIMIT: Final = 3.0
#: How often the helper's state is looked at while nothing happens (a stop sends no event).
HELPER_LOOK: Final = 0.1
#: Past both caps, after a read that emptied the pipe: a pause far below any human notice that
#: turns a flood of small writes into few large reads.
BULK_PAUSE: Final = 0.0002
#: How many leftovers of one script are logged and kept in the result one by one.
MAX_LEFTOVERS: Final = 500


@dataclass
class Watched:
    """What the watch saw of one script."""

    exited: Exited | None = None
    timed_out: bool = False
    stopped_by: int | None = None  # the stop signal the runner stopped it for
    broken: str | None = None  # the helper failed while the script ran: how
    leftovers: list[Leftover] = field(default_factory=list)
    more_leftovers: int = 0  # killed past MAX_LEFTOVERS, counted only
    deadline: float | None = None
    stopped_at: float | None = None  # when the runner began to stop it (timeout or signal)
    ended_at: float | None = None  # when the runner gave up on it, when no end was reported


class Watch:
    """Follows one started script to its end (or its deadline, or a stop)."""

    def __init__(self, spawner: Spawner, box: Containment, script: Started,
                 output: ScriptOutput, *, deadline: float | None, grace: float,
                 log: FilteringBoundLogger) -> None:
        self.spawner = spawner
        self.box = box
        self.script = script
        self.output = output
        self.deadline = deadline
        self.grace = grace
        self.log = log
        self.seen = Watched(deadline=deadline)
        self.pipes = {script.stdout: "stdout", script.stderr: "stderr"}
        self.poller = select.poll()
        self.exited_at: float | None = None  # when the runner heard of the end
        self.stop_done: float | None = None  # when the stop of the script was over
        self.looked_at = 0.0
        self.drained = False

    def run(self) -> Watched:
        """Watch until the script ended and its output is read (or the helper failed)."""
        for fd in self.pipes:
            os.set_blocking(fd, False)
            self.poller.register(fd, select.POLLIN)
        self.poller.register(self.spawner.control.fileno(), select.POLLIN)
        self.poller.register(self.spawner.pidfd, select.POLLIN)
        wakeup = wakeup_fileno()
        if wakeup is not None:
            self.poller.register(wakeup, select.POLLIN)
        try:
            while (self.pipes or self.seen.exited is None) and self.seen.broken is None:
                self._tick(time.monotonic())
                if self.seen.broken is not None:
                    break
                for fd, _ in self.poller.poll(self._wait() * 1000):
                    self._event(fd, wakeup)
            if self.seen.broken is None:
                self._clear_leftovers()
        finally:
            for fd in list(self.pipes):
                self._close(fd)
        return self.seen

    # --- events ---------------------------------------------------------------------------

    def _event(self, fd: int, wakeup: int | None) -> None:
        if fd in self.pipes:
            self._read(fd)
        elif fd == self.spawner.control.fileno():
            self._message()
        elif fd == self.spawner.pidfd:
            self._message_if_any()
            if self.seen.exited is None:
                self._helper_failed()
        elif fd == wakeup:
            drain_wakeup()

    def _read(self, fd: int) -> None:
        stream = self.pipes[fd]
        try:
            data = os.read(fd, PIPE_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.output.end(stream)
            self._close(fd)
            return
        self.output.feed(stream, data)
        if self.output.bulk and len(data) < PIPE_SIZE:
            time.sleep(BULK_PAUSE)  # let the flood pile up in the pipe: fewer wakeups

    def _close(self, fd: int) -> None:
        if self.pipes.pop(fd, None) is not None:
            with contextlib.suppress(KeyError):
                self.poller.unregister(fd)
            os.close(fd)

    def _message(self) -> None:
        try:
            message = self.spawner.receive()
            self.seen.exited = self.spawner.exited(message, self.script.index)
        except HelperError as error:
            self.seen.broken = self.spawner.how_broken(str(error))
            self.seen.ended_at = time.monotonic()
            return
        self.exited_at = time.monotonic()
        self.poller.unregister(self.spawner.control.fileno())

    def _message_if_any(self) -> None:
        """The helper died: what it said before, if anything, still counts."""
        if self.seen.exited is None and select.select([self.spawner.control], [], [], 0)[0]:
            self._message()

    # --- the clock --------------------------------------------------------------------------

    def _wait(self) -> float:
        waits = [HELPER_LOOK]
        now = time.monotonic()
        if self.deadline is not None and self.seen.stopped_at is None:
            waits.append(self.deadline - now)
        if self.exited_at is not None:
            waits.append(DRAIN / 4)
        return max(min(waits), 0.0)

    def _tick(self, now: float) -> None:
        """Act on what time and the runner's stop request say, and on the helper's state."""
        if now - self.looked_at >= HELPER_LOOK:
            self.looked_at = now
            if self.seen.exited is None and self.spawner.state() is not None:
                self._message_if_any()
                if self.seen.exited is None:
                    self._helper_failed()
                    return
        if self.seen.exited is None and self.seen.stopped_at is None:
            stop = pending_stop()
            if stop is not None:
                self.seen.stopped_by = stop
                self.log.warning("script_stopped", signal=signal.Signals(stop).name)
                self._stop(now)
            elif self.deadline is not None and now >= self.deadline:
                self.seen.timed_out = True
                self.log.error("script_timed_out", timeout_s=round(
                    self.deadline - self.script.started, 3))
                self._stop(now)
        elif self.seen.exited is None and self.stop_done is not None and \
                now - self.stop_done > self.grace:
            self.seen.broken = "it did not end after SIGKILL, or its helper no longer reports"
        if self.exited_at is not None and self.pipes:
            self._drain(now)

    def _stop(self, now: float) -> None:
        """Stop the script and all it started: TERM, the grace, KILL (the helper is spared)."""
        self.seen.stopped_at = now
        try:
            stopped = procs.stop(self.box, self.grace, spare=self.spawner.pid)
        except OSError as error:
            self.seen.broken = str(error)
            return
        self._note_leftovers([found for found in stopped if found.pid != self.script.pid])
        self.stop_done = time.monotonic()

    def _drain(self, now: float) -> None:
        """The script ended but its output stays open: something it left holds it."""
        assert self.exited_at is not None  # noqa: S101 - _tick calls this only after the end
        if now - self.exited_at < DRAIN:
            return
        if not self.drained:
            self.drained = True
            self._clear_leftovers()
        if now - self.exited_at >= DRAIN_LIMIT:
            self.log.warning("output_abandoned", reason="the script exited but something "
                             "unknown still holds its output open", seconds=DRAIN_LIMIT)
            for fd in list(self.pipes):
                self.output.end(self.pipes[fd])
                self._close(fd)

    # --- what is left -----------------------------------------------------------------------

    def _clear_leftovers(self) -> None:
        """Stop whatever the script left running; each is logged with pid and command line."""
        if not [pid for pid in self.box.members() if pid != self.spawner.pid]:
            return
        try:
            self._note_leftovers(procs.stop(self.box, self.grace, spare=self.spawner.pid))
        except OSError as error:
            self.seen.broken = str(error)

    def _note_leftovers(self, found: list[Leftover]) -> None:
        """Log and keep each leftover, up to MAX_LEFTOVERS (a fork bomb leaves thousands);
        the rest are counted."""
        room = max(MAX_LEFTOVERS - len(self.seen.leftovers), 0)
        for leftover in found[:room]:
            self.log.warning("leftover_killed", pid=leftover.pid, cmdline=leftover.cmdline)
        self.seen.leftovers += found[:room]
        if len(found) > room:
            self.log.warning("leftovers_killed_more", count=len(found) - room)
            self.seen.more_leftovers += len(found) - room

    def _helper_failed(self) -> None:
        self.seen.broken = self.spawner.how_broken("the helper that ran it stopped answering")
        self.seen.ended_at = time.monotonic()

