"""Holds `wizard-runner serve` at one step of answering a request, so a test can kill it there.

tests/test_daemon.py puts this directory on PYTHONPATH; Python then imports this file at
start-up. It does nothing unless WIZARD_TEST_PAUSE names a step: at that step it creates the
file WIZARD_TEST_HANDSHAKE and sleeps, and the test, seeing the file, sends SIGKILL.

- claimed: the request is in processing/, its run not started;
- run_stored: the run ended and stored last-run.json, no answer written yet;
- answered: done/ID.json written, the request not yet removed from processing/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _pause() -> None:
    Path(os.environ["WIZARD_TEST_HANDSHAKE"]).write_text(str(os.getpid()))
    time.sleep(3600)


def _install(step: str) -> None:
    from wizard_runner import daemon  # noqa: PLC0415 - only in a daemon under test

    names = vars(daemon)  # the daemon's own references to what it calls
    execute, discard = names["execute"], names["discard"]

    def paused_execute(*args: Any, **kwargs: Any) -> Any:
        if step == "claimed":
            _pause()
        result = execute(*args, **kwargs)
        if step == "run_stored":
            _pause()
        return result

    def paused_discard(spool: Any, path: Path) -> None:
        if step == "answered" and path.parent.name == "processing":
            _pause()
        discard(spool, path)

    names["execute"], names["discard"] = paused_execute, paused_discard


if os.environ.get("WIZARD_TEST_PAUSE"):
    _install(os.environ["WIZARD_TEST_PAUSE"])
