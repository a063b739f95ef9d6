"""The cyclic garbage collector in the console script: off while the command starts, on again
for the parts that may last (a scripts step, the daemon, a wait for an answer), and skipped at
exit.

Start-up (imports, the models' validators, the command line) makes long-lived objects and next
to no garbage cycles, yet the collector would walk them again and again; and the interpreter's
last collection at exit only examines what the process is about to drop. Embedded (the Python
API in confd), nothing here changes the application's collector: only the console script
pauses it.
"""

from __future__ import annotations

import gc


class _State:
    ours = False  # the console script took the collector over (it was on)
    paused = False  # ... and keeps it off until a part that may last begins


def pause() -> None:
    """The console script starts: no collection until a part that may last begins."""
    if gc.isenabled():
        gc.disable()
        _State.ours = _State.paused = True


def resume() -> None:
    """A part that may last begins: what start-up made is moved out of the collector's way
    (gc.freeze), and collection resumes. Nothing when the collector was not paused here."""
    if _State.paused:
        _State.paused = False
        gc.freeze()
        gc.enable()


def skip_at_exit() -> None:
    """The outcome is said: the interpreter's last collection would only walk objects the
    process is about to drop (those in reference cycles are left to the kernel). Nothing when
    the collector was not taken over here."""
    if _State.ours:
        gc.disable()
        gc.freeze()
