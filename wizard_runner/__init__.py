"""wizard-runner: carries out the XiVO wizard on the appliance (system files, then scripts)."""

from __future__ import annotations

# Not typing's: the console script's first import must be light, so that its stop handlers
# are installed within milliseconds of the start (mypy reads any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from wizard_runner.result import RunResult

__version__ = "0.1.0"


def run(body: Any, **options: Any) -> RunResult:
    """Validate and carry out a wizard body; see `wizard_runner.api.run` for the options."""
    # Imported here so that `wizard-runner --help` does not load the whole runner.
    from wizard_runner.api import run as run_body  # noqa: PLC0415

    return run_body(body, **options)
