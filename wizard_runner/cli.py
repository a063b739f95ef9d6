"""The `wizard-runner` command line: validate, run, list, status, submit and serve."""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple, NoReturn, TextIO, cast

from wizard_runner import __version__
from wizard_runner.defaults import DEFAULT_TIMEOUT, DEFAULT_USER, MAX_CONFIG_BYTES
from wizard_runner.errors import (
    EXIT_FAILED,
    EXIT_IO,
    EXIT_NO_RUN,
    EXIT_OK,
    EXIT_PRIVILEGES,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    ConfigError,
    ConfigUnreadableError,
    PrivilegeError,
    ResultNotStoredError,
    RunInterrupted,
    UsageError,
    WizardRunnerError,
    failure_object,
)
from wizard_runner.escape import printable, printable_lines
from wizard_runner.layout import Layout
from wizard_runner.signals import interruptible, take_stop
from wizard_runner.streams import SafeStream

if TYPE_CHECKING:
    from wizard_runner.config import WizardConfig
    from wizard_runner.errors import RunInterrupted
    from wizard_runner.preview import Preview
    from wizard_runner.result import RunResult, ScriptOutcome
    from wizard_runner.runner import RunOptions
    from wizard_runner.spool import NotAnsweredError
    from wizard_runner.state import Choices, Unfinished

# Each command imports what it needs when it runs: `--help` stays fast.

PROG: Final = "wizard-runner"
#: Events a terminal run does not print as log lines: its progress and summary say them.
SAID_BY_SUMMARY: Final = frozenset({
    "script_failed", "script_timed_out", "system_step_failed", "scripts_step_failed",
    "run_interrupted", "result_not_stored", "network_change_pending",
})


class CommandLineError(UsageError):
    """The command line itself is wrong; `usage` is the usage of the command it was for."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so that main() decides how to say it (as
    JSON with --json), with the usage of the command the mistake was made in."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        """Raise the mistake with this (sub)command's usage."""
        raise CommandLineError(message, self.format_usage())


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


class LogStyle(NamedTuple):
    """How stderr logs look."""

    json_lines: bool | None
    journal: bool


def log_style(choice: str) -> LogStyle:
    """Resolve --log-format; under systemd (JOURNAL_STREAM set) auto means the journal's."""
    if choice == "auto" and os.environ.get("JOURNAL_STREAM"):
        choice = "journal"
    return LogStyle({"json": True, "console": False}.get(choice), choice == "journal")


def _validate_arguments(validate: argparse.ArgumentParser) -> None:
    validate.add_argument("--config", "-c", required=True, metavar="FILE|-",
                          help="the wizard body as JSON: a file, or - for standard input")
    validate.add_argument("--json", action="store_true", help="print the verdict as JSON")


def _run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--config", "-c", metavar="FILE|-",
                     help="the wizard body as JSON: a file, or - for standard input")
    _add_root(run)
    run.add_argument("--dry-run", action="store_true",
                     help="print a unified diff of what would change and the scripts that "
                     "would run; write nothing")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run.add_argument("--system-conf", dest="system_conf", default=None,
                     action=argparse.BooleanOptionalAction,
                     help="write the system files (default: the body's handle_system_conf)")
    run.add_argument("--scripts", dest="scripts", default=None,
                     action=argparse.BooleanOptionalAction,
                     help="run wizard.d's scripts (default: the body's run_scripts; --from "
                     "and --resume imply it)")
    run.add_argument("--scripts-once", dest="scripts_once", action="store_true",
                     help="leave the scripts alone if an earlier run ran them to success "
                     "(status: scripts completed); not repeated by a plain rerun")
    start = run.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start_at", metavar="NAME",
                       help="start the scripts at NAME (the ones before are not run)")
    start.add_argument("--resume", action="store_true",
                       help="start the scripts at the one that failed in the last run (or "
                       "the first it did not run, when a stop ended it between two)")
    # Unset, these four are the defaults, or on a rerun of the saved body what the last run
    # was told (SUPPRESS: not given leaves no attribute; a timeout of 0 means none).
    run.add_argument("--user", default=argparse.SUPPRESS,
                     help=f"run the scripts as this user (default {DEFAULT_USER})")
    run.add_argument("--timeout", type=_timeout, default=argparse.SUPPRESS, metavar="SECONDS",
                     help=f"per-script time limit, 0 for none (default {DEFAULT_TIMEOUT:g})")
    run.add_argument("--replace-symlinks", default=argparse.SUPPRESS,
                     action=argparse.BooleanOptionalAction,
                     help="replace a symlinked target (resolv.conf) with a file")
    run.add_argument("--apply-network", default=argparse.SUPPRESS,
                     action=argparse.BooleanOptionalAction,
                     help="restart the interface when /etc/network/interfaces changed "
                     "(can cut SSH sessions)")
    _add_log_format(run)
    run.add_argument("--verbose", "-v", action="store_true",
                     help="on a terminal, show every log event, not only warnings")


def _submit_arguments(submit: argparse.ArgumentParser) -> None:
    from wizard_runner.defaults import DAEMON_GRACE_SECONDS

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


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    _add_root(serve)
    serve.add_argument("--user", default=DEFAULT_USER,
                       help=f"run the scripts as this user (default {DEFAULT_USER})")
    serve.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"per-script time limit, 0 for none (default {DEFAULT_TIMEOUT:g})")
    _add_log_format(serve)


def _list_arguments(listing: argparse.ArgumentParser) -> None:
    _add_root(listing)
    listing.add_argument("--user", default=DEFAULT_USER, help="the user scripts would run as")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")


def _status_arguments(status: argparse.ArgumentParser) -> None:
    _add_root(status)
    status.add_argument("--json", action="store_true", help="print the stored result as is")


def _setup_dirs_arguments(setup: argparse.ArgumentParser) -> None:
    _add_root(setup)
    setup.add_argument("--user", default=DEFAULT_USER,
                       help=f"the user scripts run as, whose group may submit requests "
                       f"(default {DEFAULT_USER})")


_AddArguments = Callable[[argparse.ArgumentParser], None]

def build_parser(command: str | None = None) -> _Parser:
    """The argument parser, with one sub-command per job; given the command about to run,
    with that one alone."""
    parser = _Parser(
        prog=PROG,
        description="Carry out the XiVO wizard on this machine: the system files, then the "
        "scripts of /etc/xivo/wizard.d.",
        epilog="Exit codes: 0 success, 1 failed, 2 usage, 3 no run yet (status), 65 invalid "
        "config, 66 config, wizard.d or the root's etc/ missing, 69 no daemon serves the "
        "spool or no answer came, 70 internal error, 73 system files not applied, 74 the "
        "runner's own files (log, state, spool) cannot be written, 75 another run holds the "
        "lock, 77 insufficient privileges, unsafe permissions or a closed spool, "
        "129/130/143 stopped by SIGHUP/SIGINT/SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, job in _COMMANDS.items():
        if command in (None, name):
            job.add_arguments(commands.add_parser(name, help=job.summary,
                                                  description=job.description))
    parser.commands = dict(commands.choices)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; a mistake raises CommandLineError with its command's usage."""
    # A command line that starts with a command needs that command's parser alone; any other
    # (--help, --version, a mistake) gets them all, to list them.
    first = argv[0] if argv else None
    parser = build_parser(first if first in _COMMANDS else None)
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def read_body(source: str, stdin: TextIO) -> bytes:
    """The raw body from a file or `-` (standard input), read up to just past the size limit;
    a stop cuts the wait for it (a terminal, a FIFO with no writer)."""
    with interruptible():
        return _read_body(source, stdin)


def _read_body(source: str, stdin: TextIO) -> bytes:
    if source == "-":
        buffer = getattr(stdin, "buffer", None)
        if buffer is None:
            raise ConfigUnreadableError("--config -: standard input is closed")
        try:
            return cast(bytes, buffer.read(MAX_CONFIG_BYTES + 1))
        except (OSError, ValueError) as error:
            raise ConfigUnreadableError(f"--config -: cannot read standard input: "
                                        f"{getattr(error, 'strerror', None) or error}") from error
    try:
        with Path(source).open("rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigUnreadableError(f"--config {source}: cannot read: {error.strerror}") from error


def read_config(source: str, stdin: TextIO) -> WizardConfig:
    """Load and validate the body from a file or `-` (standard input)."""
    from wizard_runner.config import parse_config

    return parse_config(read_body(source, stdin), "standard input" if source == "-" else source)


def _say(err: TextIO, said: BaseException | str) -> None:
    """An error (as the command's boundary words it) or a warning on stderr, escaped: a path
    may hold a newline."""
    message = failure_of(said).message if isinstance(said, BaseException) else printable(said)
    err.write(f"{PROG}: {message}\n")


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
        self.header = f"[{index}/{total}] {printable(name)} ..."
        self.out.write(self.header + " ")
        self.out.flush()
        self.open_line = True

    def output(self, name: str, stream: str, line: str) -> None:
        """Show an output line (already escaped), indented (stderr marked with `!`)."""
        if self.open_line:
            self.out.write("\n")
            self.open_line = False
        mark = "!" if stream == "stderr" else "|"
        self.out.write(f"      {mark} {line}\n")
        self.out.flush()

    def finished(self, outcome: ScriptOutcome) -> None:
        """Show the verdict and the duration."""
        from wizard_runner.result import ScriptStatus  # loaded by the run already

        verdict = "ok" if not outcome.failed else f"FAILED: {printable(outcome.reason or '')}"
        if outcome.status is ScriptStatus.NOT_RUN:  # a stop came as it was shown
            verdict = "not run"
        duration = f" ({outcome.duration_s:.1f} s)" if outcome.duration_s is not None else ""
        if not self.open_line:
            self.out.write(self.header + " ")
        self.out.write(f"{verdict}{duration}\n")
        self.out.flush()
        self.open_line = False


def _flag(value: bool) -> str:
    return "true" if value else "false"


def nothing_done(result: RunResult) -> str | None:
    """Why a run that wrote no file and ran no script did nothing, or None if it did work."""
    if result.changed:
        return None
    system = result.system_conf
    if not system.handled:
        files = "handle_system_conf=false"
    elif any(f.action.value == "skipped" for f in system.files):
        files = "no system file changed (see the skipped ones above)"
    else:
        files = "every system file was already up to date"
    if result.scripts_already_done:
        scripts = f"the scripts ran to success in run {result.scripts_completed_by}"
    elif not result.run_scripts:
        scripts = "run_scripts=false"
    elif result.scripts:
        scripts = "no script was run"
    else:
        scripts = "wizard.d has no script to run"
    return f"nothing was done: {files}; {scripts}"


def show_run(result: RunResult, out: TextIO, *, title: str = "run", details: bool = False) -> None:
    """A run as people read it, for `run`'s summary and `status`: its status, flags, each
    file and script, and what to look at (every name and reason escaped)."""
    out.write(f"{title} {printable(result.run_id)}: {result.status.value} "
              f"(exit {result.exit_code})\n")
    if details:
        out.write(f"  started {result.started_at.isoformat(timespec='seconds')}, "
                  f"finished {result.finished_at.isoformat(timespec='seconds')}\n")
        completed = result.scripts_completed_by
        by = f"by run {printable(completed)}" if completed is not None else "no"
        out.write(f"  scripts completed: {by}\n")
    system = result.system_conf
    out.write(f"  handle_system_conf={_flag(system.handled)} "
              f"run_scripts={_flag(result.run_scripts)}"
              + (f" request={printable(result.request_id)}" if result.request_id else "") + "\n")
    for file in system.files:
        reason = f"  ({printable(file.reason)})" if file.reason else ""
        out.write(f"  {printable(file.path):<26} {file.action.value}{reason}\n")
    for action in system.actions:
        detail = f"  ({printable(action.detail)})" if action.detail else ""
        out.write(f"  action {printable(action.name)}: {printable(action.status)}{detail}\n")
    for script in result.scripts:
        duration = f"{script.duration_s:.1f} s" if script.duration_s is not None else ""
        reason = f"  ({printable(script.reason)})" if script.reason else ""
        out.write(f"  {printable(script.name):<26} {script.status.value:<10} {duration:>8}"
                  f"{reason}\n")
    if system.backup_dir:
        out.write(f"backups: {printable(system.backup_dir)}\n")
    for note in system.pending:
        out.write(f"pending: {printable(note)}\n")
    failed = result.failed_script
    if details and failed is not None and failed.output_tail:
        out.write(f"output of {printable(failed.name)} (last lines):\n")
        for line in failed.output_tail.splitlines()[-20:]:
            out.write(f"  | {printable(line)}\n")
    idle = nothing_done(result)
    if idle is not None and result.status.value == "succeeded":
        out.write(f"{idle}\n")
    for warning in result.warnings:
        out.write(f"warning: {printable(warning)}\n")
    if result.error:
        out.write("error: " + "\n".join(printable(line) for line in result.error.splitlines())
                  + "\n")


def _validate(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    try:
        read_config(args.config, stdin)
    except ConfigError as error:
        if args.json:
            _print_json({"valid": False, "exit_code": error.exit_code, "error": str(error),
                         "problems": list(error.problems)}, out)
        _say(err, error)
        return error.exit_code
    if args.json:
        _print_json({"valid": True, "exit_code": EXIT_OK, "error": None, "problems": []}, out)
    else:
        out.write(f"{printable(args.config)}: valid\n")
    return EXIT_OK


def _options(args: argparse.Namespace, out: TextIO, choices: Choices,
             saved: Path | None = None) -> RunOptions:
    """The run's options: the command line's, else `choices` (a rerun: the last run's, as
    `saved`, which messages then blame for them)."""
    from wizard_runner.runner import RunOptions

    progress = TerminalProgress(out) if out.isatty() and not args.json else None
    given = {name: getattr(args, name) for name in choices._fields if hasattr(args, name)}
    chosen = choices._replace(**given)
    user_given_by = "--user" if saved is None or "user" in given else \
        f"{saved}: the last run's user"
    return RunOptions(
        root=args.root,
        handle_system_conf=args.system_conf,
        run_scripts=args.scripts,
        replace_symlinks=chosen.replace_symlinks,
        apply_network=chosen.apply_network,
        user=chosen.user,
        timeout=chosen.timeout,
        start_at=args.start_at,
        resume=args.resume,
        scripts_once=args.scripts_once,
        save_config=True,
        progress=progress,
        user_given_by=user_given_by,
    )


def show_preview(shown: Preview, out: TextIO) -> None:
    """A dry run as people read it: the diff, then each script's fate, as `#` lines."""
    out.write(shown.diff or "# no system file would change\n")
    for follow_up in shown.follow_ups:  # what an earlier run wrote and the system does not show
        out.write(f"# follow-up: {printable(follow_up)}\n")
    for note in shown.pending:
        out.write(f"# pending: {printable(note)}\n")
    if shown.scripts_done_by is not None:
        out.write(f"# scripts: none would run (they ran to success in run "
                  f"{printable(shown.scripts_done_by)}; --scripts-once)\n")
    elif not shown.run_scripts:
        out.write("# scripts: none would run (run_scripts=false)\n")
    for script in shown.scripts:
        reason = f"  ({printable(script.reason)})" if script.reason else ""
        out.write(f"# script {printable(script.name):<26} {script.action.value}{reason}\n")
    if not shown.changed:
        out.write("# nothing would be done\n")


def _run(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.log import make_logger
    from wizard_runner.preflight import require_system_tree
    from wizard_runner.runner import execute
    from wizard_runner.signals import install_stop_handlers
    from wizard_runner.state import Choices, load_saved_config

    install_stop_handlers()
    saved = None
    if args.config is None:
        layout = Layout.under(args.root)
        require_system_tree(layout)
        config, choices = load_saved_config(layout)
        saved = layout.saved_config
    else:
        config, choices = read_config(args.config, stdin), Choices()
    options = _options(args, out, choices, saved)
    style = log_style(args.log_format)
    if args.dry_run:
        from wizard_runner.preview import preview

        shown = preview(config, options, log=make_logger(err, json_lines=style.json_lines,
                                                         journal=style.journal))
        if args.json:
            _print_json(shown.to_dict(), out)
        else:
            show_preview(shown, out)
        return EXIT_OK
    quiet = options.progress is not None and not args.verbose
    try:
        result = execute(config, options, stream=err, json_logs=style.json_lines,
                         journal=style.journal,
                         stream_level=logging.WARNING if quiet else logging.INFO,
                         stream_skips=SAID_BY_SUMMARY if quiet else frozenset())
    except ResultNotStoredError as failure:
        stored = cast("RunResult", failure.result)
        if args.json:
            _print_json({**stored.to_dict(), "exit_code": failure.exit_code,
                         "error": str(failure)}, out)
        else:
            show_run(stored, out)
        _say(err, failure)
        return failure.exit_code
    if args.json:
        out.write(result.to_json())
    else:
        show_run(result, out)
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
    try:
        spool = Spool.of(Layout.under(args.root))
        body = read_body(args.config, stdin)
        if args.wait:
            return _print_answer(submit_and_wait(spool, body, args.timeout), args.json, out)
        request_id = submit(spool, body)
        return _print_submitted(request_id, spool.base, serving=daemon_serving(spool),
                                as_json=args.json, out=out, err=err)
    except NotAnsweredError as error:  # a stop or a timeout: withdrawn, or where it is
        return _not_answered(error, args.json, out, err)
    except WizardRunnerError as error:  # not submitted: an invalid body, no spool
        _say(err, error)
        if args.json:
            problems = list(error.problems) if isinstance(error, ConfigError) else []
            _print_json({"request_id": None, "status": "not_submitted",
                         "exit_code": error.exit_code, "reason": str(error),
                         "problems": problems, "answer": None, "result": None}, out)
        return error.exit_code
    except RunInterrupted as stop:  # while the body was read
        return _not_answered(not_submitted(stop), args.json, out, err)


def _print_answer(record: dict[str, Any], as_json: bool, out: TextIO) -> int:
    if as_json:
        _print_json(record, out)
    else:
        out.write(printable(f"request {record.get('request_id')}: {record.get('status')} "
                            f"(exit {record.get('exit_code')})") + "\n")
        if record.get("reason"):
            out.write(printable_lines(str(record["reason"])) + "\n")
    return int(record["exit_code"])


def _print_submitted(request_id: str, base: Path, *, serving: bool, as_json: bool, out: TextIO,
                     err: TextIO) -> int:
    if not serving:
        # Queued all the same: the unit may be starting, or an admin may start it later.
        _say(err, f"warning: no daemon is serving {base} right now: request {request_id} "
             "waits until wizard-runnerd starts")
    if as_json:
        _print_json({"request_id": request_id, "daemon_serving": serving}, out)
    else:
        out.write(f"{request_id}\n")
    return EXIT_OK


def _not_answered(error: NotAnsweredError, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Report a submission that ended without an answer."""
    if as_json:
        _print_json(error.to_dict(), out)
    _say(err, error)
    return error.exit_code


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
    from wizard_runner.runuser import resolve_user
    from wizard_runner.scripts.discovery import Verdict, scan, unsafe_problems

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
        out.write(f"{printable(str(found.directory))} (as {user.name}):\n")
        for decision in found.decisions:
            reason = f"  {printable(decision.reason)}" if decision.reason else ""
            row = f"  {printable(decision.name):<30} {decision.verdict.value:<5}{reason}"
            out.write(row.rstrip() + "\n")
        if not rows:
            out.write("  (empty: nothing to run)\n")
        for problem in problems:
            out.write(f"unsafe: {printable(problem)}\n")
    if problems:
        return EXIT_PRIVILEGES
    return EXIT_FAILED if any(d.verdict is Verdict.FAIL for d in found.decisions) else EXIT_OK


def _status(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.result import RunStatus
    from wizard_runner.state import last_runs

    layout = Layout.under(args.root)
    unfinished, last = last_runs(layout)
    if unfinished is not None and not unfinished.running:
        return _show_killed(unfinished, last, args.json, out)
    going = {"in_progress": {"run_id": unfinished.run_id, "pid": unfinished.pid}
             } if unfinished is not None else {}
    if unfinished is not None and not args.json:
        out.write(f"a run is in progress: {printable(unfinished.run_id)} "
                  f"(pid {unfinished.pid})\n")
    if last is None:
        message = printable(f"no run yet ({layout.last_run} does not exist)")
        if args.json:
            _print_json({**failure_object("none", EXIT_NO_RUN, message), **going}, out)
        else:
            out.write(f"{message}\n")
        return EXIT_NO_RUN
    if args.json:
        _print_json({**last.to_dict(), **going}, out)
    else:
        show_run(last, out, title="last run", details=True)
    return EXIT_OK if last.status is RunStatus.SUCCEEDED else EXIT_FAILED


def _show_killed(killed: Unfinished, before: RunResult | None, as_json: bool,
                 out: TextIO) -> int:
    """status after a run that did not store its result (killed, or it could not): that,
    then the run before it, if any."""
    earlier = ("; a run before it was killed while it was to run the scripts: they may have "
               "run part-way" if killed.pass_unknown else "")
    if killed.ended:
        status, shown = "not_stored", "result not stored"
        message = (f"run {killed.run_id} (pid {killed.pid}) ended, but its result could not "
                   "be stored: its stderr (the journal under systemd) says what it did, and "
                   f"its log (`result_not_stored`) if it had room{earlier}; `wizard-runner "
                   "run` repeats its body")
    else:
        status, shown = "killed", "killed"
        files = ("it was not to write the system files (handle_system_conf false): they are "
                 "as they were" if killed.no_system else "the system files may be partly written")
        scripts = ("; it was not to run its scripts (run_scripts false): it ran none"
                   if killed.no_scripts else "")
        message = (f"run {killed.run_id} (pid {killed.pid}) was killed before it ended: its "
                   f"result was never stored, and {files}{scripts}{earlier}; `wizard-runner "
                   "run` repeats its body")
    if as_json:
        # What its holder line says it was told (a line without the words, an older
        # runner's too, says it was to).
        _print_json({**failure_object(status, EXIT_FAILED, message), "run_id": killed.run_id,
                     "pid": killed.pid, "handle_system_conf": not killed.no_system,
                     "run_scripts": not killed.no_scripts,
                     "scripts_may_be_partial": not killed.no_scripts or killed.pass_unknown,
                     "previous": before.to_dict() if before else None}, out)
        return EXIT_FAILED
    out.write(f"last run {printable(killed.run_id)}: {shown} (pid {killed.pid})\n  "
              f"{printable(message)}\n")
    if before is not None:
        show_run(before, out, title="the run before it:", details=True)
    return EXIT_FAILED


def _setup_dirs(args: argparse.Namespace, out: TextIO, stdin: TextIO, err: TextIO) -> int:
    from wizard_runner.dirs import prepare_dirs
    from wizard_runner.runuser import resolve_user

    for prepared in prepare_dirs(Layout.under(args.root), resolve_user(args.user).gid):
        out.write(prepared.describe() + "\n")
    return EXIT_OK


class _Command(NamedTuple):
    """A sub-command: what `--help` says of it, its description, the function adding its
    arguments, the one running it."""

    summary: str
    description: str | None
    add_arguments: _AddArguments
    handle: Callable[[argparse.Namespace, TextIO, TextIO, TextIO], int]


_COMMANDS: Final[dict[str, _Command]] = {
    "validate": _Command(
        "check a wizard body; print every problem", None, _validate_arguments, _validate),
    "run": _Command(
        "apply a wizard body: the system files, then the scripts",
        "Without --config, repeat the last run: its body (saved without its password in "
        "/var/lib/wizard-runner/config.json) with the flags and options it ran with; an option "
        "given again overrides the saved one.",
        _run_arguments, _run),
    "submit": _Command(
        "hand a wizard body to the daemon (as www-data: confd's way in)",
        "Validate the body, drop it into the daemon's spool and print the request id; with "
        "--wait, wait for the result and exit as `run` would.",
        _submit_arguments, _submit),
    "serve": _Command("the daemon: run the requests of the spool", None, _serve_arguments,
                      _serve),
    "reopen": _Command(
        "let the daemon run requests again (as root)",
        "Once a request's run has succeeded, the daemon rejects every new request (the "
        "appliance is configured). This lets requests be run again.",
        _add_root, _reopen),
    "list": _Command("show what the scripts step would do, and why", None, _list_arguments,
                     _list),
    "status": _Command("show the last run", None, _status_arguments, _status),
    "setup-dirs": _Command(
        "create the spool, state, log and backup directories (as root)",
        "Create the runner's directories with the owners and modes it uses, and put back any "
        "that drifted; the Debian package runs it on every install and upgrade.",
        _setup_dirs_arguments, _setup_dirs),
}


def _error_object(command: str | None, status: str, code: int, message: str,
                  problems: Sequence[str] = ()) -> dict[str, object]:
    data = failure_object(status, code, message, problems)
    if command == "validate":
        data["valid"] = False
    return data


def _where(error: BaseException) -> str:
    """The innermost place of the code an unexpected error came from: enough to report it."""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is None:
        return "unknown place"
    code = trace.tb_frame.f_code
    return f"{Path(code.co_filename).name}:{trace.tb_lineno} in {code.co_name}"


class Failure(NamedTuple):
    """How a command ended when it did not return: the status word, exit code and message."""

    status: str
    code: int
    message: str
    problems: Sequence[str] = ()
    usage: str = ""


def failure_of(error: BaseException) -> Failure:
    """Turn whatever stopped a command into one message and a named exit code."""
    if isinstance(error, CommandLineError):
        return Failure("error", EXIT_USAGE, str(error), usage=error.usage)
    if isinstance(error, ConfigError):
        return Failure("error", error.exit_code, str(error), error.problems)
    if isinstance(error, WizardRunnerError):
        return Failure("error", error.exit_code, printable(str(error)))
    if isinstance(error, KeyboardInterrupt):  # SIGINT before the handlers were installed
        error = RunInterrupted(signal.SIGINT)
    if isinstance(error, RunInterrupted):
        return Failure("interrupted", error.exit_code, f"{error}; nothing was run")
    if isinstance(error, OSError):  # one not turned into a message where it happened
        where = printable(str(error.filename or "a file"))
        return Failure("error", EXIT_IO, f"{where}: {error.strerror or error}")
    # A bug: say where, without a traceback.
    return Failure("error", EXIT_SOFTWARE, f"internal error, please report it: "
                   f"{type(error).__name__}: {error} (at {_where(error)})")


class _ClosedInput:
    """Standard input when the process has none (`<&-`): reading it says so."""

    buffer = None

    def isatty(self) -> bool:
        """Not a terminal."""
        return False


class _Nowhere(io.TextIOBase):
    """Where output goes when the process was started without stdout or stderr (`>&-`):
    nothing to open, nothing that can fail."""

    def write(self, text: str) -> int:
        """Drop the text."""
        return len(text)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line and return the exit code; never raises, never shows a traceback."""
    stdin = stdin or sys.stdin or cast(TextIO, _ClosedInput())
    # A closed pipe on stdout or stderr must not stop a run from finishing and cleaning up.
    safe_out = SafeStream(stdout or sys.stdout or cast(TextIO, _Nowhere()))
    out = cast(TextIO, safe_out)
    err = cast(TextIO, SafeStream(stderr or sys.stderr or cast(TextIO, _Nowhere())))
    code, args = _command_line(list(sys.argv[1:] if argv is None else argv), out, stdin, err)
    lost = safe_out.error
    if lost is not None and lost.errno != errno.EPIPE:  # a reader gone away wants no more
        err.write(f"{PROG}: standard output could not be written ({lost.strerror}): what "
                  "this command printed is incomplete\n")
        if code == EXIT_OK and not _reports_work(args):
            code = EXIT_IO  # its output was the point
    held = take_stop()
    if held is not None:  # it came where nothing was left to cut short
        err.write(f"{PROG}: {RunInterrupted(held)}, too late to cut the command short: its "
                  "outcome stands\n")
    return code


def _reports_work(args: argparse.Namespace | None) -> bool:
    """Whether the command's exit code says what became of work it did (a run, a request),
    which its output being lost does not change."""
    return args is not None and (args.command in ("submit", "serve") or
                                 (args.command == "run" and not args.dry_run))


def _command_line(arguments: list[str], out: TextIO, stdin: TextIO,
                  err: TextIO) -> tuple[int, argparse.Namespace | None]:
    """The command's exit code, and its parsed arguments (None when they were not)."""
    args: argparse.Namespace | None = None
    try:
        args = parse(arguments)
        return _COMMANDS[args.command].handle(args, out, stdin, err), args
    except SystemExit as done:  # --help and --version
        return (done.code if isinstance(done.code, int) else EXIT_USAGE), args
    except BaseException as error:  # the one boundary: every failure is said, once
        failure = failure_of(error)
    err.write(f"{failure.usage}{PROG}: {failure.message}\n")
    if "--json" in arguments:
        _print_json(_error_object(args.command if args is not None else None, failure.status,
                                  failure.code, failure.message, failure.problems), out)
    return failure.code, args
