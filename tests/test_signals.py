"""Stop requests: RunInterrupted, held back in deferred sections, dropped while stopping."""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest

from wizard_runner.errors import RunInterrupted
from wizard_runner.signals import (
    deferred_stop_signals,
    ignored_stop_signals,
    install_stop_handlers,
)

pytestmark = pytest.mark.usefixtures("restore_signals")


def test_a_stop_is_raised_at_once_outside_a_section() -> None:
    """With the runner's handlers, SIGTERM becomes RunInterrupted right away."""
    install_stop_handlers()
    with pytest.raises(RunInterrupted) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the handler run
    assert caught.value.exit_code == 143


def test_a_deferred_stop_comes_at_the_end_of_the_outermost_section() -> None:
    """Nested sections hold the request until the last one closes; it is raised once."""
    install_stop_handlers()
    reached = []
    with pytest.raises(RunInterrupted) as caught, deferred_stop_signals():
        with deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("inner")
        reached.append("outer")
    assert reached == ["inner", "outer"]
    assert caught.value.signum == signal.SIGINT


def test_a_foreign_handler_is_swapped_for_the_section() -> None:
    """Another handler (an embedding application's) still gets the signal, after the block."""
    seen: list[int] = []

    def theirs(signum: int, _frame: FrameType | None) -> None:
        seen.append(signum)

    signal.signal(signal.SIGTERM, theirs)
    with deferred_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == []
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is theirs


def test_ignored_while_stopping() -> None:
    """A second Ctrl-C during the clean-up is dropped, and the handler comes back after."""
    install_stop_handlers()
    with ignored_stop_signals():
        os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(RunInterrupted):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0)
