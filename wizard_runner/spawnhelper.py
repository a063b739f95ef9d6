"""The helper process that starts the scripts, already the run user (its whole program).

The runner starts the helper once per scripts step, as itself (root), with this file:
`python -I -S spawnhelper.py PARENT_PID [UID GID GROUPS]`, its control socket on fd 3. The
helper drops to the run user and is handed the list of scripts. It runs them one after the
other like run-parts: posix_spawn (vfork and exec, the fast path a user switch forbids),
waitpid, next. As long as scripts end cleanly it goes straight on, so the runner's own work
(reading output, logging) overlaps the next script instead of adding to it. Anything else (a
failure, a script that could not start, something left running) makes it pause until the
runner says go on or stop: the runner keeps every decision.

It is a subreaper: whatever a script leaves running is re-parented to it, so one waitid()
says whether anything was left behind. It imports a few standard modules only, all of them
before it drops privileges (the run user may not be able to read them), so it starts fast.

Messages (one SOCK_SEQPACKET datagram each; the first byte says what it is):

    runner -> helper   V env (NUL-separated KEY=value)    the scripts' environment
                       N paths (NUL-separated)            scripts to run, in order (chunks)
                       G index                            go on after the pause that follows
                                                          that script (-1: start)
                       H index                            pause after that script (if the
                                                          next has not started yet)
                       A index                            the runner is done with that script
                       C                                  reap, then say if anything is left
                       X                                  start nothing more (then D)
    helper -> runner   R                                  ready
                       P index pid t_ns + (stdout, stderr)  started; the read ends of its output
                       F index errno                      could not start it (pauses)
                       W index pid status left t_ns       it ended (pauses unless clean)
                       L left                             the answer to C
                       D                                  no more scripts will start
                       E text                             cannot go on (and exits)
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a helper that must start fast; only mypy needs it
    from collections.abc import Callable, Sequence

CONTROL_FD = 3
MAX_MESSAGE = 64 * 1024
#: How many scripts the helper may run ahead of the runner (each holds two pipes meanwhile).
WINDOW = 8
#: The scripts' output pipes (what an unprivileged user may ask for: fs.pipe-max-size).
PIPE_SIZE = 1024 * 1024

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
INDEX = struct.Struct("!i")
STARTED = struct.Struct("!Iiq")
FAILED = struct.Struct("!Ii")
ENDED = struct.Struct("!IiiBq")
LEFT = struct.Struct("!B")
FDS = struct.Struct("2i")
# Plain ints: the socket module's flag enums cost microseconds per use, twice per script.
DONTWAIT = int(socket.MSG_DONTWAIT)
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_ANCILLARY = socket.CMSG_SPACE(FDS.size)


def send_message(control: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    if fds:
        control.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, FDS.pack(*fds))])
    else:
        control.send(data)


def receive_message(control: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One message and the descriptors it carries (close-on-exec)."""
    data, ancillary, _, _ = control.recvmsg(MAX_MESSAGE, _ANCILLARY, flags | _CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += list(struct.unpack(f"{usable // 4}i", payload[:usable]))
    return data, fds


# --- the helper's side --------------------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    import ctypes  # noqa: PLC0415 - before the drop, on the first call; the runner never needs it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")


def _become(argv: Sequence[str]) -> None:
    """Adopt orphans, ignore stop signals (the runner orchestrates stops), drop to the user."""
    parent = int(argv[0])
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if len(argv) > 1:
        uid, gid = int(argv[1]), int(argv[2])
        os.setgroups([int(group) for group in argv[3].split(",") if group])
        os.setgid(gid)
        os.setuid(uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise OSError(f"still uid {os.getresuid()} gid {os.getresgid()} after the switch")
    # Changing ids clears the parent-death signal: set it afterwards, then close the race.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        raise OSError("the runner exited while the helper started")
    os.chdir("/")
    os.umask(0o022)


def _ignored_signals() -> tuple[int, ...]:
    """Signals the helper ignores, which exec would pass on: scripts get them by default."""
    found = []
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                found.append(int(signum))
        except (OSError, ValueError):
            continue
    return tuple(found)


def _anything_left() -> bool:
    """Whether the helper still has a child: reap the ones that exited, one syscall each."""
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        if ended is None:
            return True
        os.waitpid(ended.si_pid, 0)


def _widen(pipe: int) -> None:
    """Let a chatty script's output pile up to PIPE_SIZE: the runner then reads it in big
    chunks, with few wakeups (it pauses between reads once it only keeps the tail)."""
    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        return  # over the user's pipe budget (pipe-user-pages-soft): the default size will do


class _Helper:
    """Runs the scripts it is given, in order, as long as the runner lets it."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.env: dict[str, str] = {}
        self.paths: list[bytes] = []
        self.acked = -1
        self.paused_after: int | None = -1  # waiting before script paused_after + 1
        self.next_index = 0
        self.stopped = False
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.defaults = _ignored_signals()

    def serve(self) -> None:
        self._until(lambda: self.paused_after is None)  # "G -1" comes after the whole list
        for index, path in enumerate(self.paths):
            self.next_index = index
            # Called right away, so the loop variable is the current one (B023).
            self._until(lambda: self.paused_after is None and
                        index - self.acked <= WINDOW)  # noqa: B023
            if self.stopped:
                break
            if not self._run(index, path):
                self.paused_after = index  # the runner decides what comes next
        self.stopped = True
        self.control.send(b"D")
        while True:  # answer C requests until the runner closes its end (EOFError)
            self._handle(*receive_message(self.control))

    def _until(self, condition: Callable[[], bool]) -> None:
        """Handle what the runner sent; wait for more until `condition` holds or a stop."""
        while True:
            try:
                self._handle(*receive_message(self.control, DONTWAIT))
            except BlockingIOError:
                break
        while not (self.stopped or condition()):
            self._handle(*receive_message(self.control))

    def _handle(self, data: bytes, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)  # the runner sends none: never keep a stray one
        kind, body = data[:1], data[1:]
        if not data:
            raise EOFError  # the runner is done, or gone
        if kind == b"V":
            pairs = [item.split(b"=", 1) for item in body.split(b"\0") if item]
            self.env = {os.fsdecode(key): os.fsdecode(value) for key, value in pairs}
        elif kind == b"N":
            self.paths += [path for path in body.split(b"\0") if path]
        elif kind == b"G":
            # Only the pause it names ends: a late G never releases a later pause.
            if self.paused_after == INDEX.unpack(body)[0]:
                self.paused_after = None
        elif kind == b"H":
            # Pause after that script, unless the next one has started already.
            held = INDEX.unpack(body)[0]
            if self.paused_after is None and self.next_index == held + 1:
                self.paused_after = held
        elif kind == b"A":
            self.acked = max(self.acked, INDEX.unpack(body)[0])
        elif kind == b"X":
            self.stopped = True
        elif kind == b"C":
            self.control.send(b"L" + LEFT.pack(_anything_left()))
        else:
            raise ValueError(f"unexpected request {kind!r}")

    def _run(self, index: int, path: bytes) -> bool:
        """Run one script to its end; True when it ended cleanly (exit 0, nothing left)."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for pipe in (out_w, err_w):
            _widen(pipe)
        started = time.monotonic_ns()
        try:
            pid = os.posix_spawn(
                path, [path], self.env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self.devnull, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True, setsigmask=(), setsigdef=self.defaults,
            )
        except OSError as error:
            os.close(out_r)
            os.close(err_r)
            self.control.send(b"F" + FAILED.pack(index, error.errno or 0))
            return False
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            send_message(self.control, b"P" + STARTED.pack(index, pid, started), (out_r, err_r))
        except OSError:
            os.killpg(pid, signal.SIGKILL)  # nobody would know it runs
            raise
        finally:
            os.close(out_r)
            os.close(err_r)
        _, status = os.waitpid(pid, 0)
        ended = time.monotonic_ns()
        left = _anything_left()
        self.control.send(b"W" + ENDED.pack(index, pid, status, left, ended))
        return status == 0 and not left


def _discard_requests(control: socket.socket) -> None:
    while True:
        try:
            _, fds = receive_message(control, DONTWAIT)
        except BlockingIOError:
            return
        for fd in fds:
            os.close(fd)


def main(argv: Sequence[str]) -> int:
    """The helper's entry point: set up, say ready, serve; report any failure to the runner."""
    # Nothing the runner's process happened to leave inheritable may reach a script.
    os.closerange(CONTROL_FD + 1, os.sysconf("SC_OPEN_MAX"))
    control = socket.socket(fileno=CONTROL_FD)
    os.set_inheritable(CONTROL_FD, False)
    try:
        _become(argv)
        helper = _Helper(control)
        control.send(b"R")
        helper.serve()
    except EOFError:
        return 0
    except BaseException as error:
        # The run user may not be able to read the standard library: no traceback, a message.
        try:
            control.send(b"E" + f"{type(error).__name__}: {error}".encode(errors="replace"))
            _discard_requests(control)  # unread ones would reset the runner's end, message lost
        except OSError:
            pass  # the runner is gone: nobody to tell
        return 70  # EX_SOFTWARE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
