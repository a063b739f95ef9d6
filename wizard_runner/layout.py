"""Every path wizard-runner touches, joined to the run's root in exactly one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wizard_runner.errors import UsageError

WIZARD_D = PurePosixPath("/etc/xivo/wizard.d")
STATE_DIR = PurePosixPath("/var/lib/wizard-runner")
BACKUP_DIR = PurePosixPath("/var/backups/wizard-runner")
LOG_DIR = PurePosixPath("/var/log/wizard-runner")
RUN_DIR = PurePosixPath("/run/wizard-runner")


@dataclass(frozen=True)
class Layout:
    """The runner's view of the file system: system paths placed under `root` (default `/`)."""

    root: Path

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> Layout:
        """Build a layout for `root`, which must be an existing directory."""
        path = Path(os.path.abspath(root))
        if not path.is_dir():
            raise UsageError(f"--root {root}: not an existing directory")
        return cls(path)

    @property
    def is_real_root(self) -> bool:
        """True when the runner works on the live system rather than a sandbox tree."""
        return self.root == Path("/")

    def host(self, system_path: str | PurePosixPath) -> Path:
        """Return where the absolute `system_path` lives under the root, refusing any escape."""
        system = PurePosixPath(system_path)
        if not system.is_absolute() or ".." in system.parts:
            raise ValueError(f"{system_path}: not a clean absolute path")
        return self.root.joinpath(*system.parts[1:])

    @property
    def wizard_d(self) -> Path:
        """The directory of wizard scripts."""
        return self.host(WIZARD_D)

    @property
    def state_dir(self) -> Path:
        """Where the last result (and, later, the saved config) are kept."""
        return self.host(STATE_DIR)

    @property
    def last_run(self) -> Path:
        """The result of the most recent run."""
        return self.state_dir / "last-run.json"

    @property
    def saved_config(self) -> Path:
        """The last body run, without its password (0600), for reruns without --config."""
        return self.state_dir / "config.json"

    @property
    def backup_dir(self) -> Path:
        """Parent of the per-run backup directories."""
        return self.host(BACKUP_DIR)

    @property
    def log_dir(self) -> Path:
        """Directory of the JSON-lines log."""
        return self.host(LOG_DIR)

    @property
    def log_file(self) -> Path:
        """The JSON-lines log every run appends to."""
        return self.log_dir / "wizard-runner.log"

    @property
    def run_dir(self) -> Path:
        """Runtime directory holding the lock."""
        return self.host(RUN_DIR)

    @property
    def lock_file(self) -> Path:
        """The file a run holds an exclusive flock on."""
        return self.run_dir / "lock"
