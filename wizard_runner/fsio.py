"""File-system primitives of the shell: atomic replace, reading a target, the run lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Final

from wizard_runner.errors import LockedError, PrivilegeError, RunnerIOError

#: A system file larger than this is not one the wizard manages; refuse rather than load it.
MAX_TARGET_BYTES: Final = 4 * 1024 * 1024
TMP_SUFFIX: Final = ".wizard-runner-tmp"


@dataclass(frozen=True)
class Ownership:
    """The mode bits and owner a replaced file keeps."""

    mode: int
    uid: int
    gid: int


def new_file_owner() -> Ownership:
    """What a file the runner creates gets: 0644, owned by the runner (root:root in production)."""
    return Ownership(mode=0o644, uid=os.geteuid(), gid=os.getegid())


class WriteMethod(Enum):
    """How a file was replaced."""

    RENAMED = "renamed"
    IN_PLACE = "in_place"  # rename refused with EBUSY: a bind-mounted file, as in containers


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (a rename, a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`, however many calls that takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_in_place(path: Path, data: bytes) -> None:
    """Overwrite a file whose name cannot be replaced; write first, then cut, never empty it."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path`, hidden and recognisable as the runner's."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def atomic_replace(path: Path, data: bytes, owner: Ownership) -> WriteMethod:
    """Replace `path` with `data` so readers see the old or the new file, never a mix.

    Temp file in the same directory, write, fchmod, fchown, fsync, rename, fsync of the
    directory. A rename refused with EBUSY falls back to an in-place write.
    """
    tmp = temp_name(path)
    try:
        # Inside the try: should the create itself fail half-way, the name is still cleaned up.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            write_all(fd, data)
            os.fchmod(fd, stat.S_IMODE(owner.mode))
            current = os.fstat(fd)
            if (current.st_uid, current.st_gid) != (owner.uid, owner.gid):
                os.fchown(fd, owner.uid, owner.gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            _write_in_place(path, data)
            os.unlink(tmp)
            return WriteMethod.IN_PLACE
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return WriteMethod.RENAMED


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files a killed run left in `directory`; return what was removed."""
    removed: list[Path] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in directory.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def ensure_dir(path: Path, mode: int) -> None:
    """Create `path` (and its parents) when missing; an access refusal is a privilege error."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except PermissionError as error:
        raise PrivilegeError(f"{path}: cannot create directory: {error.strerror}") from error


class RunLock:
    """An exclusive, non-blocking flock held for a whole run; the holder's pid is in the file.

    flock() works on any open descriptor, whatever its access mode: whoever can open the file
    can hold the lock. `mode` 0600 keeps everyone but its owner from blocking the holder.
    """

    def __init__(self, path: Path, what: str = "wizard-runner run", mode: int = 0o644) -> None:
        self.path = path
        self.what = what
        self.mode = mode
        self._fd: int | None = None

    def _holder(self, fd: int) -> str:
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode("ascii").strip()
            if text:
                return f"pid {int(text)}"
        return "unknown pid"

    def acquire(self) -> None:
        """Take the lock or raise LockedError naming the holder."""
        try:
            ensure_dir(self.path.parent, 0o755)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         self.mode)
        except PermissionError as error:
            raise PrivilegeError(f"{self.path}: cannot open the lock: {error.strerror}") from error
        except OSError as error:
            raise RunnerIOError(f"{self.path}: cannot open the lock: {error.strerror}") from error
        with contextlib.suppress(OSError):  # a file left by an older version keeps its mode
            if stat.S_IMODE(os.fstat(fd).st_mode) != self.mode:
                os.fchmod(fd, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise LockedError(
                f"another {self.what} ({holder}) holds {self.path}; wait for it to finish"
            ) from None
        # The pid only tells a refused run who holds the lock: a full disk must not fail this.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; the file stays so that no two runs ever lock different inodes."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
