"""The runner's side of the helper: start it in the step's containment, have it run one
script at a time, hear how each ended, and notice at once when it is stopped or killed."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from wizard_runner.procs import signal_name
from wizard_runner.scripts import helper
from wizard_runner.scripts.containment import Containment
from wizard_runner.scripts.helper import Kind

#: How long the helper may take to start (a loaded appliance) or to answer.
ANSWER_TIMEOUT: Final = 30.0
#: What `Spawner.state` says of a helper a script stopped, or killed (then `by SIGNAL`).
STOPPED: Final = "was stopped"
KILLED: Final = "was killed"


class HelperError(Exception):
    """The helper failed: it could not start or switch user, it died, was stopped, or said
    something it should not have."""


@dataclass(frozen=True)
class Switch:
    """Who the helper becomes: uid, primary gid, every group."""

    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass
class Started:
    """A script the helper started: its pid, the read ends of its output, its start time
    (CLOCK_MONOTONIC seconds as the helper saw it, the runner's time.monotonic())."""

    index: int
    pid: int
    stdout: int
    stderr: int
    started: float


@dataclass(frozen=True)
class Exited:
    """How a script ended: its wait status, whether anything it started still runs, when."""

    index: int
    pid: int
    status: int
    left: bool
    ended: float

    @property
    def returncode(self) -> int:
        """The exit code, or minus the signal that killed it."""
        return os.waitstatus_to_exitcode(self.status)


def _environment(env: Mapping[str, str]) -> bytes:
    for key, value in env.items():
        if "\0" in key + value or "=" in key:
            raise HelperError(f"the scripts' environment: {key!r} cannot be passed on "
                              "(a NUL byte, or '=' in its name)")
    message = helper.encode(Kind.ENV, (), b"\0".join(os.fsencode(f"{key}={value}")
                                                    for key, value in env.items()))
    if len(message) > helper.MAX_MESSAGE:
        raise HelperError(f"the scripts' environment is {len(message)} bytes, more than the "
                          f"{helper.MAX_MESSAGE} the helper takes")
    return message


class Spawner:
    """The helper of one scripts step."""

    def __init__(self, env: Mapping[str, str], switch: Switch | None, box: Containment,
                 python: str | None = None) -> None:
        self.environment = _environment(env)
        self.switch = switch
        self.box = box
        self.python = python if python is not None else sys.executable
        self.pid = 0
        self.pidfd = -1
        self._control: socket.socket | None = None

    @property
    def control(self) -> socket.socket:
        """The control socket (the helper has started)."""
        if self._control is None:
            raise HelperError("the helper is not running")
        return self._control

    def start(self) -> None:
        """Launch the helper, put it in the containment, hand it the environment."""
        if not self.python:
            raise HelperError("cannot start the script helper: no Python interpreter known "
                              "(sys.executable is empty)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [self.python, "-I", "-S", helper.__file__, str(os.getpid())]
        if self.switch is not None:
            groups = ",".join(str(group) for group in self.switch.groups)
            argv += [str(self.switch.uid), str(self.switch.gid), groups]
        try:
            with theirs:
                self.pid = os.posix_spawn(
                    self.python, argv, {},
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_DUP2, theirs.fileno(), helper.CONTROL_FD),
                    ],
                    setsid=True,
                )
        except OSError as error:
            ours.close()
            raise HelperError(f"the script helper {self.python} could not be started: "
                              f"{error.strerror}") from error
        self._control = ours
        self.pidfd = os.pidfd_open(self.pid)
        try:
            self.box.adopt(self.pid)
        except OSError as error:
            raise HelperError(f"cannot put the script helper in its {self.box.name}: "
                              f"{error.strerror}") from error
        self.expect(Kind.READY, "get ready")
        helper.send(self.control, self.environment)

    def run(self, index: int, path: str) -> Started:
        """Have the helper start one script; OSError when it could not."""
        self.order(index, path)
        return self.started(index, path)

    def order(self, index: int, path: str) -> None:
        """Tell the helper to start a script (`started` hears that it did)."""
        try:
            helper.send(self.control, helper.encode(Kind.RUN, (index,), os.fsencode(path)))
        except OSError as error:
            raise self.failure(f"broke off ({error.strerror})") from error

    def started(self, index: int, path: str) -> Started:
        """The script ordered last, once started; OSError when it could not be."""
        kind, numbers, fds = self.expect((Kind.STARTED, Kind.FAILED), f"start {path}")
        if kind is Kind.FAILED:
            code = numbers[1]
            raise OSError(code, os.strerror(code), path)
        if len(fds) != 2 or numbers[0] != index:
            for fd in fds:
                os.close(fd)
            raise HelperError(f"the helper answered a start of #{index} wrongly")
        return Started(index, numbers[1], fds[0], fds[1], numbers[2] / 1e9)

    def exited(self, message: tuple[Kind, tuple[int, ...], list[int]], index: int) -> Exited:
        """Read an EXITED message for script `index`."""
        kind, numbers, fds = message
        for fd in fds:
            os.close(fd)
        if kind is not Kind.EXITED or numbers[0] != index:
            raise HelperError(f"the helper said {kind.name} while script #{index} ran")
        return Exited(index, numbers[1], numbers[2], bool(numbers[3]), numbers[4] / 1e9)

    def receive(self) -> tuple[Kind, tuple[int, ...], list[int]]:
        """One message from the helper, which has something to say (the socket is readable)."""
        try:
            data, fds = helper.receive(self.control, socket.MSG_DONTWAIT)
            kind, numbers, text = helper.decode(data)
        except (EOFError, BlockingIOError, OSError, helper.MalformedError) as error:
            raise self.failure(f"broke off ({str(error) or 'the connection closed'})") from error
        if kind is Kind.ERROR:
            for fd in fds:
                os.close(fd)
            raise HelperError(f"the script helper failed: {text.decode(errors='replace')}")
        return kind, numbers, fds

    def expect(self, kinds: Kind | tuple[Kind, ...], what: str
               ) -> tuple[Kind, tuple[int, ...], list[int]]:
        """Wait for the helper's answer (one of `kinds`), watching that it lives meanwhile."""
        wanted = kinds if isinstance(kinds, tuple) else (kinds,)
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            state = self.state()
            if state is not None:
                raise self.failure(state)
            left = deadline - time.monotonic()
            if left <= 0:
                raise HelperError(f"the script helper did not {what} within "
                                  f"{ANSWER_TIMEOUT:g} s")
            ready = {fd for fd, _ in poller.poll(min(left, 0.1) * 1000)}
            if self.control.fileno() in ready:
                message = self.receive()
                if message[0] not in wanted:
                    for fd in message[2]:
                        os.close(fd)
                    raise HelperError(f"the script helper said {message[0].name} when asked "
                                      f"to {what}")
                return message

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

    def how_broken(self, otherwise: str) -> str:
        """What the helper's state says of the script it was running; `otherwise` while the
        helper runs on."""
        state = self.state()
        if state is None:
            return otherwise
        if state == STOPPED:
            return "the script stopped the helper that ran it"
        if state.startswith(KILLED):
            signal_used = state.removeprefix(f"{KILLED} by ")
            return f"the script killed the helper that ran it ({signal_used})"
        return f"the helper that ran it {state}"

    def failure(self, why: str) -> HelperError:
        """The error for a helper that went wrong, saying how: what became of it, when it
        ends within a moment (a broken connection is the first sign of its death)."""
        select.select([self.pidfd], [], [], 0.5)
        return HelperError(f"the script helper {self.state() or why}")

    def close(self) -> None:
        """End the helper (closing its socket ends it; killed if it does not), reap it."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if select.select([self.pidfd], [], [], 1.0)[0] == []:
                    os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
