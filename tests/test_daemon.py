"""The daemon: its bookkeeping in-process (faults injected), then `serve` end to end as a real
process on a tmp root, fed through the spool."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, REPO, Reliability, seed_root
from tests.helpers import (
    USER,
    as_www_data,
    daemon,
    daemon_result,
    no_process_with,
    shared_dir,
    signalled_while_loading,
    traversable_dir,
    wait_until,
)
from wizard_runner import api
from wizard_runner import daemon as daemon_module
from wizard_runner import runner as runner_module
from wizard_runner import spool as spool_module
from wizard_runner.cli import main
from wizard_runner.daemon import (
    CLOSED,
    Daemon,
    DaemonSettings,
    StopFlag,
    install_daemon_signals,
)
from wizard_runner.errors import (
    ApplyError,
    LockedError,
    RunInterrupted,
    RunnerIOError,
    UsageError,
)
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.log import make_logger
from wizard_runner.preflight import prepare as prepare_run
from wizard_runner.result import RunResult, RunStatus, SystemConfResult, now
from wizard_runner.runuser import resolve_user
from wizard_runner.spool import (
    Spool,
    close_spool,
    closed_marker,
    daemon_serving,
    find_answer,
    prepare,
    reopen_spool,
    spool_closed,
    wait_result,
    write_result,
)
from wizard_runner.state import Unfinished, unfinished_run
from wizard_runner.state import write_result as write_last_result

SCRIPT = Path(sys.executable).parent / "wizard-runner"
MODULE = [sys.executable, "-m", "wizard_runner"]
EXAMPLE = EXAMPLES / "wizard.json"
INJECT = REPO / "tests" / "inject"


@pytest.fixture
def root(script_root: Path) -> Path:
    """A traversable root seeded with Debian's files and an empty wizard.d."""
    return seed_root(script_root)


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


# --- the daemon's bookkeeping, in-process ------------------------------------------------------


@dataclass
class Served:
    """A Daemon object on a tmp root (not started: tests call its passes) and its log."""

    daemon: Daemon
    logs: io.StringIO

    @property
    def spool(self) -> Spool:
        """Its spool."""
        return self.daemon.spool

    @property
    def layout(self) -> Layout:
        """Its root's layout."""
        return self.daemon.settings.layout

    def events(self, name: str) -> list[dict[str, Any]]:
        """The logged events called `name`."""
        found = [json.loads(line) for line in self.logs.getvalue().splitlines()]
        return [event for event in found if event.get("event") == name]

    def request(self, request_id: str, body: dict[str, Any]) -> None:
        """Drop a request as the test's own user (root, or the run user when not root)."""
        self.spool.request_path(request_id).write_text(json.dumps(body))

    def answer(self, request_id: str) -> dict[str, Any]:
        """The stored answer of a request."""
        data: dict[str, Any] = json.loads(self.spool.result_path(request_id).read_text())
        return data


@pytest.fixture
def served(tmp_path: Path) -> Served:
    """A prepared spool and a Daemon serving it, without its watcher loop."""
    return serving(tmp_path / "root")


def serving(root: Path) -> Served:
    """A prepared spool under `root` and a Daemon serving it, without its watcher loop."""
    (root / "etc").mkdir(parents=True)  # a system tree, if an empty one
    settings = DaemonSettings(layout=Layout(root), user=resolve_user(USER),
                              stream=io.StringIO(), json_logs=True)
    logs = io.StringIO()
    found = Daemon(settings, make_logger(logs, json_lines=True))
    prepare(found.spool, settings.user.gid)
    return Served(found, logs)


@pytest.fixture
def quick(body: dict[str, Any]) -> dict[str, Any]:
    """A body whose run touches no system file and runs no script: no child process."""
    body["handle_system_conf"] = False
    body["run_scripts"] = False
    return body


def raising(error: BaseException) -> Callable[..., Any]:
    """A stand-in that raises `error` whatever it is called with."""

    def fail(*_args: object, **_kwargs: object) -> Any:
        raise error

    return fail


ENOSPC = errno.ENOSPC
NO_SPACE = os.strerror(ENOSPC)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        pytest.param(OSError(ENOSPC, NO_SPACE, "/var/log/wizard-runner/wizard-runner.log"), 74,
                     "the request could not be served: /var/log/wizard-runner/wizard-runner.log:"
                     f" {NO_SPACE}", id="oserror"),
        pytest.param(RunnerIOError(f"the run's log could not be written: {NO_SPACE}"), 74,
                     f"the run's log could not be written: {NO_SPACE}", id="runner-io-error"),
        pytest.param(ApplyError("/etc/hosts: cannot replace"), 73, "/etc/hosts: cannot replace",
                     id="apply-error"),
        pytest.param(UsageError("--root /x: not an existing directory"), 2,
                     "--root /x: not an existing directory", id="usage-error"),
        pytest.param(ValueError("boom"), 70, "internal error while serving the request "
                     "(ValueError: boom); the daemon's log has the details", id="bug"),
    ],
)
def test_whatever_execute_raises_is_answered(served: Served, quick: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch,
                                             error: BaseException, code: int,
                                             reason: str) -> None:
    """An exception of any kind out of the run gives a `failed` answer with the reason; the
    daemon serves the next request."""
    monkeypatch.setattr(daemon_module, "execute", raising(error))
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.request("20261125T000002Z-aaaaaaaaaaa2", quick)
    served.daemon.serve_pending()
    for request_id in ("20261125T000001Z-aaaaaaaaaaa1", "20261125T000002Z-aaaaaaaaaaa2"):
        found = served.answer(request_id)
        assert (found["status"], found["exit_code"], found["reason"]) == ("failed", code, reason)
        assert found["problems"] == []
    assert os.listdir(served.spool.processing) == []


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_ends_the_daemons_waits_at_once() -> None:
    """The daemon's waits (for a manual run's lock, after a watcher failure) end within a
    moment of SIGTERM; its handler sets the flag without a lock the wait might hold."""
    flag = StopFlag()
    install_daemon_signals(flag)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    timer.start()
    assert flag.wait(30) is True
    timer.join()
    assert time.monotonic() - started < 5
    assert StopFlag().wait(0.05) is False  # unset: the whole timeout


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_before_a_later_run_begins_keeps_it_from_running(
    served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM as the daemon's second request is prepared (the first run's settled outcome
    is long over): that run does not begin, the request is answered interrupted."""
    install_daemon_signals(served.daemon.settings.stop)
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.daemon.serve_pending()
    assert served.answer("20261125T000001Z-aaaaaaaaaaa1")["status"] == "succeeded"
    reopen_spool(served.layout)  # a success closes it

    def prepare_then_signal(*args: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return prepare_run(*args)

    monkeypatch.setattr(runner_module, "prepare", prepare_then_signal)
    served.request("20261125T000002Z-aaaaaaaaaaa2", quick)
    with pytest.raises(RunInterrupted):  # answered, then the daemon ends
        served.daemon.serve_pending()
    found = served.answer("20261125T000002Z-aaaaaaaaaaa2")
    assert (found["status"], found["exit_code"]) == ("interrupted", 143)
    assert found.get("result") is None  # no run began
    assert served.daemon.settings.stop.is_set()


@pytest.mark.parametrize(
    ("target", "what"),
    [
        pytest.param("state.atomic_replace", "config.json", id="saved-config"),
        pytest.param("log.open_log_file", "wizard-runner.log", id="run-log"),
        pytest.param("state.write_result", "last-run.json", id="run-result"),
    ],
)
def test_the_runs_own_files_failing_is_answered(served: Served, quick: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch, target: str,
                                                what: str) -> None:
    """ENOSPC on the saved config, the run's log or its result (a real run otherwise) gives a
    `failed` answer naming the file and the reason."""
    path = served.layout.state_dir / what
    failure: Exception = OSError(ENOSPC, NO_SPACE, str(path))
    if target == "state.write_result":  # the saved config goes through atomic_replace too
        failure = RunnerIOError(f"{path}: cannot store the run's result: {NO_SPACE}")
        target = "runner.write_result"
    monkeypatch.setattr(f"wizard_runner.{target}", raising(failure))
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.daemon.serve_pending()
    found = served.answer("20261125T000001Z-aaaaaaaaaaa1")
    assert found["status"] == "failed"
    assert found["exit_code"] == 74
    assert what in found["reason"]
    assert NO_SPACE in found["reason"]
    assert os.listdir(served.spool.processing) == []


def failing_answers(monkeypatch: pytest.MonkeyPatch, request_id: str, times: int) -> list[int]:
    """Make writing `request_id`'s answer fail with ENOSPC `times` times; the list counts the
    attempts."""
    attempts: list[int] = []
    real = write_result

    def write(spool: Spool, found_id: str, record: dict[str, Any], group: int) -> Path:
        if found_id == request_id:
            attempts.append(1)
            if len(attempts) <= times:
                raise OSError(ENOSPC, NO_SPACE, str(spool.result_path(found_id)))
        return real(spool, found_id, record, group)

    monkeypatch.setattr(daemon_module, "write_result", write)
    return attempts


def test_an_answer_that_cannot_be_written_is_retried(served: Served, quick: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     reliability: Reliability) -> None:
    """A full disk when answering: the request stays in processing/, the log says so, the
    next request is served, and the answer is written on a later pass, once."""
    first, second = "20261125T000001Z-aaaaaaaaaaa1", "20261125T000002Z-aaaaaaaaaaa2"
    attempts = failing_answers(monkeypatch, first, times=3)
    served.request(first, quick)
    served.request(second, quick)
    served.daemon.serve_pending()
    assert os.listdir(served.spool.processing) == [f"{first}.json"]
    assert not served.spool.result_path(first).exists()
    [logged] = served.events("answer_not_written")
    assert logged["request_id"] == first
    assert logged["error"] == f"{served.spool.result_path(first)}: {NO_SPACE}"
    assert served.answer(second)["status"] == "rejected"  # served (the first closed the spool)
    for _ in range(2):
        served.daemon.serve_pending()  # a tick: the retry fails again
        assert not served.spool.result_path(first).exists()
    served.daemon.serve_pending()
    assert served.answer(first)["status"] == "succeeded"
    assert os.listdir(served.spool.processing) == []
    assert len(served.events("answer_not_written")) == 1  # not once a second
    assert [e["request_id"] for e in served.events("answer_written")] == [first]
    served.daemon.serve_pending()
    ok = len(attempts) == 4 and served.daemon.unanswered == {}
    reliability.record(area="daemon", fault="ENOSPC writing an answer",
                       injection="done/ID.json fails with ENOSPC 3 times, another request "
                       "waiting", trials=4, lost=0 if ok else 1,
                       outcome="request kept in processing/, `answer_not_written` logged once, "
                       "the other request served, the answer written on the 4th pass")
    assert ok, attempts


def test_a_waiting_submitter_gets_the_answer_kept_under_run(
        quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A full /var as the answer is due: a submitter waiting (the run user, when root) gets
    it from where the daemon keeps it under /run, which only root and the run user's group
    may read; once done/ has it, the kept copy goes."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    with traversable_dir() as base:
        served = serving(base / "root")
        failing_answers(monkeypatch, request_id, times=1)
        served.request(request_id, quick)
        served.daemon.serve_pending()
        assert not served.spool.result_path(request_id).exists()
        kept = served.spool.kept_path(request_id)
        if os.geteuid() == 0:
            info, folder = kept.stat(), kept.parent.stat()
            assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, 33)
            assert (stat.S_IMODE(folder.st_mode), folder.st_gid) == (0o750, 33)
            found = as_www_data(lambda: wait_result(served.spool, request_id, 5))["value"]
        else:
            found = wait_result(served.spool, request_id, 5)
        assert (found["request_id"], found["status"]) == (request_id, "succeeded")
        served.daemon.serve_pending()  # /var has room again
        assert served.answer(request_id) == found
        assert not kept.exists()


def test_a_stop_with_an_answer_pending_leaves_it_for_the_restart(
        served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer still unwritten when the daemon stops is given by the next daemon, from the
    run's stored result: never lost, never run again."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    failing_answers(monkeypatch, request_id, times=1000)
    served.request(request_id, quick)
    served.daemon.serve_pending()
    run_id = json.loads(served.layout.last_run.read_text())["run_id"]
    monkeypatch.undo()
    restarted = Daemon(served.daemon.settings, served.daemon.log)
    restarted.recover()
    found = served.answer(request_id)
    assert (found["status"], found["result"]["run_id"]) == ("succeeded", run_id)
    assert os.listdir(served.spool.processing) == []


def test_a_success_unrecorded_on_a_full_var_is_still_known_after_a_restart(
        served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """/var full as a run succeeds: neither its result, nor the answer, nor the closing of the
    spool can be written, and the daemon stops. The next daemon gives the answer as it was
    kept under /run (failed, 74, with the run's result), and closes the spool: the body
    cannot run a second time."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    failing_answers(monkeypatch, request_id, times=1000)
    monkeypatch.setattr("wizard_runner.runner.write_result",
                        raising(RunnerIOError(f"last-run.json: {NO_SPACE}")))
    monkeypatch.setattr(daemon_module, "close_spool", raising(OSError(ENOSPC, NO_SPACE)))
    served.request(request_id, quick)
    served.daemon.serve_pending()
    assert not served.layout.last_run.exists()
    assert not spool_closed(served.layout)
    monkeypatch.undo()
    restarted = Daemon(served.daemon.settings, served.daemon.log)
    restarted.recover()
    found = served.answer(request_id)
    assert (found["status"], found["exit_code"]) == ("failed", 74)
    assert found["result"]["status"] == "succeeded"
    assert spool_closed(served.layout)
    assert os.listdir(served.spool.processing) == []
    assert os.listdir(served.layout.run_dir / "unwritten") == []


def test_a_request_named_like_the_kept_closing_cannot_undo_it(
        served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """/var full as a run succeeds: the closing of the spool is kept under /run. A request
    the run user names `closing`, whose answer is kept there too for a while, does not take
    the closing's place: after a restart the spool is still closed, nothing runs twice."""
    monkeypatch.setattr(daemon_module, "close_spool", raising(OSError(ENOSPC, NO_SPACE)))
    failing_answers(monkeypatch, "closing", times=1)
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.request("closing", quick)
    served.daemon.serve_pending()  # the first succeeds; `closing` is rejected, its answer kept
    served.daemon.serve_pending()  # ... then written, its kept copy dropped
    assert served.answer("closing")["status"] == "rejected"
    restarted = Daemon(served.daemon.settings, served.daemon.log)  # /var is still full
    restarted.recover()
    served.request("20261125T000003Z-aaaaaaaaaaa3", quick)
    restarted.serve_pending()
    assert served.answer("20261125T000003Z-aaaaaaaaaaa3")["reason"] == CLOSED


def test_an_answer_is_kept_under_run_once_run_has_room(
        served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """/var and /run both full as the answer is due: once /run has room (/var still full),
    the answer is kept there, and a waiting submitter gets it."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    failing_answers(monkeypatch, request_id, times=1000)
    keep, attempts = spool_module.keep_answer, []

    def run_full(*args: Any) -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise OSError(ENOSPC, NO_SPACE)
        keep(*args)

    monkeypatch.setattr(daemon_module, "keep_answer", run_full)
    served.request(request_id, quick)
    for _ in range(2):
        served.daemon.serve_pending()
        assert find_answer(served.spool, request_id) is None
    served.daemon.serve_pending()  # /run has room
    assert wait_result(served.spool, request_id, 5)["status"] == "succeeded"
    served.daemon.serve_pending()
    assert len(attempts) == 3  # kept once: not rewritten on every pass


def test_reopen_refuses_while_a_closing_waits_under_run(served: Served, quick: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A closing the daemon keeps under /run (a full /var): reopen says so instead of
    reporting the spool open, which the daemon would close again once /var has room."""
    monkeypatch.setattr(daemon_module, "close_spool", raising(OSError(ENOSPC, NO_SPACE)))
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.daemon.serve_pending()
    err = io.StringIO()
    assert main(["reopen", "--root", str(served.layout.root)], stdout=io.StringIO(),
                stderr=err) == 74
    assert "the daemon closed the spool after a successful run but cannot write this yet " \
        "(is /var full?" in err.getvalue()
    monkeypatch.undo()
    served.daemon.serve_pending()  # /var has room: the closing is written, the kept one goes
    assert main(["reopen", "--root", str(served.layout.root)], stdout=io.StringIO(),
                stderr=io.StringIO()) == 0
    assert not spool_closed(served.layout)


def test_recovery_keeps_an_existing_answer(served: Served) -> None:
    """Killed after answering, before removing the request: the answer is left as it is."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    write_result(served.spool, request_id, {"request_id": request_id, "status": "succeeded",
                                            "exit_code": 0}, served.daemon.settings.user.gid)
    stored = served.spool.result_path(request_id).read_bytes()
    (served.spool.processing / f"{request_id}.json").write_text("{}")
    served.daemon.recover()
    assert served.spool.result_path(request_id).read_bytes() == stored
    assert os.listdir(served.spool.processing) == []
    assert [e["request_id"] for e in served.events("request_already_answered")] == [request_id]


def stored_run(layout: Layout, request_id: str | None, status: str = "succeeded",
               exit_code: int = 0) -> dict[str, Any]:
    """Write a last-run.json as a run serving `request_id` leaves it; return its data."""
    at = now()
    stored = RunResult("20261125T000000Z-0123abcd", at, at, RunStatus(status), exit_code,
                       SystemConfResult(False), request_id=request_id)
    write_last_result(layout, stored)
    return stored.to_dict()


def test_recovery_answers_with_the_stored_run(served: Served) -> None:
    """Killed between storing the run's result and answering: that result is the answer, and
    a success closes the spool."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    stored = stored_run(served.layout, request_id)
    (served.spool.processing / f"{request_id}.json").write_text("{}")
    served.daemon.recover()
    found = served.answer(request_id)
    assert (found["status"], found["exit_code"], found["result"]) == ("succeeded", 0, stored)
    assert found["submitted_by"] == os.geteuid()
    assert spool_closed(served.layout)
    assert os.listdir(served.spool.processing) == []


@pytest.mark.parametrize("last", [None, "20261125T000009Z-other0000000"],
                         ids=["no-run-stored", "another-request"])
def test_recovery_without_its_run_says_interrupted(served: Served, last: str | None) -> None:
    """Killed before its run stored a result: `interrupted`, saying it may have partly run;
    the spool stays open."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    if last is not None:
        stored_run(served.layout, last)
    (served.spool.processing / f"{request_id}.json").write_text("{}")
    served.daemon.recover()
    found = served.answer(request_id)
    assert (found["status"], found["exit_code"]) == ("interrupted", 143)
    assert "it may have partly run, and was not run again" in found["reason"]
    assert not spool_closed(served.layout)


def test_a_success_closes_the_spool(served: Served, quick: dict[str, Any],
                                    body: dict[str, Any]) -> None:
    """After a request's run succeeds, the next is rejected unrun (exit 77, empty problems),
    even an invalid one; once reopened, one runs again."""
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.daemon.serve_pending()
    assert served.answer("20261125T000001Z-aaaaaaaaaaa1")["status"] == "succeeded"
    assert json.loads(closed_marker(served.layout).read_text())["request_id"] == (
        "20261125T000001Z-aaaaaaaaaaa1")
    run_id = json.loads(served.layout.last_run.read_text())["run_id"]
    served.request("20261125T000002Z-aaaaaaaaaaa2", quick)
    served.request("20261125T000003Z-aaaaaaaaaaa3", dict(quick, license=False))
    served.daemon.serve_pending()
    for request_id in ("20261125T000002Z-aaaaaaaaaaa2", "20261125T000003Z-aaaaaaaaaaa3"):
        found = served.answer(request_id)
        assert (found["status"], found["exit_code"], found["reason"], found["problems"],
                found["result"]) == ("rejected", 77, CLOSED, [], None)
    assert json.loads(served.layout.last_run.read_text())["run_id"] == run_id  # not run
    closed_marker(served.layout).unlink()
    served.request("20261125T000004Z-aaaaaaaaaaa4", quick)
    served.daemon.serve_pending()
    assert served.answer("20261125T000004Z-aaaaaaaaaaa4")["status"] == "succeeded"


def test_a_run_whose_result_cannot_be_stored_is_answered_with_it_and_closes_the_spool(
    served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run succeeded but last-run.json could not be written: the answer says failed (74)
    and why, carries what the run did, and the spool closes all the same, so the next request
    is rejected, never run a second time; status sees that run ended unstored."""
    monkeypatch.setattr(runner_module, "write_result", raising(RunnerIOError(
        f"last-run.json: cannot store the run's result: {NO_SPACE}")))
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.daemon.serve_pending()
    found = served.answer("20261125T000001Z-aaaaaaaaaaa1")
    assert (found["status"], found["exit_code"]) == ("failed", 74)
    assert NO_SPACE in found["reason"]
    assert found["result"]["status"] == "succeeded"
    assert spool_closed(served.layout)
    served.request("20261125T000002Z-aaaaaaaaaaa2", quick)
    served.daemon.serve_pending()
    assert served.answer("20261125T000002Z-aaaaaaaaaaa2")["exit_code"] == 77
    assert unfinished_run(served.layout) == Unfinished(  # (quick: no file to write, no script)
        os.getpid(), found["result"]["run_id"], running=False, ended=True, no_system=True,
        no_scripts=True)


def test_a_request_waiting_for_the_lock_says_why_once(served: Served, quick: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run holds the lock: the daemon logs once that the request waits for it, and
    why (the holder), then runs it when the lock is free."""
    calls: list[int] = []

    def locked_twice(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise LockedError("another wizard-runner run (pid 4242) holds the lock")
        return runner_module.execute(*args, **kwargs)

    monkeypatch.setattr(daemon_module, "execute", locked_twice)
    monkeypatch.setattr(daemon_module, "LOCK_RETRY", 0.01)
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.daemon.serve_pending()
    assert served.answer("20261125T000001Z-aaaaaaaaaaa1")["status"] == "succeeded"
    assert [e["reason"] for e in served.events("request_waits_for_lock")] == [
        "another wizard-runner run (pid 4242) holds the lock"]


def test_a_request_the_daemon_stops_before_it_runs_goes_back_for_the_next(
        served: Served, quick: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while its request waits for the lock (a package upgrade holds it until the run
    in progress ends, then stops the daemon): the request goes back to incoming/, unanswered,
    and the next daemon runs it."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"

    def locked(*_args: Any, **_kwargs: Any) -> Any:
        served.daemon.settings.stop.set()
        raise LockedError("another wizard-runner run (pid 4242) holds the lock")

    monkeypatch.setattr(daemon_module, "execute", locked)
    served.request(request_id, quick)
    served.daemon.serve_pending()
    assert served.spool.request_path(request_id).is_file()
    assert os.listdir(served.spool.processing) == []
    assert not served.spool.result_path(request_id).exists()
    assert len(served.events("request_returned")) == 1
    monkeypatch.undo()
    after = serving_again(served)
    after.daemon.recover()
    after.daemon.serve_pending()
    assert after.answer(request_id)["status"] == "succeeded"


def serving_again(served: Served) -> Served:
    """A new daemon on the same root, as after a restart."""
    settings = dataclasses.replace(served.daemon.settings, stop=StopFlag())
    logs = io.StringIO()
    return Served(Daemon(settings, make_logger(logs, json_lines=True)), logs)


def test_a_failed_run_leaves_the_spool_open(served: Served, quick: dict[str, Any]) -> None:
    """Only a success closes the spool: a failed run can be corrected and resubmitted."""
    served.request("20261125T000001Z-aaaaaaaaaaa1", dict(quick, run_scripts=True))
    served.layout.wizard_d.parent.mkdir(parents=True)  # no wizard.d: exit 66, no process
    served.daemon.serve_pending()
    assert served.answer("20261125T000001Z-aaaaaaaaaaa1")["exit_code"] == 66
    assert not spool_closed(served.layout)


def test_closing_that_cannot_be_written_still_closes(served: Served, quick: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A marker that cannot be written yet: requests are rejected meanwhile, and it is written
    on a later pass."""
    monkeypatch.setattr(daemon_module, "close_spool",
                        raising(OSError(ENOSPC, NO_SPACE, str(closed_marker(served.layout)))))
    served.request("20261125T000001Z-aaaaaaaaaaa1", quick)
    served.request("20261125T000002Z-aaaaaaaaaaa2", quick)
    served.daemon.serve_pending()
    assert served.answer("20261125T000002Z-aaaaaaaaaaa2")["reason"] == CLOSED
    assert len(served.events("spool_not_closed")) == 1
    monkeypatch.setattr(daemon_module, "close_spool", close_spool)
    served.daemon.serve_pending()
    assert spool_closed(served.layout)
    assert served.daemon.closing is None


def test_invalid_bodies_from_the_run_user_list_their_problems(served: Served,
                                                              quick: dict[str, Any]) -> None:
    """A rejected body's answer carries its problems (the submitter's own data)."""
    served.request("20261125T000001Z-aaaaaaaaaaa1", dict(quick, license=False))
    os.chown(served.spool.request_path("20261125T000001Z-aaaaaaaaaaa1"),
             served.daemon.settings.user.uid, -1)
    served.daemon.serve_pending()
    found = served.answer("20261125T000001Z-aaaaaaaaaaa1")
    assert found["status"] == "rejected"
    assert found["problems"] == ["license: must be true: the license has to be accepted"]
    assert found["submitted_by"] == served.daemon.settings.user.uid


def test_a_reused_id_never_replaces_an_answer(served: Served, quick: dict[str, Any]) -> None:
    """A request named after one already answered is dropped: the first answer stays."""
    request_id = "20261125T000001Z-aaaaaaaaaaa1"
    write_result(served.spool, request_id, {"status": "succeeded"}, 0)
    stored = served.spool.result_path(request_id).read_bytes()
    served.request(request_id, quick)
    served.daemon.serve_pending()
    assert served.spool.result_path(request_id).read_bytes() == stored
    assert os.listdir(served.spool.incoming) == []
    assert not served.layout.last_run.exists()
    assert len(served.events("request_id_taken")) == 1


def test_reopen_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wizard-runner reopen` as anyone but root: exit 77, the spool stays closed."""
    close_spool(Layout(tmp_path), "r1", "run1")
    monkeypatch.setattr("wizard_runner.cli.os.geteuid", lambda: 33)
    out, err = io.StringIO(), io.StringIO()
    assert main(["reopen", "--root", str(tmp_path)], stdout=out, stderr=err) == 77
    assert err.getvalue() == ("wizard-runner: wizard-runner reopen: run it as root (only root "
                              "may let the wizard be run again)\n")
    assert spool_closed(Layout(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_reopen(tmp_path: Path) -> None:
    """`wizard-runner reopen` reopens a closed spool, and says when it was not closed."""
    close_spool(Layout(tmp_path), "r1", "run1")
    outputs = []
    for _ in range(2):
        out = io.StringIO()
        assert main(["reopen", "--root", str(tmp_path)], stdout=out,
                        stderr=io.StringIO()) == 0
        outputs.append(out.getvalue())
    assert outputs == ["spool reopened\n", "spool was not closed\n"]
    assert not spool_closed(Layout(tmp_path))


# --- the daemon as a real process ---------------------------------------------------------------

@pytest.mark.processes
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


@pytest.mark.processes
def test_submit_through_the_api_and_a_failing_script(root: Path, body: dict[str, Any]) -> None:
    """api.submit(wait=True) returns the record; a failed script gives exit 1 and its output."""
    wizard_d = root / "etc/xivo/wizard.d"
    (wizard_d / "10-fail").write_text("#!/bin/sh\necho 'provd down' >&2\nexit 5\n")
    (wizard_d / "10-fail").chmod(0o755)
    body["run_scripts"] = True
    with daemon(root):
        request_id = api.submit(body, root=root)
        assert isinstance(request_id, str)
        record = daemon_result(root, request_id)
        waited = api.submit(body, root=root, wait=True, timeout=60)
    assert record["status"] == "failed"
    assert record["exit_code"] == 1
    assert record["result"]["scripts"][0]["output_tail"] == "provd down"
    assert isinstance(waited, dict)
    assert waited["exit_code"] == 1


@pytest.mark.processes
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
        record = daemon_result(root, request_id)
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


@pytest.mark.processes
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
            record = daemon_result(root, request_id)
            assert record["status"] == "rejected", request_id
            assert reason in record["reason"], (request_id, record["reason"])
            assert record["result"] is None
        assert "hunter2" not in daemon_result(root, "20261125T000008Z-aaaaaaaaaaa8")["reason"]
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


@pytest.mark.processes
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
        wait_until((ran / "count").exists, what="the script to start")
        process.kill()
        process.wait(timeout=10)
    subprocess.run(["pkill", "-f", marker], check=False)
    with daemon(root):
        record = daemon_result(root, request_id)
    assert record["status"] == "interrupted"
    assert "it may have partly run, and was not run again" in record["reason"]
    assert (ran / "count").read_text() == "x\n"
    reliability.record(area="daemon", fault="SIGKILL mid-run", injection="kill -9 the daemon "
                       "while a script runs, then restart it", trials=1, lost=0,
                       outcome="the request answered `interrupted`, not run twice")


@pytest.mark.processes
def test_a_stop_while_the_daemon_starts_ends_it(root: Path) -> None:
    """SIGTERM while `serve` loads its modules (systemd stopping a unit that is starting):
    the daemon ends, having served nothing, instead of serving on."""
    done = subprocess.run([*signalled_while_loading("wizard_runner.daemon", signal.SIGTERM),
                           "serve", "--root", str(root), "--user", USER, "--log-format",
                           "json"], capture_output=True, text=True, timeout=60, check=False)
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert done.returncode == 0, done.stderr
    assert events[-1] == "daemon_exit"
    assert "daemon_stopped" in events


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stop_signal_during_a_run(root: Path, body: dict[str, Any],
                                  reliability: Reliability, signum: int) -> None:
    """SIGTERM or SIGHUP stops the daemon within seconds and cleanly; the running request is
    answered interrupted."""
    marker = f"sleep 9{os.getpid() % 1000}{signum}"
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
        wait_until((ran / "started").exists, what="the script to start")
        started = time.monotonic()
        process.send_signal(signum)
        process.wait(timeout=20)
        assert time.monotonic() - started < 10
        assert process.returncode == 0
    record = daemon_result(root, request_id, timeout=5)
    assert record["status"] == "interrupted"
    assert record["exit_code"] == 128 + signum
    assert record["result"]["scripts"][0]["status"] == "failed"
    assert no_process_with(marker)
    assert os.listdir(Spool.of(Layout(root)).processing) == []
    name = signal.Signals(signum).name
    how = "systemctl stop (SIGTERM)" if signum == signal.SIGTERM else "SIGHUP (a closed terminal)"
    reliability.record(area="daemon", fault=f"{name} mid-run", injection=f"{how} while a "
                       "script runs", trials=1, lost=0,
                       outcome="stopped within seconds; script tree gone; `interrupted`")


@pytest.mark.processes
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
        record = daemon_result(root, request_id)
    assert record["status"] == "succeeded"
    started = record["result"]["started_at"]
    assert datetime.fromisoformat(started).timestamp() >= released


@pytest.mark.processes
def test_a_stop_while_a_request_waits_for_the_lock_ends_the_daemon_cleanly(
    root: Path, body: dict[str, Any]
) -> None:
    """SIGTERM while a claimed request waits for a manual run's lock: the request goes back
    to incoming/ unanswered (it never began), and the daemon exits 0 as on any stop, saying
    nothing more; the next daemon runs it once the lock is free."""
    log = root / "daemon.log"
    spool = Spool.of(Layout(root))
    lock = RunLock(Layout(root).lock_file)
    lock.acquire()
    try:
        with daemon(root) as process:
            request_id = api.submit(body, root=root)
            assert isinstance(request_id, str)
            wait_until(lambda: not list(spool.incoming.iterdir()), what="the claim")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        assert spool.request_path(request_id).is_file()
        assert not spool.result_path(request_id).exists()
    finally:
        lock.release()
    assert "request_returned" in log.read_text()
    assert "too late" not in log.read_text()
    with daemon(root):
        assert daemon_result(root, request_id)["status"] == "succeeded"


@pytest.mark.processes
def test_requests_waiting_at_start_are_served(root: Path, body: dict[str, Any]) -> None:
    """Requests dropped while the daemon was down are run when it starts."""
    Spool.of(Layout(root)).incoming.mkdir(parents=True)
    request_id = api.submit(body, root=root)
    assert isinstance(request_id, str)
    with daemon(root):
        assert daemon_result(root, request_id)["status"] == "succeeded"


@pytest.mark.processes
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


@pytest.mark.processes
def test_second_daemon_is_refused(root: Path) -> None:
    """Only one daemon serves a root: a second one exits 75 naming the first."""
    with daemon(root) as first:
        second = cli("serve", "--root", str(root), "--user", USER)
        assert second.returncode == 75
        assert f"another wizard-runner serve (pid {first.pid})" in second.stderr


@pytest.mark.processes
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
        record = daemon_result(root, "20261125T000010Z-bbbbbbbbbbbb")
        assert record["status"] == "rejected"
        good = api.submit(body, root=root, wait=True, timeout=60)
        assert isinstance(good, dict)
        assert good["status"] == "succeeded"
        wait_until(lambda: os.listdir(incoming) == [], what="incoming/ to be cleared")
        assert process.poll() is None


def prepared(root: Path) -> Spool:
    """The spool as the daemon prepares it, with no daemon serving."""
    spool = Spool.of(Layout(root))
    prepare(spool, resolve_user(USER).gid)
    return spool


def paused_at(step: str, handshake: Path) -> dict[str, str]:
    """The environment that makes a daemon stop at `step` (see tests/inject/sitecustomize.py)."""
    return {**os.environ, "PYTHONPATH": str(INJECT), "WIZARD_TEST_PAUSE": step,
            "WIZARD_TEST_HANDSHAKE": str(handshake)}


@pytest.mark.processes
def test_crash_at_each_step_of_answering(root: Path, body: dict[str, Any],
                                         reliability: Reliability) -> None:
    """A real daemon killed (SIGKILL) after the claim, after the run stored its result, or after
    the answer was written, then restarted: one answer each, the right one; nothing run
    twice, an existing answer kept byte for byte."""
    shared = shared_dir(root)
    wizard_d = root / "etc/xivo/wizard.d"
    (wizard_d / "10-count").write_text(f"#!/bin/sh\necho x >> {shared}/count\n")
    (wizard_d / "10-count").chmod(0o755)
    body["run_scripts"] = True
    expected = {"claimed": ("interrupted", 0), "run_stored": ("succeeded", 1),
                "answered": ("succeeded", 1)}
    spool = Spool.of(Layout(root))
    failures: list[str] = []
    for step, (status, runs) in expected.items():
        reopen_spool(Layout(root))
        (shared / "count").unlink(missing_ok=True)
        handshake = root / f"paused-{step}"
        with daemon(root, env=paused_at(step, handshake), command=MODULE) as process:
            request_id = api.submit(body, root=root)
            assert isinstance(request_id, str)
            wait_until(handshake.exists, what=f"the daemon to pause at {step}")
            process.kill()
            process.wait(timeout=10)
        answer = spool.result_path(request_id)
        before = answer.read_bytes() if answer.exists() else None
        assert (before is not None) == (step == "answered")
        with daemon(root):
            record = daemon_result(root, request_id)
        counted = (shared / "count").read_text().count("x") if (shared / "count").exists() else 0
        if (record["status"], counted) != (status, runs) or os.listdir(spool.processing) or (
                before is not None and answer.read_bytes() != before):
            failures.append(f"{step}: {record['status']}, run {counted} times")
    reliability.record(area="daemon", fault="crash at each step of answering",
                       injection="SIGKILL of a real daemon held by a handshake after the claim, "
                       "after the run stored its result, after the answer was written; then "
                       "a restart", trials=len(expected), lost=len(failures),
                       outcome="one answer each: `interrupted` (not run), the stored result, "
                       "the existing answer kept byte for byte; nothing run twice")
    assert failures == []


@pytest.mark.processes
def test_wait_without_a_daemon_withdraws(root: Path) -> None:
    """`submit --wait` with no daemon and no --timeout exits 69 within seconds; the request is
    withdrawn, nothing will run it."""
    spool = prepared(root)
    started = time.monotonic()
    done = cli("submit", "--config", str(EXAMPLE), "--root", str(root), "--wait", "--json")
    assert time.monotonic() - started < 15
    assert done.returncode == 69, done.stderr
    record = json.loads(done.stdout)
    assert (record["status"], record["exit_code"]) == ("withdrawn", 69)
    assert done.stderr == (f"wizard-runner: no daemon is serving {spool.base}: request "
                           f"{record['request_id']} withdrawn, nothing was run (start "
                           "wizard-runnerd)\n")
    assert os.listdir(spool.incoming) == []


@pytest.mark.processes
def test_wait_when_the_daemon_dies_after_the_claim(root: Path) -> None:
    """A daemon killed once it claimed the request: the waiting client exits 69 saying where
    the answer will be; the restarted daemon puts it there."""
    handshake = root / "paused"
    with daemon(root, env=paused_at("claimed", handshake), command=MODULE) as process:
        client = subprocess.Popen(
            [str(SCRIPT), "submit", "--config", str(EXAMPLE), "--root", str(root), "--wait",
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(handshake.exists, what="the claim")
        process.kill()
        process.wait(timeout=10)
        out, err = client.communicate(timeout=60)
    assert client.returncode == 69, err
    record = json.loads(out)
    answer = Spool.of(Layout(root)).result_path(record["request_id"])
    assert (record["status"], record["answer"]) == ("claimed", str(answer))
    assert err.endswith(f"its answer will be in {answer} once a daemon serves again\n")
    with daemon(root):
        assert daemon_result(root, record["request_id"])["status"] == "interrupted"


@pytest.mark.processes
def test_a_timed_out_request_is_never_run(root: Path) -> None:
    """`--timeout 0.5` with no daemon: withdrawn; a daemon started later does not run it."""
    spool = prepared(root)
    done = cli("submit", "--config", str(EXAMPLE), "--root", str(root), "--wait", "--timeout",
               "0.5", "--json")
    assert done.returncode == 69, done.stderr
    record = json.loads(done.stdout)
    request_id = record["request_id"]
    assert record["status"] == "withdrawn"
    assert done.stderr == (f"wizard-runner: no answer to request {request_id} within 0.5 s: "
                           f"request {request_id} withdrawn, nothing was run\n")
    with daemon(root):
        # A later request (by name) answered means the daemon's pass has looked at incoming/.
        drop(root, "99991231T235959Z-ffffffffffff.json", b"{not json", owner=os.geteuid())
        assert daemon_result(root, "99991231T235959Z-ffffffffffff")["status"] == "rejected"
    assert os.listdir(spool.done) == ["99991231T235959Z-ffffffffffff.json"]
    assert not Layout(root).last_run.exists()


@pytest.mark.processes
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                              (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_while_waiting_withdraws(root: Path, signum: int, code: int) -> None:
    """Ctrl-C, SIGTERM or SIGHUP to `submit --wait`: no traceback, the request withdrawn, a
    JSON record, exit 128 + the signal."""
    spool = prepared(root)
    client = subprocess.Popen(
        [str(SCRIPT), "submit", "--config", str(EXAMPLE), "--root", str(root), "--wait",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any(name.endswith(".json") for name in os.listdir(spool.incoming)),
             what="the request")
    client.send_signal(signum)
    out, err = client.communicate(timeout=30)
    assert client.returncode == code, err
    assert "Traceback" not in err
    record = json.loads(out)
    assert (record["status"], record["exit_code"]) == ("withdrawn", code)
    assert err == (f"wizard-runner: interrupted by {signal.Signals(signum).name}: request "
                   f"{record['request_id']} withdrawn, nothing was run\n")
    assert os.listdir(spool.incoming) == []


@pytest.mark.processes
def test_submit_without_a_daemon_warns_and_queues(root: Path) -> None:
    """Without --wait, a missing daemon is a warning: the request stays queued for it."""
    spool = prepared(root)
    done = cli("submit", "--config", str(EXAMPLE), "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record == {"request_id": record["request_id"], "daemon_serving": False}
    assert done.stderr == (f"wizard-runner: warning: no daemon is serving {spool.base} right "
                           f"now: request {record['request_id']} waits until wizard-runnerd "
                           "starts\n")
    assert os.listdir(spool.incoming) == [f"{record['request_id']}.json"]
    with daemon(root):
        assert daemon_result(root, record["request_id"])["status"] == "succeeded"
        served = cli("submit", "--config", str(EXAMPLE), "--root", str(root), "--json")
    assert json.loads(served.stdout)["daemon_serving"] is True
    assert served.stderr == ""


@pytest.mark.processes
def test_a_configured_appliance_rejects_requests_until_reopened(root: Path) -> None:
    """After a request's run succeeded, the next is rejected unrun (exit 77) while an admin's
    `run` still works; `wizard-runner reopen` lets the next one run."""
    submit = ["submit", "--config", str(EXAMPLE), "--root", str(root), "--wait", "--json",
              "--timeout", "60"]
    with daemon(root):
        first = json.loads(cli(*submit).stdout)
        rejected = cli(*submit)
        admin = cli("run", "--config", str(EXAMPLE), "--root", str(root), "--json")
        reopened = cli("reopen", "--root", str(root))
        third = cli(*submit)
    assert first["status"] == "succeeded"
    assert rejected.returncode == 77
    record = json.loads(rejected.stdout)
    assert (record["status"], record["reason"], record["problems"]) == ("rejected", CLOSED, [])
    assert admin.returncode == 0, admin.stderr
    assert (reopened.returncode, reopened.stdout) == (0, "spool reopened\n")
    assert third.returncode == 0, third.stderr
    assert json.loads(Layout(root).last_run.read_text())["request_id"] == (
        json.loads(third.stdout)["request_id"])
    assert cli("reopen", "--root", str(root)).stdout == "spool reopened\n"  # the third closed it
    assert cli("reopen", "--root", str(root)).stdout == "spool was not closed\n"


def presence_fds(pid: int) -> list[str]:
    """What the descriptors of process `pid` that name the presence file point to."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if "serving.lock" in target:
                found.append(target)
    return found


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_presence_follows_the_daemon(root: Path, signum: int) -> None:
    """Clients see a daemon exactly while one runs: one lock on the current file, none left
    after a stop or a kill."""
    spool = Spool.of(Layout(root))
    with daemon(root) as process:
        assert daemon_serving(spool)
        assert presence_fds(process.pid) == [str(spool.presence)]
        assert [name for name in os.listdir(spool.base) if name.startswith(".")] == []
        process.send_signal(signum)
        process.wait(timeout=20)
    assert not daemon_serving(spool)
