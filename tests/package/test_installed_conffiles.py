"""The shipped wizard.d scripts and logrotate policy: conffiles, as the runner sees them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.package.conftest import BINARY, PACKAGE_TEST, WIZARD_D, mode_owner, run

pytestmark = PACKAGE_TEST
CONFFILES = {
    "/etc/logrotate.d/wizard-runner",
    "/etc/xivo/wizard.d/10-check-identity",
    "/etc/xivo/wizard.d/50-summary.sh",
    "/etc/xivo/wizard.d/README",
}


def conffiles() -> dict[str, str]:
    """dpkg's conffiles of the package: path -> md5 of the shipped content."""
    listing = run(["dpkg-query", "-W", "-f", "${Conffiles}", "wizard-runner"]).stdout
    found = {}
    for line in listing.splitlines():
        if line.strip():
            path, digest = line.split()[:2]
            found[path] = digest
    return found


def test_conffiles_are_the_shipped_scripts_and_logrotate() -> None:
    """dpkg treats the wizard.d scripts, their README and the logrotate file as conffiles,
    so that an admin's edit survives upgrades (dpkg asks when both changed)."""
    assert set(conffiles()) == CONFFILES


def test_conffiles_installed_as_shipped() -> None:
    """Each conffile on disk is the shipped one, root-owned, scripts executable."""
    for path, digest in conffiles().items():
        assert hashlib.md5(Path(path).read_bytes()).hexdigest() == digest, path  # noqa: S324
    assert mode_owner(WIZARD_D) == (0o755, "root", "root")
    assert mode_owner(WIZARD_D / "10-check-identity") == (0o755, "root", "root")
    assert mode_owner(WIZARD_D / "50-summary.sh") == (0o755, "root", "root")
    assert mode_owner(WIZARD_D / "README") == (0o644, "root", "root")


def test_the_runner_accepts_the_installed_wizard_d() -> None:
    """`wizard-runner list` finds the installed wizard.d safe: both scripts run, README is
    skipped."""
    done = run([BINARY, "list", "--json"])
    listing = json.loads(done.stdout)
    assert listing["unsafe"] == []
    assert [(e["name"], e["action"]) for e in listing["entries"]] == [
        ("10-check-identity", "run"), ("50-summary.sh", "run"), ("README", "skip"),
    ]
