"""The package suite: tests of the installed Debian package, its files and maintainer scripts.

Every test here runs the installed /usr/bin/wizard-runner (never this tree's code) and skips
when the package is not installed. The tests that change the installation (an upgrade, a
purge) also need the .deb it came from, in WIZARD_RUNNER_DEB, as .ci/package sets it; each
puts the package back, freshly installed from that .deb, when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, seed_root

PACKAGE = "wizard-runner"
BINARY = Path("/usr/bin/wizard-runner")
VENV = Path("/opt/venvs/wizard-runner")
UNITS = Path("/lib/systemd/system")
WIZARD_D = Path("/etc/xivo/wizard.d")
#: What confd's environment comes down to: nothing of this test run's (its venv, PYTHON*).
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: dpkg and apt without questions; the conffile ones are answered per call.
DPKG_ENV = {**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}


def package_status() -> str:
    """dpkg's word for the package: `installed`, `config-files`, `not-installed`, ..."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", PACKAGE],
                              capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return "no dpkg here"
    return done.stdout.strip() or "not-installed"


def package_version() -> str:
    """The installed package's version, as dpkg has it."""
    return run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE]).stdout


needs_package = pytest.mark.skipif(
    package_status() != "installed",
    reason="needs the wizard-runner Debian package installed (dpkg-query -W wizard-runner): "
    "bash .ci/package builds and installs it",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_deb = pytest.mark.skipif(
    not os.environ.get("WIZARD_RUNNER_DEB"),
    reason="reinstalls, upgrades or purges the package: set WIZARD_RUNNER_DEB to the .deb it "
    "was installed from (.ci/package does)",
)
#: Every package test: the package is there, the test runs real processes.
PACKAGE_TEST = [pytest.mark.processes, needs_package]
#: A test that changes the installed package (purge, upgrade): root, the .deb to put back,
#: and the package put back after it.
CHANGES_THE_PACKAGE = [*PACKAGE_TEST, needs_root, needs_deb, pytest.mark.timeout(600),
                       pytest.mark.usefixtures("reinstall_after")]


def run(argv: Sequence[str | os.PathLike[str]], *, input_text: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command from `/` with a clean environment (none of this checkout's modules can
    be picked up); with `check`, a failure shows its output."""
    done = subprocess.run([str(arg) for arg in argv], input=input_text, capture_output=True,
                          text=True, env=env or CLEAN_ENV, timeout=timeout, check=False,
                          cwd="/")
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {done.returncode}:\n"
                    f"{done.stdout}\n{done.stderr}")
    return done


def as_www_data(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """`argv` as confd runs it: as www-data, with a clean environment."""
    env = [f"{key}={value}" for key, value in CLEAN_ENV.items()]
    return ["runuser", "-u", "www-data", "--", "env", "-i", *env, *map(str, argv)]


def dpkg(*args: str | os.PathLike[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run dpkg non-interactively; a failure shows its output."""
    return run(["dpkg", *args], env=DPKG_ENV, timeout=timeout)


def mode_owner(path: Path) -> tuple[int, str, str]:
    """Permission bits, owner and group names of `path` (not followed if a link)."""
    info = path.lstat()
    return info.st_mode & 0o7777, path.owner(), path.group()


@pytest.fixture
def deb() -> Path:
    """The .deb the installed package came from."""
    path = Path(os.environ["WIZARD_RUNNER_DEB"])
    assert path.is_file(), f"WIZARD_RUNNER_DEB={path} is not a file"
    return path


@pytest.fixture
def reinstall_after(deb: Path) -> Iterator[None]:
    """Put the package back as a fresh install from `deb` once the test is done with it."""
    yield
    dpkg("--purge", PACKAGE)
    dpkg("--install", deb)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory under /tmp that www-data can traverse (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="wizard-runner-package-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandbox_root(shared_tmp: Path) -> Path:
    """A root seeded with a fresh Debian's files and the installed wizard.d scripts."""
    root = seed_root(shared_tmp / "root")
    shutil.copytree(WIZARD_D, root / "etc/xivo/wizard.d", symlinks=True)
    return root


def wizard_body(*, run_scripts: bool) -> str:
    """The example wizard body, as JSON text."""
    body = json.loads((EXAMPLES / "wizard.json").read_text())
    body["run_scripts"] = run_scripts
    return json.dumps(body)


@dataclass
class Daemon:
    """A `wizard-runner serve` started from the installed binary."""

    process: subprocess.Popen[str]
    log: Path

    def stop(self) -> int:
        """SIGTERM, as systemctl stop sends it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _wait_ready(sock: socket.socket, daemon: subprocess.Popen[str], log: Path) -> None:
    """Wait for the daemon's READY=1 (its systemd notification), failing if it exits first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            pytest.fail(f"the daemon exited {daemon.returncode}:\n{log.read_text()}")
        with contextlib.suppress(TimeoutError):
            if b"READY=1" in sock.recv(4096).split(b"\n"):
                return
    pytest.fail(f"the daemon did not say READY=1 within 60 s:\n{log.read_text()}")


@pytest.fixture
def daemon(sandbox_root: Path, shared_tmp: Path) -> Iterator[Daemon]:
    """The installed daemon serving the sandbox's spool, as root, ready (it notified READY=1,
    as Type=notify has systemd wait for)."""
    notify = shared_tmp / "notify.sock"
    log = shared_tmp / "daemon.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, log.open("w") as stderr:
        sock.bind(str(notify))
        sock.settimeout(0.5)
        process = subprocess.Popen(
            [str(BINARY), "serve", "--root", str(sandbox_root), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
            env={**CLEAN_ENV, "NOTIFY_SOCKET": str(notify)}, cwd="/",
        )
        served = Daemon(process, log)
        try:
            _wait_ready(sock, process, log)
            yield served
        finally:
            served.stop()
