"""One run from start to result: lock, system step (scripts step to come), result file, log."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig, decode_json, saved_config_from_data
from wizard_runner.defaults import DEFAULT_TIMEOUT
from wizard_runner.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ApplyError,
    ConfigUnreadableError,
    PrivilegeError,
    RunInterrupted,
    UsageError,
    WizardRunnerError,
)
from wizard_runner.fsio import Ownership, RunLock, atomic_replace, ensure_dir
from wizard_runner.layout import Layout
from wizard_runner.log import make_logger, open_log_file, stdlib_logger
from wizard_runner.render import RENDERERS
from wizard_runner.result import (
    FileAction,
    FileOutcome,
    RunResult,
    RunStatus,
    SystemConfResult,
    new_run_id,
    now,
)
from wizard_runner.runuser import DEFAULT_USER, resolve_user
from wizard_runner.scripts import (
    Progress,
    ScriptOutcome,
    ScriptsOptions,
    failure_message,
    run_scripts,
)
from wizard_runner.signals import deferred_stop_signals

if TYPE_CHECKING:
    from wizard_runner.sysconf import FileChange

SKIPPED_BY_CONFIG = "handle_system_conf=false"


@dataclass(frozen=True)
class RunOptions:
    """How to run: where (root), overrides of the body's flags, and the scripts step's knobs."""

    root: str | os.PathLike[str] = "/"
    handle_system_conf: bool | None = None  # None: as the body says
    run_scripts: bool | None = None  # None: as the body says
    replace_symlinks: bool = False
    apply_network: bool = False
    check_with_tools: bool = True
    user: str = DEFAULT_USER
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit
    start_at: str | None = None
    resume: bool = False
    save_config: bool = True
    request_id: str | None = None  # the spool request served, recorded in the result
    progress: Progress | None = field(default=None, compare=False)


@dataclass
class _Progress:
    """What is known so far, so that an interrupted run can still report it."""

    system: SystemConfResult | None = None
    scripts: list[ScriptOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class _Run:
    """One run under way: what it carries out, where, how, and what it has done so far."""

    config: WizardConfig
    options: RunOptions
    layout: Layout
    run_id: str
    log: FilteringBoundLogger
    progress: _Progress


def handles_system_conf(config: WizardConfig, options: RunOptions) -> bool:
    """Whether this run writes the system files: the option overrides the body's flag."""
    if options.handle_system_conf is not None:
        return options.handle_system_conf
    return config.handle_system_conf


def runs_scripts(config: WizardConfig, options: RunOptions) -> bool:
    """Whether this run runs wizard.d: the option overrides the body's flag."""
    if options.run_scripts is not None:
        return options.run_scripts
    return config.run_scripts


def plan_system(
    config: WizardConfig, layout: Layout, options: RunOptions
) -> tuple[FileChange, ...]:
    """Read the managed files under the root and plan their new content."""
    from wizard_runner.sysconf import plan_changes, read_targets

    return plan_changes(
        config, read_targets(layout), replace_symlinks=options.replace_symlinks
    )


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


def _system_step(run: _Run) -> None:
    config, options, layout, log, progress = (
        run.config, run.options, run.layout, run.log, run.progress
    )
    run_id = run.run_id
    if not handles_system_conf(config, options):
        skipped = tuple(FileOutcome(path, FileAction.SKIPPED, SKIPPED_BY_CONFIG)
                        for path in RENDERERS)
        for outcome in skipped:
            log.info("file_skipped", path=outcome.path, reason=SKIPPED_BY_CONFIG)
        progress.system = SystemConfResult(False, skipped)
        return
    # Only a run that writes the files needs these (and their imports' start-up time).
    from wizard_runner.activate import follow_up
    from wizard_runner.sysconf import FilesNotAppliedError, Plan, apply_changes
    from wizard_runner.toolcheck import ToolChecker, check_included_interfaces

    changes = plan_system(config, layout, options)
    progress.system = _not_written(changes, ApplyError("the step did not finish"))
    writes = [change for change in changes if change.plan is Plan.WRITE]
    try:
        # The tool checks can take seconds: a stop request during them ends the run at once,
        # before any write. Only the replacements themselves hold stop signals back.
        for change in writes:
            if change.path == "/etc/network/interfaces":
                check_included_interfaces(config, layout, change.new or b"")
        if writes and options.check_with_tools:
            ToolChecker(config, layout, log)(writes)
        with deferred_stop_signals():
            applied = apply_changes(layout, run_id, changes, log)
            backup = str(applied.backup_dir) if applied.backup_dir else None
            progress.system = SystemConfResult(True, applied.files, backup_dir=backup)
    except FilesNotAppliedError as error:
        backup = str(error.backup_dir) if error.backup_dir else None
        progress.system = SystemConfResult(True, error.files, backup_dir=backup)
        raise
    except WizardRunnerError as error:
        progress.system = _not_written(changes, error)
        raise
    if layout.is_real_root and applied.changed:
        follow = follow_up(config, applied.changed, log, apply_network=options.apply_network)
        progress.system = SystemConfResult(
            True, applied.files, follow.actions, progress.system.backup_dir, follow.pending
        )


def _scripts_step(run: _Run) -> ScriptOutcome | None:
    """Run wizard.d when asked to; return the script that failed, if one did."""
    config, options, layout, log, progress = (
        run.config, run.options, run.layout, run.log, run.progress
    )
    run_id = run.run_id
    if not runs_scripts(config, options):
        log.info("scripts_step_skipped", reason="run_scripts=false")
        return None
    start_at = options.start_at
    if options.resume:
        start_at = resume_point(layout)
        log.info("scripts_resumed", start_at=start_at)
    scripts_options = ScriptsOptions(
        user=resolve_user(options.user),
        timeout=options.timeout,
        start_at=start_at,
    )

    def keep(outcomes: list[ScriptOutcome]) -> None:
        progress.scripts = list(outcomes)

    outcomes = run_scripts(config=config, layout=layout, run_id=run_id, options=scripts_options,
                           log=log, progress=options.progress, record=keep)
    return next((outcome for outcome in outcomes if outcome.failed), None)


def read_last_result(layout: Layout) -> dict[str, Any] | None:
    """The stored result of the last run, or None when there was none."""
    try:
        data = json.loads(layout.last_run.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UsageError(f"{layout.last_run}: cannot read the last result: {error}") from error
    return data if isinstance(data, dict) else None


def resume_point(layout: Layout) -> str:
    """The script that failed in the last run, where --resume starts."""
    last = read_last_result(layout)
    if last is None:
        raise UsageError(f"--resume: no previous run ({layout.last_run} does not exist)")
    for script in last.get("scripts", []):
        if script.get("status") in {"failed", "timed_out"}:
            return str(script["name"])
    raise UsageError(f"--resume: no script failed in the last run ({last.get('run_id')})")


def save_config(layout: Layout, config: WizardConfig) -> None:
    """Keep the body (without the password) so that a plain `wizard-runner run` can rerun it."""
    ensure_dir(layout.state_dir, 0o755)
    data = {"saved_at": now().isoformat(timespec="seconds"), "config": config.public_dict()}
    owner = Ownership(0o600, os.geteuid(), os.getegid())
    atomic_replace(layout.saved_config, (json.dumps(data, indent=2) + "\n").encode(), owner)


def load_saved_config(layout: Layout) -> WizardConfig:
    """The config saved by the last run given a body; a clear error when there is none."""
    try:
        raw = layout.saved_config.read_bytes()
    except FileNotFoundError:
        raise ConfigUnreadableError(
            f"no saved config at {layout.saved_config}: pass --config FILE (the wizard body)"
        ) from None
    except OSError as error:
        message = f"{layout.saved_config}: cannot read: {error.strerror}"
        raise ConfigUnreadableError(message) from error
    data = decode_json(raw, str(layout.saved_config))
    body = data.get("config") if isinstance(data, dict) else None
    return saved_config_from_data(body, str(layout.saved_config))


def write_result(layout: Layout, result: RunResult) -> None:
    """Store the result atomically as last-run.json (0644: confd reads it as www-data)."""
    ensure_dir(layout.state_dir, 0o755)
    owner = Ownership(0o644, os.geteuid(), os.getegid())
    atomic_replace(layout.last_run, result.to_json().encode(), owner)


def _require_privileges(layout: Layout) -> None:
    if layout.is_real_root and os.geteuid() != 0:
        raise PrivilegeError(
            "wizard-runner writes system files under /: run it as root "
            "(or pass --root DIR to work on a sandbox tree)"
        )


def execute(
    config: WizardConfig,
    options: RunOptions | None = None,
    *,
    stream: TextIO | None = None,
    json_logs: bool | None = None,
    stream_level: int | None = None,
    logger: logging.Logger | None = None,
    journal: bool = False,
) -> RunResult:
    """Carry out the wizard body under the lock and return (and store) the result.

    Raises LockedError or PrivilegeError when the run cannot start; every other failure is
    reported in the returned result, whose `exit_code` is what the CLI exits with. Events go
    to `logger` (a standard logging.Logger) when given, else to `stream`, and always to the
    run's JSON-lines log file.
    """
    options = options or RunOptions()
    layout = Layout.under(options.root)
    _require_privileges(layout)
    with RunLock(layout.lock_file):
        started = now()
        run_id = new_run_id(started)
        if options.save_config:
            save_config(layout, config)
        try:
            log_handle = open_log_file(layout.log_file)
        except PermissionError as error:
            raise PrivilegeError(f"{layout.log_file}: cannot open: {error.strerror}") from error
        with log_handle:
            if logger is not None:
                log = stdlib_logger(logger, log_file=log_handle, run_id=run_id)
            else:
                log = make_logger(stream or sys.stderr, json_lines=json_logs,
                                  log_file=log_handle, stream_level=stream_level,
                                  journal=journal, run_id=run_id)
            return _run_locked(config=config, options=options, layout=layout, run_id=run_id,
                               started=started, log=log)


def _run_locked(
    *,
    config: WizardConfig,
    options: RunOptions,
    layout: Layout,
    run_id: str,
    started: datetime,
    log: FilteringBoundLogger,
) -> RunResult:
    log.info(
        "run_started",
        root=str(layout.root),
        handle_system_conf=handles_system_conf(config, options),
        run_scripts=runs_scripts(config, options),
        pid=os.getpid(),
    )
    progress = _Progress()
    status, exit_code, error = RunStatus.SUCCEEDED, EXIT_OK, None
    step = "system_step"
    run = _Run(config, options, layout, run_id, log, progress)
    try:
        _system_step(run)
        step = "scripts_step"
        failed = _scripts_step(run)
        if failed is not None:
            status, exit_code, error = RunStatus.FAILED, EXIT_FAILED, failure_message(failed)
    except WizardRunnerError as failure:
        status, exit_code, error = RunStatus.FAILED, failure.exit_code, str(failure)
        log.error(f"{step}_failed", error=error, exit_code=exit_code)
    except RunInterrupted as stop:
        status, exit_code, error = RunStatus.INTERRUPTED, stop.exit_code, str(stop)
        log.warning("run_interrupted", signal=stop.signum, step=step)
    result = RunResult(
        run_id=run_id,
        started_at=started,
        finished_at=now(),
        status=status,
        exit_code=exit_code,
        system_conf=progress.system or SystemConfResult(handles_system_conf(config, options)),
        scripts=tuple(outcome.to_dict() for outcome in progress.scripts),
        error=error,
        root=str(layout.root),
        run_scripts=runs_scripts(config, options),
        request_id=options.request_id,
    )
    write_result(layout, result)
    log.info("run_finished", status=status.value, exit_code=exit_code,
             result=str(layout.last_run))
    return result


@dataclass(frozen=True)
class Preview:
    """A dry run: the planned changes and their unified diff; nothing was written."""

    changes: tuple[FileChange, ...]
    diff: str
    handled: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "dry_run": True,
            "handle_system_conf": self.handled,
            "files": [
                {"path": c.path, "plan": c.plan.value, "reason": c.reason} for c in self.changes
            ],
            "diff": self.diff,
        }


def preview(
    config: WizardConfig,
    options: RunOptions | None = None,
    *,
    log: FilteringBoundLogger | None = None,
) -> Preview:
    """Plan (and tool-check) the system step without writing anything, not even the result."""
    from wizard_runner.sysconf import Plan, unified_diff
    from wizard_runner.toolcheck import ToolChecker

    options = options or RunOptions()
    layout = Layout.under(options.root)
    log = log or make_logger(sys.stderr)
    if not handles_system_conf(config, options):
        return Preview((), f"# {SKIPPED_BY_CONFIG}: no system file would be touched\n", False)
    changes = plan_system(config, layout, options)
    writes = [change for change in changes if change.plan is Plan.WRITE]
    if writes and options.check_with_tools:
        ToolChecker(config, layout, log)(writes)
    return Preview(changes, unified_diff(changes), True)

