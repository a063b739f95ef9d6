"""`wizard-runner serve`: the root daemon that runs the requests confd drops into the spool."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO, cast

import watchfiles
from structlog.typing import FilteringBoundLogger

from wizard_runner import collector
from wizard_runner.config import parse_config
from wizard_runner.defaults import DEFAULT_TIMEOUT
from wizard_runner.errors import (
    EXIT_IO,
    EXIT_SOFTWARE,
    EXIT_SPOOL_CLOSED,
    ConfigError,
    LockedError,
    ResultNotStoredError,
    RunInterrupted,
    RunnerIOError,
    WizardRunnerError,
    exit_for_signal,
)
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout
from wizard_runner.presence import PresenceLock
from wizard_runner.result import RunResult, RunStatus, now
from wizard_runner.runner import RunOptions, execute
from wizard_runner.runuser import RunUser
from wizard_runner.signals import (
    install_stop_handlers,
    pending_stop,
    request_stop,
    settle_stops,
)
from wizard_runner.spool import (
    CLOSING,
    REQUEST_ID,
    RequestRejectedError,
    Spool,
    SpoolError,
    close_spool,
    closed_marker,
    discard,
    keep_answer,
    prepare,
    prune_done,
    read_answer,
    read_request,
    remove_stale_temps,
    spool_closed,
    write_result,
)
from wizard_runner.state import read_last_result

#: Group changes over at most this long, and stop waiting for more after STEP of quiet (ms).
DEBOUNCE_MS: Final = 20
STEP_MS: Final = 5
#: Wake up this often even without events, to check the stop flag and catch missed events.
TICK_MS: Final = 1000
LOCK_RETRY: Final = 0.25
#: How often a wait looks whether the daemon is to stop.
STOP_LOOK: Final = 0.05
#: done/ is pruned at most this often (seconds): pruning reads the answers of a flood.
PRUNE_INTERVAL: Final = 60.0
INTERRUPTED: Final = ("the daemon stopped during this request (crash or kill): it may have "
                      "partly run, and was not run again: check the appliance, then resubmit it")
CLOSED: Final = ("this appliance is already configured: an admin reruns the wizard with "
                 "`wizard-runner run`")


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


class StopFlag:
    """The daemon's stop, set by its signal handler. Not a threading.Event: setting one takes
    its lock, which the main thread may hold in a wait at the moment the signal lands."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Stop (from the handler, or from another thread)."""
        self._set = True

    def is_set(self) -> bool:
        """Whether the daemon is to stop (watchfiles asks this too)."""
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, less once set; whether it is set."""
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, STOP_LOOK))
        return self._set


@dataclass
class DaemonSettings:
    """What the daemon decides for every request (a request cannot)."""

    layout: Layout
    user: RunUser
    timeout: float | None = DEFAULT_TIMEOUT
    stream: TextIO | None = None
    json_logs: bool | None = None
    journal: bool = False
    stop: StopFlag = field(default_factory=StopFlag)


@dataclass(frozen=True)
class _Request:
    """A claimed request: what every answer to it carries."""

    request_id: str
    claimed: Path
    received: str | None
    submitted_by: int | None  # the uid that owned the request file

    def answer(self, status: str, exit_code: int, *, reason: str | None = None,
               result: dict[str, Any] | None = None,
               problems: list[str] | None = None) -> dict[str, Any]:
        """The answer stored as done/<id>.json."""
        return {
            "request_id": self.request_id,
            "status": status,
            "exit_code": exit_code,
            "reason": reason,
            "problems": problems or [],
            "submitted_by": self.submitted_by,
            "received_at": self.received,
            "finished_at": now().isoformat(timespec="milliseconds"),
            "result": result,
        }


def _owner(path: Path) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def _describe(error: OSError) -> str:
    """`path: reason` for an OSError, as an admin reads it."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


class Daemon:
    """Serves the spool: one request at a time, each run as `wizard-runner run` would, each
    answered exactly once."""

    def __init__(self, settings: DaemonSettings, log: FilteringBoundLogger) -> None:
        self.settings = settings
        self.spool = Spool.of(settings.layout)
        self.log = log
        #: Answers that could not be written yet (a full disk), retried on every pass; their
        #: requests stay in processing/ meanwhile.
        self.unanswered: dict[str, tuple[_Request, dict[str, Any]]] = {}
        #: A successful run whose closing of the spool could not be written yet.
        self.closing: tuple[str, str] | None = None
        #: What of these is kept under /run (which may be full too: retried on every pass).
        self.kept: set[str] = set()
        self._next_prune = 0.0

    # --- life cycle ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Prepare, recover, serve what waits, then watch incoming/ until told to stop."""
        layout = self.settings.layout
        # Root-only: whoever can open a file can flock() it, and would keep the daemon out.
        with RunLock(layout.run_dir / "daemon.lock", "wizard-runner serve", mode=0o600):
            prepare(self.spool, self.settings.user.gid)
            presence = self._announce()
            try:
                self.recover()
                self._prune()
                sd_notify("READY=1\nSTATUS=waiting for requests")
                self.log.info("daemon_ready", spool=str(self.spool.base), pid=os.getpid())
                with contextlib.suppress(RunInterrupted):
                    self.serve_pending()
                    while not self.settings.stop.is_set():
                        self._watch()
                self.retry_unanswered()
            finally:
                presence.release()
            sd_notify("STOPPING=1")
            self.log.info("daemon_stopped", unanswered=sorted(self.unanswered))

    def _announce(self) -> PresenceLock:
        """Take the lock that tells waiting clients a daemon serves the spool."""
        presence = PresenceLock(self.spool.presence)
        try:
            presence.acquire()
        except OSError as error:
            raise RunnerIOError(f"{self.spool.presence}: cannot announce the daemon: "
                                f"{error.strerror}") from error
        return presence

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
        """Answer what a previous daemon left in processing/, never running it again.

        An existing answer is kept as it is. Otherwise last-run.json tells a request whose
        run ended (the daemon died before answering: that run's result is the answer) from
        one stopped before or during its run (answered `interrupted`); but an answer, or a
        closing of the spool, the daemon could not write before it stopped (a full /var) is
        given as it was kept.
        """
        closing = self._read_kept(CLOSING) or {}
        request_id, run_id = closing.get("request_id"), closing.get("run_id")
        if isinstance(request_id, str) and isinstance(run_id, str):
            self._close(request_id, run_id)
        for name in sorted(os.listdir(self.spool.processing)):
            request_id = name.removesuffix(".json")
            path = self.spool.processing / name
            if not name.endswith(".json") or not REQUEST_ID.fullmatch(request_id):
                discard(self.spool, path)
                continue
            if os.path.lexists(self.spool.result_path(request_id)):
                self.log.info("request_already_answered", request_id=request_id)
                discard(self.spool, path)
                self._drop_kept(request_id)
                continue
            request = _Request(request_id, path, None, _owner(path))
            kept = self._read_kept(request_id)
            if kept is not None:
                self.log.warning("request_recovered", request_id=request_id,
                                 status=kept.get("status"),
                                 kept=str(self.spool.kept_path(request_id)))
            self._finish(request, kept if kept is not None else self._recovered(request))

    def _recovered(self, request: _Request) -> dict[str, Any]:
        """The answer to a request found in processing/ at start."""
        try:
            last = read_last_result(self.settings.layout)
        except WizardRunnerError as error:
            self.log.warning("last_run_unreadable", error=str(error))
            last = None
        if last is not None and last.request_id == request.request_id:
            self.log.warning("request_recovered", request_id=request.request_id,
                             status=last.status.value)
            if last.status is RunStatus.SUCCEEDED:
                self._close(request.request_id, last.run_id)
            return request.answer(last.status.value, last.exit_code, result=last.to_dict(),
                                  reason=last.error)
        self.log.warning("request_interrupted", request_id=request.request_id)
        return request.answer("interrupted", exit_for_signal(signal.SIGTERM), reason=INTERRUPTED)

    # --- requests -----------------------------------------------------------------------------

    def serve_pending(self) -> None:
        """Retry the answers not written yet, then run every complete request waiting in
        incoming/, oldest first."""
        self.retry_unanswered()
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
                continue  # still being written, or being withdrawn, by its submitter
            try:
                self.serve_one(name)
            except Exception as error:  # before the claim: one bad entry must never stop us
                self.log.exception("request_crashed", name=name, error=repr(error))
        self._prune()

    def serve_one(self, name: str) -> None:
        """Claim one request by renaming it into processing/, run it, answer it."""
        request_id = name.removesuffix(".json")
        source = self.spool.incoming / name
        if not name.endswith(".json") or not REQUEST_ID.fullmatch(request_id):
            self.log.warning("request_name_rejected", name=name)
            discard(self.spool, source)
            return
        claimed = self.spool.processing / name
        if self._taken(request_id):
            # Its id already has (or is getting) an answer: answering this one would replace
            # it, and a rename into processing/ would replace the request being answered.
            self.log.warning("request_id_taken", request_id=request_id)
            discard(self.spool, source)
            return
        try:
            os.rename(source, claimed)
        except FileNotFoundError:
            return  # taken by another daemon, or withdrawn
        request = _Request(request_id, claimed, now().isoformat(timespec="milliseconds"),
                           _owner(claimed))
        log = self.log.bind(request_id=request_id)
        log.info("request_claimed", submitted_by=request.submitted_by)
        try:
            record = self._serve_claimed(request, log)
            if record is None:  # stopped before its run could begin: the next daemon's
                record = self._unclaim(request, source, log)
                if record is None:
                    return
        except RunInterrupted as stop:
            # Stopped outside the run itself (waiting for the lock, opening the log): the
            # request still gets its answer before the daemon exits.
            self._finish(request, request.answer(
                "interrupted", stop.exit_code,
                reason=f"the daemon was {stop} before the request could finish"))
            raise
        self._finish(request, record)
        log.info("request_done", status=record["status"], exit_code=record["exit_code"])

    def _unclaim(self, request: _Request, source: Path, log: FilteringBoundLogger
                 ) -> dict[str, Any] | None:
        """Put back into incoming/ a claimed request that did not begin to run (the daemon was
        stopped while a run held the lock: a package upgrade waits for it so): the next daemon
        serves it. Where it cannot go back, its answer says it was not run."""
        try:
            os.rename(request.claimed, source)
        except OSError as error:
            log.warning("request_not_returned", error=_describe(error))
            return request.answer("interrupted", exit_for_signal(signal.SIGTERM),
                                  reason="the daemon was stopped before the request could run")
        log.info("request_returned", reason="the daemon stopped before its run could begin: "
                 "the next daemon serves it")
        return None

    def _taken(self, request_id: str) -> bool:
        return (request_id in self.unanswered
                or os.path.lexists(self.spool.processing / f"{request_id}.json")
                or os.path.lexists(self.spool.result_path(request_id)))

    def _serve_claimed(self, request: _Request, log: FilteringBoundLogger
                       ) -> dict[str, Any] | None:
        """The answer to a claimed request, whatever happens while serving it; None when the
        daemon stopped before its run could begin."""
        try:
            return self._run(request, log)
        except WizardRunnerError as error:
            log.error("request_failed", error=str(error), exit_code=error.exit_code)
            return request.answer("failed", error.exit_code, reason=str(error))
        except OSError as error:  # the runner's own files: a full disk, a read-only /var
            log.error("request_failed", error=_describe(error), exit_code=EXIT_IO)
            return request.answer("failed", EXIT_IO,
                                  reason=f"the request could not be served: {_describe(error)}")
        except Exception as error:
            log.exception("request_crashed", error=repr(error))
            return request.answer(
                "failed", EXIT_SOFTWARE,
                reason=f"internal error while serving the request ({type(error).__name__}: "
                f"{error}); the daemon's log has the details")

    def _finish(self, request: _Request, record: dict[str, Any]) -> bool:
        """Store the answer, then drop the request from processing/. An answer that cannot be
        written is kept to retry, its request left in processing/; False then."""
        request_id = request.request_id
        first = request_id not in self.unanswered
        try:
            self._answer(request_id, record)
        except OSError as error:
            self.unanswered[request_id] = (request, record)
            if first:  # then on every pass, silently, until it is written
                self.log.error("answer_not_written", request_id=request_id,
                               path=str(self.spool.result_path(request_id)),
                               error=_describe(error), status=record["status"])
            self._keep(request_id, record)
            return False
        except Exception as error:  # an answer that cannot be encoded: a bug, say that much
            self.log.exception("answer_not_encoded", request_id=request_id, error=repr(error))
            return self._finish(request, request.answer(
                "failed", EXIT_SOFTWARE, reason="internal error: the answer could not be "
                "encoded; the daemon's log has the details"))
        if not first:
            self.log.info("answer_written", request_id=request_id, status=record["status"])
        self.unanswered.pop(request_id, None)
        discard(self.spool, request.claimed)
        self._drop_kept(request_id)
        return True

    def retry_unanswered(self) -> None:
        """Write the answers (and the closing of the spool) that could not be written before."""
        if self.closing is not None:
            self._close(*self.closing)
        for request, record in list(self.unanswered.values()):
            self._finish(request, record)

    def _answer(self, request_id: str, record: dict[str, Any]) -> None:
        """Store a request's answer, recreating done/ if an admin removed it meanwhile."""
        try:
            write_result(self.spool, request_id, record, self.settings.user.gid)
        except FileNotFoundError:
            prepare(self.spool, self.settings.user.gid)
            write_result(self.spool, request_id, record, self.settings.user.gid)

    def _closed(self) -> bool:
        return self.closing is not None or spool_closed(self.settings.layout)

    def _close(self, request_id: str, run_id: str) -> None:
        """Close the spool after a successful run; retried on every pass until written."""
        try:
            close_spool(self.settings.layout, request_id, run_id)
        except (OSError, WizardRunnerError) as error:
            if self.closing is None:
                self.log.error("spool_not_closed", request_id=request_id, error=str(error),
                               marker=str(closed_marker(self.settings.layout)))
            self._keep(CLOSING, {"request_id": request_id, "run_id": run_id})
            self.closing = (request_id, run_id)
            return
        self.closing = None
        self._drop_kept(CLOSING)
        self.log.info("spool_closed", request_id=request_id,
                      marker=str(closed_marker(self.settings.layout)))

    def _keep(self, name: str, record: dict[str, Any]) -> None:
        """Keep `record` under /run until it is written, readable by whoever may read the
        answer: a submitter waits on it too. /run may be full too: tried again on each call
        until kept."""
        if name not in self.kept:
            with contextlib.suppress(OSError):
                keep_answer(self.spool, name, record, self.settings.user.gid)
                self.kept.add(name)

    def _read_kept(self, name: str) -> dict[str, Any] | None:
        try:
            return read_answer(self.spool.kept_path(name))
        except SpoolError as error:  # damaged: the stored result decides, as without it
            self.log.warning("kept_answer_unreadable", error=str(error))
            return None

    def _drop_kept(self, name: str) -> None:
        self.kept.discard(name)
        with contextlib.suppress(OSError):
            self.spool.kept_path(name).unlink()

    def _prune(self) -> None:
        if time.monotonic() >= self._next_prune:
            prune_done(self.spool)
            self._next_prune = time.monotonic() + PRUNE_INTERVAL

    def _run(self, request: _Request, log: FilteringBoundLogger) -> dict[str, Any] | None:
        if self._closed():
            log.warning("request_rejected", reason="spool closed")
            return request.answer("rejected", EXIT_SPOOL_CLOSED, reason=CLOSED)
        try:
            found = read_request(request.claimed, {0, self.settings.user.uid})
        except RequestRejectedError as rejected:
            log.warning("request_rejected", reason=str(rejected))
            return request.answer("rejected", rejected.exit_code, reason=str(rejected))
        try:
            config = parse_config(found.data, "request")
        except ConfigError as invalid:
            log.warning("request_rejected", reason="invalid config", problems=invalid.problems)
            if found.owner != self.settings.user.uid:
                # A root-owned file moved in by the submitter: never echo its values back.
                return request.answer("rejected", invalid.exit_code,
                                      reason=f"invalid config ({len(invalid.problems)} "
                                      "problems; the daemon's log has them)")
            return request.answer("rejected", invalid.exit_code, reason=str(invalid),
                                  problems=list(invalid.problems))
        options = RunOptions(
            root=self.settings.layout.root, user=self.settings.user.name,
            timeout=self.settings.timeout, request_id=request.request_id,
        )
        waited = False
        while True:
            try:
                result = execute(config, options, stream=self.settings.stream,
                                 json_logs=self.settings.json_logs,
                                 journal=self.settings.journal)
            except LockedError as locked:
                # A manual run holds the lock: wait for it, the request stays claimed.
                if not waited:  # once: an admin sees why requests wait (a run stopped, say)
                    log.warning("request_waits_for_lock", reason=str(locked))
                    waited = True
                if self.settings.stop.wait(LOCK_RETRY):
                    return None  # not begun: it goes back for the next daemon
                continue
            except ResultNotStoredError as unstored:  # it ran all the same: answered with
                result = cast("RunResult", unstored.result)  # what it did
                answer = request.answer("failed", unstored.exit_code, reason=str(unstored),
                                        result=result.to_dict())
            else:
                answer = request.answer(result.status.value, result.exit_code,
                                        reason=result.error, result=result.to_dict())
            if result.status is RunStatus.SUCCEEDED:
                # Before the answer is stored: a crash in between is recovered from
                # last-run.json, which closes the spool again, so a success is never followed
                # by a second run.
                self._close(request.request_id, result.run_id)
            return answer


def install_daemon_signals(stop: StopFlag) -> None:
    """SIGTERM/SIGINT/SIGHUP set the stop flag, and stop the run under way (its tree is
    stopped and its result says interrupted) or keep the next one from starting. A stop
    that came as the daemon started sets the flag at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        request_stop(signum)

    handle.defers_stops = True  # type: ignore[attr-defined]
    install_stop_handlers(handle)  # keeps a stop recorded by the console script's handlers
    if pending_stop() is not None:
        stop.set()


def serve(settings: DaemonSettings, log: FilteringBoundLogger) -> None:
    """Run the daemon until SIGTERM, SIGINT or SIGHUP."""
    collector.resume()  # a daemon lives long
    daemon = Daemon(settings, log)
    install_daemon_signals(settings.stop)
    started = time.monotonic()
    daemon.serve()
    settle_stops()  # acted on: the daemon stopped
    log.info("daemon_exit", uptime_s=round(time.monotonic() - started, 1))
