"""Upgrades and reinstalls keep what the runner and the admin made, and wait for a run."""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package.conftest import (
    CHANGES_THE_PACKAGE,
    DPKG_ENV,
    WIZARD_D,
    dpkg,
    mode_owner,
    package_version,
    run,
)

pytestmark = CHANGES_THE_PACKAGE
#: What the new version changes in a conffile an admin also edited: dpkg must ask.
NEW_LINE = "# a line the next version adds\n"
ADMIN_LINE = "# an admin's line\n"


def bump(deb: Path, work: Path) -> Path:
    """The same package as the next version: its version raised and one conffile
    (50-summary.sh) changed, as a real next release would."""
    tree = work / "tree"
    run(["dpkg-deb", "--raw-extract", deb, tree])
    control = tree / "DEBIAN/control"
    version = package_version()
    control.write_text(control.read_text().replace(f"Version: {version}\n",
                                                   f"Version: {version}+next1\n"))
    script = tree / "etc/xivo/wizard.d/50-summary.sh"
    script.write_text(script.read_text() + NEW_LINE)
    md5sums = tree / "DEBIAN/md5sums"
    digest = hashlib.md5(script.read_bytes()).hexdigest()  # noqa: S324 - dpkg's format
    md5sums.write_text("".join(
        f"{digest}  etc/xivo/wizard.d/50-summary.sh\n"
        if line.endswith("  etc/xivo/wizard.d/50-summary.sh\n") else line
        for line in md5sums.read_text().splitlines(keepends=True)))
    bumped = work / f"wizard-runner_{version}+next1.deb"
    run(["dpkg-deb", "-Zgzip", "-z1", "--root-owner-group", "--build", tree, bumped])
    return bumped


def kept_state() -> dict[Path, tuple[bytes, tuple[int, str, str]]]:
    """Leave what runs and confd make: a saved body, a result, an answer, a log line."""
    made = {
        Path("/var/lib/wizard-runner/config.json"): (b'{"config": {}}\n', 0o600),
        Path("/var/lib/wizard-runner/last-run.json"): (b'{"run_id": "x"}\n', 0o644),
        Path("/var/spool/wizard-runner/done/20261205T010101Z-0123456789ab.json"):
            (b'{"status": "succeeded"}\n', 0o640),
        Path("/var/log/wizard-runner/wizard-runner.log"): (b'{"event": "run_started"}\n', 0o640),
    }
    for path, (data, mode) in made.items():
        path.write_bytes(data)
        path.chmod(mode)
    answer = next(p for p in made if "done" in p.parts)
    os.chown(answer, 0, grp.getgrnam("www-data").gr_gid)  # confd reads answers
    return {path: (path.read_bytes(), mode_owner(path)) for path in made}


def edit(name: str) -> bytes:
    """An admin's edit of a shipped script."""
    script = WIZARD_D / name
    script.write_text(script.read_text() + ADMIN_LINE)
    return script.read_bytes()


@pytest.mark.parametrize("next_version", [pytest.param(False, id="same-version"),
                                          pytest.param(True, id="next-version")])
def test_upgrade_keeps_state_spool_and_edited_conffiles(deb: Path, tmp_path: Path,
                                                        next_version: bool) -> None:
    """Installing over the installed package (the same .deb, or the next version) keeps the
    state, the spool, the logs and an admin's edits of the scripts; a script both changed
    keeps the admin's version, the new one beside it as .dpkg-dist, which the runner skips."""
    before = kept_state()
    mine = {name: edit(name) for name in ("10-check-identity", "50-summary.sh")}
    new = bump(deb, tmp_path) if next_version else deb
    # --force-confold answers dpkg's conffile question as an admin keeping their edit would.
    done = dpkg("--force-confold", "--install", new)
    after = {path: (path.read_bytes(), mode_owner(path)) for path in before}
    assert after == before
    assert {name: (WIZARD_D / name).read_bytes() for name in mine} == mine
    dist = WIZARD_D / "50-summary.sh.dpkg-dist"
    assert dist.exists() is next_version, done.stdout
    if next_version:
        assert dist.read_text().endswith(NEW_LINE)
        assert package_version().endswith("+next1")
        listing = json.loads(run(["/usr/bin/wizard-runner", "list", "--json"]).stdout)
        skipped = {e["name"]: e["action"] for e in listing["entries"]}
        assert skipped["50-summary.sh.dpkg-dist"] == "skip"
    assert mode_owner(Path("/var/spool/wizard-runner/incoming")) == (0o1730, "root", "www-data")


@pytest.fixture
def run_in_progress() -> Iterator[int]:
    """Hold the lock a run holds (/run/wizard-runner/lock), as a run in progress does."""
    lock = Path("/run/wizard-runner/lock")
    lock.parent.mkdir(mode=0o755, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield fd
    finally:
        os.close(fd)


def test_upgrade_waits_for_the_run_in_progress(deb: Path, run_in_progress: int) -> None:
    """An upgrade stops the daemon only between runs: while a run holds the lock it waits,
    says so, and goes on as soon as the run ends. The spool's `restarting` mark, which tells a
    waiting submitter that the daemon is coming back, is made only after that wait (a waiter
    trusts it for 300 s), and is gone once the upgrade is done."""
    restarting = Path("/var/spool/wizard-runner/restarting")
    with subprocess.Popen(["dpkg", "--install", str(deb)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=DPKG_ENV, cwd="/") as upgrade:
        assert upgrade.stdout is not None
        said = []
        for line in upgrade.stdout:
            said.append(line)
            if "waiting for the run in progress to finish" in line:
                break
        try:
            assert upgrade.poll() is None, "".join(said)  # blocked in preinst, on the lock
            # Made after the wait (it is trusted for 300 s, the wait may take 900 s).
            assert not restarting.exists()
            fcntl.flock(run_in_progress, fcntl.LOCK_UN)  # the run ends
            said.append(upgrade.stdout.read())
            assert upgrade.wait(timeout=300) == 0, "".join(said)
            assert not restarting.exists()
        finally:
            if upgrade.poll() is None:
                upgrade.kill()
