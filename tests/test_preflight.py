"""Usage errors before any write: every decidable mistake is refused with nothing written."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, snapshot
from wizard_runner.config import WizardConfig
from wizard_runner.errors import UsageError
from wizard_runner.preflight import RunOptions, effective_flags, prepare

SCRIPT = Path(sys.executable).parent / "wizard-runner"
EXAMPLE = str(EXAMPLES / "wizard.json")
USER = pwd.getpwuid(os.geteuid()).pw_name


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script and capture its output."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def add_scripts(root: Path, *names: str, mode: int = 0o755) -> Path:
    """Put /bin/sh scripts that echo their name into wizard.d."""
    wizard_d = root / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True, exist_ok=True)
    for name in names:
        (wizard_d / name).write_text(f"#!/bin/sh\necho {name}\n")
        (wizard_d / name).chmod(mode)
    return wizard_d


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, (True, False), id="as-the-body-says"),
        pytest.param({"run_scripts": True}, (True, True), id="scripts-forced"),
        pytest.param({"handle_system_conf": False}, (False, False), id="system-off"),
        pytest.param({"resume": True}, (True, True), id="resume-implies-scripts"),
        pytest.param({"start_at": "20-b"}, (True, True), id="from-implies-scripts"),
    ],
)
def test_effective_flags(config: WizardConfig, options: dict[str, Any],
                         expected: tuple[bool, bool]) -> None:
    """The command line overrides the body; --from and --resume mean running the scripts."""
    assert effective_flags(config, RunOptions(**options)) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"resume": True, "run_scripts": False},
                     "--resume starts the scripts, which --no-scripts turns off", id="resume"),
        pytest.param({"start_at": "20-b", "run_scripts": False},
                     "--from 20-b starts the scripts, which --no-scripts turns off", id="from"),
        pytest.param({"start_at": "20-b", "resume": True},
                     "--resume and --from both say where the scripts start", id="both"),
    ],
)
def test_conflicting_options(config: WizardConfig, options: dict[str, Any], message: str) -> None:
    """Options that contradict each other are a usage error naming both."""
    with pytest.raises(UsageError, match=message):
        effective_flags(config, RunOptions(**options))


def test_plan_for_a_resumed_run(config: WizardConfig, sandbox: Path) -> None:
    """--resume starts at the script that failed last time, and the plan says it resumes."""
    add_scripts(sandbox, "10-a", "20-b", "30-c")
    state = sandbox / "var/lib/wizard-runner"
    state.mkdir(parents=True)
    last = {"run_id": "r1", "started_at": "2026-12-01T10:00:00+00:00",
            "finished_at": "2026-12-01T10:00:01+00:00", "status": "failed", "exit_code": 1,
            "system_conf": {"handled": True},
            "scripts": [{"name": "10-a", "status": "succeeded"},
                        {"name": "20-b", "status": "failed", "exit_code": 3}]}
    (state / "last-run.json").write_text(json.dumps(last))
    plan = prepare(config, RunOptions(root=sandbox, resume=True, user=USER))
    assert plan.run_scripts is True
    assert plan.start is not None
    assert (plan.start.name, plan.start.note) == ("20-b", "resuming at 20-b")


@pytest.mark.processes
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["--from", "20-provison"], 2,
                     "--from: '20-provison' is not in {wizard_d} (scripts there: 10-check, "
                     "20-provision)", id="typo-from"),
        pytest.param(["--from", "README"], 2,
                     "--from: README would not run (not executable (no execute bit)); scripts "
                     "that run: 10-check, 20-provision", id="from-skipped-entry"),
        pytest.param(["--scripts", "--user", "nosuch"], 2,
                     "--user nosuch: no such user on this system", id="unknown-user"),
        pytest.param(["--resume"], 2,
                     "--resume: nothing to resume: there is no previous run", id="resume-nothing"),
        pytest.param(["--resume", "--no-scripts"], 2,
                     "--resume starts the scripts, which --no-scripts turns off",
                     id="resume-no-scripts"),
        pytest.param(["--from", "10-check", "--resume"], 2,
                     "not allowed with argument", id="from-and-resume"),
    ],
)
def test_usage_errors_write_nothing(sandbox: Path, args: list[str], code: int,
                                    message: str) -> None:
    """A mistake decidable before the first write writes nothing at all: no system file, no
    saved body, no result, no log directory; --dry-run makes the same checks."""
    wizard_d = add_scripts(sandbox, "10-check", "20-provision")
    (wizard_d / "README").write_text("notes\n")
    user = [] if "--user" in args else ["--user", USER]
    before = snapshot(sandbox)
    for dry in ([], ["--dry-run"]):
        done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), *user, *args, *dry)
        assert done.returncode == code, done.stderr
        assert message.format(wizard_d=wizard_d) in done.stderr
        assert "Traceback" not in done.stderr
        assert snapshot(sandbox) == before


@pytest.mark.processes
def test_a_root_without_etc_is_refused(tmp_path: Path) -> None:
    """--root on an empty directory is exit 66 naming the root, and nothing is created."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["--config", EXAMPLE], [], ["--config", EXAMPLE, "--dry-run"]):
        done = cli("run", *args, "--root", str(empty), "--json")
        assert done.returncode == 66, done.stderr
        assert f"--root {empty}: there is no etc/ directory under it" in done.stderr
        assert json.loads(done.stdout)["exit_code"] == 66
    assert list(empty.iterdir()) == []
    (empty / "etc").touch()
    done = cli("run", "--config", EXAMPLE, "--root", str(empty))
    assert done.returncode == 66, done.stderr
    assert f"--root {empty}: its etc is not a directory (a regular file)" in done.stderr


@pytest.mark.processes
def test_a_missing_postfix_directory_stays_a_reasoned_skip(sandbox: Path) -> None:
    """A machine without postfix still runs: its two files are skipped with the reason."""
    for name in ("main.cf", "canonical"):
        (sandbox / "etc/postfix" / name).unlink()
    (sandbox / "etc/postfix").rmdir()
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--json")
    assert done.returncode == 0, done.stderr
    files = {f["path"]: f for f in json.loads(done.stdout)["system_conf"]["files"]}
    assert files["/etc/postfix/main.cf"]["action"] == "skipped"
    assert files["/etc/postfix/main.cf"]["reason"] == "/etc/postfix does not exist on this system"


@pytest.mark.processes
def test_dry_run_lists_the_scripts(sandbox: Path) -> None:
    """--dry-run lists what the scripts step would do with each entry, and writes nothing."""
    wizard_d = add_scripts(sandbox, "10-check", "20-provision", "30-after")
    (wizard_d / "README").write_text("notes\n")
    before = snapshot(sandbox)
    done = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--user", USER,
               "--from", "20-provision", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(
        "# script 10-check                   not_run  (before --from 20-provision)\n"
        "# script 20-provision               run\n"
        "# script 30-after                   run\n"
        "# script README                     skip  (not executable (no execute bit))\n"
    )
    as_json = json.loads(cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--user",
                             USER, "--scripts", "--dry-run", "--json").stdout)
    assert as_json["run_scripts"] is True
    assert as_json["changed"] is True
    assert [(s["name"], s["action"]) for s in as_json["scripts"]] == [
        ("10-check", "run"), ("20-provision", "run"), ("30-after", "run"), ("README", "skip")]
    none = cli("run", "--config", EXAMPLE, "--root", str(sandbox), "--dry-run")
    assert "# scripts: none would run (run_scripts=false)\n" in none.stdout
    assert snapshot(sandbox) == before
