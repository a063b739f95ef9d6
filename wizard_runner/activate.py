"""Live follow-ups after the files changed on the real root: host name, postfix, network."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.errors import ApplyError
from wizard_runner.result import ActionOutcome
from wizard_runner.tools import ToolOutput, find_tool, run_tool

NETWORK_TIMEOUT: Final = 90.0


@dataclass(frozen=True)
class NetworkChange:
    """What the rewrite of the interfaces file changes: where the old file's copy is (None:
    there was none, or it was a symlink), the interfaces the old file gave an IPv4 stanza,
    those the new file has a stanza for (any family), and those the wizard's stanza leaves
    (the body names another interface)."""

    copy: str | None = None
    old_inet: frozenset[str] = frozenset()
    new_stanzas: frozenset[str] = frozenset()
    released: tuple[str, ...] = ()

    def old_file(self, name: str) -> list[str]:
        """ifdown's option to take `name` down as the old file configured it, if it did."""
        return [f"--interfaces={self.copy}"] if self.copy and name in self.old_inet else []


@dataclass(frozen=True)
class FollowUps:
    """What was done live, and what the admin still has to do."""

    actions: tuple[ActionOutcome, ...]
    pending: tuple[str, ...]


def _call(name: str, command: tuple[str, ...], log: FilteringBoundLogger,
          timeout: float = 30.0) -> ToolOutput | ActionOutcome:
    """Run a follow-up's command: its output, or the action failed when the command could not
    run or did not finish in time."""
    try:
        return run_tool(command, timeout=timeout)
    except ApplyError as error:
        log.error("action_failed", action=name, command=list(command), error=str(error))
        return ActionOutcome(name, command, "failed", str(error))


def _run(name: str, argv: Sequence[str], log: FilteringBoundLogger,
         timeout: float = 30.0) -> ActionOutcome:
    """Run one follow-up command; its failure is recorded, never raised: the files are applied."""
    tool = find_tool(argv[0])
    if tool is None:
        log.info("action_skipped", action=name, reason=f"{argv[0]} is not installed")
        return ActionOutcome(name, tuple(argv), "skipped", f"{argv[0]} is not installed")
    command = (tool, *argv[1:])
    output = _call(name, command, log, timeout)
    if isinstance(output, ActionOutcome):
        return output
    detail = (output.stderr or output.stdout).strip() or None
    if output.returncode != 0:
        log.error("action_failed", action=name, command=list(command),
                  exit_code=output.returncode, output=detail)
        return ActionOutcome(name, command, "failed", f"exit {output.returncode}: {detail}")
    log.info("action_succeeded", action=name, command=list(command))
    return ActionOutcome(name, command, "succeeded", detail)


def _postfix_reload(log: FilteringBoundLogger) -> ActionOutcome:
    postfix = find_tool("postfix")
    if postfix is None:
        return _run("postfix_reload", ["postfix", "reload"], log)
    status = _call("postfix_reload", (postfix, "status"), log)
    if isinstance(status, ActionOutcome):
        return status  # not reloaded: whether postfix runs is unknown
    if status.returncode != 0:
        log.info("action_skipped", action="postfix_reload", reason="postfix is not running")
        return ActionOutcome("postfix_reload", (postfix, "reload"), "skipped",
                             "postfix is not running; it reads the new files when it starts")
    return _run("postfix_reload", ["postfix", "reload"], log)


def network_commands(interface: str, network: NetworkChange = NetworkChange()) -> str:
    """The commands that apply the interfaces file to `interface`, as --apply-network runs
    them: down as the old file configured it, up from the new one."""
    ifdown = " ".join(["ifdown", "--force", *network.old_file(interface), interface])
    return f"{ifdown}; ifup {interface}"


def not_live_network(config: WizardConfig) -> str:
    """What the running system shows of an interfaces file it does not use."""
    return (f"{config.network.interface} does not have {wizard_address(config)}, which "
            "/etc/network/interfaces gives it")


def network_pending(interface: str, network: NetworkChange = NetworkChange(),
                    *, not_live: str | None = None) -> str:
    """The admin's instructions for a network change that was written but not applied, or
    (`not_live` says how it shows) that an earlier run wrote and the interface does not
    show."""
    what = not_live or f"/etc/network/interfaces changed for {interface}"
    return (
        f"{what}: apply it from the console with `{network_commands(interface, network)}` or "
        "reboot (it can cut SSH sessions), or rerun with --apply-network"
    )


def wizard_address(config: WizardConfig) -> str:
    """The wizard's address with its prefix length, as `ip` shows it: 192.168.1.10/24."""
    net = config.network
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{net.netmask}").prefixlen
    return f"{net.ip_address}/{prefix}"


def not_live(config: WizardConfig, log: FilteringBoundLogger) -> frozenset[str]:
    """The files whose settings the running system does not show, though they are written
    (an earlier run wrote them, and its follow-up failed or was not asked for): the live host
    name is not the wizard's, the interface lacks the wizard's address. Only what can be
    read is judged: without `ip`, the network is not."""
    stale = set()
    if socket.gethostname() != config.network.hostname:
        stale.add("/etc/hostname")
    interface = config.network.interface
    ip = find_tool("ip")
    shown = _call("address_check", (ip, "-4", "-o", "address", "show", "dev", interface),
                  log) if ip is not None else None
    if isinstance(shown, ToolOutput) and f" inet {wizard_address(config)} " not in shown.stdout:
        stale.add("/etc/network/interfaces")
    return frozenset(stale)


def released_pending(interface: str, released: str) -> str:
    """The admin's instructions for an interface the wizard configured before and no longer
    does (the body names another one)."""
    return (
        f"{released}: the wizard no longer configures it (its static stanza went with the "
        f"change to {interface}); its IPv4 address stays until `ip -4 address flush dev "
        f"{released}` or a reboot"
    )


def _network(config: WizardConfig, network: NetworkChange, log: FilteringBoundLogger, *,
             apply_network: bool, written: bool) -> FollowUps:
    """With --apply-network: the wizard's interface taken down as the old file configured it
    (a DHCP client stopped, its address released; else as the new file does) and so is a
    released interface the old file configured; then each brought up from the new file (a
    released one only if the new file still has a stanza for it: an inet6 one). What is left
    to do by hand is pending. Not `written` (an earlier run wrote it, the interface does not
    show it): `network` is that run's change, and the note says what the interface lacks."""
    interface = config.network.interface
    actions: list[ActionOutcome] = []
    pending: list[str] = []
    taken_down: set[str] = set()
    if apply_network:
        down = [interface, *(name for name in network.released if network.old_file(name))]
        for name in down:
            actions.append(_run("ifdown", ["ifdown", "--force", *network.old_file(name), name],
                                log, timeout=NETWORK_TIMEOUT))
            if actions[-1].status == "succeeded":
                taken_down.add(name)
        for name in down:
            if name == interface or name in network.new_stanzas:
                actions.append(_run("ifup", ["ifup", name], log, timeout=NETWORK_TIMEOUT))
    if not actions or any(action.status != "succeeded" for action in actions):
        # Not applied, or not applied whole: the admin still has it to do.
        message = network_pending(interface, network,
                                  not_live=None if written else not_live_network(config))
        log.warning("network_change_pending", interface=interface, hint=message)
        pending.append(message)
    for name in network.released:
        if name not in taken_down:
            message = released_pending(interface, name)
            log.warning("interface_released", interface=name, hint=message)
            pending.append(message)
    return FollowUps(tuple(actions), tuple(pending))


def follow_up(
    config: WizardConfig,
    changed: frozenset[str],
    log: FilteringBoundLogger,
    *,
    apply_network: bool,
    network: NetworkChange = NetworkChange(),
    stale: frozenset[str] = frozenset(),
) -> FollowUps:
    """Make the running system use the files that changed, and those `stale` (written before,
    not live: `not_live`); only ever called on the real root. `network`: what the rewrite of
    the interfaces file changes (by this run, or by the earlier run that wrote it)."""
    written = changed
    changed = changed | stale
    actions: list[ActionOutcome] = []
    pending: tuple[str, ...] = ()
    if "/etc/hostname" in changed:
        actions.append(_run("hostname", ["hostname", "-F", "/etc/hostname"], log))
    if "/etc/postfix/canonical" in changed:
        actions.append(_run("postmap", ["postmap", "hash:/etc/postfix/canonical"], log))
    if changed & {"/etc/postfix/main.cf", "/etc/postfix/canonical", "/etc/mailname"}:
        actions.append(_postfix_reload(log))
    if "/etc/network/interfaces" in changed:
        done = _network(config, network, log, apply_network=apply_network,
                        written="/etc/network/interfaces" in written)
        actions += done.actions
        pending = done.pending
    return FollowUps(tuple(actions), pending)
