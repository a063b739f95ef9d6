"""The Python API confd imports."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, snapshot
from wizard_runner import api
from wizard_runner.fsio import RunLock
from wizard_runner.layout import Layout


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda b: b, id="dict"),
        pytest.param(json.dumps, id="str"),
        pytest.param(lambda b: json.dumps(b).encode(), id="bytes"),
        pytest.param(api.validate, id="config"),
    ],
)
def test_validate_accepts_every_form(body: dict[str, Any], form: Any) -> None:
    """A dict, JSON text, JSON bytes or a config all validate to the same config."""
    assert api.validate(form(body)) == api.validate(body)


def test_validate_raises_with_problems(body: dict[str, Any]) -> None:
    """A bad body raises ConfigError listing each problem."""
    body["network"]["gateway"] = "10.0.1.1"
    with pytest.raises(api.ConfigError) as caught:
        api.validate(body)
    assert caught.value.problems == ("network.gateway: 10.0.1.1 is not in 192.168.50.0/24",)
    assert caught.value.exit_code == 65


@pytest.mark.processes
def test_run_returns_the_result_and_keeps_signal_handlers(
    body: dict[str, Any], sandbox: Path
) -> None:
    """api.run applies the body, returns the stored result, and leaves signals alone."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    logs = io.StringIO()
    result = api.run(body, root=sandbox, log_stream=logs)
    assert result.status is api.RunStatus.SUCCEEDED
    assert result.exit_code == 0
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    stored = json.loads((sandbox / "var/lib/wizard-runner/last-run.json").read_text())
    assert stored == result.to_dict()
    assert all(json.loads(line)["run_id"] == result.run_id for line in logs.getvalue().splitlines())


@pytest.mark.processes
def test_dry_run_writes_nothing(body: dict[str, Any], sandbox: Path) -> None:
    """api.dry_run returns the diff and leaves the root untouched."""
    before = snapshot(sandbox)
    preview = api.dry_run(body, root=sandbox)
    assert "+192.168.50.10\tpbx.acme.example\tpbx" in preview.diff
    assert snapshot(sandbox) == before


def test_run_refused_while_locked(body: dict[str, Any], sandbox: Path) -> None:
    """A run while another holds the lock raises LockedError (exit 75)."""
    with RunLock(Layout(sandbox).lock_file), pytest.raises(api.LockedError):
        api.run(body, root=sandbox)


def test_invalid_body_writes_nothing(body: dict[str, Any], sandbox: Path) -> None:
    """api.run validates first: an invalid body raises and the root is untouched."""
    before = snapshot(sandbox)
    body["network"]["nameservers"] = ["8.8.8.8; rm -rf /"]
    with pytest.raises(api.ConfigError):
        api.run(body, root=sandbox)
    assert snapshot(sandbox) == before


def test_examples_validate() -> None:
    """Every shipped example body is valid."""
    for path in EXAMPLES.glob("*.json"):
        api.validate(path.read_bytes())
