"""confd's whole path through the installed package: `submit` as www-data, the root daemon
runs the wizard in a sandbox, the answer comes back with the scripts' output."""

from __future__ import annotations

import json
from pathlib import Path

from tests.package.conftest import (
    BINARY,
    PACKAGE_TEST,
    Daemon,
    as_www_data,
    mode_owner,
    needs_root,
    run,
    wizard_body,
)

pytestmark = [*PACKAGE_TEST, needs_root]


def test_submit_as_www_data_is_answered_by_the_daemon(daemon: Daemon,
                                                      sandbox_root: Path) -> None:
    """www-data submits and waits; the daemon (root) writes the files, runs the scripts as
    www-data, and the answer carries their output; confd can read it, not the saved body."""
    done = run(as_www_data([BINARY, "submit", "--root", sandbox_root, "--config", "-",
                            "--wait", "--json", "--timeout", "90"]),
               input_text=wizard_body(run_scripts=True))
    record = json.loads(done.stdout)
    assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
    result = record["result"]
    assert result["request_id"] == record["request_id"]
    scripts = {s["name"]: s for s in result["scripts"]}
    assert [(name, s["status"]) for name, s in scripts.items()] == [
        ("10-check-identity", "succeeded"), ("50-summary.sh", "succeeded"),
        ("README", "skipped"),
    ]
    assert "ok: /etc/hostname is pbx\n" in scripts["10-check-identity"]["output_tail"]
    assert f"run:         {result['run_id']}, as www-data" in scripts["50-summary.sh"]["output_tail"]
    assert (sandbox_root / "etc/hostname").read_text() == "pbx\n"

    answer = sandbox_root / "var/spool/wizard-runner/done" / f"{record['request_id']}.json"
    assert mode_owner(answer) == (0o640, "root", "www-data")
    saved = sandbox_root / "var/lib/wizard-runner/config.json"
    assert mode_owner(saved) == (0o600, "root", "root")
    assert run(as_www_data(["cat", saved]), check=False).returncode != 0
    status = run(as_www_data([BINARY, "status", "--root", sandbox_root, "--json"]))
    assert json.loads(status.stdout)["run_id"] == result["run_id"]

    assert daemon.stop() == 0


def test_invalid_body_is_refused_before_the_spool(sandbox_root: Path) -> None:
    """An invalid body never reaches the spool: `submit` says what is wrong, exit 65."""
    run([BINARY, "setup-dirs", "--root", sandbox_root])
    body = json.loads(wizard_body(run_scripts=False))
    body["network"]["gateway"] = "10.0.1.1"
    done = run(as_www_data([BINARY, "submit", "--root", sandbox_root, "--config", "-",
                            "--wait", "--timeout", "30"]),
               input_text=json.dumps(body), check=False)
    assert done.returncode == 65
    assert "network.gateway: 10.0.1.1 is not in 192.168.50.0/24" in done.stderr
    assert list((sandbox_root / "var/spool/wizard-runner/incoming").iterdir()) == []
