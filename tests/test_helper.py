"""The helper's protocol, and its program spoken to directly: one script per order."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import traversable_dir, write_script
from wizard_runner.scripts import helper
from wizard_runner.scripts.helper import Kind, MalformedError, decode, encode


@pytest.mark.parametrize(
    ("kind", "numbers", "text"),
    [
        pytest.param(Kind.ENV, (), b"PATH=/bin\0LANG=C.UTF-8", id="env"),
        pytest.param(Kind.RUN, (7,), b"/etc/xivo/wizard.d/20-x", id="run"),
        pytest.param(Kind.READY, (), b"", id="ready"),
        pytest.param(Kind.STARTED, (3, 4242, 123456789), b"", id="started"),
        pytest.param(Kind.FAILED, (3, errno.ENOEXEC), b"", id="failed"),
        pytest.param(Kind.EXITED, (3, 4242, 256, 1, 987654321), b"", id="exited"),
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

    def send(self, kind: Kind, numbers: tuple[int, ...] = (), text: bytes = b"") -> None:
        """Send one order."""
        helper.send(self.control, encode(kind, numbers, text))

    def receive(self) -> tuple[Kind, tuple[int, ...], bytes, list[int]]:
        """Wait for one message (5 s at most)."""
        self.control.settimeout(5)
        data, fds = helper.receive(self.control)
        return (*decode(data), fds)


@pytest.fixture
def talk() -> Iterator[Talk]:
    """The helper, as the runner starts it (as ourselves: no user switch), READY read."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", helper.__file__,
                                          str(os.getpid())], {},
                         file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), helper.CONTROL_FD)])
    theirs.close()
    conversation = Talk(pid, ours)
    assert conversation.receive()[0] is Kind.READY
    yield conversation
    ours.close()
    with contextlib.suppress(ChildProcessError):
        conversation.wait()


@pytest.mark.processes
def test_one_order_one_script(talk: Talk) -> None:
    """RUN starts the script, hands its output over, and EXITED says how it ended."""
    with traversable_dir() as place:
        script = write_script(place, "10-hello", "echo hello; echo oops >&2; exit 3")
        talk.send(Kind.ENV, (), b"PATH=/usr/bin:/bin")
        talk.send(Kind.RUN, (0,), os.fsencode(script))
        kind, numbers, _, fds = talk.receive()
        assert kind is Kind.STARTED
        assert numbers[0] == 0
        with os.fdopen(fds[0], "rb") as stdout, os.fdopen(fds[1], "rb") as stderr:
            assert stdout.read() == b"hello\n"
            assert stderr.read() == b"oops\n"
        kind, numbers, _, _ = talk.receive()
        assert kind is Kind.EXITED
        assert os.waitstatus_to_exitcode(numbers[2]) == 3
        assert numbers[3] == 0  # nothing left running


@pytest.mark.processes
def test_what_a_script_leaves_is_reported(talk: Talk) -> None:
    """A script that leaves a child running: EXITED says something is left."""
    with traversable_dir() as place:
        script = write_script(place, "10-leave", "sleep 30 >/dev/null 2>&1 &")
        talk.send(Kind.RUN, (0,), os.fsencode(script))
        kind, _, _, fds = talk.receive()
        for fd in fds:
            os.close(fd)
        kind, numbers, _, _ = talk.receive()
        assert (kind, numbers[3]) == (Kind.EXITED, 1)


@pytest.mark.processes
def test_a_script_that_cannot_start_is_failed_with_its_errno(talk: Talk) -> None:
    """No #! line: FAILED with ENOEXEC; the helper waits for the next order."""
    with traversable_dir() as place:
        script = place / "10-no-shebang"
        script.write_text("echo hi\n")
        script.chmod(0o755)
        talk.send(Kind.RUN, (0,), os.fsencode(script))
        assert talk.receive()[:2] == (Kind.FAILED, (0, errno.ENOEXEC))
        talk.send(Kind.RUN, (1,), os.fsencode(Path("/bin/true")))
        assert talk.receive()[0] is Kind.STARTED


@pytest.mark.processes
def test_an_order_it_does_not_know_ends_it_with_error(talk: Talk) -> None:
    """The helper is sent READY: it answers ERROR and exits 70."""
    talk.send(Kind.READY)
    kind, _, text, _ = talk.receive()
    assert kind is Kind.ERROR
    assert b"unexpected READY" in text
    assert talk.wait() == helper.HELPER_FAILED


@pytest.mark.processes
def test_closing_the_socket_ends_it(talk: Talk) -> None:
    """The runner closing its end is the helper's normal end: exit 0."""
    talk.control.close()
    assert talk.wait() == 0
