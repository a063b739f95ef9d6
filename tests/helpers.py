"""Shared test helpers that are not fixtures."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def www_data() -> tuple[int, int]:
    """The uid and gid of www-data on this machine."""
    entry = pwd.getpwnam("www-data")
    return entry.pw_uid, entry.pw_gid


def as_www_data(action: Callable[[], Any]) -> dict[str, Any]:
    """Call `action` in a forked child that became www-data (its uid and gid only): returns
    {"value": what it returned} (JSON-able) or {"error": "Type: message"} when it raised.

    A fork, not a new interpreter: www-data cannot execute a venv under /root, and the child
    must use the code under test as it is already loaded.
    """
    uid, gid = www_data()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                outcome: dict[str, Any] = {"value": action()}
            except BaseException as error:  # whatever it is, the parent reports it
                outcome = {"error": f"{type(error).__name__}: {error}"}
            os.write(write_end, json.dumps(outcome, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        chunks.append(reader.read())
    os.waitpid(pid, 0)
    found: dict[str, Any] = json.loads(b"".join(chunks) or b'{"error": "the child died"}')
    return found


@contextmanager
def traversable_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that every user can traverse (pytest's tmp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="wizard-runner-test-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
