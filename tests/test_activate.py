"""Live follow-ups on the real root, driven against stand-in tools that record their calls."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from tests.conftest import EXAMPLES, needs_root
from wizard_runner.activate import NetworkChange, follow_up, not_live
from wizard_runner.config import WizardConfig

pytestmark = pytest.mark.processes
LOG = structlog.get_logger()
#: The old file had eth0 (and eth1, which the wizard's block configured) up; its copy.
BEFORE = NetworkChange("/backup/interfaces", frozenset({"eth0", "eth1"}))


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of stand-in tools on the runner's PATH; each appends its argv to calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("hostname", "postmap", "postfix", "ifdown", "ifup"):
        install_tool(bin_dir, name, "exit 0")
    monkeypatch.setattr("wizard_runner.tools.SYSTEM_PATH", str(bin_dir))
    return bin_dir


def install_tool(bin_dir: Path, name: str, body: str) -> None:
    """Write a stand-in tool that records its call, then runs `body`."""
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> {bin_dir / "calls"}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def calls(bin_dir: Path) -> list[str]:
    """The recorded calls, in order."""
    path = bin_dir / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_hostname_and_postfix_follow_ups(config: WizardConfig, tools: Path) -> None:
    """A new host name is set live; canonical is compiled and a running postfix reloaded."""
    done = follow_up(config, frozenset({"/etc/hostname", "/etc/postfix/canonical"}), LOG,
                     apply_network=False)
    assert calls(tools) == [
        "hostname -F /etc/hostname",
        "postmap hash:/etc/postfix/canonical",
        "postfix status",
        "postfix reload",
    ]
    assert [(a.name, a.status) for a in done.actions] == [
        ("hostname", "succeeded"), ("postmap", "succeeded"), ("postfix_reload", "succeeded")
    ]
    assert done.pending == ()


def test_stopped_postfix_is_not_reloaded(config: WizardConfig, tools: Path) -> None:
    """When postfix is not running, the reload is skipped with the reason."""
    install_tool(tools, "postfix", 'test "$1" = status && exit 1; exit 0')
    done = follow_up(config, frozenset({"/etc/postfix/main.cf"}), LOG, apply_network=False)
    assert calls(tools) == ["postfix status"]
    assert done.actions[0].status == "skipped"
    assert done.actions[0].detail is not None
    assert "not running" in done.actions[0].detail


def test_network_change_is_pending_by_default(config: WizardConfig, tools: Path) -> None:
    """A changed interfaces file is not applied live; the result says how to apply it."""
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=False)
    assert calls(tools) == []
    assert done.actions == ()
    assert len(done.pending) == 1
    assert "ifdown --force eth0; ifup eth0" in done.pending[0]
    assert "--apply-network" in done.pending[0]


def test_apply_network_restarts_the_interface(config: WizardConfig, tools: Path) -> None:
    """--apply-network takes the interface down as the old file configured it (a DHCP client
    is stopped, its address released), then up from the new one."""
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=True,
                     network=BEFORE)
    assert calls(tools) == ["ifdown --force --interfaces=/backup/interfaces eth0", "ifup eth0"]
    assert done.pending == ()


@pytest.mark.parametrize("network", [
    pytest.param(NetworkChange(), id="no-old-file"),
    pytest.param(NetworkChange("/backup/interfaces", frozenset({"eth1"})), id="no-inet-stanza"),
])
def test_an_interface_the_old_file_lacked_is_taken_down_from_the_new_one(
        config: WizardConfig, tools: Path, network: NetworkChange) -> None:
    """No old file (or a symlink), or one without an IPv4 stanza for the interface (an inet6
    one keeps it up: a lone ifup would say "already configured" and apply nothing): it is
    taken down as the new file says, then up; the by-hand instructions say the same."""
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG,
                     apply_network=True, network=network)
    assert calls(tools) == ["ifdown --force eth0", "ifup eth0"]
    assert done.pending == ()
    pending = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG,
                        apply_network=False, network=network).pending
    assert "`ifdown --force eth0; ifup eth0`" in pending[0]


def test_the_by_hand_instructions_take_it_down_from_the_old_file(config: WizardConfig,
                                                                tools: Path) -> None:
    """Not applied: the instructions name the old file's copy for ifdown."""
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=False,
                     network=BEFORE)
    assert "`ifdown --force --interfaces=/backup/interfaces eth0; ifup eth0`" in done.pending[0]


def test_apply_network_takes_a_released_interface_down(config: WizardConfig,
                                                       tools: Path) -> None:
    """The interface the wizard configured before is taken down from the old file too (its
    IPv4 address is gone, nothing is pending), and brought up again from the new file when
    that still has a stanza for it (an inet6 one). If its ifdown fails, the result says what
    is left."""
    moved = NetworkChange(BEFORE.copy, BEFORE.old_inet, frozenset({"eth0"}), ("eth1",))
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=True,
                     network=moved)
    assert calls(tools) == ["ifdown --force --interfaces=/backup/interfaces eth0",
                            "ifdown --force --interfaces=/backup/interfaces eth1", "ifup eth0"]
    assert done.pending == ()
    (tools / "calls").unlink()
    kept = NetworkChange(BEFORE.copy, BEFORE.old_inet, frozenset({"eth0", "eth1"}), ("eth1",))
    follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=True,
              network=kept)
    assert calls(tools)[2:] == ["ifup eth0", "ifup eth1"]
    install_tool(tools, "ifdown", 'test "$3" = eth1 && exit 1; exit 0')
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=True,
                     network=moved)
    assert [action.status for action in done.actions] == ["succeeded", "failed", "succeeded"]
    assert len(done.pending) == 2
    assert done.pending[1].startswith("eth1: the wizard no longer configures it")


def test_a_network_apply_that_fails_leaves_it_pending(config: WizardConfig,
                                                      tools: Path) -> None:
    """--apply-network whose ifup fails: both actions are recorded, and the result says how
    to apply the change by hand, as when it was not asked for."""
    install_tool(tools, "ifup", 'echo "ifup: failed to bring up eth0" >&2; exit 1')
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG, apply_network=True,
                     network=BEFORE)
    assert [(a.name, a.status) for a in done.actions] == [("ifdown", "succeeded"),
                                                          ("ifup", "failed")]
    assert len(done.pending) == 1
    assert "ifdown --force --interfaces=/backup/interfaces eth0; ifup eth0" in done.pending[0]


@pytest.mark.parametrize("apply_network", [False, True])
def test_a_released_interface_is_pending(config: WizardConfig, tools: Path,
                                         apply_network: bool) -> None:
    """A released interface the old file's copy cannot take down keeps its IPv4 address
    live: the result says so, and how to clear it (not its IPv6 addresses), whether or not
    the new one was applied."""
    done = follow_up(config, frozenset({"/etc/network/interfaces"}), LOG,
                     apply_network=apply_network, network=NetworkChange(released=("eth1",)))
    assert done.pending[-1] == (
        "eth1: the wizard no longer configures it (its static stanza went with the change to "
        "eth0); its IPv4 address stays until `ip -4 address flush dev eth1` or a reboot")
    assert len(done.pending) == (1 if apply_network else 2)


def test_failure_is_recorded_not_raised(config: WizardConfig, tools: Path) -> None:
    """A failing follow-up is in the result with its exit code and output; the rest goes on."""
    install_tool(tools, "hostname", 'echo "hostname: you must be root" >&2; exit 1')
    done = follow_up(config, frozenset({"/etc/hostname", "/etc/mailname"}), LOG,
                     apply_network=False)
    assert done.actions[0].status == "failed"
    assert done.actions[0].detail == "exit 1: hostname: you must be root"
    assert done.actions[1].name == "postfix_reload"


def test_a_postfix_that_cannot_say_whether_it_runs_fails_only_its_reload(
    config: WizardConfig, tools: Path
) -> None:
    """`postfix status` that cannot run (its interpreter is gone): the reload is recorded
    failed, saying why, and the other follow-ups are done and recorded all the same (the
    files are applied: nothing is raised)."""
    (tools / "postfix").write_text("#!/nonexistent/sh\nexit 0\n")
    done = follow_up(config, frozenset({"/etc/hostname", "/etc/mailname",
                                        "/etc/network/interfaces"}), LOG, apply_network=False)
    assert [(a.name, a.status) for a in done.actions] == [
        ("hostname", "succeeded"), ("postfix_reload", "failed")]
    assert done.actions[1].detail is not None
    assert "cannot run" in done.actions[1].detail
    assert calls(tools) == ["hostname -F /etc/hostname"]
    assert len(done.pending) == 1


def test_missing_tool_is_skipped(config: WizardConfig, tools: Path) -> None:
    """A follow-up whose program is not installed is skipped, saying so."""
    (tools / "hostname").unlink()
    done = follow_up(config, frozenset({"/etc/hostname"}), LOG, apply_network=False)
    assert (done.actions[0].status, done.actions[0].detail) == (
        "skipped", "hostname is not installed"
    )


def test_nothing_changed_nothing_done(config: WizardConfig, tools: Path) -> None:
    """Without changes there is no follow-up at all."""
    assert follow_up(config, frozenset(), LOG, apply_network=True).actions == ()
    assert calls(tools) == []


#: What `ip -4 -o address show dev eth0` prints when eth0 has the example body's address.
LIVE = "2: eth0    inet 192.168.50.10/24 brd 192.168.50.255 scope global eth0\\n"


@pytest.mark.parametrize(("ip", "stale"), [
    pytest.param(f"printf '{LIVE}'", set(), id="live"),
    pytest.param("printf '2: eth0    inet 192.168.50.10/16 scope global eth0\\n'",
                 {"/etc/network/interfaces"}, id="other-netmask"),
    pytest.param("printf '2: eth0    inet 192.168.50.100/24 scope global eth0\\n'",
                 {"/etc/network/interfaces"}, id="other-address"),
    pytest.param("echo 'Device \"eth0\" does not exist.' >&2; exit 1",
                 {"/etc/network/interfaces"}, id="no-device"),
    pytest.param(None, set(), id="no-ip-tool"),
])
def test_what_the_running_system_does_not_show_is_stale(
        config: WizardConfig, tools: Path, monkeypatch: pytest.MonkeyPatch, ip: str | None,
        stale: set[str]) -> None:
    """The interface lacks the wizard's address (with its prefix), or has no address, or does
    not exist: the interfaces file is not live. Without `ip`, the network is not judged."""
    monkeypatch.setattr("socket.gethostname", lambda: "pbx")
    if ip is not None:
        install_tool(tools, "ip", ip)
    assert not_live(config, LOG) == stale
    assert calls(tools) == (["ip -4 -o address show dev eth0"] if ip is not None else [])


def test_a_live_host_name_other_than_the_wizards_is_stale(
        config: WizardConfig, tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier run wrote /etc/hostname but the host name was never set live: stale."""
    monkeypatch.setattr("socket.gethostname", lambda: "debian")
    install_tool(tools, "ip", f"printf '{LIVE}'")
    assert not_live(config, LOG) == {"/etc/hostname"}


@pytest.mark.parametrize("apply_network", [False, True])
@pytest.mark.parametrize(("network", "old"), [(NetworkChange(), ""),
                                              (BEFORE, "--interfaces=/backup/interfaces ")])
def test_a_stale_network_is_applied_or_pending(config: WizardConfig, tools: Path,
                                               apply_network: bool, network: NetworkChange,
                                               old: str) -> None:
    """The interfaces file an earlier run wrote and the interface does not show: with
    --apply-network it is taken down as the file before that run said (its backup copy; as
    the file now says without one) and brought up; without, the result says what is not live
    and gives the same commands."""
    done = follow_up(config, frozenset(), LOG, apply_network=apply_network, network=network,
                     stale=frozenset({"/etc/network/interfaces", "/etc/hostname"}))
    expected = ["hostname -F /etc/hostname"]
    if apply_network:
        expected += [f"ifdown --force {old}eth0", "ifup eth0"]
    assert calls(tools) == expected
    assert done.pending == (() if apply_network else (
        "eth0 does not have 192.168.50.10/24, which /etc/network/interfaces gives it: apply it "
        f"from the console with `ifdown --force {old}eth0; ifup eth0` or reboot (it can cut SSH "
        "sessions), or rerun with --apply-network",))


#: A real-root run in its own mount, UTS and network namespaces: /etc is a copy, the runner's
#: own directories and /run are tmpfs, the host name is `debian`, and only `lo` exists (so
#: eth0 never gets the wizard's address). Each run prints its result, then `---`; the host is untouched.
NAMESPACED = """set -e
mount --make-rprivate /
mount --bind "$1" /etc
for d in /var/lib/wizard-runner /var/log/wizard-runner /var/backups/wizard-runner /run; do
    mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
hostname debian; ip link set lo up
"$2" run --config "$3" --no-scripts --json 2>/dev/null || true; echo ---
hostname debian
"$2" run --config "$3" --no-scripts --json --dry-run 2>/dev/null || true; echo ---
"$2" run --config "$3" --no-scripts --json --dry-run --apply-network 2>/dev/null || true
echo ---
"$2" run --config "$3" --no-scripts --json 2>/dev/null || true; echo ---
"$2" run --config "$3" --no-scripts --json --apply-network 2>/dev/null || true
"""


@needs_root
def test_a_rerun_on_the_real_root_finishes_what_the_system_does_not_show(
        tmp_path: Path) -> None:
    """On the real root (namespaced): the first run writes the files (eth0 was DHCP), sets
    the host name and leaves the network pending; after the host name is changed back, a
    rerun that finds every file up to date sets it again and still says the network is
    pending (a change); with --apply-network it takes eth0 down as the file before the first
    run said (its backup) and tries to bring it up (no such device)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    etc = tmp_path / "etc"
    shutil.copytree("/etc", etc, symlinks=True)
    (etc / "network").mkdir(exist_ok=True)
    (etc / "network/interfaces").write_text("auto eth0\niface eth0 inet dhcp\n")  # as before
    runner = str(Path(sys.executable).parent / "wizard-runner")
    done = subprocess.run(["unshare", "-m", "-u", "-n", "sh", "-c", NAMESPACED, "sh", str(etc),
                           runner, str(EXAMPLES / "wizard.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no namespaces here: {done.stderr.strip()}")
    results = [json.loads(text) for text in done.stdout.split("\n---\n")]
    assert len(results) == 5, done.stdout + done.stderr
    previews, results = results[1:3], [results[0], *results[3:]]
    first, again, applied = ({"changed": r["changed"], "exit": r["exit_code"],
                              "actions": [(a["name"], a["status"])
                                          for a in r["system_conf"]["actions"]],
                              "pending": r["system_conf"]["pending"]} for r in results)
    assert (first["exit"], first["changed"]) == (0, True)
    assert ("hostname", "succeeded") in first["actions"]
    assert first["pending"][0].startswith("/etc/network/interfaces changed for eth0")
    copy = f"/var/backups/wizard-runner/{results[0]['run_id']}/etc/network/interfaces"
    assert again == {"changed": True, "exit": 0, "actions": [("hostname", "succeeded")],
                     "pending": [
        "eth0 does not have 192.168.50.10/24, which /etc/network/interfaces gives it: apply it "
        f"from the console with `ifdown --force --interfaces={copy} eth0; ifup eth0` or "
        "reboot (it can cut SSH sessions), or rerun with --apply-network"]}
    assert [name for name, _ in applied["actions"]] == ["ifdown", "ifup"]
    assert f"--interfaces={copy}" in results[2]["system_conf"]["actions"][0]["command"]
    # The dry runs before the rerun said so, though no file would change.
    hostname = "hostname -F /etc/hostname (the live host name is not the wizard's)"
    assert [(p["changed"], p["follow_ups"], p["pending"]) for p in previews] == [
        (True, [hostname], again["pending"]),
        (True, [hostname, f"ifdown --force --interfaces={copy} eth0; ifup eth0 (eth0 does not "
                          "have 192.168.50.10/24, which /etc/network/interfaces gives it)"], [])]
    assert applied["actions"][1] == ("ifup", "failed")
    assert applied["changed"] is True
    assert (etc / "hostname").read_text() == "pbx\n"
