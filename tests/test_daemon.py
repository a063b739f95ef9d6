"""The daemon end to end: `serve` as a real process on a tmp root, fed through the spool."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, Reliability, seed_root
from tests.test_scripts import USER, no_process_with
from tests.test_scripts import root as script_root  # noqa: F401 - the fixture, re-used
from wizard_runner import api
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.spool import Spool

pytestmark = pytest.mark.processes
SCRIPT = Path(sys.executable).parent / "wizard-runner"
EXAMPLE = EXAMPLES / "wizard.json"


@pytest.fixture
def root(script_root: Path) -> Path:  # noqa: F811 - wraps the imported fixture
    """A traversable root seeded with Debian's files and an empty wizard.d."""
    return seed_root(script_root)


@contextmanager
def daemon(root: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[
        subprocess.Popen[bytes]]:
    """Run `wizard-runner serve` on `root` until the block ends (then SIGTERM it)."""
    log = root / "daemon.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(SCRIPT), "serve", "--root", str(root), "--user", USER, "--log-format", "json",
             *extra],
            stdout=subprocess.DEVNULL, stderr=sink, env=env,
        )
    try:
        wait_for(lambda: '"daemon_ready"' in log.read_text(), what="daemon_ready")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def wait_for(condition: Any, timeout: float = 20, what: str = "condition") -> None:
    """Poll until `condition()` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the console script and capture its output."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          check=False, **kwargs)


def drop(root: Path, name: str, data: bytes, owner: int = 33) -> Path:
    """Put a raw file into incoming/ as a (hostile) submitter could: temp, then rename; owned
    by www-data (33) unless said otherwise."""
    incoming = Spool.of(Layout(root)).incoming
    temp = incoming / f".{name}.tmp"
    temp.write_bytes(data)
    os.chown(temp, owner, owner)
    final = incoming / name
    temp.rename(final)
    return final


def result(root: Path, request_id: str, timeout: float = 60) -> dict[str, Any]:
    """The daemon's result for a request, once written."""
    path = Spool.of(Layout(root)).result_path(request_id)
    wait_for(path.exists, timeout, f"the result of {request_id}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_submit_and_wait_through_the_cli(root: Path) -> None:
    """`submit --wait` hands the body over and exits as the run did."""
    with daemon(root):
        done = cli("submit", "--config", str(EXAMPLE), "--root", str(root), "--wait", "--json",
                   "--timeout", "60")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "succeeded"
    assert record["result"]["system_conf"]["files"][0] == {
        "path": "/etc/hostname", "action": "written", "reason": None
    }
    assert (root / "etc/hostname").read_text() == "pbx\n"
    assert os.listdir(Spool.of(Layout(root)).incoming) == []
    assert os.listdir(Spool.of(Layout(root)).processing) == []


def test_submit_through_the_api_and_a_failing_script(root: Path, body: dict[str, Any]) -> None:
    """api.submit(wait=True) returns the record; a failed script gives exit 1 and its output."""
    wizard_d = root / "etc/xivo/wizard.d"
    (wizard_d / "10-fail").write_text("#!/bin/sh\necho 'provd down' >&2\nexit 5\n")
    (wizard_d / "10-fail").chmod(0o755)
    body["run_scripts"] = True
    with daemon(root):
        request_id = api.submit(body, root=root)
        assert isinstance(request_id, str)
        record = result(root, request_id)
        waited = api.submit(body, root=root, wait=True, timeout=60)
    assert record["status"] == "failed"
    assert record["exit_code"] == 1
    assert record["result"]["scripts"][0]["output_tail"] == "provd down"
    assert isinstance(waited, dict)
    assert waited["exit_code"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to submit as www-data")
def test_www_data_submits_to_a_root_daemon(root: Path) -> None:
    """As www-data (confd), a request can be dropped and its result read, nothing more."""
    spool = Spool.of(Layout(root))
    with daemon(root):
        request_id = "20261125T120000Z-0123456789ab"
        runuser = ["runuser", "-u", "www-data", "--"]
        incoming = spool.incoming
        subprocess.run(
            [*runuser, "sh", "-c", f"cat > {incoming}/.{request_id}.tmp && "
             f"mv {incoming}/.{request_id}.tmp {incoming}/{request_id}.json"],
            input=EXAMPLE.read_bytes(), check=True, timeout=30,
        )
        record = result(root, request_id)
        assert record["status"] == "succeeded"
        read = subprocess.run([*runuser, "cat", str(spool.result_path(request_id))],
                              capture_output=True, check=False, timeout=30)
        assert read.returncode == 0
        assert json.loads(read.stdout)["request_id"] == request_id
        listing = subprocess.run([*runuser, "ls", str(incoming)], capture_output=True,
                                 check=False, timeout=30)
        assert listing.returncode != 0  # cannot see the others' requests
        saved = subprocess.run([*runuser, "cat", str(root / "var/lib/wizard-runner/config.json")],
                               capture_output=True, check=False, timeout=30)
        assert saved.returncode != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as someone else")
def test_flood_of_bad_requests(root: Path, body: dict[str, Any],
                               reliability: Reliability) -> None:
    """Each bad request gets a `rejected` result; the daemon keeps serving good ones."""
    bad_config = dict(body, network=dict(body["network"], gateway="10.9.9.9"))
    with daemon(root) as process:
        drop(root, "20261125T000001Z-aaaaaaaaaaa1.json", b"{not json")
        drop(root, "20261125T000002Z-aaaaaaaaaaa2.json", json.dumps(bad_config).encode())
        drop(root, "20261125T000003Z-aaaaaaaaaaa3.json", b" " * 70000)
        drop(root, "20261125T000004Z-aaaaaaaaaaa4.json", EXAMPLE.read_bytes(), owner=4242)
        link = Spool.of(Layout(root)).incoming / "20261125T000005Z-aaaaaaaaaaa5.json"
        link.symlink_to(root / "etc/shadow-like")
        fifo = Spool.of(Layout(root)).incoming / "20261125T000006Z-aaaaaaaaaaa6.json"
        os.mkfifo(fifo)
        drop(root, "weird name.json", EXAMPLE.read_bytes())
        secret = json.dumps({"language": "db_pass=hunter2"}).encode()
        drop(root, "20261125T000008Z-aaaaaaaaaaa8.json", secret, owner=0)
        drop(root, "20261125T000009Z-aaaaaaaaaaa9.json", b"[" * 30000)
        (Spool.of(Layout(root)).incoming / "20261125T000007Z-aaaaaaaaaaa7.json").mkdir()
        reasons = {
            "20261125T000001Z-aaaaaaaaaaa1": "invalid JSON",
            "20261125T000002Z-aaaaaaaaaaa2": "network.gateway: 10.9.9.9 is not in",
            "20261125T000003Z-aaaaaaaaaaa3": "larger than 65536 bytes",
            "20261125T000004Z-aaaaaaaaaaa4": "owned by uid 4242",
            "20261125T000005Z-aaaaaaaaaaa5": "a symlink",
            "20261125T000006Z-aaaaaaaaaaa6": "not a regular file",
            "20261125T000007Z-aaaaaaaaaaa7": "not a regular file",
            "20261125T000008Z-aaaaaaaaaaa8": "the daemon's log has them",
            "20261125T000009Z-aaaaaaaaaaa9": "nested too deeply",
        }
        for request_id, reason in reasons.items():
            record = result(root, request_id)
            assert record["status"] == "rejected", request_id
            assert reason in record["reason"], (request_id, record["reason"])
            assert record["result"] is None
        assert "hunter2" not in result(root, "20261125T000008Z-aaaaaaaaaaa8")["reason"]
        good = api.submit(body, root=root, wait=True, timeout=60)
        assert isinstance(good, dict)
        assert good["status"] == "succeeded"
        assert process.poll() is None
    reliability.record(area="daemon", fault="hostile requests",
                       injection="bad JSON, bad config, 70 kB, foreign owner, symlink, FIFO, "
                       "directory, root-owned secrets, 30000-deep JSON, odd name",
                       trials=len(reasons) + 1, lost=0,
                       outcome="each rejected with its reason; the daemon kept serving")
    assert os.listdir(Spool.of(Layout(root)).incoming) == []
    assert os.listdir(Spool.of(Layout(root)).processing) == []
    assert not (root / "etc/shadow-like").exists()


def test_sigkill_mid_run_then_restart(root: Path, body: dict[str, Any],
                                      reliability: Reliability) -> None:
    """A daemon killed during a run: at restart the request is reported interrupted, not rerun."""
    marker = f"sleep 9{os.getpid() % 1000}2"
    ran = root / "shared"
    ran.mkdir(mode=0o777)
    ran.chmod(0o777)
    wizard_d = root / "etc/xivo/wizard.d"
    (wizard_d / "10-slow").write_text(f"#!/bin/sh\necho x >> {ran}/count\n{marker}\n")
    (wizard_d / "10-slow").chmod(0o755)
    body["run_scripts"] = True
    with daemon(root) as process:
        request_id = api.submit(body, root=root)
        assert isinstance(request_id, str)
        wait_for((ran / "count").exists, what="the script to start")
        process.kill()
        process.wait(timeout=10)
    subprocess.run(["pkill", "-f", marker], check=False)
    with daemon(root):
        record = result(root, request_id)
    assert record["status"] == "interrupted"
    assert "was not run again" in record["reason"]
    assert (ran / "count").read_text() == "x\n"
    reliability.record(area="daemon", fault="SIGKILL mid-run", injection="kill -9 the daemon "
                       "while a script runs, then restart it", trials=1, lost=0,
                       outcome="the request answered `interrupted`, not run twice")


def test_sigterm_during_a_run(root: Path, body: dict[str, Any],
                              reliability: Reliability) -> None:
    """SIGTERM stops the daemon within seconds; the running request is recorded interrupted."""
    marker = f"sleep 9{os.getpid() % 1000}3"
    ran = root / "shared"
    ran.mkdir(mode=0o777)
    ran.chmod(0o777)
    wizard_d = root / "etc/xivo/wizard.d"
    (wizard_d / "10-slow").write_text(f"#!/bin/sh\ntouch {ran}/started\n{marker}\n")
    (wizard_d / "10-slow").chmod(0o755)
    body["run_scripts"] = True
    with daemon(root) as process:
        request_id = api.submit(body, root=root)
        assert isinstance(request_id, str)
        wait_for((ran / "started").exists, what="the script to start")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        assert time.monotonic() - started < 10
        assert process.returncode == 0
    record = result(root, request_id, timeout=5)
    assert record["status"] == "interrupted"
    assert record["exit_code"] == 143
    assert record["result"]["scripts"][0]["status"] == "failed"
    assert no_process_with(marker)
    reliability.record(area="daemon", fault="SIGTERM mid-run", injection="systemctl stop "
                       "(SIGTERM) while a script runs", trials=1, lost=0,
                       outcome="stopped within seconds; script tree gone; `interrupted`")


def test_waits_for_a_manual_run(root: Path, body: dict[str, Any]) -> None:
    """While a manual run holds the lock, a request waits; it runs once the lock is free."""
    with daemon(root):
        lock = RunLock(Layout(root).lock_file)
        lock.acquire()
        try:
            request_id = api.submit(body, root=root)
            assert isinstance(request_id, str)
            time.sleep(1)
            assert not Spool.of(Layout(root)).result_path(request_id).exists()
            released = time.time()
        finally:
            lock.release()
        record = result(root, request_id)
    assert record["status"] == "succeeded"
    started = record["result"]["started_at"]
    assert datetime.fromisoformat(started).timestamp() >= released


def test_requests_waiting_at_start_are_served(root: Path, body: dict[str, Any]) -> None:
    """Requests dropped while the daemon was down are run when it starts."""
    Spool.of(Layout(root)).incoming.mkdir(parents=True)
    request_id = api.submit(body, root=root)
    assert isinstance(request_id, str)
    with daemon(root):
        assert result(root, request_id)["status"] == "succeeded"


def test_readiness_and_journal_format(root: Path, tmp_path: Path) -> None:
    """Under systemd: READY=1 on $NOTIFY_SOCKET, and `<priority>event key=value` lines."""
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": address, "JOURNAL_STREAM": "8:1234"}
        log = root / "daemon.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([str(SCRIPT), "serve", "--root", str(root), "--user",
                                        USER], stdout=subprocess.DEVNULL, stderr=sink, env=env)
        try:
            message = sock.recv(4096).decode()
            assert "READY=1" in message
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        stopping = sock.recv(4096).decode()
        assert "STOPPING=1" in stopping
    lines = log.read_text().splitlines()
    assert lines[0].startswith("<6>daemon_ready spool=")
    assert not any(line[:1] == "{" for line in lines)


def test_second_daemon_is_refused(root: Path) -> None:
    """Only one daemon serves a root: a second one exits 75 naming the first."""
    with daemon(root) as first:
        second = cli("serve", "--root", str(root), "--user", USER)
        assert second.returncode == 75
        assert f"another wizard-runner serve (pid {first.pid})" in second.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to submit as www-data")
def test_hostile_names_do_not_stop_the_daemon(root: Path, body: dict[str, Any]) -> None:
    """Undecodable names, junk dot-files and deep trees are cleared; the daemon keeps serving."""
    incoming = Spool.of(Layout(root)).incoming
    with daemon(root) as process:
        runuser = ["runuser", "-u", "www-data", "--"]
        subprocess.run([*runuser, "bash", "-c", f'touch "{incoming}/$(printf ".\\xff")"; '
                        f'touch "{incoming}/$(printf "x\\xfe.json")"; '
                        f'mkdir -p "{incoming}/.d/$(printf "a/%.0s" $(seq 300))"; '
                        f'mkdir "{incoming}/20261125T000010Z-bbbbbbbbbbbb.json"'],
                       check=True, timeout=60)
        record = result(root, "20261125T000010Z-bbbbbbbbbbbb")
        assert record["status"] == "rejected"
        good = api.submit(body, root=root, wait=True, timeout=60)
        assert isinstance(good, dict)
        assert good["status"] == "succeeded"
        wait_for(lambda: os.listdir(incoming) == [], what="incoming/ to be cleared")
        assert process.poll() is None
