"""The root is a fence: reach a system path under the run's root without following a link out.

Every read and write of a system file, of a file included by one, and of the backups goes
through a `Fence`. It holds the root open and walks to a directory one component at a time,
each opened relative to the previous one with O_NOFOLLOW, so a symlinked `etc/postfix` under a
sandbox root is refused rather than followed wherever it points. The file itself is then used
relative to its directory's descriptor (lstat, open with O_NOFOLLOW|O_NONBLOCK, rename,
unlink), so no path is resolved twice and nothing blocks on a FIFO.

On the real root (`/`) nothing can lead outside: directories on the way are followed as any
tool would, so a symlinked /var still works there. A managed file that is itself a symlink is
never read through, on any root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Final

from wizard_runner.errors import ApplyError, PrivilegeError
from wizard_runner.fsio import (
    MAX_TARGET_BYTES,
    At,
    NotRegularFileError,
    describe,
    read_regular,
)
from wizard_runner.layout import Layout, is_inside

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class FenceError(ApplyError):
    """A system path that cannot be used without leaving the root or blocking (exit 73)."""


class NotDirectoryError(FenceError):
    """Something on the way to a system path is not a directory (a file named /etc/postfix)."""


def _parts(system_path: str | PurePosixPath) -> tuple[str, ...]:
    path = PurePosixPath(system_path)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{system_path}: not a clean absolute path")
    return path.parts[1:]


def _link_of(dir_fd: int, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return "?"  # replaced again meanwhile: the refusal stands, only the target is unknown


def read_regular_at(dir_fd: int, name: str, shown: str, *, follow: bool = False
                    ) -> tuple[bytes, os.stat_result]:
    """Open `name` in `dir_fd` without blocking (nor following a link, unless `follow`) and read
    it whole; it must be a regular file of at most MAX_TARGET_BYTES. OSError passes through."""
    try:
        # Checked with lstat before, but it may have been swapped since: fstat is what counts.
        data, info = read_regular(name, dir_fd=dir_fd, follow=follow, limit=MAX_TARGET_BYTES)
    except NotRegularFileError as error:
        raise FenceError(f"{shown}: not a regular file ({describe(error.mode)})") from None
    if len(data) > MAX_TARGET_BYTES:
        raise FenceError(f"{shown}: over {MAX_TARGET_BYTES} bytes, not a config file")
    return data, info


def cannot(shown: str, what: str, error: OSError) -> ApplyError | PrivilegeError:
    """The error for an OSError on `shown`: a privilege error (exit 77) for EACCES, else 73."""
    message = f"{shown}: cannot {what}: {error.strerror}"
    if isinstance(error, PermissionError):
        return PrivilegeError(message)
    return ApplyError(message)


class Fence:
    """The run's root, held open; every system path is reached from it without leaving it."""

    def __init__(self, layout: Layout, root_fd: int) -> None:
        self.layout = layout
        self.root_fd = root_fd
        # The one decision: under a sandbox root no symlink is followed; on `/` nothing is outside.
        self.confined = not layout.is_real_root

    def host(self, system_path: str | PurePosixPath) -> Path:
        """Where `system_path` lives under the root, for messages."""
        return self.layout.host(system_path)

    def _symlink_refused(self, dir_fd: int, name: str, shown: str) -> FenceError:
        root = self.layout.root
        # Only to word the message: resolving by name reads links, it opens nothing.
        resolved = os.path.realpath(self.layout.host(shown))
        if is_inside(resolved, os.path.realpath(root)):
            where = f"refusing to follow it: under --root {root}"
        else:
            where = f"refusing to follow it out of the root {root}: under --root"
        return FenceError(f"{shown}: is a symlink (to {_link_of(dir_fd, name)}); {where}, the "
                          "runner reaches files only through real directories")

    def _open_step(self, dir_fd: int, name: str, shown: str, create_mode: int | None) -> int | None:
        """Open the directory `name` in `dir_fd`; None when it is missing and not to be made."""
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            if create_mode is None:
                return None
            # Made meanwhile by someone else: look at what it is, as for any entry.
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, create_mode, dir_fd=dir_fd)
            info = os.lstat(name, dir_fd=dir_fd)
        flags = _DIR_FLAGS
        if stat.S_ISLNK(info.st_mode):
            if self.confined:
                raise self._symlink_refused(dir_fd, name, shown)
            try:
                info = os.stat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return None  # a dangling link on the real root: as good as missing
        elif self.confined:
            flags |= os.O_NOFOLLOW
        if not stat.S_ISDIR(info.st_mode):
            raise NotDirectoryError(f"{shown}: not a directory ({describe(info.st_mode)})")
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as error:
            # Checked a moment ago as a real directory: it was swapped for a link or a file since.
            if error.errno in {errno.ELOOP, errno.ENOTDIR}:
                raise FenceError(f"{shown}: replaced by a symlink or a file while the run "
                                 "opened it; refusing to follow it") from error
            raise

    def open_dir(self, system_dir: str | PurePosixPath, *, create_mode: int | None = None
                 ) -> int | None:
        """Open `system_dir` under the root, component by component; the caller closes the fd.

        Returns None when a component is missing, unless `create_mode` asks to create it (with
        that mode). Raises FenceError for a symlink on the way under a sandbox root, or a
        component that is not a directory; OSError for the rest (EACCES, EIO).
        """
        fd = os.dup(self.root_fd)
        walked = PurePosixPath("/")
        try:
            for part in _parts(system_dir):
                walked /= part
                child = self._open_step(fd, part, str(walked), create_mode)
                os.close(fd)
                fd = -1
                if child is None:
                    return None
                fd = child
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return fd

    @contextmanager
    def directory(self, system_dir: str | PurePosixPath, *, create_mode: int | None = None
                  ) -> Iterator[int | None]:
        """`open_dir` as a context: the directory's fd (None when missing), closed afterwards."""
        fd = self.open_dir(system_dir, create_mode=create_mode)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    @contextmanager
    def at(self, system_path: str, *, create_mode: int | None = None) -> Iterator[At]:
        """The name `system_path` in its open directory; a missing directory is ENOENT."""
        path = PurePosixPath(system_path)
        with self.directory(path.parent, create_mode=create_mode) as dir_fd:
            if dir_fd is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path.parent))
            yield At(dir_fd, path.name, system_path)

    def read_entry(self, dir_fd: int, name: str, shown: str) -> bytes | None:
        """The bytes of a file the runner only reads (an include, master.cf), by name in `dir_fd`.

        None when it is missing or a directory. Under a sandbox root a symlink is refused; on the
        real root it is followed. A FIFO, socket or device is refused without being opened.
        """
        try:
            info = os.lstat(name, dir_fd=dir_fd)
            follow = stat.S_ISLNK(info.st_mode)
            if follow:
                if self.confined:
                    raise FenceError(f"{shown}: is a symlink (to {_link_of(dir_fd, name)}); "
                                     f"not followed under the root {self.layout.root}")
                info = os.stat(name, dir_fd=dir_fd)
            if stat.S_ISDIR(info.st_mode):
                return None
            # Never open a device or a FIFO, not even without blocking: opening one can act.
            if not stat.S_ISREG(info.st_mode):
                raise FenceError(f"{shown}: not a regular file ({describe(info.st_mode)})")
            return read_regular_at(dir_fd, name, shown, follow=follow)[0]
        except FileNotFoundError:
            return None
        except OSError as error:
            raise cannot(shown, "read", error) from error

    def read_file(self, system_path: str | PurePosixPath) -> bytes | None:
        """`read_entry` by system path: None when it or a directory on the way is missing (or
        is no directory: nothing can be found below a file)."""
        path = PurePosixPath(system_path)
        if path == PurePosixPath("/"):
            return None  # the root is a directory
        try:
            with self.directory(path.parent) as dir_fd:
                if dir_fd is None:
                    return None
                return self.read_entry(dir_fd, path.name, str(path))
        except NotDirectoryError:
            return None
        except OSError as error:
            raise cannot(str(path), "read", error) from error


@contextmanager
def open_fence(layout: Layout) -> Iterator[Fence]:
    """Open the layout's root once and fence every path reached from it until the block ends."""
    try:
        root_fd = os.open(layout.root, _DIR_FLAGS)
    except OSError as error:
        raise cannot(str(layout.root), "open the root", error) from error
    try:
        yield Fence(layout, root_fd)
    finally:
        os.close(root_fd)
