"""/usr/bin/wizard-runner: the bundled virtualenv's console script, usable by root and www-data."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.package.conftest import (
    BINARY,
    PACKAGE_TEST,
    VENV,
    as_www_data,
    package_version,
    run,
)

pytestmark = PACKAGE_TEST


@pytest.mark.parametrize("as_user", [pytest.param(False, id="root"),
                                     pytest.param(True, id="www-data")])
def test_version(as_user: bool) -> None:
    """`wizard-runner --version` prints the packaged version, as root and as www-data."""
    argv = [str(BINARY), "--version"]
    done = run(as_www_data(argv) if as_user else argv)
    upstream = package_version().split(":")[-1].rsplit("-", 1)[0]
    assert done.stdout.strip() == f"wizard-runner {upstream}"


def test_the_command_is_the_venv_console_script() -> None:
    """/usr/bin/wizard-runner links to the venv's script, which runs the venv's interpreter,
    itself Debian's python3.11."""
    assert BINARY.resolve() == VENV / "bin/wizard-runner"
    shebang = (VENV / "bin/wizard-runner").read_text().splitlines()[0]
    assert shebang == f"#!{VENV}/bin/python"
    assert (VENV / "bin/python").resolve() == Path("/usr/bin/python3.11")


def test_modules_come_from_the_venv() -> None:
    """As www-data, the venv's interpreter imports wizard-runner and pydantic 2 from the venv
    only, not from Debian's python3-* packages."""
    code = ("import sys, pydantic, wizard_runner; "
            "print(wizard_runner.__file__, pydantic.__file__, pydantic.VERSION.split('.')[0]);"
            "print(*[p for p in sys.path if 'dist-packages' in p])")
    first, dist_packages = run(as_www_data([VENV / "bin/python", "-c", code])).stdout.split("\n")[:2]
    ours, theirs, major = first.split()
    assert ours.startswith(f"{VENV}/lib/python3.11/site-packages/wizard_runner/")
    assert theirs.startswith(f"{VENV}/lib/python3.11/site-packages/pydantic/")
    assert major == "2"
    assert dist_packages == ""


def test_venv_is_readable_by_everyone() -> None:
    """Every file of the venv is world-readable and every directory world-searchable (confd
    runs `submit` as www-data); nothing is writable by anyone but root."""
    for directory, _subdirs, files in os.walk(VENV):
        for name in [directory, *(os.path.join(directory, f) for f in files)]:
            info = os.lstat(name)
            if stat.S_ISLNK(info.st_mode):
                continue
            wanted = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(info.st_mode) else 0)
            assert info.st_mode & wanted == wanted, f"{name}: {stat.filemode(info.st_mode)}"
            assert info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) == 0, name
            assert info.st_uid == 0, name


def test_byte_code_is_made_on_install_not_shipped() -> None:
    """postinst byte-compiled the venv; the package itself ships no .pyc (Python policy)."""
    shipped = run(["dpkg-query", "-L", "wizard-runner"]).stdout.splitlines()
    assert not [path for path in shipped if "__pycache__" in path or path.endswith(".pyc")]
    cache = VENV / "lib/python3.11/site-packages/wizard_runner/__pycache__"
    assert any(cache.glob("cli.cpython-311.pyc"))


def test_dpkg_verifies_the_installed_files() -> None:
    """`dpkg --verify` finds every shipped file as the package has it."""
    done = run(["dpkg", "--verify", "wizard-runner"], check=False)
    assert (done.returncode, done.stdout) == (0, "")
