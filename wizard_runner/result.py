"""The run result: what happened to each file and each script, as JSON-ready data and back."""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from wizard_runner.errors import StateFileError

if TYPE_CHECKING:
    from pydantic import TypeAdapter


class FileAction(StrEnum):
    """What the system step did to one file."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    RESTORED = "restored"


#: What the reason of a file `written`, then not put back after a failure, says.
NOT_RESTORED: Final = "could not be restored"


class RunStatus(StrEnum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class ScriptStatus(StrEnum):
    """What became of one entry of wizard.d."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    NOT_RUN = "not_run"
    SKIPPED = "skipped"


#: Statuses of a script that was started (whatever became of it).
_STARTED: Final = frozenset({ScriptStatus.SUCCEEDED, ScriptStatus.FAILED, ScriptStatus.TIMED_OUT})


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

    @property
    def started(self) -> bool:
        """True when the script was started (it may have failed)."""
        return self.status in _STARTED


@dataclass(frozen=True)
class FileOutcome:
    """One managed file: its system path, the action taken and why (when not plainly written)."""

    path: str
    action: FileAction
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"path": self.path, "action": self.action.value, "reason": self.reason}


@dataclass(frozen=True)
class ActionOutcome:
    """A live follow-up on the real root (reload, hostname, ...), or why it did not run."""

    name: str
    command: tuple[str, ...]
    status: str  # "succeeded" | "failed" | "skipped"
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "command": list(self.command),
            "status": self.status,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SystemConfResult:
    """The system step: whether it handled the files, each file's outcome, live follow-ups."""

    handled: bool
    files: tuple[FileOutcome, ...] = ()
    actions: tuple[ActionOutcome, ...] = ()
    backup_dir: str | None = None
    pending: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "handled": self.handled,
            "files": [outcome.to_dict() for outcome in self.files],
            "actions": [action.to_dict() for action in self.actions],
            "backup_dir": self.backup_dir,
            "pending": list(self.pending),
        }


@dataclass(frozen=True)
class RunResult:
    """Everything a caller needs to know about one run; written to last-run.json."""

    run_id: str
    started_at: datetime
    finished_at: datetime
    status: RunStatus
    exit_code: int
    system_conf: SystemConfResult
    scripts: tuple[ScriptOutcome, ...] = ()
    error: str | None = None
    root: str = "/"
    run_scripts: bool = False  # the effective flag, after the command line's overrides
    request_id: str | None = None  # the spool request this run served, if any
    containment: str | None = None  # how the scripts step held what it started, if it ran
    #: The run that began, at the top of wizard.d, the pass through the scripts this run's
    #: step took part in: this one; for --resume, the resumed run's; none for --from.
    scripts_begun_by: str | None = None
    #: The last run that ended such a pass with every script succeeded: this one, or, while
    #: runs leave the scripts alone, the one before said.
    scripts_completed_by: str | None = None
    #: The body asked for the scripts, but they had run to success (scripts_completed_by
    #: says in which run) and the run was told to run them once (scripts_once): left alone.
    scripts_already_done: bool = False
    warnings: tuple[str, ...] = ()  # what went wrong beside the work (the log could not be written)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "run_id": self.run_id,
            "request_id": self.request_id,
            "started_at": self.started_at.isoformat(timespec="milliseconds"),
            "finished_at": self.finished_at.isoformat(timespec="milliseconds"),
            "status": self.status.value,
            "exit_code": self.exit_code,
            "root": self.root,
            "handle_system_conf": self.system_conf.handled,
            "run_scripts": self.run_scripts,
            "changed": self.changed,
            "containment": self.containment,
            "scripts_begun_by": self.scripts_begun_by,
            "scripts_completed_by": self.scripts_completed_by,
            "scripts_already_done": self.scripts_already_done,
            "system_conf": self.system_conf.to_dict(),
            "scripts": [outcome.to_dict() for outcome in self.scripts],
            "error": self.error,
            "warnings": list(self.warnings),
        }

    @property
    def files_written(self) -> tuple[str, ...]:
        """The system files this run left written (not those it restored)."""
        return tuple(f.path for f in self.system_conf.files if f.action is FileAction.WRITTEN)

    @property
    def scripts_started(self) -> tuple[str, ...]:
        """The scripts this run started, whatever became of them."""
        return tuple(outcome.name for outcome in self.scripts if outcome.started)

    @property
    def changed(self) -> bool:
        """Whether the run did anything: a system file written, a live follow-up run (one
        that finishes what an earlier run wrote, too), or a script started."""
        ran = any(action.status != "skipped" for action in self.system_conf.actions)
        return bool(self.files_written or ran or self.scripts_started)

    @property
    def failed_script(self) -> ScriptOutcome | None:
        """The script that stopped the step, if one did."""
        return next((outcome for outcome in self.scripts if outcome.failed), None)

    @classmethod
    def from_dict(cls, data: object, source: str) -> RunResult:
        """Read a stored result (last-run.json, a daemon's answer) back; a damaged one raises
        StateFileError naming `source` and every problem."""
        from wizard_runner.config import problems_of  # noqa: PLC0415 - status and --resume only

        if isinstance(data, dict):
            data = {**data, **scripts_pass(data)}
        try:
            found = _adapter().validate_python(data)
        except ValidationError as error:
            problems = problems_of(error)
        else:
            problems = found.contradictions()
            if not problems:
                return found
        raise StateFileError(f"{source} is damaged ({'; '.join(problems[:5])}): remove it, "
                             "or run again to replace it")

    def contradictions(self) -> list[str]:
        """What no run writes: an exit code out of range or at odds with the status, a time
        without its zone."""
        problems = []
        if not 0 <= self.exit_code <= 255:
            problems.append(f"exit_code: {self.exit_code} is not an exit status (0-255)")
        elif (self.status is RunStatus.SUCCEEDED) != (self.exit_code == 0):
            problems.append(f"status: {self.status.value} with exit_code {self.exit_code}")
        problems += [f"{name}: no time zone" for name in ("started_at", "finished_at")
                     if getattr(self, name).tzinfo is None]
        problems += [f"{name}: not a run id" for name in PASS_FIELDS
                     if not is_run_id(getattr(self, name), missing=True)]
        return problems

    def to_json(self) -> str:
        """Pretty JSON text, ending with a newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


#: A run id: `new_run_id`'s.
RUN_ID: Final = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
#: What a result says of the pass through the scripts it took part in.
PASS_FIELDS: Final = ("scripts_begun_by", "scripts_completed_by")


def is_run_id(value: object, *, missing: bool = False) -> bool:
    """Whether `value` is a run id (or, `missing`, None)."""
    return (value is None and missing) or (isinstance(value, str) and
                                           RUN_ID.fullmatch(value) is not None)


def scripts_pass(data: Mapping[str, object]) -> dict[str, object]:
    """PASS_FIELDS of a stored result. One stored before they were kept (which ran its
    scripts from the top) counts its own run as having begun the pass, and as having
    completed it if it succeeded."""
    ran = data.get("run_scripts") is True
    before = {"scripts_begun_by": data.get("run_id") if ran else None,
              "scripts_completed_by": data.get("run_id") if ran and
              data.get("status") == RunStatus.SUCCEEDED.value else None}
    return {name: data.get(name, value) for name, value in before.items()}


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_run_id(at: datetime) -> str:
    """A sortable, unique run id such as `20261125T145428Z-3f9a1c2b`."""
    return f"{at.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


@functools.cache
def _adapter() -> TypeAdapter[RunResult]:
    # Built on first use: only `status`, `--resume` and the daemon's recovery read results.
    from pydantic import TypeAdapter  # noqa: PLC0415 - and so is pydantic's adapter module

    return TypeAdapter(RunResult)
