"""What xivo-confd imports: validate a wizard body, preview it, run it.

    import wizard_runner
    from wizard_runner import api

    config = api.validate(body)              # raises api.InvalidConfig listing every problem
    try:
        result = wizard_runner.run(body)     # an api.RunResult, also stored as last-run.json
    except api.ScriptFailed as failure:
        log.error("%s failed (exit %s): %s", failure.script, failure.script_exit_code,
                  failure.output_tail)

Embedded, every event goes to the standard logger `wizard_runner` (so confd's handlers get them)
as well as to the run's JSON-lines log file. Signal handlers are left alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from wizard_runner.config import LANGUAGES, WizardConfig, config_from_data, parse_config
from wizard_runner.defaults import DEFAULT_TIMEOUT
from wizard_runner.errors import (
    EXIT_CANT_APPLY,
    EXIT_FAILED,
    EXIT_NO_INPUT,
    EXIT_PRIVILEGES,
    ApplyError,
    ConfigError,
    LockedError,
    PrivilegeError,
    ResultNotStoredError,
    RootError,
    RunnerIOError,
    UsageError,
    WizardRunnerError,
    check_seconds,
)
from wizard_runner.layout import Layout
from wizard_runner.log import quiet_logger
from wizard_runner.preview import Preview, preview
from wizard_runner.result import RunResult, RunStatus, ScriptOutcome
from wizard_runner.runner import RunOptions, execute
from wizard_runner.runuser import DEFAULT_USER
from wizard_runner.scripts.discovery import ScriptsDirMissingError as ScriptsDirMissingBeforeRun
from wizard_runner.spool import (
    AnswerTimeoutError,
    NoDaemonError,
    NotAnsweredError,
    Spool,
    SpoolError,
    SubmitInterruptedError,
    submit_and_wait,
)
from wizard_runner.spool import submit as spool_submit

Body = Mapping[str, Any] | str | bytes | WizardConfig
LOGGER = logging.getLogger("wizard_runner")


class RunFailedError(WizardRunnerError):
    """A run that started but did not succeed; `result` is the stored result."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.error or f"the run {result.status.value}")
        self.result = result
        self.exit_code = result.exit_code


class ScriptFailedError(RunFailedError):
    """A script of wizard.d failed: its name, exit code or signal, and last output."""

    def __init__(self, result: RunResult, script: ScriptOutcome) -> None:
        super().__init__(result)
        self.outcome = script
        self.script = script.name
        self.script_exit_code = script.exit_code
        self.signal = script.signal
        self.status = script.status
        self.output_tail = script.output_tail


class ScriptsDirMissingError(RunFailedError, ScriptsDirMissingBeforeRun):
    """wizard.d vanished while the run went on (exit 66). A wizard.d missing when the run
    starts raises its base, ScriptsDirMissingBeforeRun, before anything is written."""


class SystemFilesError(RunFailedError):
    """The system files could not be applied; nothing was left half-written (exit 73)."""


class NotAllowedError(RunFailedError, PrivilegeError):
    """Unsafe permissions on wizard.d found as the scripts step began (exit 77). Found when
    the run starts, they raise PrivilegeError before anything is written."""


class StoppedError(RunFailedError):
    """The run was stopped by SIGTERM or SIGINT (exit 143 or 130)."""


# The names the integration guide uses.
NotAnswered = NotAnsweredError
AnswerTimeout = AnswerTimeoutError
NoDaemon = NoDaemonError
SubmitInterrupted = SubmitInterruptedError
InvalidConfig = ConfigError
ScriptFailed = ScriptFailedError
ScriptsDirMissing = ScriptsDirMissingBeforeRun  # catches both: before the run, or during it
SystemFilesNotApplied = SystemFilesError
NotAllowed = NotAllowedError
Interrupted = StoppedError
RunFailed = RunFailedError

__all__ = [
    "LANGUAGES",
    "AnswerTimeout",
    "ApplyError",
    "Body",
    "ConfigError",
    "Interrupted",
    "InvalidConfig",
    "LockedError",
    "NoDaemon",
    "NotAllowed",
    "NotAnswered",
    "Preview",
    "PrivilegeError",
    "ResultNotStoredError",
    "RootError",
    "RunFailed",
    "RunResult",
    "RunStatus",
    "RunnerIOError",
    "ScriptFailed",
    "ScriptsDirMissing",
    "SpoolError",
    "SubmitInterrupted",
    "SystemFilesNotApplied",
    "UsageError",
    "WizardConfig",
    "WizardRunnerError",
    "dry_run",
    "raise_for_result",
    "run",
    "submit",
    "validate",
]


def validate(body: Body) -> WizardConfig:
    """Validate a wizard body (a dict, JSON text or bytes); raise InvalidConfig on any problem."""
    if isinstance(body, WizardConfig):
        return body
    if isinstance(body, str | bytes):
        return parse_config(body)
    return config_from_data(dict(body) if isinstance(body, Mapping) else body)


def raise_for_result(result: RunResult) -> RunResult:
    """Return a successful result; raise the exception that matches a failed one."""
    if result.status is RunStatus.SUCCEEDED:
        return result
    if result.status is RunStatus.INTERRUPTED:
        raise StoppedError(result)
    failed = result.failed_script
    if failed is not None and result.exit_code == EXIT_FAILED:
        raise ScriptFailedError(result, failed)
    by_code: dict[int, type[RunFailedError]] = {
        EXIT_NO_INPUT: ScriptsDirMissingError,
        EXIT_CANT_APPLY: SystemFilesError,
        EXIT_PRIVILEGES: NotAllowedError,
    }
    raise by_code.get(result.exit_code, RunFailedError)(result)


def run(
    body: Body,
    *,
    root: str | os.PathLike[str] = "/",
    handle_system_conf: bool | None = None,
    run_scripts: bool | None = None,
    user: str = DEFAULT_USER,
    timeout: float | None = DEFAULT_TIMEOUT,
    start_at: str | None = None,
    resume: bool = False,
    scripts_once: bool = False,
    replace_symlinks: bool = False,
    apply_network: bool = False,
    check: bool = True,
    logger: logging.Logger | None = None,
) -> RunResult:
    """Validate and carry out a wizard body; the result is also stored as last-run.json.

    Before anything is written it raises InvalidConfig, UsageError (an unknown `start_at`,
    nothing to `resume`, conflicting options, an unknown `user`), RootError (no etc/ under
    `root`), ScriptsDirMissing, PrivilegeError (not root, unsafe wizard.d), LockedError
    (another run is going on) or RunnerIOError (exit 74: the log or the saved body cannot be
    written). ResultNotStoredError (exit 74, `.result`) when the run ended but its result could
    not be stored. With `check` (the default) a failed run raises the matching RunFailed
    subclass (ScriptFailed, SystemFilesNotApplied, Interrupted, ...) carrying the result;
    without it, the result is returned whatever its status. `scripts_once` leaves the scripts
    alone when an earlier run ran them to success (`result.scripts_already_done`).
    """
    if not isinstance(check, bool):
        raise UsageError(f"check: {check!r} is not true or false")
    config = validate(body)
    options = RunOptions(
        root=root,
        handle_system_conf=handle_system_conf,
        run_scripts=run_scripts,
        user=user,
        timeout=timeout,
        start_at=start_at,
        resume=resume,
        scripts_once=scripts_once,
        replace_symlinks=replace_symlinks,
        apply_network=apply_network,
        user_given_by="user",
    )
    result = execute(config, options, logger=logger or LOGGER)
    return raise_for_result(result) if check else result


def submit(
    body: Body,
    *,
    root: str | os.PathLike[str] = "/",
    wait: bool = False,
    timeout: float | None = None,
) -> str | dict[str, Any]:
    """Hand a body to the daemon through its spool (works as www-data, as confd runs).

    Validates first (InvalidConfig, nothing submitted); SpoolError when the spool is missing.
    Returns the request id, or with `wait` the daemon's answer: {"request_id", "status",
    "exit_code", "reason", "problems", "submitted_by", "received_at", "finished_at",
    "result"}, status one of succeeded, failed, interrupted, rejected.

    A wait that ends without an answer withdraws the request if the daemon has not claimed it
    yet (nothing is run), and raises a NotAnswered subclass (a SpoolError) saying so:
    AnswerTimeout after `timeout` seconds, NoDaemon when no daemon has served the spool for
    5 s, SubmitInterrupted on KeyboardInterrupt (or SIGTERM/SIGHUP where wizard-runner's
    handlers are installed), raised from it. Each has `.request_id`, `.status` ("withdrawn",
    or "claimed": the answer will be in `.answer`, done/ID.json), `.exit_code` (69, or 128
    plus the signal) and `.to_dict()`.
    """
    check_seconds(timeout, "timeout")  # before anything is submitted
    if not isinstance(wait, bool):
        raise UsageError(f"wait: {wait!r} is not true or false")
    config = validate(body)
    if isinstance(body, bytes | str):
        data = body.encode() if isinstance(body, str) else body
    elif isinstance(body, WizardConfig):
        secret = config.admin_password
        password = {} if secret is None else {"admin_password": secret.get_secret_value()}
        data = json.dumps({**config.public_dict(), **password}).encode()
    else:
        data = json.dumps(dict(body)).encode()
    spool = Spool.of(Layout.under(root))
    return submit_and_wait(spool, data, timeout) if wait else spool_submit(spool, data)


def dry_run(
    body: Body,
    *,
    root: str | os.PathLike[str] = "/",
    handle_system_conf: bool | None = None,
    run_scripts: bool | None = None,
    user: str = DEFAULT_USER,
    start_at: str | None = None,
    resume: bool = False,
    scripts_once: bool = False,
    replace_symlinks: bool = False,
) -> Preview:
    """Show what a run would change (a unified diff) and which scripts it would run; writes
    nothing. Raises what `run` raises before a run starts."""
    options = RunOptions(
        root=root, handle_system_conf=handle_system_conf, run_scripts=run_scripts, user=user,
        start_at=start_at, resume=resume, scripts_once=scripts_once,
        replace_symlinks=replace_symlinks,
    )
    return preview(validate(body), options, log=quiet_logger())
