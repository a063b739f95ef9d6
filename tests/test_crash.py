"""Crash consistency: SIGKILL the system step at every file operation and at random moments.

After each kill every managed file is exactly its old or exactly its new content, never empty
nor partial, and the next run completes the job.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, MANAGED, Reliability, seed_root
from wizard_runner.config import WizardConfig
from wizard_runner.render import RENDERERS
from wizard_runner.runner import RunOptions, execute

pytestmark = pytest.mark.processes

# The child counts every os-level file operation the runner makes (open, write, fsync,
# rename, unlink, ftruncate, fchmod, fchown, symlink) and SIGKILLs itself at call KILL_AT.
CHILD = textwrap.dedent("""\
    import os, signal, sys
    from pathlib import Path
    from wizard_runner.config import parse_config
    from wizard_runner.runner import RunOptions, execute

    kill_at = int(sys.argv[2])
    count = 0

    def counted(function):
        def call(*args, **kwargs):
            global count
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return call

    config = parse_config(Path(sys.argv[3]).read_bytes())
    for name in ("open", "write", "fsync", "rename", "unlink", "ftruncate", "fchmod",
                 "fchown", "symlink"):
        setattr(os, name, counted(getattr(os, name)))
    with open(os.devnull, "w") as sink:
        execute(config, RunOptions(root=sys.argv[1], check_with_tools=False), stream=sink)
    print(count)
    """)


def start_child(root: Path, kill_at: int) -> subprocess.Popen[str]:
    """Run the system step on `root` in a child that kills itself at operation `kill_at`."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(kill_at),
                             str(EXAMPLES / "wizard.json")], stdout=subprocess.PIPE, text=True)


def contents(root: Path) -> dict[str, bytes | None]:
    """Each managed file's bytes (None when missing)."""
    found: dict[str, bytes | None] = {}
    for path in MANAGED:
        target = root / path.lstrip("/")
        found[path] = target.read_bytes() if target.is_file() else None
    return found


def expected_new(config: WizardConfig, old: dict[str, bytes | None]) -> dict[str, bytes]:
    """What a completed run writes over `old`."""
    return {path: RENDERERS[path](config, (old[path] or b"").decode()).encode()
            for path in MANAGED}


def broken_files(now: dict[str, bytes | None], old: dict[str, bytes | None],
                 new: dict[str, bytes]) -> list[str]:
    """Files that are neither exactly old nor exactly new."""
    return [path for path in MANAGED if now[path] not in (old[path], new[path])]


def last_run_is_valid(root: Path) -> bool:
    """The stored result, if any, is complete JSON."""
    path = root / "var/lib/wizard-runner/last-run.json"
    if not path.exists():
        return True
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def trial(config: WizardConfig, base: Path, kill_at: int, delay: float | None) -> list[str]:
    """Kill one run (at an operation, or after `delay` s), check, rerun; return problems."""
    root = base / f"trial-{kill_at}-{delay}"
    seed_root(root)
    old = contents(root)
    new = expected_new(config, old)
    child = start_child(root, kill_at)
    if delay is not None:
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    problems = [f"after kill: {path}" for path in broken_files(contents(root), old, new)]
    if not last_run_is_valid(root):
        problems.append("last-run.json is not valid JSON")
    with Path("/dev/null").open("w") as sink:
        result = execute(config, RunOptions(root=root, check_with_tools=False), stream=sink)
    if result.exit_code != 0 or contents(root) != new:
        problems.append(f"rerun did not complete the job: {result.error}")
    shutil.rmtree(root)
    return problems


def count_operations(base: Path) -> int:
    """How many counted operations one whole run makes."""
    root = seed_root(base / "count")
    child = start_child(root, 0)
    stdout, _ = child.communicate(timeout=60)
    shutil.rmtree(root)
    return int(stdout.strip())


def test_kill_at_every_file_operation(
    config: WizardConfig, tmp_path: Path, reliability: Reliability
) -> None:
    """SIGKILL at each open, write, fsync, rename and backup call in turn loses nothing."""
    operations = count_operations(tmp_path)
    assert operations > 40  # backups, temp files, renames and fsyncs of seven files
    failures: dict[int, list[str]] = {}
    for kill_at in range(1, operations + 1):
        problems = trial(config, tmp_path, kill_at, None)
        if problems:
            failures[kill_at] = problems
    reliability.record(area="system step", fault="SIGKILL during the apply",
                       injection=f"kill at each of the {operations} file operations in turn",
                       trials=operations, lost=len(failures),
                       outcome="each file old or new, never partial; rerun completes")
    assert failures == {}


@pytest.mark.parametrize("trials", [pytest.param(20, id="quick"),
                                    pytest.param(160, id="long", marks=pytest.mark.long)])
def test_kill_at_random_moments(
    config: WizardConfig, tmp_path: Path, reliability: Reliability, trials: int
) -> None:
    """SIGKILL after a random delay, anywhere in the run, loses nothing."""
    chooser = random.Random(20261125)  # noqa: S311 - reproducible delays, not secrets
    failures: dict[float, list[str]] = {}
    for _ in range(trials):
        delay = round(chooser.uniform(0.05, 0.6), 3)
        problems = trial(config, tmp_path, 0, delay)
        if problems:
            failures[delay] = problems
    reliability.record(area="system step", fault="SIGKILL at a random moment",
                       injection=f"kill after a random 50-600 ms ({trials} seeded delays)",
                       trials=trials, lost=len(failures),
                       outcome="each file old or new, never partial; rerun completes")
    assert failures == {}


