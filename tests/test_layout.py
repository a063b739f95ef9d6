"""The layout: the root resolved once, system paths joined to it, the runner's own paths fenced."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wizard_runner.errors import EXIT_IO, UsageError
from wizard_runner.layout import Layout, OutsideRootError


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("/", id="slash"),
        pytest.param("//", id="double-slash"),
        pytest.param("///", id="triple-slash"),
        pytest.param("/./", id="dot"),
        pytest.param("/.", id="dot-no-slash"),
        pytest.param("/tmp/..", id="dotdot"),
        pytest.param("/etc/../", id="dotdot-trailing-slash"),
    ],
)
def test_every_spelling_of_slash_is_the_real_root(spelling: str) -> None:
    """`//`, `/./`, trailing slashes and `..` all name the live system and get its rules."""
    layout = Layout.under(spelling)
    assert layout.root == Path("/")
    assert layout.is_real_root


def test_symlink_to_slash_is_the_real_root(tmp_path: Path) -> None:
    """A --root that is a symlink to / is the live system, not a sandbox."""
    link = tmp_path / "to-slash"
    link.symlink_to("/")
    for spelling in (str(link), f"{link}/", f"{link}/."):
        layout = Layout.under(spelling)
        assert layout.is_real_root, spelling
        assert layout.root == Path("/")


def test_symlink_to_a_sandbox_resolves_once(tmp_path: Path) -> None:
    """A --root that is a symlink to a sandbox becomes the sandbox's real path."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    link = tmp_path / "current"
    link.symlink_to(sandbox)
    layout = Layout.under(f"{link}//")
    assert layout.root == sandbox
    assert not layout.is_real_root
    assert layout.host("/etc/hosts") == sandbox / "etc/hosts"


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative --root is resolved against the working directory."""
    (tmp_path / "sandbox").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Layout.under("sandbox/").root == tmp_path / "sandbox"


def test_an_empty_root_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--root ''` (an unset variable) is a usage error, not the current directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="--root: the path is empty"):
        Layout.under("")


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    """A missing root, or a file, is a usage error naming it as given."""
    (tmp_path / "file").write_text("")
    for given in (str(tmp_path / "missing"), str(tmp_path / "file")):
        with pytest.raises(UsageError, match=f"^--root {given}: not an existing directory$"):
            Layout.under(given)


def test_host_refuses_unclean_paths(tmp_path: Path) -> None:
    """host() joins clean absolute paths only."""
    layout = Layout.under(tmp_path)
    for bad in ("etc/hosts", "/etc/../../hosts"):
        with pytest.raises(ValueError, match="not a clean absolute path"):
            layout.host(bad)


ACCESSORS: list[tuple[str, str, Callable[[Layout], Path]]] = [
    ("var/log", "/var/log/wizard-runner", lambda layout: layout.log_dir),
    ("var/log/wizard-runner", "/var/log/wizard-runner/wizard-runner.log",
     lambda layout: layout.log_file),
    ("var/lib/wizard-runner", "/var/lib/wizard-runner", lambda layout: layout.state_dir),
    ("var/lib/wizard-runner/last-run.json", "/var/lib/wizard-runner/last-run.json",
     lambda layout: layout.last_run),
    ("var/lib/wizard-runner/config.json", "/var/lib/wizard-runner/config.json",
     lambda layout: layout.saved_config),
    ("var/backups", "/var/backups/wizard-runner", lambda layout: layout.backup_dir),
    ("run", "/run/wizard-runner", lambda layout: layout.run_dir),
    ("run/wizard-runner/lock", "/run/wizard-runner/lock", lambda layout: layout.lock_file),
    ("var/spool", "/var/spool/wizard-runner", lambda layout: layout.spool_dir),
    ("etc/xivo", "/etc/xivo/wizard.d", lambda layout: layout.wizard_d),
]


@pytest.mark.parametrize(
    ("link", "shown", "accessor"),
    [pytest.param(*row, id=row[0]) for row in ACCESSORS],
)
def test_own_path_out_of_the_root_is_refused(
    tmp_path: Path, link: str, shown: str, accessor: Callable[[Layout], Path]
) -> None:
    """Each of the runner's own paths that a symlink leads out of a sandbox root is refused (74)."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / link).parent.mkdir(parents=True)
    (root / link).symlink_to(outside)
    layout = Layout.under(root)
    with pytest.raises(OutsideRootError) as caught:
        accessor(layout)
    assert str(caught.value).startswith(f"{shown}: resolves to {outside}")
    assert f"outside the root {root}" in str(caught.value)
    assert caught.value.exit_code == EXIT_IO


def test_own_path_through_a_link_inside_the_root_is_fine(tmp_path: Path) -> None:
    """A symlink that stays inside the sandbox root is allowed for the runner's own paths."""
    root = tmp_path / "root"
    (root / "data/log").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var/log").symlink_to("../data/log")
    layout = Layout.under(root)
    assert layout.log_file == root / "var/log/wizard-runner/wizard-runner.log"
    assert os.path.realpath(layout.log_dir) == str(root / "data/log/wizard-runner")


def test_own_paths_on_the_real_root_are_not_resolved() -> None:
    """On `/` everything is inside by definition: the accessors only join names."""
    layout = Layout.under("/")
    assert layout.log_file == Path("/var/log/wizard-runner/wizard-runner.log")
    assert layout.spool_dir == Path("/var/spool/wizard-runner")
