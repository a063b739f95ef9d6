"""Faults on purpose, recorded for RELIABILITY.md: failed writes, scripts misbehaving,
concurrent runs, and what a script may touch."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, MANAGED, Reliability, seed_root, snapshot
from tests.helpers import (
    ROOT,
    USER,
    add_script,
    daemon,
    daemon_result,
    no_process_with,
    peak_rss_kib,
    run_step,
    scripts_of,
)
from wizard_runner import api, sysconf
from wizard_runner.config import WizardConfig
from wizard_runner.errors import ResultNotStoredError
from wizard_runner.fsio import At, Ownership, WriteMethod, replace_at
from wizard_runner.result import FileAction, RunResult, RunStatus
from wizard_runner.runner import RunOptions, execute

pytestmark = pytest.mark.processes
SCRIPT = Path(sys.executable).parent / "wizard-runner"


@pytest.fixture
def root(script_root: Path) -> Path:
    """A traversable root with Debian's files and an empty wizard.d."""
    return seed_root(script_root)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS],
                         ids=["ENOSPC", "EIO", "EACCES", "EROFS"])
def test_write_errors_at_each_write(
    config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch,
    reliability: Reliability, code: int,
) -> None:
    """An OSError at each of the seven writes in turn: originals intact, restores reported,
    exit 73."""
    lost = 0
    for nth in range(1, 8):
        trial_root = root / f"t{nth}"
        seed_root(trial_root)
        before = {k: v[0] for k, v in snapshot(trial_root / "etc").items()}
        writes: list[str] = []

        def failing(at: At, data: bytes, owner: Ownership, nth: int = nth,
                    writes: list[str] = writes) -> WriteMethod:
            if not at.shown.startswith("/var/backups/"):
                writes.append(at.shown)
                if len(writes) == nth:
                    raise OSError(code, os.strerror(code), at.shown)
            return replace_at(at, data, owner)

        monkeypatch.setattr(sysconf, "replace_at", failing)
        with open(os.devnull, "w") as sink:
            result = execute(config, RunOptions(root=trial_root, check_with_tools=False),
                             stream=sink)
        restored = [f.path for f in result.system_conf.files if f.action is FileAction.RESTORED]
        after = {k: v[0] for k, v in snapshot(trial_root / "etc").items()}
        if (after != before or result.exit_code != 73 or restored != list(MANAGED[: nth - 1])
                or os.strerror(code) not in (result.error or "")):
            lost += 1
    name = errno.errorcode[code]
    reliability.record(area="system step", fault=f"{name} on a write",
                       injection="OSError raised at each of the 7 file writes in turn",
                       trials=7, lost=lost,
                       outcome="exit 73, originals intact, files already written restored "
                       "and reported")
    assert lost == 0


def managed_files(root: Path) -> dict[str, bytes]:
    """The seven system files of `root`, by path."""
    return {path: (root / path.lstrip("/")).read_bytes() for path in MANAGED}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 400 KiB tmpfs: /etc, /var/backups and the runner's own files on one file system, as
    on an appliance."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Take every byte left on `disk` (another service's log, say)."""
    with open(disk / "filler", "ab") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()


@pytest.mark.skipif(not ROOT, reason="needs root to mount a small tmpfs")
def test_a_disk_something_else_fills_mid_step_is_rolled_back(
    config: WizardConfig, small_disk: Path, monkeypatch: pytest.MonkeyPatch,
    reliability: Reliability,
) -> None:
    """/etc and the backups on one disk, which something else fills once 1 to 6 files are
    replaced: the next write fails, and the files already written are restored all the
    same, renamed back (rewriting them would need room there is none of), each trial."""
    lost = []
    for written in range(1, 7):
        for entry in small_disk.iterdir():
            subprocess.run(["rm", "-rf", str(entry)], check=True)
        root = seed_root(small_disk / "root")
        before = managed_files(root)
        writes: list[str] = []

        def filling(at: At, data: bytes, owner: Ownership, written: int = written,
                    writes: list[str] = writes) -> WriteMethod:
            if not at.shown.startswith("/var/backups/"):
                writes.append(at.shown)
                if len(writes) == written + 1:
                    fill(small_disk)
            return replace_at(at, data, owner)

        monkeypatch.setattr(sysconf, "replace_at", filling)
        try:
            with open(os.devnull, "w") as sink:
                result = execute(config, RunOptions(root=root, check_with_tools=False),
                                 stream=sink)
        except ResultNotStoredError as unstored:  # no room for it either
            assert isinstance(unstored.result, RunResult)
            assert "the system files were rolled back" in str(unstored)
            result = unstored.result
        restored = [f.path for f in result.system_conf.files if f.action is FileAction.RESTORED]
        if managed_files(root) != before or restored != list(MANAGED[:written]) or \
                result.exit_code != 73 or "COULD NOT RESTORE" in (result.error or ""):
            lost.append((written, result.error))
    reliability.record(area="system step", fault="the disk fills during the step",
                       injection="/etc and the backups on one tmpfs, which another writer "
                       "fills once 1 to 6 files are replaced", trials=6, lost=len(lost),
                       outcome="the next write fails; the files already replaced renamed "
                       "back, none left new")
    assert not lost, lost


SCRIPT_FAULTS = [
    pytest.param("exit 1", "failed", "exit code 1", id="exit-1"),
    pytest.param("exit 2", "failed", "exit code 2", id="exit-2"),
    pytest.param("exit 127", "failed", "exit code 127", id="exit-127"),
    pytest.param("exit 255", "failed", "exit code 255", id="exit-255"),
    pytest.param("kill -KILL $$", "failed", "death by SIGKILL", id="sigkill"),
    pytest.param("kill -SEGV $$", "failed", "death by SIGSEGV", id="sigsegv"),
    pytest.param("kill -TERM $$", "failed", "death by SIGTERM", id="sigterm"),
    pytest.param("sleep 30", "timed_out", "a hang past the timeout", id="hang"),
    pytest.param("trap '' TERM; while :; do sleep 0.1; done", "timed_out",
                 "a hang that ignores SIGTERM", id="ignores-term"),
    pytest.param("setsid sh -c 'sleep 1234 & wait' & echo started", "succeeded",
                 "a double-forked daemon holding stdout", id="daemon"),
    pytest.param("i=0; while [ $i -lt 200 ]; do sleep 1235 & i=$((i+1)); done", "succeeded",
                 "200 background sleepers", id="sleepers"),
    pytest.param(r"printf '\377\376\000binary\n'; head -c 4096 /dev/urandom", "succeeded",
                 "binary output", id="binary"),
    pytest.param('rm -f "$0"; echo gone', "succeeded", "a script that deletes itself",
                 id="deletes-itself"),
    pytest.param("cat; echo eof", "succeeded", "a script reading stdin", id="reads-stdin"),
]


@pytest.mark.parametrize(("script", "status", "fault"), SCRIPT_FAULTS)
def test_script_faults(
    config: WizardConfig, root: Path, reliability: Reliability, script: str, status: str,
    fault: str,
) -> None:
    """Each misbehaving script gets the right status quickly and leaves nothing running."""
    if "deletes" in fault:
        wizard_d = root / "etc/xivo/wizard.d"
        wizard_d.chmod(0o775)
        os.chown(wizard_d, 0, 33 if ROOT else os.getegid())
    add_script(root, "10-fault", script)
    add_script(root, "20-after", "echo after")
    started = time.monotonic()
    found = scripts_of(run_step(config, root, timeout=2.0))
    elapsed = time.monotonic() - started
    after = "succeeded" if status == "succeeded" else "not_run"
    ok = (found["10-fault"]["status"] == status and found["20-after"]["status"] == after
          and elapsed < 20 and no_process_with("sleep 123"))
    reliability.record(area="scripts", fault=fault, injection=f"`{script}`", trials=1,
                       lost=0 if ok else 1,
                       outcome=f"{status}, the rest {after}, nothing left running, "
                       f"{elapsed:.1f} s")
    assert ok, (found, elapsed)


@pytest.mark.long
def test_one_gib_of_output(root: Path, reliability: Reliability) -> None:
    """1 GiB of output in 100-byte lines: the runner's peak memory stays small."""
    add_script(root, "10-gib", "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx' | head -c 1073741824")
    runner = subprocess.Popen(
        [str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
         "--no-system-conf", "--scripts", "--user", USER, "--json", "--timeout", "900"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_kib = peak_rss_kib(runner)
    stdout, _ = runner.communicate(timeout=60)
    ok = runner.returncode == 0 and 0 < peak_kib < 100 * 1024
    reliability.record(area="scripts", fault="1 GiB of output", injection="`yes ... | head -c "
                       "1073741824`, 100-byte lines", trials=1, lost=0 if ok else 1,
                       outcome=f"succeeded, runner peak RSS {peak_kib // 1024} MiB")
    assert ok, (stdout[-500:], peak_kib)


def test_twenty_concurrent_runs(root: Path, reliability: Reliability) -> None:
    """20 runs at once on one root: one at a time, the others exit 75, the state files stay
    valid JSON throughout."""
    add_script(root, "10-slow", "sleep 1")
    stop = threading.Event()
    invalid: list[str] = []

    def watch_state() -> None:
        state = root / "var/lib/wizard-runner"
        while not stop.is_set():
            for name in ("last-run.json", "config.json"):
                try:
                    json.loads((state / name).read_text())
                except FileNotFoundError:
                    pass
                except ValueError:
                    invalid.append(name)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch_state)
    watcher.start()
    try:
        runners = [subprocess.Popen(
            [str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
             "--scripts", "--user", USER],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(20)]
        outcomes = [(r.wait(timeout=120), r.communicate()[1]) for r in runners]
    finally:
        stop.set()
        watcher.join()
    codes = sorted(code for code, _ in outcomes)
    ok = codes.count(0) >= 1 and set(codes) <= {0, 75} and not invalid
    ok = ok and all("another wizard-runner run (pid" in err for code, err in outcomes
                    if code == 75)
    reliability.record(area="concurrency", fault="20 simultaneous runs on one root",
                       injection="20 `wizard-runner run` started at once", trials=20,
                       lost=0 if ok else 1,
                       outcome=f"{codes.count(0)} ran, {codes.count(75)} exited 75 naming the "
                       "holder; state files always valid JSON")
    assert ok, (codes, invalid)


@pytest.mark.skipif(not ROOT, reason="needs root: the script must run as www-data")
def test_what_a_script_can_touch(config: WizardConfig, root: Path,
                                 reliability: Reliability) -> None:
    """As www-data, a script can neither read the saved config, the spool or the backups, nor
    write the result, state, log or lock files; it has no root group."""
    spool = root / "var/spool/wizard-runner/incoming"
    spool.mkdir(parents=True)
    os.chown(spool, 0, 33)
    spool.chmod(0o1730)
    (spool / "20261125T000000Z-aaaaaaaaaaaa.json").write_text("{}")
    (spool / "20261125T000000Z-aaaaaaaaaaaa.json").chmod(0o600)
    with open(os.devnull, "w") as sink:
        execute(config, RunOptions(root=root, check_with_tools=False), stream=sink)
    backup = next((root / "var/backups/wizard-runner").iterdir())
    targets = {
        "read saved config": f"cat {root}/var/lib/wizard-runner/config.json",
        "list the spool": f"ls {spool}",
        "read a request": f"cat {spool}/20261125T000000Z-aaaaaaaaaaaa.json",
        "read backups": f"cat {backup}/etc/hosts",
        "write the result": f"echo x >> {root}/var/lib/wizard-runner/last-run.json",
        "write the saved config": f"echo x >> {root}/var/lib/wizard-runner/config.json",
        "write the log": f"echo x >> {root}/var/log/wizard-runner/wizard-runner.log",
        "write the lock": f"echo x >> {root}/run/wizard-runner/lock",
        "write /etc/hosts": f"echo x >> {root}/etc/hosts",
    }
    lines = [f'if {command} >/dev/null 2>&1; then echo "CAN {what}"; else echo "cannot {what}"; fi'
             for what, command in targets.items()]
    lines.append('id -G | tr " " "\\n" | grep -qx 0 && echo "HAS root group" || echo "no root group"')
    add_script(root, "10-probe", "\n".join(lines))
    result = run_step(config, root)
    tail = scripts_of(result)["10-probe"]["output_tail"]
    breaches = [line for line in tail.splitlines() if line.startswith(("CAN", "HAS"))]
    reliability.record(area="privilege", fault="a script reaching for the runner's files",
                       injection="as www-data: read config/spool/backups, write result/state/"
                       "log/lock/etc, check groups", trials=len(targets) + 1,
                       lost=len(breaches), outcome="every attempt refused; no root group")
    assert result.status is RunStatus.SUCCEEDED
    assert breaches == []


def test_twenty_runs_with_the_daemon_serving(root: Path, body: dict[str, Any],
                                             reliability: Reliability) -> None:
    """20 runs racing a daemon that serves a request: never two at once, the request waits its
    turn and succeeds, the others exit 0 or 75."""
    add_script(root, "10-slow", "sleep 0.5")
    body["run_scripts"] = True
    with daemon(root):
        runners = [subprocess.Popen(
            [str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
             "--scripts", "--user", USER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(20)]
        request_id = api.submit(body, root=root)
        codes = sorted(r.wait(timeout=120) for r in runners)
        assert isinstance(request_id, str)
        record = daemon_result(root, request_id)
    ok = set(codes) <= {0, 75} and record["status"] == "succeeded"
    reliability.record(area="concurrency", fault="20 runs while the daemon serves",
                       injection="20 `wizard-runner run` and one request at once", trials=21,
                       lost=0 if ok else 1,
                       outcome=f"{codes.count(0)} runs ran, {codes.count(75)} exited 75, the "
                       "request waited for the lock and succeeded")
    assert ok, (codes, record["status"])


@pytest.mark.skipif(not ROOT, reason="needs root: only root can remove a root-owned wizard.d")
def test_script_deleting_wizard_d(config: WizardConfig, root: Path,
                                  reliability: Reliability) -> None:
    """A script (run as root here) that removes wizard.d mid-run: the next script fails
    saying it is no longer there, and the run ends cleanly."""
    add_script(root, "10-vandal", 'rm -rf "$(dirname "$0")"; echo removed')
    add_script(root, "20-next", "echo next")
    add_script(root, "30-last", "echo last")
    result = run_step(config, root, user="root")
    found = scripts_of(result)
    ok = (found["10-vandal"]["status"] == "succeeded"
          and found["20-next"]["status"] == "failed"
          and found["20-next"]["reason"] == "cannot execute: it is no longer in wizard.d "
          "(removed since the step listed it)"
          and found["30-last"]["status"] == "not_run" and result.exit_code == 1)
    reliability.record(area="scripts", fault="a script that deletes wizard.d",
                       injection='`rm -rf "$(dirname "$0")"` (as root)', trials=1,
                       lost=0 if ok else 1,
                       outcome="the next script fails (no longer there), the rest not_run, "
                       "exit 1")
    assert ok, found


# A sandbox on a tmpfs of its own (in a private mount namespace), filled up but for FREE
# pages, then a run with a script that prints: each size puts the ENOSPC at another write,
# of the runner's own files (lock, log, saved body, backups, script log, result) or of the
# system files. What the test needs is copied out before the namespace goes.
FULL_DISK = """\
set -e
mount -t tmpfs -o size=2m tmpfs "$ROOT"
cp -a "$SEED/." "$ROOT/"
dd if=/dev/zero of="$ROOT/filler" bs=4096 2>/dev/null || true
truncate -s "-$((FREE * 4096))" "$ROOT/filler"
set +e
"$SCRIPT" run --config "$BODY" --root "$ROOT" --scripts --user root --json \
    >"$OUT/stdout" 2>"$OUT/stderr"
echo $? >"$OUT/code"
cp -a "$ROOT/etc" "$OUT/etc"
cp "$ROOT/var/lib/wizard-runner/last-run.json" "$OUT/" 2>/dev/null
cp "$ROOT/var/log/wizard-runner/wizard-runner.log" "$OUT/" 2>/dev/null
true
"""


def full_disk_trial(seed: Path, base: Path, free: int) -> Path:
    """Run once on a disk with `free` pages left; return the directory holding what it left."""
    out, root = base / f"out-{free}", base / f"root-{free}"
    out.mkdir()
    root.mkdir()
    env = {"ROOT": str(root), "SEED": str(seed), "FREE": str(free), "OUT": str(out),
           "SCRIPT": str(SCRIPT), "BODY": str(EXAMPLES / "wizard.json"), "PATH": os.environ["PATH"]}
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_DISK],
                   env=env, check=True, timeout=120)
    return out


def full_disk_problems(out: Path, old: dict[str, bytes], new: dict[str, bytes]) -> list[str]:
    """What is wrong after one run on a full disk."""
    code = int((out / "code").read_text())
    stderr = (out / "stderr").read_text()
    problems = []
    if "Traceback" in stderr:
        problems.append("traceback")
    if code not in {0, 73, 74}:
        problems.append(f"exit {code}")
    if code == 74 and "No space left on device" not in stderr:
        problems.append("exit 74 without saying the disk is full")
    files = {path: (out / path.removeprefix("/")).read_bytes() for path in old}
    if files not in (old, new):
        problems.append("system files neither all old nor all new")
    try:
        printed = json.loads((out / "stdout").read_text())
    except ValueError:
        problems.append("no JSON object on stdout")
        return problems
    if printed["exit_code"] != code:
        problems.append("the printed result contradicts the exit code")
    log = out / "wizard-runner.log"
    logged = log.read_text(errors="replace") if log.exists() else ""
    if code == 0 and not printed.get("warnings") and '"script_succeeded"' not in logged:
        problems.append("the log lost lines and the result does not say so")
    stored = out / "last-run.json"
    if stored.exists():
        kept = json.loads(stored.read_text())
        if kept["run_id"] == printed.get("run_id") and kept["exit_code"] != code:
            problems.append("the stored result contradicts the exit code")
    if files == new and code != 0 and "the system files were applied" not in stderr:
        problems.append("files applied but the message does not say so")
    return problems


# The log directory alone on a small tmpfs of its own: the run's log fills it mid-run.
FULL_LOG = """\
set -e
mkdir -p "$ROOT/var/log/wizard-runner"
mount -t tmpfs -o size=64k tmpfs "$ROOT/var/log/wizard-runner"
set +e
"$SCRIPT" run --root "$ROOT" --config "$BODY" --no-system-conf --scripts --user root \
    >"$OUT/stdout" 2>"$OUT/stderr"
echo $? >"$OUT/code"
"""


@pytest.mark.skipif(not ROOT, reason="needs root to mount a tmpfs")
def test_a_log_that_fills_its_disk_is_said(root: Path, tmp_path: Path) -> None:
    """The log's disk fills up mid-run: the work still stands (exit 0), and the result and
    the summary say the log lost lines, naming it and why."""
    add_script(root, "10-chatty", "seq 1 5000")
    add_script(root, "20-after", "echo after")
    env = {"ROOT": str(root), "OUT": str(tmp_path), "SCRIPT": str(SCRIPT),
           "BODY": str(EXAMPLES / "wizard.json"), "PATH": os.environ["PATH"]}
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_LOG],
                   env=env, check=True, timeout=120)
    assert (tmp_path / "code").read_text().strip() == "0", (tmp_path / "stderr").read_text()
    result = json.loads((root / "var/lib/wizard-runner/last-run.json").read_text())
    assert [s["status"] for s in result["scripts"]] == ["succeeded", "succeeded"]
    assert len(result["warnings"]) == 1
    warning = result["warnings"][0]
    assert warning.startswith(f"{root}/var/log/wizard-runner/wizard-runner.log: lines of this "
                              "run's log could not be written (No space left on device)")
    assert f"warning: {warning}\n" in (tmp_path / "stdout").read_text()


@pytest.mark.skipif(not ROOT, reason="needs root to mount a tmpfs")
@pytest.mark.parametrize("step", [pytest.param(4, id="quick"),
                                  pytest.param(1, id="long", marks=pytest.mark.long)])
def test_disk_full_at_each_write(tmp_path: Path, config: WizardConfig,
                                 reliability: Reliability, step: int) -> None:
    """A full disk at each of the run's writes, its own files' and the system files': a
    named exit (73 or 74) saying so, files all old or all new, result and exit code agreeing."""
    seed = seed_root(tmp_path / "seed")
    wizard_d = seed / "etc/xivo/wizard.d"
    wizard_d.mkdir(parents=True)
    (wizard_d / "10-talk").write_text("#!/bin/sh\nseq 1 100\n")
    (wizard_d / "10-talk").chmod(0o755)
    old = {path: (seed / path.removeprefix("/")).read_bytes() for path in MANAGED}
    done = full_disk_trial(seed, tmp_path, 200)
    assert int((done / "code").read_text()) == 0, (done / "stderr").read_text()
    new = {path: (done / path.removeprefix("/")).read_bytes() for path in MANAGED}
    failures: dict[int, list[str]] = {}
    codes: dict[int, int] = {}
    for free in range(0, 32, step):
        out = full_disk_trial(seed, tmp_path, free)
        codes[free] = int((out / "code").read_text())
        problems = full_disk_problems(out, old, new)
        if problems:
            failures[free] = problems
    assert set(codes.values()) >= {74, 0}  # the range runs from refused to completed
    reliability.record(area="disk full", fault="no space left at each write of a run",
                       injection=f"a run on a tmpfs with 0-31 free pages ({len(codes)} trials)",
                       trials=len(codes), lost=len(failures),
                       outcome="exit 0, 73 or 74 saying so; files whole; result = exit code")
    assert failures == {}
