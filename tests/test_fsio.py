"""Atomic replace, stale temp clean-up and the run lock."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.helpers import set_uid

from wizard_runner.errors import LockedError, PrivilegeError
from wizard_runner.fsio import (
    LOCK_SETTLE,
    TMP_SUFFIX,
    Ownership,
    RunLock,
    WriteMethod,
    atomic_replace,
    ensure_dir,
    new_file_owner,
    prepare_dir,
    remove_stale_temps,
)


def test_replace_keeps_mode_and_owner(fs: FakeFilesystem) -> None:
    """The new content lands with the mode and owner asked for, and no temp file remains."""
    fs.create_file("/etc/hosts", contents="old\n", st_mode=stat.S_IFREG | 0o600)
    owner = Ownership(0o640, os.geteuid(), os.getegid())
    assert atomic_replace(Path("/etc/hosts"), b"new\n", owner) is WriteMethod.RENAMED
    assert Path("/etc/hosts").read_bytes() == b"new\n"
    assert stat.S_IMODE(os.stat("/etc/hosts").st_mode) == 0o640
    assert os.listdir("/etc") == ["hosts"]


def test_replace_creates_missing_file(tmp_path: Path) -> None:
    """A missing target is created with the mode given, on a real file system."""
    target = tmp_path / "mailname"
    atomic_replace(target, b"pbx.acme.example\n", new_file_owner())
    assert target.read_bytes() == b"pbx.acme.example\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_replace_changes_owner_when_root(tmp_path: Path) -> None:
    """As root, the replaced file keeps a foreign owner (www-data's uid here)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    target = tmp_path / "canonical"
    target.write_text("old\n")
    os.chown(target, 33, 33)
    atomic_replace(target, b"new\n", Ownership(0o644, 33, 33))
    info = target.stat()
    assert (info.st_uid, info.st_gid) == (33, 33)


def test_full_disk_leaves_original_and_no_temp(fs: FakeFilesystem) -> None:
    """When the disk is full the original is intact and the temp file is gone."""
    fs.create_file("/etc/hosts", contents="old\n")
    fs.set_disk_usage(200)
    with pytest.raises(OSError) as caught:
        atomic_replace(Path("/etc/hosts"), b"x" * 500, new_file_owner())
    assert caught.value.errno == errno.ENOSPC
    assert Path("/etc/hosts").read_text() == "old\n"
    assert os.listdir("/etc") == ["hosts"]


def test_rename_ebusy_falls_back_to_in_place(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bind-mounted target (rename gives EBUSY) is overwritten in place, shorter or longer."""
    fs.create_file("/etc/resolv.conf", contents="nameserver 10.0.0.1\nsearch a.very.long.example\n")

    def busy(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", dst)

    monkeypatch.setattr("wizard_runner.fsio.os.rename", busy)
    method = atomic_replace(Path("/etc/resolv.conf"), b"nameserver 9.9.9.9\n", new_file_owner())
    assert method is WriteMethod.IN_PLACE
    assert Path("/etc/resolv.conf").read_bytes() == b"nameserver 9.9.9.9\n"
    assert os.listdir("/etc") == ["resolv.conf"]


def test_an_in_place_write_a_full_disk_refuses_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bind-mounted file (rename gives EBUSY) on a full disk: a longer content cannot get
    the blocks it needs past the present end, so nothing of the old content is overwritten,
    and the error says why. (Writes within the old size take no new blocks, as on a real
    full disk; past it, the first byte that needs one fails.)"""
    target = tmp_path / "hosts"
    old = b"".join(b"10.1.0.%d\tadmin-host-%03d.acme.example\n" % (n, n) for n in range(100))
    target.write_bytes(old)
    real_write, size = os.write, len(old)

    def full_disk(fd: int, data: Any) -> int:
        if os.fstat(fd).st_ino != target.stat().st_ino:
            return real_write(fd, data)
        position = os.lseek(fd, 0, os.SEEK_CUR)
        if position >= size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:size - position]))

    def busy(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", dst)

    monkeypatch.setattr("wizard_runner.fsio.os.rename", busy)
    monkeypatch.setattr("wizard_runner.fsio.os.write", full_disk)
    with pytest.raises(OSError) as caught:
        atomic_replace(target, b"192.168.50.10\tpbx.acme.example pbx\n" + old,
                       Ownership(0o644, os.geteuid(), os.getegid()))
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["hosts"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to give a file away)")
def test_a_replaced_file_keeps_its_setgid_bit(tmp_path: Path) -> None:
    """Mode 2775 with another group stays 2775: the owner is set before the mode (a chown
    clears setuid and setgid)."""
    target = tmp_path / "mailname"
    target.write_text("old\n")
    atomic_replace(target, b"new\n", Ownership(0o2775, 0, 8))
    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o2775, 8)


def test_other_rename_errors_propagate(fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """EROFS on rename is an error, the original stays, the temp is removed."""
    fs.create_file("/etc/hostname", contents="old\n")

    def read_only(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system", dst)

    monkeypatch.setattr("wizard_runner.fsio.os.rename", read_only)
    with pytest.raises(OSError, match="Read-only"):
        atomic_replace(Path("/etc/hostname"), b"new\n", new_file_owner())
    assert Path("/etc/hostname").read_text() == "old\n"
    assert os.listdir("/etc") == ["hostname"]


def test_remove_stale_temps(fs: FakeFilesystem) -> None:
    """Only the runner's own hidden temp files are removed."""
    fs.create_file(f"/etc/.hosts.abcd1234{TMP_SUFFIX}")
    fs.create_file("/etc/.hosts.swp")
    fs.create_file("/etc/hosts")
    fd = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = remove_stale_temps(fd)
    finally:
        os.close(fd)
    assert removed == [f".hosts.abcd1234{TMP_SUFFIX}"]
    assert sorted(os.listdir("/etc")) == [".hosts.swp", "hosts"]


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    """A second lock on the same file fails at once, naming the holder's pid."""
    path = tmp_path / "run" / "wizard-runner" / "lock"
    with RunLock(path):
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockedError, match=rf"pid {os.getpid()}\) holds {path}"):
            RunLock(path).acquire()
    with RunLock(path):
        pass  # released: it can be taken again


@pytest.mark.parametrize(("writes", "said"), [(True, "pid 4242"), (False, "unknown pid")])
def test_a_holder_that_has_not_written_its_pid_yet_is_looked_at_again(
        tmp_path: Path, writes: bool, said: str) -> None:
    """The holder has just taken the lock and not yet written its pid (20 runs at once hit
    that moment): the refusal looks again for a moment and names it; one that never writes
    it is `unknown pid`."""
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    writer = threading.Timer(LOCK_SETTLE / 10, os.pwrite, (fd, b"4242\n", 0))
    if writes:
        writer.start()
    try:
        with pytest.raises(LockedError, match=rf"\({said}\) holds"):
            RunLock(path).acquire()
    finally:
        writer.cancel()
        if writes:
            writer.join()
        os.close(fd)


@pytest.mark.processes
def test_a_stopped_holder_is_named_so(tmp_path: Path) -> None:
    """The lock's holder is stopped (Ctrl-Z, SIGSTOP): the refusal says so and how to let it
    go on, for it will not end by itself."""
    path = tmp_path / "run" / "wizard-runner" / "lock"
    program = ("import os, signal, sys; from pathlib import Path; "
               "from wizard_runner.fsio import RunLock; "
               f"RunLock(Path({str(path)!r})).acquire(); os.kill(os.getpid(), signal.SIGSTOP)")
    holder = subprocess.Popen([sys.executable, "-c", program])
    try:
        status = os.waitpid(holder.pid, os.WUNTRACED)[1]
        assert os.WIFSTOPPED(status)
        with pytest.raises(LockedError) as refused:
            RunLock(path).acquire()
        assert f"(pid {holder.pid}, stopped: `kill -CONT {holder.pid}` lets it go on)" in \
            str(refused.value)
    finally:
        holder.kill()
        holder.wait()


def test_lock_directory_not_creatable(fs: FakeFilesystem) -> None:
    """A lock directory the user cannot create is a privilege error, not a crash."""
    fs.create_dir("/ro", perm_bits=0o555)
    set_uid(1000)
    try:
        with pytest.raises(PrivilegeError, match="cannot create directory"):
            RunLock(Path("/ro/run/wizard-runner/lock")).acquire()
    finally:
        set_uid(0 if os.geteuid() == 0 else os.geteuid())


@pytest.mark.parametrize(("target", "said"), [
    ("../nothing", "a symlink to ../nothing, which does not exist"),
    ("../file", "a symlink to ../file, a regular file"),
    ("backups", "a symlink to backups, a loop of symlinks"),
])
@pytest.mark.parametrize("make", [ensure_dir, prepare_dir])
def test_a_symlink_where_a_directory_goes_says_where_it_leads(
        tmp_path: Path, target: str, said: str, make: Callable[[Path, int], None]) -> None:
    """A symlink to nothing, or to a file, where a directory goes: the error names the link,
    its target and what that is (not mkdir's bare `File exists`)."""
    (tmp_path / "file").touch()
    (tmp_path / "var").mkdir()
    (tmp_path / "var/backups").symlink_to(target)
    with pytest.raises(OSError) as caught:
        make(tmp_path / "var/backups", 0o700)
    assert caught.value.errno == errno.ENOTDIR
    assert caught.value.strerror == f"{tmp_path / 'var/backups'} is not a directory ({said})"


@pytest.mark.parametrize("taken", ["var/lib/wizard-runner", "var/lib"])
def test_a_file_where_a_directory_goes_is_named(tmp_path: Path, taken: str) -> None:
    """ensure_dir says which path is not a directory, and what it is, when a file holds the
    name or a parent's."""
    (tmp_path / taken).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / taken).touch()
    with pytest.raises(OSError) as caught:
        ensure_dir(tmp_path / "var/lib/wizard-runner", 0o755)
    assert caught.value.errno == errno.ENOTDIR
    assert caught.value.strerror == f"{tmp_path / taken} is not a directory (a regular file)"
