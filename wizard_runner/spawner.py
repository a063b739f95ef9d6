"""The runner's side of the scripts step's helper: start it, follow the scripts it runs.

The helper (spawnhelper.py, where the protocol is described) drops to the run user and runs
the scripts like run-parts; this side hands it the list, reads each script's output through
the pipes it passes back, applies timeouts and stops, and says go on or stop after anything
unusual. Stopping it (close()) also stops whatever it started that the runner did not follow.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar

from wizard_runner import spawnhelper
from wizard_runner.procs import descendants, stop_all
from wizard_runner.signals import deferred_stop_signals
from wizard_runner.spawnhelper import (
    CONTROL_FD,
    DONTWAIT,
    ENDED,
    FAILED,
    INDEX,
    LEFT,
    MAX_MESSAGE,
    STARTED,
    receive_message,
)

#: How long the helper may take to start (a loaded appliance) or to answer a request.
START_TIMEOUT: Final = 30.0
ANSWER_TIMEOUT: Final = 30.0


_T = TypeVar("_T")
_Message = tuple[bytes, list[int]]


class SpawnerError(Exception):
    """The helper failed: it could not start, switch user, or it died."""


@dataclass
class Spawned:
    """One script the helper started: its pid, the read ends of its output, how it ended.

    Times are CLOCK_MONOTONIC seconds as the helper saw them (the same clock as the runner's
    time.monotonic()), so durations and deadlines do not depend on when the runner looked.
    """

    index: int
    pid: int
    stdout: int
    stderr: int
    started: float
    returncode: int | None = None
    left_behind: bool = False
    ended: float | None = None
    pipes_open: bool = True

    @property
    def pipes(self) -> tuple[int, int]:
        """The read ends of its stdout and stderr."""
        return self.stdout, self.stderr

    def close_pipes(self) -> None:
        """Close the read ends, once (their numbers may be reused right after)."""
        if self.pipes_open:
            self.pipes_open = False
            _close_all(self.pipes)

    @property
    def clean(self) -> bool:
        """Ended with 0 and left nothing running: the helper went straight on."""
        return self.returncode == 0 and not self.left_behind


@dataclass(frozen=True)
class Switch:
    """Who the helper becomes: uid, primary gid, every group."""

    uid: int
    gid: int
    groups: tuple[int, ...]


class Spawner:
    """The runner's handle on the helper: start it, follow the scripts, say go on or stop.

    With wizard-runner's stop handlers installed (the CLI, the daemon), every message is
    received and applied inside a deferred-stop section, so that a stop request never falls
    between the two and loses a started script or its end.
    """

    def __init__(self, env: Mapping[str, str], paths: Sequence[str],
                 switch: Switch | None = None, python: str | None = None,
                 grace: float = 5.0) -> None:
        self.env = dict(env)
        self.paths = list(paths)
        self.switch = switch
        self.python = python or sys.executable
        self.grace = grace
        self.pid: int | None = None
        self._control: socket.socket | None = None
        self._queue: deque[_Message] = deque()
        self._next = 0
        self._running: dict[int, Spawned] = {}
        self._ready = False
        self._done = False
        self._held: int | None = None
        self._unstartable: dict[int, int] = {}
        self._halted = False
        self._unresponsive = False

    def __enter__(self) -> Spawner:
        return self  # the helper starts with the first script, if there is one

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # -- starting ------------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the helper and hand it the environment and the list; it starts at once."""
        if not self.python:
            raise SpawnerError("cannot start the script helper: no Python interpreter known "
                               "(sys.executable is empty)")
        for key, value in self.env.items():
            if "\0" in key + value or "=" in key:
                raise SpawnerError(f"the scripts' environment: {key!r} cannot be passed on "
                                   "(a NUL byte, or '=' in its name)")
        environment = b"V" + b"\0".join(os.fsencode(f"{key}={value}")
                                        for key, value in self.env.items())
        if len(environment) > MAX_MESSAGE:
            raise SpawnerError(f"the scripts' environment is {len(environment)} bytes, more "
                               f"than the {MAX_MESSAGE} the helper takes")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [self.python, "-I", "-S", spawnhelper.__file__, str(os.getpid())]
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
                        (os.POSIX_SPAWN_DUP2, theirs.fileno(), CONTROL_FD),
                    ],
                    setsid=True,
                )
        except OSError as error:
            ours.close()
            raise SpawnerError(f"cannot start the script helper {self.python}: "
                               f"{error.strerror}") from error
        self._control = ours
        self._send(environment)
        for chunk in _chunks([os.fsencode(path) for path in self.paths], MAX_MESSAGE - 1):
            self._send(b"N" + b"\0".join(chunk))
        self._send(b"G" + INDEX.pack(-1))

    def next_script(self) -> Spawned:
        """The next script of the list, once started; OSError when it could not be."""
        if self._next >= len(self.paths):
            raise SpawnerError(f"no script left to start (all {len(self.paths)} were)")
        if self._control is None:
            self.start()
        if not self._ready:
            self._expect(b"R", START_TIMEOUT, "get ready", lambda message: message)
            self._ready = True
        index = self._next
        self._next += 1
        return self._expect(b"PF", ANSWER_TIMEOUT, f"start {self.paths[index]}",
                            lambda message: self._started(message, index))

    def _started(self, message: _Message, index: int) -> Spawned:
        try:
            return self._started_or_failed(message, index)
        except struct.error as error:
            _close_all(message[1])
            raise self._died("it sent a malformed answer to a start") from error

    def _started_or_failed(self, message: _Message, index: int) -> Spawned:
        data, fds = message
        if data[:1] == b"F":
            number, code = FAILED.unpack(data[1:])
            self._check_index(number, index)
            raise OSError(code, os.strerror(code), self.paths[index])
        script = self._follow(data, fds)
        if script.index != index:
            script.close_pipes()
            raise self._died(f"it answered for script #{script.index}, not #{index}")
        return script

    # -- following -----------------------------------------------------------------------------

    def fileno(self) -> int:
        """The control socket, readable when the helper has something to say."""
        return self._socket().fileno()

    def poll(self, script: Spawned) -> int | None:
        """The script's exit code (negative: killed by that signal), without waiting."""
        return self.wait(script, 0.0)

    def wait(self, script: Spawned, timeout: float | None) -> int | None:
        """Wait up to `timeout` seconds (None: for ever) for the script to end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while script.returncode is None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self._pull(left):
                return None
        return script.returncode

    def hold(self, script: Spawned) -> None:
        """Have the helper wait after this script, whatever its end (sent before the runner
        signals it, so that a script ending cleanly on SIGTERM is not followed). Without
        effect if the helper has started the next one already (this one ended in time)."""
        if self._held != script.index:
            self._held = script.index
            self._send(b"H" + INDEX.pack(script.index))

    def halt(self) -> None:
        """Have the helper start nothing more (sent before stopping anything)."""
        if not self._halted and self._control is not None:
            self._halted = True
            self._send(b"X")

    def anything_left(self) -> bool:
        """Have the helper reap what was killed; whether anything is still alive."""
        self._continue()  # a leftover may have stopped it
        for stale in [m for m in self._queue if m[0][:1] == b"L"]:
            self._queue.remove(stale)  # the answer to a request that timed out
        self._send(b"C")
        data, _ = self._expect(b"L", max(self.grace, 1.0), "reap", lambda message: message)
        try:
            return bool(LEFT.unpack(data[1:])[0])
        except struct.error as error:
            raise self._died("it sent a malformed answer to a reap") from error

    def _continue(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def done_with(self, script: Spawned, *, go_on: bool) -> None:
        """The runner has finished with a script: let the helper run further ahead and, after
        a pause (the script did not end cleanly, or the runner held it), say whether it goes on."""
        self._running.pop(script.index, None)
        self._send(b"A" + INDEX.pack(script.index))
        if go_on and (self._held == script.index or not script.clean):
            self._send(b"G" + INDEX.pack(script.index))  # ignored if it did not pause there
        if self._held == script.index:
            self._held = None

    # -- stopping ------------------------------------------------------------------------------

    def stop_started(self, grace: float | None = None) -> list[Spawned]:
        """Start nothing more; stop (TERM, then KILL after the grace) what the helper started
        that the runner has not finished with; return those scripts, in order, pipes open."""
        grace = self.grace if grace is None else grace
        if self._control is None:
            return []
        try:
            self.halt()
            self._collect(grace)
        except SpawnerError:
            self._salvage()
        return [self._running[index] for index in sorted(self._running)]

    def could_not_start(self) -> dict[int, int]:
        """Scripts the helper tried to start past the runner and could not: index -> errno."""
        return dict(self._unstartable)

    def _salvage(self) -> None:
        """The helper is gone: take in what it had still said, and kill what it had started
        (nobody reaps those now; they go to init once killed)."""
        control = self._control
        while control is not None:
            try:
                data, fds = receive_message(control, DONTWAIT)
            except OSError:
                break
            if not data:
                break
            try:
                self._take((data, fds), adopt=True)
            except (struct.error, SpawnerError):
                _close_all(fds)
        for script in self._unfinished():
            _terminate(script, kill=True)

    def _collect(self, grace: float) -> None:
        if self._unresponsive:
            return  # it did not answer within the grace before: do not wait for it again
        self._continue()  # a script may have stopped it
        with deferred_stop_signals(foreign=False):
            for message in [m for m in self._queue if m[0][:1] in (b"P", b"F")]:
                self._queue.remove(message)
                self._take(message, adopt=True)
        started = time.monotonic()
        signalled: dict[int, bool] = {}
        while not self._done or self._unfinished():
            late = time.monotonic() - started
            if late >= 2 * grace:
                self._unresponsive = True
                return
            for script in self._unfinished():
                kill = late >= grace
                if signalled.get(script.pid) is not kill:
                    _terminate(script, kill)
                    signalled[script.pid] = kill
            self._pull(0.05, adopt=True)

    def close(self) -> None:
        """Stop what the helper started, and what that left running; reap the helper.

        A stop request cannot cut this short (it would leave scripts running as orphans): it
        is held back and delivered once everything is stopped.
        """
        with deferred_stop_signals():
            try:
                if self._control is not None:
                    for script in self.stop_started():
                        script.close_pipes()
                    self._stop_leftovers()
            finally:
                if self._control is not None:
                    self._control.close()
                    self._control = None
                for _, fds in self._queue:
                    _close_all(fds)
                self._queue.clear()
                if self.pid is not None:
                    _reap(self.pid, self.grace)
                    self.pid = None

    def _stop_leftovers(self) -> None:
        """Whatever the scripts left running is the helper's child: stop it before the helper
        exits, or it would outlive the run (re-parented to init)."""
        if self._unresponsive:
            if self.pid is not None:
                stop_all(descendants(self.pid), self.grace)
            return
        deadline = time.monotonic() + 2 * self.grace
        try:
            while self.anything_left() and self.pid is not None:
                stop_all(descendants(self.pid), self.grace)
                if time.monotonic() >= deadline:
                    break
            else:
                return
        except SpawnerError:
            pass
        if self.pid is not None:  # no clear answer: a last sweep, by force, before it exits
            stop_all(descendants(self.pid), 0.5)

    def _unfinished(self) -> list[Spawned]:
        return [script for script in self._running.values() if script.returncode is None]

    # -- messages ------------------------------------------------------------------------------

    def _follow(self, data: bytes, fds: list[int]) -> Spawned:
        """Start following a script from its P message, applying an end already queued."""
        index, pid, started = STARTED.unpack(data[1:])
        if len(fds) != 2 or not 0 <= index < len(self.paths):
            _close_all(fds)
            raise self._died(f"it reported an unknown start (script #{index}, {len(fds)} pipes)")
        script = Spawned(index, pid, fds[0], fds[1], started / 1e9)
        self._running[index] = script
        for message in [m for m in self._queue if m[0][:1] == b"W"]:
            self._queue.remove(message)
            self._take(message)
        return script

    def _take(self, message: _Message, *, adopt: bool = False) -> None:
        """Apply the end of a followed script (or, with `adopt`, follow a started one), or the
        helper's last word; keep the rest for whoever waits for it."""
        data, _ = message
        kind = data[:1]
        if kind == b"W":
            index, pid, status, left, ended = ENDED.unpack(data[1:])
            script = self._running.get(index)
            if script is None:
                self._queue.append(message)  # its P is still queued
                return
            if script.pid != pid:
                raise self._died(f"it reported pid {pid} for script #{index}, not {script.pid}")
            script.returncode = os.waitstatus_to_exitcode(status)
            script.left_behind = bool(left)
            script.ended = ended / 1e9
        elif kind == b"D":
            self._done = True
        elif kind == b"P" and adopt:
            self._follow(*message)
        elif kind == b"F" and adopt:
            index, code = FAILED.unpack(data[1:])
            self._unstartable[index] = code
        else:
            self._queue.append(message)

    def _expect(self, kinds: bytes, timeout: float, what: str,
                then: Callable[[_Message], _T]) -> _T:
        """Hand the next message of one of `kinds` (queued ones first) to `then`, in the same
        deferred-stop section as taking it off the queue."""
        deadline = time.monotonic() + timeout
        wanted = [kinds[at : at + 1] for at in range(len(kinds))]
        while True:
            if self._queue:
                with deferred_stop_signals(foreign=False):
                    for queued in self._queue:
                        if queued[0][:1] in wanted:
                            self._queue.remove(queued)
                            return then(queued)
            if not self._pull(max(deadline - time.monotonic(), 0.0)) and \
                    time.monotonic() >= deadline:
                raise SpawnerError(f"the script helper (pid {self.pid}) did not {what} "
                                   f"within {timeout:g} s")

    def _pull(self, timeout: float | None, *, adopt: bool = False) -> bool:
        """Wait up to `timeout` for a message (interruptible), then take and apply it (not)."""
        control = self._socket()
        if timeout != 0.0:
            waiter = select.poll()  # not select(): an embedding process may hold fds >= 1024
            waiter.register(control, select.POLLIN)
            if not waiter.poll(None if timeout is None else timeout * 1000):
                return False
        with deferred_stop_signals(foreign=False):
            try:
                data, fds = receive_message(control, DONTWAIT)
            except BlockingIOError:
                return False
            except OSError as error:
                raise self._died(f"its end broke ({error.strerror})") from error
            if not data:
                raise self._died("it closed its end")
            if data[:1] != b"P":
                _close_all(fds)  # only a start carries descriptors: never keep a stray one
                fds = []
            if data[:1] == b"E":
                raise self._died(data[1:].decode(errors="replace"))
            try:
                self._take((data, fds), adopt=adopt)
            except struct.error as error:
                _close_all(fds)
                raise self._died(f"it sent a malformed {data[:1]!r} message") from error
        return True

    def _check_index(self, number: int, index: int) -> None:
        if number != index:
            raise self._died(f"it answered for script #{number}, not #{index}")

    def _socket(self) -> socket.socket:
        if self._control is None:
            raise SpawnerError("the script helper is not running")
        return self._control

    def _send(self, data: bytes) -> None:
        try:
            self._socket().send(data)
        except OSError as error:
            raise self._died(f"cannot reach it ({error.strerror})") from error

    def _died(self, reason: str) -> SpawnerError:
        return SpawnerError(f"the script helper (pid {self.pid}) failed: {reason}")


def _chunks(items: list[bytes], size: int) -> list[list[bytes]]:
    """Group items so that each group joined with one separator each fits in `size` bytes."""
    groups: list[list[bytes]] = [[]]
    used = 0
    for item in items:
        if groups[-1] and used + len(item) + 1 > size:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += len(item) + 1
    return groups


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _terminate(script: Spawned, kill: bool) -> None:
    """Stop a script's whole group: SIGTERM (and SIGCONT), or SIGKILL once it is time."""
    signals = (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGCONT)
    for signum in signals:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(script.pid, signum)


def _reap(pid: int, timeout: float) -> None:
    """Wait for the helper to exit; past `timeout`, kill what it still runs, then it."""
    deadline = time.monotonic() + timeout
    try:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() >= deadline:
                stop_all(descendants(pid), 0.5)  # its children would outlive it otherwise
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.002)
    except ChildProcessError:
        return  # an embedding application reaped it already
