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
from wizard_runner.cli import TerminalProgress
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
    assert cli("run", "--config", EXAMPLE, "--root", str(sandbox)).returncode == 0
    ok = cli("status", "--root", str(sandbox))
    assert ok.returncode == 0
    assert "succeeded (exit 0)" in ok.stdout
    assert "  /etc/hosts                 written\n" in ok.stdout
    wizard_d = sandbox / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    (wizard_d / "10-fail").write_text("#!/bin/sh\necho 'no license server'\nexit 9\n")
    (wizard_d / "10-fail").chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert cli("run", "--root", str(sandbox), "--scripts", "--user", user).returncode == 1
    failed = cli("status", "--root", str(sandbox))
    assert failed.returncode == 1
    assert "10-fail" in failed.stdout
    assert "  | no license server\n" in failed.stdout
    assert "error: script 10-fail failed: exited with 9" in failed.stdout
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
