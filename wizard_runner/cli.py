"""The `wizard-runner` command line: validate, run, list and status."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

from wizard_runner import __version__
from wizard_runner.defaults import DEFAULT_TIMEOUT, DEFAULT_USER, MAX_CONFIG_BYTES
from wizard_runner.errors import (
    EXIT_FAILED,
    EXIT_NO_RUN,
    EXIT_OK,
    EXIT_PRIVILEGES,
    EXIT_SOFTWARE,
    ConfigError,
    ConfigUnreadableError,
    PrivilegeError,
    WizardRunnerError,
)
from wizard_runner.layout import Layout
from wizard_runner.streams import SafeStream

if TYPE_CHECKING:
    from wizard_runner.config import WizardConfig
    from wizard_runner.errors import RunInterrupted
    from wizard_runner.result import RunResult
    from wizard_runner.runner import RunOptions
    from wizard_runner.scripts import ScriptOutcome
    from wizard_runner.spool import NotAnsweredError

# Each command imports what it needs when it runs: `--help` stays fast.

PROG: Final = "wizard-runner"


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="work on the tree under DIR instead of / (a sandbox)")


def _timeout(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit) or a positive number")
    return value or None


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console", "journal"), default="auto",
        help="stderr log format (auto: the journal's under systemd, readable on a terminal, "
        "else JSON lines)",
    )


@dataclass(frozen=True)
class LogStyle:
    """How stderr logs look."""

    json_lines: bool | None
    journal: bool


def log_style(choice: str) -> LogStyle:
    """Resolve --log-format; under systemd (JOURNAL_STREAM set) auto means the journal's."""
    if choice == "auto" and os.environ.get("JOURNAL_STREAM"):
        choice = "journal"
    return LogStyle({"json": True, "console": False}.get(choice), choice == "journal")


def _add_spool_commands(commands: Any) -> None:
    from wizard_runner.defaults import DAEMON_GRACE_SECONDS

    submit = commands.add_parser(
        "submit", help="hand a wizard body to the daemon (as www-data: confd's way in)",
        description="Validate the body, drop it into the daemon's spool and print the request "
        "id; with --wait, wait for the result and exit as `run` would.",
    )
    submit.add_argument("--config", "-c", required=True, metavar="FILE|-",
                        help="the wizard body as JSON: a file, or - for standard input")
    _add_root(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the result")
    submit.add_argument("--timeout", type=_timeout, default=None, metavar="SECONDS",
                        help="with --wait: give up after this long (default: as long as a "
                        "daemon serves)")
    submit.add_argument("--json", action="store_true", help="print JSON")
    submit.epilog = (
        f"With --wait: exits as the run did; 69 when no daemon has served the spool for "
        f"{DAEMON_GRACE_SECONDS:g} s or --timeout passed, 128+N on signal N. Either way the "
        "request is withdrawn (nothing runs) unless the daemon had claimed it, whose answer "
        "then comes to done/ID.json.")
    serve = commands.add_parser("serve", help="the daemon: run the requests of the spool")
    _add_root(serve)
    serve.add_argument("--user", default=DEFAULT_USER,
                       help=f"run the scripts as this user (default {DEFAULT_USER})")
    serve.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"per-script time limit, 0 for none (default {DEFAULT_TIMEOUT:g})")
    _add_log_format(serve)
    reopen = commands.add_parser(
        "reopen", help="let the daemon run requests again (as root)",
        description="Once a request's run has succeeded, the daemon rejects every new request "
        "(the appliance is configured). This lets requests be run again.",
    )
    _add_root(reopen)


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="apply a wizard body: the system files, then the scripts",
        description="Without --config, rerun the body the last run was given (saved without "
        "its password in /var/lib/wizard-runner/config.json).",
    )
    run.add_argument("--config", "-c", metavar="FILE|-",
                     help="the wizard body as JSON: a file, or - for standard input")
    _add_root(run)
    run.add_argument("--dry-run", action="store_true",
                     help="print a unified diff of what would change; write nothing")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run.add_argument("--system-conf", dest="system_conf", default=None,
                     action=argparse.BooleanOptionalAction,
                     help="write the system files (default: the body's handle_system_conf)")
    run.add_argument("--scripts", dest="scripts", default=None,
                     action=argparse.BooleanOptionalAction,
                     help="run wizard.d's scripts (default: the body's run_scripts)")
    start = run.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start_at", metavar="NAME",
                       help="start the scripts at NAME (the ones before are not run)")
    start.add_argument("--resume", action="store_true",
                       help="start the scripts at the one that failed in the last run")
    run.add_argument("--user", default=DEFAULT_USER,
                     help=f"run the scripts as this user (default {DEFAULT_USER})")
    run.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                     help=f"per-script time limit, 0 for none (default {DEFAULT_TIMEOUT:g})")
    run.add_argument("--replace-symlinks", action="store_true",
                     help="replace a symlinked target (resolv.conf) with a file")
    run.add_argument("--apply-network", action="store_true",
                     help="restart the interface when /etc/network/interfaces changed "
                     "(can cut SSH sessions)")
    _add_log_format(run)
    run.add_argument("--verbose", "-v", action="store_true",
                     help="on a terminal, show every log event, not only warnings")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Carry out the XiVO wizard on this machine: the system files, then the "
        "scripts of /etc/xivo/wizard.d.",
        epilog="Exit codes: 0 success, 1 failed, 2 usage, 3 no run yet (status), 65 invalid "
        "config, 66 config or wizard.d missing, 73 system files not applied, 75 another run "
        "holds the lock, 77 insufficient privileges or unsafe permissions, 130/143 "
        "interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a wizard body; print every problem")
    validate.add_argument("--config", "-c", required=True, metavar="FILE|-",
                          help="the wizard body as JSON: a file, or - for standard input")
    validate.add_argument("--json", action="store_true", help="print the verdict as JSON")

    _add_run(commands)
    _add_spool_commands(commands)

    listing = commands.add_parser("list", help="show what the scripts step would do, and why")
    _add_root(listing)
    listing.add_argument("--user", default=DEFAULT_USER, help="the user scripts would run as")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")

    status = commands.add_parser("status", help="show the last run")
    _add_root(status)
    status.add_argument("--json", action="store_true", help="print the stored result as is")
    return parser


def read_body(source: str, stdin: TextIO) -> bytes:
    """The raw body from a file or `-` (standard input), read up to just past the size limit."""
    if source == "-":
        return stdin.buffer.read(MAX_CONFIG_BYTES + 1)
    try:
        with Path(source).open("rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigUnreadableError(f"--config {source}: cannot read: {error.strerror}") from error


def read_config(source: str, stdin: TextIO) -> WizardConfig:
    """Load and validate the body from a file or `-` (standard input)."""
    from wizard_runner.config import parse_config

    return parse_config(read_body(source, stdin), "standard input" if source == "-" else source)


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2) + "\n")


class TerminalProgress:
    """`[2/5] 20-provision ... ok (1.2 s)`, with the script's output indented below it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.header = ""
        self.open_line = False

    def started(self, index: int, total: int, name: str) -> None:
        """Show the script's header, its verdict to follow on the same line."""
        self.header = f"[{index}/{total}] {name} ..."
        self.out.write(self.header + " ")
        self.out.flush()
        self.open_line = True

    def output(self, name: str, stream: str, line: str) -> None:
        """Show an output line, indented (stderr marked with `!`)."""
        if self.open_line:
            self.out.write("\n")
            self.open_line = False
        mark = "!" if stream == "stderr" else "|"
        self.out.write(f"      {mark} {line}\n")
        self.out.flush()

    def finished(self, outcome: ScriptOutcome) -> None:
        """Show the verdict and the duration."""
        verdict = "ok" if not outcome.failed else f"FAILED: {outcome.reason}"
        duration = f" ({outcome.duration_s:.1f} s)" if outcome.duration_s is not None else ""
        if not self.open_line:
            self.out.write(self.header + " ")
        self.out.write(f"{verdict}{duration}\n")
        self.out.flush()
        self.open_line = False


def _summary(result: RunResult, out: TextIO) -> None:
    out.write(f"run {result.run_id}: {result.status.value} (exit {result.exit_code})\n")
    system = result.system_conf
    for outcome in system.files:
        reason = f"  ({outcome.reason})" if outcome.reason else ""
        out.write(f"  {outcome.path:<26} {outcome.action.value}{reason}\n")
    for action in system.actions:
        detail = f"  ({action.detail})" if action.detail else ""
        out.write(f"  action {action.name}: {action.status}{detail}\n")
    _scripts_table(result.to_dict()["scripts"], out)
    if system.backup_dir:
        out.write(f"backups: {system.backup_dir}\n")
    for note in system.pending:
        out.write(f"pending: {note}\n")
    if result.error:
        out.write(f"error: {result.error}\n")


def _scripts_table(scripts: list[dict[str, Any]], out: TextIO) -> None:
    for script in scripts:
        duration = f"{script['duration_s']:.1f} s" if script.get("duration_s") is not None else ""
        reason = f"  ({script['reason']})" if script.get("reason") else ""
        out.write(f"  {script['name']:<26} {script['status']:<10} {duration:>8}{reason}\n")


def _validate(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
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


def _options(args: argparse.Namespace, out: TextIO) -> RunOptions:
    from wizard_runner.runner import RunOptions

    progress = TerminalProgress(out) if out.isatty() and not args.json else None
    return RunOptions(
        root=args.root,
        handle_system_conf=args.system_conf,
        run_scripts=args.scripts,
        replace_symlinks=args.replace_symlinks,
        apply_network=args.apply_network,
        user=args.user,
        timeout=args.timeout,
        start_at=args.start_at,
        resume=args.resume,
        save_config=args.config is not None,
        progress=progress,
    )


def _run(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.log import make_logger
    from wizard_runner.runner import execute, load_saved_config, preview
    from wizard_runner.signals import install_stop_handlers

    options = _options(args, out)
    if args.config is None:
        config = load_saved_config(Layout.under(args.root))
    else:
        config = read_config(args.config, stdin)
    style = log_style(args.log_format)
    if args.dry_run:
        shown = preview(config, options, log=make_logger(err, json_lines=style.json_lines,
                                                         journal=style.journal))
        if args.json:
            _print_json(shown.to_dict(), out)
        else:
            out.write(shown.diff or "# no system file would change\n")
        return 0
    install_stop_handlers()
    quiet = options.progress is not None and not args.verbose
    result = execute(config, options, stream=err, json_logs=style.json_lines,
                     journal=style.journal,
                     stream_level=logging.WARNING if quiet else logging.INFO)
    if args.json:
        out.write(result.to_json())
    else:
        _summary(result, out)
    return result.exit_code


def _submit(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.errors import RunInterrupted
    from wizard_runner.signals import install_stop_handlers
    from wizard_runner.spool import (
        NotAnsweredError,
        Spool,
        daemon_serving,
        not_submitted,
        submit,
        submit_and_wait,
    )

    install_stop_handlers()  # first: a stop at any point ends in a message, never a traceback
    handed: str | dict[str, Any] | None = None  # the request id, or its answer
    try:
        spool = Spool.of(Layout.under(args.root))
        body = read_body(args.config, stdin)
        if args.wait:
            handed = submit_and_wait(spool, body, args.timeout)
            return _print_answer(handed, args.json, out)
        handed = submit(spool, body)
        return _print_submitted(handed, spool.base, serving=daemon_serving(spool),
                                as_json=args.json, out=out, err=err)
    except NotAnsweredError as error:
        return _not_answered(error, args.json, out, err)
    except WizardRunnerError as error:  # not submitted: an invalid body, no spool
        if args.json:
            problems = list(error.problems) if isinstance(error, ConfigError) else []
            _print_json({"request_id": None, "status": "not_submitted",
                         "exit_code": error.exit_code, "reason": str(error),
                         "problems": problems, "answer": None, "result": None}, out)
        raise
    except (KeyboardInterrupt, RunInterrupted) as stop:
        if handed is None:
            return _not_answered(not_submitted(stop), args.json, out, err)
        return _stopped_after(stop, handed, err)


def _print_answer(record: dict[str, Any], as_json: bool, out: TextIO) -> int:
    if as_json:
        _print_json(record, out)
    else:
        out.write(f"request {record.get('request_id')}: {record.get('status')} "
                  f"(exit {record.get('exit_code')})\n")
        if record.get("reason"):
            out.write(f"{record['reason']}\n")
    return int(record["exit_code"])


def _print_submitted(request_id: str, base: Path, *, serving: bool, as_json: bool, out: TextIO,
                     err: TextIO) -> int:
    if not serving:
        # Queued all the same: the unit may be starting, or an admin may start it later.
        err.write(f"{PROG}: warning: no daemon is serving {base} right now: request "
                  f"{request_id} waits until wizard-runnerd starts\n")
    if as_json:
        _print_json({"request_id": request_id, "daemon_serving": serving}, out)
    else:
        out.write(f"{request_id}\n")
    return EXIT_OK


def _not_answered(error: NotAnsweredError, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Report a submission that ended without an answer."""
    if as_json:
        _print_json(error.to_dict(), out)
    err.write(f"{PROG}: {error}\n")
    return error.exit_code


def _stopped_after(stop: KeyboardInterrupt | RunInterrupted, handed: str | dict[str, Any],
                   err: TextIO) -> int:
    """A stop once the request was queued (no --wait) or answered: it stays as it is."""
    import signal

    from wizard_runner.errors import exit_for_signal
    from wizard_runner.spool import stop_signal

    signum = stop_signal(stop)
    name = signal.Signals(signum).name
    if isinstance(handed, str):
        err.write(f"{PROG}: interrupted by {name}: request {handed} stays queued\n")
    else:
        err.write(f"{PROG}: interrupted by {name} after request {handed.get('request_id')} "
                  f"was answered: {handed.get('status')} (exit {handed.get('exit_code')})\n")
    return exit_for_signal(signum)


def _serve(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.daemon import DaemonSettings, serve
    from wizard_runner.log import make_logger
    from wizard_runner.runuser import resolve_user
    from wizard_runner.signals import install_stop_handlers

    layout = Layout.under(args.root)
    if layout.is_real_root and os.geteuid() != 0:
        raise PrivilegeError("wizard-runner serve writes system files: run it as root")
    install_stop_handlers()
    style = log_style(args.log_format)
    settings = DaemonSettings(layout=layout, user=resolve_user(args.user), timeout=args.timeout,
                              stream=err, json_logs=style.json_lines, journal=style.journal)
    log = make_logger(err, json_lines=style.json_lines, journal=style.journal)
    serve(settings, log)
    return 0


def _reopen(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.spool import reopen_spool

    layout = Layout.under(args.root)
    if os.geteuid() != 0:
        raise PrivilegeError("wizard-runner reopen: run it as root (only root may let the "
                             "wizard be run again)")
    out.write("spool reopened\n" if reopen_spool(layout) else "spool was not closed\n")
    return EXIT_OK


def _list(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.discovery import Verdict, scan, unsafe_problems
    from wizard_runner.runuser import resolve_user

    user = resolve_user(args.user)
    layout = Layout.under(args.root)
    found = scan(layout.wizard_d, user, top=layout.root)
    problems = unsafe_problems(found.itself, found.decisions, user, found.parents)
    rows = [{"name": d.name, "action": d.verdict.value, "reason": d.reason}
            for d in found.decisions]
    if args.json:
        _print_json({"directory": str(found.directory), "user": user.name, "entries": rows,
                     "unsafe": problems}, out)
    else:
        out.write(f"{found.directory} (as {user.name}):\n")
        for row in rows:
            reason = f"  {row['reason']}" if row["reason"] else ""
            out.write(f"  {row['name']:<30} {row['action']:<5}{reason}\n")
        if not rows:
            out.write("  (empty: nothing to run)\n")
        for problem in problems:
            out.write(f"unsafe: {problem}\n")
    if problems:
        return EXIT_PRIVILEGES
    return EXIT_FAILED if any(d.verdict is Verdict.FAIL for d in found.decisions) else EXIT_OK


def _status(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.runner import read_last_result

    layout = Layout.under(args.root)
    last = read_last_result(layout)
    if last is None:
        if args.json:
            _print_json(None, out)
        else:
            out.write(f"no run yet ({layout.last_run} does not exist)\n")
        return EXIT_NO_RUN
    if args.json:
        _print_json(last, out)
    else:
        out.write(f"last run {last.get('run_id')}: {last.get('status')} "
                  f"(exit {last.get('exit_code')})\n")
        out.write(f"  started {last.get('started_at')}, finished {last.get('finished_at')}\n")
        system = last.get("system_conf", {})
        out.write("system files:" + ("" if system.get("handled") else " not handled") + "\n")
        for entry in system.get("files", []):
            reason = f"  ({entry['reason']})" if entry.get("reason") else ""
            out.write(f"  {entry['path']:<26} {entry['action']}{reason}\n")
        out.write("scripts:" + ("" if last.get("scripts") else " none run") + "\n")
        _scripts_table(last.get("scripts", []), out)
        for script in last.get("scripts", []):
            if script.get("status") in {"failed", "timed_out"} and script.get("output_tail"):
                out.write(f"output of {script['name']} (last lines):\n")
                for line in script["output_tail"].splitlines()[-20:]:
                    out.write(f"  | {line}\n")
        if last.get("error"):
            out.write(f"error: {last['error']}\n")
    return EXIT_OK if last.get("status") == "succeeded" else EXIT_FAILED


Command = Callable[[argparse.Namespace, TextIO, TextIO, TextIO], int]
_COMMANDS: Final[dict[str, Command]] = {
    "validate": _validate,
    "run": _run,
    "list": _list,
    "status": _status,
    "submit": _submit,
    "serve": _serve,
    "reopen": _reopen,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line and return the exit code."""
    stdin = stdin or sys.stdin
    # A closed pipe on stdout or stderr must not stop a run from finishing and cleaning up.
    out = cast(TextIO, SafeStream(stdout or sys.stdout))
    err = cast(TextIO, SafeStream(stderr or sys.stderr))
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args, out, stdin, err)
    except WizardRunnerError as error:
        err.write(f"{PROG}: {error}\n")
        if args.command == "run" and args.json:
            problems = list(error.problems) if isinstance(error, ConfigError) else []
            _print_json({"status": "error", "exit_code": error.exit_code, "error": str(error),
                         "problems": problems}, out)
        return error.exit_code
    except Exception:  # last resort: say it is a bug, with the traceback
        err.write(f"{PROG}: internal error, please report it:\n{traceback.format_exc()}")
        return EXIT_SOFTWARE

