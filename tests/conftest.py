"""Shared fixtures: example bodies, sandbox roots, and a guard against stray child processes."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
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
    """Put SIGTERM/SIGINT handlers back after a test that installs the CLI's."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
