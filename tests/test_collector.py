"""The collector: paused by the console script while it starts, resumed by the parts that may
last, skipped at exit; an embedding application's collector is never touched."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import add_script, run_step
from wizard_runner import collector
from wizard_runner.config import WizardConfig
from wizard_runner.layout import Layout
from wizard_runner.spool import Spool, prepare, wait_result, write_result


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    """Each test leaves the test process's collector as it found it."""
    enabled = gc.isenabled()
    yield
    collector._State.ours = collector._State.paused = False  # the module's state
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
    """Not paused by the console script: resume and the exit neither switch nor freeze."""
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()
        collector.pause()  # already off: it was not paused here
    collector.resume()
    collector.skip_at_exit()
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
def test_the_console_script_skips_the_last_collection() -> None:
    """After the command, nothing left for the interpreter's last collection to walk: the
    collector is off and everything is frozen; the exit code stands."""
    probe = ("import gc, json, sys\n"
             "sys.argv = ['wizard-runner', '--version']\n"
             "from wizard_runner.entry import main\n"
             "code = main()\n"
             "print(json.dumps([code, gc.isenabled(), gc.get_count()[0], gc.get_freeze_count()]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    code, enabled, pending, frozen = json.loads(done.stdout.splitlines()[-1])
    assert (code, enabled, pending) == (0, False, 0)
    assert frozen > 1000
