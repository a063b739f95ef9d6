"""One run from start to result: preflight, lock, log, saved body, system step, scripts step,
result; every failure ends as a WizardRunnerError or in the result, never as a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Final, NamedTuple, TextIO

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SOFTWARE,
    ApplyError,
    ResultNotStoredError,
    RunInterrupted,
    RunnerIOError,
    WizardRunnerError,
    exit_for_signal,
)
from wizard_runner.fsio import RunLock, read_regular
from wizard_runner.layout import SYSTEM_FILES, Layout
from wizard_runner.log import LogFile, make_logger, run_log_file, stdlib_logger
from wizard_runner.preflight import RunOptions, RunPlan, prepare
from wizard_runner.result import (
    NOT_RESTORED,
    FileAction,
    FileOutcome,
    RunResult,
    RunStatus,
    ScriptOutcome,
    SystemConfResult,
    is_run_id,
    new_run_id,
    now,
)
from wizard_runner.signals import deferred_stop_signals, run_stops, settle_stops, stop_here
from wizard_runner.state import (
    UNSTORED,
    completed_pass,
    holder_words,
    parse_holder,
    pass_unknown_after,
    previous_pass,
    read_last_result,
    save_config,
    write_result,
)

if TYPE_CHECKING:
    from pathlib import Path

    from wizard_runner.activate import NetworkChange
    from wizard_runner.sysconf import FileChange

__all__ = ["RunOptions", "execute"]

SKIPPED_BY_CONFIG = "handle_system_conf=false"

#: The file whose follow-up takes the network down and up.
INTERFACES: Final = "/etc/network/interfaces"


@dataclass
class _Progress:
    """What is known so far, so that an interrupted run can still report it."""

    system: SystemConfResult | None = None
    scripts: list[ScriptOutcome] = field(default_factory=list)
    containment: str | None = None
    scripts_began: bool = False
    scripts_begun_by: str | None = None  # see RunResult
    scripts_completed: bool = False


class _Run(NamedTuple):
    """One run under way: what it carries out, how, and what it has done so far."""

    config: WizardConfig
    options: RunOptions
    plan: RunPlan
    run_id: str
    log: FilteringBoundLogger
    progress: _Progress
    log_file: LogFile
    warnings: list[str]  # beside the work, for the result
    #: The run before was killed, or did not store its result, and was to run its scripts:
    #: it may have run some part-way.
    pass_unknown: bool

    @property
    def layout(self) -> Layout:
        """Where the run works."""
        return self.plan.layout


def plan_system(
    config: WizardConfig, layout: Layout, options: RunOptions
) -> tuple[FileChange, ...]:
    """Read the managed files under the root and plan their new content."""
    from wizard_runner.sysconf import plan_changes, read_targets

    return plan_changes(
        config, read_targets(layout), replace_symlinks=options.replace_symlinks
    )


def check_writes(config: WizardConfig, layout: Layout, options: RunOptions,
                 changes: tuple[FileChange, ...], log: FilteringBoundLogger) -> list[FileChange]:
    """The planned writes, checked before any is made: the wizard's network device (on the
    live system), the interfaces files /etc/network/interfaces includes, then the Debian tools
    (unless told not to)."""
    from wizard_runner.sysconf import Plan
    from wizard_runner.toolcheck import (
        ToolChecker,
        check_included_interfaces,
        check_interface_device,
    )

    writes = [change for change in changes if change.plan is Plan.WRITE]
    for change in writes:
        if change.path == "/etc/network/interfaces":
            check_interface_device(config, layout, change.new or b"")
            check_included_interfaces(config, layout, change.new or b"")
    if writes and options.check_with_tools:
        ToolChecker(config, layout, log)(writes)
    return writes


def _not_written(changes: tuple[FileChange, ...], error: WizardRunnerError) -> SystemConfResult:
    from wizard_runner.sysconf import Plan

    files = []
    for change in changes:
        if change.plan is Plan.WRITE:
            reason = f"not written: {error}"
            files.append(FileOutcome(change.path, FileAction.SKIPPED, reason))
        elif change.plan is Plan.UNCHANGED:
            files.append(FileOutcome(change.path, FileAction.UNCHANGED))
        else:
            files.append(FileOutcome(change.path, FileAction.SKIPPED, change.reason))
    return SystemConfResult(True, tuple(files))


def _skip_system_step(run: _Run) -> None:
    skipped = tuple(FileOutcome(path, FileAction.SKIPPED, SKIPPED_BY_CONFIG)
                    for path in SYSTEM_FILES)
    for outcome in skipped:
        run.log.info("file_skipped", path=outcome.path, reason=SKIPPED_BY_CONFIG)
    run.progress.system = SystemConfResult(False, skipped)


def _system_step(run: _Run) -> None:
    if not run.plan.handle_system_conf:
        _skip_system_step(run)
        return
    config, options, layout, log, progress = (
        run.config, run.options, run.layout, run.log, run.progress
    )
    # Only a run that writes the files needs these (and their imports' start-up time).
    from wizard_runner.activate import follow_up, not_live
    from wizard_runner.sysconf import FilesNotAppliedError, apply_changes

    changes: tuple[FileChange, ...] = ()
    progress.system = SystemConfResult(True)
    try:
        # A stop may cut the reading and checking (the Debian tools' runs at once): nothing
        # is written yet. It may not cut the replacements nor the live follow-ups.
        changes = plan_system(config, layout, options)
        progress.system = _not_written(changes, ApplyError("the step did not finish"))
        check_writes(config, layout, options, changes, log)
        stop_here()
        with deferred_stop_signals():
            applied = apply_changes(layout, run.run_id, changes, log)
            backup = str(applied.backup_dir) if applied.backup_dir else None
            progress.system = SystemConfResult(True, applied.files, backup_dir=backup)
    except FilesNotAppliedError as error:
        backup = str(error.backup_dir) if error.backup_dir else None
        progress.system = SystemConfResult(True, error.files, backup_dir=backup)
        raise
    except WizardRunnerError as error:
        progress.system = _not_written(changes, error)
        raise
    # What an earlier run wrote and the system does not show (its follow-up failed, or was
    # not asked for) is followed up as if written now: a rerun finishes it.
    kept = {file.path for file in applied.files if file.action is FileAction.UNCHANGED}
    stale = not_live(config, log) & kept if layout.is_real_root else frozenset()
    if layout.is_real_root and (applied.changed or stale):
        network = (_network_change(changes, config, applied.backup_dir)
                   if INTERFACES in applied.changed else network_before(layout, config, changes))
        follow = follow_up(config, applied.changed, log, apply_network=options.apply_network,
                           network=network, stale=stale)
        progress.system = SystemConfResult(
            True, applied.files, follow.actions, progress.system.backup_dir, follow.pending
        )


def network_before(layout: Layout, config: WizardConfig,
                    changes: tuple[FileChange, ...]) -> NetworkChange:
    """For an interfaces file an earlier run wrote and the system does not show: the change
    from the file before it, as the backup of the last run that wrote it keeps it (a DHCP
    client the old file started is then stopped); without one, none is known, and the
    interface is taken down as the file now says."""
    from wizard_runner.activate import NetworkChange
    from wizard_runner.render import released_interfaces, stanza_interfaces
    from wizard_runner.sysconf import backup_copy

    try:
        runs = sorted(filter(is_run_id, os.listdir(layout.backup_dir)), reverse=True)
    except OSError:
        return NetworkChange()
    for run_id in runs:  # newest first: run ids sort by time
        copy = str(backup_copy(layout.backup_dir / run_id, INTERFACES))
        try:
            old = read_regular(copy, follow=False)[0].decode("utf-8", "replace")
        except OSError:
            continue  # that run did not write it (or kept no copy of it)
        new = next((change.new_text for change in changes if change.path == INTERFACES), "")
        return NetworkChange(copy, stanza_interfaces(old, "inet"), stanza_interfaces(new),
                             tuple(released_interfaces(old, config.network.interface)))
    return NetworkChange()


def _network_change(changes: tuple[FileChange, ...], config: WizardConfig,
                    backup_dir: Path | None) -> NetworkChange:
    """What the rewrite of the interfaces file changes, and where the old file's copy is."""
    from wizard_runner.activate import NetworkChange
    from wizard_runner.render import released_interfaces, stanza_interfaces
    from wizard_runner.sysconf import TargetKind, backup_copy

    for change in changes:
        if change.path == INTERFACES:
            copy = None
            if change.current.kind is TargetKind.FILE and backup_dir is not None:
                copy = str(backup_copy(backup_dir, change.path))
            old = change.old_text
            return NetworkChange(copy, stanza_interfaces(old, "inet"),
                                 stanza_interfaces(change.new_text),
                                 tuple(released_interfaces(old, config.network.interface)))
    return NetworkChange()


def _scripts_step(run: _Run) -> str | None:
    """Run wizard.d when asked to; the run's error when a script failed."""
    # Only a run that runs scripts needs these (and their imports' start-up time).
    from wizard_runner.scripts.step import ScriptsOptions, failure_message, run_scripts

    plan, log, progress = run.plan, run.log, run.progress
    if plan.scripts_done_by is not None:
        log.info("scripts_step_skipped", reason=f"the scripts ran to success in run "
                 f"{plan.scripts_done_by} (scripts once)")
        return None
    if not plan.run_scripts or plan.user is None:
        log.info("scripts_step_skipped", reason="run_scripts=false")
        return None
    start = plan.start
    progress.scripts_began = True
    progress.scripts_begun_by = run.run_id if start is None else start.begun_by
    if start is not None:
        log.info("scripts_resumed" if start.resumed else "scripts_started_at", start_at=start.name)
    scripts_options = ScriptsOptions(
        user=plan.user,
        timeout=run.options.timeout,
        start_at=start.name if start else None,
        start_note=start.note if start else None,
    )

    def keep(outcomes: list[ScriptOutcome]) -> None:
        progress.scripts = list(outcomes)

    def contained(how: str) -> None:
        progress.containment = how

    # Stops stay held: the step's event loop sees them, stops the script, and raises
    # RunInterrupted once every outcome is recorded.
    outcomes = run_scripts(config=run.config, layout=run.layout, run_id=run.run_id,
                           options=scripts_options, log=log, progress=run.options.progress,
                           record=keep, contained=contained)
    failed = next((outcome for outcome in outcomes if outcome.failed), None)
    progress.scripts_completed = failed is None and progress.scripts_begun_by is not None
    return None if failed is None else failure_message(failed)


def execute(
    config: WizardConfig,
    options: RunOptions | None = None,
    *,
    stream: TextIO | None = None,
    json_logs: bool | None = None,
    stream_level: int | None = None,
    stream_skips: frozenset[str] = frozenset(),
    logger: logging.Logger | None = None,
    journal: bool = False,
) -> RunResult:
    """Carry out the wizard body under the lock and return (and store) the result.

    Raises, before anything is written, a usage error (UsageError, RootError, ...),
    LockedError or PrivilegeError when the run cannot start, and RunnerIOError (exit 74)
    when its log or saved body cannot be written; ResultNotStoredError (carrying the result)
    when the result could not be stored. Every other failure is reported in the returned
    result, whose `exit_code` is what the CLI exits with. Events go to `logger` (a standard
    logging.Logger) when given, else to `stream`, and always to the run's JSON-lines log.
    """
    options = options or RunOptions()
    plan = prepare(config, options)
    layout = plan.layout
    # 0600: flock works on any descriptor; a lock others can open, others can hold.
    # The run's bookkeeping holds stops back: a stop lands where the run can record it.
    with RunLock(layout.lock_file, mode=0o600) as lock, run_stops(), \
            deferred_stop_signals(foreign=False):
        if plan.scripts_done_by is not None and completed_pass(layout) != plan.scripts_done_by:
            plan = prepare(config, options)  # a run ended since it was decided: anew
        started = now()
        run_id = new_run_id(started)
        # A killed run before it may have left the scripts part-way: until a result of this
        # run says so, its holder line does (it may be cut short too).
        pass_unknown = pass_unknown_after(layout, lock.previous)
        lock.note(run_id, *holder_words(
            handle_system_conf=plan.handle_system_conf,
            run_scripts=plan.run_scripts and plan.user is not None, pass_unknown=pass_unknown))
        sink = _Sink(stream, json_logs, stream_level, stream_skips, logger, journal)
        try:
            return _locked(config, plan, options=options, lock=lock, run_id=run_id,
                           started=started, pass_unknown=pass_unknown, sink=sink)
        except ResultNotStoredError:
            lock.keep_note(UNSTORED)  # for status and the next run: it ended, unstored
            raise
        except BaseException:
            if pass_unknown:  # ended before its result (a full disk): the line stays
                lock.keep_note(UNSTORED)
            raise


class _Sink(NamedTuple):
    """Where a run's events go besides its log file: a standard logger, else a stream."""

    stream: TextIO | None
    json_logs: bool | None
    stream_level: int | None
    stream_skips: frozenset[str]
    logger: logging.Logger | None
    journal: bool

    def log(self, log_file: LogFile, run_id: str) -> FilteringBoundLogger:
        """The run's logger."""
        if self.logger is not None:
            return stdlib_logger(self.logger, log_file=log_file, run_id=run_id)
        return make_logger(self.stream or sys.stderr, json_lines=self.json_logs,
                           log_file=log_file, stream_level=self.stream_level,
                           stream_skips=self.stream_skips, journal=self.journal,
                           run_id=run_id)


def _locked(config: WizardConfig, plan: RunPlan, *, options: RunOptions, lock: RunLock,
            run_id: str, started: datetime, pass_unknown: bool, sink: _Sink) -> RunResult:
    """The run, once it holds the lock and has noted itself: its log, its saved body, the
    steps, the result."""
    layout = plan.layout
    with run_log_file(layout.log_file) as log_handle:
        log = sink.log(log_handle, run_id)
        if options.save_config:
            try:
                save_config(layout, plan.config_as_run(config), options.choices)
            except WizardRunnerError as error:
                log.error("run_not_started", error=str(error))
                settle_stops()
                raise
        unknown = _after_killed(layout, lock.previous, log)
        run = _Run(config, options, plan, run_id, log, _Progress(), log_handle,
                   unknown, pass_unknown)
        return _run_locked(run, started)


def _after_killed(layout: Layout, previous: str | None,
                  log: FilteringBoundLogger) -> list[str]:
    """The warning for a run whose lock's holder line its last holder left: that run was
    killed (SIGKILL, the OOM killer) before it ended, and before it stored its result unless
    the stored one is its own."""
    holder = parse_holder(previous)
    if holder is None:
        return []
    with contextlib.suppress(WizardRunnerError):
        stored = read_last_result(layout)
        if stored is not None and stored.run_id == holder.run_id:
            return []  # killed after its result was stored: it cut nothing short
    if holder.ended:
        log.warning("previous_result_not_stored", pid=holder.pid,
                    previous_run_id=holder.run_id)
        return [f"the run before this one ({holder.run_id}, pid {holder.pid}) ended, but its "
                "result could not be stored"]
    log.warning("previous_run_killed", pid=holder.pid, previous_run_id=holder.run_id)
    from wizard_runner.scripts.containment import clear_killed, note_cleared

    note_cleared(log, clear_killed(holder.pid, holder.run_id))  # what its scripts left
    return [f"the run before this one ({holder.run_id}, pid {holder.pid}) was killed before "
            "it ended; its result was never stored"]


class _Outcome(NamedTuple):
    """How the run ended; `cut`: what cut it short that is not wizard-runner's to settle,
    passed on once the result is stored."""

    status: RunStatus
    exit_code: int
    error: str | None = None
    cut: BaseException | None = None


def _outcome(run: _Run) -> _Outcome:
    """Run both steps; how the run ended."""
    step = "system_step"
    try:
        _system_step(run)
        step = "scripts_step"
        failed = _scripts_step(run)
    except WizardRunnerError as failure:
        run.log.error(f"{step}_failed", error=str(failure), exit_code=failure.exit_code)
        return _Outcome(RunStatus.FAILED, failure.exit_code, str(failure))
    except RunInterrupted as stop:
        run.log.warning("run_interrupted", signal=stop.signum, step=step)
        return _Outcome(RunStatus.INTERRUPTED, stop.exit_code, str(stop))
    except OSError as error:  # one not turned into a message where it happened: still named
        message = f"{error.filename or step}: {error.strerror or error}"
        run.log.error(f"{step}_failed", error=message, exit_code=RunnerIOError.exit_code)
        return _Outcome(RunStatus.FAILED, RunnerIOError.exit_code, message)
    except BaseException as cut:  # a KeyboardInterrupt, an embedding application's signal
        return _cut_short(run, step, cut)  # handler raising, a bug: stored, then passed on
    if failed is not None:
        return _Outcome(RunStatus.FAILED, EXIT_FAILED, failed)
    return _Outcome(RunStatus.SUCCEEDED, EXIT_OK)


def _cut_short(run: _Run, step: str, cut: BaseException) -> _Outcome:
    """A run cut short where it happened to be: by SIGINT's default handler (interrupted,
    130), else by something no run expects (failed, 70)."""
    message = f"the {step.replace('_', ' ')} was cut short by {type(cut).__name__}" + \
        (f": {cut}" if str(cut) else "")
    if isinstance(cut, KeyboardInterrupt):
        run.log.warning("run_interrupted", signal=signal.SIGINT, step=step, error=message)
        return _Outcome(RunStatus.INTERRUPTED, exit_for_signal(signal.SIGINT), message, cut)
    run.log.error(f"{step}_failed", error=message, exit_code=EXIT_SOFTWARE)
    return _Outcome(RunStatus.FAILED, EXIT_SOFTWARE, message, cut)


def _run_locked(run: _Run, started: datetime) -> RunResult:
    plan, log = run.plan, run.log
    log.info("run_started", root=str(plan.layout.root),
             handle_system_conf=plan.handle_system_conf, run_scripts=plan.run_scripts,
             start_at=plan.start.name if plan.start else None, pid=os.getpid())
    status, exit_code, error, cut = _outcome(run)
    held = settle_stops()  # from here on the outcome stands: later stops are ignored
    if held is not None and status is RunStatus.SUCCEEDED:
        status, exit_code = RunStatus.INTERRUPTED, exit_for_signal(held)
        error = f"{RunInterrupted(held)}; every step had completed before it was acted on"
        log.warning("run_interrupted", signal=held, step="finishing")
    if run.log_file.lost is not None:
        run.warnings.append(f"{plan.layout.log_file}: lines of this run's log could not be "
                            f"written ({run.log_file.lost}); this result is complete")
        log.warning("log_incomplete", path=str(plan.layout.log_file), error=run.log_file.lost)
    begun, completed = _scripts_pass(run)
    result = RunResult(
        run_id=run.run_id,
        started_at=started,
        finished_at=now(),
        status=status,
        exit_code=exit_code,
        system_conf=run.progress.system or SystemConfResult(plan.handle_system_conf),
        scripts=tuple(run.progress.scripts),
        error=error,
        root=str(plan.layout.root),
        run_scripts=plan.run_scripts,
        request_id=run.options.request_id,
        containment=run.progress.containment,
        scripts_begun_by=begun,
        scripts_completed_by=completed,
        scripts_already_done=plan.scripts_done_by is not None,
        warnings=tuple(run.warnings),
    )
    try:
        write_result(plan.layout, result)
    except WizardRunnerError as failure:
        message = f"{failure}; {what_was_done(result)}"
        log.error("result_not_stored", error=message)
        raise ResultNotStoredError(message, result) from failure
    log.info("run_finished", status=status.value, exit_code=exit_code,
             result=str(plan.layout.last_run))
    if cut is not None:
        raise cut
    return result


def _scripts_pass(run: _Run) -> tuple[str | None, str | None]:
    """What the result says of the pass through the scripts: this run's, if its scripts step
    began (completed by it if every script succeeded, on a pass begun at the top); else, this
    run having left the scripts alone, what the last result says, unless the run before was
    killed or left no result and was to run its scripts (it may have run some part-way)."""
    progress = run.progress
    if progress.scripts_began:
        return progress.scripts_begun_by, run.run_id if progress.scripts_completed else None
    return (None, None) if run.pass_unknown else previous_pass(run.layout)


def what_was_done(result: RunResult) -> str:
    """One sentence on the state a run left the machine in (for errors after the fact)."""
    system = result.system_conf
    restored = [f.path for f in system.files if f.action is FileAction.RESTORED]
    lost = [f.path for f in system.files
            if f.action is FileAction.WRITTEN and NOT_RESTORED in (f.reason or "")]
    if not system.handled:
        files = "no system file was touched (handle_system_conf=false)"
    elif lost:
        files = (f"the system files are partly written: {', '.join(lost)} {NOT_RESTORED} "
                 f"(the old copies are in {system.backup_dir})")
    elif restored:
        files = f"the system files were rolled back ({', '.join(restored)} restored)"
    elif result.files_written:
        files = (f"the system files were applied ({len(result.files_written)} written: "
                 f"{', '.join(result.files_written)})")
    else:
        files = "no system file changed"
    started = result.scripts_started
    failed = result.failed_script
    if failed is not None:
        scripts = f"script {failed.name} {failed.status.value}"
    elif started:
        scripts = f"{len(started)} script(s) ran: {', '.join(started)}"
    else:
        scripts = "no script ran"
    why = f" ({result.error.splitlines()[0]})" if result.error else ""
    return f"the run {result.status.value}{why}: {files}; {scripts}"
