"""Shared test helpers that are not fixtures."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import snapshot
from wizard_runner.config import WizardConfig
from wizard_runner.errors import WizardRunnerError
from wizard_runner.layout import Layout
from wizard_runner.result import RunResult
from wizard_runner.runner import RunOptions, execute
from wizard_runner.spool import Spool

#: The console script of the test environment.
SCRIPT = Path(sys.executable).parent / "wizard-runner"


# The console script, signalled while Python builds the classes of a module it loads (in a
# dataclass field's __set_name__, where Python 3.11 wraps an exception in RuntimeError).
_LOADING = """\
import dataclasses, os, signal, sys
module, signum = sys.argv[1], int(sys.argv[2])
set_name = dataclasses.Field.__set_name__

def landing(self, owner, name):
    if owner.__module__ == module:
        os.kill(os.getpid(), signum)  # the handler runs here, inside __set_name__
    return set_name(self, owner, name)

dataclasses.Field.__set_name__ = landing
sys.argv = ["wizard-runner", *sys.argv[3:]]
from wizard_runner.entry import main
sys.exit(main())
"""


def signalled_while_loading(module: str, signum: int) -> list[str]:
    """The command that runs the console script (its arguments follow) and sends it `signum`
    while `module` builds its dataclasses."""
    return [sys.executable, "-c", _LOADING, module, str(signum)]


def www_data() -> tuple[int, int]:
    """The uid and gid of www-data on this machine."""
    entry = pwd.getpwnam("www-data")
    return entry.pw_uid, entry.pw_gid


def as_www_data(action: Callable[[], Any]) -> dict[str, Any]:
    """Call `action` in a forked child that became www-data (its uid and gid only): returns
    {"value": what it returned} (JSON-able) or {"error": "Type: message"} when it raised.

    A fork, not a new interpreter: www-data cannot execute a venv under /root, and the child
    must use the code under test as it is already loaded.
    """
    uid, gid = www_data()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                outcome: dict[str, Any] = {"value": action()}
            except BaseException as error:  # whatever it is, the parent reports it
                outcome = {"error": f"{type(error).__name__}: {error}"}
            os.write(write_end, json.dumps(outcome, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        chunks.append(reader.read())
    os.waitpid(pid, 0)
    found: dict[str, Any] = json.loads(b"".join(chunks) or b'{"error": "the child died"}')
    return found


@contextmanager
def presence_holder(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the daemon's presence lock at `path` (as a daemon serving the
    spool does), ready once yielded; killed afterwards."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path\n"
         "from wizard_runner.presence import PresenceLock\n"
         f"with PresenceLock(Path({str(path)!r})):\n"
         "    print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"ready\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


@contextmanager
def traversable_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that every user can traverse (pytest's tmp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="wizard-runner-test-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def shared_dir(root: Path) -> Path:
    """`root/shared`, made: a directory every user (the run user's scripts) can write in."""
    shared = root / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    return shared


def shared_fifo(root: Path) -> Path:
    """A FIFO in `shared_dir(root)` that every user can read and write."""
    fifo = shared_dir(root) / "fifo"
    os.mkfifo(fifo, 0o666)
    fifo.chmod(0o666)
    return fifo


def write_script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """A /bin/sh script `name` in `directory` running `body`."""
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def alive(marker: str) -> list[int]:
    """The live (not zombie) processes whose command line contains `marker`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(process.info["cmdline"] or []) and \
                process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


def wait_until(condition: Callable[[], object], timeout: float = 20.0,
               what: str = "condition") -> None:
    """Poll until `condition()` is true (a handshake: a file a script makes, a log line);
    an OSError while looking counts as not yet. AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def killed_run(root: Path, *args: str) -> tuple[int, str]:
    """Start `wizard-runner run --root ROOT ARGS` and SIGKILL it once its holder line names
    it, before it can store its result: its JSON log goes to a pipe already full, so its
    first log line (after the line, under the lock) holds it there. Its pid and run id."""
    holder = root / "run/wizard-runner/lock.holder"
    reader, writer = os.pipe()
    try:
        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(writer, False)
        with contextlib.suppress(BlockingIOError):
            for piece in iter(lambda: b"x" * 4096, b""):
                os.write(writer, piece)
        with contextlib.suppress(BlockingIOError):  # the last bytes a big write left room for
            while True:
                os.write(writer, b"x")
        os.set_blocking(writer, True)
        with subprocess.Popen([str(SCRIPT), "run", "--root", str(root), "--log-format", "json",
                               *args], stdout=subprocess.DEVNULL, stderr=writer) as running:
            wait_until(lambda: holder.read_text().split()[:1] == [str(running.pid)],
                       what="its holder line")  # (a killed run's may be there before)
            running.kill()
    finally:
        os.close(reader)
        os.close(writer)
    words = holder.read_text().split()
    assert int(words[0]) == running.pid, words
    return running.pid, words[1]


@contextmanager
def sigterm_once(ready: Path, what: str) -> Iterator[None]:
    """Send this process SIGTERM from a thread once `ready` exists (a script made it: the
    handshake that it runs); the thread is joined as the block ends."""

    def stop_once_ready() -> None:
        wait_until(ready.exists, what=what)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_ready)
    stopper.start()
    try:
        yield
    finally:
        stopper.join()


def peak_rss_kib(process: subprocess.Popen[Any]) -> int:
    """Poll a process's VmHWM until it exits: the peak RSS of its own program image, in KiB.
    wait4's ru_maxrss would also count the pages it shared with its parent between fork and
    exec."""
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.02)
    return peak


# --- scripts steps ------------------------------------------------------------------------


def current_user() -> str:
    """The name of the user running the tests."""
    return pwd.getpwuid(os.geteuid()).pw_name


ROOT = os.geteuid() == 0
#: Who scripts run as in the tests: www-data when they run as root.
USER = "www-data" if ROOT else current_user()


def add_script(root: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """Put a /bin/sh script into wizard.d."""
    path = root / "etc/xivo/wizard.d" / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def counting_script(root: Path, ran: Path) -> None:
    """wizard.d with one script, 10-once, that adds a line `ran` to `ran` each time it runs."""
    (root / "etc/xivo/wizard.d").mkdir(parents=True, exist_ok=True)
    add_script(root, "10-once", f"echo ran >> {ran}")


def run_step(config: WizardConfig, root: Path, **options: Any) -> RunResult:
    """Run only the scripts step on `root`, as the test user (www-data when root)."""
    settings: dict[str, Any] = {
        "root": root, "handle_system_conf": False, "run_scripts": True,
        "check_with_tools": False, "user": USER, "timeout": 30.0, **options,
    }
    with open(os.devnull, "w") as sink:
        return execute(config, RunOptions(**settings), json_logs=True, stream=sink)


def refused(config: WizardConfig, root: Path, **options: Any) -> WizardRunnerError:
    """Run, expecting a refusal before anything is written: no result, no log, no saved body."""
    with pytest.raises(WizardRunnerError) as caught:
        run_step(config, root, **options)
    for written in ("var/lib/wizard-runner", "var/log/wizard-runner"):
        assert not (root / written).exists(), written
    return caught.value


def refused_again(config: WizardConfig, root: Path, **options: Any) -> WizardRunnerError:
    """Run after earlier runs, expecting a refusal that changes no stored state."""
    before = snapshot(root / "var")
    with pytest.raises(WizardRunnerError) as caught:
        run_step(config, root, **options)
    assert snapshot(root / "var") == before
    return caught.value


def scripts_of(result: RunResult) -> dict[str, dict[str, Any]]:
    """The result's scripts by name."""
    return {script["name"]: script for script in result.to_dict()["scripts"]}


def no_process_with(marker: str) -> bool:
    """True when no process's command line contains `marker`."""
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if marker in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            return False
    return True


# --- the daemon ---------------------------------------------------------------------------


@contextmanager
def daemon(root: Path, *extra: str, env: dict[str, str] | None = None,
           command: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `wizard-runner serve` on `root` until the block ends (then SIGTERM it); its log
    is appended to root/daemon.log."""
    log = root / "daemon.log"
    ready = log.read_text().count('"daemon_ready"') if log.exists() else 0
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*(command or [str(SCRIPT)]), "serve", "--root", str(root), "--user", USER,
             "--log-format", "json", *extra],
            stdout=subprocess.DEVNULL, stderr=sink, env=env,
        )
    try:
        wait_until(lambda: log.read_text().count('"daemon_ready"') > ready, what="daemon_ready")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def daemon_result(root: Path, request_id: str, timeout: float = 60) -> dict[str, Any]:
    """The daemon's result for a request, once written."""
    path = Spool.of(Layout(root)).result_path(request_id)
    wait_until(path.exists, timeout, f"the result of {request_id}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- independent parsers, to read the rendered files back -----------------------------------


def parse_hosts(text: str) -> dict[str, str]:
    """Map each host name to its address, as the resolver reads /etc/hosts (first wins)."""
    names: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            names.setdefault(name, fields[0])
    return names


def parse_resolv(text: str) -> tuple[list[str], list[str]]:
    """The search domains and name servers of a resolv.conf."""
    search: list[str] = []
    servers: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["search"]:
            search = words[1:]
        elif words[:1] == ["nameserver"]:
            servers.append(words[1])
    return search, servers


def parse_main_cf(text: str) -> dict[str, str]:
    """main.cf parameters, joining continuation lines; the last setting wins."""
    params: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name:
            params[name] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        params[name] = value.strip()
    return params


def parse_interfaces(text: str) -> dict[str, dict[str, str]]:
    """iface (name, family) stanzas and their options, plus the 'auto' list under key '@auto'."""
    stanzas: dict[str, dict[str, str]] = {"@auto": {}}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "iface":
            current = stanzas.setdefault(f"{words[1]} {words[2]}", {"method": words[3]})
        elif words[0] == "auto" or words[0].startswith("allow-"):
            for name in words[1:]:
                stanzas["@auto"][name] = words[0]
            current = None
        elif words[0] in {"source", "source-directory", "mapping"}:
            current = None
        elif current is not None:
            current[words[0]] = " ".join(words[1:])
    return stanzas


# --- special files ------------------------------------------------------------------------


def make_fifo(path: Path) -> None:
    """A FIFO nobody writes to: opening it for reading would block."""
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    """A bound unix socket."""
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))


def make_device(path: Path) -> None:
    """/dev/null's character device, made in place (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a device node")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


#: Files no run may open as a regular file, each with the name its refusal gives it.
SPECIAL_FILES = [
    pytest.param(make_fifo, "a FIFO", id="fifo"),
    pytest.param(make_socket, "a socket", id="socket"),
    pytest.param(make_device, "a character device", id="device"),
]


def outside_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """A directory beside a sandbox root, holding `files`: no run may read or change it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, text in files.items():
        (elsewhere / name).write_text(text)
    return elsewhere
