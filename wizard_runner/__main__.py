"""`python -m wizard_runner` is the `wizard-runner` command."""

from wizard_runner.entry import console

console()
