"""Shared fixtures: example bodies, sandbox roots, and a guard against stray child processes."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wizard_runner.config import WizardConfig, config_from_data
from wizard_runner.tools import find_tool

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DEBIAN_ROOT = EXAMPLES / "debian-root"
MANAGED = (
    "/etc/hostname",
    "/etc/hosts",
    "/etc/mailname",
    "/etc/resolv.conf",
    "/etc/postfix/main.cf",
    "/etc/postfix/canonical",
    "/etc/network/interfaces",
)
_EXAMPLE_BODY: dict[str, Any] = json.loads((EXAMPLES / "wizard.json").read_text())


@pytest.fixture(autouse=True)
def _no_unexpected_processes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail loudly when a test not marked `processes` starts a child process."""
    if request.node.get_closest_marker("processes"):
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected child process in a unit test: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def body() -> dict[str, Any]:
    """A fresh, mutable copy of examples/wizard.json."""
    return copy.deepcopy(_EXAMPLE_BODY)


@pytest.fixture
def config(body: dict[str, Any]) -> WizardConfig:
    """The validated example config."""
    return config_from_data(body)


def seed_root(root: Path) -> Path:
    """Copy the realistic Debian tree of examples/ into `root`."""
    shutil.copytree(DEBIAN_ROOT, root, symlinks=True, dirs_exist_ok=True)
    # Empty on a fresh Debian, so git cannot carry it.
    (root / "etc/network/interfaces.d").mkdir(exist_ok=True)
    return root


@pytest.fixture
def script_root() -> Iterator[Path]:
    """A root every user can traverse (pytest's own tmp dirs are 0700), with an empty wizard.d."""
    base = Path(tempfile.mkdtemp(prefix="wizard-runner-test-", dir="/tmp"))
    base.chmod(0o755)
    (base / "etc/xivo/wizard.d").mkdir(parents=True)
    for part in ("etc", "etc/xivo", "etc/xivo/wizard.d"):
        (base / part).chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A real tmp root seeded with Debian's files."""
    return seed_root(tmp_path / "root")


def snapshot(tree: Path) -> dict[str, tuple[bytes | str, int, int]]:
    """Every entry under `tree`: content (or link target), mode and mtime in ns."""
    found: dict[str, tuple[bytes | str, int, int]] = {}
    for path in sorted(tree.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = "<dir>"
        found[str(path.relative_to(tree))] = (content, info.st_mode, info.st_mtime_ns)
    return found


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Skip unless the Debian tool is installed (CI installs it)."""
    return pytest.mark.skipif(
        find_tool(name) is None, reason=f"needs {name} (apt-get install ifupdown postfix)"
    )


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """Put SIGTERM/SIGINT/SIGHUP handlers back after a test that installs the CLI's."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    unraisable = sys.unraisablehook
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(wakeup)
    sys.unraisablehook = unraisable


# --- long suites and the reliability report ------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """--run-long runs the long fault suites; --reliability-report writes RELIABILITY.md."""
    parser.addoption("--run-long", action="store_true",
                     help="also run the long reliability suites (CI does)")
    parser.addoption("--reliability-report", metavar="PATH",
                     help="write the fault table this run measured as markdown to PATH")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers this suite uses."""
    config.addinivalue_line("markers", "long: a long fault suite, run with --run-long")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the long suites unless asked for."""
    if config.getoption("--run-long"):
        return
    skip = pytest.mark.skip(reason="long suite: run with --run-long (CI runs it)")
    for item in items:
        if item.get_closest_marker("long"):
            item.add_marker(skip)


@dataclass(frozen=True)
class FaultRow:
    """One line of RELIABILITY.md: a fault, how it was injected, how often, what came of it."""

    area: str
    fault: str
    injection: str
    trials: int
    lost: int
    outcome: str


_ROWS: list[FaultRow] = []


class Reliability:
    """Collects the fault rows of the tests that ran (see `reliability` fixture)."""

    def record(self, *, area: str, fault: str, injection: str, trials: int, lost: int,
               outcome: str) -> None:
        """Add a row; `lost` counts trials that lost or corrupted data or hung."""
        _ROWS.append(FaultRow(area, fault, injection, trials, lost, outcome))


@pytest.fixture
def reliability() -> Reliability:
    """Record what a fault test measured, for the generated RELIABILITY.md."""
    return Reliability()


#: What every coverage data file (an SQLite database) begins with.
_SQLITE_HEADER = b"SQLite format 3\x00"


def _drop_cut_coverage_files(directory: Path) -> None:
    """A process a test killed (SIGKILL) while coverage measured it leaves its data file empty
    or cut short: not one `coverage combine` can read."""
    for path in directory.glob(".coverage.*"):
        try:
            with open(path, "rb") as data:
                if data.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                    path.unlink()
        except OSError:
            continue


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the coverage data files of killed processes; write RELIABILITY.md when asked, from
    the rows the run recorded."""
    _drop_cut_coverage_files(Path(session.config.rootpath))
    target = session.config.getoption("--reliability-report")
    if not target:
        return
    from tests.reliability_report import render_report  # noqa: PLC0415 - only when asked

    Path(target).write_text(render_report(_ROWS, session.config, exitstatus))
