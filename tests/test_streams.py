"""Output streams: written whole to a reader that reads, whatever the descriptor's number."""

from __future__ import annotations

import fcntl
import os

from wizard_runner.streams import SafeStream


def test_a_stream_on_a_descriptor_past_1023_is_written_whole() -> None:
    """An embedding application may hold over a thousand descriptors: a stream on one past
    1023 (beyond what select takes) is still waited on and written, not dropped."""
    read, write = os.pipe()
    high = fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, 1500)
    os.close(write)
    assert high >= 1500
    text = "line\n" * 300  # several pieces
    with os.fdopen(read, "rb") as source, os.fdopen(high, "w") as sink:
        stream = SafeStream(sink)
        assert stream.write(text) == len(text)
        assert not stream.broken
        sink.close()
        assert source.read() == text.encode()
