"""The runner's directories as the package leaves them: owners, modes, what www-data may do."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.package.conftest import (
    CLEAN_ENV,
    PACKAGE_TEST,
    as_www_data,
    mode_owner,
    needs_root,
    run,
)

pytestmark = PACKAGE_TEST


@pytest.mark.parametrize(
    ("path", "mode", "owner", "group"),
    [
        pytest.param("/var/spool/wizard-runner", 0o755, "root", "root", id="spool"),
        pytest.param("/var/spool/wizard-runner/incoming", 0o1730, "root", "www-data",
                     id="incoming"),
        pytest.param("/var/spool/wizard-runner/processing", 0o700, "root", "root",
                     id="processing"),
        pytest.param("/var/spool/wizard-runner/done", 0o750, "root", "www-data", id="done"),
        pytest.param("/var/lib/wizard-runner", 0o755, "root", "root", id="state"),
        pytest.param("/var/log/wizard-runner", 0o750, "root", "root", id="log"),
        pytest.param("/var/backups/wizard-runner", 0o700, "root", "root", id="backups"),
    ],
)
def test_directory_owner_and_mode(path: str, mode: int, owner: str, group: str) -> None:
    """Install made each directory with the owner and mode the runner expects."""
    assert mode_owner(Path(path)) == (mode, owner, group)


@needs_root
@pytest.mark.parametrize(
    ("path", "test", "allowed"),
    [
        pytest.param("/var/spool/wizard-runner/incoming", "-w", True, id="drop-requests"),
        pytest.param("/var/spool/wizard-runner/incoming", "-r", False, id="list-requests"),
        pytest.param("/var/spool/wizard-runner/done", "-r", True, id="read-answers"),
        pytest.param("/var/spool/wizard-runner/done", "-w", False, id="forge-answers"),
        pytest.param("/var/spool/wizard-runner/processing", "-x", False, id="processing"),
        pytest.param("/var/lib/wizard-runner", "-w", False, id="write-state"),
        pytest.param("/var/lib/wizard-runner", "-r", True, id="read-state"),
        pytest.param("/var/backups/wizard-runner", "-x", False, id="backups"),
        pytest.param("/var/log/wizard-runner", "-x", False, id="logs"),
    ],
)
def test_what_www_data_may_do(path: str, test: str, allowed: bool) -> None:
    """confd (www-data) can drop requests and read answers and the last result, and nothing
    more: not others' requests, the state, the backups or the logs."""
    done = run(as_www_data(["test", test, path]), check=False)
    assert (done.returncode == 0) is allowed


@needs_root
def test_reconfiguring_puts_modes_back() -> None:
    """postinst (here through dpkg-reconfigure) gives a drifted directory its mode back and
    leaves what it holds alone."""
    state = Path("/var/lib/wizard-runner")
    kept = state / "package-test-marker"
    kept.write_text("kept\n")
    try:
        state.chmod(0o777)
        run(["dpkg-reconfigure", "--frontend=noninteractive", "wizard-runner"])
        assert mode_owner(state) == (0o755, "root", "root")
        assert kept.read_text() == "kept\n"
    finally:
        state.chmod(0o755)
        kept.unlink()


@needs_root
def test_postinst_runs_the_packaged_command_not_one_on_path(tmp_path: Path) -> None:
    """postinst configure makes the directories with /usr/bin/wizard-runner even when another
    wizard-runner comes first on PATH (one pip put in /usr/local/bin, say)."""
    called = tmp_path / "called"
    stub = tmp_path / "bin/wizard-runner"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {called}\nexit 1\n")
    stub.chmod(0o755)
    run(["/var/lib/dpkg/info/wizard-runner.postinst", "configure"],
        env={**CLEAN_ENV, "PATH": f"{stub.parent}:{CLEAN_ENV['PATH']}"})
    assert not called.exists()
