"""`wizard-runner serve`: the root daemon that runs the requests confd drops into the spool."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import watchfiles
from structlog.typing import FilteringBoundLogger

from wizard_runner.config import parse_config
from wizard_runner.defaults import DEFAULT_TIMEOUT
from wizard_runner.errors import (
    ConfigError,
    LockedError,
    RunInterrupted,
    WizardRunnerError,
    exit_for_signal,
)
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.result import RunResult, now
from wizard_runner.runner import RunOptions, execute
from wizard_runner.runuser import RunUser
from wizard_runner.signals import STOP_SIGNALS, request_stop
from wizard_runner.spool import (
    REQUEST_ID,
    RequestRejectedError,
    Spool,
    discard,
    prepare,
    prune_done,
    read_request,
    remove_stale_temps,
    write_result,
)

#: Group changes over at most this long, and stop waiting for more after STEP of quiet (ms).
DEBOUNCE_MS: Final = 20
STEP_MS: Final = 5
#: Wake up this often even without events, to check the stop flag and catch missed events.
TICK_MS: Final = 1000
LOCK_RETRY: Final = 0.25


def sd_notify(state: str) -> bool:
    """Tell systemd about readiness or status (one datagram to $NOTIFY_SOCKET); False if none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


@dataclass
class DaemonSettings:
    """What the daemon decides for every request (a request cannot)."""

    layout: Layout
    user: RunUser
    timeout: float | None = DEFAULT_TIMEOUT
    stream: TextIO | None = None
    json_logs: bool | None = None
    journal: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


def _record(request_id: str, received: str | None, status: str, exit_code: int, *,
            reason: str | None = None, result: RunResult | None = None,
            problems: list[str] | None = None) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "status": status,
        "exit_code": exit_code,
        "reason": reason,
        "problems": problems or [],
        "received_at": received,
        "finished_at": now().isoformat(timespec="milliseconds"),
        "result": None if result is None else result.to_dict(),
    }


class Daemon:
    """Serves the spool: one request at a time, each run as `wizard-runner run` would."""

    def __init__(self, settings: DaemonSettings, log: FilteringBoundLogger) -> None:
        self.settings = settings
        self.spool = Spool.of(settings.layout)
        self.log = log
        self.running = False

    # --- life cycle ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Prepare, recover, serve what waits, then watch incoming/ until told to stop."""
        with RunLock(self.settings.layout.run_dir / "daemon.lock", "wizard-runner serve"):
            prepare(self.spool, self.settings.user.gid)
            self.recover()
            prune_done(self.spool)
            sd_notify("READY=1\nSTATUS=waiting for requests")
            self.log.info("daemon_ready", spool=str(self.spool.base), pid=os.getpid())
            with contextlib.suppress(RunInterrupted):
                self.serve_pending()
                while not self.settings.stop.is_set():
                    self._watch()
            sd_notify("STOPPING=1")
            self.log.info("daemon_stopped")

    def _watch(self) -> None:
        """Serve on every change in incoming/ (and every tick); a broken watcher is rebuilt."""
        try:
            for _ in watchfiles.watch(
                self.spool.incoming, watch_filter=None, debounce=DEBOUNCE_MS, step=STEP_MS,
                rust_timeout=TICK_MS, yield_on_timeout=True, recursive=False,
                stop_event=self.settings.stop, raise_interrupt=False,
            ):
                if self.settings.stop.is_set():
                    return
                self.serve_pending()
        except Exception as error:  # the watcher (a name it cannot decode, a deleted dir)
            self.log.warning("watcher_restarted", error=str(error))
            self.serve_pending()
            self.settings.stop.wait(TICK_MS / 1000)

    def recover(self) -> None:
        """A request left in processing/ means the daemon died mid-run: report it, never rerun."""
        for name in sorted(os.listdir(self.spool.processing)):
            request_id = name.removesuffix(".json")
            path = self.spool.processing / name
            if name.endswith(".json") and REQUEST_ID.fullmatch(request_id):
                record = _record(request_id, None, "interrupted", exit_for_signal(signal.SIGTERM),
                                 reason="the daemon stopped during this request (crash or "
                                 "kill); it was not run again: resubmit it")
                write_result(self.spool, request_id, record, self.settings.user.gid)
                self.log.warning("request_interrupted", request_id=request_id)
            discard(self.spool, path)

    # --- requests -----------------------------------------------------------------------------

    def serve_pending(self) -> None:
        """Run every complete request waiting in incoming/, oldest first."""
        try:
            prepare(self.spool, self.settings.user.gid)  # an admin may have removed a part
            remove_stale_temps(self.spool)
            names = sorted(os.listdir(self.spool.incoming))
        except OSError as error:
            self.log.error("spool_unusable", spool=str(self.spool.base), error=str(error))
            return
        for name in names:
            if self.settings.stop.is_set():
                return
            if name.startswith("."):
                continue  # still being written by its submitter
            try:
                self.serve_one(name)
            except Exception as error:  # one bad entry must never stop the daemon
                self.log.exception("request_crashed", name=name, error=repr(error))
                discard(self.spool, self.spool.processing / name)

    def serve_one(self, name: str) -> None:
        """Claim one request by renaming it into processing/, run it, store its result."""
        request_id = name.removesuffix(".json")
        source = self.spool.incoming / name
        if not name.endswith(".json") or not REQUEST_ID.fullmatch(request_id):
            self.log.warning("request_name_rejected", name=name)
            discard(self.spool, source)
            return
        claimed = self.spool.processing / name
        try:
            os.rename(source, claimed)
        except FileNotFoundError:
            return  # taken by another daemon, or withdrawn
        received = now().isoformat(timespec="milliseconds")
        log = self.log.bind(request_id=request_id)
        log.info("request_claimed")
        try:
            record = self._run(request_id, claimed, received, log)
        except RunInterrupted as stop:
            # Stopped outside the run itself (waiting for the lock, opening the log): the
            # request still gets its answer before the daemon exits.
            record = _record(request_id, received, "interrupted", stop.exit_code,
                             reason=f"the daemon was {stop} before the request could finish")
            self._answer(request_id, record)
            discard(self.spool, claimed)
            raise
        self._answer(request_id, record)
        discard(self.spool, claimed)
        log.info("request_done", status=record["status"], exit_code=record["exit_code"])
        prune_done(self.spool)

    def _answer(self, request_id: str, record: dict[str, Any]) -> None:
        """Store a request's result, recreating done/ if an admin removed it meanwhile."""
        try:
            write_result(self.spool, request_id, record, self.settings.user.gid)
        except FileNotFoundError:
            prepare(self.spool, self.settings.user.gid)
            write_result(self.spool, request_id, record, self.settings.user.gid)

    def _run(self, request_id: str, claimed: Path, received: str,
             log: FilteringBoundLogger) -> dict[str, Any]:
        try:
            request = read_request(claimed, {0, self.settings.user.uid})
        except RequestRejectedError as rejected:
            log.warning("request_rejected", reason=str(rejected))
            return _record(request_id, received, "rejected", rejected.exit_code,
                           reason=str(rejected))
        try:
            config = parse_config(request.data, "request")
        except ConfigError as invalid:
            log.warning("request_rejected", reason="invalid config", problems=invalid.problems)
            if request.owner != self.settings.user.uid:
                # A root-owned file moved in by the submitter: never echo its values back.
                return _record(request_id, received, "rejected", invalid.exit_code,
                               reason=f"invalid config ({len(invalid.problems)} problems; "
                               "the daemon's log has them)")
            return _record(request_id, received, "rejected", invalid.exit_code,
                           reason=str(invalid), problems=list(invalid.problems))
        options = RunOptions(
            root=self.settings.layout.root, user=self.settings.user.name,
            timeout=self.settings.timeout, request_id=request_id,
        )
        while True:
            try:
                self.running = True
                result = execute(config, options, stream=self.settings.stream,
                                 json_logs=self.settings.json_logs,
                                 journal=self.settings.journal)
            except LockedError:
                # A manual run holds the lock: wait for it, the request stays claimed.
                if self.settings.stop.wait(LOCK_RETRY):
                    return _record(request_id, received, "interrupted",
                                   exit_for_signal(signal.SIGTERM),
                                   reason="the daemon was stopped before the request could run")
                continue
            except WizardRunnerError as error:
                return _record(request_id, received, "failed", error.exit_code, reason=str(error))
            finally:
                self.running = False
            return _record(request_id, received, result.status.value, result.exit_code,
                           reason=result.error, result=result)


def install_daemon_signals(stop: threading.Event, daemon: Callable[[], Daemon | None]) -> None:
    """SIGTERM/SIGINT set the stop flag; during a run they also interrupt it (its tree is
    stopped and its result says interrupted)."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        current = daemon()
        if current is not None and current.running:
            request_stop(signum)

    handle.defers_stops = True  # type: ignore[attr-defined]
    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)


def serve(settings: DaemonSettings, log: FilteringBoundLogger) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    daemon = Daemon(settings, log)
    install_daemon_signals(settings.stop, lambda: daemon)
    started = time.monotonic()
    daemon.serve()
    log.info("daemon_exit", uptime_s=round(time.monotonic() - started, 1))
