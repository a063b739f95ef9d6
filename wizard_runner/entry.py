"""The `wizard-runner` console script: stop signals are handled from its first line, and its
exit skips the interpreter's tear-down.

The handlers are installed before the command line's modules are imported, so that a
SIGTERM, SIGINT or SIGHUP at any moment of the process gives a one-line message and the
signal's exit code, never a traceback.
"""

# ruff: noqa: E402 - the imports follow the handlers that record a stop as they load

from __future__ import annotations

# First of all, before the imports that take time: a stop signal is recorded, to be acted on
# once the real handlers are in place (the console script loaded enum, signal's one import).
import signal

_EARLY: list[int] = []


def _record(signum: int, _frame: object) -> None:
    _EARLY.append(signum)


for _signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_signum, _record)

import atexit
import contextlib
import os
import sys
from typing import NoReturn

from wizard_runner import collector
from wizard_runner.signals import STOP_SIGNALS, install_stop_handlers, request_stop


def _open_standard_fds() -> None:
    """A closed stdin, stdout or stderr (`>&-`) gets /dev/null, so that no file the command
    opens takes its number (a tool would write into it). Python has already made the stream
    None: the command line writes to /dev/null there, and says a closed stdin is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):  # no /dev/null (a bare chroot): left closed
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)


def main() -> int:
    """Install the stop handlers, then run the command line; its exit code stands."""
    collector.pause()  # until a part that may last begins
    _open_standard_fds()
    try:
        install_stop_handlers()
        if _EARLY:  # it came as the modules above loaded: the command acts on it
            request_stop(_EARLY[0])
        from wizard_runner.cli import main as command_line  # noqa: PLC0415 - after the handlers

        code = command_line()
    finally:
        # The outcome is said: a stop signal now must not kill the exiting interpreter, which
        # puts default handlers back as it shuts down (ignored ones it leaves alone).
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    return code


def console() -> NoReturn:
    """The console script (and `python -m wizard_runner`): the command, then its exit code.
    By then every file the command wrote is closed; the exit functions run and the standard
    streams are flushed, but the interpreter is not torn down (freeing each module and object
    in turn, and a last collection, only hold the exit code back)."""
    code = main()
    atexit._run_exitfuncs()  # what the interpreter's own exit runs first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or none
            stream.flush()
    os._exit(code)
