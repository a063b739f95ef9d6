"""The exceptions wizard-runner raises, each mapped to the exit code the CLI returns."""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence

from wizard_runner.escape import printable

# Every exit code wizard-runner uses, named here and nowhere else (sysexits.h where one fits).
EXIT_OK = 0
EXIT_FAILED = 1  # the run failed (a script, or a step reported in the result)
EXIT_USAGE = 2
EXIT_NO_RUN = 3  # `status`: there is no run yet
EXIT_CONFIG = 65  # EX_DATAERR: the wizard body is invalid
EXIT_NO_INPUT = 66  # EX_NOINPUT: a config, wizard.d or the root's etc/ is missing
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: no daemon serves the spool, or no answer came
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug in wizard-runner
EXIT_CANT_APPLY = 73  # EX_CANTCREAT: the system files could not be applied
EXIT_IO = 74  # EX_IOERR: the runner's own files (state, log, lock, backups, spool)
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock
EXIT_PRIVILEGES = 77  # EX_NOPERM: not root, or unsafe permissions
# EX_NOPERM too: the appliance is configured, a request may no longer reconfigure it
# (the answer's status `rejected` and its reason tell it from a privilege problem).
EXIT_SPOOL_CLOSED = 77
EXIT_SIGNAL_BASE = 128  # a stop signal: 128 + its number (129 SIGHUP, 130 SIGINT, 143 SIGTERM)


def failure_object(status: str, code: int, message: str,
                   problems: Sequence[str] = ()) -> dict[str, object]:
    """What `--json` prints when a command ends without a result of its own."""
    return {"status": status, "exit_code": code, "error": message, "problems": list(problems)}


def exit_for_signal(signum: int) -> int:
    """The exit code of a run stopped by `signum`, as a shell reports it."""
    return EXIT_SIGNAL_BASE + signum


class WizardRunnerError(Exception):
    """Base of every error wizard-runner reports; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class UsageError(WizardRunnerError):
    """The command line or API call itself is wrong (a missing file, a bad option)."""

    exit_code = EXIT_USAGE


def check_seconds(value: object, what: str) -> None:
    """UsageError naming `what` unless `value` is None (no limit) or a finite number of
    seconds, 0 or more: a string, NaN or infinity is refused before anything is done."""
    try:
        seconds = value is None or (not isinstance(value, bool) and isinstance(
            value, int | float) and 0 <= float(value) < math.inf)
    except OverflowError:  # an int past what a float holds
        seconds = False
    if not seconds:
        raise UsageError(f"{what}: {value!r} is not a number of seconds (0 or more; None for "
                         "no limit)")


class ConfigError(WizardRunnerError):
    """The wizard body is invalid; `problems` lists every problem as `field.path: reason`."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = tuple(problems)
        self.source = source
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{printable(source)} is invalid ({count} {noun}):"]  # a path may hold ESC
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class RootError(WizardRunnerError):
    """The --root given is not a system tree (no etc/ under it)."""

    exit_code = EXIT_NO_INPUT


class ConfigUnreadableError(WizardRunnerError):
    """The config file (or the saved config) cannot be read."""

    exit_code = EXIT_NO_INPUT


class ApplyError(WizardRunnerError):
    """The system files could not be applied; nothing is left half-written."""

    exit_code = EXIT_CANT_APPLY


class RunnerIOError(WizardRunnerError):
    """The runner's own files (state, log, lock, backups, spool) could not be read or written."""

    exit_code = EXIT_IO


class StateFileError(RunnerIOError):
    """A file the runner stored (last-run.json, the saved config) is damaged or unreadable."""


class ResultNotStoredError(RunnerIOError):
    """The run ended but its result could not be stored; `result` is what it would have said
    and the message says what the run left done (applied or rolled back)."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


class LockedError(WizardRunnerError):
    """Another run holds the lock."""

    exit_code = EXIT_LOCKED


class PrivilegeError(WizardRunnerError):
    """The runner lacks the privileges the requested run needs."""

    exit_code = EXIT_PRIVILEGES


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT reached the runner; a BaseException so no `except Exception` eats it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = exit_for_signal(signum)
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class RenderError(ApplyError):
    """A system file's current content cannot be rewritten safely (damaged markers, conflicts)."""
