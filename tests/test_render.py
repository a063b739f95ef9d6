"""The renderers: exact text for a Debian install, admin content kept, and parse-back checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEBIAN_ROOT, MANAGED, needs_tool
from tests.helpers import parse_hosts, parse_interfaces, parse_main_cf, parse_resolv
from wizard_runner.config import WizardConfig, config_from_data
from wizard_runner.errors import RenderError
from wizard_runner.render import (
    BLOCK_BEGIN,
    BLOCK_END,
    FILE_HEADER,
    MAIN_CF_HEADER,
    RENDERERS,
    released_interfaces,
    render_canonical,
    render_hostname,
    render_hosts,
    render_interfaces,
    render_mailname,
    render_main_cf,
    render_resolv_conf,
    without_sources,
)
from wizard_runner.tools import ToolOutput, find_tool, run_tool


def debian(path: str) -> str:
    """The seed file of a fresh Debian install."""
    return (DEBIAN_ROOT / path.lstrip("/")).read_text()


def other_config(body: dict[str, Any], **network: object) -> WizardConfig:
    """The example config with some network values changed."""
    body["network"].update(network)
    return config_from_data(body)


# --- exact output for a fresh Debian install --------------------------------------------------


def test_hostname_and_mailname(config: WizardConfig) -> None:
    """The single-value files hold exactly the short name and the FQDN."""
    assert render_hostname(config, debian("/etc/hostname")) == "pbx\n"
    assert render_mailname(config, debian("/etc/mailname")) == "pbx.acme.example\n"
    assert render_hostname(config, None) == "pbx\n"


def test_hosts_exact(config: WizardConfig) -> None:
    """/etc/hosts from Debian's: the installer's 127.0.1.1 line is replaced by the real address."""
    assert render_hosts(config, debian("/etc/hosts")) == (
        f"{BLOCK_BEGIN}\n"
        "127.0.0.1\tlocalhost\n"
        "192.168.50.10\tpbx.acme.example\tpbx\n"
        "\n"
        "# The following lines are desirable for IPv6 capable hosts\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
        f"{BLOCK_END}\n"
    )


def test_resolv_conf_exact(config: WizardConfig) -> None:
    """resolv.conf: header, search domain, name servers; Debian's domain/nameserver lines go."""
    assert render_resolv_conf(config, debian("/etc/resolv.conf")) == (
        f"{FILE_HEADER}\n"
        "search acme.example\n"
        "nameserver 192.168.50.2\n"
        "nameserver 9.9.9.9\n"
    )


def test_interfaces_exact(config: WizardConfig) -> None:
    """interfaces: the DHCP stanza becomes static in place; loopback, source and inet6 kept."""
    assert render_interfaces(config, debian("/etc/network/interfaces")) == (
        "# This file describes the network interfaces available on your system\n"
        "# and how to activate them. For more information, see interfaces(5).\n"
        "\n"
        "source /etc/network/interfaces.d/*\n"
        "\n"
        "# The loopback network interface\n"
        "auto lo\n"
        "iface lo inet loopback\n"
        "\n"
        "# The primary network interface\n"
        f"{BLOCK_BEGIN}\n"
        "auto eth0\n"
        "iface eth0 inet static\n"
        "\taddress 192.168.50.10\n"
        "\tnetmask 255.255.255.0\n"
        "\tgateway 192.168.50.1\n"
        "\tdns-nameservers 192.168.50.2 9.9.9.9\n"
        "\tdns-search acme.example\n"
        f"{BLOCK_END}\n"
        "\n"
        "# This is an autoconfigured IPv6 interface\n"
        "iface eth0 inet6 auto\n"
    )


def test_main_cf_sets_names_in_place(config: WizardConfig) -> None:
    """main.cf: the four names set where they were; everything else byte-for-byte the same."""
    before = debian("/etc/postfix/main.cf")
    after = render_main_cf(config, before)
    assert after.startswith(MAIN_CF_HEADER + "\n\n")
    old_lines = before.splitlines()
    new_lines = after.splitlines()[2:]
    changed = {
        (old, new) for old, new in zip(old_lines, new_lines, strict=False) if old != new
    }
    assert changed == {
        ("myhostname = debian.localdomain", "myhostname = pbx.acme.example"),
        ("mydestination = $myhostname, debian.localdomain, debian, localhost.localdomain, "
         "localhost", "mydestination = $myhostname, pbx, localhost.$mydomain, localhost"),
    }
    assert new_lines[len(old_lines):] == [
        "",
        "mydomain = acme.example",
        "canonical_maps = hash:/etc/postfix/canonical",
    ]
    assert "#myorigin = /etc/mailname" in new_lines
    assert "    defer_unauth_destination" in new_lines


def test_canonical_exact(config: WizardConfig) -> None:
    """canonical: the managed rewrite entry, and the admin's entry kept."""
    assert render_canonical(config, debian("/etc/postfix/canonical")) == (
        "# Sender and recipient rewriting, see canonical(5).\n"
        "root\tadmin@acme.example\n"
        "\n"
        f"{BLOCK_BEGIN}\n"
        "@pbx\t@pbx.acme.example\n"
        f"{BLOCK_END}\n"
    )


# --- parse back to the same values ------------------------------------------------------------


def test_parse_back(config: WizardConfig) -> None:
    """Every rendered file reads back, with an independent parser, to the config's values."""
    net = config.network
    hosts = parse_hosts(render_hosts(config, debian("/etc/hosts")))
    assert hosts[net.fqdn] == hosts[net.hostname] == net.ip_address
    assert hosts["localhost"] == "127.0.0.1"
    assert parse_resolv(render_resolv_conf(config, None)) == ([net.domain], net.nameservers)
    stanza = parse_interfaces(render_interfaces(config, debian("/etc/network/interfaces")))
    assert stanza["eth0 inet"] == {
        "method": "static",
        "address": net.ip_address,
        "netmask": net.netmask,
        "gateway": net.gateway,
        "dns-nameservers": " ".join(net.nameservers),
        "dns-search": net.domain,
    }
    assert stanza["@auto"] == {"lo": "auto", "eth0": "auto"}
    params = parse_main_cf(render_main_cf(config, debian("/etc/postfix/main.cf")))
    assert params["myhostname"] == net.fqdn
    assert params["mydomain"] == net.domain
    assert params["myorigin"] == "/etc/mailname"
    assert params["mydestination"].split(", ")[:2] == ["$myhostname", net.hostname]


@pytest.mark.parametrize("path", MANAGED)
@pytest.mark.parametrize("seed", ["debian", "empty", "missing"])
def test_render_is_idempotent(config: WizardConfig, path: str, seed: str) -> None:
    """Rendering a file's own output again changes nothing (so a rerun writes nothing)."""
    current = {"debian": debian(path), "empty": "", "missing": None}[seed]
    once = RENDERERS[path](config, current)
    assert RENDERERS[path](config, once) == once
    assert once.endswith("\n")
    assert not once.endswith("\n\n")


@pytest.mark.parametrize("path", MANAGED)
def test_rerun_with_new_values_leaves_nothing_stale(
    config: WizardConfig, body: dict[str, Any], path: str
) -> None:
    """A second wizard with other names and addresses replaces every trace of the first."""
    first = RENDERERS[path](config, debian(path))
    second_config = other_config(
        body, hostname="voip", domain="new.example", ip_address="10.1.2.3",
        netmask="255.255.0.0", gateway="10.1.0.1", nameservers=["10.1.0.53"],
    )
    second = RENDERERS[path](second_config, first)
    for stale in ("pbx", "acme.example", "192.168.50.", "9.9.9.9"):
        lines = [line for line in second.splitlines() if stale in line]
        # The admin's own canonical entry mentions acme.example and stays.
        assert lines in ([], ["root\tadmin@acme.example"]), (stale, lines)
    assert second == RENDERERS[path](second_config, debian(path))


# --- admin content kept -----------------------------------------------------------------------


def test_hosts_keeps_admin_lines(config: WizardConfig) -> None:
    """Lines for other hosts stay; the wizard's names are taken off shared lines."""
    current = (
        "127.0.0.1 localhost localhost.localdomain\n"
        "10.9.9.9 provisioning.acme.example prov # the provisioning server\n"
        "192.168.50.10 pbx.acme.example pbx pbx-alias\n"
        "\n"
        "# a comment of the admin's\n"
    )
    out = render_hosts(config, current)
    hosts = parse_hosts(out)
    assert hosts["provisioning.acme.example"] == "10.9.9.9"
    assert hosts["localhost.localdomain"] == "127.0.0.1"
    assert hosts["pbx-alias"] == "192.168.50.10"
    assert "10.9.9.9 provisioning.acme.example prov # the provisioning server" in out
    assert "# a comment of the admin's" in out
    assert out.count("pbx.acme.example") == 1
    assert [line for line in out.splitlines() if line.split()[:1] == ["127.0.0.1"]] == [
        "127.0.0.1\tlocalhost", "127.0.0.1\tlocalhost.localdomain"
    ]


def test_resolv_conf_keeps_options(config: WizardConfig) -> None:
    """options and sortlist lines survive; old search, domain and nameserver lines do not."""
    current = "domain old\nsearch old\nnameserver 1.1.1.1\noptions timeout:2 attempts:3\n"
    out = render_resolv_conf(config, current)
    assert out.splitlines()[-1] == "options timeout:2 attempts:3"
    assert "1.1.1.1" not in out
    assert "old" not in out


def test_interfaces_keeps_other_interfaces(config: WizardConfig) -> None:
    """Other stanzas, with their options and comments, stay as they were."""
    current = (
        "auto lo eth0 eth1\n"
        "iface lo inet loopback\n"
        "\n"
        "iface eth0 inet static\n"
        "    address 10.0.0.2\n"
        "    # the old gateway\n"
        "    gateway 10.0.0.1\n"
        "    netmask 255.0.0.0\n"
        "\n"
        "iface eth1 inet static\n"
        "    address 172.16.0.2/16\n"
        "    post-up ip route add 172.17.0.0/16 via 172.16.0.1 \\\n"
        "        metric 10\n"
        "mapping eth2\n"
        "    script /usr/local/sbin/map-eth2\n"
    )
    out = render_interfaces(config, current)
    stanzas = parse_interfaces(out)
    assert stanzas["eth1 inet"]["address"] == "172.16.0.2/16"
    assert "        metric 10" in out
    assert "    script /usr/local/sbin/map-eth2" in out
    assert stanzas["eth0 inet"]["address"] == "192.168.50.10"
    assert "10.0.0.2" not in out
    assert "auto lo eth1" in out.splitlines()
    assert out.count("iface eth0 inet ") == 1


def test_interfaces_vlan(body: dict[str, Any]) -> None:
    """A VLAN interface names its raw device."""
    config = other_config(body, interface="eth0.10")
    stanza = parse_interfaces(render_interfaces(config, None))["eth0.10 inet"]
    assert stanza["vlan-raw-device"] == "eth0"


def test_interfaces_adds_loopback_when_missing(config: WizardConfig) -> None:
    """A file without a loopback stanza gets one (ifupdown needs it for lo)."""
    stanzas = parse_interfaces(render_interfaces(config, "iface eth1 inet dhcp\n"))
    assert stanzas["lo inet"] == {"method": "loopback"}
    assert stanzas["eth1 inet"] == {"method": "dhcp"}


def test_main_cf_duplicates_and_continuations(config: WizardConfig) -> None:
    """An earlier duplicate goes, a continued value is replaced whole, comments stay."""
    current = (
        "myhostname = first.example\n"
        "# myhostname = commented.example\n"
        "mydestination = a,\n"
        "    b,\n"
        "\tc\n"
        "myhostname=second.example\n"
        "relayhost = [smtp.acme.example]:587\n"
        "canonical_maps = regexp:/etc/postfix/canonical.re\n"
    )
    out = render_main_cf(config, current)
    params = parse_main_cf(out)
    assert params["myhostname"] == "pbx.acme.example"
    assert params["mydestination"] == "$myhostname, pbx, localhost.$mydomain, localhost"
    assert params["relayhost"] == "[smtp.acme.example]:587"
    assert params["canonical_maps"] == (
        "regexp:/etc/postfix/canonical.re, hash:/etc/postfix/canonical"
    )
    assert "# myhostname = commented.example" in out
    assert out.count("myhostname =") == 2  # the comment and the setting
    assert "first.example" not in out


def test_canonical_keeps_entries_and_drops_conflicts(config: WizardConfig) -> None:
    """The admin's entries stay, one for the wizard's key (with its continuation) goes."""
    current = (
        "# rewrite rules\n"
        "@PBX   @wrong.example\n"
        "    \n"
        "root   admin@acme.example\n"
        "@other @other.example\n"
    )
    out = render_canonical(config, current)
    assert "@wrong.example" not in out
    assert "root   admin@acme.example" in out
    assert "@other @other.example" in out
    assert out.count("@pbx") == 2  # key and value of the managed entry


def test_renderers_keep_undecodable_bytes(config: WizardConfig) -> None:
    """Bytes that are not UTF-8 in an admin line pass through (surrogate escapes)."""
    latin1 = b"10.9.9.9 caf\xe9\n".decode("utf-8", "surrogateescape")
    out = render_hosts(config, latin1)
    assert out.encode("utf-8", "surrogateescape").count(b"caf\xe9") == 1


def test_every_managed_file_has_a_renderer() -> None:
    """The seven files, in their write order."""
    assert tuple(RENDERERS) == MANAGED
    for path in MANAGED:
        assert Path(DEBIAN_ROOT, path.lstrip("/")).is_file()


# --- a rerun on another interface -----------------------------------------------------------


def wizard_block(interface: str, *extra: str) -> str:
    """The managed block the example config renders for `interface`; `extra` after gateway."""
    return "\n".join([
        BLOCK_BEGIN,
        f"auto {interface}",
        f"iface {interface} inet static",
        "\taddress 192.168.50.10",
        "\tnetmask 255.255.255.0",
        "\tgateway 192.168.50.1",
        *extra,
        "\tdns-nameservers 192.168.50.2 9.9.9.9",
        "\tdns-search acme.example",
        BLOCK_END,
    ]) + "\n"


DEBIAN_INTERFACES = debian("/etc/network/interfaces")
DEBIAN_HEAD = (
    "# This file describes the network interfaces available on your system\n"
    "# and how to activate them. For more information, see interfaces(5).\n"
    "\n"
    "source /etc/network/interfaces.d/*\n"
    "\n"
    "# The loopback network interface\n"
    "auto lo\n"
    "iface lo inet loopback\n"
    "\n"
    "# The primary network interface\n"
)
INET6_STATIC = (
    "auto lo\n"
    "iface lo inet loopback\n"
    "\n"
    "auto eth0\n"
    "iface eth0 inet static\n"
    "    address 10.0.0.2/8\n"
    "    gateway 10.0.0.1\n"
    "    mtu 9000\n"
    "\n"
    "iface eth0 inet6 static\n"
    "    address 2001:db8::2/64\n"
    "    gateway 2001:db8::1\n"
)
INET_ONLY = "auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n"
TWO_DUAL_STACK = (
    "auto lo\n"
    "iface lo inet loopback\n"
    "\n"
    "allow-hotplug eth0\n"
    "iface eth0 inet dhcp\n"
    "iface eth0 inet6 auto\n"
    "\n"
    "allow-hotplug eth1\n"
    "iface eth1 inet dhcp\n"
    "iface eth1 inet6 auto\n"
)
LO = "auto lo\niface lo inet loopback\n\n"

INTERFACE_CHANGES = [
    pytest.param(
        DEBIAN_INTERFACES, "eth1",
        DEBIAN_HEAD + wizard_block("eth1") + "\n"
        "# This is an autoconfigured IPv6 interface\n"
        "auto eth0\n"
        "iface eth0 inet6 auto\n",
        id="debian-inet6-auto",
    ),
    pytest.param(
        INET6_STATIC, "eth1",
        LO + wizard_block("eth1") + "\n"
        "auto eth0\n"
        "iface eth0 inet6 static\n"
        "    address 2001:db8::2/64\n"
        "    gateway 2001:db8::1\n",
        id="admin-inet6-static",
    ),
    pytest.param(INET_ONLY, "eth1", LO + wizard_block("eth1"), id="nothing-else-on-eth0"),
    pytest.param(
        TWO_DUAL_STACK, "eth1",
        LO + wizard_block("eth1") + "\n"
        "auto eth0\n"
        "iface eth0 inet6 auto\n"
        "\n"
        "iface eth1 inet6 auto\n",
        id="eth1-had-its-own-stanzas",
    ),
    pytest.param(
        DEBIAN_INTERFACES, "eth0.10",
        DEBIAN_HEAD + wizard_block("eth0.10", "\tvlan-raw-device eth0") + "\n"
        "# This is an autoconfigured IPv6 interface\n"
        "auto eth0\n"
        "iface eth0 inet6 auto\n",
        id="vlan-on-eth0",
    ),
]


@pytest.mark.parametrize(("current", "interface", "expected"), INTERFACE_CHANGES)
def test_interfaces_interface_change_leaves_nothing_half_managed(
    config: WizardConfig, body: dict[str, Any], current: str, interface: str, expected: str
) -> None:
    """On another interface the old block goes whole; eth0's own stanzas keep an auto line."""
    first = render_interfaces(config, current)
    moved = other_config(body, interface=interface)
    second = render_interfaces(moved, first)
    assert second == expected
    assert render_interfaces(moved, second) == second


def test_interfaces_interface_change_names_the_interface_released(
    config: WizardConfig, body: dict[str, Any]
) -> None:
    """The interface the old block configured, and only that one, is released by a move to
    another; a rerun on the same interface, or a file without a block, releases nothing."""
    first = render_interfaces(config, DEBIAN_INTERFACES)
    assert released_interfaces(first, "eth1") == ["eth0"]
    assert released_interfaces(first, "eth0") == []
    assert released_interfaces(DEBIAN_INTERFACES, "eth1") == []
    assert released_interfaces(None, "eth1") == []


def test_interfaces_interface_change_and_back(
    config: WizardConfig, body: dict[str, Any]
) -> None:
    """Moving to eth1 and back to eth0 gives the first file again, eth0's auto line managed."""
    first = render_interfaces(config, DEBIAN_INTERFACES)
    there = render_interfaces(other_config(body, interface="eth1"), first)
    assert render_interfaces(config, there) == first


def test_interfaces_interface_change_keeps_the_admins_own_activation(
    config: WizardConfig, body: dict[str, Any]
) -> None:
    """An admin line that already brings the old interface up is not doubled by an auto line."""
    first = render_interfaces(config, DEBIAN_INTERFACES)
    edited = first.replace("iface eth0 inet6 auto\n",
                           "allow-hotplug eth0\niface eth0 inet6 auto\n")
    second = render_interfaces(other_config(body, interface="eth1"), edited)
    assert second.endswith(
        f"{BLOCK_END}\n"
        "\n"
        "# This is an autoconfigured IPv6 interface\n"
        "allow-hotplug eth0\n"
        "iface eth0 inet6 auto\n"
    )
    assert "auto eth0" not in second.splitlines()


def ifquery(path: Path, *args: str) -> ToolOutput:
    """Run the real ifquery on the interfaces file at `path`."""
    tool = find_tool("ifquery")
    assert tool is not None
    return run_tool([tool, "--interfaces", str(path), *args])


def ip_options(output: ToolOutput) -> dict[str, str]:
    """The address, netmask and gateway ifquery printed for an interface, those it has."""
    read = dict(line.split(": ", 1) for line in output.stdout.splitlines() if ": " in line)
    return {key: read[key] for key in ("address", "netmask", "gateway") if key in read}


@needs_tool("ifquery")
@pytest.mark.processes
@pytest.mark.parametrize(
    ("current", "interface", "auto", "eth0"),
    [
        pytest.param(DEBIAN_INTERFACES, "eth1", ["lo", "eth1", "eth0"], {},
                     id="debian-inet6-auto"),
        pytest.param(INET6_STATIC, "eth1", ["lo", "eth1", "eth0"],
                     {"address": "2001:db8::2", "netmask": "64", "gateway": "2001:db8::1"},
                     id="admin-inet6-static"),
        pytest.param(INET_ONLY, "eth1", ["lo", "eth1"], None, id="nothing-else-on-eth0"),
        pytest.param(TWO_DUAL_STACK, "eth1", ["lo", "eth1", "eth0"], {},
                     id="eth1-had-its-own-stanzas"),
        pytest.param(DEBIAN_INTERFACES, "eth0.10", ["lo", "eth0.10", "eth0"], {},
                     id="vlan-on-eth0"),
    ],
)
def test_ifquery_reads_both_interfaces_after_a_change(
    config: WizardConfig, body: dict[str, Any], tmp_path: Path, current: str, interface: str,
    auto: list[str], eth0: dict[str, str] | None,
) -> None:
    """ifquery brings up the new interface with its address, and eth0 with only its own stanzas."""
    moved = other_config(body, interface=interface)
    target = tmp_path / "interfaces"
    target.write_text(render_interfaces(moved, render_interfaces(config, current)))
    listed = ifquery(target, "--list", "--allow", "auto")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == auto
    new = ifquery(target, interface)
    assert new.returncode == 0, new.stderr
    assert ip_options(new) == {
        "address": "192.168.50.10", "netmask": "255.255.255.0", "gateway": "192.168.50.1"}
    old = ifquery(target, "eth0")
    if eth0 is None:
        assert old.returncode != 0  # no stanza of eth0 is left: ifquery does not know it
        assert "unknown interface eth0" in old.stderr
        return
    assert old.returncode == 0, old.stderr
    # The admin's IPv6 settings alone: nothing of the old static IPv4 stanza.
    assert ip_options(old) == eth0


# --- tricky current content -------------------------------------------------------------------


def test_interfaces_comment_with_backslash_does_not_hide_a_stanza(config: WizardConfig) -> None:
    """A comment ending in a backslash does not swallow the stanza below it."""
    current = (
        "auto lo\niface lo inet loopback\n\n# Primary interface: C:\\\n"
        "iface eth0 inet static\n    address 10.0.0.9/8\n    gateway 10.0.0.1\n"
    )
    out = render_interfaces(config, current)
    assert out.count("iface eth0 inet ") == 1
    assert "10.0.0.9" not in out
    assert "# Primary interface: C:\\" in out


def test_interfaces_carries_options_the_wizard_does_not_set(
    config: WizardConfig, body: dict[str, Any]
) -> None:
    """mtu, hwaddress and route commands of the old stanza move into the managed stanza."""
    current = (
        "iface lo inet loopback\n"
        "allow-hotplug eth0\n"
        "iface eth0 inet dhcp\n"
        "  hostname old-dhcp-name\n"
        "  hwaddress ether 00:11:22:33:44:55\n"
        "  mtu 9000\n"
        "  # a static route\n"
        "  up ip route add 10.99.0.0/16 \\\n"
        "     via 192.168.50.254\n"
    )
    first = render_interfaces(config, current)
    stanza = parse_interfaces(first)["eth0 inet"]
    assert stanza["hwaddress"] == "ether 00:11:22:33:44:55"
    assert stanza["mtu"] == "9000"
    assert stanza["up"] == "ip route add 10.99.0.0/16 via 192.168.50.254"
    assert "hostname" not in stanza
    assert "# a static route" in first
    assert render_interfaces(config, first) == first
    moved = other_config(body, ip_address="192.168.50.20")
    assert parse_interfaces(render_interfaces(moved, first))["eth0 inet"]["mtu"] == "9000"


@pytest.mark.parametrize(
    ("current", "message"),
    [
        pytest.param("mapping eth*\n  script /usr/local/bin/pick\n",
                     "`mapping eth*` applies to eth0", id="mapping"),
        pytest.param("iface br0 inet static\n  bridge_ports eth0 eth1\n",
                     "eth0 is a port of br0", id="bridge"),
        pytest.param("iface bond0 inet manual\n  bond-slaves eth0\n",
                     "eth0 is a port of bond0", id="bond"),
    ],
)
def test_interfaces_refuses_conflicts(config: WizardConfig, current: str, message: str) -> None:
    """A mapping or a bridge/bond taking the interface is an error, not a silent conflict."""
    with pytest.raises(RenderError, match=re.escape(message)):
        render_interfaces(config, current)


def damaged(lines: list[str], how: str) -> list[str]:
    """Break a rendered file's managed block markers in one of three ways."""
    if how == "no-end":
        return [line for line in lines if line != BLOCK_END]
    if how == "no-begin":
        return [line for line in lines if line != BLOCK_BEGIN]
    at = lines.index(BLOCK_BEGIN)
    return [*lines[: at + 1], BLOCK_BEGIN, *lines[at + 1 :]]


@pytest.mark.parametrize("path", ["/etc/hosts", "/etc/postfix/canonical",
                                  "/etc/network/interfaces"])
@pytest.mark.parametrize(
    ("how", "message"),
    [
        pytest.param("no-end", "has no END marker", id="no-end"),
        pytest.param("no-begin", "END marker without its BEGIN", id="no-begin"),
        pytest.param("nested", "a second wizard-runner BEGIN", id="nested"),
    ],
)
def test_damaged_markers_are_refused(config: WizardConfig, path: str, how: str,
                                     message: str) -> None:
    """A block with a missing or extra marker is reported, with its line, never guessed at."""
    rendered = RENDERERS[path](config, debian(path)).splitlines()
    with pytest.raises(RenderError, match=rf"line \d+: .*{message}"):
        RENDERERS[path](config, "\n".join(damaged(rendered, how)) + "\n")


@pytest.mark.parametrize("path", [p for p in MANAGED if p not in {
    "/etc/hostname", "/etc/mailname", "/etc/resolv.conf", "/etc/postfix/main.cf"}])
def test_duplicated_blocks_collapse_into_one(
    config: WizardConfig, body: dict[str, Any], path: str
) -> None:
    """A block pasted twice is replaced once, with nothing stale left from either copy."""
    rendered = RENDERERS[path](config, debian(path))
    doubled = rendered + "\n" + rendered[rendered.index(BLOCK_BEGIN):]
    second = other_config(body, hostname="voip", interface="eth1", ip_address="192.168.50.30")
    out = RENDERERS[path](second, doubled)
    assert out.count(BLOCK_BEGIN) == 1
    assert "192.168.50.10" not in out
    assert "@pbx\t" not in out


def test_main_cf_continuation_after_a_comment(config: WizardConfig) -> None:
    """Indented lines after a comment still belong to the parameter, and go with it."""
    current = (
        "mydestination = $myhostname, localhost,\n"
        "    # legacy domains\n"
        "\n"
        "    old.example, other.example\n"
        "relayhost =\n"
    )
    out = render_main_cf(config, current)
    params = parse_main_cf(out)
    assert params["mydestination"] == "$myhostname, pbx, localhost.$mydomain, localhost"
    assert "old.example" not in out
    assert "    # legacy domains" in out


@pytest.mark.parametrize(
    ("maps", "expected"),
    [
        pytest.param(None, "hash:/etc/postfix/canonical", id="absent"),
        pytest.param("", "hash:/etc/postfix/canonical", id="empty"),
        pytest.param("hash:/etc/postfix/other", "hash:/etc/postfix/other, "
                     "hash:/etc/postfix/canonical", id="other-map"),
        pytest.param("btree:/etc/postfix/canonical", "btree:/etc/postfix/canonical",
                     id="already-there"),
    ],
)
def test_main_cf_canonical_maps(config: WizardConfig, maps: str | None, expected: str) -> None:
    """canonical_maps ends up using the wizard's table, after the admin's own maps."""
    current = "" if maps is None else f"canonical_maps = {maps}\n"
    out = render_main_cf(config, current)
    assert parse_main_cf(out)["canonical_maps"] == expected
    assert render_main_cf(config, out) == out


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_main_cf_refuses_a_canonical_table_the_entry_does_not_fit(config: WizardConfig,
                                                                  kind: str) -> None:
    """canonical_maps reads /etc/postfix/canonical as a regexp: or pcre: table: the wizard's
    `@host @fqdn` line would silently break it, so the run stops saying what to do."""
    with pytest.raises(RenderError, match=f"reads /etc/postfix/canonical as a {kind}: table"):
        render_main_cf(config, f"canonical_maps = hash:/etc/x, {kind}:/etc/postfix/canonical\n")


def test_canonical_drops_continuations_of_a_dropped_entry(config: WizardConfig) -> None:
    """An admin `@pbx` entry goes with its continuation lines, even across a comment."""
    current = "@pbx\t@wrong.example\n# note\n\textra@wrong.example\nroot admin@acme.example\n"
    out = render_canonical(config, current)
    assert "wrong.example" not in out
    assert "# note" in out
    assert "root admin@acme.example" in out


def test_hosts_keeps_other_loopback_names_and_ipv6(config: WizardConfig) -> None:
    """127.0.1.1 lines naming several hosts (not the installer's) and IPv6 mappings stay."""
    current = (
        "127.0.1.1 debian.localdomain debian\n"
        "127.0.1.1 myapp.local myapp otherapp\n"
        "127.0.1.2 tools.local debian\n"
        "2001:db8::10 pbx.acme.example pbx\n"
    )
    out = render_hosts(config, current)
    hosts = parse_hosts(out)
    assert "debian.localdomain" not in hosts
    assert hosts["myapp"] == "127.0.1.1"
    assert hosts["tools.local"] == "127.0.1.2"
    assert "2001:db8::10 pbx.acme.example pbx" in out
    assert hosts["pbx.acme.example"] == "192.168.50.10"


def test_without_sources_comments_out_every_include() -> None:
    """Each source line, its continuation lines too, is commented out; the rest is kept."""
    text = (
        "source /etc/network/interfaces.d/*\n"
        "auto lo\n"
        "iface lo inet loopback\n"
        "  source-directory-like-option kept\n"
        "source-directory \\\n"
        "  interfaces.d\n"
        "# source /commented\n"
        "source-dir /x\n"
    )
    assert without_sources(text) == (
        "# source /etc/network/interfaces.d/*\n"
        "auto lo\n"
        "iface lo inet loopback\n"
        "  source-directory-like-option kept\n"
        "# source-directory \\\n"
        "#   interfaces.d\n"
        "# source /commented\n"
        "# source-dir /x\n"
    )


# --- line breaks the tools do not see ---------------------------------------------------------

#: Characters str.splitlines takes for a line break that ifupdown, postfix and the resolver
#: read as part of the line (they cut at a newline only).
NOT_NEWLINES = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


@pytest.mark.parametrize("inside", NOT_NEWLINES, ids=repr)
@pytest.mark.parametrize(("path", "line"), [
    ("/etc/postfix/main.cf", "# relay note{}relayhost = [evil.example]:25"),
    ("/etc/network/interfaces", "# spare nic{}iface eth9 inet dhcp"),
    ("/etc/hosts", "# old{}192.0.2.66 old.example"),
    ("/etc/postfix/canonical", "# note{}@old @evil.example"),
    ("/etc/resolv.conf", "options rotate{}nameserver 192.0.2.66"),
])
def test_a_line_break_only_splitlines_sees_stays_inside_the_admins_line(
    config: WizardConfig, path: str, line: str, inside: str
) -> None:
    """An admin's line holding a form feed, a vertical tab, U+2028 or a carriage return is
    written back byte for byte: it is never cut there, so a comment's tail never comes back
    as a live line."""
    admin_line = line.format(inside)
    out = RENDERERS[path](config, debian(path) + admin_line + "\n")
    assert f"\n{admin_line}\n" in out
    assert RENDERERS[path](config, out) == out


def test_crlf_lines_are_written_back_as_they_were(config: WizardConfig) -> None:
    """A main.cf saved with CRLF line ends keeps them on every line the wizard does not own."""
    current = "smtpd_banner = $myhostname ESMTP\r\nmyhostname = old.example\r\n# note\r\n"
    out = render_main_cf(config, current)
    assert "smtpd_banner = $myhostname ESMTP\r\n" in out
    assert "# note\r\n" in out
    assert "myhostname = pbx.acme.example\n" in out


@needs_tool("postconf")
@pytest.mark.processes
def test_postconf_reads_no_setting_out_of_a_comment(config: WizardConfig, tmp_path: Path) -> None:
    """The real postconf, on the written main.cf, finds no relayhost in a comment that holds a
    form feed."""
    (tmp_path / "main.cf").write_text(render_main_cf(
        config, debian("/etc/postfix/main.cf") + "# relay note\x0crelayhost = [evil.example]:25\n"))
    tool = find_tool("postconf")
    assert tool is not None
    read = run_tool([tool, "-c", str(tmp_path), "-h", "relayhost", "myhostname"])
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == ["", "pbx.acme.example"]


@needs_tool("ifquery")
@pytest.mark.processes
def test_ifquery_finds_no_stanza_in_a_comment(config: WizardConfig, tmp_path: Path) -> None:
    """The real ifquery, on the written interfaces file, knows no interface from a comment
    that holds a file separator."""
    target = tmp_path / "interfaces"
    target.write_text(render_interfaces(
        config, debian("/etc/network/interfaces") + "# spare nic\x1ciface eth9 inet dhcp\n"))
    assert "unknown interface eth9" in ifquery(target, "eth9").stderr
    assert ifquery(target, "eth0").returncode == 0
