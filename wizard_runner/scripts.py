"""The scripts step: run wizard.d in order as the run user; the first failure stops the rest."""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.defaults import DEFAULT_TIMEOUT
from wizard_runner.discovery import Decision, Verdict, check_safe, scan
from wizard_runner.errors import RunInterrupted, UsageError
from wizard_runner.escape import printable
from wizard_runner.layout import Layout
from wizard_runner.output import (
    DEFAULT_CAP,
    LineSplitter,
    OutputRecord,
    script_log_path,
    shown_line,
)
from wizard_runner.procs import GRACE, descendants, signal_group, stop_all, wait_group_gone
from wizard_runner.result import ScriptOutcome, ScriptStatus
from wizard_runner.runuser import RunUser, require_switch_allowed
from wizard_runner.signals import deferred_stop_signals, ignored_stop_signals, stop_pending
from wizard_runner.spawner import Spawned, Spawner, SpawnerError, Switch
from wizard_runner.spawnhelper import PIPE_SIZE

SCRIPT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: After a script exits, how long its pipes may stay open before leftovers are hunted down,
#: and how long in all before the runner stops reading a pipe something unknown holds open.
DRAIN: Final = 0.2
DRAIN_LIMIT: Final = 3.0
#: How much of one script's output also becomes log events, counted as the size those events
#: take in the JSON log (text plus about EVENT_OVERHEAD bytes of fields each); the rest is in
#: the script's own log file only, so that a chatty script cannot flood the main log.
EVENT_CAP: Final = 1024 * 1024
EVENT_OVERHEAD: Final = 200


class _OutputAbandoned(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The script exited but its pipes stay open and no leftover could be found."""


def _exec_hint(code: int | None) -> str:
    if code == errno.ENOEXEC:
        return " (no #! line?)"
    if code == errno.ENOENT:
        return " (is the #! interpreter installed?)"
    return ""
_READ_SIZE: Final = PIPE_SIZE
#: Past both caps, after a read that emptied the pipe: a pause far below any human notice that
#: turns a flood of small writes into few large reads.
BULK_PAUSE: Final = 0.0002


@dataclass(frozen=True)
class ScriptsOptions:
    """How the scripts step runs."""

    user: RunUser
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit
    start_at: str | None = None
    start_note: str | None = None  # why the scripts before start_at do not run
    output_cap: int = DEFAULT_CAP
    grace: float = GRACE


class Progress(Protocol):
    """Something that shows the step as it goes (the CLI on a terminal)."""

    def started(self, index: int, total: int, name: str) -> None:
        """A script starts."""

    def output(self, name: str, stream: str, line: str) -> None:
        """A script printed a line."""

    def finished(self, outcome: ScriptOutcome) -> None:
        """A script ended."""


def script_env(config: WizardConfig, user: RunUser, run_id: str, root: Path) -> dict[str, str]:
    """The whole environment of a script: basics plus the non-secret wizard values."""
    net = config.network
    return {
        "PATH": SCRIPT_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C.UTF-8",
        "WIZARD_HOSTNAME": net.hostname,
        "WIZARD_DOMAIN": net.domain,
        "WIZARD_FQDN": net.fqdn,
        "WIZARD_INTERFACE": net.interface,
        "WIZARD_IP_ADDRESS": net.ip_address,
        "WIZARD_NETMASK": net.netmask,
        "WIZARD_GATEWAY": net.gateway,
        "WIZARD_NAMESERVERS": " ".join(net.nameservers),
        "WIZARD_TIMEZONE": config.timezone,
        "WIZARD_LANGUAGE": config.language,
        "WIZARD_ENTITY_NAME": config.entity_name,
        "WIZARD_RUN_ID": run_id,
        "WIZARD_ROOT": str(root),
    }


def _signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _switch(user: RunUser) -> Switch | None:
    """The user switch the helper makes, or None when the runner already is that user."""
    return None if user.is_current else Switch(user.uid, user.gid, user.groups)


@dataclass
class _Watch:
    """The state of one running script while its output is read."""

    child: Spawned
    record: OutputRecord
    deadline: float | None
    grace: float
    splitters: dict[str, LineSplitter] = field(default_factory=dict)
    exited_at: float | None = None
    terminated_at: float | None = None
    killed: bool = False
    timed_out: bool = False
    truncation_logged: bool = False
    leftovers: list[str] = field(default_factory=list)
    drained: float = 0.0
    events: int = 0

    def stop(self, now: float) -> None:
        """Escalate: SIGTERM to the whole group first, SIGKILL once the grace has passed."""
        if self.terminated_at is None:
            self.terminated_at = now
            signal_group(self.child.pid, signal.SIGTERM)
            signal_group(self.child.pid, signal.SIGCONT)  # a stopped script must see it
        elif not self.killed and now - self.terminated_at >= self.grace:
            self.killed = True
            signal_group(self.child.pid, signal.SIGKILL)


class ScriptRunner:
    """Runs one script at a time, through the spawner, and reports every line of its output."""

    def __init__(
        self,
        *,
        spawner: Spawner,
        options: ScriptsOptions,
        log: FilteringBoundLogger,
        log_dir: Path | None,
        progress: Progress | None = None,
    ) -> None:
        self.spawner = spawner
        self.finished: ScriptOutcome | None = None  # the last outcome, even if not yet taken
        self.ran_ahead: dict[str, ScriptOutcome] = {}  # what the helper ran past a failure
        self.options = options
        self.log = log
        self.log_dir = log_dir
        self.progress = progress

    def _record(self, name: str) -> OutputRecord:
        path = script_log_path(self.log_dir, name) if self.log_dir else None
        return OutputRecord(path, self.options.output_cap)

    def run(self, path: Path, name: str) -> ScriptOutcome:
        """Run one script to its end (or its timeout) and describe what happened."""
        log = self.log.bind(script=name)
        record = self._record(name)
        started = time.monotonic()
        try:
            child = self.spawner.next_script()
        except (OSError, SpawnerError) as error:
            log.info("script_started", path=str(path), user=self.options.user.name)
            _close(record, log)
            reason = _cannot_start(error)
            log.error("script_failed", reason=reason)
            self.finished = ScriptOutcome(name, ScriptStatus.FAILED, reason=reason,
                                          duration_s=round(time.monotonic() - started, 3))
            return self.finished
        log.info("script_started", path=str(path), user=self.options.user.name, pid=child.pid)
        timeout = self.options.timeout
        watch = _Watch(child, record, child.started + timeout if timeout else None,
                       self.options.grace)
        try:
            self._pump(watch, name, log)
            self._await_exit(watch, log)
        except RunInterrupted as stop:
            stop.partial = self._stopped(watch, name, log, stop)
            raise
        except SpawnerError as error:
            # The helper is gone: the script must not outlive it unnoticed.
            signal_group(child.pid, signal.SIGKILL)
            _close(record, log)
            log.error("script_failed", reason=str(error))
            self.finished = _broken(name, child, record, watch, error)
            return self.finished
        return self._finish(watch, name, log)

    def _finish(self, watch: _Watch, name: str, log: FilteringBoundLogger) -> ScriptOutcome:
        """The script ended: stop what it left, judge it, tell the helper whether to go on."""
        outcome: ScriptOutcome | None = None
        try:
            with deferred_stop_signals(foreign=False):
                _close(watch.record, log)
                try:
                    leftovers = self._clean_up(watch, log)
                    outcome = self._outcome(name, watch, leftovers, log)
                    # A stop held back meanwhile: the helper must not start the next one.
                    go_on = not outcome.failed and not stop_pending()
                    self.spawner.done_with(watch.child, go_on=go_on)
                except SpawnerError as error:
                    log.error("script_failed", reason=str(error))
                    outcome = _broken(name, watch.child, watch.record, watch, error)
                self.finished = outcome
        except RunInterrupted as stop:
            stop.partial = outcome  # the script itself had finished
            raise
        return outcome

    def _stopped(self, watch: _Watch, name: str, log: FilteringBoundLogger,
                 stop: RunInterrupted) -> ScriptOutcome:
        """A stop request reached the runner while the script ran: stop it and what it left."""
        # Already stopping: a second SIGTERM/SIGINT must not cut the clean-up short.
        with ignored_stop_signals():
            with contextlib.suppress(SpawnerError):
                self.spawner.halt()  # before any signal: nothing may start after this one
            # It may have ended already, its last output still being read: then it is judged
            # as it ended, not as stopped.
            with contextlib.suppress(SpawnerError):
                self.spawner.poll(watch.child)
            ended = watch.child.returncode is not None
            if not ended:
                self._stop_now(watch)
            try:
                leftovers = self._clean_up(watch, log)
                self.spawner.done_with(watch.child, go_on=False)
            except SpawnerError:
                leftovers = tuple(watch.leftovers)
            _close(watch.record, log)
        if ended:
            return self._outcome(name, watch, leftovers, log)
        return ScriptOutcome(
            name, ScriptStatus.FAILED, None, _signal_name(watch.child.returncode or 0),
            _duration(watch.child), watch.record.tail,
            f"stopped: wizard-runner was {stop}", leftovers,
        )

    def stopped_ahead(self, why: str) -> dict[str, ScriptOutcome]:
        """Scripts the helper had started past the one that ended the step: stop them (TERM,
        then KILL) and report each as it really ended, with what its pipes still held."""
        try:
            started = self.spawner.stop_started(self.options.grace)
        except SpawnerError:
            return dict(self.ran_ahead)
        for child in started:
            if not child.pipes_open:
                continue  # the runner followed it: reported already
            with deferred_stop_signals(foreign=False):
                self.ran_ahead.update(self._ran_ahead(child, why))
        for index, code in self.spawner.could_not_start().items():
            name = Path(self.spawner.paths[index]).name
            self.ran_ahead.setdefault(name, ScriptOutcome(
                name, ScriptStatus.FAILED, reason=f"cannot execute: {os.strerror(code)}"
                f"{_exec_hint(code)}"))
        return dict(self.ran_ahead)

    def _ran_ahead(self, child: Spawned, why: str) -> dict[str, ScriptOutcome]:
        """One script run past the runner: its output so far, and how it ended."""
        name = Path(self.spawner.paths[child.index]).name
        record = self._record(name)
        for stream, fd in (("stdout", child.stdout), ("stderr", child.stderr)):
            record.add_lines(stream, _whatever_is_left(fd))
        child.close_pipes()
        _close(record, self.log.bind(script=name))
        code = child.returncode
        if code == 0:
            outcome = ScriptOutcome(name, ScriptStatus.SUCCEEDED, 0, None, _duration(child),
                                    record.tail)
        else:
            exited = code is not None and code > 0
            outcome = ScriptOutcome(name, ScriptStatus.FAILED, code if exited else None,
                                    _signal_name(code or 0), _duration(child), record.tail,
                                    f"exited with {code}" if exited else f"stopped: {why}")
        self.log.warning("script_ran_ahead", script=name, status=outcome.status.value,
                         reason=outcome.reason, pid=child.pid)
        return {name: outcome}

    def _pump(self, watch: _Watch, name: str, log: FilteringBoundLogger) -> None:
        child = watch.child
        selector = selectors.DefaultSelector()
        for stream, fd in (("stdout", child.stdout), ("stderr", child.stderr)):
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, stream)
            watch.splitters[stream] = LineSplitter()
        # The helper's socket wakes the loop up when the script exits.
        selector.register(self.spawner.fileno(), selectors.EVENT_READ, None)
        heard = True  # whether the helper's socket was readable: only then can it say more
        pipes = {child.stdout, child.stderr}
        try:
            while pipes & selector.get_map().keys():
                now = time.monotonic()
                try:
                    self._check_clock(watch, now, log, look=heard)
                except _OutputAbandoned:
                    log.warning("output_abandoned", reason="the script exited but something "
                                "unknown still holds its output open", seconds=DRAIN_LIMIT)
                    break
                if watch.exited_at is not None and self.spawner.fileno() in selector.get_map():
                    selector.unregister(self.spawner.fileno())
                heard = False
                for key, _ in selector.select(self._wait(watch, now)):
                    if key.data is None:
                        heard = True
                    else:
                        self._read(key.fd, key.data, selector, watch, (name, log))
        finally:
            selector.close()
            child.close_pipes()
            for stream, splitter in watch.splitters.items():  # an abandoned stream's last line
                self._emit(name, stream, splitter.flush(), watch, log)

    def _read(self, fd: int, stream: str, selector: selectors.BaseSelector, watch: _Watch,
              about: tuple[str, FilteringBoundLogger]) -> None:
        name, log = about
        data = os.read(fd, _READ_SIZE)
        if not data:
            selector.unregister(fd)
            self._emit(name, stream, watch.splitters[stream].flush(), watch, log)
        elif watch.record.full and watch.truncation_logged:
            # Past both caps only the tail is left to keep: no line splitting, so a flood of
            # output costs little more than reading it.
            self._emit(name, stream, watch.splitters[stream].flush(), watch, log)
            watch.record.add_raw(data)
            if len(data) < _READ_SIZE:
                time.sleep(BULK_PAUSE)  # let the flood pile up in the pipe: fewer wakeups
        else:
            self._emit(name, stream, watch.splitters[stream].feed(data), watch, log)

    def _await_exit(self, watch: _Watch, log: FilteringBoundLogger) -> None:
        """Wait for the script itself, its deadline still running (its output may be closed)."""
        while watch.child.returncode is None:
            now = time.monotonic()
            self._check_clock(watch, now, log)
            self.spawner.wait(watch.child, self._wait(watch, now))

    def _wait(self, watch: _Watch, now: float) -> float:
        waits = [1.0]
        if watch.deadline is not None and not watch.timed_out:
            waits.append(max(watch.deadline - now, 0.0))
        if watch.exited_at is not None or watch.terminated_at is not None:
            waits.append(0.05)
        return min(waits)

    def _check_clock(self, watch: _Watch, now: float, log: FilteringBoundLogger, *,
                     look: bool = True) -> None:
        late = watch.deadline is not None and now >= watch.deadline
        if watch.exited_at is None and (look or late) and \
                self.spawner.poll(watch.child) is not None:
            watch.exited_at = now
        if late and watch.exited_at is None:
            if not watch.timed_out:
                watch.timed_out = True
                log.error("script_timed_out", timeout_s=self.options.timeout)
                self.spawner.hold(watch.child)  # exiting 0 on SIGTERM must not lead on
            watch.stop(now)
        elif watch.terminated_at is not None and watch.exited_at is None:
            watch.stop(now)
        if watch.killed and watch.exited_at is None and watch.terminated_at is not None and \
                now - watch.terminated_at > 3 * watch.grace:
            raise SpawnerError("the script did not end after SIGKILL (stuck in the kernel, "
                               "or its helper no longer reports)")
        if watch.exited_at is not None and now - watch.exited_at >= DRAIN:
            # The script is gone but something still holds its output open: a leftover, if
            # the helper saw one (then it waits; otherwise it may run the next script).
            if watch.child.left_behind:
                watch.leftovers += self._kill_leftovers(log)
            watch.drained += now - watch.exited_at
            watch.exited_at = now  # look again later if the pipes stay open
            if watch.drained >= DRAIN_LIMIT:
                raise _OutputAbandoned

    def _emit(self, name: str, stream: str, lines: list[bytes], watch: _Watch,
              log: FilteringBoundLogger) -> None:
        for index, raw in enumerate(lines):
            if watch.truncation_logged:
                # Past the event budget the lines only go to the script's log, in one batch.
                watch.record.add_lines(stream, lines[index:])
                return
            line = shown_line(raw)
            watch.record.add(stream, line)
            watch.events += len(line) + EVENT_OVERHEAD
            if watch.events <= EVENT_CAP:
                log.info("script_output", stream=stream, line=line)
                if self.progress is not None:
                    self.progress.output(name, stream, line)
            else:
                watch.truncation_logged = True
                log.warning("script_output_not_logged", after_bytes=EVENT_CAP,
                            full_output=str(script_log_path(self.log_dir, name)) if self.log_dir
                            else None)
                if self.progress is not None:
                    self.progress.output(name, "stderr", "[more output: see the script's log]")

    def _stop_now(self, watch: _Watch) -> None:
        pid, grace = watch.child.pid, self.options.grace
        signal_group(pid, signal.SIGTERM)
        signal_group(pid, signal.SIGCONT)
        if not wait_group_gone(pid, grace):
            signal_group(pid, signal.SIGKILL)
            wait_group_gone(pid, grace)
        try:
            if self.spawner.wait(watch.child, grace) is None:
                os.kill(pid, signal.SIGKILL)  # it left its group but is still the script
                self.spawner.wait(watch.child, grace)
        except (OSError, SpawnerError):
            return  # the helper is gone too: nothing more to learn about the script

    def _kill_leftovers(self, log: FilteringBoundLogger) -> list[str]:
        """Stop what the script left running: the helper adopted all of it."""
        helper = self.spawner.pid
        if helper is None:
            return []
        found = []
        deadline = time.monotonic() + 2 * self.options.grace
        while True:  # until the helper has no child left: one may fork while it is stopped
            batch = stop_all(descendants(helper), self.options.grace)
            for leftover in batch:
                log.warning("leftover_killed", pid=leftover.pid, cmdline=leftover.cmdline)
            found += batch
            if not self.spawner.anything_left():
                break
            if time.monotonic() >= deadline:
                raise SpawnerError("processes the script left keep coming back")
        return [f"{leftover.pid} {leftover.cmdline}" for leftover in found]

    def _clean_up(self, watch: _Watch, log: FilteringBoundLogger) -> tuple[str, ...]:
        if watch.child.left_behind or watch.child.returncode is None:
            watch.leftovers += self._kill_leftovers(log)
        return tuple(watch.leftovers)

    def _outcome(self, name: str, watch: _Watch, leftovers: tuple[str, ...],
                 log: FilteringBoundLogger) -> ScriptOutcome:
        code = watch.child.returncode
        if code is None:
            raise SpawnerError(f"no exit status for {name}")  # _await_exit guarantees one
        duration = _duration(watch.child)
        base = ScriptOutcome(name, ScriptStatus.SUCCEEDED, code if code >= 0 else None,
                             _signal_name(code), duration, watch.record.tail, None, leftovers)
        if _ran_past(watch):  # by the helper's clock, even if the runner looked late
            outcome = replace(base, status=ScriptStatus.TIMED_OUT,
                              reason=f"timed out after {self.options.timeout:g} s")
        elif code < 0:
            outcome = replace(base, status=ScriptStatus.FAILED, reason=f"killed by {base.signal}")
        elif code > 0:
            outcome = replace(base, status=ScriptStatus.FAILED, reason=f"exited with {code}")
        else:
            outcome = base
        event = "script_succeeded" if outcome.status is ScriptStatus.SUCCEEDED else "script_failed"
        details: dict[str, Any] = {"exit_code": outcome.exit_code, "signal": outcome.signal,
                                   "duration_s": duration, "reason": outcome.reason}
        if outcome.failed:
            log.error(event, output_tail=outcome.output_tail, **details)
        else:
            log.info(event, **details)
        return outcome


def _broken(name: str, child: Spawned, record: OutputRecord, watch: _Watch,
            error: SpawnerError) -> ScriptOutcome:
    """A script whose helper failed: what is known of it, and why it counts as failed."""
    code = child.returncode
    return ScriptOutcome(name, ScriptStatus.FAILED, code if code and code > 0 else None,
                         _signal_name(code or 0), _duration(child), record.tail, str(error),
                         tuple(watch.leftovers))


def _close(record: OutputRecord, log: FilteringBoundLogger) -> None:
    """Close a script's log file; say so when it could not be written whole (a full disk)."""
    record.close()
    if record.error is not None:
        log.warning("script_log_incomplete", error=record.error,
                    reason="the output is in this log (first MiB) and output_tail only")


def _whatever_is_left(fd: int, limit: int = DEFAULT_CAP) -> list[bytes]:
    """The lines a pipe still holds, read without waiting (up to `limit` bytes)."""
    data = bytearray()
    with contextlib.suppress(OSError):
        os.set_blocking(fd, False)
        while len(data) < limit:
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            data += chunk
    return bytes(data).splitlines()


def _ran_past(watch: _Watch) -> bool:
    """Whether the script ended after its deadline by the helper's clock (the runner may have
    looked late)."""
    ended = watch.child.ended
    return watch.deadline is not None and (ended is None or ended > watch.deadline)


def _duration(child: Spawned) -> float:
    """Seconds from the script's start to its end (to now if it has not ended)."""
    ended = child.ended if child.ended is not None else time.monotonic()
    return round(max(ended - child.started, 0.0), 3)


def _cannot_start(error: OSError | SpawnerError) -> str:
    if isinstance(error, SpawnerError):
        return f"cannot start: {error}"
    return f"cannot execute: {error.strerror}{_exec_hint(error.errno)}"


def _start_index(decisions: Sequence[Decision], start_at: str | None) -> int:
    if start_at is None:
        return 0
    for index, decision in enumerate(decisions):
        if decision.name == start_at:
            if decision.verdict is Verdict.SKIP:
                raise UsageError(f"--from {start_at}: that entry is skipped ({decision.reason})")
            return index
    raise UsageError(f"--from {start_at}: no such script in wizard.d")


def run_scripts(
    *,
    config: WizardConfig,
    layout: Layout,
    run_id: str,
    options: ScriptsOptions,
    log: FilteringBoundLogger,
    progress: Progress | None = None,
    record: Callable[[list[ScriptOutcome]], None] | None = None,
) -> list[ScriptOutcome]:
    """Run every script of wizard.d in order; the first failure stops the rest.

    `record` is called with the outcomes so far after each script, so that an interrupted
    run can still report them.
    """
    require_switch_allowed(options.user)
    found = scan(layout.wizard_d, options.user, top=layout.root)
    check_safe(found, options.user)
    decisions = found.decisions
    start = _start_index(decisions, options.start_at)
    env = script_env(config, options.user, run_id, layout.root)
    paths = []
    for decision in decisions[start:]:
        if decision.verdict is Verdict.FAIL:
            break  # the step stops there: the helper runs only what comes before
        if decision.verdict is Verdict.RUN:
            paths.append(str(layout.wizard_d / decision.name))
    with Spawner(env, paths, _switch(options.user), grace=options.grace) as spawner:
        runner = ScriptRunner(spawner=spawner, options=options, log=log,
                              log_dir=layout.log_dir / run_id, progress=progress)
        return _run_all(runner, layout.wizard_d, decisions, start, options, log, progress, record)


def _run_all(  # noqa: PLR0917 - the step's state, handed on from run_scripts in one place
    runner: ScriptRunner,
    wizard_d: Path,
    decisions: Sequence[Decision],
    start: int,
    options: ScriptsOptions,
    log: FilteringBoundLogger,
    progress: Progress | None,
    record: Callable[[list[ScriptOutcome]], None] | None,
) -> list[ScriptOutcome]:
    total = sum(1 for d in decisions[start:] if d.verdict is not Verdict.SKIP)
    position = 0
    outcomes: list[ScriptOutcome] = []
    stopped_by: str | None = None
    ahead: dict[str, ScriptOutcome] = {}  # run by the helper past the failure, now reported
    try:
        for index, decision in enumerate(decisions):
            if decision.verdict is Verdict.SKIP:
                log.info("script_skipped", script=decision.name, reason=decision.reason)
                outcomes.append(_skipped(decision))
            elif index < start:
                outcomes.append(_before_start(decision, options))
            elif stopped_by is not None:
                outcomes.append(ahead.get(decision.name) or ScriptOutcome(
                    decision.name, ScriptStatus.NOT_RUN,
                    reason=f"not run: {stopped_by} failed"))
            else:
                position += 1
                if progress is not None:
                    progress.started(position, total, decision.name)
                outcome = _run_decision(runner, wizard_d, decision, log)
                outcomes.append(outcome)
                if outcome.failed:
                    stopped_by = decision.name
                    ahead = runner.stopped_ahead(f"{decision.name} failed")
                if progress is not None:
                    progress.finished(outcome)
            if record is not None:
                record(outcomes)
    except RunInterrupted as stop:
        outcomes[:] = _interrupted(runner, decisions, start, options, outcomes, stop)
        if record is not None:
            with ignored_stop_signals():
                record(outcomes)
        raise
    return outcomes


def _skipped(decision: Decision) -> ScriptOutcome:
    return ScriptOutcome(decision.name, ScriptStatus.SKIPPED, reason=decision.reason)


def _before_start(decision: Decision, options: ScriptsOptions) -> ScriptOutcome:
    return ScriptOutcome(decision.name, ScriptStatus.NOT_RUN,
                         reason=options.start_note or f"before --from {options.start_at}")


def _interrupted(  # noqa: PLR0917 - the step's whole state, to rebuild its outcomes
    runner: ScriptRunner,
    decisions: Sequence[Decision],
    start: int,
    options: ScriptsOptions,
    outcomes: list[ScriptOutcome],
    stop: RunInterrupted,
) -> list[ScriptOutcome]:
    """The outcomes of a step a stop request cut short, wherever it landed: one per entry of
    wizard.d, in order. What ended is kept; the script the stop hit says so; what the helper
    had started meanwhile is stopped and reported as it ended; the rest is not_run."""
    with ignored_stop_signals():
        known = {outcome.name: outcome for outcome in outcomes}
        for late in (runner.finished, stop.partial):
            if isinstance(late, ScriptOutcome) and late.name not in known:
                known[late.name] = late
        ahead = runner.stopped_ahead(f"wizard-runner was {stop}")
    rebuilt = []
    for index, decision in enumerate(decisions):
        if decision.name in known:
            rebuilt.append(known[decision.name])
        elif decision.verdict is Verdict.SKIP:
            rebuilt.append(_skipped(decision))
        elif index < start:
            rebuilt.append(_before_start(decision, options))
        else:
            rebuilt.append(ahead.get(decision.name) or ScriptOutcome(
                decision.name, ScriptStatus.NOT_RUN, reason=f"not run: {stop}"))
    return rebuilt


def _run_decision(runner: ScriptRunner, wizard_d: Path, decision: Decision,
                  log: FilteringBoundLogger) -> ScriptOutcome:
    if decision.verdict is Verdict.FAIL:
        log.error("script_failed", script=decision.name, reason=decision.reason)
        return ScriptOutcome(decision.name, ScriptStatus.FAILED, reason=decision.reason)
    return runner.run(wizard_d / decision.name, decision.name)


def failure_message(outcome: ScriptOutcome, lines: int = 10) -> str:
    """The run's error for a failed script: which, why, and its last lines of output."""
    message = f"script {printable(outcome.name)} failed: {outcome.reason}"
    tail = outcome.output_tail.splitlines()[-lines:]
    if tail:
        message += "; last output:\n" + "\n".join(f"  {line}" for line in tail)
    return message
