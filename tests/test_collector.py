"""The collector: paused by the console script while it starts, resumed by the parts that may
last; an embedding application's collector is never touched. The console script's exit: no
tear-down, nothing lost."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import add_script, run_step
from wizard_runner import collector
from wizard_runner.config import WizardConfig
from wizard_runner.errors import EXIT_NO_RUN
from wizard_runner.layout import Layout
from wizard_runner.spool import Spool, prepare, wait_result, write_result


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    """Each test leaves the test process's collector as it found it."""
    enabled = gc.isenabled()
    yield
    collector._State.paused = False  # the module's state
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_paused_then_resumed_with_start_up_frozen() -> None:
    """Paused: no collection. Resumed: collection again, start-up's objects frozen."""
    gc.enable()
    gc.unfreeze()
    collector.pause()
    assert not gc.isenabled()
    collector.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    collector.resume()  # once only: a second part that may last changes nothing
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("enabled", [True, False], ids=["app-collects", "app-paused"])
def test_an_embedding_applications_collector_is_left_alone(enabled: bool) -> None:
    """Not paused by the console script: resume neither switches nor freezes."""
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()
        collector.pause()  # already off: it was not paused here
    collector.resume()
    assert gc.isenabled() is enabled
    assert gc.get_freeze_count() == 0


@pytest.mark.processes
def test_a_scripts_step_resumes_collection(config: WizardConfig, script_root: Path) -> None:
    """Scripts may run for long: the step turns collection back on when one is to start,
    not for an empty wizard.d."""
    gc.enable()
    collector.pause()
    run_step(config, script_root)
    assert not gc.isenabled()
    add_script(script_root, "10-one", "exit 0")
    run_step(config, script_root)
    assert gc.isenabled()


def test_waiting_for_an_answer_resumes_collection(tmp_path: Path) -> None:
    """An answer may be long in coming: the wait collects."""
    spool = Spool.of(Layout(tmp_path))
    prepare(spool, 33)
    write_result(spool, "r1", {"status": "succeeded", "exit_code": 0}, 33)
    gc.enable()
    collector.pause()
    assert wait_result(spool, "r1", 1)["status"] == "succeeded"
    assert gc.isenabled()


@pytest.mark.processes
@pytest.mark.parametrize("how", ["console-script", "python-m"])
def test_the_console_script_exits_without_tearing_down(how: str, tmp_path: Path) -> None:
    """The exit code stands, the output is flushed and the exit functions run, but no object is
    torn down (a finalizer of a module-level object never runs)."""
    (tmp_path / "probe.py").write_text(
        "import atexit, sys\n"
        "class Dropped:\n"
        "    def __del__(self):\n"
        "        print('torn down', flush=True)\n"
        "kept = Dropped()\n"
        "atexit.register(print, 'exit functions ran')\n"
        "sys.stdout.write('buffered, ')\n"
        "sys.argv = ['wizard-runner', 'status', '--root', sys.argv[1]]\n"
        + ("from wizard_runner.entry import console\nconsole()\n" if how == "console-script"
           else "import runpy\nrunpy.run_module('wizard_runner', run_name='__main__')\n"))
    done = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == EXIT_NO_RUN, done.stderr  # the command's code stands
    assert done.stdout.lower().startswith("buffered, no run yet")
    assert done.stdout.endswith("exit functions ran\n")
    assert "torn down" not in done.stdout
