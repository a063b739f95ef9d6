"""The scripts step: run wizard.d in order as the run user; the first failure stops the rest."""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.defaults import DEFAULT_TIMEOUT
from wizard_runner.discovery import Decision, Verdict, check_safe, scan
from wizard_runner.errors import RunInterrupted, UsageError
from wizard_runner.layout import Layout
from wizard_runner.output import DEFAULT_CAP, LineSplitter, OutputRecord, shown_line
from wizard_runner.procs import (
    GRACE,
    find_leftovers,
    reap_zombies,
    signal_group,
    stop_all,
    wait_group_gone,
)
from wizard_runner.runuser import RunUser, require_switch_allowed
from wizard_runner.signals import deferred_stop_signals, ignored_stop_signals

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
_READ_SIZE: Final = 64 * 1024


class ScriptStatus(StrEnum):
    """What became of one script."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    NOT_RUN = "not_run"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ScriptOutcome:
    """One entry of wizard.d in the result."""

    name: str
    status: ScriptStatus
    exit_code: int | None = None
    signal: str | None = None
    duration_s: float | None = None
    output_tail: str = ""
    reason: str | None = None
    leftovers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_s": self.duration_s,
            "output_tail": self.output_tail,
            "reason": self.reason,
            "leftovers": list(self.leftovers),
        }

    @property
    def failed(self) -> bool:
        """True for a failure that stops the step."""
        return self.status in {ScriptStatus.FAILED, ScriptStatus.TIMED_OUT}


@dataclass(frozen=True)
class ScriptsOptions:
    """How the scripts step runs."""

    user: RunUser
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit
    start_at: str | None = None
    output_cap: int = DEFAULT_CAP
    grace: float = GRACE
    subreaper: bool = False


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


def _spawn(path: Path, env: dict[str, str], user: RunUser) -> subprocess.Popen[bytes]:
    switch: dict[str, Any] = {}
    if not user.is_current:
        switch = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    return subprocess.Popen(
        [str(path)],
        executable=str(path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=env,
        close_fds=True,
        start_new_session=True,
        umask=0o022,
        **switch,
    )


@dataclass
class _Watch:
    """The state of one running script while its output is read."""

    process: subprocess.Popen[bytes]
    record: OutputRecord
    started: float
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
            signal_group(self.process.pid, signal.SIGTERM)
            signal_group(self.process.pid, signal.SIGCONT)  # a stopped script must see it
        elif not self.killed and now - self.terminated_at >= self.grace:
            self.killed = True
            signal_group(self.process.pid, signal.SIGKILL)


class ScriptRunner:
    """Runs one script at a time and reports every line of its output."""

    def __init__(
        self,
        *,
        run_id: str,
        env: dict[str, str],
        options: ScriptsOptions,
        log: FilteringBoundLogger,
        log_dir: Path | None,
        progress: Progress | None = None,
    ) -> None:
        self.run_id = run_id
        self.env = env
        self.options = options
        self.log = log
        self.log_dir = log_dir
        self.progress = progress

    def run(self, path: Path, name: str) -> ScriptOutcome:
        """Run one script to its end (or its timeout) and describe what happened."""
        log = self.log.bind(script=name)
        record = OutputRecord(self.log_dir / f"{name}.log" if self.log_dir else None,
                              self.options.output_cap)
        started = time.monotonic()
        log.info("script_started", path=str(path), user=self.options.user.name)
        try:
            process = _spawn(path, self.env, self.options.user)
        except OSError as error:
            record.close()
            reason = f"cannot execute: {error.strerror}{_exec_hint(error.errno)}"
            log.error("script_failed", reason=reason)
            return ScriptOutcome(name, ScriptStatus.FAILED, reason=reason,
                                 duration_s=round(time.monotonic() - started, 3))
        timeout = self.options.timeout
        watch = _Watch(process, record, started, started + timeout if timeout else None,
                       self.options.grace)
        try:
            self._pump(watch, name, log)
            self._await_exit(watch, log)
        except RunInterrupted as stop:
            # Already stopping: a second SIGTERM/SIGINT must not cut the clean-up short.
            with ignored_stop_signals():
                self._stop_now(watch)
                leftovers = self._clean_up(watch, log)
                record.close()
            stop.partial = ScriptOutcome(
                name, ScriptStatus.FAILED, None, _signal_name(process.returncode or 0),
                round(time.monotonic() - started, 3), record.tail,
                f"stopped: wizard-runner was {stop}", leftovers,
            )
            raise
        outcome: ScriptOutcome | None = None
        try:
            with deferred_stop_signals():
                leftovers = self._clean_up(watch, log)
                record.close()
                outcome = self._outcome(name, watch, leftovers, log)
        except RunInterrupted as stop:
            stop.partial = outcome  # the script itself had finished
            raise
        return outcome

    def _pump(self, watch: _Watch, name: str, log: FilteringBoundLogger) -> None:
        process = watch.process
        selector = selectors.DefaultSelector()
        streams: dict[int, tuple[str, IO[bytes]]] = {}
        for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            assert pipe is not None  # noqa: S101 - both are PIPE by construction
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, stream)
            streams[pipe.fileno()] = (stream, pipe)
            watch.splitters[stream] = LineSplitter()
        try:
            while selector.get_map():
                now = time.monotonic()
                try:
                    self._check_clock(watch, now, log)
                except _OutputAbandoned:
                    log.warning("output_abandoned", reason="the script exited but something "
                                "unknown still holds its output open", seconds=DRAIN_LIMIT)
                    break
                for key, _ in selector.select(self._wait(watch, now)):
                    stream = key.data
                    data = os.read(key.fd, _READ_SIZE)
                    if not data:
                        selector.unregister(key.fileobj)
                        self._emit(name, stream, watch.splitters[stream].flush(), watch, log)
                        continue
                    if watch.record.full and watch.truncation_logged:
                        # Past both caps only the tail is left to keep: no line splitting, so
                        # a flood of output costs little more than reading it.
                        self._emit(name, stream, watch.splitters[stream].flush(), watch, log)
                        watch.record.add_raw(data)
                        continue
                    self._emit(name, stream, watch.splitters[stream].feed(data), watch, log)
        finally:
            selector.close()
            for _, pipe in streams.values():
                pipe.close()

    def _await_exit(self, watch: _Watch, log: FilteringBoundLogger) -> None:
        """Wait for the script itself, its deadline still running (its output may be closed)."""
        while watch.process.poll() is None:
            now = time.monotonic()
            self._check_clock(watch, now, log)
            try:
                watch.process.wait(timeout=self._wait(watch, now))
            except subprocess.TimeoutExpired:
                continue

    def _wait(self, watch: _Watch, now: float) -> float:
        waits = [1.0]
        if watch.deadline is not None and not watch.timed_out:
            waits.append(max(watch.deadline - now, 0.0))
        if watch.exited_at is not None or watch.terminated_at is not None:
            waits.append(0.05)
        return min(waits)

    def _check_clock(self, watch: _Watch, now: float, log: FilteringBoundLogger) -> None:
        if watch.exited_at is None and watch.process.poll() is not None:
            watch.exited_at = now
        if watch.deadline is not None and now >= watch.deadline and watch.exited_at is None:
            if not watch.timed_out:
                watch.timed_out = True
                log.error("script_timed_out", timeout_s=self.options.timeout)
            watch.stop(now)
        elif watch.terminated_at is not None and watch.exited_at is None:
            watch.stop(now)
        if watch.exited_at is not None and now - watch.exited_at >= DRAIN:
            # The script is gone but something still holds its output open: a leftover.
            watch.leftovers += self._kill_leftovers(watch.process.pid, log)
            watch.drained += now - watch.exited_at
            watch.exited_at = now  # look again later if the pipes stay open
            if watch.drained >= DRAIN_LIMIT:
                raise _OutputAbandoned

    def _emit(self, name: str, stream: str, lines: list[bytes], watch: _Watch,
              log: FilteringBoundLogger) -> None:
        for raw in lines:
            line = shown_line(raw)
            watch.record.add(stream, line)
            watch.events += len(line) + EVENT_OVERHEAD
            if watch.events <= EVENT_CAP:
                log.info("script_output", stream=stream, line=line)
                if self.progress is not None:
                    self.progress.output(name, stream, line)
            elif not watch.truncation_logged:
                watch.truncation_logged = True
                log.warning("script_output_not_logged", after_bytes=EVENT_CAP,
                            full_output=str(self.log_dir / f"{name}.log") if self.log_dir
                            else None)
                if self.progress is not None:
                    self.progress.output(name, "stderr", "[more output: see the script's log]")

    def _stop_now(self, watch: _Watch) -> None:
        signal_group(watch.process.pid, signal.SIGTERM)
        signal_group(watch.process.pid, signal.SIGCONT)
        if not wait_group_gone(watch.process.pid, self.options.grace):
            signal_group(watch.process.pid, signal.SIGKILL)
            wait_group_gone(watch.process.pid, self.options.grace)
        try:
            watch.process.wait(timeout=self.options.grace)
        except subprocess.TimeoutExpired:
            watch.process.kill()
            watch.process.wait()

    def _kill_leftovers(self, session: int, log: FilteringBoundLogger) -> list[str]:
        found = stop_all(find_leftovers(self.run_id, session, adopted=self.options.subreaper),
                         self.options.grace)
        for leftover in found:
            log.warning("leftover_killed", pid=leftover.pid, cmdline=leftover.cmdline)
        if self.options.subreaper:
            reap_zombies()
        return [f"{leftover.pid} {leftover.cmdline}" for leftover in found]

    def _clean_up(self, watch: _Watch, log: FilteringBoundLogger) -> tuple[str, ...]:
        watch.leftovers += self._kill_leftovers(watch.process.pid, log)
        return tuple(watch.leftovers)

    def _outcome(self, name: str, watch: _Watch, leftovers: tuple[str, ...],
                 log: FilteringBoundLogger) -> ScriptOutcome:
        code = watch.process.returncode
        duration = round(time.monotonic() - watch.started, 3)
        base = ScriptOutcome(name, ScriptStatus.SUCCEEDED, code if code >= 0 else None,
                             _signal_name(code), duration, watch.record.tail, None, leftovers)
        if watch.timed_out:
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
    runnable = [d for d in decisions[start:] if d.verdict is not Verdict.SKIP]
    runner = ScriptRunner(
        run_id=run_id,
        env=script_env(config, options.user, run_id, layout.root),
        options=options,
        log=log,
        log_dir=layout.log_dir / run_id,
        progress=progress,
    )
    outcomes: list[ScriptOutcome] = []
    stopped_by: str | None = None
    for index, decision in enumerate(decisions):
        if decision.verdict is Verdict.SKIP:
            log.info("script_skipped", script=decision.name, reason=decision.reason)
            outcomes.append(ScriptOutcome(decision.name, ScriptStatus.SKIPPED,
                                          reason=decision.reason))
        elif index < start:
            outcomes.append(ScriptOutcome(decision.name, ScriptStatus.NOT_RUN,
                                          reason=f"before --from {options.start_at}"))
        elif stopped_by is not None:
            outcomes.append(ScriptOutcome(decision.name, ScriptStatus.NOT_RUN,
                                          reason=f"not run: {stopped_by} failed"))
        else:
            position = runnable.index(decision) + 1
            if progress is not None:
                progress.started(position, len(runnable), decision.name)
            try:
                outcome = _run_decision(runner, layout, decision, log)
            except RunInterrupted as stop:
                if isinstance(stop.partial, ScriptOutcome):
                    outcomes.append(stop.partial)
                outcomes += [
                    ScriptOutcome(d.name, ScriptStatus.NOT_RUN, reason=f"not run: {stop}")
                    for d in decisions[index + 1 :] if d.verdict is not Verdict.SKIP
                ]
                if record is not None:
                    record(outcomes)
                raise
            if progress is not None:
                progress.finished(outcome)
            outcomes.append(outcome)
            if outcome.failed:
                stopped_by = decision.name
        if record is not None:
            record(outcomes)
    return outcomes


def _run_decision(runner: ScriptRunner, layout: Layout, decision: Decision,
                  log: FilteringBoundLogger) -> ScriptOutcome:
    if decision.verdict is Verdict.FAIL:
        log.error("script_failed", script=decision.name, reason=decision.reason)
        return ScriptOutcome(decision.name, ScriptStatus.FAILED, reason=decision.reason)
    return runner.run(layout.wizard_d / decision.name, decision.name)


def failure_message(outcome: ScriptOutcome, lines: int = 10) -> str:
    """The run's error for a failed script: which, why, and its last lines of output."""
    message = f"script {outcome.name} failed: {outcome.reason}"
    tail = outcome.output_tail.splitlines()[-lines:]
    if tail:
        message += "; last output:\n" + "\n".join(f"  {line}" for line in tail)
    return message
