"""Text that reaches a terminal or a table: control characters and bidirectional overrides
shown escaped, so that a script's name or output cannot drive the terminal or forge a line."""

from __future__ import annotations

from typing import Final

#: C0 controls, DEL and C1 controls as `\xNN`; tab stays (harmless in output lines).
_CONTROLS: Final = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
#: Bidirectional embeddings, overrides and isolates reorder what follows them on screen.
_BIDI: Final = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]

#: Bytes that are not UTF-8, kept by the surrogateescape decoding of a file name: written
#: out, 0x9b would be an 8-bit CSI.
_UNDECODED: Final = {0xDC80 + low: f"\\x{0x80 + low:02x}" for low in range(0x80)}

#: For output lines: every control but tab.
OUTPUT: Final = {code: f"\\x{code:02x}" for code in _CONTROLS if code != 0x09} | {
    code: f"\\u{code:04x}" for code in _BIDI} | _UNDECODED
#: For text holding many lines: the same, newlines kept.
OUTPUT_LINES: Final = {code: text for code, text in OUTPUT.items() if code != 0x0A}
#: For names and paths in a table or a one-line message: tab escaped too.
NAME: Final = OUTPUT | {0x09: "\\x09"}


def printable(text: str) -> str:
    """A name, path or message as a terminal may show it, on one line."""
    return text.translate(NAME)


def printable_lines(text: str) -> str:
    """Text of many lines as a terminal may show it: each line as `printable` shows it, but
    a tab, which is harmless in lines of output."""
    return text.translate(OUTPUT_LINES)
