"""The Python API confd imports."""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

import wizard_runner
from tests.conftest import EXAMPLES, snapshot
from wizard_runner import api
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.presence import PresenceLock
from wizard_runner.procs import alive
from wizard_runner.spool import Spool, prepare


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda b: b, id="dict"),
        pytest.param(json.dumps, id="str"),
        pytest.param(lambda b: json.dumps(b).encode(), id="bytes"),
        pytest.param(api.validate, id="config"),
    ],
)
def test_validate_accepts_every_form(body: dict[str, Any], form: Any) -> None:
    """A dict, JSON text, JSON bytes or a config all validate to the same config."""
    assert api.validate(form(body)) == api.validate(body)


def test_validate_raises_with_problems(body: dict[str, Any]) -> None:
    """A bad body raises ConfigError listing each problem."""
    body["network"]["gateway"] = "10.0.1.1"
    with pytest.raises(api.ConfigError) as caught:
        api.validate(body)
    assert caught.value.problems == ("network.gateway: 10.0.1.1 is not in 192.168.50.0/24",)
    assert caught.value.exit_code == 65


@pytest.mark.processes
def test_run_returns_the_result_and_keeps_signal_handlers(
    body: dict[str, Any], sandbox: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """api.run applies the body, returns the stored result, logs to `logging`, keeps signals."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    caplog.set_level(logging.INFO, logger="wizard_runner")
    result = wizard_runner.run(body, root=sandbox)
    assert result.status is api.RunStatus.SUCCEEDED
    assert result.exit_code == 0
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored == result.to_dict()
    written = [r for r in caplog.records if r.__dict__["event"] == "file_written"]
    assert all(r.getMessage().startswith("file_written ") and f"path='{r.__dict__['path']}'"
               in r.getMessage() for r in written)
    assert [r.__dict__["path"] for r in written] == [
        f["path"] for f in stored["system_conf"]["files"]
    ]
    assert all(r.__dict__["run_id"] == result.run_id for r in caplog.records)
    assert "Sup3rSecret!" not in caplog.text


@pytest.mark.processes
def test_script_failure_raises_with_details(body: dict[str, Any], sandbox: Path) -> None:
    """A failed script raises ScriptFailed with its name, exit code, output and the result."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    script = wizard_d / "20-provision"
    script.write_text("#!/bin/sh\necho 'provd unreachable' >&2\nexit 3\n")
    script.chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(api.ScriptFailed) as caught:
        api.run(body, root=sandbox, run_scripts=True, handle_system_conf=False, user=user)
    failure = caught.value
    assert (failure.script, failure.script_exit_code, failure.status) == ("20-provision", 3,
                                                                          "failed")
    assert failure.output_tail == "provd unreachable"
    assert failure.exit_code == 1
    assert failure.result.status is api.RunStatus.FAILED
    unchecked = api.run(body, root=sandbox, run_scripts=True, handle_system_conf=False,
                        user=user, check=False)
    assert unchecked.exit_code == 1


@pytest.mark.processes
def test_a_keyboard_interrupt_is_stored_then_passed_on(body: dict[str, Any],
                                                        sandbox: Path) -> None:
    """Embedded, SIGINT's default handler raises KeyboardInterrupt where it lands: the script
    under way and all it started are stopped, the result is stored (interrupted, 130; the
    script cut short failed, the rest not run), and the KeyboardInterrupt is passed on."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    ready = sandbox / "started"
    (wizard_d / "10-long").write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {ready}.tmp\n"
                                      f"mv {ready}.tmp {ready}\nwait\n")
    (wizard_d / "20-next").write_text("#!/bin/sh\nexit 0\n")
    for script in wizard_d.iterdir():
        script.chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sender = threading.Thread(target=interrupt)
    try:
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            api.run(body, root=sandbox, run_scripts=True, user=user)
    finally:
        sender.join()
        signal.signal(signal.SIGINT, previous)
    stored = api.RunResult.from_dict(
        json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text()), "last-run")
    assert (stored.status, stored.exit_code) == (api.RunStatus.INTERRUPTED, 130)
    assert stored.error == "the scripts step was cut short by KeyboardInterrupt"
    assert [(s.name, s.status.value, s.reason) for s in stored.scripts] == [
        ("10-long", "failed", "cut short by KeyboardInterrupt: it may have run in part"),
        ("20-next", "not_run", "not run: the step was cut short by KeyboardInterrupt")]
    assert stored.files_written  # the system step had run: the result says so
    assert not alive(int(ready.read_text()))


@pytest.mark.processes
def test_a_run_cut_short_by_a_bug_is_stored_as_failed(
    body: dict[str, Any], sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception no run expects (a bug) is not a run that never happened: the result is
    stored (failed, 70, naming it, with what the system step did), then it is passed on."""
    def broken(_run: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("wizard_runner.runner._scripts_step", broken)
    with pytest.raises(RuntimeError, match=r"^boom$"):
        api.run(body, root=sandbox)
    stored = api.RunResult.from_dict(
        json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text()), "last-run")
    assert (stored.status, stored.exit_code) == (api.RunStatus.FAILED, 70)
    assert stored.error == "the scripts step was cut short by RuntimeError: boom"
    assert stored.files_written


@pytest.mark.processes
def test_missing_wizard_d_raises(body: dict[str, Any], sandbox: Path) -> None:
    """run_scripts without wizard.d raises ScriptsDirMissing (exit 66)."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(api.ScriptsDirMissing) as caught:
        api.run(body, root=sandbox, run_scripts=True, user=user)
    assert caught.value.exit_code == 66
    assert "wizard.d: the scripts directory does not exist" in str(caught.value)


@pytest.mark.processes
def test_dry_run_writes_nothing(body: dict[str, Any], sandbox: Path) -> None:
    """api.dry_run returns the diff and leaves the root untouched."""
    before = snapshot(sandbox)
    preview = api.dry_run(body, root=sandbox)
    assert "+192.168.50.10\tpbx.acme.example\tpbx" in preview.diff
    assert snapshot(sandbox) == before


def test_run_refused_while_locked(body: dict[str, Any], sandbox: Path) -> None:
    """A run while another holds the lock raises LockedError (exit 75)."""
    with RunLock(Layout(sandbox).lock_file), pytest.raises(api.LockedError):
        api.run(body, root=sandbox)


def test_invalid_body_writes_nothing(body: dict[str, Any], sandbox: Path) -> None:
    """api.run validates first: an invalid body raises and the root is untouched."""
    before = snapshot(sandbox)
    body["network"]["nameservers"] = ["8.8.8.8; rm -rf /"]
    with pytest.raises(api.ConfigError):
        api.run(body, root=sandbox)
    assert snapshot(sandbox) == before


_WRONG_TYPES = [
    ("run_scripts", "false", r"^run_scripts: 'false' is not true or false$"),
    ("handle_system_conf", "false", r"^handle_system_conf: 'false' is not true or false$"),
    ("handle_system_conf", 0, r"^handle_system_conf: 0 is not true or false$"),
    ("resume", None, r"^resume: None is not true or false$"),
    ("scripts_once", "yes", r"^scripts_once: 'yes' is not true or false$"),
    ("replace_symlinks", "yes", r"^replace_symlinks: 'yes' is not true or false$"),
    ("apply_network", 1, r"^apply_network: 1 is not true or false$"),
    ("check", "no", r"^check: 'no' is not true or false$"),
    ("user", 33, r"^user: 33 is not a string$"),
    ("user", None, r"^user: None is not a string$"),
    ("start_at", 5, r"^start_at: 5 is not a string$"),
    ("timeout", "10", r"^timeout: '10' is not a number of seconds"),
    ("root", None, r"^--root: None is not a path$"),
    ("root", 5, r"^--root: 5 is not a path$"),
    ("root", b"/tmp", r"^--root: b'/tmp' is not a path$"),
]


@pytest.mark.parametrize(("call", "option", "value", "message"), [
    (call, *case) for call in ("run", "dry_run") for case in _WRONG_TYPES
    if call == "run" or case[0] not in {"timeout", "apply_network", "check"}  # run's alone
])
def test_an_option_of_the_wrong_type_is_refused_before_anything_is_written(
    body: dict[str, Any], sandbox: Path, call: str, option: str, value: object, message: str
) -> None:
    """The API takes what a caller passes: a string for a flag (`run_scripts="false"` would
    read as true), a number for a name, None for a path raise UsageError naming the option,
    and nothing is written."""
    before = snapshot(sandbox)
    with pytest.raises(api.UsageError, match=message):
        getattr(api, call)(body, **{"root": sandbox, option: value})
    assert snapshot(sandbox) == before


def test_an_unknown_user_is_named_as_the_api_names_it(body: dict[str, Any], sandbox: Path
                                                     ) -> None:
    """An unknown `user` is blamed on the argument (not on a command-line option), with no
    hint to pass one, and nothing is written."""
    before = snapshot(sandbox)
    with pytest.raises(api.UsageError,
                       match=r"^user no-such-wizard-user: no such user on this system$"):
        api.run(body, root=sandbox, run_scripts=True, user="no-such-wizard-user")
    assert snapshot(sandbox) == before


def test_examples_validate() -> None:
    """Every shipped example body is valid."""
    for path in EXAMPLES.glob("*.json"):
        api.validate(path.read_bytes())


def test_any_mapping_is_a_body(body: dict[str, Any]) -> None:
    """A read-only mapping (what `Body` promises: any Mapping) validates as its dict does."""
    assert api.validate(types.MappingProxyType(body)) == api.validate(body)


def test_submit_refuses_a_wait_that_is_not_a_bool(body: dict[str, Any], tmp_path: Path) -> None:
    """`wait="yes"` is refused naming it, before anything is submitted."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, os.getegid())
    with pytest.raises(api.UsageError, match=r"^wait: 'yes' is not true or false$"):
        api.submit(body, root=tmp_path, wait="yes")  # type: ignore[arg-type]
    assert os.listdir(spool.incoming) == []


def test_submit_wait_timeout_withdraws(body: dict[str, Any], tmp_path: Path) -> None:
    """api.submit(wait=True) giving up raises AnswerTimeout, a SpoolError; nothing stays queued."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, os.getegid())
    with PresenceLock(spool.presence), pytest.raises(api.AnswerTimeout) as caught:
        api.submit(body, root=tmp_path, wait=True, timeout=0.2)
    assert isinstance(caught.value, api.SpoolError)
    assert (caught.value.status, caught.value.exit_code) == ("withdrawn", 69)
    assert os.listdir(spool.incoming) == []


@pytest.mark.parametrize("ending", [SystemExit(0), RuntimeError("the app's own")],
                         ids=["system-exit", "other"])
def test_a_wait_ended_by_the_application_withdraws_the_request(
    body: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: BaseException
) -> None:
    """An exception that ends the wait which is not a stop of wizard-runner's (an application's
    own SIGTERM handler raising SystemExit) is passed on as it is, and the request the daemon
    has not claimed is withdrawn: nothing runs later behind the caller's back."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, os.getegid())

    def ended(_path: object) -> None:
        assert os.listdir(spool.incoming)  # submitted, waiting
        raise ending

    monkeypatch.setattr("wizard_runner.spool.read_answer", ended)
    with PresenceLock(spool.presence), pytest.raises(type(ending)) as caught:
        api.submit(body, root=tmp_path, wait=True, timeout=30)
    assert caught.value is ending
    assert os.listdir(spool.incoming) == []


@pytest.mark.parametrize("timeout", ["5", float("nan"), float("inf"), -1, True, 10**400],
                         ids=["string", "nan", "infinity", "negative", "bool", "huge-int"])
def test_submit_refuses_a_timeout_that_is_not_one_before_submitting(
    body: dict[str, Any], tmp_path: Path, timeout: object
) -> None:
    """A wait's timeout that is not a number of seconds (a string, NaN, infinity, negative)
    is a UsageError naming it, and nothing is submitted for a daemon to run."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, os.getegid())
    with PresenceLock(spool.presence), pytest.raises(api.UsageError, match=r"^timeout: "):
        api.submit(body, root=tmp_path, wait=True, timeout=timeout)  # type: ignore[arg-type]
    assert os.listdir(spool.incoming) == []


def test_submit_wait_without_a_daemon(body: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With no daemon serving, api.submit(wait=True) raises NoDaemon once the grace is over."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, os.getegid())
    monkeypatch.setattr("wizard_runner.spool.DAEMON_GRACE_SECONDS", 0.2)
    with pytest.raises(api.NoDaemon, match="withdrawn, nothing was run"):
        api.submit(body, root=tmp_path, wait=True)
    assert os.listdir(spool.incoming) == []


def test_submit_wait_interrupted(body: dict[str, Any], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt while api.submit waits: withdrawn, SubmitInterrupted raised from it."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, os.getegid())

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("wizard_runner.spool.time.sleep", interrupted)
    with PresenceLock(spool.presence), pytest.raises(api.SubmitInterrupted) as caught:
        api.submit(body, root=tmp_path, wait=True)
    assert (caught.value.status, caught.value.exit_code) == ("withdrawn", 130)
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    assert os.listdir(spool.incoming) == []
