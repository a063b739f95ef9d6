"""The cyclic garbage collector in the console script: off while the command starts, on again
for the parts that may last (a scripts step, the daemon, a wait for an answer).

Start-up (imports, the models' validators, the command line) makes long-lived objects and next
to no garbage cycles, yet the collector would walk them again and again. Embedded (the Python
API in confd), nothing here changes the application's collector: only the console script
pauses it. (Its exit skips the interpreter's tear-down, last collection included: entry.py.)
"""

from __future__ import annotations

import gc


class _State:
    paused = False  # the console script turned it off until a part that may last begins


def pause() -> None:
    """The console script starts: no collection until a part that may last begins."""
    if gc.isenabled():
        gc.disable()
        _State.paused = True


def resume() -> None:
    """A part that may last begins: what start-up made is moved out of the collector's way
    (gc.freeze), and collection resumes. Nothing when the collector was not paused here."""
    if _State.paused:
        _State.paused = False
        gc.freeze()
        gc.enable()

