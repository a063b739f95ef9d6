"""The saved body and last-run.json: stored whole, read back typed, damage said clearly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, needs_root
from tests.helpers import as_www_data, traversable_dir
from wizard_runner.config import WizardConfig
from wizard_runner.errors import ConfigError, StateFileError, UsageError
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.result import (
    ActionOutcome,
    FileAction,
    FileOutcome,
    RunResult,
    RunStatus,
    ScriptOutcome,
    ScriptStatus,
    SystemConfResult,
    now,
)
from wizard_runner.state import (
    Choices,
    Unfinished,
    completed_pass,
    holder_words,
    load_saved_config,
    parse_holder,
    read_last_result,
    resume_point,
    save_config,
    unfinished_run,
    write_result,
)

SCRIPT = Path(sys.executable).parent / "wizard-runner"


def a_result(*scripts: ScriptOutcome, status: RunStatus = RunStatus.FAILED) -> RunResult:
    """A result with one written file and the given scripts."""
    at = now()
    code = {RunStatus.SUCCEEDED: 0, RunStatus.FAILED: 1, RunStatus.INTERRUPTED: 143}[status]
    return RunResult("20261201T100000Z-0badc0de", at, at, status, code,
                     SystemConfResult(True, (FileOutcome("/etc/hosts", FileAction.WRITTEN),)),
                     scripts, run_scripts=True, request_id="req-1")


@pytest.mark.parametrize("field", ["scripts_begun_by", "scripts_completed_by"])
def test_a_pass_field_that_is_no_run_id_is_damage(tmp_path: Path, field: str) -> None:
    """A hand-edited pass field that is no run id (an escape sequence, say) makes the result
    damaged: the Ansible module would skip the scripts on it."""
    layout = Layout(tmp_path)
    write_result(layout, a_result(status=RunStatus.SUCCEEDED))
    data = json.loads(layout.last_run.read_text())
    data[field] = "\x1b[2J bogus"
    layout.last_run.write_text(json.dumps(data))
    with pytest.raises(StateFileError, match=f"{field}: not a run id"):
        read_last_result(layout)


@pytest.mark.parametrize(("status", "changed"), [("succeeded", True), ("failed", True),
                                                  ("skipped", False)])
def test_a_follow_up_that_ran_is_a_change(status: str, changed: bool) -> None:
    """A run that wrote nothing but ran a live follow-up (one an earlier run left undone)
    changed the system, whatever came of it; one it skipped did not."""
    at = now()
    result = RunResult("20261201T100000Z-0badc0de", at, at, RunStatus.SUCCEEDED, 0,
                       SystemConfResult(True, (FileOutcome("/etc/hosts", FileAction.UNCHANGED),),
                                        (ActionOutcome("ifup", ("ifup", "eth0"), status),)),
                       (), run_scripts=False)
    assert result.changed is changed
    assert RunResult.from_dict(result.to_dict(), "x").changed is changed


def test_a_result_reads_back_as_written(tmp_path: Path) -> None:
    """write_result then read_last_result gives the same result, typed."""
    layout = Layout(tmp_path)
    stored = a_result(ScriptOutcome("10-a", ScriptStatus.SUCCEEDED, 0, duration_s=0.5),
                      ScriptOutcome("20-b", ScriptStatus.FAILED, 3, reason="exited with 3",
                                    leftovers=("412 sleep 99",)))
    write_result(layout, stored)
    read = read_last_result(layout)
    assert read is not None
    assert read.to_dict() == stored.to_dict()
    assert read.failed_script == stored.scripts[1]
    assert read.changed is True
    assert read_last_result(Layout(tmp_path / "none")) is None


def test_a_result_with_keys_it_does_not_know_reads_back(tmp_path: Path) -> None:
    """A last-run.json with keys this version does not know (written by a newer one, at any
    depth) is read, not called damaged: the keys it knows are what counts."""
    layout = Layout(tmp_path)
    stored = a_result(ScriptOutcome("10-a", ScriptStatus.FAILED, 2, reason="exited with 2"))
    data = stored.to_dict()
    data["new_field"] = 1
    data["system_conf"]["new_field"] = {"x": 1}
    data["system_conf"]["files"][0]["new_field"] = "y"
    data["scripts"][0]["new_field"] = [1]
    layout.state_dir.mkdir(parents=True)
    layout.last_run.write_text(json.dumps(data))
    read = read_last_result(layout)
    assert read is not None
    assert read.to_dict() == stored.to_dict()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('{"run_id": "x", "status": "succ', "is damaged (not JSON: ", id="truncated"),
        pytest.param("[1, 2]", "is damaged (", id="a-list"),
        pytest.param('{"run_id": 3}', "run_id: must be a string, not a number", id="wrong-type"),
        pytest.param(json.dumps({**a_result().to_dict(), "status": "sort of"}),
                     "status: Input should be 'succeeded', 'failed' or 'interrupted'",
                     id="unknown-status"),
        pytest.param(json.dumps({**a_result().to_dict(), "scripts": [{"name": "a"}]}),
                     "scripts.0.status: is required", id="script-without-status"),
        pytest.param(json.dumps({**a_result().to_dict(), "status": "succeeded"}),
                     "status: succeeded with exit_code 1", id="succeeded-with-an-error-code"),
        pytest.param(json.dumps({**a_result().to_dict(), "exit_code": 0}),
                     "status: failed with exit_code 0", id="failed-with-exit-0"),
        pytest.param(json.dumps({**a_result().to_dict(), "exit_code": 10**30}),
                     "exit_code: 1000000000000000000000000000000 is not an exit status",
                     id="exit-code-out-of-range"),
        pytest.param(json.dumps({**a_result().to_dict(), "started_at": "2026-11-25T14:54:28"}),
                     "started_at: no time zone", id="naive-time"),
    ],
)
def test_a_damaged_result_is_named(tmp_path: Path, text: str, message: str) -> None:
    """A hand-edited or truncated last-run.json raises StateFileError naming it and why."""
    layout = Layout(tmp_path)
    layout.state_dir.mkdir(parents=True)
    layout.last_run.write_text(text)
    with pytest.raises(StateFileError) as caught:
        read_last_result(layout)
    assert str(caught.value).startswith(f"{layout.last_run} is damaged")
    assert message in str(caught.value)
    assert caught.value.exit_code == 74
    with pytest.raises(StateFileError):
        resume_point(layout)


def test_a_huge_state_file_is_damaged_not_read_whole(tmp_path: Path) -> None:
    """A 3 GiB last-run.json or saved body (sparse: a disk error, a prank) is named damaged
    for its size, after reading just past the limit, not loaded into memory."""
    layout = Layout(tmp_path)
    layout.state_dir.mkdir(parents=True)
    for path in (layout.last_run, layout.saved_config):
        path.touch()
        os.truncate(path, 3 << 30)
    with pytest.raises(StateFileError, match=r"last-run.json is damaged \(larger than 64 MiB\)"):
        read_last_result(layout)
    with pytest.raises(StateFileError, match=r"config.json is damaged \(larger than 128 KiB\)"):
        load_saved_config(layout)


@pytest.mark.parametrize(
    ("status", "scripts", "why"),
    [
        pytest.param(RunStatus.SUCCEEDED, (), "succeeded", id="succeeded"),
        pytest.param(RunStatus.INTERRUPTED, (), "was interrupted before any of its scripts ran",
                     id="interrupted"),
        pytest.param(RunStatus.INTERRUPTED, (
            ScriptOutcome("10-a", ScriptStatus.NOT_RUN, reason="not run: wizard-runner was "
                          "interrupted by SIGTERM"),), "was interrupted before any of its "
            "scripts ran", id="interrupted-before-the-first-script"),
        pytest.param(RunStatus.FAILED, (), "failed before a script did", id="system-step"),
    ],
)
def test_nothing_to_resume(tmp_path: Path, status: RunStatus,
                           scripts: tuple[ScriptOutcome, ...], why: str) -> None:
    """--resume after a run without a failed script says why there is nothing to resume."""
    layout = Layout(tmp_path)
    write_result(layout, a_result(*scripts, status=status))
    with pytest.raises(UsageError, match=f"nothing to resume: the last run .* {why}"):
        resume_point(layout)


def test_resume_after_an_interruption_between_two_scripts(tmp_path: Path) -> None:
    """A run stopped after a script succeeded, before the next one started: --resume starts
    at that next one (the pass continues), not at the top."""
    layout = Layout(tmp_path)
    stopped = "not run: wizard-runner was interrupted by SIGTERM"
    write_result(layout, dataclasses.replace(a_result(
        ScriptOutcome("05-readme", ScriptStatus.SKIPPED, reason="not executable"),
        ScriptOutcome("10-a", ScriptStatus.SUCCEEDED, 0, duration_s=0.5),
        ScriptOutcome("20-b", ScriptStatus.NOT_RUN, reason=stopped),
        ScriptOutcome("30-c", ScriptStatus.NOT_RUN, reason=stopped),
        status=RunStatus.INTERRUPTED), scripts_begun_by="20261130T080000Z-00c0ffee"))
    assert resume_point(layout) == ("20-b", "20261130T080000Z-00c0ffee")  # the pass goes on


def test_the_saved_body_keeps_the_flags_run_and_no_password(
    tmp_path: Path, config: WizardConfig
) -> None:
    """The saved body is what was run (its flags) without the password, with the run's
    choices, readable back."""
    layout = Layout(tmp_path)
    choices = Choices(replace_symlinks=True, apply_network=False, user="asterisk", timeout=None)
    save_config(layout, config.model_copy(update={"run_scripts": True}), choices)
    assert oct(layout.saved_config.stat().st_mode & 0o777) == "0o600"
    assert config.admin_password.get_secret_value() not in layout.saved_config.read_text()
    loaded, found = load_saved_config(layout)
    assert loaded.run_scripts is True
    assert loaded.network == config.network
    assert found == choices


def test_a_body_saved_without_choices_reruns_with_the_defaults(
    tmp_path: Path, config: WizardConfig
) -> None:
    """A saved body without "options" (an earlier version's) reruns with the defaults."""
    layout = Layout(tmp_path)
    save_config(layout, config, Choices(replace_symlinks=True))
    data = json.loads(layout.saved_config.read_text())
    del data["options"]
    layout.saved_config.write_text(json.dumps(data))
    assert load_saved_config(layout).choices == Choices()


@pytest.mark.parametrize(("options", "named"), [
    pytest.param([], "not an object", id="a-list"),
    pytest.param({"replace_symlinks": "yes"}, "replace_symlinks", id="not-a-bool"),
    pytest.param({"timeout": -1}, "timeout", id="negative-timeout"),
    pytest.param({"timeout": True}, "timeout", id="bool-timeout"),
    pytest.param({"user": ""}, "user", id="no-user"),
    pytest.param({"root": "/"}, "root", id="unknown"),
])
def test_damaged_choices_are_named(tmp_path: Path, config: WizardConfig, options: object,
                                   named: str) -> None:
    """A saved choice that no run saves makes the file damaged, naming it."""
    layout = Layout(tmp_path)
    save_config(layout, config, Choices())
    data = json.loads(layout.saved_config.read_text())
    data["options"] = options
    layout.saved_config.write_text(json.dumps(data))
    with pytest.raises(StateFileError, match=f'is damaged \\("options": {named}\\): pass '
                       "--config FILE"):
        load_saved_config(layout)


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        pytest.param('{"config": {"license": tr', StateFileError, "is damaged (invalid JSON",
                     id="truncated"),
        pytest.param('{"saved_at": "x"}', StateFileError, 'no "config" object', id="no-config"),
        pytest.param('{"config": {"license": true}}', ConfigError, "timezone: is required",
                     id="invalid-body"),
    ],
)
def test_a_damaged_saved_body_is_named(tmp_path: Path, text: str,
                                       error: type[Exception], message: str) -> None:
    """A damaged saved body gives an error naming the file; an invalid one lists problems."""
    layout = Layout(tmp_path)
    layout.state_dir.mkdir(parents=True)
    layout.saved_config.write_text(text)
    with pytest.raises(error) as caught:
        load_saved_config(layout)
    assert str(layout.saved_config) in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.processes
def test_status_resume_and_rerun_on_damaged_state(sandbox: Path) -> None:
    """status, run --resume and a plain run on damaged files: a message, exit 74, no
    traceback, and nothing written."""
    state = sandbox / "var/lib/wizard-runner"
    state.mkdir(parents=True)
    (sandbox / "etc/xivo/wizard.d").mkdir(parents=True)
    (state / "last-run.json").write_text('{"run_id": "x", "scripts": [{"name":')
    (state / "config.json").write_text("{")
    resume = ["run", "--resume", "--user", "root", "--config", str(EXAMPLES / "wizard.json")]
    for args in (["status"], resume,
                 ["run"], ["status", "--json"]):
        done = subprocess.run([str(SCRIPT), *args, "--root", str(sandbox)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 74, (args, done.stderr)
        assert "is damaged" in done.stderr
        assert "Traceback" not in done.stderr
        if "--json" in args:
            assert json.loads(done.stdout)["exit_code"] == 74
    assert sorted(path.name for path in state.iterdir()) == ["config.json", "last-run.json"]
    assert not (sandbox / "var/log").exists()


@pytest.mark.processes
def test_state_files_that_are_fifos_are_refused_not_waited_on(sandbox: Path) -> None:
    """A FIFO (or any special file) where last-run.json or config.json should be: status and
    a rerun say so at once instead of waiting for a writer that never comes."""
    state = sandbox / "var/lib/wizard-runner"
    state.mkdir(parents=True)
    (sandbox / "etc/xivo/wizard.d").mkdir(parents=True)
    os.mkfifo(state / "last-run.json")
    os.mkfifo(state / "config.json")
    for args, code in ((["status"], 74), (["run"], 66)):
        done = subprocess.run([str(SCRIPT), *args, "--root", str(sandbox)], capture_output=True,
                              text=True, timeout=30, check=False)
        assert (done.returncode, done.stderr.count("\n")) == (code, 1), (args, done.stderr)
        assert "not a regular file" in done.stderr


def holder_line(layout: Layout, text: str) -> None:
    """Leave `text` as the run lock's holder line, as a run killed while it held the lock."""
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    RunLock.holder_of(layout.lock_file).write_text(text)


@pytest.mark.parametrize("text", [
    pytest.param("hello world", id="no-pid"), pytest.param("0 20261205T120000Z-0123abcd", id="pid-0"),
    pytest.param(f"{1 << 22} 20261205T120000Z-0123abcd", id="pid-too-big"),
    pytest.param("42 not-a-run-id", id="bad-run-id"), pytest.param("42", id="pid-only"),
    pytest.param("", id="empty"),
])
def test_a_holder_line_that_is_not_one_names_no_run(tmp_path: Path, text: str) -> None:
    """A holder line that is not `PID RUN_ID` (tampered, cut short) is no run at all."""
    layout = Layout(tmp_path)
    holder_line(layout, text)
    assert unfinished_run(layout) is None


def test_a_holder_whose_pid_was_reused_is_killed(tmp_path: Path) -> None:
    """The pid a killed run had now belongs to a process that started after the run did (this
    one, for a run from 2020): not a run in progress, a killed one. The same pid with a run
    that started after this process is one going on."""
    layout = Layout(tmp_path)
    holder_line(layout, f"{os.getpid()} 20200101T000000Z-0123abcd")
    assert unfinished_run(layout) == Unfinished(os.getpid(), "20200101T000000Z-0123abcd", False)
    holder_line(layout, f"{os.getpid()} 20991231T000000Z-0123abcd")
    assert unfinished_run(layout) == Unfinished(os.getpid(), "20991231T000000Z-0123abcd", True)


def test_a_holder_that_ended_without_its_result_is_no_run_in_progress(tmp_path: Path) -> None:
    """A run that could not store its result leaves its line marked `unstored`: it ended,
    though its process lives on (the daemon's) and started before it; any other third word
    is no holder line at all."""
    layout = Layout(tmp_path)
    holder_line(layout, f"{os.getpid()} 20991231T000000Z-0123abcd\nunstored\n")
    assert unfinished_run(layout) == Unfinished(os.getpid(), "20991231T000000Z-0123abcd",
                                                running=False, ended=True)
    holder_line(layout, f"{os.getpid()} 20991231T000000Z-0123abcd stored")
    assert unfinished_run(layout) is None


@pytest.mark.parametrize(("text", "expected"), [
    # ended, no-system, no-scripts, pass-unknown
    pytest.param("no-system\n", (False, True, False, False), id="no-system"),
    pytest.param("no-system\nunstored\n", (True, True, False, False), id="no-system-unstored"),
    pytest.param("no-scripts\n", (False, False, True, False), id="no-scripts"),
    pytest.param("no-system no-scripts\n", (False, True, True, False), id="neither"),
    pytest.param("no-system no-scripts\nunstored\n", (True, True, True, False),
                 id="neither-unstored"),
    pytest.param("no-scripts\nunstored\n", (True, False, True, False), id="no-scripts-unstored"),
    pytest.param("\n", (False, False, False, False), id="both"),
    pytest.param("pass-unknown\n", (False, False, False, True), id="pass-unknown"),
    pytest.param("no-scripts pass-unknown\nunstored\n", (True, False, True, True),
                 id="pass-unknown-unstored"),
    pytest.param("no-system no-scripts pass-unknown\n", (False, True, True, True), id="all"),
    pytest.param("unstored no-system\n", None, id="out-of-order"),
    pytest.param("no-scripts no-system\n", None, id="scripts-before-system"),
    pytest.param("pass-unknown no-scripts\n", None, id="pass-unknown-first"),
    pytest.param("unstored no-scripts\n", None, id="unstored-first"),
    pytest.param("no-system no-system\n", None, id="twice"),
    pytest.param("pass-unknown pass-unknown\n", None, id="pass-unknown-twice"),
    pytest.param("pass-known\n", None, id="unknown-word"),
])
def test_a_holder_line_says_what_its_run_was_to_do(
        tmp_path: Path, text: str, expected: tuple[bool, bool, bool, bool] | None) -> None:
    """`no-system`, `no-scripts`, `pass-unknown`, in this order, after the run id: the run was
    not to write the system files, not to run its scripts (status says so), and found a killed
    run before it that was to run them; `unstored` may follow; any other order, a word twice
    or another word is no holder line."""
    layout = Layout(tmp_path)
    holder_line(layout, f"{os.getpid()} 20200101T000000Z-0123abcd {text}")
    found = unfinished_run(layout)
    assert (None if found is None else
            (found.ended, found.no_system, found.no_scripts, found.pass_unknown)) == expected


@pytest.mark.parametrize(("flags", "words"), [
    pytest.param((True, True), (), id="both"),
    pytest.param((False, True), ("no-system",), id="no-system"),
    pytest.param((True, False), ("no-scripts",), id="no-scripts"),
    pytest.param((False, False), ("no-system", "no-scripts"), id="neither"),
])
def test_a_runs_flags_are_the_words_of_its_holder_line(
        flags: tuple[bool, bool], words: tuple[str, ...]) -> None:
    """A run's holder line says what it is not to do, in the order the line is read."""
    system, scripts = flags
    assert holder_words(handle_system_conf=system, run_scripts=scripts) == words
    found = parse_holder(" ".join(["42", "20200101T000000Z-0123abcd", *words]))
    assert found is not None
    assert (found.no_system, found.no_scripts) == (not system, not scripts)


@pytest.mark.parametrize(("holder", "expected"), [
    pytest.param(None, "done", id="no-holder"),
    pytest.param("{killed}", None, id="killed-with-scripts"),
    pytest.param("{killed} no-scripts", "done", id="killed-without-scripts"),
    pytest.param("{killed} no-system no-scripts\nunstored\n", "done", id="unstored-no-scripts"),
    pytest.param("{killed} no-scripts pass-unknown", None, id="after-a-killed-scripts-run"),
    pytest.param("{killed} no-scripts pass-unknown\nunstored\n", None, id="unstored-after"),
    pytest.param("{stored}", "done", id="killed-after-storing"),
])
def test_the_completed_pass_stands_unless_a_run_since_may_have_run_scripts(
        tmp_path: Path, holder: str | None, expected: str | None) -> None:
    """The run that ran the scripts to success, as the stored result says; none once a run
    since was killed (or stored no result) while it was to run scripts, which it may have
    run part-way; one killed after it stored its result cut nothing short."""
    layout = Layout(tmp_path)
    done = dataclasses.replace(a_result(status=RunStatus.SUCCEEDED),
                               scripts_completed_by="20261201T090000Z-0badc0de")
    write_result(layout, done)
    if holder is not None:  # a pid no process has (the highest Linux gives is 2^22 - 1)
        holder_line(layout, f"{(1 << 22) - 1} " + holder.format(
            killed="20261201T110000Z-0badc0de", stored=done.run_id))
    assert completed_pass(layout) == (None if expected is None else
                                      "20261201T090000Z-0badc0de")


def test_no_result_no_completed_pass(tmp_path: Path) -> None:
    """Without a stored result (or with one that is no JSON) no pass is completed."""
    layout = Layout(tmp_path)
    assert completed_pass(layout) is None
    layout.last_run.parent.mkdir(parents=True)
    layout.last_run.write_text("{")
    assert completed_pass(layout) is None


@needs_root
def test_anyone_can_see_a_run_in_progress(config: WizardConfig) -> None:
    """The lock is root's alone (0600); its holder line is not: www-data's status sees the
    run going on, as root's does."""
    with traversable_dir() as base:
        layout = Layout(base)
        with RunLock(layout.lock_file, mode=0o600) as lock:
            lock.note("20991231T000000Z-0123abcd")
            seen = as_www_data(lambda: list(unfinished_run(layout) or ()))
        assert seen == {"value": [os.getpid(), "20991231T000000Z-0123abcd", True, False,
                                  False, False, False]}
        assert RunLock.holder_of(layout.lock_file).read_text() == ""
