"""The `wizard-runner` console script: stop signals are handled from its first line.

The handlers are installed before the command line's modules are imported, so that a
SIGTERM, SIGINT or SIGHUP at any moment of the process gives a one-line message and the
signal's exit code, never a traceback.
"""

from __future__ import annotations

import contextlib
import sys

from wizard_runner.errors import RunInterrupted
from wizard_runner.signals import install_stop_handlers


def main() -> int:
    """Install the stop handlers, then run the command line."""
    install_stop_handlers()
    try:
        from wizard_runner.cli import main as command_line  # noqa: PLC0415 - after the handlers

        return command_line()
    except RunInterrupted as stop:  # while the command line's modules were still loading
        # No terminal left (SIGHUP), or no stderr at all: the exit code says it.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.write(f"wizard-runner: {stop}; nothing was run\n")
        return stop.exit_code
