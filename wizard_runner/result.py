"""The run result: what happened to each file (and later each script), as JSON-ready data."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class FileAction(StrEnum):
    """What the system step did to one file."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    RESTORED = "restored"


class RunStatus(StrEnum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


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
    scripts: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    root: str = "/"
    run_scripts: bool = False  # the effective flag, after the command line's overrides
    request_id: str | None = None  # the spool request this run served, if any

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
            "system_conf": self.system_conf.to_dict(),
            "scripts": list(self.scripts),
            "error": self.error,
        }

    def to_json(self) -> str:
        """Pretty JSON text, ending with a newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_run_id(at: datetime) -> str:
    """A sortable, unique run id such as `20261125T145428Z-3f9a1c2b`."""
    return f"{at.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
