"""The runner's own directories, made before the first run with the owners and modes it uses.

    /var/spool/wizard-runner/    the spool, as spool.prepare() makes it (incoming/ 1730
                                 root:<run group>, processing/ 0700, done/ 0750 root:<run group>)
    /var/lib/wizard-runner/      0755 root  the saved body (0600) and the last result (0644)
    /var/log/wizard-runner/      0750 root  the JSON-lines log and each run's script output
    /var/backups/wizard-runner/  0700 root  copies of the system files runs replaced

A run or the daemon creates each of them when it first needs it. `wizard-runner setup-dirs`
(which the Debian package's postinst runs) makes them all at once, so that confd can drop a
request before the daemon's first start and an admin finds them where the README says, and
puts back owners and modes that drifted. /run/wizard-runner is left to the run that takes the
lock: it lives on a tmpfs that every boot empties.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wizard_runner.errors import PrivilegeError, RunnerIOError
from wizard_runner.layout import Layout
from wizard_runner.spool import Spool, prepare

#: The modes the runner creates these with (state.py, log.py, sysconf.py); a test keeps the
#: two in step.
STATE_DIR_MODE: Final = 0o755
LOG_DIR_MODE: Final = 0o750
BACKUP_DIR_MODE: Final = 0o700

_ROOT_OWNED: Final[tuple[tuple[Callable[[Layout], Path], int], ...]] = (
    (lambda layout: layout.state_dir, STATE_DIR_MODE),
    (lambda layout: layout.log_dir, LOG_DIR_MODE),
    (lambda layout: layout.backup_dir, BACKUP_DIR_MODE),
)


@dataclass(frozen=True)
class PreparedDir:
    """A directory as it is once prepared: its path, mode bits and owner."""

    path: Path
    mode: int
    uid: int
    gid: int

    def describe(self) -> str:
        """`/var/spool/wizard-runner/incoming  1730 root:www-data`."""
        return f"{self.path!s:<40} {self.mode:04o} {_user(self.uid)}:{_group(self.gid)}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _root_owned_dir(path: Path, mode: int) -> None:
    """Create `path` if missing, then give it `mode` (and root's ownership, as root)."""
    # Made 0700 first: never wider than meant, even for the moment before the chmod.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    path.chmod(mode)


def _stat(path: Path) -> PreparedDir:
    info = path.stat()
    return PreparedDir(path, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


def prepare_dirs(layout: Layout, group: int) -> list[PreparedDir]:
    """Make the spool (its shared parts owned by `group`, the run user's) and the state, log
    and backup directories, with their modes; idempotent. Returns them as they now are."""
    spool = Spool.of(layout)
    try:
        prepare(spool, group)
        for where, mode in _ROOT_OWNED:
            _root_owned_dir(where(layout), mode)
        paths = [spool.base, spool.incoming, spool.processing, spool.done]
        return [_stat(path) for path in paths + [where(layout) for where, _ in _ROOT_OWNED]]
    except PermissionError as error:
        raise PrivilegeError(f"{error.filename}: cannot prepare the runner's directories: "
                             f"{error.strerror} (run as root, or use --root DIR)") from error
    except OSError as error:
        raise RunnerIOError(f"{error.filename or spool.base}: cannot prepare the runner's "
                            f"directories: {error.strerror}") from error
