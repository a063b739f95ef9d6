"""The scripts step with real processes: identity, order, failures, timeouts, leftovers, output."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, REPO, Reliability, seed_root
from tests.helpers import (
    ROOT,
    USER,
    add_script,
    no_process_with,
    peak_rss_kib,
    refused,
    refused_again,
    run_step,
    scripts_of,
    shared_dir,
    shared_fifo,
    sigterm_once,
    wait_until,
    www_data,
)
from wizard_runner.config import WizardConfig
from wizard_runner.errors import PrivilegeError, RunInterrupted
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.log import make_logger
from wizard_runner.result import RunResult, RunStatus, ScriptOutcome, scripts_pass
from wizard_runner.runuser import require_switch_allowed, resolve_user
from wizard_runner.scripts.spawner import Exited
from wizard_runner.scripts.step import ScriptsOptions, judge, run_scripts
from wizard_runner.scripts.watch import Watch, Watched
from wizard_runner.signals import install_stop_handlers

pytestmark = pytest.mark.processes


@pytest.fixture
def root(script_root: Path) -> Path:
    """A traversable root with an empty wizard.d."""
    return script_root


@pytest.mark.skipif(not ROOT, reason="needs root to switch to www-data")
def test_runs_as_www_data_with_a_clean_environment(config: WizardConfig, root: Path) -> None:
    """uid, gid and groups are www-data's only; umask 022, cwd /, the documented environment."""
    add_script(root, "10-who", 'echo "$(id -u) $(id -g) $(id -G)"; umask; pwd; env | sort')
    result = run_step(config, root)
    assert result.status is RunStatus.SUCCEEDED
    lines = scripts_of(result)["10-who"]["output_tail"].splitlines()
    www = resolve_user("www-data")
    assert lines[0] == f"{www.uid} {www.gid} " + " ".join(str(g) for g in www.groups)
    assert lines[1] == "0022"
    assert lines[2] == "/"
    env = dict(line.split("=", 1) for line in lines[3:])
    env.pop("PWD", None)  # set by the shell itself
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": www.home, "USER": "www-data", "LOGNAME": "www-data", "LANG": "C.UTF-8",
        "WIZARD_HOSTNAME": "pbx", "WIZARD_DOMAIN": "acme.example",
        "WIZARD_FQDN": "pbx.acme.example", "WIZARD_INTERFACE": "eth0",
        "WIZARD_IP_ADDRESS": "192.168.50.10", "WIZARD_NETMASK": "255.255.255.0",
        "WIZARD_GATEWAY": "192.168.50.1", "WIZARD_NAMESERVERS": "192.168.50.2 9.9.9.9",
        "WIZARD_TIMEZONE": "Europe/Paris", "WIZARD_LANGUAGE": "fr_FR",
        "WIZARD_ENTITY_NAME": "Acme Telecom", "WIZARD_RUN_ID": result.run_id,
        "WIZARD_ROOT": str(root),
    }
    assert config.admin_password.get_secret_value() not in "\n".join(lines)


def test_no_inherited_descriptors_and_stdin_at_eof(config: WizardConfig, root: Path) -> None:
    """The script holds none of the runner's files open, and reading stdin ends at once."""
    add_script(root, "10-fds", 'for fd in /proc/$$/fd/*; do readlink "$fd"; done\n'
                               'if read -r line; then echo "got $line"; else echo "eof"; fi')
    result = run_step(config, root)
    tail = scripts_of(result)["10-fds"]["output_tail"]
    assert "wizard-runner" not in tail.replace(str(root / "etc/xivo/wizard.d"), "")
    assert tail.splitlines()[-1] == "eof"
    assert scripts_of(result)["10-fds"]["duration_s"] < 5


def test_a_caller_that_ignores_sigchld_changes_nothing(config: WizardConfig, root: Path) -> None:
    """An embedding process that ignores SIGCHLD passes that on through exec: the helper still
    learns how each script ended (an ignored SIGCHLD has the kernel reap them unseen), and the
    scripts get the default."""
    add_script(root, "10-sigign", "grep SigIgn /proc/$$/status")
    add_script(root, "20-next", "exit 0")
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        result = run_step(config, root)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    outcomes = scripts_of(result)
    assert result.status is RunStatus.SUCCEEDED, outcomes
    ignored = int(outcomes["10-sigign"]["output_tail"].split()[-1], 16)
    assert not ignored >> (signal.SIGCHLD - 1) & 1


def test_a_script_holds_its_standard_descriptors_only(config: WizardConfig, root: Path) -> None:
    """0, 1 and 2, nothing more (`ls` adds its own 3): no second copy of its output pipes,
    which would keep the output open after a daemon it starts closed its own."""
    add_script(root, "10-fds", "exec ls /proc/self/fd")
    assert scripts_of(run_step(config, root))["10-fds"]["output_tail"].split() == \
        ["0", "1", "2", "3"]


def test_ascii_order_and_skips(config: WizardConfig, root: Path) -> None:
    """Scripts run in byte order, whatever their names; skipped entries say why."""
    log = root / "order"
    log.touch()
    log.chmod(0o666)
    for name in ("b", "B", "a-1", "10-x.sh", "9", "Z_z", "_under"):
        add_script(root, name, f'echo {name} >> {log}')
    add_script(root, "README", "exit 1", mode=0o644)
    add_script(root, ".hidden", "exit 1")
    add_script(root, "old~", "exit 1")
    add_script(root, "x.dpkg-old", "exit 1")
    (root / "etc/xivo/wizard.d/subdir").mkdir()
    result = run_step(config, root)
    assert result.status is RunStatus.SUCCEEDED
    assert log.read_text().split() == ["10-x.sh", "9", "B", "Z_z", "_under", "a-1", "b"]
    reasons = {n: s["reason"] for n, s in scripts_of(result).items() if s["status"] == "skipped"}
    assert reasons == {
        ".hidden": "hidden name",
        "README": "not executable (no execute bit)",
        "old~": "package or editor leftover",
        "subdir": "a directory",
        "x.dpkg-old": "package or editor leftover",
    }


@pytest.mark.parametrize("code", [1, 2, 127, 255])
def test_first_failure_stops_the_rest(config: WizardConfig, root: Path, code: int) -> None:
    """A non-zero exit fails the run (exit 1); later scripts are not run."""
    add_script(root, "10-ok", "echo fine")
    add_script(root, "20-bad", f"echo 'cannot reach provd' >&2; exit {code}")
    add_script(root, "30-later", "touch /tmp/should-not-exist-$WIZARD_RUN_ID")
    result = run_step(config, root)
    assert result.status is RunStatus.FAILED
    assert result.exit_code == 1
    found = scripts_of(result)
    assert [found[n]["status"] for n in ("10-ok", "20-bad", "30-later")] == [
        "succeeded", "failed", "not_run"
    ]
    assert found["20-bad"]["exit_code"] == code
    assert found["30-later"]["reason"] == "not run: 20-bad failed"
    assert result.error is not None
    assert result.error.startswith(f"script 20-bad failed: exited with {code}")
    assert "cannot reach provd" in result.error
    assert not Path(f"/tmp/should-not-exist-{result.run_id}").exists()
    events = [json.loads(line) for line in
              (root / "var/log/wizard-runner/wizard-runner.log").read_text().splitlines()]
    assert any(e["event"] == "script_output" and e["line"] == "cannot reach provd"
               and e["stream"] == "stderr" and e["script"] == "20-bad" for e in events)
    per_script = root / "var/log/wizard-runner" / result.run_id / "20-bad.log"
    assert per_script.read_text() == "stderr: cannot reach provd\n"


def test_the_last_completed_scripts_step_is_carried_over(config: WizardConfig,
                                                         root: Path) -> None:
    """A run whose scripts all succeed, on a pass begun at the top of wizard.d (by it, or by
    the run a --resume continues), names itself in `scripts_completed_by`; runs that leave
    the scripts alone (run_scripts false, or a system step that fails first) carry it over;
    a scripts step that fails, or one started --from (the scripts before it may never have
    succeeded), clears it, and so do a damaged last result and a run before that was killed
    (it may have run scripts part-way)."""
    add_script(root, "10-ok", "echo fine")
    first = run_step(config, root)
    assert (first.scripts_begun_by, first.scripts_completed_by) == (first.run_id,) * 2
    alone = run_step(config, root, run_scripts=False)
    assert (alone.scripts_begun_by, alone.scripts_completed_by) == (first.run_id,) * 2
    (root / "etc/hosts").mkdir()  # the system step cannot write it: it fails first
    broken = run_step(config, root, handle_system_conf=True)
    assert broken.exit_code == 73, broken.error
    assert broken.scripts == ()
    assert broken.scripts_completed_by == first.run_id
    (root / "etc/hosts").rmdir()
    add_script(root, "20-bad", "exit 3")
    add_script(root, "30-later", "echo later")
    failed = run_step(config, root)
    assert (failed.scripts_begun_by, failed.scripts_completed_by) == (failed.run_id, None)
    assert run_step(config, root, run_scripts=False).scripts_completed_by is None
    skipped = run_step(config, root, start_at="30-later")  # 20-bad never succeeded
    assert (skipped.exit_code, skipped.scripts_begun_by, skipped.scripts_completed_by) == (
        0, None, None)
    assert run_step(config, root).exit_code == 1
    (root / "etc/xivo/wizard.d/20-bad").write_text("#!/bin/sh\necho fixed\n")
    resumed = run_step(config, root, resume=True)
    assert resumed.exit_code == 0
    assert resumed.scripts_completed_by == resumed.run_id
    stored = json.loads((root / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored["scripts_completed_by"] == resumed.run_id
    layout = Layout(root)
    layout.lock_file.parent.mkdir(parents=True, exist_ok=True)
    RunLock.holder_of(layout.lock_file).write_text("4194303 20261205T120000Z-0123abcd\n")
    after_kill = run_step(config, root, run_scripts=False)  # that run may have run some
    assert after_kill.warnings  # it says the run before was killed
    assert (after_kill.scripts_begun_by, after_kill.scripts_completed_by) == (None, None)
    assert run_step(config, root).scripts_completed_by is not None
    (root / "var/lib/wizard-runner/last-run.json").write_text("{damaged")
    assert run_step(config, root, run_scripts=False).scripts_completed_by is None


@pytest.mark.parametrize(("stored", "begun", "completed"), [
    pytest.param({"status": "succeeded", "run_scripts": True}, "R", "R", id="succeeded"),
    pytest.param({"status": "failed", "run_scripts": True}, "R", None, id="failed"),
    pytest.param({"status": "succeeded", "run_scripts": False}, None, None, id="no-scripts"),
])
def test_a_result_from_before_the_pass_was_kept(stored: dict[str, Any], begun: str | None,
                                               completed: str | None) -> None:
    """A result stored without the pass fields (an earlier version's) ran its scripts from
    the top: its run begun the pass, and completed it if it succeeded."""
    run_id = "20261125T150602Z-2d2105ed"
    found = scripts_pass({"run_id": run_id, **stored})
    expect = {"R": run_id, None: None}
    assert found == {"scripts_begun_by": expect[begun], "scripts_completed_by": expect[completed]}


@pytest.mark.parametrize("sig", ["KILL", "SEGV", "TERM"])
def test_death_by_signal(config: WizardConfig, root: Path, sig: str) -> None:
    """A script killed by a signal is a failure naming the signal."""
    add_script(root, "10-dies", f"kill -{sig} $$")
    found = scripts_of(run_step(config, root))["10-dies"]
    assert found["status"] == "failed"
    assert found["signal"] == f"SIG{sig}"
    assert found["exit_code"] is None
    assert found["reason"] == f"killed by SIG{sig}"


def test_exec_failure_without_shebang(config: WizardConfig, root: Path) -> None:
    """A file without a #! line cannot be executed: a failure that says so."""
    path = root / "etc/xivo/wizard.d/10-noshebang"
    path.write_text("echo hello\n")
    path.chmod(0o755)
    found = scripts_of(run_step(config, root))["10-noshebang"]
    assert found["status"] == "failed"
    assert found["reason"] == "cannot execute: Exec format error (no #! line?)"


def test_timeout_kills_the_whole_tree(config: WizardConfig, root: Path) -> None:
    """A hang past the timeout is stopped, with its children; reported timed_out."""
    marker = f"sleep 3{os.getpid() % 1000}1"
    add_script(root, "10-hang", f"{marker} & {marker}")
    started = time.monotonic()
    found = scripts_of(run_step(config, root, timeout=1.0))["10-hang"]
    assert time.monotonic() - started < 10
    assert found["status"] == "timed_out"
    assert found["reason"] == "timed out after 1 s"
    assert no_process_with(marker)


def test_sigterm_ignored_still_killed(config: WizardConfig, root: Path) -> None:
    """A script that ignores SIGTERM is killed after the grace period."""
    add_script(root, "10-stubborn", "trap '' TERM; while :; do sleep 0.1; done")
    started = time.monotonic()
    found = scripts_of(run_step(config, root, timeout=1.0))["10-stubborn"]
    assert found["status"] == "timed_out"
    assert time.monotonic() - started < 15


def test_leftover_holding_stdout_is_killed_and_logged(config: WizardConfig, root: Path) -> None:
    """`sleep 1000 &` keeps stdout open: the run still ends quickly, the sleeper is killed."""
    marker = f"sleep 1{os.getpid() % 1000}7"
    add_script(root, "10-bg", f"{marker} & echo started")
    add_script(root, "20-next", "echo next")
    started = time.monotonic()
    result = run_step(config, root)
    assert time.monotonic() - started < 10
    found = scripts_of(result)
    assert found["10-bg"]["status"] == "succeeded"
    assert found["20-next"]["status"] == "succeeded"
    assert len(found["10-bg"]["leftovers"]) == 1
    assert found["10-bg"]["leftovers"][0].endswith(marker)
    assert no_process_with(marker)


def test_double_forked_daemon_is_killed(config: WizardConfig, root: Path) -> None:
    """A daemon that double-forks into its own session is found by its run id and killed."""
    marker = f"sleep 2{os.getpid() % 1000}3"
    add_script(root, "10-daemon", f"setsid sh -c '{marker} & wait' > /dev/null 2>&1 < /dev/null &"
               "\nsleep 0.2; echo done")
    result = run_step(config, root)
    assert scripts_of(result)["10-daemon"]["status"] == "succeeded"
    assert any(marker in leftover for leftover in scripts_of(result)["10-daemon"]["leftovers"])
    assert no_process_with(marker)


def test_200_sleepers_are_all_killed(config: WizardConfig, root: Path) -> None:
    """A script that forks 200 sleepers leaves none behind."""
    marker = f"sleep 4{os.getpid() % 1000}9"
    add_script(root, "10-forks", f"i=0; while [ $i -lt 200 ]; do {marker} & i=$((i+1)); done")
    result = run_step(config, root)
    assert len(scripts_of(result)["10-forks"]["leftovers"]) == 200
    assert no_process_with(marker)


def test_orphans_are_reaped_while_the_script_runs(config: WizardConfig, root: Path) -> None:
    """A script that leaves short-lived orphans (`(cmd &)`, which shell scripts do) does not
    pile up zombies while it runs: each holds a pid until reaped, and thousands would take
    the system's last ones. They are reaped as they exit."""
    add_script(root, "10-orphans", "for i in $(seq 300); do (true &); done; sleep 0.3; n=0\n"
               "for s in /proc/[0-9]*/stat; do read -r l < $s 2>/dev/null || continue\n"
               '  case "$l" in *") Z $PPID "*) n=$((n+1));; esac\n'
               "done; echo zombies=$n")
    result = run_step(config, root)
    script = scripts_of(result)["10-orphans"]
    assert script["status"] == "succeeded", script
    zombies = int(script["output_tail"].split("zombies=")[1].split()[0])
    assert zombies < 10, script["output_tail"]


def test_invalid_utf8_and_long_lines(config: WizardConfig, root: Path) -> None:
    """Bytes that are not UTF-8 are shown escaped; a line without newline still arrives."""
    add_script(root, "10-bin", r"printf 'caf\351 ok\n\377\376 end'")
    found = scripts_of(run_step(config, root))["10-bin"]
    assert found["status"] == "succeeded"
    assert found["output_tail"] == "caf\\xe9 ok\n\\xff\\xfe end"


def test_a_script_may_reopen_its_own_output(config: WizardConfig, root: Path) -> None:
    """/dev/stdout, /dev/stderr and /proc/self/fd/N open again for the run user, as they do
    under run-parts: its output pipes are its own."""
    add_script(root, "10-reopen", "set -e; echo one >/dev/stdout; echo two >/dev/stderr\n"
               "echo three >/proc/self/fd/1; id -u")
    found = scripts_of(run_step(config, root))["10-reopen"]
    assert found["status"] == "succeeded", found
    uid = str(www_data()[0] if ROOT else os.geteuid())
    assert sorted(found["output_tail"].splitlines()) == sorted(["one", "two", "three", uid])


def test_output_is_capped_and_tail_kept(config: WizardConfig, root: Path) -> None:
    """A chatty script's log stops at the cap with a notice; the tail holds the last lines."""
    add_script(root, "10-chatty", "seq 1 200000")
    result = run_step(config, root)
    found = scripts_of(result)["10-chatty"]
    assert found["output_tail"].splitlines()[-1] == "200000"
    assert len(found["output_tail"]) <= 4096
    per_script = (root / "var/log/wizard-runner" / result.run_id / "10-chatty.log").read_text()
    assert per_script.startswith("stdout: 1\nstdout: 2\n")
    assert per_script.endswith("stdout: 200000\n")


def run_user_may_remove_scripts(root: Path) -> None:
    """wizard.d root's, group www-data with write (still safe): a script may remove entries."""
    if not ROOT:
        pytest.skip("needs root: the directory belongs to root, the script runs as www-data")
    wizard_d = root / "etc/xivo/wizard.d"
    wizard_d.chmod(0o775)
    os.chown(wizard_d, 0, 33)


def test_script_deleting_itself_and_wizard_d(config: WizardConfig, root: Path) -> None:
    """A script that removes itself and wizard.d does not confuse the runner."""
    run_user_may_remove_scripts(root)
    add_script(root, "10-vanish", 'rm -f "$0"; echo gone')
    add_script(root, "20-after", "echo after")
    result = run_step(config, root)
    found = scripts_of(result)
    assert found["10-vanish"]["status"] == "succeeded"
    assert found["20-after"]["status"] == "succeeded"


def test_a_script_removed_after_the_listing_is_said_to_be_gone(config: WizardConfig,
                                                                root: Path) -> None:
    """A script removed from wizard.d while the step runs (a package upgrade, say) fails
    saying so, not blaming its #! interpreter."""
    run_user_may_remove_scripts(root)
    add_script(root, "10-first", 'rm -f "$(dirname "$0")/20-second"')
    add_script(root, "20-second", "echo never")
    found = scripts_of(run_step(config, root))
    assert (found["20-second"]["status"], found["20-second"]["reason"]) == (
        "failed", "cannot execute: it is no longer in wizard.d (removed since the step listed "
        "it)")


def test_missing_wizard_d_is_exit_66(config: WizardConfig, root: Path) -> None:
    """run_scripts with no wizard.d: an error naming the path, exit 66, nothing written."""
    shutil.rmtree(root / "etc/xivo/wizard.d")
    error = refused(config, root)
    assert error.exit_code == 66
    assert str(error) == (f"{root}/etc/xivo/wizard.d: the scripts directory does not exist, "
                          "so no script can run")


def test_empty_wizard_d_succeeds(config: WizardConfig, root: Path) -> None:
    """An empty wizard.d is a success with no scripts."""
    result = run_step(config, root)
    assert result.status is RunStatus.SUCCEEDED
    assert result.scripts == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda d: (d / "10-a").chmod(0o757), "10-a is writable by others (mode 0757)",
                     id="world-writable-script"),
        pytest.param(lambda d: d.chmod(0o757), "wizard.d is writable by others (mode 0757)",
                     id="world-writable-dir"),
        pytest.param(lambda d: os.chown(d / "10-a", 4242, 4242), "10-a is owned by 4242",
                     id="foreign-owner"),
    ],
)
def test_unsafe_permissions_refuse_the_step(
    config: WizardConfig, root: Path, change: Any, message: str
) -> None:
    """Unsafe permissions refuse the run before anything is written (exit 77), naming the
    file."""
    if not ROOT and "owner" in message:
        pytest.skip("needs root to chown")
    add_script(root, "10-a", f"touch {root}/ran")
    change(root / "etc/xivo/wizard.d")
    error = refused(config, root)
    assert error.exit_code == 77
    assert message in str(error)
    assert not (root / "ran").exists()


@pytest.mark.skipif(not ROOT, reason="needs root to own a file www-data cannot execute")
def test_not_executable_by_the_user_fails_in_place(config: WizardConfig, root: Path) -> None:
    """A root-only 0700 script fails at its place in the order, saying why."""
    add_script(root, "10-ok", "echo ok")
    add_script(root, "20-private", "echo secret", mode=0o700)
    add_script(root, "30-later", "echo later")
    found = scripts_of(run_step(config, root))
    assert found["10-ok"]["status"] == "succeeded"
    assert found["20-private"]["status"] == "failed"
    assert found["20-private"]["reason"] == (
        "has an execute bit, but www-data cannot execute it (mode 0700, owner root)"
    )
    assert found["30-later"]["status"] == "not_run"


def test_other_user_needs_root(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root and asked for another user: exit 77, saying to run as root or pass --user."""
    monkeypatch.setattr("wizard_runner.runuser.os.geteuid", lambda: 4242)
    add_script(root, "10-a", "true")
    error = refused(config, root, user="www-data")
    assert error.exit_code == 77
    assert "needs root" in str(error)
    assert "--user" in str(error)
    with pytest.raises(PrivilegeError):
        require_switch_allowed(resolve_user("www-data"))


def test_from_and_resume(config: WizardConfig, root: Path) -> None:
    """--from starts at a script; --resume starts where the last run failed and says so."""
    flag = root / "flag"
    add_script(root, "10-a", "echo a")
    add_script(root, "20-b", f'test -e {flag} || {{ echo "flag missing"; exit 4; }}')
    add_script(root, "30-c", "echo c")
    first = run_step(config, root)
    assert scripts_of(first)["20-b"]["status"] == "failed"
    flag.touch()
    resumed = run_step(config, root, resume=True)
    found = scripts_of(resumed)
    assert [found[n]["status"] for n in ("10-a", "20-b", "30-c")] == [
        "not_run", "succeeded", "succeeded"
    ]
    assert found["10-a"]["reason"] == "resuming at 20-b"
    started_late = scripts_of(run_step(config, root, start_at="30-c"))
    assert started_late["20-b"]["status"] == "not_run"
    assert started_late["20-b"]["reason"] == "before --from 30-c"
    stored = (root / "var/lib/wizard-runner/last-run.json").read_bytes()
    missing = refused_again(config, root, start_at="99-nope")
    assert missing.exit_code == 2
    assert str(missing) == (f"--from: '99-nope' is not in {root}/etc/xivo/wizard.d "
                            "(scripts there: 10-a, 20-b, 30-c)")
    nothing = refused_again(config, root, resume=True)
    assert nothing.exit_code == 2
    assert "nothing to resume: the last run" in str(nothing)
    assert "succeeded" in str(nothing)
    assert (root / "var/lib/wizard-runner/last-run.json").read_bytes() == stored



def cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start the console script."""
    script = Path(sys.executable).parent / "wizard-runner"
    return subprocess.Popen([str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, **kwargs)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_runner_stops_the_script(
    root: Path, signum: int, code: int, reliability: Reliability
) -> None:
    """SIGTERM/SIGINT to the runner ends the running script's tree; the result says so."""
    marker = f"sleep 5{os.getpid() % 1000}{signum}"
    shared = shared_dir(root)
    ready = shared / "ready"
    add_script(root, "10-slow", f"touch {ready}; {marker} & {marker}")
    add_script(root, "20-never", "echo never")
    runner = cli("run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                 "--no-system-conf", "--scripts", "--user", USER, "--json")
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    runner.send_signal(signum)
    stdout, _ = runner.communicate(timeout=30)
    assert runner.returncode == code
    result = json.loads(stdout)
    assert result["status"] == "interrupted"
    found = {s["name"]: s for s in result["scripts"]}
    assert found["10-slow"]["status"] == "failed"
    assert found["10-slow"]["reason"].startswith("stopped: wizard-runner was interrupted")
    assert found["20-never"]["status"] == "not_run"
    assert no_process_with(marker)
    stored = json.loads((root / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored["status"] == "interrupted"
    name = signal.Signals(signum).name
    reliability.record(area="scripts", fault=f"{name} to the runner",
                       injection=f"{name} while a script and its child run", trials=1, lost=0,
                       outcome=f"tree stopped, result `interrupted`, exit {code}")


def test_saved_config_rerun_without_config(root: Path) -> None:
    """A plain `wizard-runner run` reuses the last body, saved 0600 without the password."""
    add_script(root, "10-a", "echo a")
    first = cli("run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                "--no-system-conf", "--user", USER)
    first.communicate(timeout=60)
    assert first.returncode == 0
    saved = root / "var/lib/wizard-runner/config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert "admin_password" not in json.loads(saved.read_text())["config"]
    assert "Sup3rSecret!" not in saved.read_text()
    again = cli("run", "--root", str(root), "--no-system-conf", "--scripts", "--user", USER,
                "--json")
    stdout, _ = again.communicate(timeout=60)
    assert again.returncode == 0
    assert [s["status"] for s in json.loads(stdout)["scripts"]] == ["succeeded"]
    (root / "var/lib/wizard-runner/config.json").unlink()
    none = cli("run", "--root", str(root))
    none.communicate(timeout=60)
    assert none.returncode == 66


def run_cli(root: Path, *extra: str, timeout: float = 60, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Run the console script on `root` (scripts only) and return its exit code and result."""
    runner = cli("run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                 "--no-system-conf", "--scripts", "--user", USER, "--json", *extra, **kwargs)
    stdout, _ = runner.communicate(timeout=timeout)
    return runner.returncode, json.loads(stdout) if stdout.strip() else {}


def test_timeout_applies_after_the_output_is_closed(config: WizardConfig, root: Path) -> None:
    """A script that closes its output and hangs still times out."""
    marker = f"sleep 6{os.getpid() % 1000}1"
    add_script(root, "10-quiet", f"exec >/dev/null 2>&1\n{marker}")
    started = time.monotonic()
    found = scripts_of(run_step(config, root, timeout=1.0))["10-quiet"]
    assert time.monotonic() - started < 10
    assert found["status"] == "timed_out"
    assert no_process_with(marker)


@pytest.mark.parametrize(
    "launch",
    [
        pytest.param("setsid env -i {marker} &", id="holding-stdout"),
        pytest.param("setsid env -i {marker} >/dev/null 2>&1 </dev/null &", id="detached"),
    ],
)
def test_daemon_that_clears_its_environment_is_killed(root: Path, launch: str) -> None:
    """A daemon that leaves the session and drops WIZARD_RUN_ID is still found and killed."""
    marker = f"sleep 7{os.getpid() % 1000}{len(launch)}"
    add_script(root, "10-daemon", "echo start\n" + launch.format(marker=marker) + "\nsleep 0.2")
    started = time.monotonic()
    code, result = run_cli(root, "--timeout", "20")
    assert time.monotonic() - started < 15
    assert code == 0
    leftovers = result["scripts"][0]["leftovers"]
    assert any(marker in leftover for leftover in leftovers), leftovers
    assert no_process_with(marker)


def test_embedded_run_finds_a_daemon_that_left_everything(config: WizardConfig,
                                                          root: Path) -> None:
    """In-process (confd's API, no subreaper of its own): a setsid daemon with a cleared
    environment and closed output is still found, because the helper adopts it."""
    marker = f"sleep 6{os.getpid() % 1000}9"
    add_script(root, "10-daemon", f"setsid env -i {marker} >/dev/null 2>&1 </dev/null &")
    add_script(root, "20-after", "echo after")
    result = run_step(config, root)
    assert result.exit_code == 0
    found = scripts_of(result)
    assert any(marker in leftover for leftover in found["10-daemon"]["leftovers"])
    assert found["20-after"]["status"] == "succeeded"
    assert no_process_with(marker)


def test_a_helper_that_cannot_start_fails_the_first_script_clearly(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No interpreter for the helper: the first script fails naming why, the rest do not run."""
    add_script(root, "10-first", "echo never")
    add_script(root, "20-second", "echo never")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    result = run_step(config, root)
    found = scripts_of(result)
    assert result.exit_code == 1
    assert found["10-first"]["status"] == "failed"
    assert "/nonexistent/python3" in found["10-first"]["reason"]
    assert found["20-second"]["status"] == "not_run"


def test_second_signal_does_not_cut_the_clean_up(root: Path) -> None:
    """SIGTERM then SIGINT: the tree is still stopped and the script is in the result."""
    marker = f"sleep 8{os.getpid() % 1000}1"
    shared = shared_dir(root)
    ready = shared / "ready"
    add_script(root, "10-stubborn", f"trap '' TERM; setsid {marker} & touch {ready}\n"
               "while :; do sleep 0.2; done")
    runner = cli("run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                 "--no-system-conf", "--scripts", "--user", USER, "--json")
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    runner.send_signal(signal.SIGINT)
    stdout, _ = runner.communicate(timeout=30)
    assert runner.returncode == 143
    result = json.loads(stdout)
    assert [s["name"] for s in result["scripts"]] == ["10-stubborn"]
    assert result["status"] == "interrupted"
    assert no_process_with(marker)
    assert no_process_with("10-stubborn")


def test_closed_stderr_does_not_break_the_run(root: Path) -> None:
    """With stderr a closed pipe, the run still finishes, stores its result and cleans up."""
    add_script(root, "10-talks", "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done")
    read_end, write_end = os.pipe()
    os.close(read_end)
    runner = subprocess.Popen(
        [str(Path(sys.executable).parent / "wizard-runner"), "run", "--config",
         str(EXAMPLES / "wizard.json"), "--root", str(root), "--no-system-conf", "--scripts",
         "--user", USER, "--json"],
        stdout=subprocess.PIPE, stderr=write_end, text=True,
    )
    os.close(write_end)
    stdout, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0
    assert json.loads(stdout)["status"] == "succeeded"
    stored = json.loads((root / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored["scripts"][0]["output_tail"].endswith("line 299")


def test_chatty_script_cannot_flood_the_main_log(config: WizardConfig, root: Path) -> None:
    """Past a cap, output lines stay in the script's own log, not the main JSON log."""
    add_script(root, "10-flood", "yes | head -n 300000")
    result = run_step(config, root)
    main_log = root / "var/log/wizard-runner/wizard-runner.log"
    assert main_log.stat().st_size < 2 * 1024 * 1024
    events = [json.loads(line) for line in main_log.read_text().splitlines()]
    assert any(e["event"] == "script_output_not_logged" for e in events)
    per_script = root / "var/log/wizard-runner" / result.run_id / "10-flood.log"
    assert per_script.read_text().count("stdout: y\n") == 300000


def group_writable(path: Path, gid: int) -> None:
    """Give `path` to group `gid` (root stays owner) and let that group write it."""
    os.chown(path, 0, gid)
    path.chmod(0o775)


@pytest.mark.skipif(not ROOT, reason="needs root to set a foreign group")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda r: group_writable(r / "etc/xivo/wizard.d/10-a", 100),
                     "10-a is writable by group users (mode 0775)", id="group-writable-script"),
        pytest.param(lambda r: (r / "etc/xivo").chmod(0o777),
                     "/etc/xivo is writable by others (mode 0777)", id="parent-writable"),
    ],
)
def test_writable_by_strangers_refuses(config: WizardConfig, root: Path, change: Any,
                                       message: str) -> None:
    """A script or a parent directory that someone else could change refuses the step."""
    add_script(root, "10-a", f"touch {root}/ran")
    change(root)
    error = refused(config, root)
    assert error.exit_code == 77
    assert message in str(error)
    assert not (root / "ran").exists()


def test_stopped_script_still_times_out(config: WizardConfig, root: Path) -> None:
    """A script that stopped itself (SIGSTOP) is continued so that SIGTERM ends it in time."""
    add_script(root, "10-stopped", "kill -STOP $$; echo resumed")
    started = time.monotonic()
    found = scripts_of(run_step(config, root, timeout=1.0))["10-stopped"]
    assert found["status"] == "timed_out"
    assert time.monotonic() - started < 4


def test_missing_interpreter_is_explained(config: WizardConfig, root: Path) -> None:
    """A #! line naming a program that is not installed says so."""
    path = root / "etc/xivo/wizard.d/10-php"
    path.write_text("#!/nonexistent/php\n")
    path.chmod(0o755)
    found = scripts_of(run_step(config, root))["10-php"]
    assert found["reason"] == (
        "cannot execute: No such file or directory (is the #! interpreter installed?)"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "abc"])
def test_bad_timeout_is_a_usage_error(root: Path, value: str) -> None:
    """--timeout must be 0 or a finite positive number."""
    runner = cli("run", "--root", str(root), "--timeout", value)
    runner.communicate(timeout=30)
    assert runner.returncode == 2


def test_100_mb_of_output_keeps_the_runner_small(root: Path) -> None:
    """A script printing 100 MB in 100-byte lines leaves the runner's peak memory bounded."""
    add_script(root, "10-big", "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx' | head -c 100000000")
    runner = cli("run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                 "--no-system-conf", "--scripts", "--user", USER, "--json", "--timeout", "300")
    peak_kib = peak_rss_kib(runner)
    stdout, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, stdout
    assert 0 < peak_kib < 100 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    result = json.loads(stdout)
    assert len(result["scripts"][0]["output_tail"].encode()) <= 4096
    per_script = root / "var/log/wizard-runner" / result["run_id"] / "10-big.log"
    assert per_script.stat().st_size < 17 * 1024 * 1024
    assert per_script.read_text().endswith("the last lines are in the result's output_tail]\n")


@pytest.mark.skipif(not ROOT, reason="needs root to switch to www-data")
def test_shipped_scripts_pass_on_the_sandbox(root: Path) -> None:
    """The example scripts of etc/xivo/wizard.d succeed after a full run on Debian's files."""
    seed_root(root)
    shutil.copytree(REPO / "etc", root / "etc", dirs_exist_ok=True)
    runner = cli("run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                 "--scripts", "--json")
    stdout, _ = runner.communicate(timeout=120)
    result = json.loads(stdout)
    assert runner.returncode == 0, result["error"]
    found = {s["name"]: s for s in result["scripts"]}
    assert found["10-check-identity"]["output_tail"].splitlines() == [
        "ok: /etc/hostname is pbx",
        "ok: /etc/mailname is pbx.acme.example",
        "ok: the address of pbx.acme.example in /etc/hosts is 192.168.50.10",
    ]
    assert "run:         " + result["run_id"] + ", as www-data" in found["50-summary.sh"][
        "output_tail"]
    assert found["README"]["status"] == "skipped"
    (root / "etc/mailname").write_text("wrong.example\n")
    again = cli("run", "--root", str(root), "--no-system-conf", "--scripts", "--json")
    stdout, _ = again.communicate(timeout=120)
    assert again.returncode == 1
    check = json.loads(stdout)["scripts"][0]
    assert "MISMATCH: /etc/mailname is 'wrong.example'" in check["output_tail"]


class SlowProgress:
    """A progress view that lags (a slow terminal)."""

    def __init__(self, per_line: float = 0.0, per_end: float = 0.0) -> None:
        self.per_line, self.per_end = per_line, per_end

    def started(self, index: int, total: int, name: str) -> None:
        """Nothing to show."""

    def output(self, name: str, stream: str, line: str) -> None:
        """Lag on every line."""
        time.sleep(self.per_line)

    def finished(self, outcome: Any) -> None:
        """Lag at every end."""
        time.sleep(self.per_end)


def run_stopped_after(seconds: float, config: WizardConfig, root: Path,
                      **options: Any) -> RunResult:
    """run(), with the CLI's stop handlers and a SIGTERM to this process after `seconds`."""
    install_stop_handlers()
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        return run_step(config, root, **options)
    finally:
        timer.cancel()


@pytest.mark.usefixtures("restore_signals")
def test_stop_while_the_runner_lags_reports_what_ran(config: WizardConfig,
                                                     root: Path) -> None:
    """SIGTERM while the runner lags: a script that ran is never reported not_run, the one
    running is stopped and says so, and nothing starts after the stop."""
    trace = root / "trace"
    trace.touch(mode=0o666)
    trace.chmod(0o666)
    add_script(root, "10-chatty", "echo a; echo b; echo c")
    add_script(root, "20-quick", f"echo 20 >> {trace}")
    marker = f"sleep 4{os.getpid() % 1000}3"
    add_script(root, "30-long", f"echo 30 >> {trace}; {marker}")
    add_script(root, "40-never", f"echo 40 >> {trace}")
    result = run_stopped_after(0.8, config, root, progress=SlowProgress(per_line=0.5))
    ran = trace.read_text().split()
    found = scripts_of(result)
    assert result.status is RunStatus.INTERRUPTED
    assert "40" not in ran
    for name in ("20-quick", "30-long"):
        if name[:2] in ran:
            assert found[name]["status"] != "not_run", found[name]
    if "30" in ran:
        assert found["30-long"]["status"] == "failed"
        assert "SIGTERM" in found["30-long"]["reason"]
    assert found["40-never"]["status"] == "not_run"
    assert no_process_with(marker)


def test_a_timed_out_script_that_exits_0_on_sigterm_stops_the_step(config: WizardConfig,
                                                                   root: Path) -> None:
    """Timed out, it traps SIGTERM and exits 0: the next script must not start."""
    marker = root / "next-ran"
    add_script(root, "10-slow", "trap 'exit 0' TERM; while :; do sleep 0.05; done")
    add_script(root, "20-next", f"touch {marker}; sleep 3")
    result = run_step(config, root, timeout=1.0, progress=SlowProgress(per_end=0.3))
    found = scripts_of(result)
    assert found["10-slow"]["status"] == "timed_out"
    assert found["20-next"]["status"] == "not_run"
    assert not marker.exists()


@pytest.mark.usefixtures("restore_signals")
def test_a_script_that_ends_well_when_stopped_starts_nothing_more(config: WizardConfig,
                                                                  root: Path) -> None:
    """SIGTERM: the running script traps it and exits 0, leaving nothing. It was stopped, and
    the next script does not start."""
    shared = shared_dir(root)
    ready, ran = shared / "ready", shared / "ran"
    add_script(root, "10-polite", f"trap 'exit 0' TERM; touch {ready}; "
                                  "while :; do sleep 0.05; done")
    add_script(root, "20-next", f"touch {ran}")
    install_stop_handlers()
    with sigterm_once(ready, what="10-polite to start"):
        result = run_step(config, root)
    found = scripts_of(result)
    assert result.status is RunStatus.INTERRUPTED
    assert (found["10-polite"]["status"], found["10-polite"]["exit_code"]) == ("failed", 0)
    assert "stopped" in found["10-polite"]["reason"]
    assert found["20-next"]["status"] == "not_run"
    assert not ran.exists()


class StopThenRelease:
    """A progress view that, on the first line of a script, sends the runner SIGTERM, lets
    the script end (a line into its FIFO), then stays busy: the runner sees the stop late."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.done = False

    def started(self, index: int, total: int, name: str) -> None:
        """Nothing to show."""

    def output(self, name: str, stream: str, line: str) -> None:
        """The stop, the script's end, a busy runner."""
        if not self.done:
            self.done = True
            os.kill(os.getpid(), signal.SIGTERM)
            with open(self.fifo, "w") as fifo:
                fifo.write("go\n")
            time.sleep(0.5)

    def finished(self, outcome: Any) -> None:
        """Nothing to show."""


@pytest.mark.usefixtures("restore_signals")
def test_no_script_starts_after_a_stop_the_runner_is_too_busy_to_see(config: WizardConfig,
                                                                     root: Path) -> None:
    """SIGTERM while the runner is busy (a slow terminal); the running script then ends by
    itself with 0. It succeeded; the next one is never ordered."""
    fifo = shared_fifo(root)
    ran = fifo.parent / "ran"
    add_script(root, "10-waits", f"echo waiting; read x < {fifo}; exit 0")
    add_script(root, "20-next", f"touch {ran}")
    install_stop_handlers()
    result = run_step(config, root, progress=StopThenRelease(fifo))
    found = scripts_of(result)
    assert result.status is RunStatus.INTERRUPTED
    assert found["10-waits"]["status"] == "succeeded"
    assert found["20-next"]["status"] == "not_run"
    assert not ran.exists()


@pytest.mark.parametrize("held_up", [False, True], ids=["read-at-once", "held-up-past-grace"])
def test_a_deadline_seen_after_the_script_ended_stops_nothing(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch, held_up: bool
) -> None:
    """The runner looks at a script's deadline only after the script had ended in time (its
    end unread), and may then be held up past the grace before it reads the end: the script
    succeeded, by the helper's clock, nothing says it timed out, and the step goes on."""
    add_script(root, "10-quick", "sleep 0.8")
    add_script(root, "20-next", "echo done")
    read_message = Watch._message
    lags = 2 if held_up else 1
    lagged: list[int] = []

    def lag(watch: Watch) -> None:
        if watch.index == 1 and watch.seen.deadline is not None and len(lagged) < lags:
            extra = watch.grace + 0.1 if lagged else 0.0  # the second: past the grace
            lagged.append(watch.index)
            time.sleep(max(watch.seen.deadline - time.monotonic(), 0) + 0.05 + extra)
            return  # the end waits unread
        read_message(watch)

    monkeypatch.setattr(Watch, "_message", lag)
    options = ScriptsOptions(user=resolve_user(USER), timeout=1.5, grace=0.3)
    log = io.StringIO()
    outcomes = run_scripts(config=config, layout=Layout.under(root), run_id="lagged",
                           options=options, log=make_logger(log, json_lines=True))
    assert lagged == [1] * lags
    assert "script_timed_out" not in log.getvalue()  # neither said nor done
    assert [(o.name, o.status.value) for o in outcomes] == [("10-quick", "succeeded"),
                                                            ("20-next", "succeeded")]
    assert outcomes[1].output_tail == "done"


def test_descriptors_past_1023_do_not_break_a_stop(config: WizardConfig, root: Path) -> None:
    """An embedding application holding over a thousand descriptors: a timeout still stops
    the script, and the run ends with a result."""
    add_script(root, "10-slow", "sleep 5")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"needs a descriptor limit of 2048 or more (the hard limit is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        result = run_step(config, root, timeout=0.5)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert scripts_of(result)["10-slow"]["status"] == "timed_out"


def test_a_helper_without_a_pidfd_is_a_failed_start(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pidfd for the helper (descriptors run out): the script fails to start, saying why,
    and the helper is ended all the same."""
    add_script(root, "10-first", "exit 0")

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    result = run_step(config, root)
    found = scripts_of(result)["10-first"]
    assert (found["status"], found["reason"]) == ("failed",
                                                  "cannot start: Too many open files")


def test_a_timeout_that_is_no_number_of_seconds_is_refused(config: WizardConfig,
                                                           root: Path) -> None:
    """Through the Python API as on the command line: inf, NaN or a negative timeout is a
    usage error, before anything is written."""
    for bad in (math.inf, math.nan, -1.0):
        assert "timeout" in str(refused(config, root, timeout=bad))


def test_a_time_limit_of_centuries_is_taken(config: WizardConfig, root: Path) -> None:
    """A limit too long for the helper's clock is as good as none; a tiny one still times
    out."""
    add_script(root, "10-quick", "exit 0")
    for centuries in (1e12, 1e300):
        assert run_step(config, root, timeout=centuries).exit_code == 0
    add_script(root, "20-slow", "sleep 1")
    assert scripts_of(run_step(config, root, timeout=1e-12))["10-quick"]["status"] == \
        "timed_out"


def test_inheritable_descriptors_of_the_caller_do_not_reach_scripts(config: WizardConfig,
                                                                     root: Path) -> None:
    """An embedding process's inheritable fd (a socket, a pipe) stays out of the scripts."""
    add_script(root, "10-fds", "for fd in /proc/$$/fd/*; do readlink $fd; done; exit 0")
    readable, writable = os.pipe()
    os.set_inheritable(writable, True)
    ours = f"pipe:[{os.fstat(writable).st_ino}]"
    try:
        result = run_step(config, root)
    finally:
        os.close(readable)
        os.close(writable)
    assert result.exit_code == 0
    targets = scripts_of(result)["10-fds"]["output_tail"].splitlines()
    assert targets
    assert ours not in targets


def test_a_helper_dying_after_a_script_is_a_failure_not_a_crash(config: WizardConfig,
                                                                root: Path) -> None:
    """The helper killed right after it reported the end: the run ends failed, with a result."""
    add_script(root, "10-kill-helper", "H=$PPID; (sleep 0.05; kill -9 $H) & exit 0")
    add_script(root, "20-after", "sleep 0.5")
    result = run_step(config, root)
    found = scripts_of(result)
    assert result.exit_code == 1
    assert any(script["status"] == "failed" and "helper" in (script["reason"] or "")
               for script in found.values()), found


@pytest.mark.parametrize("closing", [pytest.param("", id="both-open"),
                                     pytest.param("exec 2>&-", id="stderr-closed")])
def test_a_leftover_holding_one_pipe_keeps_its_last_line(config: WizardConfig, root: Path,
                                                         closing: str) -> None:
    """A child still writing after the script exited: its last, unterminated line is kept."""
    add_script(root, "10-child", f"{closing}\n(sleep 0.1; echo from-child; "
               "printf tail-no-newline) &\nexit 0")
    found = scripts_of(run_step(config, root))["10-child"]
    assert found["status"] == "succeeded"
    assert found["output_tail"].endswith("from-child\ntail-no-newline"), found


def test_a_script_that_stops_its_helper_cannot_hang_the_run(config: WizardConfig,
                                                           root: Path) -> None:
    """SIGSTOP to the helper, a leftover holding the output: the timeout still ends the run,
    bounded, and nothing is left behind."""
    marker = f"sleep 3{os.getpid() % 1000}8"
    add_script(root, "10-stopper", f"setsid {marker} &\nkill -STOP $PPID\nexit 0")
    add_script(root, "20-after", "echo never")
    options = ScriptsOptions(user=resolve_user(USER), timeout=1.0, grace=0.5)
    started = time.monotonic()
    with open(os.devnull, "w") as sink:
        outcomes = run_scripts(config=config, layout=Layout.under(root), run_id="stopper",
                               options=options, log=make_logger(sink, json_lines=True))
    assert time.monotonic() - started < 15
    assert [(o.name, o.status.value) for o in outcomes] == [("10-stopper", "failed"),
                                                            ("20-after", "not_run")]
    assert no_process_with(marker)


class StopAtStart(SlowProgress):
    """Sends SIGTERM to the runner when one script is about to start."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def started(self, index: int, total: int, name: str) -> None:
        """Stop the runner right there."""
        if name == self.name:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_between_scripts_keeps_every_entry_once(config: WizardConfig,
                                                       root: Path) -> None:
    """Stopped as 30 is shown starting: 10 and 20 keep their outcomes, 25 (not executable)
    stays skipped, 30 and 40 did not run; each entry once, in order. 30 is ordered only once
    it has been shown, so it never starts."""
    ran = shared_dir(root) / "ran"
    add_script(root, "10-a", "exit 0")
    add_script(root, "20-b", "exit 0")
    add_script(root, "25-data", "not a script", mode=0o644)
    add_script(root, "30-c", f"touch {ran}")
    add_script(root, "40-d", f"touch {ran}")
    install_stop_handlers()
    result = run_step(config, root, progress=StopAtStart("30-c"))
    assert result.status is RunStatus.INTERRUPTED
    found = [(s["name"], s["status"]) for s in result.to_dict()["scripts"]]
    assert found == [("10-a", "succeeded"), ("20-b", "succeeded"), ("25-data", "skipped"),
                     ("30-c", "not_run"), ("40-d", "not_run")]
    assert result.to_dict()["scripts"][3]["reason"] == \
        "not run: wizard-runner was interrupted by SIGTERM"
    assert not ran.exists()


class StopAtEnd(SlowProgress):
    """Records what is shown; sends SIGTERM to the runner as one script's end is shown."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.shown: list[str] = []

    def started(self, index: int, total: int, name: str) -> None:
        """Record it."""
        self.shown.append(f"started {name}")

    def finished(self, outcome: Any) -> None:
        """Record it; stop the runner after the chosen script."""
        self.shown.append(f"finished {outcome.name}")
        if outcome.name == self.name:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_as_a_script_end_is_shown_starts_nothing_more(config: WizardConfig,
                                                            root: Path) -> None:
    """Stopped as 10's end is shown: the next script is ordered only once that is done, so
    20 never starts, and the view shows nothing more."""
    ran = shared_dir(root) / "ran"
    add_script(root, "10-a", "exit 0")
    add_script(root, "20-b", f"touch {ran}")
    add_script(root, "30-c", "exit 0")
    view = StopAtEnd("10-a")
    install_stop_handlers()
    result = run_step(config, root, progress=view)
    assert result.status is RunStatus.INTERRUPTED
    assert view.shown == ["started 10-a", "finished 10-a"]
    assert [s["status"] for s in result.to_dict()["scripts"]] == \
        ["succeeded", "not_run", "not_run"]
    assert not ran.exists()


class _Tripwire:
    """A logger that acts as one script's success is logged: by then, the next script has been
    ordered (the overlap: it starts while the one before is logged and recorded)."""

    def __init__(self, inner: Any, script: str, action: Any) -> None:
        self.inner, self.script, self.action = inner, script, action

    def bind(self, **fields: Any) -> _Tripwire:
        return _Tripwire(self.inner.bind(**fields), self.script, self.action)

    def __getattr__(self, level: str) -> Any:
        def emit(event: str, **fields: Any) -> Any:
            if event == "script_succeeded" and fields.get("script") == self.script:
                self.action()
            return getattr(self.inner, level)(event, **fields)
        return emit


def _overlapped(config: WizardConfig, root: Path, action: Any,
                record: Any = None) -> list[ScriptOutcome]:
    """Run 10-a, 20-b (which starts a process and waits) and 30-c, `action` done as 10-a's
    success is logged, `record` given each record; the outcomes recorded last."""
    add_script(root, "10-a", "exit 0")
    add_script(root, "20-b", f"sleep 3{os.getpid() % 1000}7 &\nwait")
    ran = shared_dir(root) / "30-ran"
    add_script(root, "30-c", f"touch {ran}")
    options = ScriptsOptions(user=resolve_user(USER), timeout=30.0, grace=1.0)
    recorded: list[ScriptOutcome] = []

    def keep(outcomes: list[ScriptOutcome]) -> None:
        recorded[:] = outcomes
        if record is not None:
            record(outcomes)

    with open(os.devnull, "w") as sink:
        log = _Tripwire(make_logger(sink, json_lines=True), "10-a", action)
        with contextlib.suppress(RunInterrupted, KeyboardInterrupt):
            run_scripts(config=config, layout=Layout.under(root), run_id="overlap", options=options,
                        log=log, record=keep)
    assert no_process_with(f"sleep 3{os.getpid() % 1000}7")
    assert not ran.exists()
    return recorded


@pytest.mark.usefixtures("restore_signals")
def test_a_script_ordered_ahead_and_then_stopped_is_no_script_not_run(config: WizardConfig,
                                                                       root: Path) -> None:
    """A stop that comes once the next script is ordered (as the one before is logged) stops
    that script, which is reported stopped, never `not_run`; the rest does not run."""
    install_stop_handlers()
    outcomes = _overlapped(config, root, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert [(o.name, o.status.value) for o in outcomes] == [
        ("10-a", "succeeded"), ("20-b", "failed"), ("30-c", "not_run")]
    assert outcomes[1].reason == f"stopped: wizard-runner was {RunInterrupted(signal.SIGTERM)}"


def test_a_step_cut_short_after_an_order_ahead_says_the_next_may_have_run(
        config: WizardConfig, root: Path) -> None:
    """A KeyboardInterrupt as 10-a's success is logged, with 20-b ordered: 10-a's outcome
    stands, 20-b may have run in part (it is not reported not run) and it and what it started
    are stopped, 30-c does not run."""
    def interrupt() -> None:
        raise KeyboardInterrupt

    outcomes = _overlapped(config, root, interrupt)
    assert [(o.name, o.status.value, o.reason) for o in outcomes] == [
        ("10-a", "succeeded", None),
        ("20-b", "failed", "cut short by KeyboardInterrupt: it may have run in part"),
        ("30-c", "not_run", "not run: the step was cut short by KeyboardInterrupt")]


def test_a_step_cut_short_between_entries_says_only_the_ordered_one_may_have_run(
        config: WizardConfig, root: Path) -> None:
    """A KeyboardInterrupt as 10-a's success is recorded, 20-b ordered and 10-a's entry over:
    10-a stays succeeded, 20-b may have run in part, 30-c did not run."""
    def interrupt(outcomes: list[ScriptOutcome]) -> None:
        if len(outcomes) == 1:
            raise KeyboardInterrupt

    outcomes = _overlapped(config, root, lambda: None, interrupt)
    assert [(o.name, o.status.value, o.reason) for o in outcomes] == [
        ("10-a", "succeeded", None),
        ("20-b", "failed", "cut short by KeyboardInterrupt: it may have run in part"),
        ("30-c", "not_run", "not run: the step was cut short by KeyboardInterrupt")]


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_during_a_clean_up_starts_nothing_more(config: WizardConfig,
                                                      root: Path) -> None:
    """SIGTERM while a leftover is being stopped: the next script does not start."""
    marker = root / "next-ran"
    stubborn = f"sleep 2{os.getpid() % 1000}6"
    add_script(root, "10-leaves", f"setsid sh -c \"trap '' TERM; {stubborn}\" "
               ">/dev/null 2>&1 </dev/null &\nsleep 0.2")
    add_script(root, "20-next", f"touch {marker}")
    options = ScriptsOptions(user=resolve_user(USER), timeout=30.0, grace=1.5)
    install_stop_handlers()
    timer = threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with open(os.devnull, "w") as sink, pytest.raises(RunInterrupted):
            run_scripts(config=config, layout=Layout.under(root), run_id="stop-in-clean-up",
                        options=options, log=make_logger(sink, json_lines=True))
    finally:
        timer.cancel()
    assert not marker.exists()
    assert no_process_with(stubborn)


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_seen_before_the_last_scripts_exit_cuts_nothing_short(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM lands as the last script's exit is on its way: the runner sees the stop first,
    yet the script had ended by itself. The scripts say they succeeded; the run says it was
    stopped once every step had completed, not that a script was cut short."""
    add_script(root, "10-first", "exit 0")
    add_script(root, "20-last", "exit 0")
    read_exit = Watch._message
    lagged: list[int] = []

    def stop_before_reading_the_exit(watch: Watch) -> None:
        if watch.index == 2 and watch.seen.pid is not None and not lagged:  # started
            lagged.append(watch.index)
            os.kill(os.getpid(), signal.SIGTERM)  # the exit waits in the pipe, unread
            return
        read_exit(watch)

    monkeypatch.setattr(Watch, "_message", stop_before_reading_the_exit)
    install_stop_handlers()
    result = run_step(config, root)
    assert lagged == [2]
    assert result.status is RunStatus.INTERRUPTED
    assert result.exit_code == 128 + signal.SIGTERM
    assert [(s.name, s.status.value) for s in result.scripts] == [("10-first", "succeeded"),
                                                                 ("20-last", "succeeded")]
    assert (result.error or "").endswith("every step had completed before it was acted on"), result


def test_a_late_look_at_a_timed_out_script_still_says_timed_out(config: WizardConfig,
                                                                root: Path) -> None:
    """The runner lagged showing a line (slow terminal) and saw the end first: past its
    deadline by the helper's clock, the script still timed out, the log says so, and the step
    stopped there."""
    add_script(root, "10-first", "exit 0")
    add_script(root, "20-slow", "echo shown slowly; sleep 1.5")
    add_script(root, "30-after", "exit 0")
    result = run_step(config, root, timeout=1.0, progress=SlowProgress(per_line=2.5))
    found = scripts_of(result)
    assert found["20-slow"]["status"] == "timed_out"
    assert result.exit_code == 1
    assert found["30-after"]["status"] == "not_run"
    said = [json.loads(line) for line in
            (root / "var/log/wizard-runner/wizard-runner.log").read_text().splitlines()]
    assert [(e.get("script"), e.get("seen")) for e in said
            if e["event"] == "script_timed_out"] == [("20-slow", "at its end")]


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_after_the_end_judges_the_script_as_it_ended(config: WizardConfig,
                                                            root: Path) -> None:
    """SIGTERM while the runner still shows the output of a script that had exited 0."""
    add_script(root, "10-chatty", "echo a; echo b; echo c")
    result = run_stopped_after(0.6, config, root, progress=SlowProgress(per_line=0.5))
    assert result.status is RunStatus.INTERRUPTED
    assert scripts_of(result)["10-chatty"]["status"] == "succeeded"


def test_a_timeout_acted_on_is_a_timeout_though_the_end_was_on_its_way(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner acts on the deadline (logs it, stops the set) while the script's end, taken
    just before it, is still on its way: the verdict is what the log says, timed out, and
    nothing more starts."""
    ran = shared_dir(root) / "ran"
    add_script(root, "10-quick", "sleep 0.5")
    add_script(root, "20-next", f"touch {ran}")
    read_message, catch_up = Watch._message, Watch._catch_up
    lagged: list[str] = []

    def lag(watch: Watch) -> None:
        if watch.index == 1 and watch.seen.pid is not None and not lagged:
            lagged.append("end")
            time.sleep(max((watch.seen.deadline or 0) - time.monotonic(), 0) + 0.05)
            return  # the end waits unread
        read_message(watch)

    def in_flight(watch: Watch) -> None:
        if lagged == ["end"]:
            lagged.append("unseen")  # as if the end were not readable yet
            return
        catch_up(watch)

    monkeypatch.setattr(Watch, "_message", lag)
    monkeypatch.setattr(Watch, "_catch_up", in_flight)
    options = ScriptsOptions(user=resolve_user(USER), timeout=1.0, grace=0.3)
    log = io.StringIO()
    outcomes = run_scripts(config=config, layout=Layout.under(root), run_id="in-flight",
                           options=options, log=make_logger(log, json_lines=True))
    assert lagged == ["end", "unseen"]
    assert [(o.name, o.status.value) for o in outcomes] == [("10-quick", "timed_out"),
                                                            ("20-next", "not_run")]
    assert "script_timed_out" in log.getvalue()
    assert not ran.exists()


@pytest.mark.usefixtures("restore_signals")
def test_a_script_stopped_before_its_deadline_was_stopped_though_it_died_after(
    config: WizardConfig, root: Path
) -> None:
    """SIGTERM before the deadline; the script ignores it and dies of SIGKILL only after its
    deadline: it was stopped, not timed out."""
    ready = shared_dir(root) / "ready"
    add_script(root, "10-stubborn", f"trap '' TERM; touch {ready}; sleep 30")
    options = ScriptsOptions(user=resolve_user(USER), timeout=1.0, grace=1.5)
    install_stop_handlers()
    kept: list[ScriptOutcome] = []
    with sigterm_once(ready, what="10-stubborn to start"), open(os.devnull, "w") as sink, \
            pytest.raises(RunInterrupted):
        run_scripts(config=config, layout=Layout.under(root), run_id="stubborn",
                    options=options, log=make_logger(sink, json_lines=True),
                    record=lambda outcomes: kept.extend(outcomes[len(kept):]))
    assert [(o.name, o.status.value, o.reason) for o in kept] == [
        ("10-stubborn", "failed", "stopped: wizard-runner was interrupted by SIGTERM")]
    assert (kept[0].duration_s or 0.0) > 1.0  # it did die past its deadline


class FailsOnOutput(SlowProgress):
    """A progress view (an embedding application's) that raises on a script's first line of
    output, once the script says it is ready (it makes `ready`)."""

    def __init__(self, ready: Path) -> None:
        super().__init__()
        self.ready = ready

    def output(self, name: str, stream: str, line: str) -> None:
        """Break, once the script is ready."""
        wait_until(self.ready.exists, what="the script to be ready")
        raise RuntimeError("the view broke")


class FailsOnLine(SlowProgress):
    """A progress view that raises when it is shown one line."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def output(self, name: str, stream: str, line: str) -> None:
        """Break on that line."""
        if line == self.line:
            raise RuntimeError("the view broke")


def test_what_a_script_wrote_before_killing_its_helper_is_kept(config: WizardConfig,
                                                                root: Path) -> None:
    """A script that writes, then kills its helper at once: the runner may see the helper's
    death before its start or its output; what it wrote is read all the same, and kept."""
    add_script(root, "10-kills", "echo said before; kill -KILL $PPID; sleep 2")
    for _ in range(5):  # the race goes either way: each way must keep the output
        outcome = scripts_of(run_step(config, root))["10-kills"]
        assert outcome["reason"] == "the script killed the helper that ran it (SIGKILL)"
        assert outcome["output_tail"] == "said before"


def test_a_view_breaking_on_the_last_unterminated_line_leaves_no_file_open(
    config: WizardConfig, root: Path
) -> None:
    """The script kills its helper after a line without a newline, which is shown only as
    its output is closed; the view raises there: the error reaches the caller and the
    script's log file is not left open."""
    add_script(root, "10-partial", "echo full line; printf 'no newline'; kill -KILL $PPID; "
               "sleep 2")
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="the view broke"):
        run_scripts(config=config, layout=Layout.under(root), run_id="partial",
                    options=ScriptsOptions(user=resolve_user(USER)),
                    log=make_logger(io.StringIO(), json_lines=True),
                    progress=FailsOnLine("no newline"))
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_step_broken_off_while_a_script_runs_leaves_nothing(
    config: WizardConfig, root: Path
) -> None:
    """If the step breaks off while a script runs (the caller's progress view raises), the
    error reaches the caller, nothing the script started is left running, no descriptor of
    the step is left open, and nothing more starts."""
    shared = shared_dir(root)
    ready, ran = shared / "ready", shared / "ran"
    marker = f"sleep 3{os.getpid() % 1000}9"
    add_script(root, "10-first", "exit 0")
    add_script(root, "20-runs", f"({marker} &); touch {ready}; echo ready; {marker}")
    add_script(root, "30-never", f"touch {ran}")
    options = ScriptsOptions(user=resolve_user(USER))
    log = io.StringIO()
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="the view broke"):
        run_scripts(config=config, layout=Layout.under(root), run_id="broken-off",
                    options=options, log=make_logger(log, json_lines=True),
                    progress=FailsOnOutput(ready))
    assert sorted(os.listdir("/proc/self/fd")) == before
    said = [json.loads(line)["event"] for line in log.getvalue().splitlines()]
    assert said.count("script_started") == 2, said
    assert no_process_with(marker)
    assert not ran.exists()


def test_a_limit_below_the_clocks_step_is_said_as_given(config: WizardConfig,
                                                        root: Path) -> None:
    """A limit too small for the clock to add to a time (1e-300 s) still times the script
    out, and says the limit given, not `0 s`."""
    add_script(root, "10-slow", "sleep 5")
    found = scripts_of(run_step(config, root, timeout=1e-300))["10-slow"]
    assert (found["status"], found["reason"]) == ("timed_out", "timed out after 1e-300 s")


@pytest.mark.parametrize(("timeout", "said"), [
    pytest.param(1e-7, "timed out after 1e-07 s", id="tiny"),
    pytest.param(1e-300, "timed out after 1e-300 s", id="below-the-clock"),
    pytest.param(600.0, "timed out after 600 s", id="default"),
    pytest.param(2.5, "timed out after 2.5 s", id="fraction"),
])
def test_a_timeout_is_said_as_given(timeout: float, said: str) -> None:
    """The reason of a script timed out states its limit as given, without the noise of the
    clock's arithmetic."""
    started = 123456.789
    seen = Watched(pid=7, started=started, deadline=started + timeout, limit=timeout,
                   stopped_at=started + 1, exited=Exited(9, started + 1.5))
    assert judge("10-slow", seen, "").reason == said
