"""Every path wizard-runner touches, joined to the run's root in exactly one place."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from wizard_runner.errors import RunnerIOError, UsageError

WIZARD_D = PurePosixPath("/etc/xivo/wizard.d")
STATE_DIR = PurePosixPath("/var/lib/wizard-runner")
BACKUP_DIR = PurePosixPath("/var/backups/wizard-runner")
LOG_DIR = PurePosixPath("/var/log/wizard-runner")
RUN_DIR = PurePosixPath("/run/wizard-runner")
SPOOL_DIR = PurePosixPath("/var/spool/wizard-runner")
REAL_ROOT = Path("/")
#: The modes the runner's own directories are made with (runs, setup-dirs alike).
STATE_DIR_MODE = 0o755
LOG_DIR_MODE = 0o750
BACKUP_DIR_MODE = 0o700
#: The system files the system step manages, in the order it plans, writes and reports them.
SYSTEM_FILES = (
    "/etc/hostname", "/etc/hosts", "/etc/mailname", "/etc/resolv.conf", "/etc/postfix/main.cf",
    "/etc/postfix/canonical", "/etc/network/interfaces",
)


class OutsideRootError(RunnerIOError):
    """One of the runner's own paths resolves outside a sandbox root (a symlink leads out)."""


def _is_real_root(path: Path) -> bool:
    """Whether `path` is the live system's `/`, however spelt or reached (a bind mount too)."""
    try:
        here, real = os.stat(path), os.stat(REAL_ROOT)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (real.st_dev, real.st_ino)


def is_inside(path: str, root: str) -> bool:
    """Whether the resolved `path` is `root` itself or below it (both already resolved)."""
    return root in {"/", path} or path.startswith(root + "/")


class Layout(NamedTuple):
    """The runner's view of the file system: system paths placed under `root` (default `/`)."""

    root: Path

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> Layout:
        """Build a layout for `root`, which must be an existing directory.

        The root is resolved once, here: `//`, `/./`, a trailing slash or a symlink to `/` all
        name the live system and get its rules; a symlink to a sandbox becomes its real path.
        """
        if not isinstance(root, str | os.PathLike) or not isinstance(os.fspath(root), str):
            raise UsageError(f"--root: {root!r} is not a path")
        if not os.fspath(root):  # it would be the current directory: an unset variable?
            raise UsageError("--root: the path is empty; name the root (/ for the live system)")
        path = Path(os.path.realpath(root))
        if not path.is_dir():
            raise UsageError(f"--root {os.fspath(root)}: not an existing directory")
        return cls(REAL_ROOT if _is_real_root(path) else path)

    @property
    def is_real_root(self) -> bool:
        """True when the runner works on the live system rather than a sandbox tree."""
        return self.root == REAL_ROOT

    def host(self, system_path: str | PurePosixPath) -> Path:
        """Return where the absolute `system_path` lives under the root, refusing any escape.

        This only joins names: a symlink under the root is not looked at. System files are
        reached through `fence.Fence`, the runner's own files through `own`.
        """
        system = PurePosixPath(system_path)
        if not system.is_absolute() or ".." in system.parts:
            raise ValueError(f"{system_path}: not a clean absolute path")
        return self.root.joinpath(*system.parts[1:])

    def own(self, system_path: str | PurePosixPath) -> Path:
        """Where one of the runner's own paths lives; under a sandbox root it must resolve inside.

        A symlink on the way that leads out of a sandbox root raises OutsideRootError (exit 74)
        naming the path. On the real root every path is inside by definition, so a symlinked
        /var/log stays allowed there.
        """
        path = self.host(system_path)
        if self.is_real_root:
            return path
        root = os.path.realpath(self.root)
        resolved = os.path.realpath(path)
        if not is_inside(resolved, root):
            raise OutsideRootError(
                f"{system_path}: resolves to {resolved}, outside the root {root} (a symlink on "
                "the way leads out of it); refusing to use it"
            )
        return path

    @property
    def wizard_d(self) -> Path:
        """The directory of wizard scripts."""
        return self.own(WIZARD_D)

    @property
    def state_dir(self) -> Path:
        """Where the last result (and, later, the saved config) are kept."""
        return self.own(STATE_DIR)

    @property
    def last_run(self) -> Path:
        """The result of the most recent run."""
        return self.own(STATE_DIR / "last-run.json")

    @property
    def saved_config(self) -> Path:
        """The last body run, without its password (0600), for reruns without --config."""
        return self.own(STATE_DIR / "config.json")

    @property
    def backup_dir(self) -> Path:
        """Parent of the per-run backup directories."""
        return self.own(BACKUP_DIR)

    @property
    def log_dir(self) -> Path:
        """Directory of the JSON-lines log."""
        return self.own(LOG_DIR)

    @property
    def log_file(self) -> Path:
        """The JSON-lines log every run appends to."""
        return self.own(LOG_DIR / "wizard-runner.log")

    @property
    def run_dir(self) -> Path:
        """Runtime directory holding the lock."""
        return self.own(RUN_DIR)

    @property
    def lock_file(self) -> Path:
        """The file a run holds an exclusive flock on."""
        return self.own(RUN_DIR / "lock")

    @property
    def spool_dir(self) -> Path:
        """The spool through which confd hands requests to the daemon."""
        return self.own(SPOOL_DIR)
