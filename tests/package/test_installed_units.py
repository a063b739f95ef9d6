"""The installed systemd units: valid, running the installed binary, enabled as intended."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from tests.package.conftest import BINARY, PACKAGE_TEST, UNITS, run

pytestmark = PACKAGE_TEST
SYSTEMD_IS_INIT = Path("/run/systemd/system").is_dir()
UNIT_COMMANDS = [
    pytest.param("wizard-runnerd.service", "serve", id="daemon"),
    pytest.param("wizard-runner.service", "run", id="one-shot"),
]


def exec_start(unit: str) -> list[str]:
    """The ExecStart command line of an installed unit, split as systemd does."""
    lines = [line for line in (UNITS / unit).read_text().splitlines()
             if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (apt-get install systemd)")
@pytest.mark.parametrize(("unit", "command"), UNIT_COMMANDS)
def test_unit_verifies(unit: str, command: str) -> None:
    """systemd-analyze verify accepts the installed unit without a word (the man page its
    Documentation= names is installed too)."""
    done = run(["systemd-analyze", "verify", UNITS / unit], check=False)
    assert (done.returncode, done.stderr.strip()) == (0, "")


@pytest.mark.parametrize(("unit", "command"), UNIT_COMMANDS)
def test_unit_runs_the_installed_command(unit: str, command: str) -> None:
    """ExecStart is /usr/bin/wizard-runner with a command it knows."""
    argv = exec_start(unit)
    assert argv == [str(BINARY), command]
    assert run([*argv, "--help"]).returncode == 0


def test_daemon_is_enabled_and_one_shot_is_not() -> None:
    """Install enabled wizard-runnerd at boot; the one-shot only runs when started."""
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "wizard-runnerd.service").resolve() == (UNITS / "wizard-runnerd.service").resolve()
    assert not (wants / "wizard-runner.service").exists()
    states = run(["systemctl", "is-enabled", "wizard-runnerd.service", "wizard-runner.service"],
                 check=False).stdout.split()
    assert states == ["enabled", "disabled"]


@pytest.mark.skipif(not SYSTEMD_IS_INIT, reason="needs systemd as PID 1 (the units can only "
                    "be started there; the daemon suite starts `serve` directly)")
def test_daemon_runs_under_systemd() -> None:
    """Where systemd runs, install started the daemon and it told systemd it was ready."""
    assert run(["systemctl", "is-active", "wizard-runnerd.service"]).stdout.strip() == "active"
    assert run(["systemctl", "is-active", "wizard-runner.service"],
               check=False).stdout.strip() == "inactive"
