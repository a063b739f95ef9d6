"""A script's output: cutting bytes into lines, the capped per-script log, the tail, decoding."""

from __future__ import annotations

import stat
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wizard_runner.scripts.output import (
    MAX_LINE,
    TAIL_BYTES,
    LineSplitter,
    OutputRecord,
    shown_line,
)


def feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[bytes]:
    """Every line the splitter gives for `chunks`, the unterminated rest included."""
    lines: list[bytes] = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    return lines + splitter.flush()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut into chunks at the given offsets."""
    edges = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[start:end] for start, end in pairwise(edges)]


def test_lines_are_split_across_chunks() -> None:
    """A line split over several reads comes out whole, once its newline arrives."""
    splitter = LineSplitter()
    assert splitter.feed(b"hel") == []
    assert splitter.feed(b"lo\nwor") == [b"hello"]
    assert splitter.feed(b"ld\n\nlast") == [b"world", b""]
    assert splitter.flush() == [b"last"]


def test_flush_empties_the_splitter() -> None:
    """Flush returns the unterminated rest once; afterwards nothing is left."""
    splitter = LineSplitter()
    splitter.feed(b"done\npartial")
    assert splitter.flush() == [b"partial"]
    assert splitter.flush() == []
    assert splitter.feed(b"next\n") == [b"next"]


def test_flush_after_a_complete_line_is_empty() -> None:
    """A stream ending with a newline leaves no extra empty line."""
    splitter = LineSplitter()
    assert splitter.feed(b"a\nb\n") == [b"a", b"b"]
    assert splitter.flush() == []


def test_unterminated_long_line_is_cut_at_max_line() -> None:
    """A line with no newline is given out in max_line pieces as soon as each is complete."""
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"defghij") == [b"abcd", b"efgh"]
    assert splitter.flush() == [b"ij"]


def test_memory_stays_bounded_without_newlines() -> None:
    """Megabytes without a newline never leave more than one line's worth pending."""
    splitter = LineSplitter()
    chunk = b"x" * (64 * 1024 + 7)
    pieces: list[bytes] = []
    for _ in range(20):
        pieces += splitter.feed(chunk)
    rest = splitter.flush()
    assert all(len(piece) == MAX_LINE for piece in pieces)
    assert len(rest) == 1
    assert len(rest[0]) < MAX_LINE
    assert sum(map(len, pieces)) + len(rest[0]) == 20 * len(chunk)


@given(
    lines=st.lists(st.binary(max_size=7).filter(lambda b: b"\n" not in b), max_size=12),
    points=st.lists(st.integers(min_value=0), max_size=10),
    terminated=st.booleans(),
)
def test_short_lines_do_not_depend_on_chunking(
    lines: list[bytes], points: list[int], terminated: bool
) -> None:
    """Lines shorter than max_line come out the same however the stream is cut into reads."""
    data = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert feed_all(LineSplitter(max_line=8), cut(data, points)) == expected


@given(
    data=st.binary(max_size=200).filter(lambda b: b"\n" not in b),
    points=st.lists(st.integers(min_value=0), max_size=10),
    max_line=st.integers(min_value=1, max_value=32),
)
def test_newline_free_stream_is_cut_into_bounded_pieces(
    data: bytes, points: list[int], max_line: int
) -> None:
    """Without newlines, every piece is at most max_line bytes and nothing is lost or added."""
    pieces = feed_all(LineSplitter(max_line=max_line), cut(data, points))
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= max_line for piece in pieces)


def test_log_file_holds_stream_prefixed_lines(tmp_path: Path) -> None:
    """Each line lands in the log as `stream: line`, in order, once the record is closed."""
    path = tmp_path / "logs/run-1/10-base.log"
    record = OutputRecord(path)
    assert record.add("stdout", "hello")
    assert record.add("stderr", "oops")
    assert record.add("stdout", "")
    record.close()
    assert path.read_text() == "stdout: hello\nstderr: oops\nstdout: \n"
    assert (record.written, record.truncated) == (36, False)


def test_log_file_and_directory_are_private(tmp_path: Path) -> None:
    """The log's directory is created 0750 and the log file 0640 (outputs may hold secrets)."""
    path = tmp_path / "logs/10-base.log"
    record = OutputRecord(path)
    record.add("stdout", "secret-ish")
    record.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


def test_silent_script_gets_no_log_file(tmp_path: Path) -> None:
    """No output, no file (and no directory): nothing to read there."""
    path = tmp_path / "logs/10-quiet.log"
    OutputRecord(path).close()
    assert not path.parent.exists()


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([b"plain", b"", b"two words"], id="plain"),
        pytest.param([b"caf\xc3\xa9", b"bad \xff\xfe", b"esc \x1b[31m red\r"], id="escapes"),
        pytest.param([b"tab\tkept", b"nul \x00 here"], id="controls"),
    ],
)
def test_batches_write_what_line_by_line_writes(tmp_path: Path, lines: list[bytes]) -> None:
    """add_lines() is add() for each line: same file, same counts, same tail."""
    one, many = OutputRecord(tmp_path / "one.log"), OutputRecord(tmp_path / "many.log")
    for line in lines:
        one.add("stderr", shown_line(line))
    many.add_lines("stderr", lines)
    for record in (one, many):
        record.close()
    assert (tmp_path / "many.log").read_bytes() == (tmp_path / "one.log").read_bytes()
    assert (many.written, many.tail) == (one.written, one.tail)


def test_batch_crossing_the_cap_stops_at_the_last_line_that_fits(tmp_path: Path) -> None:
    """The cap falls inside a batch: whole lines up to it, then the notice, then nothing."""
    path = tmp_path / "x.log"
    record = OutputRecord(path, cap=40)
    record.add_lines("stdout", [b"0123456789"] * 5)  # 19 bytes each in the file
    record.add_lines("stdout", [b"later"])
    record.close()
    text = path.read_text()
    assert text.startswith("stdout: 0123456789\nstdout: 0123456789\n[wizard-runner: output ")
    assert "later" not in text
    assert (record.written, record.truncated) == (38, True)
    assert record.tail.endswith("0123456789\nlater")


def test_log_file_is_replaced_not_appended(tmp_path: Path) -> None:
    """A log left by an earlier run is emptied before the new output is written."""
    path = tmp_path / "10-base.log"
    path.write_text("old output that is much longer than the new one\n")
    record = OutputRecord(path)
    record.add("stdout", "new")
    record.close()
    assert path.read_text() == "stdout: new\n"


def test_cap_stops_the_log_with_one_notice(tmp_path: Path) -> None:
    """Past the cap, lines are refused and one truncation notice ends the log."""
    path = tmp_path / "10-noisy.log"
    record = OutputRecord(path, cap=30)
    assert record.add("stdout", "line 1")  # 15 bytes
    assert record.add("stdout", "line 2")  # 30 bytes: exactly the cap
    assert not record.add("stdout", "line 3")
    assert not record.add("stderr", "x")  # would fit, but the log is closed to lines now
    record.close()
    assert path.read_text() == (
        "stdout: line 1\nstdout: line 2\n"
        "[wizard-runner: output truncated after 30 bytes; "
        "the last lines are in the result's output_tail]\n"
    )
    assert record.truncated
    assert record.written == 30


def test_tail_keeps_lines_after_truncation() -> None:
    """The tail still follows the output once the log is capped, so the end is never lost."""
    record = OutputRecord(None, cap=20)
    for number in range(10):
        record.add("stdout", f"line {number}")
    assert record.truncated
    assert record.tail.endswith("line 8\nline 9")


def test_tail_is_bounded_and_keeps_the_last_lines() -> None:
    """The tail keeps the most recent whole lines and stays within its limit."""
    record = OutputRecord(None)
    for number in range(2000):
        record.add("stdout", f"line {number:05d}")
    tail = record.tail
    assert len(tail) <= TAIL_BYTES
    assert len(tail) > TAIL_BYTES - 20
    assert tail.endswith("line 01998\nline 01999")
    assert tail.startswith("line ")
    assert "line 00000" not in tail


def test_tail_of_one_huge_line_is_its_end() -> None:
    """A single line longer than the limit leaves only its last bytes in the tail."""
    record = OutputRecord(None, tail=10)
    record.add("stdout", "0123456789abcdefghij")
    assert record.tail == "abcdefghij"


def test_record_without_a_path_counts_but_writes_nothing(tmp_path: Path) -> None:
    """With no log directory, lines are still measured, capped and kept in the tail."""
    record = OutputRecord(None, cap=100)
    assert record.add("stdout", "only in memory")
    record.close()
    assert (record.written, record.tail) == (len("stdout: only in memory\n"), "only in memory")
    assert list(tmp_path.iterdir()) == []


SHOWN = [
    pytest.param(b"plain ascii", "plain ascii", id="ascii"),
    pytest.param("café ✓".encode(), "café ✓", id="utf-8"),
    pytest.param(b"bad \xff byte", "bad \\xff byte", id="invalid-byte"),
    pytest.param(b"caf\xc3", "caf\\xc3", id="cut-multibyte"),
    pytest.param("é".encode("latin-1"), "\\xe9", id="latin-1"),
    pytest.param(b"\xed\xa0\x80", "\\xed\\xa0\\x80", id="encoded-surrogate"),
    pytest.param(b"", "", id="empty"),
]


@pytest.mark.parametrize(("raw", "text"), SHOWN)
def test_shown_line_escapes_invalid_utf8(raw: bytes, text: str) -> None:
    """Valid UTF-8 is decoded; every invalid byte is shown as a \\xNN escape."""
    assert shown_line(raw) == text


# C0 but tab, DEL, C1 and the bidirectional overrides: what shown_line escapes.
CONTROL = (set(range(0x20)) - {0x09}) | {0x7F} | set(range(0x80, 0xA0)) | set(
    range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


@given(st.binary(max_size=64))
def test_shown_line_never_fails_and_is_writable(raw: bytes) -> None:
    """Any bytes give printable text that encodes back to strict UTF-8."""
    text = shown_line(raw)
    text.encode("utf-8")
    assert not any(ord(char) in CONTROL for char in text)
    try:
        expected = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert "\\x" in text
    else:
        if not any(ord(char) in CONTROL for char in expected):
            assert text == expected


@given(st.text(max_size=64).filter(lambda t: not any(ord(c) in CONTROL for c in t)))
def test_shown_line_keeps_valid_text(text: str) -> None:
    """Valid UTF-8 without control characters comes back unchanged."""
    assert shown_line(text.encode("utf-8")) == text


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        pytest.param(b"\x1b[2Jclear", "\\x1b[2Jclear", id="escape"),
        pytest.param("\u009b31m".encode(), "\\x9b31m", id="c1-csi"),
        pytest.param("abc\u202edcba".encode(), "abc\\u202edcba", id="bidi-override"),
        pytest.param("x\u2066y\u2069".encode(), "x\\u2066y\\u2069", id="bidi-isolate"),
        pytest.param(b"over\rwrite", "over\\x0dwrite", id="carriage-return"),
        pytest.param(b"nul\x00byte", "nul\\x00byte", id="nul"),
        pytest.param(b"tab\there", "tab\there", id="tab-kept"),
    ],
)
def test_shown_line_escapes_control_characters(raw: bytes, text: str) -> None:
    """Control characters cannot drive the admin's terminal: they are shown escaped."""
    assert shown_line(raw) == text


def test_long_terminated_line_is_cut_too() -> None:
    """A line longer than max_line is cut even when its newline arrives in the same read."""
    splitter = LineSplitter(4)
    assert splitter.feed(b"a" * 10 + b"\n") == [b"aaaa", b"aaaa", b"aa"]
    chunked = LineSplitter(4)
    assert chunked.feed(b"aaaaa") + chunked.feed(b"aaaaa\n") == [b"aaaa", b"aaaa", b"aa"]
    assert LineSplitter(4).feed(b"\n") == [b""]


def test_cap_and_tail_count_bytes(tmp_path: Path) -> None:
    """The cap and the tail are in bytes of UTF-8, not characters."""
    record = OutputRecord(tmp_path / "x.log", cap=100)
    assert record.add("stdout", "é" * 60) is False
    record.close()
    assert len((tmp_path / "x.log").read_bytes()) < 200
    tail = OutputRecord(None)
    for _ in range(100):
        tail.add("stdout", "é" * 100)
    assert len(tail.tail.encode("utf-8")) <= 4096


def test_bulk_mode_tail_follows_the_lines(tmp_path: Path) -> None:
    """Raw output added after the cap extends the tail, escaped and bounded like lines."""
    record = OutputRecord(tmp_path / "x.log", cap=10)
    record.add("stdout", "first")
    record.add_raw(b"second\nthird \x1b[2J\n")
    assert record.tail == "first\nsecond\nthird \\x1b[2J"
    for _ in range(1000):
        record.add_raw(b"y" * 99 + b"\n")
    assert len(record.tail.encode()) <= TAIL_BYTES
    assert record.tail.splitlines()[-1] == "y" * 99
    record.close()


@pytest.mark.parametrize("chunk", [100, 4096, 8192, 1024 * 1024], ids=lambda n: f"{n}B")
def test_bulk_mode_tail_does_not_depend_on_chunk_sizes(tmp_path: Path, chunk: int) -> None:
    """A flood read in big or small chunks leaves the same tail: its last lines, full."""
    data = b"".join(f"line {n:07d} {'z' * 80}\n".encode() for n in range(30000))
    record = OutputRecord(tmp_path / "x.log", cap=0)
    for at in range(0, len(data), chunk):
        record.add_raw(data[at : at + chunk])
    expected = "\n".join(f"line {n:07d} {'z' * 80}" for n in range(30000))
    tail = record.tail
    assert expected.endswith(tail)
    assert len(tail.encode()) > TAIL_BYTES - 100  # as full as the limit allows
    record.close()
