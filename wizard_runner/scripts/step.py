"""The scripts step: every entry of wizard.d in order, run one at a time by the helper as the
run user, inside the step's containment; the first failure, a stop or a broken helper ends it.

    listing -> decisions (discovery) -> for each: run, skip, or not run -> outcomes (result)
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.errors import RunInterrupted, UsageError
from wizard_runner.escape import printable
from wizard_runner.layout import Layout
from wizard_runner.procs import GRACE
from wizard_runner.result import ScriptOutcome, ScriptStatus
from wizard_runner.runuser import RunUser, require_switch_allowed
from wizard_runner.scripts.containment import Containment, contain
from wizard_runner.scripts.discovery import Decision, Verdict, check_safe, scan
from wizard_runner.scripts.output import DEFAULT_CAP, Progress, ScriptOutput
from wizard_runner.scripts.spawner import HelperError, Spawner, Started, Switch
from wizard_runner.scripts.watch import Watch, Watched, how_broken
from wizard_runner.signals import pending_stop, take_stop

SCRIPT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ScriptsOptions:
    """How the scripts step runs."""

    user: RunUser
    timeout: float | None = 600.0  # None: no limit
    start_at: str | None = None
    start_note: str | None = None  # why the scripts before start_at do not run
    output_cap: int = DEFAULT_CAP
    grace: float = GRACE


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


# --- judging one script (pure) ------------------------------------------------------------------


def _signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _verdict(seen: Watched, started: float, signal_name: str | None
             ) -> tuple[ScriptStatus, str | None]:
    exited = seen.exited
    if seen.broken is not None:
        return ScriptStatus.FAILED, seen.broken
    if exited is None:
        return ScriptStatus.FAILED, "no exit status came from the helper"
    if seen.deadline is not None and exited.ended > seen.deadline:
        return ScriptStatus.TIMED_OUT, f"timed out after {seen.deadline - started:g} s"
    if seen.stopped_by is not None and (seen.stopped_at is None or
                                        exited.ended >= seen.stopped_at):
        return ScriptStatus.FAILED, f"stopped: wizard-runner was {RunInterrupted(seen.stopped_by)}"
    code = exited.returncode
    if code < 0:
        return ScriptStatus.FAILED, f"killed by {signal_name}"
    return (ScriptStatus.FAILED, f"exited with {code}") if code else (ScriptStatus.SUCCEEDED, None)


def judge(name: str, script: Started, seen: Watched, tail: str) -> ScriptOutcome:
    """What became of a script, from what its watch saw. Times are the helper's: a script that
    ended past its deadline timed out, one that ended before a stop ended by itself."""
    exited = seen.exited
    code = exited.returncode if exited is not None else None
    ended = exited.ended if exited is not None else seen.ended_at or script.started
    status, reason = _verdict(seen, script.started, _signal_name(code or 0))
    return ScriptOutcome(
        name, status, code if code is not None and code >= 0 else None,
        _signal_name(code or 0), round(max(ended - script.started, 0.0), 3), tail, reason,
        tuple(str(found) for found in seen.leftovers) + (
            (f"... and {seen.more_leftovers} more",) if seen.more_leftovers else ()),
    )


def failure_message(outcome: ScriptOutcome, lines: int = 10) -> str:
    """The run's error for a failed script: which, why, and its last lines of output."""
    message = f"script {printable(outcome.name)} failed: {outcome.reason}"
    tail = outcome.output_tail.splitlines()[-lines:]
    if tail:
        message += "; last output:\n" + "\n".join(f"  {line}" for line in tail)
    return message


def _exec_hint(code: int | None) -> str:
    if code == 8:  # ENOEXEC
        return " (no #! line?)"
    if code == 2:  # ENOENT
        return " (is the #! interpreter installed?)"
    return ""


# --- the sequence (shell) -----------------------------------------------------------------------


def _start_index(decisions: Sequence[Decision], start_at: str | None) -> int:
    if start_at is None:
        return 0
    for index, decision in enumerate(decisions):
        if decision.name == start_at and decision.verdict is not Verdict.SKIP:
            return index
    raise UsageError(f"--from {printable(start_at)}: no such script in wizard.d")


class _Step:
    """The step under way: its helper (started with the first script), what ended it."""

    def __init__(self, *, env: dict[str, str], options: ScriptsOptions, layout: Layout,
                 run_id: str, log: FilteringBoundLogger, progress: Progress | None,
                 contained: Callable[[str], None] | None = None) -> None:
        self.env = env
        self.options = options
        self.layout = layout
        self.run_id = run_id
        self.log = log
        self.progress = progress
        self.contained = contained
        self.box: Containment | None = None
        self.spawner: Spawner | None = None
        self.ended_by: str | None = None  # why the rest does not run
        self.stopped: int | None = None
        self.ordered: int | None = None  # the script ordered ahead (its position)
        self.wizard_d = layout.wizard_d
        self.log_dir = layout.log_dir / run_id

    def helper(self) -> Spawner:
        """The step's helper, started in its containment on first use."""
        if self.spawner is None:
            self.box = contain(self.run_id)
            self.log.info("scripts_contained", containment=self.box.name)
            if self.contained is not None:
                self.contained(self.box.name)
            user = self.options.user
            switch = None if user.is_current else Switch(user.uid, user.gid, user.groups)
            spawner = Spawner(self.env, switch, self.box)
            spawner.start()
            self.spawner = spawner
        return self.spawner

    def close(self) -> None:
        """Stop the helper and everything left in the containment, remove it."""
        if self.spawner is not None:
            self.spawner.close()
        if self.box is not None:
            self.box.close()

    def _broken(self, name: str) -> None:
        """The helper failed: end everything the step started, the helper too, at once."""
        if self.box is not None:
            self.box.kill()
        self.ended_by = f"not run: the script helper failed at {printable(name)}"

    def run(self, decision: Decision, position: tuple[int, int],
            follow: Decision | None) -> ScriptOutcome:
        """Run one script to its end and judge it. When it ended cleanly, `follow` (the next
        script) is ordered at once, before this one's outcome is logged: the helper starts it
        while the runner writes, and no runner wakes a helper gone idle meanwhile."""
        name = decision.name
        log = self.log.bind(script=name)
        path = str(self.wizard_d / name)
        if self.progress is not None:
            self.progress.started(*position, name)
        output = ScriptOutput(name, self.log_dir, log, self.progress, self.options.output_cap)
        try:
            spawner = self.helper()
            if self.ordered == position[0]:
                script = spawner.started(position[0], path)
            else:
                script = spawner.run(position[0], path)
        except HelperError as error:
            output.close()
            log.info("script_started", path=path, user=self.options.user.name)
            # Stopped or killed as it started the script: the script may well have done it.
            state = self.spawner.state() if self.spawner is not None else None
            reason = how_broken(state) if state else f"cannot start: {error}"
            self._broken(name)
            return ScriptOutcome(name, ScriptStatus.FAILED, reason=reason, duration_s=0.0)
        except OSError as error:
            output.close()
            log.info("script_started", path=path, user=self.options.user.name)
            reason = f"cannot execute: {error.strerror}{_exec_hint(error.errno)}"
            return ScriptOutcome(name, ScriptStatus.FAILED, reason=reason, duration_s=0.0)
        assert self.box is not None  # noqa: S101 - helper() made it
        log.info("script_started", path=path, user=self.options.user.name, pid=script.pid)
        timeout = self.options.timeout
        deadline = script.started + timeout if timeout else None
        watch = Watch(spawner, self.box, script, output, deadline=deadline,
                      grace=self.options.grace, log=log)
        seen = watch.run()
        if follow is not None and _clean(seen) and pending_stop() is None:
            with contextlib.suppress(HelperError):  # said when its start is awaited
                spawner.order(position[0] + 1, str(self.wizard_d / follow.name))
                self.ordered = position[0] + 1
        outcome = judge(name, script, seen, output.close())
        if seen.broken is not None:
            self._broken(name)
        if seen.stopped_by is not None:
            self.stopped = seen.stopped_by
        return outcome


def _clean(seen: Watched) -> bool:
    """Ended by itself with 0, in time, leaving nothing: the next script may start."""
    exited = seen.exited
    return (exited is not None and exited.returncode == 0 and seen.broken is None and
            seen.stopped_by is None and not seen.leftovers and not seen.more_leftovers and
            (seen.deadline is None or exited.ended <= seen.deadline))


def _log_outcome(outcome: ScriptOutcome, log: FilteringBoundLogger) -> None:
    details = {"exit_code": outcome.exit_code, "signal": outcome.signal,
               "duration_s": outcome.duration_s, "reason": outcome.reason}
    if outcome.failed:
        log.error("script_failed", script=outcome.name, output_tail=outcome.output_tail,
                  **details)
    else:
        log.info("script_succeeded", script=outcome.name, **details)


def run_scripts(
    *,
    config: WizardConfig,
    layout: Layout,
    run_id: str,
    options: ScriptsOptions,
    log: FilteringBoundLogger,
    progress: Progress | None = None,
    record: Callable[[list[ScriptOutcome]], None] | None = None,
    contained: Callable[[str], None] | None = None,
) -> list[ScriptOutcome]:
    """Run every script of wizard.d in order; the first failure stops the rest.

    `record` is called with the outcomes so far after each entry, `contained` with the name
    of the containment (`cgroup` or `subreaper`) as the first script is about to start. A
    stop signal (with
    wizard-runner's handlers) stops the running script, reports the rest `not_run`, and
    raises RunInterrupted once every outcome is recorded.
    """
    require_switch_allowed(options.user)
    found = scan(layout.wizard_d, options.user, top=layout.root)
    check_safe(found, options.user)
    decisions = found.decisions
    start = _start_index(decisions, options.start_at)
    total = sum(1 for d in decisions[start:] if d.verdict is not Verdict.SKIP)
    step = _Step(env=script_env(config, options.user, run_id, layout.root), options=options,
                 layout=layout, run_id=run_id, log=log, progress=progress, contained=contained)
    outcomes: list[ScriptOutcome] = []
    position = 0
    try:
        for index, decision in enumerate(decisions):
            if index >= start and decision.verdict is not Verdict.SKIP:
                position += 1
            outcome = _next(step, decision, index < start, position, total)
            if outcome is None:
                outcome = step.run(decision, (position, total), _following(decisions, index))
                _log_outcome(outcome, log)
                if progress is not None:
                    progress.finished(outcome)
                if outcome.failed and step.ended_by is None:
                    step.ended_by = f"not run: {printable(decision.name)} failed"
                if step.stopped is not None:
                    step.ended_by = f"not run: wizard-runner was {RunInterrupted(step.stopped)}"
            outcomes.append(outcome)
            if record is not None:
                record(outcomes)
    finally:
        step.close()
    if step.stopped is not None:
        take_stop()
        raise RunInterrupted(step.stopped)
    return outcomes


def _following(decisions: Sequence[Decision], index: int) -> Decision | None:
    """The entry that runs after `index` if all goes well (None: none, or one that fails)."""
    for decision in decisions[index + 1:]:
        if decision.verdict is not Verdict.SKIP:
            return decision if decision.verdict is Verdict.RUN else None
    return None


def _next(step: _Step, decision: Decision, before_start: bool, position: int,
          total: int) -> ScriptOutcome | None:
    """The outcome of an entry that does not run (skipped, before the start, after the end,
    failing at its place), or None when it runs."""
    options, log = step.options, step.log
    if decision.verdict is Verdict.SKIP:
        log.info("script_skipped", script=decision.name, reason=decision.reason)
        return ScriptOutcome(decision.name, ScriptStatus.SKIPPED, reason=decision.reason)
    if before_start:
        return ScriptOutcome(decision.name, ScriptStatus.NOT_RUN,
                             reason=options.start_note or f"before --from {options.start_at}")
    stop = pending_stop()
    if step.ended_by is None and stop is not None and step.ordered != position:
        step.stopped = stop
        step.ended_by = f"not run: wizard-runner was {RunInterrupted(stop)}"
    if step.ended_by is not None:
        return ScriptOutcome(decision.name, ScriptStatus.NOT_RUN, reason=step.ended_by)
    if decision.verdict is Verdict.FAIL:
        log.error("script_failed", script=decision.name, reason=decision.reason)
        step.ended_by = f"not run: {printable(decision.name)} failed"
        if step.progress is not None:
            step.progress.started(position, total, decision.name)
        failed = ScriptOutcome(decision.name, ScriptStatus.FAILED, reason=decision.reason)
        if step.progress is not None:
            step.progress.finished(failed)
        return failed
    return None

