"""One script's watch: one poll loop, one deadline. Its events: the helper's word (started,
could not start, ended), output on either pipe (read once the start is heard), the helper's
death (its pidfd), a stop signal (the wake-up pipe). A stopped helper sends no event: its
state is looked at every HELPER_LOOK seconds. A timeout or a stop stops all the script
started; what it left running when it ended is stopped too. The helper starts nothing
meanwhile: it waits for the runner's next order."""

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
from wizard_runner.scripts.helper import Kind
from wizard_runner.scripts.output import ScriptOutput
from wizard_runner.scripts.spawner import KILLED, PIPE_SIZE, STOPPED, Exited, HelperError, Spawner
from wizard_runner.signals import drain_wakeup, pending_stop, wakeup_fileno

#: How long the helper may take to start a script (its own start included) before it is
#: taken for broken.
ANSWER_TIMEOUT: Final = 30.0
#: After a script exits: how long its pipes may stay open before what holds them is stopped,
#: and before the runner gives up on a pipe something unknown holds.
DRAIN: Final = 0.2
DRAIN_LIMIT: Final = 3.0
#: How often the helper's state is looked at while nothing happens (a stop sends no event).
HELPER_LOOK: Final = 0.1
#: Past both caps, after a read that emptied the pipe: a pause that turns a flood of small
#: writes into few large reads.
BULK_PAUSE: Final = 0.0002
#: How many leftovers of one script are logged and kept in the result one by one.
MAX_LEFTOVERS: Final = 500


@dataclass
class Watched:
    """What the watch saw of one script."""

    pid: int | None = None  # the script's, once started
    started: float | None = None  # when it started, by the helper's clock
    cannot_start: int | None = None  # the errno the helper could not start it with
    exited: Exited | None = None
    stopped_by: int | None = None  # the stop signal the runner stopped it for
    broken: str | None = None  # the helper failed: how
    leftovers: list[Leftover] = field(default_factory=list)
    more_leftovers: int = 0  # killed past MAX_LEFTOVERS, counted only
    deadline: float | None = None
    limit: float = 0.0  # the time limit, as given (0: none); the deadline comes from it
    stopped_at: float | None = None  # when the runner's stop of it (timeout or signal) was over
    ended_at: float | None = None  # when the runner gave up on it, when no end was reported


class Watch:
    """Follows one ordered script from its start to its end (or its deadline, or a stop)."""

    def __init__(self, spawner: Spawner, index: int, pipes: tuple[int, int],
                 output: ScriptOutput, *, timeout: float | None, grace: float,
                 log: FilteringBoundLogger, shown: dict[str, str]) -> None:
        self.spawner = spawner
        self.box = spawner.box
        self.index = index
        self.output = output
        self.grace = grace
        self.log = log
        self.shown = shown  # what the script_started event says besides the pid
        self.seen = Watched(limit=timeout or 0.0)
        self.pipes = {pipes[0]: "stdout", pipes[1]: "stderr"}
        self.poller = select.poll()
        self.ordered_at = time.monotonic()
        self.answer_by = self.ordered_at + ANSWER_TIMEOUT
        self.exited_at: float | None = None  # when the runner heard of the end
        self.looked_at = 0.0
        self.drained = False

    def run(self) -> Watched:
        """Watch until the script ended and its output is read, or it could not start, or
        the helper failed."""
        self.poller.register(self.spawner.control.fileno(), select.POLLIN)
        self.poller.register(self.spawner.pidfd, select.POLLIN)
        wakeup = wakeup_fileno()
        if wakeup is not None:
            self.poller.register(wakeup, select.POLLIN)
        try:
            while not self._over():
                self._tick(time.monotonic())
                if self._over():
                    break
                for fd, _ in self.poller.poll(self._wait() * 1000):
                    self._event(fd, wakeup)
            # What was left may signal the helper as it is stopped. A script that left nothing
            # cannot: a signal it sent is delivered before the helper sees its end.
            exited = self.seen.exited
            if self.seen.broken is None and exited is not None and (
                    exited.left or self.seen.stopped_at is not None):
                self._clear()
                if self.seen.broken is None and self.spawner.hit():
                    self._broken("the script, or what it left, signalled the helper that ran it")
            if self.seen.broken is not None:
                self._kill_all()
                self._read_the_rest()
        finally:
            for fd in list(self.pipes):
                self._close(fd)
        return self.seen

    def _over(self) -> bool:
        seen = self.seen
        return seen.broken is not None or seen.cannot_start is not None or (
            seen.exited is not None and not self.pipes)

    # --- events ---------------------------------------------------------------------------

    def _event(self, fd: int, wakeup: int | None) -> None:
        if fd in self.pipes:
            self._read(fd)
        elif fd == self.spawner.control.fileno():
            self._message()
        elif fd == self.spawner.pidfd:
            self._helper_gone()
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

    def _read_the_rest(self) -> None:
        """The helper failed, and everything the step started is killed: what the script wrote
        and the loop did not read (its start unheard, or the helper's death seen first) is
        read all the same, up to what a pipe holds (a writer that escaped the kill cannot keep
        the runner reading), so that the log has it."""
        for fd, stream in list(self.pipes.items()):
            os.set_blocking(fd, False)
            left = PIPE_SIZE
            with contextlib.suppress(BlockingIOError):
                while left > 0 and (data := os.read(fd, left)):
                    self.output.feed(stream, data)
                    left -= len(data)
            self.output.end(stream)
            self._close(fd)

    def _close(self, fd: int) -> None:
        if self.pipes.pop(fd, None) is not None:
            with contextlib.suppress(KeyError):
                self.poller.unregister(fd)
            os.close(fd)

    def _message(self) -> None:
        """What the helper says of the script: it started, could not, or ended."""
        seen = self.seen
        try:
            kind, numbers = self.spawner.receive()
        except HelperError as error:
            self._broken(str(error))
            return
        wanted = (Kind.EXITED,) if seen.pid is not None else (Kind.STARTED, Kind.FAILED)
        if kind not in wanted or numbers[0] != self.index:
            self._broken(f"the helper said {kind.name} #{numbers[0]} while script "
                         f"#{self.index} ran")
        elif kind is Kind.STARTED:
            self._started(numbers[1], numbers[2] / 1e9)
        elif kind is Kind.FAILED:
            self.log.info("script_started", **self.shown)
            seen.cannot_start = numbers[1]
        else:
            seen.exited = Exited(numbers[1], numbers[2] / 1e9, bool(numbers[3]))
            self.exited_at = time.monotonic()
            if seen.deadline is not None and seen.exited.ended > seen.deadline and \
                    seen.stopped_at is None:  # the runner was held up past the deadline
                self.log.error("script_timed_out", timeout_s=seen.limit, seen="at its end")
            self.poller.unregister(self.spawner.control.fileno())

    def _started(self, pid: int, at: float) -> None:
        self.seen.pid, self.seen.started = pid, at
        if self.seen.limit:
            self.seen.deadline = at + self.seen.limit
        self.log.info("script_started", **self.shown, pid=pid)
        for fd in self.pipes:
            os.set_blocking(fd, False)
            self.poller.register(fd, select.POLLIN)
        self.spawner.prepare()

    def _catch_up(self) -> None:
        """Read what the helper said and the loop has not yet heard, up to the script's end."""
        while self.seen.exited is None and not self._over() and \
                procs.readable(self.spawner.control.fileno()):
            self._message()

    def _end_unheard(self) -> bool:
        """Whether the script's end is still unheard once what the helper said is read."""
        self._catch_up()
        return self.seen.exited is None and not self._over()

    def _helper_gone(self) -> None:
        """The helper died or was stopped: what it said before still counts."""
        if self._end_unheard():
            self._broken(f"the script helper {self.spawner.state() or 'stopped answering'}")
        else:
            with contextlib.suppress(KeyError):  # a dead helper's pidfd stays readable
                self.poller.unregister(self.spawner.pidfd)

    def _broken(self, why: str) -> None:
        """The helper failed: stopped or killed, by the script (its only child, which runs
        once ordered); else for `why`."""
        state = self.spawner.state()
        if state == STOPPED:
            self.seen.broken = "the script stopped the helper that ran it"
        elif state is not None and state.startswith(KILLED):
            signal_used = state.removeprefix(f"{KILLED} by ")
            self.seen.broken = f"the script killed the helper that ran it ({signal_used})"
        else:
            self.seen.broken = why if self.seen.pid is not None else f"cannot start: {why}"
        if self.seen.pid is None:
            self.log.info("script_started", **self.shown)  # and failed: the log says both
        self.seen.ended_at = time.monotonic()

    # --- the clock --------------------------------------------------------------------------

    def _wait(self) -> float:
        waits = [HELPER_LOOK]
        now = time.monotonic()
        if self.seen.pid is None:
            waits.append(self.answer_by - now)
        elif self.seen.deadline is not None and self.seen.stopped_at is None:
            waits.append(self.seen.deadline - now)
        if self.exited_at is not None:
            waits.append(DRAIN / 4)
        return max(min(waits), 0.0)

    def _tick(self, now: float) -> None:
        """Act on the helper's state, what time says, and the runner's stop request."""
        seen = self.seen
        if now - self.looked_at >= HELPER_LOOK:
            self.looked_at = now
            if seen.exited is None and self.spawner.state() is not None:
                self._helper_gone()
                return
        if seen.pid is None:  # a stop waits for the start, which comes at once (unless the
            stop = pending_stop()  # helper hangs: then the stop's grace is all it gets)
            if stop is not None:
                self.answer_by = min(self.answer_by, now + self.grace)
            if now >= self.answer_by:
                seen.stopped_by = stop
                waited = self.answer_by - self.ordered_at
                self._broken(f"the script helper did not start it within {waited:.1f} s")
            return
        if seen.exited is None and seen.stopped_at is None:
            stop = pending_stop()
            due = stop is not None or (seen.deadline is not None and now >= seen.deadline)
            if due and self._end_unheard():  # an end already said is judged as it is
                self._stop(stop)
        # Past the grace after the stop, the end is looked for first: the runner may have been
        # held up past it.
        elif seen.exited is None and seen.stopped_at is not None and \
                now - seen.stopped_at > self.grace and self._end_unheard():
            self._broken("it did not end after SIGKILL, or its helper no longer reports")
        if self.exited_at is not None and self.pipes:
            self._drain(now)

    def _stop(self, signum: int | None) -> None:
        """A stop signal, or the deadline: stop the script and all it started (TERM, the
        grace, KILL; the helper spared)."""
        self.seen.stopped_by = signum
        if signum is not None:
            self.log.warning("script_stopped", signal=signal.Signals(signum).name)
        else:
            self.log.error("script_timed_out", timeout_s=self.seen.limit)
        if self._clear(but=self.seen.pid):
            self.seen.stopped_at = time.monotonic()

    def _drain(self, now: float) -> None:
        """The script ended but its output stays open: something it left holds it."""
        assert self.exited_at is not None  # noqa: S101 - _tick calls this only after the end
        if now - self.exited_at < DRAIN:
            return
        if not self.drained:
            self.drained = True
            self._clear()
        if now - self.exited_at >= DRAIN_LIMIT:
            self.log.warning("output_abandoned", reason="the script exited but something "
                             "unknown still holds its output open", seconds=DRAIN_LIMIT)
            for fd in list(self.pipes):
                self.output.end(self.pipes[fd])
                self._close(fd)

    # --- what is left -----------------------------------------------------------------------

    def _clear(self, but: int | None = None) -> bool:
        """Stop all the script started (the helper spared); log each leftover but `but` with
        pid and command line. False when that failed (the helper is taken for broken)."""
        try:
            stopped = procs.stop(self.box, self.grace, spare=self.spawner.pid)
        except OSError as error:
            self._broken(str(error))
            return False
        self._note_leftovers([found for found in stopped if found.pid != but])
        return True

    def _kill_all(self) -> None:
        """The helper failed: everything the step started is killed at once, the helper too;
        what the script left is logged and kept as it is for any other end."""
        spared = (self.spawner.pid, self.seen.pid)
        others = [pid for pid in self.box.members() if pid not in spared]
        found = [procs.describe(pid) for pid in others[:MAX_LEFTOVERS]]  # a fork bomb forks on
        try:
            self.box.kill()
        except OSError as error:
            self.seen.broken = f"{self.seen.broken}; {error}"
        self._note_leftovers(found, len(others) - len(found))

    def _note_leftovers(self, found: list[Leftover], undescribed: int = 0) -> None:
        """Log and keep each leftover up to MAX_LEFTOVERS (a fork bomb leaves thousands);
        count the rest, and those `undescribed`."""
        room = max(MAX_LEFTOVERS - len(self.seen.leftovers), 0)
        for leftover in found[:room]:
            self.log.warning("leftover_killed", pid=leftover.pid, cmdline=leftover.cmdline)
        self.seen.leftovers += found[:room]
        more = len(found) - len(found[:room]) + undescribed
        if more:
            self.log.warning("leftovers_killed_more", count=more)
            self.seen.more_leftovers += more
