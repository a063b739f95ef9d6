"""Purging the package takes away its files and what the runner made, but the backups."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package.conftest import (
    CHANGES_THE_PACKAGE,
    WIZARD_D,
    dpkg,
    package_status,
    run,
)

pytestmark = CHANGES_THE_PACKAGE
BACKUP = Path("/var/backups/wizard-runner/20261205T010101Z-0a1b2c3d")
MADE_BY_RUNS = [
    Path("/var/lib/wizard-runner/last-run.json"),
    Path("/var/lib/wizard-runner/config.json"),
    Path("/var/log/wizard-runner/wizard-runner.log"),
    Path("/var/log/wizard-runner/20261205T010101Z-0a1b2c3d/10-check-identity.log"),
    Path("/var/spool/wizard-runner/done/20261205T010101Z-0123456789ab.json"),
    Path("/run/wizard-runner/lock"),
]
ADMIN_SCRIPT = WIZARD_D / "90-local"


@pytest.fixture
def backup() -> Iterator[Path]:
    """A run's backup of /etc/hosts, as the system step leaves it; removed afterwards (purge
    keeps it on purpose)."""
    (BACKUP / "etc").mkdir(parents=True, exist_ok=True)
    (BACKUP / "etc/hosts").write_text("127.0.0.1 localhost\n")
    yield BACKUP / "etc/hosts"
    shutil.rmtree(BACKUP, ignore_errors=True)


@pytest.fixture
def admin_script() -> Iterator[Path]:
    """A script of the admin's own in wizard.d, not the package's."""
    ADMIN_SCRIPT.write_text("#!/bin/sh\necho local\n")
    ADMIN_SCRIPT.chmod(0o755)
    yield ADMIN_SCRIPT
    ADMIN_SCRIPT.unlink(missing_ok=True)


def test_purge_leaves_nothing_of_the_package(admin_script: Path, backup: Path) -> None:
    """After a purge no file the package shipped remains, nor its virtualenv, state, spool,
    logs, lock or enablement; the backups of the system files and the admin's own script
    stay."""
    for path in MADE_BY_RUNS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    (WIZARD_D / "10-check-identity").write_text("#!/bin/sh\n# edited\n")  # a modified conffile
    shipped = run(["dpkg-query", "-L", "wizard-runner"]).stdout.splitlines()

    dpkg("--purge", "wizard-runner")

    assert package_status() == "not-installed"
    # Directories (/etc, /lib and the like, links to them included) are shared; files never.
    left = [path for path in shipped
            if (Path(path).is_symlink() or Path(path).exists()) and not Path(path).is_dir()]
    assert left == []
    for gone in ("/opt/venvs/wizard-runner", "/var/lib/wizard-runner", "/var/spool/wizard-runner",
                 "/var/log/wizard-runner", "/run/wizard-runner", "/usr/share/doc/wizard-runner",
                 "/etc/systemd/system/multi-user.target.wants/wizard-runnerd.service",
                 "/var/lib/systemd/deb-systemd-helper-enabled/wizard-runnerd.service.dsh-also"):
        assert not Path(gone).exists(), gone
    assert sorted(p.name for p in WIZARD_D.iterdir()) == ["90-local"]
    assert backup.read_text() == "127.0.0.1 localhost\n"
