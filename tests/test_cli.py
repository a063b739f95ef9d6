"""The CLI end to end, through the installed `wizard-runner` console script."""

from __future__ import annotations

import io
import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, MANAGED, snapshot
from tests.helpers import counting_script, killed_run, wait_until
from wizard_runner.cli import TerminalProgress, _print_answer, build_parser, parse
from wizard_runner.result import ScriptOutcome, ScriptStatus

pytestmark = pytest.mark.processes
SCRIPT = Path(sys.executable).parent / "wizard-runner"
EXAMPLE = str(EXAMPLES / "wizard.json")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script and capture its output."""
    return subprocess.run(
        [str(SCRIPT), *args], input=stdin, capture_output=True, text=True, timeout=60,
        check=False,
    )


def write_body(tmp_path: Path, body: dict[str, Any]) -> str:
    """Store a body as a JSON file and return its path."""
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    return str(path)


def test_console_script_and_module_agree() -> None:
    """`wizard-runner` and `python -m wizard_runner` are the same program."""
    script = cli("--version")
    module = subprocess.run([sys.executable, "-m", "wizard_runner", "--version"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    assert script.stdout.startswith("wizard-runner ")


def test_validate_valid() -> None:
    """A good body validates with exit 0."""
    done = cli("validate", "--config", EXAMPLE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{EXAMPLE}: valid\n"


def test_validate_lists_every_problem(tmp_path: Path, body: dict[str, Any]) -> None:
    """An invalid body gives exit 65 and every problem, each naming its field."""
    body["network"]["hostname"] = "pbx\n10.0.0.66 evil"
    body["network"]["nameservers"] = ["8.8.8.8; rm -rf /"]
    body["run_script"] = True
    path = write_body(tmp_path, body)
    done = cli("validate", "--config", path)
    assert done.returncode == 65
    assert done.stderr == textwrap.dedent(f"""\
        wizard-runner: {path} is invalid (3 problems):
          - network.hostname: "pbx\\n10.0.0.66 evil" is not a host name: use 1 to 63 letters, digits and inner hyphens
          - network.nameservers.0: "8.8.8.8; rm -rf /" is not an IP address
          - run_script: unknown key (did you mean run_scripts?)
        """)
    as_json = cli("validate", "--config", path, "--json")
    assert as_json.returncode == 65
    assert len(json.loads(as_json.stdout)["problems"]) == 3


def test_validate_from_stdin() -> None:
    """`--config -` reads standard input."""
    done = cli("validate", "--config", "-", stdin=Path(EXAMPLE).read_text())
    assert done.returncode == 0, done.stderr
    assert cli("validate", "--config", "-", stdin="{").returncode == 65


def test_unreadable_config_is_exit_66(tmp_path: Path) -> None:
    """A missing --config file is named, with exit 66."""
    done = cli("validate", "--config", str(tmp_path / "nope.json"))
    assert done.returncode == 66
    assert f"--config {tmp_path / 'nope.json'}: cannot read: No such file or directory" in (
        done.stderr
    )


def test_usage_error_is_exit_2() -> None:
    """An unknown option is a usage error."""
    assert cli("run", "--config", EXAMPLE, "--frobnicate").returncode == 2
    assert cli().returncode == 2


def test_run_then_rerun(sandbox: Path) -> None:
    """A run writes the seven files; a second reports them unchanged and keeps every mtime."""
    first = cli("run", "--config", EXAMPLE, "--root", str(sandbox))
    assert first.returncode == 0, first.stderr
    for path in MANAGED:
        assert f"  {path:<26} written\n" in first.stdout
    assert "backups: " in first.stdout
    etc = snapshot(sandbox / "etc")
    second = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--json")
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert [f["action"] for f in result["system_conf"]["files"]] == ["unchanged"] * 7
    assert result["status"] == "succeeded"
    assert snapshot(sandbox / "etc") == etc
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored == result


def test_logs_are_json_lines_on_a_pipe(sandbox: Path) -> None:
    """stderr is a pipe here, so each log line is a JSON event with the run id."""
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox))
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert {event["event"] for event in events} >= {"run_started", "file_written", "run_finished"}
    assert len({event["run_id"] for event in events}) == 1
    console = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--log-format", "console")
    assert "file_unchanged" in console.stderr
    assert not console.stderr.lstrip().startswith("{")


def test_no_system_conf_leaves_etc_identical(sandbox: Path) -> None:
    """With handle_system_conf false, /etc is byte-identical afterwards."""
    before = snapshot(sandbox / "etc")
    done = cli("run", "--config", str(EXAMPLES / "wizard-no-system-conf.json"),
               "--root", str(sandbox), "--json")
    assert done.returncode == 0, done.stderr
    assert snapshot(sandbox / "etc") == before
    files = json.loads(done.stdout)["system_conf"]["files"]
    assert {(f["action"], f["reason"]) for f in files} == {("skipped", "handle_system_conf=false")}
    forced = cli("run", "--config", str(EXAMPLES / "wizard-no-system-conf.json"),
                 "--root", str(sandbox), "--system-conf")
    assert forced.returncode == 0
    assert (sandbox / "etc/hostname").read_text() == "pbx\n"


def test_dry_run_prints_a_diff_and_writes_nothing(sandbox: Path) -> None:
    """--dry-run prints the unified diff and leaves the root, var included, untouched."""
    before = snapshot(sandbox)
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "--- a/etc/hostname\n+++ b/etc/hostname\n@@ -1 +1 @@\n-debian\n+pbx\n" in done.stdout
    assert snapshot(sandbox) == before
    as_json = json.loads(
        cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--dry-run", "--json").stdout
    )
    assert as_json["dry_run"] is True
    assert [f["plan"] for f in as_json["files"]] == ["write"] * 7


def test_a_log_symlinked_to_a_system_file_is_refused(sandbox: Path) -> None:
    """The run's log symlinked to /etc/hosts: the run refuses it (74, naming the log) before
    anything is written; the events never land in /etc/hosts."""
    log_dir = sandbox / "var/log/wizard-runner"
    log_dir.mkdir(parents=True)
    (log_dir / "wizard-runner.log").symlink_to("../../../etc/hosts")
    hosts = (sandbox / "etc/hosts").read_bytes()
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--no-scripts")
    assert done.returncode == 74, done.stderr
    assert f"{log_dir}/wizard-runner.log: the run's log could not be written: not a regular " \
        "file (a symlink)" in done.stderr
    assert "Traceback" not in done.stderr
    assert (sandbox / "etc/hosts").read_bytes() == hosts
    assert not (sandbox / "var/backups").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param("hostname", "pbx\n10.0.0.66 evil",
                     'network.hostname: "pbx\\n10.0.0.66 evil" is not a host name', id="hostname"),
        pytest.param("nameservers", ["8.8.8.8; rm -rf /"],
                     'network.nameservers.0: "8.8.8.8; rm -rf /" is not an IP address',
                     id="nameserver"),
    ],
)
def test_injection_is_rejected_and_nothing_written(
    tmp_path: Path, sandbox: Path, body: dict[str, Any], field: str, value: object, message: str
) -> None:
    """A hostile value is rejected naming its field; the root stays byte-identical."""
    body["network"][field] = value
    path = write_body(tmp_path, body)
    before = snapshot(sandbox)
    done = cli("run", "--config", path, "--root", str(sandbox), "--json")
    assert done.returncode == 65
    assert message in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 65
    assert snapshot(sandbox) == before


def test_concurrent_run_exits_75_naming_the_holder(sandbox: Path) -> None:
    """While another process holds the lock, a run exits 75 at once with that pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""\
            import sys, time
            from pathlib import Path
            from wizard_runner.fsio import RunLock
            with RunLock(Path({str(sandbox)!r}) / "run/wizard-runner/lock"):
                print("locked", flush=True)
                sys.stdin.read()
            """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        done = cli("run", "--config", EXAMPLE, "--root", str(sandbox))
        assert done.returncode == 75
        assert f"another wizard-runner run (pid {holder.pid}) holds" in done.stderr
    finally:
        assert holder.stdin is not None
        assert holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0


def test_root_must_exist(tmp_path: Path) -> None:
    """A --root that is not a directory is a usage error naming it."""
    done = cli("run", "--config", EXAMPLE, "--root", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "not an existing directory" in done.stderr


def test_tool_rejection_exits_73_and_writes_nothing(sandbox: Path) -> None:
    """When ifquery rejects the new interfaces file, the run fails with 73 and writes nothing."""
    (sandbox / "etc/network/interfaces").write_text("iface eth1 inet carrier-pigeon\n")
    before = snapshot(sandbox / "etc")
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--json")
    from wizard_runner.tools import find_tool  # noqa: PLC0415 - only to decide the skip

    if find_tool("ifquery") is None:
        pytest.skip("needs ifquery (apt-get install ifupdown)")
    assert done.returncode == 73
    result = json.loads(done.stdout)
    assert "ifquery rejected the new content" in result["error"]
    assert snapshot(sandbox / "etc") == before


def test_list_shows_every_entry_and_why(sandbox: Path) -> None:
    """`list` shows each entry of wizard.d in order with what would happen and why."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    for name, mode in (("20-b.sh", 0o755), ("10-a", 0o755), ("README", 0o644), ("x~", 0o755)):
        (wizard_d / name).write_text("#!/bin/sh\n")
        (wizard_d / name).chmod(mode)
    user = pwd.getpwuid(os.geteuid()).pw_name
    done = cli("list", "--root", str(sandbox), "--user", user, "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [(e["name"], e["action"], e["reason"]) for e in listed["entries"]] == [
        ("10-a", "run", None),
        ("20-b.sh", "run", None),
        ("README", "skip", "not executable (no execute bit)"),
        ("x~", "skip", "package or editor leftover"),
    ]
    text = cli("list", "--root", str(sandbox), "--user", user)
    assert "  README                         skip   not executable (no execute bit)\n" in (
        text.stdout
    )
    (wizard_d / "10-a").chmod(0o757)
    unsafe = cli("list", "--root", str(sandbox), "--user", user)
    assert unsafe.returncode == 77
    assert "unsafe: 10-a is writable by others (mode 0757)" in unsafe.stdout
    wizard_d.rename(sandbox / "elsewhere")
    missing = cli("list", "--root", str(sandbox), "--user", user)
    assert missing.returncode == 66


def test_status_before_and_after_runs(sandbox: Path) -> None:
    """`status` exits 3 before any run, 0 after a success, 1 after a failure, with details."""
    none = cli("status", "--root", str(sandbox))
    assert none.returncode == 3
    assert "no run yet" in none.stdout
    as_object = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)
    assert (as_object["status"], as_object["exit_code"]) == ("none", 3)
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    ok = cli("status", "--root", str(sandbox))
    assert ok.returncode == 0
    assert "succeeded (exit 0)" in ok.stdout
    assert "  /etc/hosts                 written\n" in ok.stdout
    assert "  scripts completed: no\n" in ok.stdout
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert cli("run", "--root", str(sandbox), "--scripts", "--user", user).returncode == 0
    done = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)["run_id"]
    assert cli("run", "--root", str(sandbox), "--no-scripts").returncode == 0
    assert f"  scripts completed: by run {done}\n" in \
        cli("status", "--root", str(sandbox)).stdout
    (wizard_d / "10-fail").write_text("#!/bin/sh\necho 'no license server'\nexit 9\n")
    (wizard_d / "10-fail").chmod(0o755)
    assert cli("run", "--root", str(sandbox), "--scripts", "--user", user).returncode == 1
    failed = cli("status", "--root", str(sandbox))
    assert failed.returncode == 1
    assert "10-fail" in failed.stdout
    assert "  | no license server\n" in failed.stdout
    assert "error: script 10-fail failed: exited with 9" in failed.stdout
    assert "  scripts completed: no\n" in failed.stdout
    as_json = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)
    assert as_json["scripts"][0]["exit_code"] == 9


def test_terminal_progress_format() -> None:
    """On a terminal: `[i/n] name ... ok (d s)`, output indented under its script."""
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress.started(1, 2, "10-quiet")
    progress.finished(ScriptOutcome("10-quiet", ScriptStatus.SUCCEEDED, 0, duration_s=0.04))
    progress.started(2, 2, "20-loud")
    progress.output("20-loud", "stdout", "working")
    progress.output("20-loud", "stderr", "oops")
    progress.finished(ScriptOutcome("20-loud", ScriptStatus.FAILED, 3, duration_s=1.25,
                                    reason="exited with 3"))
    assert out.getvalue() == (
        "[1/2] 10-quiet ... ok (0.0 s)\n"
        "[2/2] 20-loud ... \n"
        "      | working\n"
        "      ! oops\n"
        "[2/2] 20-loud ... FAILED: exited with 3 (1.2 s)\n"
    )


def test_quick_start_rerun_repeats_what_was_run(sandbox: Path) -> None:
    """A body with run_scripts false run with --scripts: the script fails; after the fix,
    `run --resume` and a plain `run` run the scripts again, as the first run did."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    flag = sandbox / "provd-up"
    (wizard_d / "10-check").write_text("#!/bin/sh\necho checked\n")
    (wizard_d / "20-provision").write_text(
        f"#!/bin/sh\ntest -e {flag} || {{ echo 'provd unreachable'; exit 3; }}\necho provisioned\n")
    for script in wizard_d.iterdir():
        script.chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    first = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--scripts", "--user", user)
    assert first.returncode == 1
    assert "error: script 20-provision failed: exited with 3" in first.stdout
    flag.touch()
    resumed = cli("run", "--resume", "--root", str(sandbox), "--user", user)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "  10-check                   not_run              (resuming at 20-provision)\n" in (
        resumed.stdout)
    assert "20-provision               succeeded" in resumed.stdout
    rerun = cli("run", "--root", str(sandbox), "--user", user, "--json")
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["run_scripts"] is True
    assert [(s["name"], s["status"]) for s in result["scripts"]] == [
        ("10-check", "succeeded"), ("20-provision", "succeeded")]
    saved = json.loads((sandbox / "var/lib/wizard-runner/config.json").read_text())
    assert saved["config"]["run_scripts"] is True
    assert "admin_password" not in saved["config"]
    status = cli("status", "--root", str(sandbox))
    assert "  handle_system_conf=true run_scripts=true\n" in status.stdout


def test_a_run_that_does_nothing_says_so(sandbox: Path) -> None:
    """No file to write and no script to run: the summary says nothing was done, and why."""
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    again = cli("run", "--config", EXAMPLE, "--root", str(sandbox))
    assert again.returncode == 0
    assert ("nothing was done: every system file was already up to date; run_scripts=false\n"
            in again.stdout)
    off = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--no-system-conf", "--json")
    result = json.loads(off.stdout)
    assert result["changed"] is False
    assert result["handle_system_conf"] is False
    text = cli("run", "--root", str(sandbox), "--no-system-conf")
    assert "nothing was done: handle_system_conf=false; run_scripts=false\n" in text.stdout
    written = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--json")
    assert json.loads(written.stdout)["changed"] is False


def test_validate_with_stdin_closed_prints_json() -> None:
    """`validate --config - --json <&-`: exit 66 and a JSON object, no traceback."""
    done = subprocess.run([str(SCRIPT), "validate", "--config", "-", "--json"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          check=False)
    assert json.loads(done.stdout)["exit_code"] == 65  # an empty body: not JSON
    closed = subprocess.run(["sh", "-c", 'exec "$0" validate --config - --json <&-', SCRIPT],
                            capture_output=True, text=True, timeout=60, check=False)
    assert closed.returncode == 66, closed.stderr
    assert closed.stderr == "wizard-runner: --config -: standard input is closed\n"
    verdict = json.loads(closed.stdout)
    assert (verdict["valid"], verdict["exit_code"]) == (False, 66)


def test_a_command_line_mistake_shows_that_commands_usage() -> None:
    """`validate --bogus` prints validate's usage and the mistake; with --json a JSON object."""
    done = cli("validate", "--bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: wizard-runner validate [-h] --config FILE|-")
    unknown = cli("validate", "--config", EXAMPLE, "--bogus")
    assert unknown.stderr == ("usage: wizard-runner validate [-h] --config FILE|- [--json]\n"
                              "wizard-runner: unrecognized arguments: --bogus\n")
    as_json = cli("run", "--timeout", "soon", "--json")
    assert as_json.returncode == 2
    assert as_json.stderr.startswith("usage: wizard-runner run ")
    assert json.loads(as_json.stdout)["error"] == (
        "argument --timeout: 'soon' is not a number of seconds")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param("run/wizard-runner/lock", "cannot open the lock: Is a directory", id="lock"),
        pytest.param("var/log/wizard-runner/wizard-runner.log",
                     "the run's log could not be written: Is a directory", id="log"),
        pytest.param("var/lib/wizard-runner/config.json",
                     "cannot store the body for reruns: Is a directory", id="saved-body"),
    ],
)
def test_own_files_that_are_directories_stop_the_run_first(sandbox: Path, path: str,
                                                           message: str) -> None:
    """The lock, log or saved body being a directory: exit 74 naming it, before any write."""
    (sandbox / path).mkdir(parents=True)
    before = snapshot(sandbox / "etc")
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--json")
    assert done.returncode == 74, done.stderr
    assert f"wizard-runner: {sandbox / path}: {message}" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 74
    assert "Traceback" not in done.stderr
    assert snapshot(sandbox / "etc") == before
    assert not (sandbox / "var/lib/wizard-runner/last-run.json").exists()


def test_a_result_that_cannot_be_stored_says_what_was_applied(sandbox: Path) -> None:
    """last-run.json cannot be replaced: exit 74, and stderr says the files were applied."""
    (sandbox / "var/lib/wizard-runner/last-run.json").mkdir(parents=True)
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--json")
    assert done.returncode == 74
    assert "cannot store the run's result: Is a directory; the run succeeded: the system " \
        "files were applied (7 written: /etc/hostname, " in done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["exit_code"]) == ("succeeded", 74)
    assert (sandbox / "etc/hostname").read_text() == "pbx\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_a_full_var_stops_the_run_before_any_write(sandbox: Path) -> None:
    """/var on a full tmpfs (in a private mount namespace): exit 74, No space left on
    device, the system files untouched."""
    before = snapshot(sandbox / "etc")
    var = sandbox / "var"
    var.mkdir(exist_ok=True)
    shell = (f"mount -t tmpfs -o size=64k tmpfs {var} && "
             f"(dd if=/dev/zero of={var}/filler bs=4k 2>/dev/null; true) && "
             f"{SCRIPT} run --config {EXAMPLE} --root {sandbox} --json")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 74, done.stderr
    assert "No space left on device" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 74
    assert snapshot(sandbox / "etc") == before


def test_a_script_name_too_long_for_its_log_file(sandbox: Path) -> None:
    """A 252-character script name runs; its log file gets a shortened, unique name."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    name = "10-" + "x" * 249
    (wizard_d / name).write_text("#!/bin/sh\necho long name\n")
    (wizard_d / name).chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--scripts", "--user", user,
               "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["scripts"][0]["status"] == "succeeded"
    logs = list((sandbox / "var/log/wizard-runner" / result["run_id"]).iterdir())
    assert len(logs) == 1
    assert logs[0].name.startswith("10-xxx") and len(logs[0].name.encode()) <= 255
    assert logs[0].read_text() == "stdout: long name\n"


def test_an_internal_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug ends as one line naming the error and where it came from, exit 70."""
    from wizard_runner import cli as command_line  # noqa: PLC0415 - the module under test

    def broken(*args: object) -> int:
        raise ValueError("boom")

    monkeypatch.setitem(command_line._COMMANDS, "status",
                        command_line._COMMANDS["status"]._replace(handle=broken))
    out, err = io.StringIO(), io.StringIO()
    assert command_line.main(["status", "--json"], stdout=out, stderr=err) == 70
    assert err.getvalue().startswith("wizard-runner: internal error, please report it: "
                                     "ValueError: boom (at test_cli.py:")
    assert "Traceback" not in err.getvalue()
    assert json.loads(out.getvalue())["exit_code"] == 70


@pytest.mark.usefixtures("restore_signals")
def test_a_run_whose_result_cannot_be_stored_is_what_status_and_the_next_run_say(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last-run.json cannot be written (a full disk): the run exits 74 saying so; status then
    says that run ended without storing its result (not the run before it, nor no run at
    all), --resume refuses to guess where it stopped, and the next run notes it."""
    from wizard_runner import cli as command_line  # noqa: PLC0415 - the module under test
    from wizard_runner import runner  # noqa: PLC0415
    from wizard_runner.errors import RunnerIOError  # noqa: PLC0415

    (sandbox / "etc/xivo/wizard.d").mkdir(parents=True)

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = command_line.main([*args, "--root", str(sandbox)], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    with monkeypatch.context() as patched:
        patched.setattr(runner, "write_result", lambda *_: (_ for _ in ()).throw(
            RunnerIOError("last-run.json: cannot store the run's result: No space left")))
        code, out, err = run("run", "--config", EXAMPLE, "--no-system-conf", "--json")
    assert code == 74, err
    unstored = json.loads(out)["run_id"]
    code, out, _ = run("status")
    assert code == 1
    assert out.startswith(f"last run {unstored}: result not stored (pid {os.getpid()})\n"
                          f"  run {unstored} (pid {os.getpid()}) ended, but its result could "
                          "not be stored")
    code, out, _ = run("status", "--json")
    assert (json.loads(out)["status"], json.loads(out)["run_id"]) == ("not_stored", unstored)
    code, _, err = run("run", "--resume")
    assert code == 2, err
    assert f"the last run ({unstored}) ended without storing its result" in err
    code, out, err = run("run", "--no-system-conf", "--json")
    assert code == 0, err
    assert json.loads(out)["warnings"] == [
        f"the run before this one ({unstored}, pid {os.getpid()}) ended, but its result could "
        "not be stored"]
    assert run("status")[1].startswith(f"last run {json.loads(out)['run_id']}: succeeded")


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run", "--root", "/"]],
                         ids=["validate", "run"])
def test_an_invalid_bodys_path_cannot_drive_the_terminal(tmp_path: Path,
                                                         command: list[str]) -> None:
    """The path of an invalid body reaches stderr escaped, like the problems under it: a
    name with ESC sequences does not colour or clear the admin's terminal."""
    path = tmp_path / "bad\x1b[31mRED\x1b[0m.json"
    path.write_text("{}")
    done = cli(*command, "--config", str(path))
    assert done.returncode == 65, done.stderr
    assert "\x1b" not in done.stderr
    assert "bad\\x1b[31mRED\\x1b[0m.json is invalid (" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a dry run on the live system")
def test_a_device_this_machine_lacks_is_refused_on_the_live_system(tmp_path: Path) -> None:
    """`run --dry-run` on / with an interface this machine does not have: exit 73, naming
    the field and the devices it has, as a real run would refuse it before any write."""
    body = json.loads(Path(EXAMPLE).read_text())
    body["network"]["interface"] = "nosuch9"
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    done = cli("run", "--dry-run", "--root", "/", "--config", str(path))
    assert done.returncode == 73, done.stderr
    assert "network.interface: nosuch9: this machine has no network device nosuch9 (it has: " \
        in done.stderr
    assert "Traceback" not in done.stderr


def _can_unshare_mounts() -> bool:
    return os.geteuid() == 0 and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True,
        check=False).returncode == 0


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs root and mount namespaces")
def test_a_read_only_directory_is_named_so(sandbox: Path) -> None:
    """/etc/postfix on a read-only mount: refused before anything is written (exit 73),
    saying it is a read-only file system, not to run as root."""
    before = snapshot(sandbox / "etc")
    postfix = sandbox / "etc/postfix"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" run '
         '--config "$3" --root "$4"', "sh", str(postfix), str(SCRIPT), EXAMPLE, str(sandbox)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 73, done.stderr
    assert f"cannot write in {postfix}: a read-only file system" in done.stderr
    assert snapshot(sandbox / "etc") == before


HOSTILE_NAME = "10-evil\n  20-forged                  succeeded\x1b[2J\u202e\u009b"
HOSTILE_SHOWN = "10-evil\\x0a  20-forged                  succeeded\\x1b[2J\\u202e\\x9b"


def test_hostile_names_cannot_forge_a_row(sandbox: Path) -> None:
    """A script name with a newline, escapes and a bidi override is shown escaped on one line
    in list, the run's summary and status; its output too."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    script = wizard_d / HOSTILE_NAME
    script.write_text("#!/bin/sh\nprintf 'bell\\a and \\342\\200\\256 override\\n'\nexit 4\n")
    script.chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    listing = cli("list", "--root", str(sandbox), "--user", user)
    assert listing.stdout.splitlines()[1] == f"  {HOSTILE_SHOWN} run"
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--scripts", "--user", user)
    assert done.returncode == 1
    assert f"  {HOSTILE_SHOWN} failed        0.0 s  (exited with 4)\n" in done.stdout
    assert f"error: script {HOSTILE_SHOWN} failed: exited with 4; last output:\n" in done.stdout
    assert "  bell\\x07 and \\u202e override\n" in done.stdout
    status = cli("status", "--root", str(sandbox))
    assert f"output of {HOSTILE_SHOWN} (last lines):\n" in status.stdout
    for text in (listing.stdout, done.stdout, status.stdout):
        assert not any(char in text for char in "\x1b\x07\u202e\u009b")
        assert "\n  20-forged" not in text


def test_a_name_that_is_not_utf8_is_shown_escaped(sandbox: Path) -> None:
    """A name holding bytes that are not UTF-8 (0x9b is an 8-bit CSI) is shown with each
    such byte as \\xNN in list, the run's summary and status: no raw byte reaches the
    terminal."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    script = wizard_d / os.fsdecode(b"10-raw\x9b2J\xff")
    script.write_text("#!/bin/sh\nexit 4\n")
    script.chmod(0o755)
    user = ["--user", pwd.getpwuid(os.geteuid()).pw_name]
    for args in (["list", *user], ["run", "--config", EXAMPLE, "--scripts", *user], ["status"]):
        output = subprocess.run([str(SCRIPT), *args, "--root", str(sandbox)],
                                capture_output=True, timeout=60, check=False).stdout
        assert b"10-raw\\x9b2J\\xff" in output, output
        assert b"\x9b" not in output and b"\xff" not in output


@pytest.mark.parametrize("closed", [">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_closed_stdout_or_stderr_never_stops_a_run(sandbox: Path, tmp_path: Path,
                                                     closed: str) -> None:
    """Started with stdout, stderr or all three closed, a run does its work and exits 0;
    `status --json` too; what would have gone there goes nowhere, and no traceback does."""
    codes = tmp_path / "codes"
    command = (f'"$0" run --config {EXAMPLE} --root {sandbox} {closed}; echo $? >>{codes}; '
               f'"$0" status --root {sandbox} --json {closed}; echo $? >>{codes}')
    done = subprocess.run(["sh", "-c", command, str(SCRIPT)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert codes.read_text().split() == ["0", "0"], done.stdout + done.stderr
    assert (sandbox / "etc/hostname").read_text() == "pbx\n"
    assert "Traceback" not in done.stdout + done.stderr
    assert json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())[
        "status"] == "succeeded"


@pytest.mark.parametrize("command", ["run", "status", "list"])
def test_an_empty_root_writes_nothing(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                      command: str) -> None:
    """`--root ''` run from inside a root: exit 2 naming the option, nothing written there."""
    monkeypatch.chdir(sandbox)
    before = snapshot(sandbox)
    args = ["--config", EXAMPLE] if command == "run" else []
    done = cli(command, *args, "--root", "")
    assert done.returncode == 2, done.stderr
    assert "--root: the path is empty" in done.stderr
    assert snapshot(sandbox) == before


def test_status_escapes_every_field_of_a_hand_edited_result(sandbox: Path) -> None:
    """A last-run.json edited by hand, still valid: status shows its run id, request id,
    paths and actions escaped, so that the file cannot drive the terminal."""
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    stored = sandbox / "var/lib/wizard-runner/last-run.json"
    result = json.loads(stored.read_text())
    result["run_id"] = "r\x1b[2J"
    result["request_id"] = "q\u202e"
    result["system_conf"]["files"][0]["path"] = "/etc/\x1b]0;title\x07x"
    result["system_conf"]["actions"] = [{"name": "a\x1b[31m", "command": [],
                                         "status": "ok\x07", "detail": None}]
    stored.write_text(json.dumps(result))
    shown = cli("status", "--root", str(sandbox))
    assert shown.returncode == 0, shown.stderr
    assert "r\\x1b[2J" in shown.stdout
    assert "/etc/\\x1b]0;title\\x07x" in shown.stdout
    assert not any(char in shown.stdout for char in "\x1b\x07\u202e")


def test_progress_escapes_names() -> None:
    """The terminal progress shows a script's name escaped."""
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress.started(1, 1, HOSTILE_NAME)
    progress.finished(ScriptOutcome(HOSTILE_NAME, ScriptStatus.FAILED, 4, duration_s=0.01,
                                    reason="exited with 4"))
    assert out.getvalue() == f"[1/1] {HOSTILE_SHOWN} ... FAILED: exited with 4 (0.0 s)\n"


def test_console_log_lines_are_readable(sandbox: Path) -> None:
    """--log-format console: `level: event key=value`, no empty fields, no Python reprs."""
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    (wizard_d / "10-fail").write_text("#!/bin/sh\necho one\necho two\nexit 3\n")
    (wizard_d / "10-fail").chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--scripts", "--user", user,
               "--log-format", "console")
    failed = next(line for line in done.stderr.splitlines() if "script_failed" in line)
    assert failed.startswith("error: script_failed script=10-fail ")
    for field in ('output_tail="two (last of 2 lines)"', "exit_code=3", 'reason="exited with 3"'):
        assert f" {field}" in failed
    assert "None" not in done.stderr
    assert "'" not in failed


#: A command line for each command.
SAMPLE_ARGUMENTS = {
    "validate": ["--config", "x"], "run": ["--config", "x", "--no-scripts", "--timeout", "5"],
    "submit": ["--config", "x", "--wait"], "serve": ["--timeout", "0"], "reopen": ["--root", "/r"],
    "list": ["--json"], "status": ["--json"], "setup-dirs": ["--user", "nobody"],
}


@pytest.mark.parametrize("command", list(build_parser().commands))
def test_a_command_parsed_alone_reads_as_with_every_command(command: str) -> None:
    """Only the command about to run gets its parser built: its help and its reading of a
    command line are the same as with every command built."""
    whole = build_parser().commands[command]
    alone = build_parser(command).commands[command]
    assert alone.format_help() == whole.format_help()
    line = SAMPLE_ARGUMENTS[command]
    assert vars(parse([command, *line])) == {**vars(whole.parse_args(line)), "command": command}


@pytest.mark.processes
def test_a_killed_run_is_what_status_says_and_the_next_run_notes(sandbox: Path,
                                                                   tmp_path: Path) -> None:
    """SIGKILL in the middle of a run (no result stored): status says a run is in progress
    while it is, then that it was killed (exit 1), with the run before it; the next run
    warns of it in its result, and status is back to that run."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    before = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    started = tmp_path / "started"
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    (wizard_d / "10-long").write_text(
        f"#!/bin/sh\n[ -e {started} ] && exit 0\ntouch {started}\nexec sleep 6{os.getpid()}\n")
    (wizard_d / "10-long").chmod(0o755)
    with subprocess.Popen([str(SCRIPT), "run", "--config", EXAMPLE, "--root", str(sandbox),
                           "--scripts", "--user", user], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as running:
        wait_until(started.exists, what="the script's start")
        going = cli("status", "--root", str(sandbox))
        going_json = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)
        running.kill()
    lines = going.stdout.splitlines()
    assert lines[0].startswith("a run is in progress: ")
    killed_id = lines[0].split()[5]
    assert going_json["in_progress"] == {"run_id": killed_id, "pid": running.pid}
    assert going_json["run_id"] == before["run_id"]
    assert lines[1].startswith(f"last run {before['run_id']}: succeeded")
    shown = cli("status", "--root", str(sandbox))
    assert shown.returncode == 1
    assert shown.stdout.startswith(f"last run {killed_id}: killed (pid {running.pid})\n"
                                   f"  run {killed_id} (pid {running.pid}) was killed before it "
                                   "ended: its result was never stored, and the system "
                                   "files may be partly written;")
    assert f"the run before it: {before['run_id']}: succeeded" in shown.stdout
    as_json = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)
    assert (as_json["status"], as_json["run_id"], as_json["pid"],
            as_json["previous"]["run_id"]) == ("killed", killed_id, running.pid,
                                               before["run_id"])
    assert (as_json["handle_system_conf"], as_json["run_scripts"]) == (True, True)
    resumed = cli("run", "--root", str(sandbox), "--user", user, "--resume")
    assert resumed.returncode == 2
    assert f"the last run ({killed_id}) was killed before it stored its result" in \
        resumed.stderr
    again = cli("run", "--root", str(sandbox), "--user", user, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["warnings"] == [
        f"the run before this one ({killed_id}, pid {running.pid}) was killed before it ended; "
        "its result was never stored"]
    assert cli("status", "--root", str(sandbox)).stdout.startswith(
        f"last run {json.loads(again.stdout)['run_id']}: succeeded")
    # Under the fallback containment, the killed run's script outlives it (docs/usage.md);
    # under a cgroup, the run after it has killed it.
    subprocess.run(["pkill", "-f", f"sleep 6{os.getpid()}"], check=False)


def test_status_of_a_killed_run_that_was_not_to_write_the_system_files_says_so(
        sandbox: Path, tmp_path: Path) -> None:
    """A run with --no-system-conf killed while its script runs: status says that the system
    files are as they were, not that they may be partly written."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    started = tmp_path / "started"
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    (wizard_d / "10-long").write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 6{os.getpid()}\n")
    (wizard_d / "10-long").chmod(0o755)
    hosts_before = (sandbox / "etc/hosts").read_bytes()
    with subprocess.Popen([str(SCRIPT), "run", "--config", EXAMPLE, "--root", str(sandbox),
                           "--no-system-conf", "--scripts", "--user", user],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as running:
        wait_until(started.exists, what="the script's start")
        running.kill()
    shown = cli("status", "--root", str(sandbox))
    assert shown.returncode == 1
    assert "its result was never stored, and it was not to write the system files " \
        "(handle_system_conf false): they are as they were;" in " ".join(shown.stdout.split())
    assert (sandbox / "etc/hosts").read_bytes() == hosts_before
    subprocess.run(["pkill", "-f", f"sleep 6{os.getpid()}"], check=False)


def test_status_of_a_killed_run_that_was_not_to_run_its_scripts_says_so(
        sandbox: Path, tmp_path: Path) -> None:
    """A run with --no-scripts killed before it stored its result: status says it ran no
    script (`run_scripts` false in --json, `previous` the run before it, whose scripts
    completed), and the next run keeps that run as the one that completed them."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    ran = tmp_path / "ran"
    counting_script(sandbox, ran)
    first = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--scripts", "--user", user,
                "--json")
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["run_id"]
    pid, killed_id = killed_run(sandbox, "--config", EXAMPLE, "--no-scripts")
    shown = cli("status", "--root", str(sandbox))
    assert shown.returncode == 1
    assert f"run {killed_id} (pid {pid}) was killed before it ended: its result was never " \
        "stored, and the system files may be partly written; it was not to run its scripts " \
        "(run_scripts false): it ran none;" in " ".join(shown.stdout.split())
    as_json = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)
    assert (as_json["status"], as_json["run_id"], as_json["handle_system_conf"],
            as_json["run_scripts"]) == ("killed", killed_id, True, False)
    assert as_json["previous"]["scripts_completed_by"] == first_id
    # (--config again: the killed run may have been cut before it saved its body.)
    again = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--no-scripts", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scripts_completed_by"] == first_id
    assert ran.read_text() == "ran\n"


@pytest.mark.parametrize("second", ["killed", "failed"])
def test_a_run_cut_short_after_a_killed_scripts_run_keeps_the_pass_unknown(
        sandbox: Path, tmp_path: Path, second: str) -> None:
    """A run killed while it was to run the scripts, then a --no-scripts run killed too, or
    one that ends before its result (its body cannot be stored, exit 74): the pass stays
    unknown (the second's holder line says pass-unknown), status says the scripts may have
    run part-way, and --scripts-once runs them again."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    ran = tmp_path / "ran"
    counting_script(sandbox, ran)
    scripts = ("--config", EXAMPLE, "--scripts", "--user", user)
    assert cli("run", "--root", str(sandbox), *scripts).returncode == 0
    killed_run(sandbox, *scripts)
    holder = sandbox / "run/wizard-runner/lock.holder"
    if second == "killed":
        killed_run(sandbox, "--config", EXAMPLE, "--no-scripts")
        assert holder.read_text().split()[2:] == ["no-scripts", "pass-unknown"]
        as_json = json.loads(cli("status", "--root", str(sandbox), "--json").stdout)
        assert as_json["scripts_may_be_partial"] is True
        assert "they may have run part-way" in as_json["error"]
    else:
        saved = sandbox / "var/lib/wizard-runner/config.json"
        saved.unlink()
        saved.mkdir()  # not a file: the body cannot be stored
        failed = cli("run", "--root", str(sandbox), "--config", EXAMPLE, "--no-scripts")
        assert failed.returncode == 74, failed.stderr
        saved.rmdir()
        assert holder.read_text().split()[2:] == ["no-scripts", "pass-unknown", "unstored"]
    again = cli("run", "--root", str(sandbox), *scripts, "--scripts-once", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scripts_already_done"] is False
    assert ran.read_text() == "ran\nran\n"


def test_a_run_killed_after_it_stored_its_result_cut_nothing_short(sandbox: Path) -> None:
    """Killed between storing its result and letting go of the lock: status shows that
    result, and the next run warns of nothing."""
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = sandbox / "run/wizard-runner/lock.holder"
    holder.write_text(f"{gone.pid} {stored['run_id']}\n")
    shown = cli("status", "--root", str(sandbox))
    assert (shown.returncode, shown.stdout.splitlines()[0]) == (
        0, f"last run {stored['run_id']}: succeeded (exit 0)")
    again = cli("run", "--root", str(sandbox), "--json")
    assert json.loads(again.stdout)["warnings"] == []


def to_full_disk(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with its standard output on /dev/full (every write: ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run([str(SCRIPT), *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)


LOST_OUTPUT = ("wizard-runner: standard output could not be written (No space left on device): "
               "what this command printed is incomplete\n")


@pytest.mark.parametrize("args", [
    pytest.param(("validate", "--config", EXAMPLE), id="validate"),
    pytest.param(("validate", "--config", EXAMPLE, "--json"), id="validate-json"),
    pytest.param(("run", "--config", EXAMPLE, "--dry-run", "--json", "--root", "ROOT"),
                 id="dry-run"),
    pytest.param(("status", "--json", "--root", "ROOT"), id="status"),
])
def test_output_that_cannot_be_written_fails_the_command(sandbox: Path,
                                                         args: tuple[str, ...]) -> None:
    """A command whose output is the point fails (74) when its output cannot be written, and
    says so on stderr."""
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    done = to_full_disk(*(str(sandbox) if arg == "ROOT" else arg for arg in args))
    assert (done.returncode, done.stderr) == (74, LOST_OUTPUT)


def test_a_run_keeps_its_exit_code_when_its_output_is_lost(sandbox: Path) -> None:
    """A run's exit code says what became of the run: its output lost is said on stderr, and
    the run still succeeds (its result is stored)."""
    done = to_full_disk("run", "--config", EXAMPLE, "--root", str(sandbox), "--log-format",
                        "json")
    assert done.returncode == 0
    assert done.stderr.endswith(LOST_OUTPUT)
    assert cli("status", "--root", str(sandbox)).returncode == 0


def test_a_reader_that_goes_away_is_not_an_error(sandbox: Path) -> None:
    """A closed pipe (`| head`) ends the output quietly, with the command's own exit code."""
    shown = subprocess.Popen([str(SCRIPT), "run", "--config", EXAMPLE, "--root", str(sandbox),
                              "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert shown.stdout is not None
    shown.stdout.close()  # gone before the first write: every write fails with EPIPE
    _, stderr = shown.communicate(timeout=60)
    assert shown.returncode == 0
    assert "standard output" not in stderr


def test_a_plain_rerun_repeats_the_options_of_the_last_run(sandbox: Path) -> None:
    """`run` without --config repeats the last run's --replace-symlinks (and --user,
    --timeout, --apply-network) with its body; one given again overrides it."""
    resolv = sandbox / "etc/resolv.conf"
    (sandbox / "run").mkdir(exist_ok=True)
    (sandbox / "run/resolv.conf").write_text("nameserver 127.0.0.53\n")
    resolv.unlink()
    resolv.symlink_to("../run/resolv.conf")
    mailname = sandbox / "etc/mailname"
    mailname.unlink()
    mailname.mkdir()  # the run fails before any write
    first = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--replace-symlinks",
                "--timeout", "42")
    assert first.returncode == 73, first.stderr
    assert resolv.is_symlink()
    saved = json.loads((sandbox / "var/lib/wizard-runner/config.json").read_text())
    assert saved["options"] == {"replace_symlinks": True, "apply_network": False,
                                "user": "www-data", "timeout": 42.0}
    mailname.rmdir()

    def planned(*override: str) -> str:
        shown = cli("run", "--root", str(sandbox), "--dry-run", "--json", *override)
        files = json.loads(shown.stdout)["files"]
        return str(next(entry["plan"] for entry in files if entry["path"] == "/etc/resolv.conf"))

    assert (planned(), planned("--no-replace-symlinks")) == ("write", "skip")
    rerun = cli("run", "--root", str(sandbox))
    assert rerun.returncode == 0, rerun.stderr
    assert not resolv.is_symlink()
    saved = json.loads((sandbox / "var/lib/wizard-runner/config.json").read_text())
    assert saved["options"]["timeout"] == 42.0  # the rerun ran with it, and keeps it


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"user": "nosuchuser", "run_scripts": True},
                 "config.json: the last run's user nosuchuser: no such user on this system "
                 "(pass --user NAME)", id="vanished-user"),
    pytest.param({"timeout": 10**400}, 'config.json is damaged ("options": timeout)',
                 id="huge-timeout"),
])
def test_a_saved_option_that_cannot_be_used_is_blamed(sandbox: Path, options: dict[str, Any],
                                                       message: str) -> None:
    """A rerun whose saved options cannot be used names config.json, never an option nobody
    gave, and never crashes."""
    (sandbox / "etc/xivo/wizard.d").mkdir(parents=True)
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--user",
               pwd.getpwuid(os.geteuid()).pw_name).returncode == 0
    saved = sandbox / "var/lib/wizard-runner/config.json"
    data = json.loads(saved.read_text())
    data["config"]["run_scripts"] = options.pop("run_scripts", False)
    data["options"].update(options)
    saved.write_text(json.dumps(data))
    done = cli("run", "--root", str(sandbox))
    assert done.returncode in (2, 74), done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


@pytest.mark.parametrize("command", [
    pytest.param(["status"], id="status"),
    pytest.param(["submit", "--config", EXAMPLE], id="submit"),
    pytest.param(["submit", "--config", "{root}/no\nbody"], id="submit-no-body"),
    pytest.param(["validate", "--config", "{root}/no\nbody"], id="validate"),
])
def test_a_newline_in_a_path_is_shown_escaped(tmp_path: Path, command: list[str]) -> None:
    """A --root or --config holding a newline: every line the command prints is its own (the
    newline shown as \\x0a), none forged by the path."""
    root = tmp_path / "a\nb"
    root.mkdir()
    words = [word.replace("{root}", str(root)) for word in command]
    done = cli(*words, *(["--root", str(root)] if words[0] != "validate" else []))
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "a\\x0ab" in said
    assert not [line for line in said.splitlines() if line.startswith("b")], said


def test_an_answer_is_shown_with_its_control_characters_escaped() -> None:
    """`submit --wait` shows the daemon's answer: its reason keeps its lines (a failed
    script's last output), each shown escaped; the status line is one line."""
    out = io.StringIO()
    code = _print_answer({"request_id": "r\n1", "status": "failed", "exit_code": 1,
                          "reason": "script 10-x failed\n  \x1b[2Jline\tend"}, False, out)
    assert code == 1
    assert out.getvalue() == ("request r\\x0a1: failed (exit 1)\n"
                              "script 10-x failed\n  \\x1b[2Jline\tend\n")


def test_scripts_once_leaves_scripts_that_ran_to_success_alone(sandbox: Path,
                                                               tmp_path: Path) -> None:
    """--scripts-once runs the scripts unless a run ran them to success: the second run (and
    its dry run) leaves them alone and says why; the saved body still asks for them, so a
    plain rerun runs them again."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    ran = tmp_path / "ran"
    counting_script(sandbox, ran)
    once = ("run", "--config", EXAMPLE, "--root", str(sandbox), "--scripts", "--user", user,
            "--scripts-once")
    first = json.loads(cli(*once, "--json").stdout)
    assert (first["scripts_already_done"], ran.read_text()) == (False, "ran\n")
    preview = cli(*once, "--dry-run")
    assert f"# scripts: none would run (they ran to success in run {first['run_id']}; " \
        "--scripts-once)" in preview.stdout
    second = cli(*once)
    assert second.returncode == 0, second.stderr
    assert f"the scripts ran to success in run {first['run_id']}" in second.stdout
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert (stored["scripts_already_done"], stored["run_scripts"],
            stored["scripts_completed_by"]) == (True, False, first["run_id"])
    assert ran.read_text() == "ran\n"
    assert cli("run", "--root", str(sandbox), "--user", user).returncode == 0
    assert ran.read_text() == "ran\nran\n"
