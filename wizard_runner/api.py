"""What xivo-confd imports: validate a wizard body, preview it, run it.

    from wizard_runner import api
    config = api.validate(body)          # raises api.ConfigError listing every problem
    result = api.run(body, root="/")     # a RunResult; result.exit_code as the CLI would exit
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TextIO

from wizard_runner.config import LANGUAGES, WizardConfig, config_from_data, parse_config
from wizard_runner.errors import (
    ApplyError,
    ConfigError,
    LockedError,
    PrivilegeError,
    UsageError,
    WizardRunnerError,
)
from wizard_runner.log import quiet_logger
from wizard_runner.result import RunResult, RunStatus
from wizard_runner.runner import Preview, RunOptions, execute, preview

Body = Mapping[str, Any] | str | bytes | WizardConfig

__all__ = [
    "LANGUAGES",
    "ApplyError",
    "Body",
    "ConfigError",
    "LockedError",
    "Preview",
    "PrivilegeError",
    "RunResult",
    "RunStatus",
    "UsageError",
    "WizardConfig",
    "WizardRunnerError",
    "dry_run",
    "run",
    "validate",
]


def validate(body: Body) -> WizardConfig:
    """Validate a wizard body (a dict, JSON text or bytes); raise ConfigError on any problem."""
    if isinstance(body, WizardConfig):
        return body
    if isinstance(body, str | bytes):
        return parse_config(body)
    return config_from_data(body)


def run(
    body: Body,
    *,
    root: str | os.PathLike[str] = "/",
    handle_system_conf: bool | None = None,
    replace_symlinks: bool = False,
    apply_network: bool = False,
    log_stream: TextIO | None = None,
) -> RunResult:
    """Validate and carry out a wizard body; the result is also stored as last-run.json.

    Raises ConfigError before anything is written, LockedError when another run is going on,
    PrivilegeError when not allowed; any later failure is in the returned result.
    """
    config = validate(body)
    options = RunOptions(
        root=root,
        handle_system_conf=handle_system_conf,
        replace_symlinks=replace_symlinks,
        apply_network=apply_network,
    )
    return execute(config, options, stream=log_stream, json_logs=True)


def dry_run(
    body: Body,
    *,
    root: str | os.PathLike[str] = "/",
    handle_system_conf: bool | None = None,
    replace_symlinks: bool = False,
) -> Preview:
    """Show what a run would change, as a unified diff; writes nothing."""
    options = RunOptions(
        root=root, handle_system_conf=handle_system_conf, replace_symlinks=replace_symlinks
    )
    return preview(validate(body), options, log=quiet_logger())
