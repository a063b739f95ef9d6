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

import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wizard_runner.errors import PrivilegeError, RunnerIOError
from wizard_runner.fsio import prepare_dir
from wizard_runner.layout import BACKUP_DIR_MODE, LOG_DIR_MODE, STATE_DIR_MODE, Layout
from wizard_runner.runuser import group_name, user_name
from wizard_runner.spool import Spool, prepare

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
        return f"{self.path!s:<40} {self.mode:04o} {user_name(self.uid)}:{group_name(self.gid)}"


def _stat(path: Path) -> PreparedDir:
    info = path.stat()
    return PreparedDir(path, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


def prepare_dirs(layout: Layout, group: int) -> list[PreparedDir]:
    """Make the spool (its shared parts owned by `group`, the run user's) and the state, log
    and backup directories, with their modes; idempotent. Returns them as they now are."""
    spool = Spool.of(layout)
    try:
        prepare(spool, group)
        owned = [(where(layout), mode) for where, mode in _ROOT_OWNED]
        for path, mode in owned:
            prepare_dir(path, mode)
        paths = [spool.base, spool.incoming, spool.processing, spool.done]
        return [_stat(path) for path in paths + [path for path, _ in owned]]
    except PermissionError as error:
        raise PrivilegeError(f"{error.filename}: cannot prepare the runner's directories: "
                             f"{error.strerror} (run as root, or use --root DIR)") from error
    except OSError as error:
        raise RunnerIOError(f"{error.filename or spool.base}: cannot prepare the runner's "
                            f"directories: {error.strerror}") from error
