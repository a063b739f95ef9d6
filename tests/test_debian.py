"""The Debian packaging in debian/ agrees with the code: version, pins, units, scripts, man page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import wizard_runner
from tests.conftest import REPO
from wizard_runner.cli import build_parser

DEBIAN = REPO / "debian"
MAINTAINER_SCRIPTS = ["preinst", "postinst", "prerm", "postrm"]


def changelog_version() -> str:
    """The version of the newest debian/changelog entry."""
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    found = re.fullmatch(r"wizard-runner \(([^)]+)\) \S+; urgency=\w+", first)
    assert found, first
    return found.group(1)


def upstream_part(version: str) -> str:
    """A Debian version without its epoch and Debian revision."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


@pytest.mark.parametrize(
    ("version", "upstream"),
    [
        pytest.param("0.1.0", "0.1.0", id="native"),
        pytest.param("0.1.0-2", "0.1.0", id="revision"),
        pytest.param("1:0.2.0~rc1-1", "0.2.0~rc1", id="epoch"),
    ],
)
def test_upstream_part(version: str, upstream: str) -> None:
    """The helper below reads the upstream version out of any Debian version."""
    assert upstream_part(version) == upstream


def test_changelog_version_is_the_code_version() -> None:
    """debian/changelog's newest entry carries wizard_runner.__version__ (the one source, which
    pyproject.toml reads too): a release bumps both or the package says the wrong version."""
    assert upstream_part(changelog_version()) == wizard_runner.__version__


def test_pyproject_takes_the_version_from_the_code() -> None:
    """pyproject.toml has no version of its own: hatch reads wizard_runner/__init__.py."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "wizard_runner/__init__.py"


def pins() -> dict[str, Requirement]:
    """requirements.txt's pins, by normalized name (options such as --only-binary left out)."""
    found = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text and not text.startswith("-"):
            requirement = Requirement(text)
            found[re.sub(r"[-_.]+", "-", requirement.name).lower()] = requirement
    return found


def test_every_bundled_distribution_is_pinned_exactly() -> None:
    """The package bundles exact versions: every line of requirements.txt is `name==version`."""
    for name, requirement in pins().items():
        operators = [spec.operator for spec in requirement.specifier]
        assert operators == ["=="], f"{name}: {requirement}"


def test_pins_satisfy_the_project_dependencies() -> None:
    """Each dependency in pyproject.toml is pinned, at a version inside its range."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bundled = pins()
    for text in project["dependencies"]:
        wanted = Requirement(text)
        name = re.sub(r"[-_.]+", "-", wanted.name).lower()
        assert name in bundled, f"{name} is not pinned in requirements.txt"
        version = next(iter(bundled[name].specifier)).version
        assert wanted.specifier.contains(version), f"{name}=={version} is outside {wanted}"


def test_both_units_are_packaged() -> None:
    """Every unit of systemd/ is installed by the package."""
    installed = (DEBIAN / "wizard-runner.install").read_text().split()
    for unit in sorted((REPO / "systemd").glob("*.service")):
        assert f"systemd/{unit.name}" in installed, unit.name


def hold_runs_lock(script: str) -> str:
    """The block between the BEGIN/END hold_runs_lock markers of a maintainer script."""
    text = (DEBIAN / f"wizard-runner.{script}").read_text()
    found = re.search(r"^# BEGIN hold_runs_lock.*?^# END hold_runs_lock$", text, re.S | re.M)
    assert found, f"{script} has no hold_runs_lock block"
    return found.group(0)


def test_preinst_and_prerm_wait_for_runs_alike() -> None:
    """preinst (upgrade) and prerm (removal) wait for the run in progress with the same code."""
    assert hold_runs_lock("preinst") == hold_runs_lock("prerm")


@pytest.mark.processes
@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_script_is_posix_shell(script: str) -> None:
    """Each maintainer script is /bin/sh that parses, with debhelper's place marked."""
    path = DEBIAN / f"wizard-runner.{script}"
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "\n#DEBHELPER#\n" in text
    assert "\nset -e\n" in text
    shell = shutil.which("dash") or "/bin/sh"
    done = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.processes
@pytest.mark.skipif(Path("/usr/bin/wizard-runner").exists(),
                    reason="the package is installed: postinst would change this machine "
                    "(tests/package/test_installed_dirs.py runs it there)")
def test_postinst_calls_the_packaged_command_not_one_on_path(tmp_path: Path) -> None:
    """postinst configure runs /usr/bin/wizard-runner (the package's link), never a
    wizard-runner that comes first on PATH. With no package installed here, it stops at
    that missing command before it changes anything."""
    called = tmp_path / "called"
    stub = tmp_path / "bin/wizard-runner"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {called}\n")
    stub.chmod(0o755)
    shell = shutil.which("dash") or "/bin/sh"
    done = subprocess.run([shell, str(DEBIAN / "wizard-runner.postinst"), "configure"],
                          env={"PATH": f"{stub.parent}:/usr/sbin:/usr/bin:/sbin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert not called.exists(), called.read_text()
    assert done.returncode == 127, done.stderr
    assert "/usr/bin/wizard-runner: not found" in done.stderr


def test_man_page_lists_every_command() -> None:
    """debian/wizard-runner.8 has an entry for each command the parser knows."""
    page = (DEBIAN / "wizard-runner.8").read_text()
    for command in build_parser().commands:
        assert f"\n.TP\n.B {command}\n" in page, f"{command} is missing from the man page"


#: preinst upgrade in its own mount namespace, /var/spool and /run tmpfs there: whether it
#: leaves the restarting mark (and a symlinked spool gets none).
_PREINST_IN_NAMESPACE = """set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /var/spool
mount -t tmpfs tmpfs /run
if [ "$2" = symlink ]; then mkdir /var/spool/elsewhere; ln -s elsewhere /var/spool/wizard-runner
else mkdir /var/spool/wizard-runner; fi
sh "$1" upgrade 0.1.0 >/dev/null
ls -A /var/spool/wizard-runner/ /var/spool/elsewhere/ 2>/dev/null | grep -c restarting || true
"""


@pytest.mark.processes
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare (a mount namespace)")
@pytest.mark.parametrize(("spool", "marks"), [("directory", "1"), ("symlink", "0")])
def test_preinst_upgrade_leaves_the_restarting_mark(spool: str, marks: str) -> None:
    """On upgrade, preinst leaves `restarting` in the spool for waiting submitters (postinst
    removes it); never through a symlinked spool."""
    done = subprocess.run(["unshare", "-m", "sh", "-c", _PREINST_IN_NAMESPACE, "sh",
                           str(DEBIAN / "wizard-runner.preinst"), spool],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, marks), done.stderr
