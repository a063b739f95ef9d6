"""File-system primitives of the shell: atomic replace relative to a directory fd, the run lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple

from wizard_runner.errors import LockedError, PrivilegeError, RunnerIOError
from wizard_runner.procs import proc_stat

#: A system file larger than this is not one the wizard manages; refuse rather than load it.
MAX_TARGET_BYTES: Final = 4 * 1024 * 1024
TMP_SUFFIX: Final = ".wizard-runner-tmp"


#: A file's extended attributes (its POSIX ACL and security label among them): name, value.
Xattrs = tuple[tuple[str, bytes], ...]


class Ownership(NamedTuple):
    """The mode bits, owner and extended attributes a replaced file keeps."""

    mode: int
    uid: int
    gid: int
    xattrs: Xattrs = ()


def new_file_owner() -> Ownership:
    """What a file the runner creates gets: 0644, owned by the runner (root:root in production)."""
    return Ownership(mode=0o644, uid=os.geteuid(), gid=os.getegid())


class WriteMethod(Enum):
    """How a file was replaced."""

    RENAMED = "renamed"
    IN_PLACE = "in_place"  # rename refused with EBUSY: a bind-mounted file, as in containers


class At(NamedTuple):
    """A name inside an open directory: the `*_at` functions act there, resolving nothing again.

    `shown` is how messages and logs name it (a system path such as /etc/hosts).
    """

    dir_fd: int
    name: str
    shown: str


class NotRegularFileError(OSError):
    """A FIFO, device, directory... where a regular file should be; `mode` says which."""

    def __init__(self, path: str, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({describe(mode)})", path)
        self.mode = mode


def read_regular(path: str | Path, *, dir_fd: int | None = None, follow: bool = True,
                 limit: int | None = None) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes (up to `limit` + 1 when given, so that a caller can tell it is
    too big) and its fstat. Anything else is refused (NotRegularFileError) without a read that
    could block; with `follow` False, a symlink too (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(str(path), info.st_mode)
        chunks: list[bytes] = []
        size = 0
        while limit is None or size <= limit:
            chunk = os.read(fd, 1024 * 1024 if limit is None else limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def read_xattrs_at(dir_fd: int, name: str) -> tuple[os.stat_result, Xattrs]:
    """The fstat and every extended attribute of the regular file `name` in `dir_fd` (none
    where its file system keeps none), opened without following a link or blocking."""
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW,
                 dir_fd=dir_fd)
    try:
        try:
            names = os.listxattr(fd)
        except OSError as error:
            if error.errno != errno.EOPNOTSUPP:
                raise
            names = []
        found = []
        for attribute in sorted(names):
            with contextlib.suppress(OSError):  # (removed meanwhile: ENODATA)
                found.append((attribute, os.getxattr(fd, attribute)))
        return os.fstat(fd), tuple(found)
    finally:
        os.close(fd)


class AttributeNotKeptError(OSError):
    """A file could not be given an extended attribute of the one it replaces."""


def _set_xattrs(fd: int, xattrs: Xattrs) -> None:
    for attribute, value in xattrs:
        try:
            os.setxattr(fd, attribute, value)
        except OSError as error:
            raise AttributeNotKeptError(error.errno, "cannot keep its extended attribute "
                                        f"{attribute}: {error.strerror}") from error


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`, however many calls that takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_in_place(at: At, data: bytes) -> None:
    """Overwrite a file whose name cannot be replaced (a bind mount); write first, then cut,
    never empty it. What goes past its present end is written first: a full disk refuses that
    before a byte of the old content is overwritten, and the file is cut back to its size."""
    fd = os.open(at.name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=at.dir_fd)
    try:
        size = os.fstat(fd).st_size
        if len(data) > size:
            os.lseek(fd, size, os.SEEK_SET)
            try:
                write_all(fd, data[size:])
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
            os.lseek(fd, 0, os.SEEK_SET)
        write_all(fd, data[:size] if len(data) > size else data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(name: str) -> str:
    """A fresh temporary name beside `name`, hidden and recognisable as the runner's."""
    return f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def replace_at(at: At, data: bytes, owner: Ownership) -> WriteMethod:
    """Replace the file `at` names with `data` so readers see the old or the new file, never a mix.

    Temp file in the same directory, write, fchown, extended attributes, fchmod, fsync,
    rename, fsync of the directory, all relative to the directory's descriptor. A rename
    refused with EBUSY falls back to an in-place write (which keeps the file's own
    attributes). A symlink at the name is replaced, never followed.
    """
    tmp = temp_name(at.name)
    try:
        # Inside the try: should the create itself fail half-way, the name is still cleaned up.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600, dir_fd=at.dir_fd)
        try:
            write_all(fd, data)
            current = os.fstat(fd)
            if (current.st_uid, current.st_gid) != (owner.uid, owner.gid):
                os.fchown(fd, owner.uid, owner.gid)
            _set_xattrs(fd, owner.xattrs)  # the old file's ACL, label, ...
            os.fchmod(fd, stat.S_IMODE(owner.mode))  # after: a chown clears setuid and setgid
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, at.name, src_dir_fd=at.dir_fd, dst_dir_fd=at.dir_fd)
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            _write_in_place(at, data)
            os.unlink(tmp, dir_fd=at.dir_fd)
            return WriteMethod.IN_PLACE
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=at.dir_fd)
        raise
    os.fsync(at.dir_fd)
    return WriteMethod.RENAMED


def symlink_at(at: At, target: str) -> None:
    """Make `at` a symlink to `target` atomically (a temp link renamed over the name)."""
    tmp = temp_name(at.name)
    os.symlink(target, tmp, dir_fd=at.dir_fd)
    try:
        os.rename(tmp, at.name, src_dir_fd=at.dir_fd, dst_dir_fd=at.dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=at.dir_fd)
        raise
    os.fsync(at.dir_fd)


def unlink_at(at: At) -> None:
    """Remove the name `at` (already gone is fine) and flush the directory."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(at.name, dir_fd=at.dir_fd)
    os.fsync(at.dir_fd)


def atomic_replace(path: Path, data: bytes, owner: Ownership) -> WriteMethod:
    """Replace `path` with `data` atomically: `replace_at` in `path`'s directory.

    For the runner's own files, whose directories `Layout.own` has checked; system files go
    through `fence.Fence`, which reaches their directories without following symlinks.
    """
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return replace_at(At(dir_fd, path.name, str(path)), data, owner)
    finally:
        os.close(dir_fd)


def remove_stale_temps(dir_fd: int) -> list[str]:
    """Delete temp files a killed run left in the open directory; return the names removed."""
    removed: list[str] = []
    for name in os.listdir(dir_fd):
        if name.startswith(".") and name.endswith(TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
    return removed


def describe(mode: int) -> str:
    """What kind of file `mode` says, in words ("a FIFO", "a directory")."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "an unknown kind of file")


def ensure_dir(path: Path, mode: int) -> None:
    """Create `path` (and its parents) when missing; an access refusal is a privilege error,
    something else at the name (a file) an OSError saying what it is."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except PermissionError as error:
        raise PrivilegeError(f"{path}: cannot create directory: {error.strerror}") from error
    except (FileExistsError, NotADirectoryError) as error:  # a file has the name, or a parent's
        raise _not_a_directory(path) from error


def _not_a_directory(path: Path) -> OSError:
    """What stands where `path` or one of its parents should be a directory: a file, or a
    symlink to nothing (named with its target)."""
    found = next((parent for parent in (path, *path.parents)
                  if os.path.lexists(parent) and not os.path.isdir(parent)), path)
    kind = describe(os.lstat(found).st_mode) if os.path.lexists(found) else "gone"
    if os.path.islink(found):
        try:
            target = describe(os.stat(found).st_mode)
        except OSError as error:  # ELOOP: it leads back to itself
            target = ("a loop of symlinks" if error.errno == errno.ELOOP else
                      "which does not exist")
        kind += f" to {os.readlink(found)}, {target}"
    return OSError(errno.ENOTDIR, f"{found} is not a directory ({kind})", str(path))


def prepare_dir(path: Path, mode: int, gid: int = 0) -> None:
    """Create `path` if missing, then give it `mode` (and, as root, owner root and group
    `gid`); it is made 0700 first, never wider than meant even for a moment."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise _not_a_directory(path) from error
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
    path.chmod(mode)


def _stopped(pid: int) -> str:
    """What to say of a lock holder that is stopped (SIGSTOP, Ctrl-Z): it holds the lock until
    it is continued."""
    fields = proc_stat(pid)
    if fields is not None and fields[0] in {b"T", b"t"}:
        return f", stopped: `kill -CONT {pid}` lets it go on"
    return ""


#: How long a refused run looks again at a lock whose holder has not written its pid yet.
LOCK_SETTLE: Final = 0.1


class RunLock:
    """An exclusive, non-blocking flock held for a whole run; the holder's pid is in the file.
    What the holder notes (its run id) goes to `holder`, a sibling anyone may read (the lock
    itself is 0600), emptied when it lets go: a holder that was killed leaves its line there,
    and the next one finds it in `previous`.

    flock() works on any open descriptor, whatever its access mode: whoever can open the file
    can hold the lock. `mode` 0600 keeps everyone but its owner from blocking the holder.
    """

    def __init__(self, path: Path, what: str = "wizard-runner run", mode: int = 0o644) -> None:
        self.path = path
        self.holder = self.holder_of(path)
        self.what = what
        self.mode = mode
        self.previous: str | None = None
        self._fd: int | None = None
        self._noted = False

    @staticmethod
    def _holder(fd: int) -> str | None:
        """Who holds the lock, as it wrote itself in; None while nothing is written."""
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode("ascii").strip()
            if text:
                return f"pid {int(text)}{_stopped(int(text))}"
        return None

    def _take(self, fd: int) -> None:
        """flock the lock, or LockedError naming its holder. One that has just taken it (and
        not yet written its pid) or is letting it go is looked at again for a moment."""
        deadline = time.monotonic() + LOCK_SETTLE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                if holder is None and time.monotonic() < deadline:
                    time.sleep(LOCK_SETTLE / 50)
                    continue
                raise LockedError(f"another {self.what} ({holder or 'unknown pid'}) holds "
                                  f"{self.path}; wait for it to finish") from None
            return

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
            self._take(fd)
        except LockedError:
            os.close(fd)
            raise
        # The pid only tells a refused run who holds the lock: a full disk must not fail this.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        with contextlib.suppress(OSError, ValueError):
            self.previous = read_regular(self.holder, follow=False, limit=128)[0].decode(
                "ascii").strip() or None
        self._fd = fd

    def note(self, *words: str) -> None:
        """Write `pid words...` into `holder` (0644): who holds the lock, for anyone's status,
        and for the next holder if this one is killed. Best effort: a full disk must not fail
        the run for it."""
        line = " ".join([str(os.getpid()), *words]) + "\n"
        with contextlib.suppress(OSError):
            fd = os.open(self.holder, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC |
                         os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fchmod(fd, 0o644)
                    write_all(fd, line.encode())
                    self._noted = True
            finally:
                os.close(fd)

    def keep_note(self, word: str) -> None:
        """Leave the holder line for the next holder and for status, `word` added to it (an
        append, which a full disk leaves room for). Best effort."""
        if self._noted:
            self._noted = False
            with contextlib.suppress(OSError):
                fd = os.open(self.holder, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC |
                             os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    write_all(fd, f"{word}\n".encode())
                finally:
                    os.close(fd)

    def release(self) -> None:
        """Drop the lock; the file stays so that no two runs ever lock different inodes."""
        if self._fd is not None:
            if self._noted:
                with contextlib.suppress(OSError):
                    os.truncate(self.holder, 0)
                self._noted = False
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder_of(path: Path) -> Path:
        """Where the holder of the lock at `path` notes who it is."""
        return path.with_name(f"{path.name}.holder")

    @staticmethod
    def held(path: Path) -> bool:
        """Whether a process holds the lock at `path` now (read from /proc/locks: testing it
        by taking it could refuse a run that starts at that moment)."""
        try:
            info = os.stat(path)
            with open("/proc/locks") as locks:
                listed = locks.read().split()
        except OSError:
            return False
        return f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}" in listed

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
