"""The helper's protocol, and its program spoken to directly: one script per order, nothing
started without one."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import traversable_dir, wait_until, write_script
from wizard_runner.scripts import helper
from wizard_runner.scripts.helper import Kind, MalformedError, decode, encode


@pytest.mark.parametrize(
    ("kind", "numbers", "text"),
    [
        pytest.param(Kind.RUN, (7,), b"/etc/xivo/wizard.d/20-x", id="run"),
        pytest.param(Kind.STARTED, (3, 4242, 123456789), b"", id="started"),
        pytest.param(Kind.FAILED, (3, errno.ENOEXEC), b"", id="failed"),
        pytest.param(Kind.EXITED, (3, 256, 987654321, 1), b"", id="exited"),
        pytest.param(Kind.ERROR, (), b"OSError: no", id="error"),
    ],
)
def test_every_message_decodes_as_encoded(kind: Kind, numbers: tuple[int, ...],
                                          text: bytes) -> None:
    """Each kind's numbers and text come back as they were sent."""
    assert decode(encode(kind, numbers, text)) == (kind, numbers, text)


@pytest.mark.parametrize(
    "data",
    [pytest.param(b"Z", id="unknown-kind"), pytest.param(b"W\0\0", id="short-numbers")],
)
def test_a_malformed_message_is_refused(data: bytes) -> None:
    """An unknown kind or missing numbers raise MalformedError, not a bare struct error."""
    with pytest.raises(MalformedError):
        decode(data)


def test_an_empty_message_is_the_end() -> None:
    """A zero-length datagram is the other end closing."""
    with pytest.raises(EOFError):
        decode(b"")


class Talk:
    """A helper process started by hand, and our end of its socket."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control

    def wait(self) -> int:
        """Its exit code, once it ended."""
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def run(self, index: int, path: Path) -> tuple[int, int]:
        """Order one script: the read ends of its stdout and stderr."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        socket.send_fds(self.control, [encode(Kind.RUN, (index,), os.fsencode(path))],
                        [out_w, err_w])
        os.close(out_w)
        os.close(err_w)
        return out_r, err_r

    def run_quietly(self, index: int, path: Path) -> None:
        """Order a script whose output nobody reads."""
        for fd in self.run(index, path):
            os.close(fd)

    def receive(self) -> tuple[Kind, tuple[int, ...], bytes, int]:
        """Wait for one message (5 s at most): its kind, numbers, text, and how many
        descriptors it carried (closed)."""
        self.control.settimeout(5)
        data, fds = helper.receive(self.control)
        for fd in fds:
            os.close(fd)
        return (*decode(data), len(fds))

    def silent_for(self, seconds: float) -> bool:
        """Whether the helper says nothing for `seconds`."""
        return not select.select([self.control], [], [], seconds)[0]


@pytest.fixture
def talk() -> Iterator[Talk]:
    """The helper, as the runner starts it (as ourselves: no user switch), with an
    environment of its own for the scripts."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", helper.__file__,
                                          str(os.getpid())], {"PATH": "/usr/bin:/bin", "ONLY": "this"},
                         file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), helper.CONTROL_FD)])
    theirs.close()
    conversation = Talk(pid, ours)
    yield conversation
    ours.close()
    with contextlib.suppress(ChildProcessError):
        conversation.wait()


def read_all(fd: int) -> bytes:
    """Everything a pipe gives until its end."""
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


@pytest.mark.processes
def test_one_order_one_script(talk: Talk) -> None:
    """RUN starts the script on the pipes it carries, in the helper's environment; STARTED
    says so and EXITED says how it ended."""
    with traversable_dir() as place:
        script = write_script(place, "10-hello", "echo hello $ONLY; echo oops >&2; exit 3")
        out, err = talk.run(0, script)
        kind, numbers, _, fds = talk.receive()
        assert (kind, numbers[0], fds) == (Kind.STARTED, 0, 0)
        assert read_all(out) == b"hello this\n"
        assert read_all(err) == b"oops\n"
        kind, numbers, _, _ = talk.receive()
        assert kind is Kind.EXITED
        assert os.waitstatus_to_exitcode(numbers[1]) == 3


@pytest.mark.processes
def test_a_script_gets_the_environment_exactly_as_passed(talk: Talk) -> None:
    """No LANG: Python, starting in the C locale, adds LC_CTYPE to its own environment; the
    scripts get the one the runner passed, nothing more (the shell adds PWD)."""
    with traversable_dir() as place:
        out, err = talk.run(0, write_script(place, "10-env", "env"))
        assert talk.receive()[0] is Kind.STARTED
        lines = read_all(out).decode().splitlines()
        os.close(err)
    assert sorted(line for line in lines if not line.startswith("PWD=")) == \
        ["ONLY=this", "PATH=/usr/bin:/bin"]


def exited(talk: Talk) -> tuple[int, int]:
    """The next two messages are STARTED and EXITED: the exit code and `left`."""
    assert talk.receive()[0] is Kind.STARTED
    kind, numbers, _, _ = talk.receive()
    assert kind is Kind.EXITED
    return os.waitstatus_to_exitcode(numbers[1]), numbers[3]


@pytest.mark.processes
def test_what_a_script_leaves_is_said_and_reaped_by_the_helper(talk: Talk) -> None:
    """The helper adopts what a script leaves: EXITED says so. Once that has ended, the helper
    reaps it at once, also while it waits for the next order: no zombie piles up (nor holds
    up the runner's kill, which reads the helper's children)."""
    with traversable_dir() as place:
        out, err = talk.run(0, write_script(place, "10-leave",
                                            "sleep 30 >/dev/null 2>&1 </dev/null & echo $!"))
        assert talk.receive()[0] is Kind.STARTED
        left = int(read_all(out))
        os.close(err)
        kind, numbers, _, _ = talk.receive()
        assert (kind, os.waitstatus_to_exitcode(numbers[1]), numbers[3]) == (Kind.EXITED, 0, 1)
        os.kill(left, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{left}").exists(), what="the helper to reap it")
        talk.run_quietly(1, Path("/bin/true"))
        assert exited(talk) == (0, 0)


@pytest.mark.processes
@pytest.mark.parametrize("body", ["exit 0", "exit 4", "kill -TERM $$"])
def test_nothing_starts_without_an_order(talk: Talk, body: str) -> None:
    """However a script ended, the helper then waits for the runner's next order: the runner
    judges each script before the next one starts."""
    code = {"exit 0": 0, "exit 4": 4, "kill -TERM $$": -signal.SIGTERM}[body]
    with traversable_dir() as place:
        talk.run_quietly(0, write_script(place, "10-first", body))
        assert exited(talk) == (code, 0)
        assert talk.silent_for(0.3)
        talk.run_quietly(1, write_script(place, "20-next", "exit 0"))
        assert exited(talk) == (0, 0)


@pytest.mark.processes
def test_an_order_sent_while_a_script_runs_waits_for_its_end(talk: Talk) -> None:
    """Orders are taken one at a time: a RUN that comes while a script runs starts only once
    that script's end has been said."""
    with traversable_dir() as place:
        release = place / "release"
        os.mkfifo(release)
        talk.run_quietly(0, write_script(place, "10-waits", f"read x < {release}"))
        assert talk.receive()[0] is Kind.STARTED
        talk.run_quietly(1, Path("/bin/true"))
        assert talk.silent_for(0.3)
        with open(release, "w") as fifo:
            fifo.write("go\n")
        kind, numbers, _, _ = talk.receive()
        assert (kind, numbers[0]) == (Kind.EXITED, 0)
        assert exited(talk) == (0, 0)


@pytest.mark.processes
def test_a_script_that_cannot_start_is_failed_with_its_errno(talk: Talk) -> None:
    """No #! line: FAILED with ENOEXEC, its pipes closed; the next order runs."""
    with traversable_dir() as place:
        script = place / "10-no-shebang"
        script.write_text("echo hi\n")
        script.chmod(0o755)
        out, err = talk.run(0, script)
        assert talk.receive()[:2] == (Kind.FAILED, (0, errno.ENOEXEC))
        assert (read_all(out), read_all(err)) == (b"", b"")
        talk.run_quietly(1, Path("/bin/true"))
        kind, numbers, _, _ = talk.receive()
        assert (kind, numbers[0]) == (Kind.STARTED, 1)


@pytest.mark.processes
@pytest.mark.parametrize(("kind", "fds"), [(Kind.EXITED, 0), (Kind.RUN, 0), (Kind.RUN, 1),
                                           (Kind.STARTED, 2)])
def test_an_order_it_does_not_know_ends_it_with_error(talk: Talk, kind: Kind, fds: int) -> None:
    """An EXITED sent to the helper, a RUN without its two pipes, a STARTED with two: it
    answers ERROR and exits 70."""
    pipes = [os.pipe() for _ in range(fds)]
    writes = [write for _, write in pipes]
    numbers = {Kind.EXITED: (0, 1, 2, 0), Kind.RUN: (0,), Kind.STARTED: (0, 1, 2)}[kind]
    message = encode(kind, numbers, b"/bin/true" if kind is Kind.RUN else b"")
    talk.control.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      struct.pack(f"{len(writes)}i", *writes))] if writes else [])
    for read, write in pipes:
        os.close(read)
        os.close(write)
    kind, _, text, _ = talk.receive()
    assert kind is Kind.ERROR
    assert b"unexpected " in text
    assert talk.wait() == helper.HELPER_FAILED


@pytest.mark.processes
def test_closing_the_socket_ends_it(talk: Talk) -> None:
    """The runner closing its end is the helper's normal end: exit 0."""
    talk.control.close()
    assert talk.wait() == 0
