"""Whether a daemon serves the spool: a lock the daemon holds and clients test without taking.

The daemon holds an open-file-description (OFD) write lock on a world-readable file; a
client (www-data) opens it read-only and asks the kernel with F_OFD_GETLK whether a write
lock is held. Asking takes nothing, so a client can never keep the daemon from starting,
as a shared flock() taken to test would. A read lock could be taken on a read-only
descriptor, though, and would block the daemon's write lock: so the daemon never locks a
file it did not just create. It writes a fresh one under a temporary name (0600, locked,
then made 0644) and renames it into place; a read lock anyone holds is then on an unlinked
file, and the new one cannot be read-locked while its write lock is held. Only the daemon
holding its own exclusive, root-only lock does this, so two daemons never race here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from pathlib import Path
from types import TracebackType
from typing import Final

from wizard_runner.fsio import read_regular, temp_name
from wizard_runner.procs import proc_stat

#: struct flock on 64-bit Linux (what Debian's amd64 and arm64 appliances run): l_type,
#: l_whence, l_start, l_len, l_pid, padded to the C struct's 32 bytes. OFD locks want l_pid 0.
_FLOCK: Final = struct.Struct("@hhqqi4x")


def _whole_file(kind: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0)


def _publish(directory: int, name: str) -> int:
    """A fresh file, locked, then renamed into place as `name`: its open descriptor."""
    temp = temp_name(name)
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600, dir_fd=directory)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _whole_file(fcntl.F_WRLCK))
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))  # for an admin's eyes only
        os.fchmod(fd, 0o644)
        os.rename(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory)
        raise
    with contextlib.suppress(OSError):
        os.fsync(directory)
    return fd


class PresenceLock:
    """The daemon's side: an OFD write lock on a fresh file at `path`, held while it serves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create, lock and publish a fresh presence file (OSError if that is impossible)."""
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fd = _publish(directory, self.path.name)
        finally:
            os.close(directory)

    def release(self) -> None:
        """Stop announcing: closing the only descriptor drops the lock (as a crash would)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PresenceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def daemon_present(path: Path) -> bool:
    """Whether a daemon holds the presence lock at `path`, asked without taking any lock.

    A missing file means no daemon. A file that cannot be opened or asked about counts as
    present: a client must never withdraw a request on a guess.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        # Asking about a read lock finds write locks only, which only the daemon can take
        # (the file is root's, 0644): a client's read lock cannot make a dead daemon look alive.
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _whole_file(fcntl.F_RDLCK))
        held = _FLOCK.unpack(answer)[0] == fcntl.F_WRLCK
        return held and not _stopped(os.pread(fd, 32, 0))
    except OSError:
        return True
    finally:
        os.close(fd)


def _stopped(content: bytes) -> bool:
    """Whether the daemon the presence file names is stopped (SIGSTOP, a debugger): it holds
    the lock, but serves nothing until someone continues it."""
    try:
        fields = proc_stat(int(content))
    except ValueError:
        return False
    return fields is not None and fields[0] in (b"T", b"t")


def stopped_daemon(path: Path) -> int | None:
    """The pid the presence file at `path` names, if that process is stopped: for a message
    (it may have stopped serving since)."""
    with contextlib.suppress(OSError):
        content = read_regular(path, follow=False, limit=32)[0]
        if _stopped(content):
            return int(content)
    return None
