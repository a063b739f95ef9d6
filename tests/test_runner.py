"""A whole run on a real tmp root: result file, log file, lock, flags, faults and signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MANAGED, snapshot
from tests.helpers import counting_script
from wizard_runner import sysconf
from wizard_runner.config import WizardConfig, config_from_data
from wizard_runner.errors import LockedError, PrivilegeError
from wizard_runner.fsio import At, Ownership, RunLock, WriteMethod, replace_at
from wizard_runner.layout import Layout
from wizard_runner.preview import preview
from wizard_runner.result import FileAction, FileOutcome, RunResult, RunStatus, SystemConfResult
from wizard_runner.runner import (
    RunOptions,
    _network_change,
    execute,
    plan_system,
    what_was_done,
)
from wizard_runner.signals import install_stop_handlers

NO_TOOLS = {"check_with_tools": False}


def run(config: WizardConfig, root: Path, **options: Any) -> Any:
    """Execute on `root` without the Debian tools (they have their own tests)."""
    return execute(config, RunOptions(root=root, **{**NO_TOOLS, **options}), json_logs=True)


def log_events(root: Path) -> list[dict[str, Any]]:
    """The JSON-lines log of `root`."""
    text = (root / "var/log/wizard-runner/wizard-runner.log").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_run_writes_files_result_and_log(config: WizardConfig, sandbox: Path) -> None:
    """A run writes the seven files, stores its result and logs one event per file."""
    result = run(config, sandbox)
    assert result.status is RunStatus.SUCCEEDED
    assert result.exit_code == 0
    assert [(f.path, f.action) for f in result.system_conf.files] == [
        (path, FileAction.WRITTEN) for path in MANAGED
    ]
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored == result.to_dict()
    assert stored["system_conf"]["handled"] is True
    assert stored["scripts"] == []
    assert stored["error"] is None
    assert oct((sandbox / "var/lib/wizard-runner/last-run.json").stat().st_mode & 0o777) == "0o644"
    events = log_events(sandbox)
    assert {event["run_id"] for event in events} == {result.run_id}
    written = [event["path"] for event in events if event["event"] == "file_written"]
    assert written == list(MANAGED)
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_finished"
    assert (sandbox / "etc/hostname").read_text() == "pbx\n"


def test_second_run_reports_unchanged(config: WizardConfig, sandbox: Path) -> None:
    """A rerun reports every file unchanged and changes no mtime under /etc."""
    run(config, sandbox)
    before = snapshot(sandbox / "etc")
    result = run(config, sandbox)
    assert {f.action for f in result.system_conf.files} == {FileAction.UNCHANGED}
    assert snapshot(sandbox / "etc") == before
    assert result.system_conf.backup_dir is None


def test_handle_system_conf_false_touches_nothing(body: dict[str, Any], sandbox: Path) -> None:
    """With handle_system_conf false, /etc stays byte-identical, mtimes included."""
    body["handle_system_conf"] = False
    before = snapshot(sandbox / "etc")
    result = run(config_from_data(body), sandbox)
    assert snapshot(sandbox / "etc") == before
    assert result.status is RunStatus.SUCCEEDED
    assert result.system_conf.handled is False
    assert [(f.action, f.reason) for f in result.system_conf.files] == [
        (FileAction.SKIPPED, "handle_system_conf=false")
    ] * 7
    assert not (sandbox / "var/backups").exists()


@pytest.mark.parametrize(
    ("in_body", "option", "handled"),
    [
        pytest.param(True, False, False, id="option-off"),
        pytest.param(False, True, True, id="option-on"),
        pytest.param(False, None, False, id="body-off"),
    ],
)
def test_option_overrides_body(
    body: dict[str, Any], sandbox: Path, in_body: bool, option: bool | None, handled: bool
) -> None:
    """--system-conf/--no-system-conf win over the body's handle_system_conf."""
    body["handle_system_conf"] = in_body
    result = run(config_from_data(body), sandbox, handle_system_conf=option)
    assert result.system_conf.handled is handled
    assert ((sandbox / "etc/hostname").read_text() == "pbx\n") is handled


def test_locked_run_is_refused(config: WizardConfig, sandbox: Path) -> None:
    """While another run holds the lock, a run is refused at once and writes nothing."""
    before = snapshot(sandbox)
    with RunLock(Layout(sandbox).lock_file):
        before = snapshot(sandbox)
        with pytest.raises(LockedError) as caught:
            run(config, sandbox)
    assert caught.value.exit_code == 75
    assert f"pid {os.getpid()}" in str(caught.value)
    after = snapshot(sandbox)
    assert {k: v for k, v in after.items() if "lock" not in k} == {
        k: v for k, v in before.items() if "lock" not in k
    }


def test_real_root_needs_root(config: WizardConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """On / without root, the run stops before anything, saying what to do."""
    monkeypatch.setattr("wizard_runner.runner.os.geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="run it as root") as caught:
        execute(config, RunOptions(root="/"))
    assert caught.value.exit_code == 77


def test_failed_write_is_reported_and_restored(
    config: WizardConfig, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write failing midway gives a failed result, exit 73, and the restored files."""
    before = snapshot(sandbox / "etc")

    def fail_on_main_cf(at: At, data: bytes, owner: Ownership) -> WriteMethod:
        if at.shown == "/etc/postfix/main.cf":
            raise OSError(errno.ENOSPC, "No space left on device", at.shown)
        return replace_at(at, data, owner)

    monkeypatch.setattr(sysconf, "replace_at", fail_on_main_cf)
    result = run(config, sandbox)
    assert result.status is RunStatus.FAILED
    assert result.exit_code == 73
    assert result.error is not None
    assert result.error.startswith("/etc/postfix/main.cf: could not be written")
    actions = {f.path: f.action for f in result.system_conf.files}
    assert [p for p, a in actions.items() if a is FileAction.RESTORED] == list(MANAGED[:4])
    contents = {k: v[0] for k, v in snapshot(sandbox / "etc").items()}
    assert contents == {k: v[0] for k, v in before.items()}
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored["status"] == "failed"
    assert stored["exit_code"] == 73


@pytest.mark.usefixtures("restore_signals")
def test_sigterm_during_writes_is_held_until_all_are_done(
    config: WizardConfig, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM in the middle of the replacements lets them finish, then records the stop."""
    install_stop_handlers()
    sent: list[str] = []

    def signal_midway(at: At, data: bytes, owner: Ownership) -> WriteMethod:
        if at.shown == "/etc/mailname":
            os.kill(os.getpid(), signal.SIGTERM)
            sent.append(at.shown)
        return replace_at(at, data, owner)

    monkeypatch.setattr(sysconf, "replace_at", signal_midway)
    result = run(config, sandbox)
    assert sent
    assert result.status is RunStatus.INTERRUPTED
    assert result.exit_code == 143
    assert result.error == "interrupted by SIGTERM; every step had completed before it was acted on"
    assert [f.action for f in result.system_conf.files] == [FileAction.WRITTEN] * 7
    assert (sandbox / "etc/network/interfaces").read_text().count("192.168.50.10") == 1
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored["status"] == "interrupted"


@pytest.mark.usefixtures("restore_signals")
def test_sigint_before_writes_changes_nothing(
    config: WizardConfig, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT while the files are checked stops the run before any write; exit 130."""
    install_stop_handlers()
    before = snapshot(sandbox / "etc")

    def interrupt(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("wizard_runner.toolcheck.ToolChecker.__call__", interrupt)
    result = execute(config, RunOptions(root=sandbox), json_logs=True)
    assert result.status is RunStatus.INTERRUPTED
    assert result.exit_code == 130
    assert snapshot(sandbox / "etc") == before
    assert {f.action for f in result.system_conf.files} == {FileAction.SKIPPED}


@pytest.mark.processes
@pytest.mark.usefixtures("restore_signals")
def test_a_stop_cuts_a_hanging_check_at_once(config: WizardConfig, sandbox: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A Debian tool that hangs while the files are checked is cut by SIGTERM where it waits,
    not after its 30 s: the run says interrupted and nothing was written."""
    install_stop_handlers()
    before = snapshot(sandbox / "etc")
    hanging = sandbox.parent / "hanging-tool"
    hanging.write_text("#!/bin/sh\nexec sleep 60\n")
    hanging.chmod(0o755)
    monkeypatch.setattr("wizard_runner.toolcheck.find_tool", lambda name: str(hanging))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    timer.start()
    result = execute(config, RunOptions(root=sandbox), json_logs=True)
    timer.join()
    assert time.monotonic() - started < 15
    assert (result.status, result.exit_code) == (RunStatus.INTERRUPTED, 143)
    assert snapshot(sandbox / "etc") == before


def test_preview_writes_nothing(config: WizardConfig, sandbox: Path) -> None:
    """A dry run returns the diff and leaves the whole root as it was."""
    before = snapshot(sandbox)
    shown = preview(config, RunOptions(root=sandbox, check_with_tools=False))
    assert snapshot(sandbox) == before
    assert "+pbx\n" in shown.diff
    assert [c.plan.value for c in shown.changes] == ["write"] * 7


def test_password_is_written_nowhere(config: WizardConfig, sandbox: Path) -> None:
    """No file under the root, result, log or backup, holds the admin password."""
    run(config, sandbox)
    run(config, sandbox, handle_system_conf=False)
    secret = config.admin_password.get_secret_value().encode()
    for path in sandbox.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_no_live_actions_under_a_root(config: WizardConfig, sandbox: Path) -> None:
    """Under --root nothing live is touched: no actions, no pending network note."""
    result = run(config, sandbox)
    assert result.system_conf.actions == ()
    assert result.system_conf.pending == ()


def test_the_old_interfaces_file_is_described_for_the_follow_ups(
    body: dict[str, Any], config: WizardConfig, sandbox: Path
) -> None:
    """What the follow-ups learn of the file a run replaces: its backup copy, the interfaces
    it gave an IPv4 stanza, those the new file has a stanza for, and, on a rerun naming
    another interface, the one the wizard's stanza leaves; a rerun on the same one releases
    nothing; no old file, no copy."""
    backup = sandbox / "backup"
    layout = Layout.under(sandbox)
    first = _network_change(plan_system(config, layout, RunOptions(root=sandbox)), config, backup)
    assert (first.copy, first.old_inet, first.new_stanzas, first.released) == (
        str(backup / "etc/network/interfaces"), frozenset({"lo", "eth0"}),
        frozenset({"lo", "eth0"}), ())
    execute(config, RunOptions(root=sandbox, check_with_tools=False))
    body["network"]["interface"] = "eth1"
    moved = config_from_data(body)
    again = _network_change(plan_system(moved, layout, RunOptions(root=sandbox)), moved, backup)
    # eth0 keeps the inet6 stanza of Debian's file: the new file brings it up again.
    assert (again.old_inet, again.new_stanzas, again.released) == (
        frozenset({"lo", "eth0"}), frozenset({"lo", "eth0", "eth1"}), ("eth0",))
    (sandbox / "etc/network/interfaces").unlink()
    none = _network_change(plan_system(moved, layout, RunOptions(root=sandbox)), moved, backup)
    assert (none.copy, none.old_inet) == (None, frozenset())


@pytest.mark.parametrize(("files", "said"), [
    pytest.param([FileOutcome("/etc/hostname", FileAction.WRITTEN,
                              "could not be restored; the old copy is in the backup directory"),
                  FileOutcome("/etc/hosts", FileAction.RESTORED, "restored because ...")],
                 "the system files are partly written: /etc/hostname could not be restored "
                 "(the old copies are in /var/backups/wizard-runner/r1)", id="not-restored"),
    pytest.param([FileOutcome("/etc/hostname", FileAction.RESTORED, "restored because ...")],
                 "the system files were rolled back (/etc/hostname restored)", id="rolled-back"),
    pytest.param([FileOutcome("/etc/hostname", FileAction.WRITTEN)],
                 "the system files were applied (1 written: /etc/hostname)", id="applied"),
])
def test_what_was_done_tells_a_part_written_step(files: list[FileOutcome], said: str) -> None:
    """The sentence for a result that could not be stored says a file left new by a failed
    rollback, not that the files were applied."""
    at = datetime(2026, 11, 25, tzinfo=UTC)
    result = RunResult("r1", at, at, RunStatus.FAILED, 73, SystemConfResult(
        True, tuple(files), backup_dir="/var/backups/wizard-runner/r1"), error="it failed")
    assert what_was_done(result) == f"the run failed (it failed): {said}; no script ran"


def test_scripts_once_is_decided_again_under_the_lock(
        config: WizardConfig, sandbox: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that ended between the scripts-once decision and the lock (its scripts failed:
    the pass is no longer completed) makes the run decide again: the scripts run."""
    import pwd  # noqa: PLC0415

    from wizard_runner import runner as runner_module  # noqa: PLC0415

    user = pwd.getpwuid(os.geteuid()).pw_name
    ran = tmp_path / "ran"
    counting_script(sandbox, ran)
    once = {"run_scripts": True, "user": user, "scripts_once": True}
    assert run(config, sandbox, **once).scripts_completed_by is not None
    from wizard_runner.preflight import prepare as decide  # noqa: PLC0415

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        plan = decide(*args, **kwargs)
        last = sandbox / "var/lib/wizard-runner/last-run.json"
        data = json.loads(last.read_text())
        last.write_text(json.dumps({**data, "scripts_completed_by": None}))  # a failed pass
        return plan

    monkeypatch.setattr(runner_module, "prepare", meanwhile)
    again = run(config, sandbox, **once)
    assert (again.scripts_already_done, ran.read_text()) == (False, "ran\nran\n")
