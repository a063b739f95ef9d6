"""The request spool: atomic submission, untrusting reads, results and retention."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from wizard_runner.errors import ConfigError
from wizard_runner.layout import Layout
from wizard_runner.spool import (
    REQUEST_ID,
    RequestRejectedError,
    Spool,
    SpoolError,
    discard,
    new_request_id,
    prepare,
    prune_done,
    read_request,
    remove_stale_temps,
    submit,
    wait_result,
    write_result,
)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """A prepared spool under a tmp root."""
    found = Spool.of(Layout(tmp_path))
    prepare(found, 33)
    return found


@needs_root
def test_prepare_sets_the_documented_modes(spool: Spool) -> None:
    """incoming 1730 root:www-data, processing 0700, done 0750 root:www-data."""
    expected = {"incoming": (0o1730, 33), "processing": (0o700, 0), "done": (0o750, 33)}
    for name, (mode, gid) in expected.items():
        info = (spool.base / name).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, 0, gid), name


def test_submit_is_atomic_and_validated(spool: Spool, body: dict[str, Any]) -> None:
    """A valid body lands as <id>.json (no temp left); an invalid one is refused unwritten."""
    request_id = submit(spool, json.dumps(body).encode())
    assert REQUEST_ID.fullmatch(request_id)
    assert os.listdir(spool.incoming) == [f"{request_id}.json"]
    assert json.loads((spool.incoming / f"{request_id}.json").read_text()) == body
    assert stat.S_IMODE((spool.incoming / f"{request_id}.json").stat().st_mode) == 0o600
    body["network"]["hostname"] = "bad host"
    with pytest.raises(ConfigError):
        submit(spool, json.dumps(body).encode())
    assert len(os.listdir(spool.incoming)) == 1


def test_submit_without_spool(tmp_path: Path, body: dict[str, Any]) -> None:
    """Submitting with no daemon spool says so (exit 69)."""
    with pytest.raises(SpoolError, match="is wizard-runnerd installed and started") as caught:
        submit(Spool.of(Layout(tmp_path)), json.dumps(body).encode())
    assert caught.value.exit_code == 69


def test_request_ids_are_unique_and_sortable() -> None:
    """Ids start with their UTC time and never repeat."""
    ids = [new_request_id() for _ in range(500)]
    assert len(set(ids)) == 500
    assert all(REQUEST_ID.fullmatch(i) for i in ids)


def hard_link(path: Path) -> None:
    """A request that is a second name of another (root-owned) file."""
    original = path.with_name("root-config.json")
    original.write_text('{"network": {"hostname": "a secret value"}}')
    os.link(original, path)


def foreign(path: Path) -> None:
    """A request file owned by a stranger."""
    path.write_text("{}")
    os.chown(path, 4242, 4242)


@pytest.mark.parametrize(
    ("make", "reason", "code"),
    [
        pytest.param(lambda p: p.symlink_to("/etc/shadow"), "a symlink", 65, id="symlink"),
        pytest.param(os.mkfifo, "not a regular file", 65, id="fifo"),
        pytest.param(lambda p: p.mkdir(), "not a regular file", 65, id="directory"),
        pytest.param(lambda p: p.write_bytes(b" " * (64 * 1024 + 1)), "larger than 65536",
                     65, id="oversized"),
        pytest.param(foreign, "owned by uid 4242", 77, id="foreign-owner"),
        pytest.param(hard_link, "a hard link", 65, id="hard-link"),
    ],
)
def test_untrusted_requests_are_rejected(
    tmp_path: Path, make: Any, reason: str, code: int
) -> None:
    """Links, special files, big files and foreign owners are refused without blocking."""
    if code == 77 and os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = tmp_path / "request.json"
    make(path)
    started = time.monotonic()
    with pytest.raises(RequestRejectedError, match=reason) as caught:
        read_request(path, {0, 33})
    assert caught.value.exit_code == code
    assert time.monotonic() - started < 1  # a FIFO must not block the daemon


def test_write_and_wait_result(spool: Spool) -> None:
    """A stored result is found by its id; a missing one times out with a clear error."""
    write_result(spool, "r1", {"status": "succeeded", "exit_code": 0}, 33)
    assert wait_result(spool, "r1", 1) == {"status": "succeeded", "exit_code": 0}
    assert stat.S_IMODE(spool.result_path("r1").stat().st_mode) == 0o640
    with pytest.raises(SpoolError, match=r"no result for request r2 within 0\.2 s"):
        wait_result(spool, "r2", 0.2)


def test_retention_by_age_and_count(spool: Spool) -> None:
    """Results older than the limit go, then the oldest beyond the count."""
    now = time.time()
    for index in range(10):
        path = write_result(spool, f"r{index:02d}", {"n": index}, 33)
        age = (40 if index < 3 else 10 - index) * 86400
        os.utime(path, (now - age, now - age))
    removed = prune_done(spool, days=30, count=5)
    assert removed == 5
    assert sorted(os.listdir(spool.done)) == [f"r{i:02d}.json" for i in range(5, 10)]


def test_stale_temps_are_removed(spool: Spool) -> None:
    """A temp file a dead submitter left for an hour is removed; a fresh one stays."""
    old = spool.incoming / ".old.tmp"
    fresh = spool.incoming / ".fresh.tmp"
    old.write_text("x")
    fresh.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    remove_stale_temps(spool)
    assert sorted(os.listdir(spool.incoming)) == [".fresh.tmp"]


def test_discard_removes_whatever_was_claimed(spool: Spool, tmp_path: Path) -> None:
    """A claimed request that is a directory full of junk, or a link, is removed; links are
    not followed."""
    target = tmp_path / "keep"
    target.write_text("precious")
    junk = spool.processing / "x.json"
    (junk / "deep").mkdir(parents=True)
    (junk / "deep" / "link").symlink_to(target)
    discard(spool, junk)
    link = spool.processing / "y.json"
    link.symlink_to(target)
    discard(spool, link)
    assert os.listdir(spool.processing) == []
    assert target.read_text() == "precious"


def test_too_deep_a_tree_goes_to_quarantine(spool: Spool) -> None:
    """A tree deeper than Python can walk is moved aside, never a crash."""
    top = spool.processing / "deep.json"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1100):  # one level at a time: os.makedirs itself would recurse too deep
        os.mkdir("a", dir_fd=fd)
        inner = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    discard(spool, top)
    assert not top.exists()
    [moved] = (spool.base / "quarantine").iterdir()
    remove_chain(moved)  # pytest's own clean-up of tmp dirs would recurse too deep


def remove_chain(top: Path) -> None:
    """Remove a chain of nested directories top/a/a/... one level at a time, no recursion."""
    while (top / "a").exists():
        lifted = top.with_name(top.name + "-")
        os.rename(top / "a", lifted)
        os.rmdir(top)
        lifted.rename(top)
    os.rmdir(top)


def test_odd_hidden_names_go_at_once(spool: Spool) -> None:
    """Hidden entries that are not a submitter's temp file are removed without waiting."""
    (spool.incoming / ".junk").write_text("x")
    (spool.incoming / ".dir").mkdir()
    (spool.incoming / ".20261125T000000Z-abc.tmp").write_text("x")
    remove_stale_temps(spool)
    assert os.listdir(spool.incoming) == [".20261125T000000Z-abc.tmp"]


def test_read_request_returns_owner(tmp_path: Path) -> None:
    """A good request comes back with its bytes and owner."""
    path = tmp_path / "r.json"
    path.write_text("{}")
    found = read_request(path, {os.geteuid()})
    assert (found.data, found.owner) == (b"{}", os.geteuid())
