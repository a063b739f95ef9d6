"""Running the system's own tools: found on the sbin PATH, clean environment, bounded time."""

from __future__ import annotations

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


def find_tool(name: str) -> str | None:
    """The absolute path of an installed tool, looked up on the system PATH, or None."""
    return shutil.which(name, path=SYSTEM_PATH)


@dataclass(frozen=True)
class ToolOutput:
    """A finished tool: exit status and both streams as text."""

    returncode: int
    stdout: str
    stderr: str


def run_tool(argv: Sequence[str], *, timeout: float = TOOL_TIMEOUT) -> ToolOutput:
    """Run a tool with a clean environment, no stdin and a timeout; never hang."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=TOOL_ENV,
            timeout=timeout,
            check=False,
            cwd="/",
        )
    except subprocess.TimeoutExpired as error:
        raise ApplyError(f"{argv[0]} did not finish within {timeout:.0f} s") from error
    except OSError as error:
        raise ApplyError(f"{argv[0]}: cannot run: {error.strerror}") from error
    decode = {"encoding": "utf-8", "errors": "backslashreplace"}
    return ToolOutput(
        done.returncode, done.stdout.decode(**decode), done.stderr.decode(**decode)
    )


