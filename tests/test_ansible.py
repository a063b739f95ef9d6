"""The xivo.wizard collection under the real Ansible engine: check and diff mode, an honest
`changed`, failures that say why, the admin password kept out of every output, the fleet
example, ansible-doc and ansible-test sanity."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, seed_root, snapshot
from tests.helpers import killed_run
from wizard_runner.activate import network_pending, released_pending
from wizard_runner.result import (
    ActionOutcome,
    FileAction,
    FileOutcome,
    RunResult,
    RunStatus,
    SystemConfResult,
    new_run_id,
)

BIN = Path(sys.executable).parent
WIZARD_RUNNER = BIN / "wizard-runner"
COLLECTION = REPO / "ansible"
FLEET_EXAMPLE = COLLECTION / "examples/fleet"
# Distinctive, so that finding it in an output can only mean a leak.
PASSWORD = "Fl33t-S3cret-qZ7w"
MASKED = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
# pytest's tmp dirs are 0700: www-data could not reach the scripts there, so these runs use the
# current user; the fleet example runs as www-data, in a tree it can reach.
RUN_USER = pwd.getpwuid(os.geteuid()).pw_name


def _tool(name: str) -> str | None:
    """The ansible-core command of this venv, else the one on PATH."""
    beside = BIN / name
    return str(beside) if beside.exists() else shutil.which(name)


_MISSING = [name for name in ("ansible-playbook", "ansible-galaxy", "ansible-doc", "ansible-vault")
            if _tool(name) is None]
pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(bool(_MISSING), reason=f"needs ansible-core ({', '.join(_MISSING)} "
                       "not found): pip install -e '.[test]'"),
]


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built from ansible/ and installed into a temporary collections path."""
    work = tmp_path_factory.mktemp("collection")
    # ansible-galaxy's cache and temporary files go there too, not under ~/.ansible.
    env = {**os.environ, "ANSIBLE_HOME": str(work / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(work / "ansible-home/tmp")}
    subprocess.run([str(_tool("ansible-galaxy")), "collection", "build", str(COLLECTION),
                    "--output-path", str(work)], env=env, check=True, capture_output=True,
                   timeout=120)
    tarballs = list(work.glob("xivo-wizard-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    installed = work / "collections"
    subprocess.run([str(_tool("ansible-galaxy")), "collection", "install", "-p", str(installed),
                    str(tarballs[0])], env=env, check=True, capture_output=True, timeout=120)
    return installed


@pytest.fixture
def ansible_env(collections_path: Path, tmp_path: Path) -> dict[str, str]:
    """An environment for the Ansible commands: the built collection, no user config, and every
    file Ansible keeps under a temporary home."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-home/tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-home/remote-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        # wizard-runner of this venv first, for the fleet example that looks it up by name.
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def ansible_playbook(
    env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ansible-playbook at -vvv and check that nothing it printed holds the password."""
    done = subprocess.run([str(_tool("ansible-playbook")), "-vvv", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    # -vvv prints every module's arguments and results: any leak of the password shows here.
    assert PASSWORD not in done.stdout + done.stderr
    return done


@dataclass(frozen=True)
class Played:
    """A playbook run: its exit code, all it printed, and the results its tasks registered."""

    rc: int
    output: str
    results: dict[str, Any]


def play(env: dict[str, str], tmp_path: Path, tasks: list[dict[str, Any]]) -> Played:
    """Run `tasks` on localhost (local connection); each registers its result under its name."""
    dump = tmp_path / "registered.json"
    names = ", ".join(f"'{task['register']}': {task['register']}" for task in tasks)
    keep = {
        "name": "keep the registered results for the test",
        "ansible.builtin.copy": {"content": "{{ {" + names + "} | to_json }}", "dest": str(dump)},
        "check_mode": False,
    }
    # JSON is YAML: the playbook is written as the data it is.
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(json.dumps([{"name": "wizard", "hosts": "localhost", "gather_facts": False,
                                     "tasks": [*tasks, keep]}]))
    done = ansible_playbook(env, tmp_path, str(playbook))
    output = done.stdout + done.stderr
    # Every task either succeeds or ignores its error: the play always reaches the last one.
    assert dump.exists(), f"the play ended before its last task (rc {done.returncode}):\n" \
        f"{output[-6000:]}"
    return Played(done.returncode, output, json.loads(dump.read_text()))


def wizard_task(name: str, root: Path, **options: Any) -> dict[str, Any]:
    """A task of the module on `root` with this venv's wizard-runner; keyword options prefixed
    `task_` are the task's own (check_mode, diff, ignore_errors)."""
    own = {key[len("task_"):]: value for key, value in options.items() if key.startswith("task_")}
    args = {key: value for key, value in options.items() if not key.startswith("task_")}
    return {
        "name": name,
        "xivo.wizard.wizard_runner": {"root": str(root), "executable": str(WIZARD_RUNNER),
                                      "user": RUN_USER, **args},
        "register": name,
        **own,
    }


def seed_appliance(root: Path) -> Path:
    """A sandbox appliance: a fresh Debian's files and the shipped wizard.d."""
    seed_root(root)
    shutil.copytree(REPO / "etc/xivo", root / "etc/xivo")
    return root


def add_script(root: Path, name: str, text: str) -> None:
    """Put an executable script into the sandbox's wizard.d."""
    script = root / "etc/xivo/wizard.d" / name
    script.write_text(text)
    script.chmod(0o755)


@pytest.fixture
def appliance(tmp_path: Path) -> Path:
    """A sandbox appliance under the test's tmp dir."""
    return seed_appliance(tmp_path / "appliance")


@pytest.fixture
def secret_body(body: dict[str, Any]) -> dict[str, Any]:
    """The example body with the distinctive password."""
    body["admin_password"] = PASSWORD
    return body


def test_check_mode_previews_and_writes_nothing(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """Check mode reports changed, the dry run's diff and each script's fate, and writes nothing."""
    before = snapshot(appliance)
    played = play(ansible_env, tmp_path, [
        wizard_task("preview", appliance, config=secret_body, run_scripts=True,
                    task_check_mode=True, task_diff=True),
    ])
    assert played.rc == 0, played.output
    preview = played.results["preview"]
    assert preview["changed"] is True
    assert "--- a/etc/hostname\n+++ b/etc/hostname\n@@ -1 +1 @@\n-debian\n+pbx\n" in (
        preview["diff"]["prepared"])
    # Diff mode shows it to whoever runs the playbook.
    assert "+++ b/etc/network/interfaces" in played.output
    scripts = {entry["name"]: entry for entry in preview["result"]["scripts"]}
    assert scripts["10-check-identity"]["action"] == "run"
    assert scripts["README"]["action"] == "skip"
    assert "not executable" in scripts["README"]["reason"]
    assert "would skip README (not executable" in preview["msg"]
    assert "run_id" not in preview
    assert snapshot(appliance) == before


def test_run_is_changed_and_the_same_run_again_is_not(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A real run reports changed with its diff; the same body again without scripts, from a file
    or the saved body, reports not changed."""
    body_file = tmp_path / "wizard.json"
    body_file.write_text(json.dumps(secret_body))
    body_file.chmod(0o600)
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, run_scripts=True, task_diff=True),
        wizard_task("again", appliance, config_file=str(body_file), run_scripts=False),
        wizard_task("saved", appliance, task_check_mode=True, task_diff=True),
    ])
    assert played.rc == 0, played.output
    run, again, saved = (played.results[name] for name in ("run", "again", "saved"))

    assert run["changed"] is True
    assert run["run_id"] == run["result"]["run_id"]
    assert {entry["action"] for entry in run["result"]["system_conf"]["files"]} == {"written"}
    assert [(entry["name"], entry["status"]) for entry in run["result"]["scripts"]][:2] == [
        ("10-check-identity", "succeeded"), ("50-summary.sh", "succeeded")]
    assert "+pbx.acme.example\n" in run["diff"]["prepared"]
    assert (appliance / "etc/hostname").read_text() == "pbx\n"

    assert again["changed"] is False
    assert {entry["action"] for entry in again["result"]["system_conf"]["files"]} == {"unchanged"}
    assert again["run_id"] != run["run_id"]

    assert saved["changed"] is False
    assert saved["diff"]["prepared"] == ""


def test_scripts_that_ran_to_success_are_not_run_again(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """The same play again and again (check mode too) runs the system step only and is not
    changed; the message says why. rerun_scripts runs them again; after a failed run they
    run again."""
    ran = appliance / "ran"
    add_script(appliance, "30-count", f"#!/bin/sh\necho once >> {ran}\n")
    ran.touch()
    ran.chmod(0o666)  # the scripts' user appends to it
    played = play(ansible_env, tmp_path, [
        wizard_task("first", appliance, config=secret_body, run_scripts=True),
        wizard_task("preview", appliance, config=secret_body, run_scripts=True,
                    task_check_mode=True),
        wizard_task("second", appliance, config=secret_body, run_scripts=True),
        wizard_task("preview3", appliance, config=secret_body, run_scripts=True,
                    task_check_mode=True),
        wizard_task("third", appliance, config=secret_body, run_scripts=True),
        wizard_task("forced", appliance, config=secret_body, run_scripts=True,
                    rerun_scripts=True),
    ])
    assert played.rc == 0, played.output
    first, preview, second, preview3, third, forced = (
        played.results[name]
        for name in ("first", "preview", "second", "preview3", "third", "forced"))
    assert first["changed"] is True
    for task in (preview, second, preview3, third):
        assert task["changed"] is False, task["msg"]
        assert task["msg"].endswith(f"; the scripts are not run again: run {first['run_id']} ran "
                                    "them to success (rerun_scripts: true runs them again)")
    for task in (second, third):
        assert task["result"]["scripts"] == []
        assert task["result"]["scripts_completed_by"] == first["run_id"]
        assert task["result"]["scripts_already_done"] is True
    # What the task left alone is not saved as the body's: an admin's plain rerun still
    # runs the scripts, as after the first play.
    saved = json.loads((appliance / "var/lib/wizard-runner/config.json").read_text())
    assert saved["config"]["run_scripts"] is True
    rerun = subprocess.run([WIZARD_RUNNER, "run", "--dry-run", "--json", "--root", str(appliance)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert ("30-count", "run") in [(s["name"], s["action"])
                                   for s in json.loads(rerun.stdout)["scripts"]], rerun.stderr
    assert forced["changed"] is True
    assert ran.read_text() == "once\nonce\n"
    add_script(appliance, "40-fail", "#!/bin/sh\nexit 1\n")
    failed = play(ansible_env, tmp_path, [wizard_task(
        "failed", appliance, config=secret_body, run_scripts=True, rerun_scripts=True,
        task_ignore_errors=True)])
    assert failed.results["failed"]["rc"] == 1
    (appliance / "etc/xivo/wizard.d/40-fail").unlink()
    again = play(ansible_env, tmp_path, [wizard_task("again", appliance, config=secret_body,
                                                     run_scripts=True)])
    assert again.results["again"]["changed"] is True  # the last run failed: they run
    assert ran.read_text() == "once\n" * 4


def test_a_killed_run_that_was_not_to_run_the_scripts_does_not_make_them_run_again(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """After a `--no-scripts` run killed before it stored its result, the same play again
    runs no script: the killed run ran none, and the run before it had run them to success.
    Nor does the play after that."""
    ran = appliance / "ran"
    add_script(appliance, "30-count", f"#!/bin/sh\necho once >> {ran}\n")
    ran.touch()
    ran.chmod(0o666)  # the scripts' user appends to it
    first = play(ansible_env, tmp_path, [
        wizard_task("first", appliance, config=secret_body, run_scripts=True)])
    first_id = first.results["first"]["run_id"]
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(secret_body))
    pid, killed_id = killed_run(appliance, "--config", str(body_file), "--no-scripts")
    played = play(ansible_env, tmp_path, [
        wizard_task("after", appliance, config=secret_body, run_scripts=True),
        wizard_task("later", appliance, config=secret_body, run_scripts=True),
    ])
    assert played.rc == 0, played.output
    for task in (played.results["after"], played.results["later"]):
        assert task["changed"] is False, task["msg"]
        assert task["msg"].endswith(f"; the scripts are not run again: run {first_id} ran "
                                    "them to success (rerun_scripts: true runs them again)")
        assert task["result"]["scripts_completed_by"] == first_id
    assert played.results["after"]["result"]["warnings"] == [
        f"the run before this one ({killed_id}, pid {pid}) was killed before it ended; its "
        "result was never stored"]
    assert ran.read_text() == "once\n"


def test_failing_script_fails_the_task_with_its_output(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A failing script fails the task with rc 1, its name, reason and last output lines."""
    add_script(appliance, "20-provision", "#!/bin/sh\necho working\necho 'provd unreachable' >&2\n"
                                          "exit 3\n")
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, run_scripts=True,
                    task_ignore_errors=True),
    ])
    run = played.results["run"]
    assert run["failed"] is True
    assert run["rc"] == 1
    assert run["msg"].startswith("wizard-runner: script 20-provision failed (exited with 3)")
    assert run["msg"].endswith("last output:\n  working\n  provd unreachable")
    assert run["result"]["status"] == "failed"
    # The files were written and scripts ran: the failed task still changed the appliance.
    assert run["changed"] is True
    assert "provd unreachable" in played.output


def test_invalid_body_fails_with_every_problem(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """An invalid body fails the task with rc 65, every problem in the message, nothing written."""
    secret_body["network"]["gateway"] = "10.0.0.1"
    secret_body["timezone"] = "Mars/Olympus"
    secret_body["run_script"] = True
    before = snapshot(appliance)
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, task_ignore_errors=True),
    ])
    run = played.results["run"]
    assert run["failed"] is True
    assert run["rc"] == 65
    assert len(run["problems"]) == 3
    assert run["msg"].startswith("wizard-runner: the wizard body is invalid (3 problems): ")
    for problem in ("network.gateway: 10.0.0.1 is not in 192.168.50.0/24", "timezone: ",
                    "run_script: unknown key"):
        assert problem in run["msg"]
    assert snapshot(appliance) == before


def test_held_lock_has_its_own_message(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A run while another holds the lock fails with rc 75 and says so; nothing is written."""
    lock = appliance / "run/wizard-runner/lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        played = play(ansible_env, tmp_path, [
            wizard_task("run", appliance, config=secret_body, task_ignore_errors=True),
        ])
    run = played.results["run"]
    assert run["rc"] == 75
    assert run["msg"].startswith("wizard-runner: another run holds the lock on this appliance, "
                                 "so nothing was done")
    assert "pid 4242" in run["msg"]
    assert (appliance / "etc/hostname").read_text() == "debian\n"


def test_a_warning_of_the_run_is_the_tasks(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A succeeded run whose result carries a warning (its log lost lines): the task is ok
    and Ansible shows the warning."""
    stand_in = tmp_path / "wizard-runner"
    stand_in.write_text(
        f"#!/bin/sh\n{WIZARD_RUNNER} \"$@\" | {sys.executable} -c 'import json, sys; "
        "r = json.load(sys.stdin); r[\"warnings\"] = [\"the log lost lines\"]; "
        "print(json.dumps(r))'\n")
    stand_in.chmod(0o755)
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, executable=str(stand_in)),
    ])
    assert played.rc == 0, played.output
    assert played.results["run"]["warnings"] == ["the log lost lines"]
    assert "[WARNING]: the log lost lines" in played.output


# The files a run writes on a fresh Debian, in the order the result lists them.
WRITTEN = ("/etc/hostname", "/etc/hosts", "/etc/mailname", "/etc/resolv.conf",
           "/etc/network/interfaces", "/etc/postfix/main.cf", "/etc/postfix/canonical")

STAND_IN = '''#!{python}
"""A stand-in for wizard-runner: prints the canned result beside it for `run --json`.

The live follow-ups (hostname, postmap, postfix reload, ifdown/ifup) and their pending notes
happen only on the real root, which a test on a tmp root cannot give the real runner; this
answers as a real run on an appliance would, so that the module's reaction can be tested.
"""
import json, pathlib, sys

if sys.argv[1:2] == ["status"]:  # no run yet
    print(json.dumps({{"status": "none", "exit_code": 3, "error": "no run yet"}}))
    sys.exit(3)
sys.stdin.read()  # the body
if "--dry-run" in sys.argv:
    print(json.dumps({{"dry_run": True, "changed": True, "files": [], "scripts": [],
                      "diff": ""}}))
    sys.exit(0)
print(pathlib.Path(__file__).with_name("result.json").read_text())
'''


def stand_in(where: Path, actions: list[ActionOutcome], pending: list[str]) -> Path:
    """A wizard-runner stand-in in `where` whose run answers a succeeded run, on the real
    root, that wrote every file and had these live follow-ups and pending notes."""
    where.mkdir()
    started = datetime.now(UTC)
    system = SystemConfResult(True, tuple(FileOutcome(path, FileAction.WRITTEN)
                                          for path in WRITTEN),
                              tuple(actions), "/var/backups/wizard-runner/x", tuple(pending))
    result = RunResult(new_run_id(started), started, started, RunStatus.SUCCEEDED, 0, system)
    (where / "result.json").write_text(result.to_json())
    script = where / "wizard-runner"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    return script


def test_a_failed_follow_up_fails_the_task(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A run whose ifup failed (--apply-network): the task fails, changed (the files were
    written), its message names the follow-up and why, with rc and the whole result; the
    pending note is a warning."""
    note = network_pending("eth0")
    executable = stand_in(tmp_path / "stand-in", [
        ActionOutcome("hostname", ("hostname", "-F", "/etc/hostname"), "succeeded"),
        ActionOutcome("ifdown", ("ifdown", "--force", "eth0"), "succeeded"),
        ActionOutcome("ifup", ("ifup", "eth0"), "failed", "exit 1: ifup: no link on eth0"),
    ], [note])
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, apply_network=True,
                    executable=str(executable), task_ignore_errors=True),
    ])
    run = played.results["run"]
    assert run["failed"] is True
    assert run["changed"] is True
    assert run["rc"] == 0
    assert run["result"] == json.loads((tmp_path / "stand-in/result.json").read_text())
    assert run["msg"] == (f"run {run['run_id']}: wrote {', '.join(WRITTEN)}; ran no script; "
                          "but the follow-up ifup failed: exit 1: ifup: no link on eth0; "
                          f"still to do by hand: {note}")
    assert run["warnings"] == [f"still to do by hand: {note}"]


def test_pending_notes_are_warnings(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A run that wrote a network change it did not apply (no apply_network): the task is
    ok and changed, each pending note is an Ansible warning, and the message names them."""
    notes = [network_pending("eth0"), released_pending("eth0", "ens3")]
    executable = stand_in(tmp_path / "stand-in", [
        ActionOutcome("hostname", ("hostname", "-F", "/etc/hostname"), "succeeded"),
    ], notes)
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, executable=str(executable)),
    ])
    assert played.rc == 0, played.output
    run = played.results["run"]
    assert run["changed"] is True
    assert run["warnings"] == [f"still to do by hand: {note}" for note in notes]
    assert run["msg"].endswith("; ran no script; still to do by hand: " + "; ".join(notes))
    assert "[WARNING]: still to do by hand: /etc/network/interfaces changed for eth0" in \
        played.output


def symlinked_resolv_conf(appliance: Path) -> Path:
    """Make the appliance's /etc/resolv.conf a symlink, as resolvconf does; its path."""
    resolv = appliance / "etc/resolv.conf"
    (appliance / "run").mkdir(exist_ok=True)
    (appliance / "run/resolv.conf").write_text("nameserver 127.0.0.53\n")
    resolv.unlink()
    resolv.symlink_to("../run/resolv.conf")
    return resolv


def test_a_skipped_system_file_is_a_warning(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """/etc/resolv.conf a symlink (resolvconf) and no replace_symlinks: the run skips it,
    and the task warns of it with the reason and names it in its message."""
    resolv = symlinked_resolv_conf(appliance)
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body),
        wizard_task("asked", appliance, config=secret_body, handle_system_conf=False),
    ])
    assert played.rc == 0, played.output
    run, asked = played.results["run"], played.results["asked"]
    assert run["changed"] is True
    assert resolv.is_symlink()
    assert run["warnings"] == ["/etc/resolv.conf was not written: is a symlink to "
                               "../run/resolv.conf (another program manages it); pass "
                               "--replace-symlinks to replace it with a file"]
    assert "; skipped /etc/resolv.conf (see warnings); " in run["msg"]
    # Files left alone as the task asked (handle_system_conf false) are no news.
    assert "warnings" not in asked
    assert "skipped" not in asked["msg"]


def test_missing_executable_is_named(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A wizard-runner that is not there fails the task naming the path looked for."""
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, executable="/nonexistent/wizard-runner",
                    task_ignore_errors=True),
    ])
    run = played.results["run"]
    assert run["failed"] is True
    assert run["msg"].startswith("wizard-runner not found: /nonexistent/wizard-runner is not an "
                                 "executable file")


def test_failures_point_at_the_tasks_own_fix(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """Messages name what the task can change: config or config_file when there is no body,
    executable when the command gave no answer (its empty stderr said so), and become only
    when the module is not root."""
    script = appliance / "etc/xivo/wizard.d/10-check-identity"
    script.chmod(0o777)  # anyone may rewrite it: wizard.d is unsafe (77)
    played = play(ansible_env, tmp_path, [
        wizard_task("nobody", appliance, task_ignore_errors=True),
        wizard_task("not_ours", appliance, config=secret_body, executable="/bin/true",
                    task_ignore_errors=True),
        wizard_task("unsafe", appliance, config=secret_body, run_scripts=True,
                    task_ignore_errors=True),
    ])
    nobody, not_ours, unsafe = (played.results[name] for name in ("nobody", "not_ours", "unsafe"))
    assert nobody["msg"] == ("wizard-runner has no body to run: set config or config_file "
                             f"(no saved config at {appliance}/var/lib/wizard-runner/"
                             "config.json)")
    assert nobody["rc"] == 66
    assert not_ours["msg"] in (  # ended before it read the body, or after
        "/bin/true exited with 0 without a JSON answer (is it wizard-runner? see executable): "
        "(nothing on stderr)",
        "/bin/true could not be given the wizard body (Broken pipe): is it wizard-runner? "
        "(see executable)")
    assert unsafe["rc"] == 77
    assert unsafe["msg"].startswith("wizard-runner lacks a privilege it needs or found wizard.d "
                                    "unsafe" + ("" if os.geteuid() == 0 else
                                                " (not root: become: true?)") + ": ")
    assert "10-check-identity" in unsafe["msg"]


@pytest.mark.parametrize("mistake", [
    pytest.param({"admin_password": [PASSWORD, "other"]}, id="password-as-a-list"),
    pytest.param({"admin_password": {"value": PASSWORD}}, id="password-as-a-dict"),
    pytest.param({"admin_pasword": PASSWORD, "admin_password": "x" * 8}, id="misspelled-key"),
])
def test_a_mistyped_secret_is_in_no_output(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any],
    mistake: dict[str, Any],
) -> None:
    """A password of the wrong type (a vault value gone wrong), or under a misspelled key, is
    refused (rc 65) and masked like the password: -vvv prints it nowhere (ansible_playbook
    checks), in the arguments nor in the problems."""
    secret_body.update(mistake)
    played = play(ansible_env, tmp_path, [
        wizard_task("run", appliance, config=secret_body, task_ignore_errors=True),
    ])
    assert played.results["run"]["rc"] == 65
    assert '"hostname": "pbx"' in played.output  # the rest of the body is shown as it is


def test_password_is_in_no_output(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """At -vvv, check mode, a run with its diff and a failed run print the module's arguments
    with the password masked, and the rest of the body as it is; no file holds it."""
    add_script(appliance, "20-provision", "#!/bin/sh\nexit 1\n")
    played = play(ansible_env, tmp_path, [
        wizard_task("preview", appliance, config=secret_body, task_check_mode=True,
                    task_diff=True),
        wizard_task("run", appliance, config=secret_body, run_scripts=True, task_diff=True,
                    task_ignore_errors=True),
    ])
    assert played.results["run"]["rc"] == 1
    # What -vvv prints includes the arguments, the password masked (ansible_playbook checked
    # that the password itself is absent)...
    assert f'"admin_password": "{MASKED}"' in played.output
    # ...and only the password: Ansible would mask every string of a no_log dict, the host name
    # in the diff and the arguments included.
    assert "+pbx\n" in played.output
    assert '"hostname": "pbx"' in played.output
    assert "********" not in json.dumps(played.results)
    for path in [*appliance.rglob("*"), *(tmp_path / "ansible-home").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory www-data can traverse, for scripts run as www-data."""
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("needs the www-data user (Debian's base-passwd has it)")
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts switch to www-data")
    # pytest's tmp dirs are 0700 all the way up; mkdtemp's is too until opened up here.
    made = Path(tempfile.mkdtemp(prefix="wizard-fleet-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made)


def test_fleet_example_stops_the_rollout_at_a_failure(
    ansible_env: dict[str, str], tmp_path: Path, reachable_dir: Path
) -> None:
    """The fleet example, its password from Ansible Vault, sets up the first two appliances and
    stops before the third when one of the first two fails."""
    example = tmp_path / "fleet"
    shutil.copytree(FLEET_EXAMPLE, example)
    vault_key = tmp_path / "vault-key"
    vault_key.write_text("a vault key for this test\n")
    vault = example / "group_vars/xivo_appliances/vault.yml"
    vault.write_text(f"vault_wizard_admin_password: {PASSWORD}\n")
    subprocess.run([str(_tool("ansible-vault")), "encrypt", "--vault-password-file",
                    str(vault_key), str(vault)], env=ansible_env, check=True,
                   capture_output=True, timeout=60)
    assert PASSWORD.encode() not in vault.read_bytes()
    roots = {name: seed_appliance(reachable_dir / name) for name in ("pbx-a", "pbx-b", "pbx-c")}
    add_script(roots["pbx-b"], "20-provision", "#!/bin/sh\necho 'provd unreachable' >&2\nexit 3\n")
    untouched = snapshot(roots["pbx-c"])
    # Local stand-ins for the appliances: each its own sandbox root.
    inventory = example / "test-inventory.ini"
    inventory.write_text("[xivo_appliances]\n" + "".join(
        f"{name} ansible_connection=local ansible_python_interpreter={sys.executable} "
        f"wizard_ip_address=192.168.50.{10 + number} wizard_root={root}\n"
        for number, (name, root) in enumerate(roots.items())
    ))
    done = ansible_playbook(ansible_env, example, "-i", str(inventory), "site.yml",
                            "--vault-password-file", str(vault_key))
    assert done.returncode == 2, done.stdout
    assert (roots["pbx-a"] / "etc/hostname").read_text() == "pbx-a\n"
    # The example leaves the scripts' user to wizard-runner: www-data.
    assert ", as www-data" in (roots["pbx-a"] / "var/lib/wizard-runner/last-run.json").read_text()
    assert "provd unreachable" in done.stdout
    assert snapshot(roots["pbx-c"]) == untouched
    assert "pbx-c" not in done.stdout.split("PLAY RECAP")[1]


def test_ansible_doc_renders_the_module(ansible_env: dict[str, str], tmp_path: Path) -> None:
    """ansible-doc shows the module's options, examples and return values."""
    done = subprocess.run([str(_tool("ansible-doc")), "xivo.wizard.wizard_runner"], cwd=tmp_path,
                          env=ansible_env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    for option in ("config", "config_file", "handle_system_conf", "run_scripts", "resume",
                   "from_script", "timeout", "user", "replace_symlinks", "apply_network",
                   "root", "executable"):
        assert re.search(rf"^[-=] {option}\s", done.stdout, re.MULTILINE), option
    for section in ("EXAMPLES:", "RETURN VALUES:", "ATTRIBUTES:"):
        assert section in done.stdout, section
    # Its notes agree with the run-once scripts: not every run with run_scripts is changed.
    said = " ".join(done.stdout.split())
    assert "every real run reports" not in said
    assert "Once a run has run them to success, later runs leave them alone" in said


@pytest.mark.long
@pytest.mark.timeout(900)
def test_ansible_test_sanity(tmp_path: Path) -> None:
    """ansible-test sanity passes on the collection."""
    tool = _tool("ansible-test")
    assert tool is not None
    tree = tmp_path / "ansible_collections/xivo/wizard"
    shutil.copytree(COLLECTION, tree)
    home = tmp_path / "home"
    # ansible-test bootstraps pip in each of its venvs with a get-pip script it downloads from
    # its own CI file server, which this machine cannot reach. This stand-in, at the path where
    # ansible-test looks for the cached script, installs the same pinned pip with the
    # interpreter's bundled ensurepip and PyPI instead.
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pip = subprocess.run(
        [sys.executable, "-c", "import types; from ansible_test._internal.python_requirements "
         "import get_venv_packages as v; "
         f"print(v(types.SimpleNamespace(version='{python}'))['pip'])"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    cache = home / ".ansible/test/cache"
    cache.mkdir(parents=True)
    (cache / f"get_pip_{pip.replace('.', '_')}.py").write_text(
        "import subprocess, sys\n"
        "subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'])\n"
        "sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install', *sys.argv[1:]]))\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([tool, "sanity", "--local", "--python", python, "--color", "no"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=850,
                          check=False)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert 'Running sanity test "validate-modules"' in done.stdout + done.stderr


def test_a_vault_made_in_the_fleet_example_is_never_built_nor_committed(
        tmp_path: Path) -> None:
    """The vault docs/fleets.md has the integrator create in the fleet example stays out of
    the collection built from that tree, and git ignores it."""
    tree = tmp_path / "ansible"
    shutil.copytree(COLLECTION, tree, ignore=shutil.ignore_patterns("*.tar.gz"))
    vault = "examples/fleet/group_vars/xivo_appliances/vault.yml"
    (tree / vault).write_text(f"vault_wizard_admin_password: {PASSWORD}\n")
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-home/tmp")}
    subprocess.run([str(_tool("ansible-galaxy")), "collection", "build", str(tree),
                    "--output-path", str(tmp_path)], env=env, check=True, capture_output=True,
                   timeout=120)
    (tarball,) = tmp_path.glob("xivo-wizard-*.tar.gz")
    with tarfile.open(tarball) as built:
        names = built.getnames()
    assert "examples/fleet/group_vars/xivo_appliances/wizard.yml" in names
    assert vault not in names
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git what it ignores")
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", f"ansible/{vault}"],
                             capture_output=True, timeout=60, check=False)
    assert ignored.returncode == 0, ignored.stderr


def test_the_collection_carries_the_runners_version() -> None:
    """galaxy.yml's version is wizard_runner.__version__: one version for the whole product."""
    import wizard_runner  # noqa: PLC0415 - the one source of the version

    galaxy = (REPO / "ansible" / "galaxy.yml").read_text()
    found = re.search(r"^version: *(\S+)$", galaxy, re.MULTILINE)
    assert found is not None
    assert found.group(1) == wizard_runner.__version__


def test_a_rerun_of_the_saved_body_repeats_its_options(
    ansible_env: dict[str, str], tmp_path: Path, appliance: Path, secret_body: dict[str, Any]
) -> None:
    """A task with neither config nor config_file reruns the saved body as `wizard-runner
    run` does, with the options the last run was told (--replace-symlinks here), unless the
    task sets them."""
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(secret_body))
    first = subprocess.run([str(WIZARD_RUNNER), "run", "--config", str(body_file), "--root",
                            str(appliance), "--replace-symlinks", "--user", RUN_USER],
                           capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    resolv = symlinked_resolv_conf(appliance)
    played = play(ansible_env, tmp_path, [
        wizard_task("kept", appliance, task_check_mode=True, replace_symlinks=False),
        wizard_task("rerun", appliance),
    ])
    assert played.rc == 0, played.output
    assert played.results["kept"]["changed"] is False  # the task's own false wins
    assert played.results["rerun"]["changed"] is True
    assert not resolv.is_symlink()
    saved = json.loads((appliance / "var/lib/wizard-runner/config.json").read_text())
    assert saved["options"]["replace_symlinks"] is True
