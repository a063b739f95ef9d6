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
from pathlib import Path, PurePath, PurePosixPath

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.errors import ApplyError, PrivilegeError, RenderError, WizardRunnerError
from wizard_runner.fence import (
    Fence,
    FenceError,
    cannot,
    open_fence,
    read_regular_at,
)
from wizard_runner.fsio import (
    At,
    AttributeNotKeptError,
    Ownership,
    WriteMethod,
    describe,
    new_file_owner,
    read_xattrs_at,
    remove_stale_temps,
    replace_at,
    symlink_at,
    temp_name,
    unlink_at,
)
from wizard_runner.layout import BACKUP_DIR, BACKUP_DIR_MODE, Layout
from wizard_runner.render import RENDERERS, file_lines
from wizard_runner.result import NOT_RESTORED, FileAction, FileOutcome

ENCODING = "utf-8"
# Bytes that are not UTF-8 in an admin's line survive a render untouched.
ERRORS = "surrogateescape"


class TargetKind(Enum):
    """What a managed path currently is."""

    MISSING = "missing"
    FILE = "file"
    SYMLINK = "symlink"
    NO_PARENT = "no_parent"


#: What tells a file changed: device, inode, size, modification time (ns).
Identity = tuple[int, int, int, int]


def _identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


@dataclass(frozen=True)
class Current:
    """A managed file as found: its kind, bytes and ownership (a symlink: its target, no bytes)."""

    kind: TargetKind
    data: bytes | None = None
    owner: Ownership | None = None
    link: str | None = None
    seen: Identity | None = None  # a file's, as read: an edit since changes it


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
Replacer = Callable[[At, bytes, Ownership], WriteMethod]


class FilesNotAppliedError(ApplyError):
    """A write failed; the files already replaced were restored. `files` says what happened."""

    def __init__(self, message: str, files: Sequence[FileOutcome], backup_dir: Path | None):
        super().__init__(message)
        self.files = tuple(files)
        self.backup_dir = backup_dir


# --- reading (shell) ----------------------------------------------------------------------------


def _inspect(dir_fd: int, system_path: str) -> Current:
    name = PurePosixPath(system_path).name
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return Current(TargetKind.MISSING)
    if stat.S_ISLNK(info.st_mode):
        # Never read through it: the link may lead out of the root, or to a FIFO. Replacing
        # it (--replace-symlinks) writes the new content as for a new file.
        return Current(TargetKind.SYMLINK, None, new_file_owner(),
                       os.readlink(name, dir_fd=dir_fd))
    if not stat.S_ISREG(info.st_mode):
        raise FenceError(f"{system_path}: not a regular file ({describe(info.st_mode)}); "
                         "refusing to replace it")
    data, opened = read_regular_at(dir_fd, name, system_path)
    again, xattrs = read_xattrs_at(dir_fd, name)
    if _identity(opened) != _identity(again) or \
            (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        raise FenceError(f"{system_path}: replaced while it was being read; run again")
    # The same inode: the mode and owner the lstat saw are those of the bytes just read.
    return Current(TargetKind.FILE, data,
                   Ownership(stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, xattrs),
                   seen=_identity(opened))


def read_current(fence: Fence, system_path: str) -> Current:
    """Find out what `system_path` is under the fence's root, following no symlink to it.

    A symlinked directory on the way (under a sandbox root) or a target that is not a regular
    file (a FIFO, a device) raises FenceError at once; nothing is opened that could block.
    """
    try:
        with fence.directory(PurePosixPath(system_path).parent) as dir_fd:
            if dir_fd is None:
                return Current(TargetKind.NO_PARENT)
            return _inspect(dir_fd, system_path)
    except OSError as error:
        raise cannot(system_path, "read", error) from error


def read_targets(layout: Layout, paths: Iterable[str] = RENDERERS) -> dict[str, Current]:
    """Read every managed file; an unreadable or unusual target fails before any write."""
    with open_fence(layout) as fence:
        return {path: read_current(fence, path) for path in paths}


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


def _diff_lines(text: str) -> list[str]:
    """A text's lines for a diff, cut as the tools read them; a last line without a newline
    is marked as `diff` marks it."""
    lines = [f"{line}\n" for line in file_lines(text)]
    if lines and not text.endswith("\n"):
        lines[-1] += "\\ No newline at end of file\n"
    return lines


def unified_diff(changes: Sequence[FileChange]) -> str:
    """A unified diff of every planned write, plus a comment line per skipped file."""
    chunks: list[str] = []
    for change in changes:
        if change.plan is Plan.SKIP:
            chunks.append(f"# {change.path}: skipped: {change.reason}\n")
        elif change.plan is Plan.WRITE:
            old_name = "/dev/null" if change.current.data is None else f"a{change.path}"
            lines = difflib.unified_diff(
                _diff_lines(change.old_text), _diff_lines(change.new_text),
                fromfile=old_name,
                tofile=f"b{change.path}",
            )
            chunks.append("".join(lines))
    return "".join(chunks)


# --- applying (shell) ---------------------------------------------------------------------------


def _parents(changes: Sequence[FileChange]) -> list[PurePosixPath]:
    return sorted({PurePosixPath(change.path).parent for change in changes})


def _unwritable(path: str, directory: str, dir_fd: int, *, sandbox: bool) -> WizardRunnerError:
    """Why a target directory cannot be written: a read-only file system (exit 73), else
    privileges (exit 77), which root lacks only for an immutable or append-only directory."""
    if os.fstatvfs(dir_fd).f_flag & os.ST_RDONLY:
        return ApplyError(f"{path}: cannot write in {directory}: a read-only file system")
    if os.geteuid() == 0:
        hint = (": even root is refused (an immutable or append-only directory? `lsattr -d` "
                "shows it)")
    else:
        hint = (" (run as root, or make the sandbox writable for this user)" if sandbox
                else " (run as root, or use --root DIR)")
    return PrivilegeError(f"{path}: cannot write in {directory}{hint}")


def _prepare(fence: Fence, changes: Sequence[FileChange]) -> None:
    """Before any write: reach each target directory, check it is writable."""
    for parent in _parents(changes):
        try:
            with fence.directory(parent) as dir_fd:
                if dir_fd is None:
                    continue  # gone since the plan: the write itself reports it
                if not os.access(".", os.W_OK, dir_fd=dir_fd):
                    path = next(c.path for c in changes if PurePosixPath(c.path).parent == parent)
                    raise _unwritable(path, str(fence.host(parent)), dir_fd,
                                      sandbox=fence.confined)
        except OSError as error:
            raise cannot(str(parent), "prepare the writes in it", error) from error


def _clear_stale(fence: Fence, changes: Sequence[FileChange], log: FilteringBoundLogger) -> None:
    """Remove what killed runs left beside every managed file (temps, kept old files), also
    when nothing is to be written: best effort, the step does not depend on it."""
    for parent in _parents(changes):
        with contextlib.suppress(OSError, FenceError), fence.directory(parent) as dir_fd:
            for name in remove_stale_temps(dir_fd) if dir_fd is not None else ():
                log.warning("stale_temp_removed", path=str(parent / name))


def backup_copy(directory: PurePath, system_path: str) -> PurePath:
    """Where a run's backup directory keeps the copy of a system file."""
    return directory.joinpath(*PurePosixPath(system_path).parts[1:])


def _backup(fence: Fence, run_id: str, changes: Sequence[FileChange], replacer: Replacer,
            log: FilteringBoundLogger) -> None:
    """Copy every file about to be replaced into the run's backup directory, with a manifest.

    Written through the fence like the system files: under a sandbox root, a symlinked
    /var/backups cannot carry them out of it.
    """
    directory = BACKUP_DIR / run_id
    with fence.directory(BACKUP_DIR.parent, create_mode=0o755):
        pass  # /var/backups as a plain directory if missing; the rest is the runner's, 0700
    manifest = []
    for change in changes:
        existed = change.current.data is not None and change.current.kind is TargetKind.FILE
        manifest.append({"path": change.path, "existed": existed, "link": change.current.link})
        copy = backup_copy(directory, change.path)
        link = change.current.link if change.current.kind is TargetKind.SYMLINK else None
        if link is not None:  # the link itself, so that `cp -a` puts it back as it was
            with fence.at(str(copy), create_mode=BACKUP_DIR_MODE) as at:
                symlink_at(at, link)
            continue
        if change.current.data is None or change.current.owner is None:
            continue
        with fence.at(str(copy), create_mode=BACKUP_DIR_MODE) as at:
            try:
                replacer(at, change.current.data, change.current.owner)
            except AttributeNotKeptError as error:  # /var/backups may keep fewer kinds
                log.warning("backup_attributes_not_kept", path=change.path, error=_why(error))
                replacer(at, change.current.data, change.current.owner._replace(xattrs=()))
    with fence.at(str(directory / "manifest.json"), create_mode=BACKUP_DIR_MODE) as at:
        replacer(
            at,
            (json.dumps({"run_id": run_id, "files": manifest}, indent=2) + "\n").encode(),
            Ownership(0o600, os.geteuid(), os.getegid()),
        )


def _restore_one(fence: Fence, change: FileChange, replacer: Replacer) -> None:
    current = change.current
    with fence.at(change.path) as at:
        if (current.kind is TargetKind.FILE and current.data is not None
                and current.owner is not None):
            replacer(at, current.data, current.owner)
        elif current.kind is TargetKind.SYMLINK and current.link is not None:
            symlink_at(at, current.link)
        else:
            unlink_at(at)


def _check_as_read(fence: Fence, change: FileChange) -> None:
    """The target must still be what the step read and backed up: an edit made since (by an
    admin, another program) is never overwritten unseen."""
    current, name = change.current, PurePosixPath(change.path).name
    with fence.directory(PurePosixPath(change.path).parent) as dir_fd:
        if dir_fd is None:
            return  # (no directory, then or now: the write says so)
        try:
            now = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            same = current.kind in (TargetKind.MISSING, TargetKind.NO_PARENT)
        else:
            same = (stat.S_ISREG(now.st_mode) and _identity(now) == current.seen) or (
                stat.S_ISLNK(now.st_mode) and os.readlink(name, dir_fd=dir_fd) == current.link)
    if not same:
        raise FenceError(f"{change.path} changed after the run read it (edited meanwhile?); "
                         "run again to build on the change")


def _keep_old(fence: Fence, change: FileChange) -> str | None:
    """A hard link, beside it, to the file about to be replaced: a rollback renames it back,
    which needs no room on the disk (rewriting the old content would, on a disk the step has
    just filled). None for what is not a regular file, or cannot be linked (a bind-mounted
    file): its rollback rewrites it."""
    if change.current.kind is not TargetKind.FILE:
        return None
    with contextlib.suppress(OSError, FenceError), fence.at(change.path) as at:
        kept = temp_name(at.name)  # a killed run's is removed as a stale temp
        os.link(at.name, kept, src_dir_fd=at.dir_fd, dst_dir_fd=at.dir_fd,
                follow_symlinks=False)
        return kept
    return None


def _put_back(fence: Fence, change: FileChange, kept: str) -> bool:
    """Rename the kept old file back over its name; False when the name is still that file
    (written in place: it must be rewritten)."""
    with fence.at(change.path) as at:
        old = os.stat(kept, dir_fd=at.dir_fd, follow_symlinks=False)
        with contextlib.suppress(FileNotFoundError):
            now = os.stat(at.name, dir_fd=at.dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (old.st_dev, old.st_ino):
                return False
        os.rename(kept, at.name, src_dir_fd=at.dir_fd, dst_dir_fd=at.dir_fd)
        with contextlib.suppress(OSError):  # it is back, if perhaps not yet on the disk
            os.fsync(at.dir_fd)
    return True


def _put_back_kept(fence: Fence, change: FileChange, kept: dict[str, str]) -> bool:
    """Whether the file's kept old self could be renamed back (any failure: it cannot)."""
    old = kept.get(change.path)
    with contextlib.suppress(OSError, FenceError):
        return old is not None and _put_back(fence, change, old)
    return False


def _drop_kept(fence: Fence, kept: dict[str, str]) -> None:
    """Remove the kept old files that were not put back (the backup directory has them)."""
    for path, name in kept.items():
        with contextlib.suppress(OSError, FenceError), fence.at(path) as at:
            os.unlink(name, dir_fd=at.dir_fd)


def _why(error: OSError | FenceError) -> str:
    """The reason a write failed, in the words of the error (strerror, or the fence's refusal)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def _roll_back(
    fence: Fence,
    done: Sequence[FileChange],
    kept: dict[str, str],
    replacer: Replacer,
    log: FilteringBoundLogger,
) -> tuple[list[str], list[str]]:
    restored, lost = [], []
    for change in reversed(done):
        try:
            if _put_back_kept(fence, change, kept):
                del kept[change.path]
            else:  # rewritten from the copy the plan read
                _restore_one(fence, change, replacer)
        except (OSError, FenceError) as error:
            log.error("file_restore_failed", path=change.path, error=str(error))
            lost.append(change.path)
        else:
            log.warning("file_restored", path=change.path)
            restored.append(change.path)
    return restored[::-1], lost[::-1]


def _holds_new(fence: Fence, change: FileChange) -> bool:
    """Whether a file whose write failed holds its new content all the same."""
    with contextlib.suppress(OSError, FenceError), fence.at(change.path) as at:
        return read_regular_at(at.dir_fd, at.name, change.path)[0] == (change.new or b"")
    return False


def _failure_outcomes(
    changes: Sequence[FileChange],
    done: Sequence[FileChange],
    failed: FileChange,
    why: str,
    lost: Sequence[str],
    *,
    replaced: bool = False,
) -> list[FileOutcome]:
    done_paths = {change.path for change in done}
    outcomes: list[FileOutcome] = []
    reached_failure = False
    for change in changes:
        if change.path == failed.path:
            reached_failure = True
            if not replaced:
                outcomes.append(FileOutcome(
                    change.path, FileAction.SKIPPED, f"write failed ({why}); left as it was"))
            elif change.path in lost:
                outcomes.append(FileOutcome(change.path, FileAction.WRITTEN, (
                    f"written, then failed ({why}); {NOT_RESTORED}; the old copy is in the "
                    "backup directory")))
            else:
                outcomes.append(FileOutcome(change.path, FileAction.RESTORED,
                                            f"written, then failed ({why}); restored"))
        elif change.path in done_paths:
            if change.path in lost:
                reason = f"{NOT_RESTORED}; the old copy is in the backup directory"
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
    fence: Fence,
    changes: Sequence[FileChange],
    backup_dir: Path,
    replacer: Replacer,
    log: FilteringBoundLogger,
) -> None:
    """Replace each planned file in order; on the first failure restore those already done
    (each old file kept as a hard link meanwhile: restoring it needs no room on the disk)."""
    kept: dict[str, str] = {}
    try:
        _replace_each(fence, changes, backup_dir, kept, replacer=replacer, log=log)
    finally:
        _drop_kept(fence, kept)


def _replace_each(
    fence: Fence,
    changes: Sequence[FileChange],
    backup_dir: Path,
    kept: dict[str, str],
    *,
    replacer: Replacer,
    log: FilteringBoundLogger,
) -> None:
    done: list[FileChange] = []
    for change in (c for c in changes if c.plan is Plan.WRITE):
        try:
            _check_as_read(fence, change)
            if (old := _keep_old(fence, change)) is not None:
                kept[change.path] = old
            with fence.at(change.path) as at:
                method = replacer(at, change.new or b"", _owner_for(change))
        except (OSError, FenceError) as error:
            why = _why(error)
            log.error("file_write_failed", path=change.path, error=why)
            replaced = _holds_new(fence, change)  # the error came after its rename
            restored, lost = _roll_back(fence, [*done, change] if replaced else done,
                                        kept, replacer, log)
            message = f"{change.path}: could not be written ({why})"
            if restored:
                message += f"; restored {', '.join(restored)} from {backup_dir}"
            if lost:
                message += f"; COULD NOT RESTORE {', '.join(lost)}: copy them from {backup_dir}"
            files = _failure_outcomes(changes, done, change, why, lost, replaced=replaced)
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
    """Validate, back up and replace every planned file, or restore them all and raise.

    Every file, the backups included, is reached through one fence on the layout's root.
    """
    replacer = replacer or replace_at
    writes = [change for change in changes if change.plan is Plan.WRITE]
    for change in changes:
        if change.plan is not Plan.WRITE:
            log.info(f"file_{change.plan.value}", path=change.path, reason=change.reason)
    if validator is not None and writes:
        validator(writes)
    backup_dir = layout.host(BACKUP_DIR / run_id)
    with open_fence(layout) as fence:
        _clear_stale(fence, changes, log)
        if not writes:
            return Applied(planned_outcomes(changes), None, frozenset())
        _prepare(fence, writes)
        try:
            _backup(fence, run_id, writes, replacer, log)
        except (OSError, FenceError) as error:
            raise ApplyError(
                f"could not back up the system files into {backup_dir} ({_why(error)}); "
                "nothing was changed"
            ) from error
        log.info("files_backed_up", backup_dir=str(backup_dir), count=len(writes))
        _replace_all(fence, changes, backup_dir, replacer, log)
    return Applied(planned_outcomes(changes), backup_dir, frozenset(c.path for c in writes))


def _owner_for(change: FileChange) -> Ownership:
    current = change.current
    if current.kind is TargetKind.FILE and current.owner is not None:
        return current.owner
    return new_file_owner()
