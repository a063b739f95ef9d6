"""The runner's side of the helper: start it in the step's containment, order one script at a
time with the pipes of its output, hear what it says, and tell how it ended when it breaks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Final, NamedTuple

from wizard_runner.procs import readable, signal_name
from wizard_runner.runuser import RunUser
from wizard_runner.scripts import helper
from wizard_runner.scripts.containment import Containment
from wizard_runner.scripts.helper import Kind

#: The scripts' output pipes (within fs.pipe-max-size, what an unprivileged user may ask for).
PIPE_SIZE: Final = 1024 * 1024
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)  # a plain int: see helper._CLOEXEC
#: What `Spawner.state` says of a helper a script stopped, or killed (then `by SIGNAL`).
STOPPED: Final = "was stopped"
KILLED: Final = "was killed"


class HelperError(Exception):
    """The helper failed: it could not start or switch user, it died, was stopped, or said
    something it should not have."""


class Exited(NamedTuple):
    """How a script ended: its wait status, when (the helper's CLOCK_MONOTONIC, which is the
    runner's time.monotonic()), and whether processes it started still ran."""

    status: int
    ended: float
    left: bool = False

    @property
    def returncode(self) -> int:
        """The exit code, or minus the signal that killed it."""
        return os.waitstatus_to_exitcode(self.status)


class Spawner:
    """The helper of one scripts step; `user` None: the scripts run as the runner."""

    def __init__(self, env: Mapping[str, str], user: RunUser | None, box: Containment,
                 python: str | None = None) -> None:
        self.env = dict(env)
        self.user = user
        self.box = box
        self.python = python if python is not None else sys.executable
        self.pid = 0
        self.pidfd = -1
        self.control, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._spare: list[tuple[int, int]] | None = None  # the next script's pipes, made ahead

    def start(self) -> None:
        """Launch the helper with the scripts' environment, put it in the containment."""
        if not self.python:
            self.close()
            raise HelperError("cannot start the script helper: no Python interpreter known "
                              "(sys.executable is empty)")
        argv = [self.python, "-I", "-S", helper.__file__, str(os.getpid())]
        if self.user is not None:
            groups = ",".join(str(group) for group in self.user.groups)
            argv += [str(self.user.uid), str(self.user.gid), groups]
        try:
            with self._theirs:
                self.pid = os.posix_spawn(
                    self.python, argv, self.env,
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_DUP2, self._theirs.fileno(), helper.CONTROL_FD),
                    ],
                    setsid=True,
                )
        except (OSError, ValueError) as error:  # ValueError: an environment it cannot pass
            self.control.close()
            why = (error.strerror if isinstance(error, OSError)
                   else f"the scripts' environment cannot be passed on ({error})")
            raise HelperError(f"the script helper {self.python} could not be started: "
                              f"{why}") from error
        self.pidfd = os.pidfd_open(self.pid)
        try:
            self.box.adopt(self.pid)
        except OSError as error:
            raise HelperError(f"cannot put the script helper in its {self.box.name}: "
                              f"{error.strerror}") from error

    def _pipes(self) -> list[tuple[int, int]]:
        """A script's stdout and stderr pipes, their write ends the run user's."""
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(2):
                pipes.append(os.pipe2(os.O_CLOEXEC))
                with contextlib.suppress(OSError):  # over the pipe budget: the default size
                    fcntl.fcntl(pipes[-1][1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                if self.user is not None:  # the script's own, as if it had made it:
                    os.fchown(pipes[-1][1], self.user.uid, self.user.gid)  # /dev/stdout
        except BaseException:
            _close(pipes)
            raise
        return pipes

    def prepare(self) -> None:
        """Make the next script's pipes while this one runs, off the path from one script's
        end to the next one's start (if they cannot be made, the order makes them)."""
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = self._pipes()

    def order(self, index: int, path: str) -> tuple[int, int]:
        """Tell the helper to start a script: the read ends of its stdout and stderr. What
        became of the order comes as a message; OSError when no pipe could be made."""
        pipes, self._spare = self._spare or self._pipes(), None
        try:
            message = helper.encode(Kind.RUN, (index,), os.fsencode(path))
            try:
                socket.send_fds(self.control, [message], [write for _, write in pipes])
            except OSError as error:
                raise self.failure(f"broke off ({error.strerror})") from error
        except BaseException:
            _close(pipes)
            raise
        _close(pipes, ends=(1,))  # the helper has its copies of the write ends
        return pipes[0][0], pipes[1][0]

    def _next(self, flags: int = 0) -> tuple[Kind, tuple[int, ...]]:
        """The next message's kind and numbers, without waiting (a descriptor it carries is
        closed); HelperError for the helper's ERROR."""
        data, fds = helper.receive(self.control, flags | _DONTWAIT)
        for fd in fds:
            os.close(fd)
        kind, numbers, text = helper.decode(data)
        if kind is Kind.ERROR:
            raise HelperError(f"the script helper failed: {text.decode(errors='replace')}")
        return kind, numbers

    def receive(self) -> tuple[Kind, tuple[int, ...]]:
        """One message from the helper, which has something to say (the socket is readable)."""
        try:
            return self._next()
        except (EOFError, OSError, helper.MalformedError) as error:
            raise self.failure(f"broke off ({str(error) or 'the connection closed'})") from error

    def state(self) -> str | None:
        """None while the helper runs; else what became of it: `was stopped`, `was killed by
        SIGKILL`, `exited with 70`, `is gone`."""
        if not self.pid:
            return None  # never started: what went wrong was said when it was started
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WSTOPPED | os.WNOHANG |
                             os.WNOWAIT)
        except ChildProcessError:
            return "is gone"
        if info is None:
            return None
        if info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED):
            return STOPPED
        if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return f"{KILLED} by {signal_name(info.si_status)}"
        return f"exited with {info.si_status}"

    def hit(self) -> bool:
        """Whether the helper has ended or stopped, or has SIGKILL or SIGSTOP on its way (the
        only signals it does not ignore): if so, what ran last did it."""
        if self.state() is not None:
            return True
        try:
            with open(f"/proc/{self.pid}/status") as status:
                lines = status.read().splitlines()
        except OSError:
            return True
        pending = 0
        for line in lines:
            if line.startswith(("SigPnd:", "ShdPnd:")):
                pending |= int(line.split()[1], 16)
        return any(pending >> (signum - 1) & 1 for signum in (signal.SIGKILL, signal.SIGSTOP))

    def failure(self, why: str) -> HelperError:
        """The error for a broken helper: its last word if it said why, else what became of
        it once it ended (a broken connection is the first sign of its death), else `why`."""
        readable(self.pidfd, 0.5)
        try:
            self._next(int(socket.MSG_PEEK))  # left for the watch
        except HelperError as said:
            return said
        except (OSError, EOFError, helper.MalformedError):
            pass
        return HelperError(f"the script helper {self.state() or why}")

    def close(self) -> None:
        """End the helper (closing its socket ends it; killed if it does not), reap it."""
        self.control.close()
        self._theirs.close()
        _close(self._spare or [])
        self._spare = None
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if not readable(self.pidfd, 1.0):  # (no pidfd: killed at once)
                    os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _close(pipes: list[tuple[int, int]], ends: tuple[int, ...] = (0, 1)) -> None:
    """Close the given ends of each pipe."""
    for pipe in pipes:
        for end in ends:
            os.close(pipe[end])
