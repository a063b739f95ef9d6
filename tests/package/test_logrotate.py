"""The installed logrotate policy: the main log rotates, old per-run directories go."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.package.conftest import PACKAGE_TEST, needs_root, run

pytestmark = [*PACKAGE_TEST, needs_root, pytest.mark.skipif(
    shutil.which("logrotate", path="/usr/sbin:/usr/bin") is None,
    reason="needs logrotate (apt-get install logrotate; the package recommends it)")]
POLICY = Path("/etc/logrotate.d/wizard-runner")
LOG_DIR = "/var/log/wizard-runner"


def test_policy_parses() -> None:
    """logrotate reads the installed policy without an error."""
    done = run(["logrotate", "--debug", POLICY], check=False)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower()


def test_rotation_keeps_recent_runs_and_drops_old_ones(tmp_path: Path) -> None:
    """A forced rotation (the installed policy, pointed at a copy of the log directory)
    renames the log, lets the next run create it, and removes per-run directories older than
    a year, and nothing else."""
    logs = tmp_path / "log"
    logs.mkdir(mode=0o750)
    (logs / "wizard-runner.log").write_text('{"event": "run_started"}\n')
    year_and_more = time.time() - 400 * 86400
    old_run = logs / "20251001T101010Z-0a1b2c3d"
    recent_run = logs / "20261101T101010Z-4e5f6a7b"
    not_a_run = logs / "kept-by-an-admin"
    for directory in (old_run, recent_run, not_a_run):
        directory.mkdir()
        (directory / "10-check-identity.log").write_text("ok\n")
    for directory in (old_run, not_a_run):
        os.utime(directory, (year_and_more, year_and_more))
    policy = tmp_path / "policy"
    policy.write_text(POLICY.read_text().replace(LOG_DIR, str(logs)))
    run(["logrotate", "--force", "--state", tmp_path / "state", policy])
    assert sorted(p.name for p in logs.iterdir()) == [
        "20261101T101010Z-4e5f6a7b", "kept-by-an-admin", "wizard-runner.log.1",
    ]
    assert (logs / "wizard-runner.log.1").read_text() == '{"event": "run_started"}\n'
