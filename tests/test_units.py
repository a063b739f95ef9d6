"""The systemd units: accepted by systemd-analyze, with the settings operations rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.processes
UNITS = REPO / "systemd"
SCRIPT = Path(sys.executable).parent / "wizard-runner"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="needs systemd-analyze (apt-get install systemd)")


def directives(name: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit, values in order."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@needs_analyze
@pytest.mark.parametrize("name", ["wizard-runner.service", "wizard-runnerd.service"])
def test_units_verify_cleanly(tmp_path: Path, name: str) -> None:
    """systemd-analyze verify accepts each unit without a single warning (but for its
    Documentation= page, which the package installs: its tests check that one)."""
    text = (UNITS / name).read_text().replace("/usr/bin/wizard-runner", str(SCRIPT))
    unit = tmp_path / name
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a bad value is reported on stderr."""
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nType=bogus\nExecStart=/bin/true\n")
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert "Failed to parse service type" in done.stderr


def test_oneshot_unit() -> None:
    """The one-shot reruns the saved body, bounded in time, under its own journal name; with
    no saved body it fails (the run says why) rather than being skipped as a success."""
    unit = directives("wizard-runner.service")
    assert unit["Type"] == ["oneshot"]
    assert unit["ExecStart"] == ["/usr/bin/wizard-runner run"]
    # Nothing skips it: a start that did nothing must not report success.
    assert [key for key in unit if key.startswith(("Condition", "Assert"))] == []
    assert unit["TimeoutStartSec"] == ["45min"]
    assert unit["SyslogIdentifier"] == ["wizard-runner"]


@pytest.mark.parametrize("name", ["wizard-runner.service", "wizard-runnerd.service"])
def test_a_stop_reaches_the_runner_alone(name: str) -> None:
    """SIGTERM goes to the runner, which stops its script and records it; the rest of the
    unit is killed only after the runner's grace and its result (systemd as PID 1 is needed
    to see it happen: the package suite skips that there)."""
    unit = directives(name)
    assert unit["KillMode"] == ["mixed"]
    assert unit["TimeoutStopSec"] == ["20s"]
    assert unit["Delegate"] == ["yes"]


#: Options that confine a unit's processes, and so the scripts it runs.
SANDBOXING = ("ProtectHome", "ProtectSystem", "PrivateTmp", "PrivateDevices",
              "PrivateNetwork", "PrivateUsers", "ProtectKernelTunables", "ProtectKernelModules",
              "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
              "ProtectProc", "RestrictSUIDSGID", "RestrictRealtime", "RestrictNamespaces",
              "RestrictAddressFamilies", "LockPersonality", "MemoryDenyWriteExecute",
              "SystemCallArchitectures", "SystemCallFilter", "NoNewPrivileges",
              "CapabilityBoundingSet", "DevicePolicy", "DeviceAllow", "ReadOnlyPaths",
              "InaccessiblePaths", "IPAddressDeny", "User", "DynamicUser")


@pytest.mark.parametrize("name", ["wizard-runner.service", "wizard-runnerd.service"])
def test_scripts_find_the_same_system_whichever_unit_runs_them(name: str) -> None:
    """Neither unit confines its processes: a script run by the daemon (confd's way in) sees
    the devices, modules, sysctls, /tmp, cgroups and address families it sees under
    `wizard-runner run` or the one-shot; the step's own cgroup can be made (Delegate)."""
    unit = directives(name)
    assert [option for option in SANDBOXING if option in unit] == []
    assert unit["Delegate"] == ["yes"]


def test_daemon_unit() -> None:
    """The daemon notifies readiness, comes back whatever ended it but a stop, never gives up
    restarting, and does not wait for the network it may be asked to fix."""
    unit = directives("wizard-runnerd.service")
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/usr/bin/wizard-runner serve"]
    assert unit["Restart"] == ["always"]
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert "network-online.target" not in " ".join(unit.get("After", []) + unit.get("Wants", []))
