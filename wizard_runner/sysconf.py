"""The system step: read the managed files, plan their new content, apply all or nothing."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.errors import ApplyError, PrivilegeError, RenderError
from wizard_runner.fsio import (
    MAX_TARGET_BYTES,
    Ownership,
    WriteMethod,
    atomic_replace,
    ensure_dir,
    fsync_dir,
    new_file_owner,
    remove_stale_temps,
    temp_name,
)
from wizard_runner.layout import Layout
from wizard_runner.render import RENDERERS
from wizard_runner.result import FileAction, FileOutcome

ENCODING = "utf-8"
# Bytes that are not UTF-8 in an admin's line survive a render untouched.
ERRORS = "surrogateescape"


class TargetKind(Enum):
    """What a managed path currently is."""

    MISSING = "missing"
    FILE = "file"
    SYMLINK = "symlink"
    NO_PARENT = "no_parent"


@dataclass(frozen=True)
class Current:
    """A managed file as found: its kind, bytes (through a symlink too) and ownership."""

    kind: TargetKind
    data: bytes | None = None
    owner: Ownership | None = None
    link: str | None = None


class Plan(Enum):
    """What the system step will do to one file."""

    WRITE = "write"
    UNCHANGED = "unchanged"
    SKIP = "skip"


@dataclass(frozen=True)
class FileChange:
    """One file's planned change: the current state, the new bytes and the decision."""

    path: str
    current: Current
    new: bytes | None
    plan: Plan
    reason: str | None = None

    @property
    def old_text(self) -> str:
        """The current content as text ('' when missing)."""
        return (self.current.data or b"").decode(ENCODING, ERRORS)

    @property
    def new_text(self) -> str:
        """The planned content as text ('' when not written)."""
        return (self.new or b"").decode(ENCODING, ERRORS)


Validator = Callable[[Sequence[FileChange]], None]
Replacer = Callable[[Path, bytes, Ownership], WriteMethod]


class FilesNotAppliedError(ApplyError):
    """A write failed; the files already replaced were restored. `files` says what happened."""

    def __init__(self, message: str, files: Sequence[FileOutcome], backup_dir: Path | None):
        super().__init__(message)
        self.files = tuple(files)
        self.backup_dir = backup_dir


# --- reading (shell) ----------------------------------------------------------------------------


def _read_bytes(path: Path, system_path: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TARGET_BYTES + 1)
    except PermissionError as error:
        raise PrivilegeError(f"{system_path}: cannot read: {error.strerror}") from error
    except OSError as error:
        raise ApplyError(f"{system_path}: cannot read: {error.strerror}") from error
    if len(data) > MAX_TARGET_BYTES:
        raise ApplyError(f"{system_path}: over {MAX_TARGET_BYTES} bytes, not a config file")
    return data


def read_current(layout: Layout, system_path: str) -> Current:
    """Find out what `system_path` is under the layout's root, without following a final link."""
    path = layout.host(system_path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            return Current(TargetKind.NO_PARENT)
        return Current(TargetKind.MISSING)
    owner = Ownership(stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    if stat.S_ISLNK(info.st_mode):
        link = os.readlink(path)
        data = _read_bytes(path, system_path) if path.exists() else None
        return Current(TargetKind.SYMLINK, data, new_file_owner(), link)
    if not stat.S_ISREG(info.st_mode):
        raise ApplyError(f"{system_path}: not a regular file; refusing to replace it")
    return Current(TargetKind.FILE, _read_bytes(path, system_path), owner)


def read_targets(layout: Layout, paths: Iterable[str] = RENDERERS) -> dict[str, Current]:
    """Read every managed file; an unreadable or unusual target fails before any write."""
    return {path: read_current(layout, path) for path in paths}


# --- planning (pure) ----------------------------------------------------------------------------


def plan_file(
    config: WizardConfig, path: str, current: Current, *, replace_symlinks: bool
) -> FileChange:
    """Decide one file's fate from its current state and the config."""
    if current.kind is TargetKind.NO_PARENT:
        parent = PurePosixPath(path).parent
        return FileChange(path, current, None, Plan.SKIP, f"{parent} does not exist on this system")
    if current.kind is TargetKind.SYMLINK and not replace_symlinks:
        return FileChange(
            path,
            current,
            None,
            Plan.SKIP,
            f"is a symlink to {current.link} (another program manages it); "
            "pass --replace-symlinks to replace it with a file",
        )
    old = None if current.data is None else current.data.decode(ENCODING, ERRORS)
    try:
        new = RENDERERS[path](config, old).encode(ENCODING, ERRORS)
    except RenderError as error:
        raise RenderError(f"{path}: {error}") from error
    if current.kind is TargetKind.FILE and new == current.data:
        return FileChange(path, current, new, Plan.UNCHANGED)
    return FileChange(path, current, new, Plan.WRITE)


def plan_changes(
    config: WizardConfig, currents: dict[str, Current], *, replace_symlinks: bool = False
) -> tuple[FileChange, ...]:
    """Plan every managed file, in the order they are written."""
    return tuple(
        plan_file(config, path, currents[path], replace_symlinks=replace_symlinks)
        for path in RENDERERS
    )


def planned_outcomes(changes: Sequence[FileChange]) -> tuple[FileOutcome, ...]:
    """The outcomes a successful apply of `changes` reports."""
    action = {Plan.WRITE: FileAction.WRITTEN, Plan.UNCHANGED: FileAction.UNCHANGED,
              Plan.SKIP: FileAction.SKIPPED}
    return tuple(FileOutcome(c.path, action[c.plan], c.reason) for c in changes)


def unified_diff(changes: Sequence[FileChange]) -> str:
    """A unified diff of every planned write, plus a comment line per skipped file."""
    chunks: list[str] = []
    for change in changes:
        if change.plan is Plan.SKIP:
            chunks.append(f"# {change.path}: skipped: {change.reason}\n")
        elif change.plan is Plan.WRITE:
            old_name = "/dev/null" if change.current.data is None else f"a{change.path}"
            lines = difflib.unified_diff(
                change.old_text.splitlines(keepends=True),
                change.new_text.splitlines(keepends=True),
                fromfile=old_name,
                tofile=f"b{change.path}",
            )
            chunks.append("".join(lines))
    return "".join(chunks)


# --- applying (shell) ---------------------------------------------------------------------------


def _check_writable(layout: Layout, changes: Sequence[FileChange]) -> None:
    for change in changes:
        parent = layout.host(change.path).parent
        if not os.access(parent, os.W_OK):
            raise PrivilegeError(
                f"{change.path}: cannot write in {parent} (run as root, or use --root DIR)"
            )


def _backup(
    layout: Layout, run_id: str, changes: Sequence[FileChange], replacer: Replacer
) -> Path:
    """Copy every file about to be replaced into the run's backup directory, with a manifest."""
    directory = layout.backup_dir / run_id
    ensure_dir(layout.backup_dir, 0o700)
    ensure_dir(directory, 0o700)
    manifest = []
    for change in changes:
        existed = change.current.data is not None and change.current.kind is TargetKind.FILE
        manifest.append({"path": change.path, "existed": existed, "link": change.current.link})
        if change.current.data is None or change.current.owner is None:
            continue
        target = directory.joinpath(*PurePosixPath(change.path).parts[1:])
        ensure_dir(target.parent, 0o700)
        replacer(target, change.current.data, change.current.owner)
    replacer(
        directory / "manifest.json",
        (json.dumps({"run_id": run_id, "files": manifest}, indent=2) + "\n").encode(),
        Ownership(0o600, os.geteuid(), os.getegid()),
    )
    return directory


def _restore_one(layout: Layout, change: FileChange, replacer: Replacer) -> None:
    path = layout.host(change.path)
    current = change.current
    if current.kind is TargetKind.FILE and current.data is not None and current.owner is not None:
        replacer(path, current.data, current.owner)
    elif current.kind is TargetKind.SYMLINK and current.link is not None:
        tmp = temp_name(path)
        os.symlink(current.link, tmp)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fsync_dir(path.parent)


def _roll_back(
    layout: Layout,
    done: Sequence[FileChange],
    replacer: Replacer,
    log: FilteringBoundLogger,
) -> tuple[list[str], list[str]]:
    restored, lost = [], []
    for change in reversed(done):
        try:
            _restore_one(layout, change, replacer)
        except OSError as error:
            log.error("file_restore_failed", path=change.path, error=str(error))
            lost.append(change.path)
        else:
            log.warning("file_restored", path=change.path)
            restored.append(change.path)
    return restored[::-1], lost[::-1]


def _failure_outcomes(
    changes: Sequence[FileChange],
    done: Sequence[FileChange],
    failed: FileChange,
    error: OSError,
    lost: Sequence[str],
) -> list[FileOutcome]:
    done_paths = {change.path for change in done}
    outcomes: list[FileOutcome] = []
    reached_failure = False
    for change in changes:
        if change.path == failed.path:
            reached_failure = True
            outcomes.append(FileOutcome(
                change.path, FileAction.SKIPPED, f"write failed ({error.strerror}); left as it was"
            ))
        elif change.path in done_paths:
            if change.path in lost:
                reason = "could not be restored; the old copy is in the backup directory"
                outcomes.append(FileOutcome(change.path, FileAction.WRITTEN, reason))
            else:
                reason = f"restored because {failed.path} could not be written"
                outcomes.append(FileOutcome(change.path, FileAction.RESTORED, reason))
        elif change.plan is Plan.WRITE and reached_failure:
            reason = f"not written: the step stopped at {failed.path}"
            outcomes.append(FileOutcome(change.path, FileAction.SKIPPED, reason))
        else:
            outcomes.extend(planned_outcomes([change]))
    return outcomes


@dataclass(frozen=True)
class Applied:
    """A successful system step: per-file outcomes, the backup directory, the changed paths."""

    files: tuple[FileOutcome, ...]
    backup_dir: Path | None
    changed: frozenset[str]


def _replace_all(
    layout: Layout,
    changes: Sequence[FileChange],
    backup_dir: Path,
    replacer: Replacer,
    log: FilteringBoundLogger,
) -> None:
    """Replace each planned file in order; on the first failure restore those already done."""
    done: list[FileChange] = []
    for change in (c for c in changes if c.plan is Plan.WRITE):
        try:
            method = replacer(layout.host(change.path), change.new or b"", _owner_for(change))
        except OSError as error:
            log.error("file_write_failed", path=change.path, error=str(error))
            restored, lost = _roll_back(layout, done, replacer, log)
            message = f"{change.path}: could not be written ({error.strerror})"
            if restored:
                message += f"; restored {', '.join(restored)} from {backup_dir}"
            if lost:
                message += f"; COULD NOT RESTORE {', '.join(lost)}: copy them from {backup_dir}"
            files = _failure_outcomes(changes, done, change, error, lost)
            raise FilesNotAppliedError(message, files, backup_dir) from error
        done.append(change)
        if method is WriteMethod.IN_PLACE:
            log.warning("file_written_in_place", path=change.path,
                        reason="rename refused (EBUSY): a bind-mounted file")
        else:
            log.info("file_written", path=change.path)


def apply_changes(
    layout: Layout,
    run_id: str,
    changes: Sequence[FileChange],
    log: FilteringBoundLogger,
    *,
    validator: Validator | None = None,
    replacer: Replacer | None = None,
) -> Applied:
    """Validate, back up and replace every planned file, or restore them all and raise."""
    replacer = replacer or atomic_replace
    writes = [change for change in changes if change.plan is Plan.WRITE]
    for change in changes:
        if change.plan is not Plan.WRITE:
            log.info(f"file_{change.plan.value}", path=change.path, reason=change.reason)
    if not writes:
        return Applied(planned_outcomes(changes), None, frozenset())
    if validator is not None:
        validator(writes)
    _check_writable(layout, writes)
    for parent in {layout.host(change.path).parent for change in writes}:
        for stale in remove_stale_temps(parent):
            log.warning("stale_temp_removed", path=str(stale))
    try:
        backup_dir = _backup(layout, run_id, writes, replacer)
    except OSError as error:
        raise ApplyError(
            f"could not back up the system files into {layout.backup_dir / run_id} "
            f"({error.strerror}); nothing was changed"
        ) from error
    log.info("files_backed_up", backup_dir=str(backup_dir), count=len(writes))
    _replace_all(layout, changes, backup_dir, replacer, log)
    return Applied(planned_outcomes(changes), backup_dir, frozenset(c.path for c in writes))


def _owner_for(change: FileChange) -> Ownership:
    current = change.current
    if current.kind is TargetKind.FILE and current.owner is not None:
        return current.owner
    return new_file_owner()
