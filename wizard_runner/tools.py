"""Running the system's own tools: found on the sbin PATH, clean environment, bounded time."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from wizard_runner.errors import ApplyError

TOOL_TIMEOUT: Final = 30.0
#: The PATH child processes get: admin tools live in sbin, which a non-login PATH may lack.
SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_ENV: Final = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8"}
#: How much of each of a tool's streams is kept: its messages are short.
MAX_OUTPUT: Final = 64 * 1024


def find_tool(name: str) -> str | None:
    """The absolute path of an installed tool, looked up on the system PATH, or None."""
    return shutil.which(name, path=SYSTEM_PATH)


@dataclass(frozen=True)
class ToolOutput:
    """A finished tool: exit status and both streams as text."""

    returncode: int
    stdout: str
    stderr: str


def _read_back(fd: int) -> str:
    """What a tool wrote to a memory file, as text (its first MAX_OUTPUT bytes)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, MAX_OUTPUT).decode("utf-8", "backslashreplace")


def run_tool(argv: Sequence[str], *, timeout: float = TOOL_TIMEOUT) -> ToolOutput:
    """Run a tool with a clean environment, no stdin and a timeout; never hang. Its output
    goes to memory files, not pipes: the tool's end is its exit, even when a daemon it started
    (an if-up.d hook) keeps its stdout open."""
    fds: list[int] = []
    try:
        fds += [os.memfd_create("tool-stdout", os.MFD_CLOEXEC),
                os.memfd_create("tool-stderr", os.MFD_CLOEXEC)]
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[1],
                              env=TOOL_ENV, timeout=timeout, check=False, cwd="/")
        return ToolOutput(done.returncode, _read_back(fds[0]), _read_back(fds[1]))
    except subprocess.TimeoutExpired as error:
        raise ApplyError(f"{argv[0]} did not finish within {timeout:.0f} s") from error
    except OSError as error:  # it cannot start, or no descriptor is left for its output
        raise ApplyError(f"{argv[0]}: cannot run: {error.strerror}") from error
    finally:
        for fd in fds:
            os.close(fd)
