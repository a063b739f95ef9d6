"""The runner's directories made ahead of time: the modes a run uses, idempotent, drift fixed."""

from __future__ import annotations

import errno
import grp
import io
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wizard_runner
from tests.conftest import needs_root
from wizard_runner import cli
from wizard_runner.dirs import prepare_dirs
from wizard_runner.errors import PrivilegeError, RunnerIOError
from wizard_runner.layout import Layout

DOCUMENTED = [
    pytest.param("var/spool/wizard-runner", 0o755, id="spool"),
    pytest.param("var/spool/wizard-runner/incoming", 0o1730, id="incoming"),
    pytest.param("var/spool/wizard-runner/processing", 0o700, id="processing"),
    pytest.param("var/spool/wizard-runner/done", 0o750, id="done"),
    pytest.param("var/lib/wizard-runner", 0o755, id="state"),
    pytest.param("var/log/wizard-runner", 0o750, id="log"),
    pytest.param("var/backups/wizard-runner", 0o700, id="backups"),
]


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    """Debian's default umask, the one a run and the package's postinst have."""
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def mode_of(path: Path) -> int:
    """The permission bits of `path` (sticky and setgid bits included)."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("relative", "mode"), DOCUMENTED)
def test_each_directory_gets_its_documented_mode(tmp_path: Path, relative: str,
                                                 mode: int) -> None:
    """Every directory docs/operations.md lists is made with its mode."""
    prepare_dirs(Layout.under(tmp_path), os.getegid())
    assert mode_of(tmp_path / relative) == mode


@pytest.mark.parametrize(("relative", "mode"), DOCUMENTED)
def test_drifted_modes_are_put_back(tmp_path: Path, relative: str, mode: int) -> None:
    """A directory an admin opened up is given its mode back; what it holds is left alone."""
    prepare_dirs(Layout.under(tmp_path), os.getegid())
    directory = tmp_path / relative
    kept = directory / "kept.json"
    kept.write_text("{}")
    kept.chmod(0o600)
    directory.chmod(0o777)
    prepare_dirs(Layout.under(tmp_path), os.getegid())
    assert mode_of(directory) == mode
    assert kept.read_text() == "{}"
    assert mode_of(kept) == 0o600


def test_preparing_twice_changes_nothing(tmp_path: Path) -> None:
    """A second call (an upgrade's postinst) reports and leaves the same directories."""
    first = prepare_dirs(Layout.under(tmp_path), os.getegid())
    second = prepare_dirs(Layout.under(tmp_path), os.getegid())
    assert first == second
    assert len(first) == len(DOCUMENTED)


@pytest.mark.processes
def test_modes_match_what_a_run_creates(tmp_path: Path, sandbox: Path,
                                        body: dict[str, Any]) -> None:
    """The state, log and backup directories a first run creates have the modes set here."""
    wizard_runner.run(body, root=sandbox)
    made_ahead = tmp_path / "ahead"
    made_ahead.mkdir()
    prepare_dirs(Layout.under(made_ahead), os.getegid())
    for relative in ("var/lib/wizard-runner", "var/log/wizard-runner",
                     "var/backups/wizard-runner"):
        assert (sandbox / relative).is_dir(), f"the run did not create {relative}"
        assert mode_of(made_ahead / relative) == mode_of(sandbox / relative), relative


@needs_root
def test_owners_as_root(tmp_path: Path) -> None:
    """As root, the spool's shared parts belong to the run user's group, the rest to root."""
    www_data = grp.getgrnam("www-data").gr_gid
    prepared = {str(d.path.relative_to(tmp_path)): (d.uid, d.gid)
                for d in prepare_dirs(Layout.under(tmp_path), www_data)}
    assert prepared == {
        "var/spool/wizard-runner": (0, 0),
        "var/spool/wizard-runner/incoming": (0, www_data),
        "var/spool/wizard-runner/processing": (0, 0),
        "var/spool/wizard-runner/done": (0, www_data),
        "var/lib/wizard-runner": (0, 0),
        "var/log/wizard-runner": (0, 0),
        "var/backups/wizard-runner": (0, 0),
    }


@pytest.mark.parametrize(
    ("error", "raised", "code"),
    [
        pytest.param(PermissionError(errno.EACCES, "Permission denied"), PrivilegeError, 77,
                     id="EACCES"),
        pytest.param(OSError(errno.ENOSPC, "No space left on device"), RunnerIOError, 74,
                     id="ENOSPC"),
    ],
)
def test_a_failure_names_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       error: OSError, raised: type[Exception],
                                       code: int) -> None:
    """A directory that cannot be made is named, with the reason and the exit code."""
    target = tmp_path / "var/log/wizard-runner"
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == target:
            error.filename = str(self)
            raise error
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(raised) as caught:
        prepare_dirs(Layout.under(tmp_path), os.getegid())
    assert str(target) in str(caught.value)
    assert error.strerror is not None and error.strerror in str(caught.value)
    assert getattr(caught.value, "exit_code", None) == code


def test_command_lists_each_directory(tmp_path: Path) -> None:
    """`wizard-runner setup-dirs` prints each directory with its mode and owner, exit 0."""
    out, err = io.StringIO(), io.StringIO()
    # The current user, so that the group can be given without root.
    argv = ["setup-dirs", "--root", str(tmp_path), "--user", pwd.getpwuid(os.geteuid()).pw_name]
    assert cli.main(argv, stdout=out, stderr=err) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(DOCUMENTED)
    incoming = next(line for line in lines if "/incoming" in line)
    assert incoming.split()[0] == str(tmp_path / "var/spool/wizard-runner/incoming")
    assert incoming.split()[1] == "1730"
