"""The request spool xivo-confd (www-data) drops wizard bodies into and the daemon serves.

    <root>/var/spool/wizard-runner/
        incoming/    1730 root:<run group>  confd creates requests; cannot read or remove others'
        processing/  0700 root              the request being run (claimed by a rename)
        done/        0750 root:<run group>  one result per request, 0640, readable by confd

A request is the wizard body itself: it cannot choose paths, the root, the user, the timeout or
the scripts directory; those belong to the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from wizard_runner.config import parse_config
from wizard_runner.defaults import MAX_CONFIG_BYTES
from wizard_runner.errors import (
    EXIT_CONFIG,
    EXIT_PRIVILEGES,
    EXIT_UNAVAILABLE,
    WizardRunnerError,
)
from wizard_runner.fsio import Ownership, atomic_replace, write_all
from wizard_runner.layout import Layout
from wizard_runner.result import now

REQUEST_ID: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
#: The hidden name a submitter writes a request under before renaming it into place.
TEMP_NAME: Final = re.compile(r"\.[0-9A-Za-z][0-9A-Za-z-]{0,63}\.tmp")
STALE_TEMP_SECONDS: Final = 3600
RETENTION_DAYS: Final = 30
RETENTION_COUNT: Final = 1000


class SpoolError(WizardRunnerError):
    """The spool is missing or unusable (is the daemon installed and started?)."""

    exit_code = EXIT_UNAVAILABLE


class RequestRejectedError(Exception):
    """A request the daemon will not run; the message says why, `exit_code` classifies it."""

    def __init__(self, reason: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Spool:
    """The spool's directories under a layout's root."""

    base: Path

    @classmethod
    def of(cls, layout: Layout) -> Spool:
        """The spool of `layout`."""
        return cls(layout.spool_dir)

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

    def result_path(self, request_id: str) -> Path:
        """The result file of one request."""
        return self.done / f"{request_id}.json"


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
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, 0, gid)
        path.chmod(mode)


def submit(spool: Spool, body: bytes) -> str:
    """Validate `body`, then drop it into incoming/ atomically; return the request id."""
    parse_config(body, "request")
    if not spool.incoming.is_dir():
        raise SpoolError(f"{spool.incoming} does not exist: is wizard-runnerd installed and "
                         "started?")
    request_id = new_request_id()
    temp = spool.incoming / f".{request_id}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, spool.incoming / f"{request_id}.json")
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise SpoolError(f"{spool.incoming}: cannot submit: {error.strerror}") from error
    return request_id


def wait_result(spool: Spool, request_id: str, timeout: float | None) -> dict[str, Any]:
    """Wait for a request's result; SpoolError when it does not come in time."""
    path = spool.result_path(request_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        if deadline is not None and time.monotonic() >= deadline:
            raise SpoolError(f"no result for request {request_id} within {timeout:g} s "
                             f"({path} does not exist yet)")
        time.sleep(0.02)


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
    owner = Ownership(0o640, os.geteuid(), group if os.geteuid() == 0 else os.getegid())
    atomic_replace(path, (json.dumps(record, indent=2) + "\n").encode(), owner)
    return path


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


def prune_done(spool: Spool, days: float = RETENTION_DAYS, count: int = RETENTION_COUNT) -> int:
    """Remove results older than `days`, then the oldest beyond `count`; return how many."""
    try:
        with os.scandir(spool.done) as listing:
            entries = [(entry.stat().st_mtime, entry) for entry in listing
                       if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    entries.sort(key=lambda item: item[0])
    limit = time.time() - days * 86400
    doomed = [entry for mtime, entry in entries if mtime < limit]
    kept = [entry for mtime, entry in entries if mtime >= limit]
    doomed += kept[: max(len(kept) - count, 0)]
    for entry in doomed:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
    return len(doomed)
