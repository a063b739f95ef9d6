"""The scripts step: every entry of wizard.d in order, run one at a time by the helper as the
run user, inside the step's containment; the first failure, a stop or a broken helper ends it.

    listing -> decisions (discovery) -> for each: run, skip, or not run -> outcomes (result)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from structlog.typing import FilteringBoundLogger

from wizard_runner import collector
from wizard_runner.config import WizardConfig
from wizard_runner.defaults import DEFAULT_CAP, DEFAULT_TIMEOUT, GRACE
from wizard_runner.errors import RunInterrupted, UsageError
from wizard_runner.escape import printable
from wizard_runner.layout import Layout
from wizard_runner.result import ScriptOutcome, ScriptStatus
from wizard_runner.runuser import RunUser, require_switch_allowed
from wizard_runner.scripts.discovery import Decision, Verdict, check_safe, scan
from wizard_runner.signals import pending_stop, settle_stops

if TYPE_CHECKING:
    from wizard_runner.scripts.containment import Containment
    from wizard_runner.scripts.output import Progress
    from wizard_runner.scripts.spawner import Spawner
    from wizard_runner.scripts.watch import Watched

SCRIPT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_EXEC_HINTS: Final = {errno.ENOEXEC: " (no #! line?)",
                      errno.ENOENT: " (is the #! interpreter installed?)"}


class ScriptsOptions(NamedTuple):
    """How the scripts step runs."""

    user: RunUser
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit
    start_at: str | None = None
    start_note: str | None = None  # why the scripts before start_at do not run
    output_cap: int = DEFAULT_CAP
    grace: float = GRACE


def script_env(config: WizardConfig, user: RunUser, run_id: str, root: Path) -> dict[str, str]:
    """The whole environment of a script: basics plus the non-secret wizard values."""
    net = config.network
    return {
        "PATH": SCRIPT_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name,
        "LANG": "C.UTF-8", "WIZARD_HOSTNAME": net.hostname, "WIZARD_DOMAIN": net.domain,
        "WIZARD_FQDN": net.fqdn, "WIZARD_INTERFACE": net.interface,
        "WIZARD_IP_ADDRESS": net.ip_address, "WIZARD_NETMASK": net.netmask,
        "WIZARD_GATEWAY": net.gateway, "WIZARD_NAMESERVERS": " ".join(net.nameservers),
        "WIZARD_TIMEZONE": config.timezone, "WIZARD_LANGUAGE": config.language,
        "WIZARD_ENTITY_NAME": config.entity_name, "WIZARD_RUN_ID": run_id,
        "WIZARD_ROOT": str(root),
    }


# --- judging one script (pure) ------------------------------------------------------------------


def _signal_name(returncode: int | None) -> str | None:
    from wizard_runner.procs import signal_name

    return None if returncode is None or returncode >= 0 else signal_name(-returncode)


def _verdict(seen: Watched) -> tuple[ScriptStatus, str | None]:
    exited = seen.exited
    if seen.cannot_start is not None:
        code = seen.cannot_start
        return ScriptStatus.FAILED, (f"cannot execute: {os.strerror(code)}"
                                     f"{_EXEC_HINTS.get(code, '')}")
    if seen.broken is not None or exited is None:
        return ScriptStatus.FAILED, seen.broken or "no exit status came from the helper"
    if seen.stopped_by is not None and seen.stopped_at is not None:  # the runner stopped it
        return ScriptStatus.FAILED, f"stopped: wizard-runner was {RunInterrupted(seen.stopped_by)}"
    if seen.deadline is not None and (seen.stopped_at is not None or  # ... for its deadline
                                      exited.ended > seen.deadline):  # (the helper's clock)
        return ScriptStatus.TIMED_OUT, f"timed out after {seen.limit:.4g} s"
    code = exited.returncode
    if code < 0:
        return ScriptStatus.FAILED, f"killed by {_signal_name(code)}"
    return (ScriptStatus.FAILED, f"exited with {code}") if code else (ScriptStatus.SUCCEEDED, None)


def judge(name: str, seen: Watched, tail: str) -> ScriptOutcome:
    """What became of a script, from what its watch saw: a script the runner stopped was
    stopped (for a stop signal) or timed out (for its deadline), as the log says; else one that
    ended past its deadline by the helper's clock timed out; else its exit says."""
    code = seen.exited.returncode if seen.exited is not None else None
    ended = seen.exited.ended if seen.exited is not None else seen.ended_at
    took = ended - seen.started if ended is not None and seen.started is not None else 0.0
    status, reason = _verdict(seen)
    more = (f"... and {seen.more_leftovers} more",) if seen.more_leftovers else ()
    return ScriptOutcome(name, status, code if code is not None and code >= 0 else None,
                         _signal_name(code), round(max(took, 0.0), 3), tail,
                         reason, tuple(str(found) for found in seen.leftovers) + more)


def failure_message(outcome: ScriptOutcome, lines: int = 10) -> str:
    """The run's error for a failed script: which, why, and its last lines of output."""
    message = f"script {printable(outcome.name)} failed: {outcome.reason}"
    tail = outcome.output_tail.splitlines()[-lines:]
    return message + ("; last output:\n" + "\n".join(f"  {line}" for line in tail)
                      if tail else "")


# --- the sequence (shell) -----------------------------------------------------------------------


@dataclass
class _Step:
    """The step under way: its helper (started with the first script), what ended it."""

    env: dict[str, str]
    options: ScriptsOptions
    wizard_d: Path
    log_dir: Path  # this run's
    run_id: str
    log: FilteringBoundLogger
    progress: Progress | None
    contained: Callable[[str], None] | None
    box: Containment | None = None
    spawner: Spawner | None = None
    ended_by: str | None = None  # why the rest does not run
    stopped: int | None = None  # the stop signal that ended the step
    ahead: tuple[int, int] | None = None  # the next script is ordered: its pipes
    under_way: bool = False  # an entry is being seen to (it may have run)
    judged: ScriptOutcome | None = None  # ... and what became of it, once known

    def helper(self) -> Spawner:
        """The step's helper, started in its containment on first use."""
        # Only a step with a script to run needs these (and their imports' start-up time).
        from wizard_runner.scripts.containment import contain, note_cleared
        from wizard_runner.scripts.spawner import Spawner

        if self.spawner is None:
            collector.resume()  # scripts may run for long, and write without end
            self.box = contain(self.run_id)
            self.log.info("scripts_contained", containment=self.box.name)
            note_cleared(self.log, self.box.cleared)  # a killed runner's, that nothing stopped
            if self.contained is not None:
                self.contained(self.box.name)
            user = self.options.user
            self.spawner = Spawner(self.env, None if user.is_current else user, self.box)
            self.spawner.start()
        return self.spawner

    def close(self) -> None:
        """Stop the helper and everything left in the containment, remove it."""
        for fd in self.ahead or ():  # never watched: the step broke off
            os.close(fd)
        try:
            if self.spawner is not None:
                self.spawner.close()
        finally:
            if self.box is not None:
                self.box.close()

    def _broken(self, name: str) -> None:
        """The helper failed: end everything the step started, the helper too, at once."""
        if self.box is not None:
            with contextlib.suppress(OSError):  # (its watch says what could not be killed)
                self.box.kill()
        self.ended_by = f"not run: the script helper failed at {printable(name)}"

    def run(self, name: str, position: int) -> ScriptOutcome:
        """Order one script, watch it to its end, judge it."""
        from wizard_runner.scripts.output import ScriptOutput
        from wizard_runner.scripts.spawner import HelperError
        from wizard_runner.scripts.watch import Watch

        log, path = self.log.bind(script=name), str(self.wizard_d / name)
        output = ScriptOutput(name, self.log_dir, log, self.progress, self.options.output_cap)
        try:
            spawner = self.helper()
            ahead, self.ahead = self.ahead, None  # ordered as the one before ended: it runs
            if ahead is None and (stop := pending_stop()) is not None:  # came as it was
                output.close()  # shown, or as the helper started: it does not start
                self._end_for(stop)
                return ScriptOutcome(name, ScriptStatus.NOT_RUN, reason=self.ended_by)
            pipes = ahead or spawner.order(position, path)
        except (HelperError, OSError) as error:  # not started or told, or no pipe made
            output.close()
            log.info("script_started", user=self.options.user.name)
            why = error.strerror if isinstance(error, OSError) else error
            if isinstance(error, HelperError):
                self._broken(name)  # the step ends here
            return ScriptOutcome(name, ScriptStatus.FAILED, reason=f"cannot start: {why}",
                                 duration_s=0.0)
        try:
            seen = Watch(spawner, position, pipes, output,
                         timeout=self.options.timeout, grace=self.options.grace, log=log,
                         shown={"path": path, "user": self.options.user.name}).run()
            tail = output.close()  # (it shows the last line, if unterminated)
        except BaseException:
            output.record.close()  # the step breaks off (the view raised): no file left open
            raise
        if seen.broken is not None:
            self._broken(name)
        self.stopped = seen.stopped_by or self.stopped
        outcome = judge(name, seen, tail)
        if seen.cannot_start == errno.ENOENT and not os.path.lexists(path):
            return dataclasses.replace(outcome, reason="cannot execute: it is no longer in "
                                       "wizard.d (removed since the step listed it)")
        return outcome

    def _end_for(self, stop: int) -> None:
        """A stop signal ends the step: the scripts after this one do not run."""
        self.stopped = stop
        self.ended_by = f"not run: wizard-runner was {RunInterrupted(stop)}"

    def order_ahead(self, decision: Decision | None, position: int) -> None:
        """The script before succeeded, and its end is shown: order the next one now, before
        the runner logs and records the one before, which it does while the next starts (what
        lock-step costs: BENCHMARKS.md). The next one's watch begins on its pipes, and acts on
        a stop then. An order that fails here is made again, and said, by its entry."""
        from wizard_runner.scripts.spawner import HelperError

        if decision is None or decision.verdict is not Verdict.RUN or self.spawner is None \
                or pending_stop() is not None:
            return
        with contextlib.suppress(HelperError, OSError):
            self.ahead = self.spawner.order(position, str(self.wizard_d / decision.name))

    def entry(self, decision: Decision, position: int, total: int,
              following: Decision | None = None) -> ScriptOutcome:
        """What becomes of one entry of wizard.d past the start point (shown as it starts
        and ends, unless it does not run); the entry `following` it is ordered once its
        success is shown."""
        name, stop = decision.name, pending_stop()
        if self.ended_by is None and stop is not None and self.ahead is None:
            self._end_for(stop)  # no script starts once a stop is held
        if self.ended_by is not None:
            return ScriptOutcome(name, ScriptStatus.NOT_RUN, reason=self.ended_by)
        self.under_way = True
        if self.progress is not None:
            self.progress.started(position, total, name)
        if decision.verdict is Verdict.FAIL:
            outcome = ScriptOutcome(name, ScriptStatus.FAILED, reason=decision.reason)
        else:
            outcome = self.run(name, position)
        self.judged = outcome
        if self.progress is not None:
            self.progress.finished(outcome)
        if outcome.status is ScriptStatus.SUCCEEDED:
            self.order_ahead(following, position + 1)
        if outcome.status is not ScriptStatus.NOT_RUN:
            self._log_end(outcome)
        if self.stopped is not None:
            self._end_for(self.stopped)
        self.under_way, self.judged = False, None
        return outcome

    def _log_end(self, outcome: ScriptOutcome) -> None:
        details = {"exit_code": outcome.exit_code, "signal": outcome.signal,
                   "duration_s": outcome.duration_s, "reason": outcome.reason}
        if outcome.failed:
            self.ended_by = self.ended_by or f"not run: {printable(outcome.name)} failed"
            self.log.error("script_failed", script=outcome.name,
                           output_tail=outcome.output_tail, **details)
        else:
            self.log.info("script_succeeded", script=outcome.name, **details)


def _start_index(decisions: Sequence[Decision], start_at: str | None) -> int:
    if start_at is None:
        return 0
    for index, decision in enumerate(decisions):
        if decision.name == start_at and decision.verdict is not Verdict.SKIP:
            return index
    raise UsageError(f"--from {printable(start_at)}: no such script in wizard.d")


def _cut_short(rest: Sequence[Decision], cut: BaseException, started: int
               ) -> list[ScriptOutcome]:
    """The entries left when the step is cut short where it happens to be (a KeyboardInterrupt,
    an embedding application's signal handler raising, a bug): the first `started` (the one
    under way, the next one if already ordered) may have run in part, the others did not run.
    What they started is stopped as the step closes."""
    why = f"cut short by {type(cut).__name__}"
    return [ScriptOutcome(decision.name, ScriptStatus.FAILED, reason=f"{why}: it may have run "
                          "in part") if index < started else
            ScriptOutcome(decision.name, ScriptStatus.NOT_RUN, reason=f"not run: the step was "
                          f"{why}") for index, decision in enumerate(rest)]


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

    `record` gets the outcomes so far after each entry, `contained` the containment's name
    (`cgroup` or `subreaper`) as the first script is about to start. A stop signal (with
    wizard-runner's handlers) stops the running script, reports the rest `not_run`, and
    raises RunInterrupted once every outcome is recorded; one that came as the last script
    ended by itself is left held for the caller.
    """
    require_switch_allowed(options.user)
    # Each of the layout's accessors checks its path against the root: once per step.
    wizard_d = layout.wizard_d
    found = scan(wizard_d, options.user, top=layout.root)
    check_safe(found, options.user)
    decisions = found.decisions
    start = _start_index(decisions, options.start_at)
    total = sum(1 for d in decisions[start:] if d.verdict is not Verdict.SKIP)
    step = _Step(script_env(config, options.user, run_id, layout.root), options, wizard_d,
                 layout.log_dir / run_id, run_id, log, progress, contained)
    outcomes: list[ScriptOutcome] = []
    position = 0
    try:
        for index, decision in enumerate(decisions):
            if decision.verdict is Verdict.SKIP:
                log.info("script_skipped", script=decision.name, reason=decision.reason)
                outcome = ScriptOutcome(decision.name, ScriptStatus.SKIPPED,
                                        reason=decision.reason)
            elif index < start:
                outcome = ScriptOutcome(decision.name, ScriptStatus.NOT_RUN, reason=(
                    options.start_note or f"before --from {options.start_at}"))
            else:
                position += 1
                following = decisions[index + 1] if index + 1 < len(decisions) else None
                outcome = step.entry(decision, position, total, following)
            outcomes.append(outcome)
            if record is not None:
                record(outcomes)
    except BaseException as cut:  # not a stop of wizard-runner's: see _cut_short
        if record is not None and not isinstance(cut, RunInterrupted):
            judged = [step.judged] if step.judged is not None else []  # it stands
            started = (step.under_way and not judged) + (step.ahead is not None)
            rest = decisions[len(outcomes) + len(judged):]
            record(outcomes + judged + _cut_short(rest, cut, started))
        raise
    finally:
        step.close()
    statuses = {outcome.status for outcome in outcomes[start:]}  # past the start point
    if step.stopped is not None and statuses - {ScriptStatus.SUCCEEDED, ScriptStatus.SKIPPED}:
        settle_stops()
        raise RunInterrupted(step.stopped)
    # A stop that came as the last script ended by itself cut nothing short: it stays held,
    # and the run reports that every step had completed before it was acted on.
    return outcomes
