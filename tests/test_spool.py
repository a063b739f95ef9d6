"""The request spool: atomic submission, untrusting reads, results and retention."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from tests.helpers import as_www_data, presence_holder, traversable_dir, www_data
from wizard_runner.config import parse_config
from wizard_runner.errors import ConfigError, RunInterrupted, RunnerIOError
from wizard_runner.fsio import write_all
from wizard_runner.layout import Layout
from wizard_runner.presence import PresenceLock
from wizard_runner.signals import install_stop_handlers
from wizard_runner.spool import (
    REQUEST_ID,
    RESTART_GRACE_SECONDS,
    AnswerTimeoutError,
    NoDaemonError,
    RequestRejectedError,
    Spool,
    SpoolError,
    SubmitInterruptedError,
    close_spool,
    closed_marker,
    daemon_serving,
    discard,
    new_request_id,
    prepare,
    prune_done,
    read_answer,
    read_request,
    remove_stale_temps,
    reopen_spool,
    spool_closed,
    submit,
    submit_and_wait,
    wait_result,
    withdraw,
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
    """A stored answer is found by its id, 0640."""
    write_result(spool, "r1", {"status": "succeeded", "exit_code": 0}, 33)
    assert wait_result(spool, "r1", 1) == {"status": "succeeded", "exit_code": 0}
    assert stat.S_IMODE(spool.result_path("r1").stat().st_mode) == 0o640


def test_timeout_withdraws_a_waiting_request(spool: Spool, body: dict[str, Any]) -> None:
    """A request still in incoming/ at the timeout is taken back: nothing will run it."""
    request_id = submit(spool, json.dumps(body).encode())
    with PresenceLock(spool.presence), pytest.raises(AnswerTimeoutError) as caught:
        wait_result(spool, request_id, 0.2)
    assert str(caught.value) == (f"no answer to request {request_id} within 0.2 s: request "
                                 f"{request_id} withdrawn, nothing was run")
    assert (caught.value.exit_code, caught.value.status) == (69, "withdrawn")
    assert caught.value.to_dict()["status"] == "withdrawn"
    assert os.listdir(spool.incoming) == []


def test_timeout_after_the_claim_says_where_the_answer_will_be(spool: Spool,
                                                               body: dict[str, Any]) -> None:
    """A request the daemon has claimed stays with it: the error names done/ID.json."""
    request_id = submit(spool, json.dumps(body).encode())
    claim(spool, request_id)
    with PresenceLock(spool.presence), pytest.raises(AnswerTimeoutError) as caught:
        wait_result(spool, request_id, 0.2)
    answer = spool.result_path(request_id)
    assert str(caught.value).endswith(
        "is claimed by the daemon (running, or waiting for a run already going on to end): "
        f"its answer will be in {answer}")
    assert (caught.value.status, caught.value.answer) == ("claimed", answer)
    assert caught.value.to_dict()["answer"] == str(answer)


def test_a_damaged_kept_answer_is_waited_past(spool: Spool, body: dict[str, Any]) -> None:
    """What the daemon keeps under /run, if unreadable, is not the answer: the wait goes on
    for the one in done/ (here it times out, saying where that will be)."""
    request_id = submit(spool, json.dumps(body).encode())
    claim(spool, request_id)
    spool.unwritten.mkdir(parents=True)
    spool.kept_path(request_id).write_text("{not json")
    with PresenceLock(spool.presence), pytest.raises(AnswerTimeoutError) as caught:
        wait_result(spool, request_id, 0.2)
    assert caught.value.status == "claimed"
    spool.kept_path(request_id).write_text('{"status": "failed", "exit_code": 74}')
    assert wait_result(spool, request_id, 0.2) == {"status": "failed", "exit_code": 74}


def test_an_answer_at_the_deadline_is_returned(spool: Spool, body: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer written between the last look and the give-up is returned, not an error."""
    request_id = submit(spool, json.dumps(body).encode())
    claim(spool, request_id)

    def answered_meanwhile(found: Spool, found_id: str) -> bool:
        write_result(found, found_id, {"status": "succeeded", "exit_code": 0}, 33)
        return False

    monkeypatch.setattr("wizard_runner.spool.withdraw", answered_meanwhile)
    with PresenceLock(spool.presence):
        assert wait_result(spool, request_id, 0.1)["status"] == "succeeded"


def test_no_daemon_withdraws_within_the_grace(spool: Spool, body: dict[str, Any]) -> None:
    """With no daemon and no timeout, the wait ends after the grace period, withdrawn."""
    request_id = submit(spool, json.dumps(body).encode())
    started = time.monotonic()
    with pytest.raises(NoDaemonError) as caught:
        wait_result(spool, request_id, None, grace=0.3)
    assert time.monotonic() - started < 3
    assert str(caught.value) == (f"no daemon is serving {spool.base}: request {request_id} "
                                 "withdrawn, nothing was run (start wizard-runnerd)")
    assert os.listdir(spool.incoming) == []


def test_no_daemon_after_the_claim(spool: Spool, body: dict[str, Any]) -> None:
    """A daemon that died after claiming: the answer comes when it restarts."""
    request_id = submit(spool, json.dumps(body).encode())
    claim(spool, request_id)
    with pytest.raises(NoDaemonError) as caught:
        wait_result(spool, request_id, None, grace=0.3)
    assert str(caught.value) == (
        f"no daemon is serving {spool.base}: request {request_id} was claimed before the "
        f"daemon stopped: its answer will be in {spool.result_path(request_id)} once a "
        "daemon serves again")
    assert caught.value.exit_code == 69


@pytest.mark.processes
def test_a_stopped_daemon_is_named_with_how_to_continue_it(spool: Spool,
                                                           body: dict[str, Any]) -> None:
    """The daemon that claimed the request is stopped (SIGSTOP): the waiter gives up naming
    it, and says how to let it go on."""
    request_id = submit(spool, json.dumps(body).encode())
    claim(spool, request_id)
    with presence_holder(spool.presence) as holder:
        holder.send_signal(signal.SIGSTOP)
        with pytest.raises(NoDaemonError) as caught:
            wait_result(spool, request_id, None, grace=0.3)
    assert str(caught.value).startswith(
        f"the daemon serving {spool.base} is stopped (pid {holder.pid}: `kill -CONT "
        f"{holder.pid}` lets it go on): request {request_id} was claimed")


def test_a_present_daemon_is_waited_for(spool: Spool, body: dict[str, Any]) -> None:
    """While the daemon is present, the grace never runs out: only the timeout ends it."""
    request_id = submit(spool, json.dumps(body).encode())
    with PresenceLock(spool.presence), pytest.raises(AnswerTimeoutError):
        wait_result(spool, request_id, 1.5, grace=0.2)


@pytest.mark.parametrize(("age", "mode"), [(0.0, "file"), (RESTART_GRACE_SECONDS + 5, "file"),
                                           (0.0, "symlink"), (0.0, "directory")])
def test_a_daemon_restarting_for_an_upgrade_is_waited_for(
        spool: Spool, body: dict[str, Any], age: float, mode: str) -> None:
    """A fresh `restarting` mark (a package upgrade stops the daemon and starts the new one)
    counts as a daemon: only the timeout ends the wait, and the request is still withdrawn
    then. A stale mark (an upgrade that failed), or one that is no regular file, does not."""
    request_id = submit(spool, json.dumps(body).encode())
    if mode == "file":
        spool.restarting.touch()
        os.utime(spool.restarting, (time.time() - age,) * 2)
    elif mode == "symlink":
        spool.restarting.symlink_to(spool.base / "elsewhere")
    else:
        spool.restarting.mkdir()
    waited_for = mode == "file" and not age
    with pytest.raises(AnswerTimeoutError if waited_for else NoDaemonError):
        wait_result(spool, request_id, 2.5, grace=0.2)  # (presence is looked at each 1 s)
    assert os.listdir(spool.incoming) == []


@pytest.mark.parametrize(
    ("stop", "code", "name"),
    [
        pytest.param(KeyboardInterrupt(), 130, "SIGINT", id="ctrl-c"),
        pytest.param(RunInterrupted(signal.SIGTERM), 143, "SIGTERM", id="sigterm"),
        pytest.param(RunInterrupted(signal.SIGHUP), 129, "SIGHUP", id="sighup"),
    ],
)
def test_a_stop_while_waiting_withdraws(spool: Spool, body: dict[str, Any],
                                        monkeypatch: pytest.MonkeyPatch, stop: BaseException,
                                        code: int, name: str) -> None:
    """Ctrl-C, SIGTERM or SIGHUP while waiting: withdrawn, exit 128 + the signal."""
    request_id = submit(spool, json.dumps(body).encode())

    def stopped(_seconds: float) -> None:
        raise stop

    monkeypatch.setattr("wizard_runner.spool.time.sleep", stopped)
    with PresenceLock(spool.presence), pytest.raises(SubmitInterruptedError) as caught:
        wait_result(spool, request_id, None)
    assert str(caught.value) == (f"interrupted by {name}: request {request_id} withdrawn, "
                                 "nothing was run")
    assert caught.value.exit_code == code
    assert caught.value.__cause__ is stop
    assert os.listdir(spool.incoming) == []


def test_a_stop_during_the_drop_leaves_nothing(spool: Spool, body: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch,
                                               restore_signals: None) -> None:
    """SIGINT while the request is written is held until it is in place, then withdraws it:
    no temp file, no request."""
    def write_then_signal(fd: int, data: bytes) -> None:
        signal.raise_signal(signal.SIGINT)
        write_all(fd, data)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr("wizard_runner.spool.write_all", write_then_signal)
    with pytest.raises(SubmitInterruptedError) as caught:
        submit_and_wait(spool, json.dumps(body).encode(), None)
    assert caught.value.status == "withdrawn"
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    assert os.listdir(spool.incoming) == []


@pytest.mark.parametrize("wait", [False, True], ids=["submit", "submit-and-wait"])
def test_a_stop_while_the_body_is_checked_queues_nothing(
    spool: Spool, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    restore_signals: None, wait: bool,
) -> None:
    """SIGTERM while the body is validated (the runner's handlers record it): nothing is
    dropped into incoming/, so a daemon can never claim it in between."""
    install_stop_handlers()
    dropped: list[str] = []

    def check_then_signal(data: bytes, source: str) -> object:
        os.kill(os.getpid(), signal.SIGTERM)
        return parse_config(data, source)

    monkeypatch.setattr("wizard_runner.spool.parse_config", check_then_signal)
    monkeypatch.setattr("wizard_runner.spool._drop", lambda *args: dropped.append("dropped"))
    data = json.dumps(body).encode()
    with pytest.raises(SubmitInterruptedError) as caught:
        if wait:
            submit_and_wait(spool, data, None)
        else:
            submit(spool, data)
    assert caught.value.status == "not_submitted"
    assert caught.value.exit_code == 143
    assert dropped == []


def test_withdraw_loses_to_the_claim(spool: Spool, body: dict[str, Any]) -> None:
    """Withdrawing a request the daemon claimed finds nothing and says so."""
    first = submit(spool, json.dumps(body).encode())
    second = submit(spool, json.dumps(body).encode())
    claim(spool, first)
    assert not withdraw(spool, first)
    assert withdraw(spool, second)
    assert os.listdir(spool.incoming) == []
    assert os.listdir(spool.processing) == [f"{first}.json"]


def test_a_withdrawal_cut_short_is_cleared(spool: Spool) -> None:
    """The hidden name a withdrawal renames to is removed by the daemon's clean-up at once."""
    (spool.incoming / ".20261125T000000Z-abcdef012345.withdrawn").write_text("{}")
    remove_stale_temps(spool)
    assert os.listdir(spool.incoming) == []


@pytest.fixture
def shared_spool() -> Iterator[Spool]:
    """A prepared spool under a root www-data can traverse."""
    with traversable_dir() as base:
        found = Spool.of(Layout(base))
        prepare(found, www_data()[1])
        yield found


@needs_root
def test_www_data_withdraws_its_own_request_only(shared_spool: Spool,
                                                 body: dict[str, Any]) -> None:
    """In the sticky incoming/, www-data can take back its own request, not root's."""
    data = json.dumps(body).encode()

    def submit_and_withdraw() -> list[object]:
        request_id = submit(shared_spool, data)
        return [request_id, withdraw(shared_spool, request_id)]

    outcome = as_www_data(submit_and_withdraw)
    assert outcome["value"][1] is True
    assert os.listdir(shared_spool.incoming) == []
    foreign = submit(shared_spool, data)
    refused = as_www_data(lambda: withdraw(shared_spool, foreign))
    assert refused["error"] == (f"SpoolError: {shared_spool.request_path(foreign)}: cannot "
                                "withdraw the request: Operation not permitted")
    assert os.listdir(shared_spool.incoming) == [f"{foreign}.json"]


def test_daemon_serving(spool: Spool) -> None:
    """The client's test follows the presence lock."""
    assert not daemon_serving(spool)
    with PresenceLock(spool.presence):
        assert daemon_serving(spool)


def age(path: Path, seconds: float) -> None:
    """Make a file look `seconds` old."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def answer(spool: Spool, request_id: str, submitted_by: int | None, seconds: float) -> None:
    """An answer for `submitted_by`, `seconds` old."""
    record = {"request_id": request_id, "status": "rejected", "submitted_by": submitted_by}
    age(write_result(spool, request_id, record, 33), seconds)


def test_prune_keeps_every_submitters_latest(spool: Spool) -> None:
    """A flood from one submitter never evicts another's answers, nor any answer younger
    than the safe age; the flooder's old answers beyond its count go, and so does what is
    older than the retention."""
    hour, day = 3600, 86400
    for index in range(3):
        answer(spool, f"root-{index}", 0, 2 * day + index)
    for index in range(50):
        answer(spool, f"old-{index:02d}", 33, 2 * hour + index)
    for index in range(30):
        answer(spool, f"young-{index:02d}", 33, 60 + index)
    answer(spool, "ancient", 0, 40 * day)
    answer(spool, "legacy", None, 3 * day)  # written before answers said who submitted them
    temp = spool.done / ".x.json.0000.wizard-runner-tmp"
    temp.write_text("")
    age(temp, 2 * hour)
    removed = prune_done(spool, days=30, per_submitter=10, safe_age=hour)
    left = set(os.listdir(spool.done))
    assert left == ({f"root-{i}.json" for i in range(3)} | {"legacy.json"}
                    | {f"young-{i:02d}.json" for i in range(30)})
    assert removed == 50 + 1 + 1


def test_prune_by_count_among_old_answers(spool: Spool) -> None:
    """Past the safe age, each submitter keeps exactly its latest answers."""
    for index in range(8):
        answer(spool, f"a-{index}", 33, 7200 + index * 60)
    prune_done(spool, days=30, per_submitter=3, safe_age=3600)
    assert sorted(os.listdir(spool.done)) == ["a-0.json", "a-1.json", "a-2.json"]


def test_close_and_reopen(tmp_path: Path) -> None:
    """Closing writes the root-owned marker; reopening removes it, once."""
    layout = Layout(tmp_path)
    assert not spool_closed(layout)
    close_spool(layout, "r1", "run1")
    assert spool_closed(layout)
    marker = closed_marker(layout)
    assert json.loads(marker.read_text())["request_id"] == "r1"
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644
    assert reopen_spool(layout)
    assert not spool_closed(layout)
    assert not reopen_spool(layout)


def test_a_marker_that_cannot_be_removed_is_named(tmp_path: Path) -> None:
    """A directory where the closed marker is: reopening says so, exit 74 (the runner's own
    files), not the 'no daemon' code."""
    layout = Layout(tmp_path)
    closed_marker(layout).mkdir(parents=True)
    with pytest.raises(RunnerIOError, match="cannot reopen the spool: Is a directory") as caught:
        reopen_spool(layout)
    assert caught.value.exit_code == 74


@needs_root
def test_www_data_cannot_reopen() -> None:
    """www-data can see the spool is closed but cannot remove the marker."""
    with traversable_dir() as base:
        layout = Layout(base)
        close_spool(layout, "r1", "run1")
        assert as_www_data(lambda: spool_closed(layout)) == {"value": True}
        refused = as_www_data(lambda: reopen_spool(layout))
        assert refused["error"] == (f"PrivilegeError: {closed_marker(layout)}: cannot reopen "
                                    "the spool: Permission denied")
        assert spool_closed(layout)


def claim(spool: Spool, request_id: str) -> None:
    """Do what the daemon does to claim a request."""
    os.rename(spool.request_path(request_id), spool.processing / f"{request_id}.json")


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


@pytest.mark.parametrize(("content", "why"), [
    pytest.param(None, "larger than 64 MiB", id="huge"),
    pytest.param(b"[1]", "not a JSON object", id="a-list"),
    pytest.param(b"{", "not a valid answer: Expecting", id="truncated"),
])
def test_an_answer_that_is_not_one_is_named(tmp_path: Path, content: bytes | None,
                                            why: str) -> None:
    """A huge (sparse, 3 GiB), non-object or cut answer: SpoolError naming it and why, the
    huge one read only just past the limit."""
    path = tmp_path / "answer.json"
    if content is None:
        path.touch()
        os.truncate(path, 3 << 30)
    else:
        path.write_bytes(content)
    with pytest.raises(SpoolError, match=f"^{path}: not a valid answer: .*"):
        read_answer(path)
    with pytest.raises(SpoolError, match=why):
        read_answer(path)
