"""The helper that starts the scripts as the run user: its program, and the protocol both
ends speak (docs/design.md tells the whole exchange).

The runner starts it once per step as root (`python -I -S helper.py PARENT_PID [UID GID
GROUPS]`, its socket on fd 3, the scripts' environment as its own). It drops to the run user,
then starts one script (posix_spawn, like run-parts) per RUN, one at a time, and reaps each
orphan the scripts leave (it adopts them) as it exits: nothing starts that the runner did not
order after judging the script before. Every module it uses is imported before it drops
privileges: the run user may not be able to read the standard library. One SOCK_SEQPACKET
datagram per message, its kind the first byte:

    runner -> helper   RUN      index; the script's path; the write ends of its stdout and
                                stderr
    helper -> runner   STARTED  index, pid, start (ns)
                       FAILED   index, errno (it could not start)
                       EXITED   index, wait status, end (ns), left (1: processes the
                                script started still run; exact, as the helper adopts every
                                orphan)
                       ERROR    text (it cannot go on, and exits)
"""

from __future__ import annotations

import array
import enum
import os
import select
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a helper that must start fast; only mypy needs it
    from collections.abc import Sequence

CONTROL_FD = 3
MAX_MESSAGE = 8192  # a path (PATH_MAX is 4096) or an error's text
#: The helper's exit status when it cannot go on (EX_SOFTWARE: it says why in ERROR).
HELPER_FAILED = 70

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
# A plain int: the socket module's flag enums cost microseconds per use, twice per script.
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)


class Kind(enum.Enum):
    """What a message is: its first byte."""

    RUN = b"N"
    STARTED = b"P"
    FAILED = b"F"
    EXITED = b"W"
    ERROR = b"E"


#: The fixed numbers each kind carries before its text (ERROR: none).
_NUMBERS = {
    Kind.RUN: struct.Struct("!I"),
    Kind.STARTED: struct.Struct("!Iiq"),
    Kind.FAILED: struct.Struct("!Ii"),
    Kind.EXITED: struct.Struct("!IiqB"),
    Kind.ERROR: struct.Struct("!"),
}


#: A kind by its byte: a dict lookup, where calling the enum costs microseconds twice per script.
_KINDS = {kind.value: kind for kind in Kind}


class MalformedError(ValueError):
    """A message that is not one of the protocol's."""


def encode(kind: Kind, numbers: Sequence[int] = (), text: bytes = b"") -> bytes:
    """One message: the kind's byte, its numbers, its text."""
    return kind.value + _NUMBERS[kind].pack(*numbers) + text


def decode(data: bytes) -> tuple[Kind, tuple[int, ...], bytes]:
    """The kind, numbers and text of a message; EOFError for the end of the stream."""
    if not data:
        raise EOFError
    try:
        kind = _KINDS[data[:1]]
        layout = _NUMBERS[kind]
        return kind, layout.unpack(data[1:1 + layout.size]), data[1 + layout.size:]
    except (KeyError, struct.error) as error:
        raise MalformedError(f"malformed message {data[:16]!r}") from error


def receive(control: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One message and the descriptors it carries (close-on-exec, or a script would inherit
    them; two at most). Not socket.recv_fds: Python 3.11's drops `flags`."""
    fds = array.array("i")
    data, ancillary, _, _ = control.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(2 * fds.itemsize),
                                            flags | _CLOEXEC)
    for level, kind, payload in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def prctl(option: int, value: int | None = None) -> int:
    """prctl(2) with an int argument, or (`value` None) one it fills in, which it returns."""
    import ctypes  # noqa: PLC0415 - only the helper and the fallback containment need it

    filled = ctypes.c_int(0)
    argument = ctypes.byref(filled) if value is None else value
    if ctypes.CDLL(None, use_errno=True).prctl(option, argument, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")
    return filled.value


# --- the helper's side --------------------------------------------------------------------------


def _become(argv: Sequence[str]) -> None:
    """Adopt orphans, drop to the user."""
    parent = int(argv[0])
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    if len(argv) > 1:
        uid, gid = int(argv[1]), int(argv[2])
        os.setgroups([int(group) for group in argv[3].split(",") if group])
        os.setgid(gid)
        os.setuid(uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise OSError(f"still uid {os.getresuid()} gid {os.getresgid()} after the switch")
    # Changing ids clears the parent-death signal: set it afterwards, then close the race.
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(_PR_SET_DUMPABLE, 0)  # no script may trace it, whatever fs.suid_dumpable says
    if os.getppid() != parent:
        raise OSError("the runner exited while the helper started")
    os.chdir("/")
    os.umask(0o022)


def _ignore_signals() -> tuple[int, ...]:
    """Ignore every signal but SIGCHLD, which gets its default (it waits for its scripts; one
    ignored by whoever started the runner, passed on by exec, has them reaped unseen): the
    runner orchestrates stops, and a script can only stop or kill the helper, which the runner
    sees. The signals ignored, which exec would pass on: scripts get them by default."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ignored = []
    for signum in signal.valid_signals():
        if signum not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:
                signal.signal(signum, signal.SIG_IGN)
            except (OSError, ValueError):  # reserved by the C library
                continue
            ignored.append(int(signum))
    return tuple(ignored)


def _reap() -> bool:
    """Reap what the scripts left that has exited since (the helper adopts their orphans);
    whether anything is still running."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:  # none left
        return False
    return True


class _Helper:
    """Runs the scripts the runner orders, one at a time."""

    def __init__(self, control: socket.socket, env: dict[bytes, bytes]) -> None:
        self.control = control
        self.env = env
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.defaults = _ignore_signals()
        # An orphan's death wakes the wait for the next order, so that it is reaped at once.
        self.woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # (a script gets the default)
        self.poller = select.poll()
        self.poller.register(self.control.fileno(), select.POLLIN)
        self.poller.register(self.woken, select.POLLIN)

    def serve(self) -> None:
        """Run each order until the runner closes its end (EOFError). While it waits for
        one, what the last script left is reaped as it exits (as the runner kills it): a
        zombie holds its pid, and the runner's kill is quick only while the helper's children
        are few."""
        while True:
            ready = {fd for fd, _ in self.poller.poll()}
            if self.woken in ready:
                try:
                    while os.read(self.woken, 512):
                        pass
                except BlockingIOError:  # emptied
                    pass
            _reap()
            if self.control.fileno() not in ready:
                continue
            data, fds = receive(self.control)
            kind, numbers, path = decode(data)
            if kind is not Kind.RUN or len(fds) != 2:  # the helper ends, and its descendants
                raise MalformedError(f"unexpected {kind.name} from the runner")
            self.run(numbers[0], path, *fds)

    def run(self, index: int, path: bytes, out_w: int, err_w: int) -> None:
        """Start one script on the pipes it was given, wait for it, say how it ended."""
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
            self.control.send(encode(Kind.FAILED, (index, error.errno or 0)))
            return
        finally:
            os.close(out_w)  # the script has its own: its output ends when it (and what it
            os.close(err_w)  # started) closes them
        try:
            self.control.send(encode(Kind.STARTED, (index, pid, started)))
        except OSError:
            os.killpg(pid, signal.SIGKILL)  # nobody would know it runs
            raise
        # Meanwhile each orphan it leaves (the helper adopts them) is reaped as it exits: a
        # zombie holds its pid, and thousands (`(cmd &)` in a loop) would take the last ones.
        reaped, status = os.wait()
        while reaped != pid:
            reaped, status = os.wait()
        ended = time.monotonic_ns()
        self.control.send(encode(Kind.EXITED, (index, status, ended, _reap())))


def main(argv: Sequence[str]) -> int:
    """The helper's entry point: set up, serve; report any failure to the runner."""
    # Nothing the runner's process happened to leave inheritable may reach a script.
    os.closerange(CONTROL_FD + 1, os.sysconf("SC_OPEN_MAX"))
    control = socket.socket(fileno=CONTROL_FD)
    os.set_inheritable(CONTROL_FD, False)
    try:
        # The environment as the runner passed it: Python may have added LC_CTYPE to its own
        # as it started (a C locale). Read before the switch makes /proc/self root's.
        with open("/proc/self/environ", "rb") as source:
            env = dict(item.split(b"=", 1) for item in source.read().split(b"\0") if item)
        _become(argv)
        _Helper(control, env).serve()
    except EOFError:
        return 0
    except BaseException as error:
        # The run user may not be able to read the standard library: no traceback, a message.
        text = f"{type(error).__name__}: {error}".encode(errors="replace")
        try:
            control.send(encode(Kind.ERROR, (), text))
        except OSError:
            return HELPER_FAILED  # the runner is gone: nobody to tell
        return HELPER_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
