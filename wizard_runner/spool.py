"""The request spool xivo-confd (www-data) drops wizard bodies into and the daemon serves.

    <root>/var/spool/wizard-runner/
        incoming/     1730 root:<run group>  confd creates requests; cannot read or remove others'
        processing/   0700 root              requests claimed (by a rename) and not answered yet
        done/         0750 root:<run group>  one answer per request, 0640, readable by confd
        serving.lock  0644 root              locked while a daemon serves (see presence.py)
        restarting    0644 root              while a package upgrade restarts the daemon

A request is the wizard body itself: it cannot choose paths, the root, the user, the timeout or
the scripts directory; those belong to the daemon. Once a request's run has succeeded the
spool is closed (`<root>/var/lib/wizard-runner/spool-closed`) until root reopens it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from wizard_runner import collector
from wizard_runner.config import parse_config
from wizard_runner.defaults import DAEMON_GRACE_SECONDS, MAX_CONFIG_BYTES, MAX_RESULT_BYTES
from wizard_runner.errors import (
    EXIT_CONFIG,
    EXIT_PRIVILEGES,
    EXIT_UNAVAILABLE,
    PrivilegeError,
    RunInterrupted,
    RunnerIOError,
    WizardRunnerError,
    exit_for_signal,
)
from wizard_runner.fsio import (
    Ownership,
    atomic_replace,
    ensure_dir,
    prepare_dir,
    read_regular,
    write_all,
)
from wizard_runner.layout import STATE_DIR_MODE, Layout
from wizard_runner.presence import daemon_present, stopped_daemon
from wizard_runner.result import now
from wizard_runner.signals import (
    deferred_stop_signals,
    ignored_stop_signals,
    interruptible,
    stop_here,
)

REQUEST_ID: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
#: The name the daemon keeps a closing of the spool under (beside the answers it keeps): never
#: a request id, which starts with a letter or a digit.
CLOSING: Final = "_closing"
#: The hidden name a submitter writes a request under before renaming it into place.
TEMP_NAME: Final = re.compile(r"\.[0-9A-Za-z][0-9A-Za-z-]{0,63}\.tmp")
STALE_TEMP_SECONDS: Final = 3600
#: Answers older than this go, whoever they are for.
RETENTION_DAYS: Final = 30
#: Each submitter's latest answers kept however old (within RETENTION_DAYS) ...
RETENTION_PER_SUBMITTER: Final = 100
#: ... and no answer younger than this is removed by count: a flood cannot evict an answer
#: its submitter has not had the time to read.
RETENTION_SAFE_SECONDS: Final = 3600
#: How often a waiting client asks whether a daemon serves.
PRESENCE_CHECK_SECONDS: Final = 1.0
#: How long a `restarting` mark (a package upgrade) keeps waiters waiting for the daemon: an
#: upgrade that failed between its maintainer scripts leaves it behind.
RESTART_GRACE_SECONDS: Final = 300.0
#: How often a waiting client looks for its answer.
ANSWER_POLL_SECONDS: Final = 0.02
CLOSED_MARKER: Final = "spool-closed"


class SpoolError(WizardRunnerError):
    """The spool is missing or unusable (is the daemon installed and started?)."""

    exit_code = EXIT_UNAVAILABLE


class RequestRejectedError(Exception):
    """A request the daemon will not run; the message says why, `exit_code` classifies it."""

    def __init__(self, reason: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


class NotAnsweredError(SpoolError):
    """A submitter stopped waiting before the answer came. `status` says what became of the
    request: `withdrawn` (taken back from incoming/, nothing was run), `claimed` (the daemon
    has it: its answer will be in `answer`) or `not_submitted` (stopped before it was)."""

    def __init__(self, message: str, *, request_id: str | None, status: str,
                 answer: Path | None, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.status = status
        self.answer = answer
        self.exit_code = exit_code

    @property
    def withdrawn(self) -> bool:
        """True when nothing was or will be run for this request."""
        return self.status != "claimed"

    def to_dict(self) -> dict[str, Any]:
        """The record `submit --json` prints, shaped like the daemon's answers."""
        return {
            "request_id": self.request_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "reason": str(self),
            "problems": [],
            "answer": None if self.answer is None else str(self.answer),
            "result": None,
        }


class NoDaemonError(NotAnsweredError):
    """No daemon has served the spool for DAEMON_GRACE_SECONDS while a submitter waited."""


class AnswerTimeoutError(NotAnsweredError):
    """The answer did not come within the submitter's timeout."""


class SubmitInterruptedError(NotAnsweredError):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) reached the submitter; exit code 128 + it."""


@dataclass(frozen=True)
class Spool:
    """The spool's directories under a layout's root, and where the daemon keeps what it
    cannot write there yet."""

    base: Path
    #: Under /run: another file system than a full /var.
    unwritten: Path

    @classmethod
    def of(cls, layout: Layout) -> Spool:
        """The spool of `layout`."""
        return cls(layout.spool_dir, layout.run_dir / "unwritten")

    @property
    def incoming(self) -> Path:
        """Where requests are dropped."""
        return self.base / "incoming"

    @property
    def processing(self) -> Path:
        """Where the request being run sits."""
        return self.base / "processing"

    @property
    def done(self) -> Path:
        """Where results are."""
        return self.base / "done"

    @property
    def presence(self) -> Path:
        """The file a serving daemon holds a lock on."""
        return self.base / "serving.lock"

    @property
    def restarting(self) -> Path:
        """The mark the package's preinst leaves while an upgrade restarts the daemon."""
        return self.base / "restarting"

    def result_path(self, request_id: str) -> Path:
        """The answer file of one request."""
        return self.done / f"{request_id}.json"

    def request_path(self, request_id: str) -> Path:
        """Where a request waits for the daemon."""
        return self.incoming / f"{request_id}.json"

    def kept_path(self, name: str) -> Path:
        """Where the daemon keeps an answer (or the closing of the spool) it cannot write yet
        (a full /var), until it can."""
        return self.unwritten / f"{name}.json"


def new_request_id() -> str:
    """A sortable, unique request id such as `20261125T145428Z-3f9a1c2b4d5e`."""
    return f"{now().strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(6)}"


def prepare(spool: Spool, group: int) -> None:
    """Create the spool with its documented modes (and fix them if they drifted)."""
    layout = (
        (spool.base, 0o755, 0),
        (spool.incoming, 0o1730, group),
        (spool.processing, 0o700, 0),
        (spool.done, 0o750, group),
    )
    for path, mode, gid in layout:
        prepare_dir(path, mode, gid)


def _drop(spool: Spool, request_id: str, body: bytes) -> None:
    """Write the request under a hidden name, then rename it into place."""
    temp = spool.incoming / f".{request_id}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, spool.request_path(request_id))
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise SpoolError(f"{spool.incoming}: cannot submit: {error.strerror}") from error


def submit(spool: Spool, body: bytes) -> str:
    """Validate `body`, then drop it into incoming/ atomically; return the request id.

    Stop signals are held back during the drop; one that came meanwhile withdraws the request
    and raises SubmitInterruptedError, so a stopped submitter leaves nothing queued.
    """
    parse_config(body, "request")
    if not spool.incoming.is_dir():
        raise SpoolError(f"{spool.incoming} does not exist: is wizard-runnerd installed and "
                         "started?")
    request_id = new_request_id()
    dropped: str | None = None
    try:
        with deferred_stop_signals():
            stop_here()  # one that came while the body was checked: nothing is queued
            _drop(spool, request_id, body)
            dropped = request_id
    except (KeyboardInterrupt, RunInterrupted) as stop:
        raise _interrupted(spool, dropped, stop) from stop
    return request_id


def submit_and_wait(spool: Spool, body: bytes, timeout: float | None,
                    grace: float | None = None) -> dict[str, Any]:
    """Submit `body` and wait for its answer, as `wait_result` does; a stop signal at any point
    withdraws the request if the daemon has not claimed it (SubmitInterruptedError)."""
    request_id: str | None = None
    try:
        # Held back until the id is known: a stop is then always answered by a withdrawal.
        with deferred_stop_signals():
            request_id = submit(spool, body)
        return _wait(spool, request_id, timeout, grace)
    except BaseException as error:
        _wait_ended(spool, request_id, error)


def wait_result(spool: Spool, request_id: str, timeout: float | None,
                grace: float | None = None) -> dict[str, Any]:
    """Wait for a request's answer and return it.

    Gives up, withdrawing the request if the daemon has not claimed it yet, when `timeout`
    seconds pass (AnswerTimeoutError), when no daemon has served the spool for `grace` seconds
    (NoDaemonError; `grace` defaults to DAEMON_GRACE_SECONDS; a package upgrade restarting the
    daemon counts as serving it: see `restarting`), or on a stop signal
    (SubmitInterruptedError); all are SpoolErrors whose message says whether the request was
    withdrawn or where its answer will be.
    """
    try:
        return _wait(spool, request_id, timeout, grace)
    except BaseException as error:
        _wait_ended(spool, request_id, error)


def _wait_ended(spool: Spool, request_id: str | None, error: BaseException) -> NoReturn:
    """A wait ended without an answer: the request is withdrawn if the daemon has not claimed
    it; a stop signal is raised as SubmitInterruptedError, anything else (an application's
    own handler raising SystemExit, say) as it is, and nothing runs behind its back."""
    if isinstance(error, KeyboardInterrupt | RunInterrupted):
        raise _interrupted(spool, request_id, error) from error
    if request_id is not None and not isinstance(error, NotAnsweredError):
        with contextlib.suppress(OSError):
            withdraw(spool, request_id)
    raise error


def _wait(spool: Spool, request_id: str, timeout: float | None,
          grace: float | None) -> dict[str, Any]:
    collector.resume()  # the answer may be long in coming
    grace = DAEMON_GRACE_SECONDS if grace is None else grace
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    seen = next_check = started  # the grace runs from the start: a daemon never seen is gone
    while True:
        answer = find_answer(spool, request_id)
        if answer is not None:
            return answer
        current = time.monotonic()
        if deadline is not None and current >= deadline:
            return _give_up(spool, request_id, AnswerTimeoutError,
                            f"no answer to request {request_id} within {timeout:g} s")
        if current >= next_check:
            next_check = current + PRESENCE_CHECK_SECONDS
            if daemon_present(spool.presence) or _restarting(spool):
                seen = current
            elif current - seen >= grace:
                stopped = stopped_daemon(spool.presence)
                return _give_up(spool, request_id, NoDaemonError, (
                    f"no daemon is serving {spool.base}" if stopped is None else
                    f"the daemon serving {spool.base} is stopped (pid {stopped}: "
                    f"`kill -CONT {stopped}` lets it go on)"))
        with interruptible():
            time.sleep(ANSWER_POLL_SECONDS)


def _restarting(spool: Spool) -> bool:
    """Whether a package upgrade is restarting the daemon (its mark is a regular file, made
    in the last RESTART_GRACE_SECONDS): the daemon is coming back."""
    try:
        mark = os.lstat(spool.restarting)
    except OSError:
        return False
    return stat.S_ISREG(mark.st_mode) and \
        abs(time.time() - mark.st_mtime) < RESTART_GRACE_SECONDS


def find_answer(spool: Spool, request_id: str) -> dict[str, Any] | None:
    """A request's answer: in done/, or as the daemon keeps it under /run while it cannot
    write it there (a full /var), or None while there is none."""
    answer = read_answer(spool.result_path(request_id))
    if answer is None:
        with contextlib.suppress(SpoolError):  # unreadable: the one in done/ will come
            answer = read_answer(spool.kept_path(request_id))
    return answer


def read_answer(path: Path) -> dict[str, Any] | None:
    """The answer stored at `path`, or None while there is none."""
    try:
        raw = read_regular(path, limit=MAX_RESULT_BYTES)[0]
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SpoolError(f"{path}: cannot read the answer: {error.strerror}") from error
    if len(raw) > MAX_RESULT_BYTES:
        raise SpoolError(f"{path}: not a valid answer: larger than {MAX_RESULT_BYTES >> 20} MiB")
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise SpoolError(f"{path}: not a valid answer: {error}") from error
    if not isinstance(data, dict):
        raise SpoolError(f"{path}: not a valid answer: not a JSON object")
    return data


def _give_up(spool: Spool, request_id: str, kind: type[NotAnsweredError],
             why: str) -> dict[str, Any]:
    """Withdraw the request, or return its answer if it came meanwhile, or say where it will
    be; raises `kind` unless the answer is there."""
    answer = spool.result_path(request_id)
    if withdraw(spool, request_id):
        hint = " (start wizard-runnerd)" if kind is NoDaemonError else ""
        raise kind(f"{why}: request {request_id} withdrawn, nothing was run{hint}",
                   request_id=request_id, status="withdrawn", answer=None)
    found = find_answer(spool, request_id)
    if found is not None:
        return found
    if kind is NoDaemonError:
        message = (f"{why}: request {request_id} was claimed before the daemon stopped: its "
                   f"answer will be in {answer} once a daemon serves again")
    else:
        message = f"{why}: request {request_id} {CLAIMED}: its answer will be in {answer}"
    raise kind(message, request_id=request_id, status="claimed", answer=answer)


#: What a claimed request is doing, as far as the submitter can know.
CLAIMED: Final = ("is claimed by the daemon (running, or waiting for a run already going on "
                  "to end)")


def stop_signal(stop: KeyboardInterrupt | RunInterrupted) -> int:
    """The signal a stop stands for (KeyboardInterrupt is Python's SIGINT)."""
    return stop.signum if isinstance(stop, RunInterrupted) else signal.SIGINT


def not_submitted(stop: KeyboardInterrupt | RunInterrupted) -> SubmitInterruptedError:
    """What a stop before the request was handed over becomes."""
    signum = stop_signal(stop)
    return SubmitInterruptedError(
        f"interrupted by {signal.Signals(signum).name} before the request was submitted: "
        "nothing was run", request_id=None, status="not_submitted", answer=None,
        exit_code=exit_for_signal(signum))


def _interrupted(spool: Spool, request_id: str | None,
                 stop: KeyboardInterrupt | RunInterrupted) -> SubmitInterruptedError:
    """What a stop signal while submitting or waiting becomes, after withdrawing the request."""
    if request_id is None:
        return not_submitted(stop)
    signum = stop_signal(stop)
    why = f"interrupted by {signal.Signals(signum).name}"
    code = exit_for_signal(signum)
    with ignored_stop_signals():  # a second Ctrl-C must not cut the withdrawal short
        withdrawn = withdraw(spool, request_id)
    if withdrawn:
        return SubmitInterruptedError(f"{why}: request {request_id} withdrawn, nothing was run",
                                      request_id=request_id, status="withdrawn", answer=None,
                                      exit_code=code)
    answer = spool.result_path(request_id)
    return SubmitInterruptedError(
        f"{why}: request {request_id} {CLAIMED}: its answer will be in {answer}",
        request_id=request_id, status="claimed", answer=answer, exit_code=code)


def withdraw(spool: Spool, request_id: str) -> bool:
    """Take back a request the daemon has not claimed; False when it has.

    The request is renamed to a hidden name first (the daemon never claims those, and clears
    them should this process die before the unlink), so that the daemon's claim and the
    withdrawal cannot both succeed: whichever rename comes second finds nothing.
    """
    source = spool.request_path(request_id)
    hidden = spool.incoming / f".{request_id}.withdrawn"
    try:
        os.rename(source, hidden)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise SpoolError(f"{source}: cannot withdraw the request: {error.strerror}") from error
    with contextlib.suppress(OSError):
        hidden.unlink()
    return True


def daemon_serving(spool: Spool) -> bool:
    """Whether a daemon serves the spool right now (asked without taking any lock)."""
    return daemon_present(spool.presence)


@dataclass(frozen=True)
class RequestFile:
    """A request's bytes and the uid that owned the file."""

    data: bytes
    owner: int


def read_request(path: Path, allowed_uids: set[int]) -> RequestFile:
    """Read a claimed request without trusting it: no links, no special files, no big files,
    no foreign owner."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RequestRejectedError("a symlink, not a request file") from error
        raise RequestRejectedError(f"cannot open: {error.strerror}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RequestRejectedError("not a regular file")
        if info.st_nlink != 1:
            # A hard link to a file the submitter does not own (a root config, say) must not
            # be read, nor its values echoed back in a rejection.
            raise RequestRejectedError("a hard link, not a request file")
        if info.st_uid not in allowed_uids:
            raise RequestRejectedError(f"owned by uid {info.st_uid}, not root or the run user",
                                       EXIT_PRIVILEGES)
        if info.st_size > MAX_CONFIG_BYTES:
            raise RequestRejectedError(f"larger than {MAX_CONFIG_BYTES} bytes")
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise RequestRejectedError(f"larger than {MAX_CONFIG_BYTES} bytes")
    return RequestFile(data, info.st_uid)


def write_result(spool: Spool, request_id: str, record: dict[str, Any], group: int) -> Path:
    """Store a request's result atomically (0640, readable by the run user's group)."""
    path = spool.result_path(request_id)
    _store_answer(path, record, group)
    return path


def keep_answer(spool: Spool, name: str, record: dict[str, Any], group: int) -> None:
    """Keep an answer (or the closing of the spool) under /run, stored as an answer is, until
    the daemon can write it to /var."""
    prepare_dir(spool.unwritten, 0o750, group)
    _store_answer(spool.kept_path(name), record, group)


def _store_answer(path: Path, record: dict[str, Any], group: int) -> None:
    """0640, readable by the run user's group (root's own when not run as root)."""
    owner = Ownership(0o640, os.geteuid(), group if os.geteuid() == 0 else os.getegid())
    atomic_replace(path, (json.dumps(record, indent=2) + "\n").encode(), owner)


def discard(spool: Spool, path: Path) -> None:
    """Remove a request, whatever a submitter made it (a file, a link, a directory tree).

    A tree too deep or too odd to remove is moved into quarantine/ (0700) instead: the
    daemon must never stop serving over what a submitter built.
    """
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return
    except (OSError, RecursionError):
        quarantine = spool.base / "quarantine"
        with contextlib.suppress(OSError):
            quarantine.mkdir(mode=0o700, exist_ok=True)
            os.rename(path, quarantine / f"{secrets.token_hex(8)}")


def pending(spool: Spool) -> Iterator[str]:
    """Names in incoming/, oldest first by name (ids start with their time)."""
    try:
        names = sorted(os.listdir(spool.incoming))
    except FileNotFoundError:
        return
    yield from names


def remove_stale_temps(spool: Spool, older_than: float = STALE_TEMP_SECONDS) -> None:
    """Remove hidden entries that are not a submitter's temp file at once, and temp files a
    submitter never renamed (it died mid-write) after `older_than` seconds."""
    limit = time.time() - older_than
    for name in pending(spool):
        if not name.startswith("."):
            continue
        path = spool.incoming / name
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not TEMP_NAME.fullmatch(name) or not stat.S_ISREG(info.st_mode) or (
            info.st_mtime < limit
        ):
            discard(spool, path)


def _submitter(path: str) -> int | None:
    """The uid an answer was submitted by (None for an answer that does not say)."""
    try:
        data = json.loads(read_regular(path, limit=MAX_RESULT_BYTES)[0])
    except (OSError, ValueError):  # too big: cut short, not JSON
        return None
    owner = data.get("submitted_by") if isinstance(data, dict) else None
    return owner if isinstance(owner, int) else None


def prune_done(spool: Spool, days: float = RETENTION_DAYS,
               per_submitter: int = RETENTION_PER_SUBMITTER,
               safe_age: float = RETENTION_SAFE_SECONDS) -> int:
    """Remove answers older than `days`; of the others, keep each submitter's latest
    `per_submitter`, and never remove by count one younger than `safe_age` seconds. Hidden
    files (an interrupted write's temp) go after `safe_age`. Return how many were removed."""
    try:
        with os.scandir(spool.done) as listing:
            entries = [(entry.stat(follow_symlinks=False).st_mtime, entry) for entry in listing
                       if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    entries.sort(key=lambda item: item[0], reverse=True)  # newest first
    current = time.time()
    aged, young = current - days * 86400, current - safe_age
    doomed = [entry for mtime, entry in entries if mtime < aged
              or (entry.name.startswith(".") and mtime < young)]
    kept = [(mtime, entry) for mtime, entry in entries
            if mtime >= aged and not entry.name.startswith(".")]
    if len(kept) > per_submitter:  # only then can one submitter have too many
        counts: dict[int | None, int] = {}
        for mtime, entry in kept:
            owner = _submitter(entry.path)
            counts[owner] = counts.get(owner, 0) + 1
            if counts[owner] > per_submitter and mtime < young:
                doomed.append(entry)
    for entry in doomed:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
    return len(doomed)


def closed_marker(layout: Layout) -> Path:
    """The root-owned file that says the spool is closed (the appliance is configured)."""
    return layout.state_dir / CLOSED_MARKER


def spool_closed(layout: Layout) -> bool:
    """Whether a request's run has succeeded and no admin has reopened the spool since."""
    return os.path.lexists(closed_marker(layout))


def close_spool(layout: Layout, request_id: str, run_id: str) -> None:
    """Record that the appliance is configured: from now on requests are rejected (OSError
    when it cannot be written)."""
    ensure_dir(layout.state_dir, STATE_DIR_MODE)
    data = {"closed_at": now().isoformat(timespec="seconds"), "request_id": request_id,
            "run_id": run_id}
    atomic_replace(closed_marker(layout), (json.dumps(data, indent=2) + "\n").encode(),
                   Ownership(0o644, os.geteuid(), os.getegid()))


def reopen_spool(layout: Layout) -> bool:
    """Let requests be run again; False when the spool was not closed. A closing the daemon
    keeps under /run, not yet written (a full /var), is not undone: RunnerIOError."""
    marker = closed_marker(layout)
    kept = Spool.of(layout).kept_path(CLOSING)
    if os.path.lexists(kept):
        raise RunnerIOError(f"{marker}: the daemon closed the spool after a successful run but "
                            f"cannot write this yet (is /var full? {kept} keeps it meanwhile): "
                            "free space, then reopen")
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    except PermissionError as error:
        raise PrivilegeError(f"{marker}: cannot reopen the spool: {error.strerror}") from error
    except OSError as error:  # a directory there, a read-only /var/lib
        raise RunnerIOError(f"{marker}: cannot reopen the spool: {error.strerror}") from error
    return True
