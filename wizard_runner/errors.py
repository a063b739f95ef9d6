"""The exceptions wizard-runner raises, each mapped to the exit code the CLI returns."""

from __future__ import annotations

import signal
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 65  # EX_DATAERR
EXIT_NO_INPUT = 66  # EX_NOINPUT
EXIT_CANT_APPLY = 73  # EX_CANTCREAT
EXIT_LOCKED = 75  # EX_TEMPFAIL
EXIT_PRIVILEGES = 77  # EX_NOPERM


class WizardRunnerError(Exception):
    """Base of every error wizard-runner reports; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class UsageError(WizardRunnerError):
    """The command line or API call itself is wrong (a missing file, a bad option)."""

    exit_code = EXIT_USAGE


class ConfigError(WizardRunnerError):
    """The wizard body is invalid; `problems` lists every problem as `field.path: reason`."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = tuple(problems)
        self.source = source
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{source} is invalid ({count} {noun}):"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class ConfigUnreadableError(WizardRunnerError):
    """The config file (or the saved config) cannot be read."""

    exit_code = EXIT_NO_INPUT


class ApplyError(WizardRunnerError):
    """The system files could not be applied; nothing is left half-written."""

    exit_code = EXIT_CANT_APPLY


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
        self.exit_code = 128 + signum
        self.partial: object | None = None  # what the interrupted step had done, if anything
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class RenderError(ApplyError):
    """A system file's current content cannot be rewritten safely (damaged markers, conflicts)."""
