"""The `wizard-runner` command line: validate and run a wizard body."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from wizard_runner import __version__
from wizard_runner.config import MAX_CONFIG_BYTES, WizardConfig, parse_config
from wizard_runner.errors import (
    EXIT_NO_INPUT,
    ConfigError,
    WizardRunnerError,
)
from wizard_runner.log import make_logger
from wizard_runner.result import RunResult
from wizard_runner.runner import RunOptions, execute, preview
from wizard_runner.signals import install_stop_handlers

EXIT_SOFTWARE: Final = 70
PROG: Final = "wizard-runner"


class ConfigUnreadableError(WizardRunnerError):
    """The --config file cannot be read."""

    exit_code = EXIT_NO_INPUT


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", required=True, metavar="FILE|-",
        help="the wizard body as JSON: a file, or - for standard input",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Carry out the XiVO wizard on this machine: the system files, then the "
        "scripts of /etc/xivo/wizard.d.",
        epilog="Exit codes: 0 success, 1 failed, 2 usage, 65 invalid config, 66 config "
        "unreadable, 73 system files not applied, 75 another run holds the lock, "
        "77 insufficient privileges, 130/143 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a wizard body; print every problem")
    _add_config(validate)
    validate.add_argument("--json", action="store_true", help="print the verdict as JSON")

    run = commands.add_parser("run", help="apply a wizard body to this machine")
    _add_config(run)
    run.add_argument("--root", default="/", metavar="DIR",
                     help="work on the tree under DIR instead of / (a sandbox)")
    run.add_argument("--dry-run", action="store_true",
                     help="print a unified diff of what would change; write nothing")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run.add_argument("--system-conf", dest="system_conf", default=None,
                     action=argparse.BooleanOptionalAction,
                     help="write the system files (default: the body's handle_system_conf)")
    run.add_argument("--replace-symlinks", action="store_true",
                     help="replace a symlinked target (resolv.conf) with a file")
    run.add_argument("--apply-network", action="store_true",
                     help="restart the interface when /etc/network/interfaces changed "
                     "(can cut SSH sessions)")
    run.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                     help="stderr log format (auto: readable on a terminal, else JSON lines)")
    return parser


def read_config(source: str, stdin: TextIO) -> WizardConfig:
    """Load and validate the body from a file or `-` (standard input)."""
    if source == "-":
        data = stdin.buffer.read(MAX_CONFIG_BYTES + 1)
        return parse_config(data, "standard input")
    path = Path(source)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigUnreadableError(f"--config {source}: cannot read: {error.strerror}") from error
    return parse_config(data, source)


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2) + "\n")


def _summary(result: RunResult, out: TextIO) -> None:
    out.write(f"run {result.run_id}: {result.status.value} (exit {result.exit_code})\n")
    system = result.system_conf
    for outcome in system.files:
        reason = f"  ({outcome.reason})" if outcome.reason else ""
        out.write(f"  {outcome.path:<26} {outcome.action.value}{reason}\n")
    for action in system.actions:
        detail = f"  ({action.detail})" if action.detail else ""
        out.write(f"  action {action.name}: {action.status}{detail}\n")
    if system.backup_dir:
        out.write(f"backups: {system.backup_dir}\n")
    for note in system.pending:
        out.write(f"pending: {note}\n")
    if result.error:
        out.write(f"error: {result.error}\n")


def _validate(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    try:
        read_config(args.config, stdin)
    except ConfigError as error:
        if args.json:
            _print_json({"valid": False, "problems": list(error.problems)}, out)
        raise
    if args.json:
        _print_json({"valid": True, "problems": []}, out)
    else:
        out.write(f"{args.config}: valid\n")
    return 0


def _run(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    config = read_config(args.config, stdin)
    options = RunOptions(
        root=args.root,
        handle_system_conf=args.system_conf,
        replace_symlinks=args.replace_symlinks,
        apply_network=args.apply_network,
    )
    json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
    if args.dry_run:
        shown = preview(config, options, log=make_logger(err, json_lines=json_logs))
        if args.json:
            _print_json(shown.to_dict(), out)
        else:
            out.write(shown.diff or "# no system file would change\n")
        return 0
    install_stop_handlers()
    result = execute(config, options, stream=err, json_logs=json_logs)
    if args.json:
        out.write(result.to_json())
    else:
        _summary(result, out)
    return result.exit_code


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line and return the exit code."""
    stdin, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args, out, stdin)
        return _run(args, out, stdin, err)
    except WizardRunnerError as error:
        err.write(f"{PROG}: {error}\n")
        if args.command == "run" and args.json:
            problems = list(error.problems) if isinstance(error, ConfigError) else []
            _print_json({"status": "error", "exit_code": error.exit_code, "error": str(error),
                         "problems": problems}, out)
        return error.exit_code
    except Exception:
        err.write(f"{PROG}: internal error, please report it:\n{traceback.format_exc()}")
        return EXIT_SOFTWARE
