"""Whether a daemon serves: the presence lock, tested by clients without taking it."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.helpers import as_www_data, presence_holder, traversable_dir, wait_until, www_data
from wizard_runner.errors import LockedError
from wizard_runner.fsio import RunLock
from wizard_runner.presence import PresenceLock, daemon_present, stopped_daemon

READ_LOCK = struct.pack("@hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
WRITE_LOCK = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory www-data can traverse."""
    with traversable_dir() as found:
        yield found


def test_absent_then_present_then_absent(base: Path) -> None:
    """No file, no daemon; held, a daemon; released (as a crash would), none again."""
    path = base / "serving.lock"
    assert not daemon_present(path)
    with PresenceLock(path):
        assert daemon_present(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.exists()
    assert not daemon_present(path)


def test_asking_takes_no_lock(base: Path) -> None:
    """After any number of questions, the file can still be write-locked at once."""
    path = base / "serving.lock"
    with PresenceLock(path):
        pass
    for _ in range(5):
        assert not daemon_present(path)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, WRITE_LOCK)  # raises if anything held a lock
    finally:
        os.close(fd)


def test_a_read_lock_is_not_a_daemon(base: Path) -> None:
    """A client's read lock on the file never makes a daemon look present."""
    path = base / "serving.lock"
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, READ_LOCK)
        assert not daemon_present(path)
    finally:
        os.close(fd)


def test_unreadable_counts_as_present(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be opened is not taken as proof that no daemon serves."""
    path = base / "serving.lock"
    path.write_text("")

    def refuse(*_args: object, **_kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with monkeypatch.context() as patched:  # os.open itself: undone before the clean-up
        patched.setattr("wizard_runner.presence.os.open", refuse)
        assert daemon_present(path)


@needs_root
def test_www_data_sees_the_daemon(base: Path) -> None:
    """As www-data (confd), the test answers true while the daemon holds it, false after."""
    path = base / "serving.lock"
    with PresenceLock(path):
        assert as_www_data(lambda: daemon_present(path)) == {"value": True}
    assert as_www_data(lambda: daemon_present(path)) == {"value": False}


@needs_root
def test_www_data_cannot_keep_the_daemon_out(base: Path) -> None:
    """A www-data process read-locking the presence file, and trying the daemon's own lock,
    blocks neither: the daemon starts, and is seen."""
    path = base / "serving.lock"
    with PresenceLock(path):
        pass
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    uid, gid = www_data()
    pid = os.fork()
    if pid == 0:  # the squatter: holds a read lock on the current file until told to stop
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fd = os.open(path, os.O_RDONLY)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, READ_LOCK)
            os.write(ready_write, b"locked")
            os.read(go_read, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_read, 16) == b"locked"
        old = os.open(path, os.O_RDWR)
        try:  # the squat is real: the old file cannot be write-locked
            with pytest.raises(BlockingIOError):
                fcntl.fcntl(old, fcntl.F_OFD_SETLK, WRITE_LOCK)
        finally:
            os.close(old)
        daemon_lock = base / "daemon.lock"
        with RunLock(daemon_lock, "wizard-runner serve", mode=0o600), PresenceLock(path):
            assert daemon_present(path)
            assert as_www_data(lambda: daemon_present(path)) == {"value": True}
            opened = as_www_data(lambda: os.open(daemon_lock, os.O_RDONLY))
            assert opened["error"].startswith("PermissionError")
            with pytest.raises(LockedError, match="another wizard-runner serve"):
                RunLock(daemon_lock, "wizard-runner serve", mode=0o600).acquire()
    finally:
        os.write(go_write, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_read, ready_write, go_read, go_write):
            os.close(fd)


def test_an_old_lock_file_is_made_private(base: Path) -> None:
    """A daemon lock file left 0644 by an older version is made 0600 when taken."""
    path = base / "daemon.lock"
    path.write_text("")
    path.chmod(0o644)
    with RunLock(path, "wizard-runner serve", mode=0o600):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.processes
def test_a_stopped_daemon_does_not_serve(base: Path) -> None:
    """A daemon stopped (SIGSTOP, a debugger) still holds its lock but serves nothing: it is
    not present until continued, so that a waiting client gives up instead of waiting on."""
    path = base / "serving.lock"
    with presence_holder(path) as holder:
        assert daemon_present(path)
        assert stopped_daemon(path) is None
        holder.send_signal(signal.SIGSTOP)
        wait_until(lambda: not daemon_present(path), what="the stop to take")
        assert stopped_daemon(path) == holder.pid  # a waiting client names it
        holder.send_signal(signal.SIGCONT)
        wait_until(lambda: daemon_present(path), what="the daemon to be continued")
        assert stopped_daemon(path) is None
