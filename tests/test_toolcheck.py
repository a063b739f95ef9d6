"""The rendered files through the real Debian tools: ifquery, postconf and postmap."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.conftest import needs_tool
from tests.helpers import outside_dir
from wizard_runner.config import WizardConfig, config_from_data
from wizard_runner.errors import ApplyError, PrivilegeError
from wizard_runner.layout import Layout
from wizard_runner.sysconf import Plan, plan_changes, read_targets
from wizard_runner.toolcheck import (
    SCRATCH_PREFIX,
    Scratch,
    ToolChecker,
    _clear_stale_scratch,
    _rejected,
    check_included_interfaces,
    check_interface_device,
)
from wizard_runner.tools import ToolOutput, find_tool, run_tool

pytestmark = pytest.mark.processes
LOG = structlog.get_logger()


def writes(config: WizardConfig, root: Path) -> list[Any]:
    """The planned writes for `root`."""
    changes = plan_changes(config, read_targets(Layout(root)))
    return [change for change in changes if change.plan is Plan.WRITE]


@needs_tool("ifquery")
@needs_tool("postconf")
@needs_tool("postmap")
def test_tools_accept_the_rendered_debian_files(config: WizardConfig, sandbox: Path) -> None:
    """ifquery, postconf and postmap accept every file rendered from a Debian install."""
    ToolChecker(config, Layout(sandbox), LOG)(writes(config, sandbox))


@needs_tool("ifquery")
@pytest.mark.parametrize(
    "network",
    [
        pytest.param({}, id="plain"),
        pytest.param({"interface": "eth0.10"}, id="vlan"),
        pytest.param({"interface": "ens3:1", "netmask": "255.255.255.128",
                      "ip_address": "192.168.50.100", "gateway": "192.168.50.126"}, id="alias"),
        pytest.param({"nameservers": ["2001:db8::53", "10.0.0.53"]}, id="ipv6-dns"),
    ],
)
def test_ifquery_reads_back_the_values(
    body: dict[str, Any], sandbox: Path, tmp_path: Path, network: dict[str, Any]
) -> None:
    """ifquery reads the address, netmask and gateway the config asked for."""
    body["network"].update(network)
    config = config_from_data(body)
    change = next(c for c in writes(config, sandbox) if c.path == "/etc/network/interfaces")
    target = tmp_path / "interfaces"
    target.write_bytes(change.new or b"")
    ifquery = find_tool("ifquery")
    assert ifquery is not None
    output = run_tool([ifquery, "--interfaces", str(target), config.network.interface])
    assert output.returncode == 0, output.stderr
    read = dict(line.split(": ", 1) for line in output.stdout.splitlines())
    assert read["address"] == config.network.ip_address
    assert read["netmask"] == config.network.netmask
    assert read["gateway"] == config.network.gateway
    assert read["dns-nameservers"] == " ".join(config.network.nameservers)
    listed = run_tool([ifquery, "--interfaces", str(target), "--list", "--allow", "auto"])
    assert config.network.interface in listed.stdout.split()


@needs_tool("postconf")
def test_postconf_reads_back_the_values(config: WizardConfig, sandbox: Path) -> None:
    """postconf reads the four names and canonical_maps from the rendered main.cf."""
    change = next(c for c in writes(config, sandbox) if c.path == "/etc/postfix/main.cf")
    main_cf = sandbox / "etc/postfix/main.cf"
    main_cf.write_bytes(change.new or b"")
    postconf = find_tool("postconf")
    assert postconf is not None
    output = run_tool([postconf, "-c", str(main_cf.parent), "-h", "myhostname", "mydomain",
                       "myorigin", "mydestination", "canonical_maps", "smtpd_relay_restrictions"])
    assert output.stdout.splitlines() == [
        "pbx.acme.example",
        "acme.example",
        "/etc/mailname",
        "$myhostname, pbx, localhost.$mydomain, localhost",
        "hash:/etc/postfix/canonical",
        "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
    ]


@needs_tool("postmap")
def test_postmap_compiles_and_rewrites(
    config: WizardConfig, sandbox: Path, tmp_path: Path
) -> None:
    """The rendered canonical compiles and maps @pbx to @pbx.acme.example; admin entry kept."""
    change = next(c for c in writes(config, sandbox) if c.path == "/etc/postfix/canonical")
    table = tmp_path / "canonical"
    table.write_bytes(change.new or b"")
    (tmp_path / "main.cf").write_text("myhostname = pbx.acme.example\nmyorigin = $myhostname\n")
    postmap = find_tool("postmap")
    assert postmap is not None
    directory = str(table.parent)
    subprocess.run([postmap, "-c", directory, f"hash:{table}"], check=True, timeout=30)
    for key, value in (("@pbx", "@pbx.acme.example"), ("root", "admin@acme.example")):
        query = run_tool([postmap, "-c", directory, "-q", key, f"hash:{table}"])
        assert query.stdout.strip() == value


@needs_tool("ifquery")
def test_ifquery_rejection_names_the_file(config: WizardConfig, sandbox: Path) -> None:
    """An interfaces file ifupdown cannot read aborts with ifquery's own message."""
    (sandbox / "etc/network/interfaces").write_text("iface eth1 inet carrier-pigeon\n")
    with pytest.raises(ApplyError) as caught:
        ToolChecker(config, Layout(sandbox), LOG)(writes(config, sandbox))
    message = str(caught.value)
    assert message.startswith("/etc/network/interfaces: ifquery rejected the new content:")
    assert "unknown or no method" in message
    assert SCRATCH_PREFIX not in message  # gone by the time anyone reads it
    line = message.split("the new /etc/network/interfaces:", 1)[1].split(":", 1)[0]
    assert message.endswith(f"(line {line} of the new /etc/network/interfaces is "
                            "`iface eth1 inet carrier-pigeon`)")


@needs_tool("postconf")
def test_postconf_rejection_names_the_file(config: WizardConfig, sandbox: Path) -> None:
    """A main.cf line postfix cannot parse aborts with postconf's message."""
    with (sandbox / "etc/postfix/main.cf").open("a") as handle:
        handle.write("this is not a parameter\n")
    with pytest.raises(ApplyError) as caught:
        ToolChecker(config, Layout(sandbox), LOG)(writes(config, sandbox))
    message = str(caught.value)
    assert message.startswith("/etc/postfix/main.cf: postconf rejected the new content")
    assert "missing '=' after attribute name" in message
    assert SCRATCH_PREFIX not in message
    assert re.search(r"the new /etc/postfix/main\.cf, line (\d+): .*\(line \1 of the new "
                     r"/etc/postfix/main\.cf is `this is not a parameter`\)$", message), message


@needs_tool("postconf")
def test_the_line_quoted_is_the_one_postconf_counts(config: WizardConfig, sandbox: Path) -> None:
    """A carriage return inside a line does not end it: the line quoted is the one the tool
    numbered."""
    with (sandbox / "etc/postfix/main.cf").open("a") as handle:
        handle.write("# a\rb\nthis is not a parameter\n")
    with pytest.raises(ApplyError) as caught:
        ToolChecker(config, Layout(sandbox), LOG)(writes(config, sandbox))
    assert re.search(r", line (\d+): .*\(line \1 of the new /etc/postfix/main\.cf is "
                     r"`this is not a parameter`\)$", str(caught.value)), str(caught.value)


@needs_tool("postconf")
def test_a_broken_master_cf_is_blamed_not_main_cf(config: WizardConfig, sandbox: Path) -> None:
    """postconf refusing the master.cf it reads with the new main.cf names master.cf, its
    line quoted."""
    (sandbox / "etc/postfix/master.cf").write_text("garbage\n")
    with pytest.raises(ApplyError) as caught:
        ToolChecker(config, Layout(sandbox), LOG)(writes(config, sandbox))
    message = str(caught.value)
    assert message.startswith("/etc/postfix/master.cf: postconf rejected it, reading it with "
                              "the new /etc/postfix/main.cf: ")
    assert message.endswith("(line 1 of /etc/postfix/master.cf is `garbage`)")
    assert SCRATCH_PREFIX not in message


@needs_tool("postmap")
def test_postmap_warning_is_a_rejection(config: WizardConfig, sandbox: Path) -> None:
    """postmap exits 0 on a malformed line but warns; the warning rejects the table."""
    with (sandbox / "etc/postfix/canonical").open("a") as handle:
        handle.write("just-a-key-without-value\n")
    with pytest.raises(ApplyError) as caught:
        ToolChecker(config, Layout(sandbox), LOG)(writes(config, sandbox))
    message = str(caught.value)
    assert message.startswith("/etc/postfix/canonical: postmap rejected the new content")
    assert "expected format: key whitespace value" in message
    assert message.endswith("of the new /etc/postfix/canonical is `just-a-key-without-value`)")
    assert SCRATCH_PREFIX not in message


def test_a_tool_that_cannot_run_is_not_said_to_reject() -> None:
    """A tool failing for a reason of its own (a fatal error naming no file checked) could not
    check the file: it did not reject its content."""
    found = _rejected("/etc/postfix/canonical", "postmap", ToolOutput(
        1, "", "postmap: fatal: file /tmp/x/main.cf: parameter mail_owner: unknown user name "
        "value: postfix"), {
            Path("/tmp/x/main.cf"): Scratch("the check's own main.cf", b"a = b\n"),
            Path("/tmp/x/canonical"): Scratch("the new /etc/postfix/canonical", b"a b\n",
                                              "/etc/postfix/canonical")})
    assert str(found) == ("/etc/postfix/canonical: postmap could not check the new content: "
                          "postmap: fatal: file the check's own main.cf: parameter mail_owner: "
                          "unknown user name value: postfix")


def test_missing_tool_is_logged_not_fatal(
    config: WizardConfig, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the Debian tools, the files are checked by the rules alone and the log says so."""
    monkeypatch.setattr("wizard_runner.toolcheck.find_tool", lambda name: None)
    with structlog.testing.capture_logs() as logs:
        ToolChecker(config, Layout(sandbox), structlog.get_logger())(writes(config, sandbox))
    missing = sorted(entry["tool"] for entry in logs if entry["event"] == "validator_missing")
    assert missing == ["ifquery", "postconf", "postmap"]


def test_tool_timeout_is_an_error(tmp_path: Path) -> None:
    """A tool that hangs is stopped and reported, never waited on forever."""
    with pytest.raises(ApplyError, match="did not finish within 1 s"):
        run_tool(["/bin/sleep", "30"], timeout=1)


def test_no_descriptor_left_for_a_tools_output_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No descriptor left (EMFILE) for the tool's output: an ApplyError naming the tool and
    why, like any tool that cannot run, not an OSError."""
    import errno  # noqa: PLC0415 - only here

    def exhausted(name: str, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr("wizard_runner.tools.os.memfd_create", exhausted)
    with pytest.raises(ApplyError, match=r"^/bin/true: cannot run: Too many open files$"):
        run_tool(["/bin/true"])


def test_a_tool_that_leaves_a_daemon_holding_its_output_ends_at_its_exit() -> None:
    """A tool whose hook starts a daemon that keeps its stdout open (ifup's if-up.d): its end
    is its exit, with what it printed, not a wait for the daemon that ends in a timeout."""
    marker = f"sleep 9{os.getpid() % 1000}7"
    script = f"echo configured; {marker} & echo done >&2; exit 0"
    try:
        done = run_tool(["/bin/sh", "-c", script], timeout=5)
        assert (done.returncode, done.stdout, done.stderr) == (0, "configured\n", "done\n")
    finally:
        subprocess.run(["pkill", "-f", f"^{marker}$"], check=False)


@pytest.mark.parametrize(
    ("included", "message"),
    [
        pytest.param("auto eth0\niface eth0 inet dhcp\n", "`iface eth0 inet dhcp`", id="stanza"),
        pytest.param("mapping eth0\n  script /bin/true\n", "`mapping eth0` applies to eth0",
                     id="mapping"),
        pytest.param("iface br0 inet dhcp\n  bridge_ports eth0\n", "eth0 is a port of br0",
                     id="bridge"),
    ],
)
def test_included_file_configuring_the_interface_is_refused(
    config: WizardConfig, sandbox: Path, included: str, message: str
) -> None:
    """A file under interfaces.d that also configures eth0 stops the run, naming the file."""
    (sandbox / "etc/network/interfaces.d/50-cloud-init").write_text(included)
    change = next(c for c in writes(config, sandbox) if c.path == "/etc/network/interfaces")
    with pytest.raises(ApplyError) as caught:
        check_included_interfaces(config, Layout(sandbox), change.new or b"")
    text = str(caught.value)
    assert text.startswith("/etc/network/interfaces: /etc/network/interfaces.d/50-cloud-init "
                           "(included by `source /etc/network/interfaces.d/*`) also configures eth0")
    assert message in text


def test_included_files_of_other_interfaces_are_fine(config: WizardConfig, sandbox: Path) -> None:
    """Other interfaces, and files source-directory skips (run-parts names), are no conflict."""
    directory = sandbox / "etc/network/interfaces.d"
    (directory / "eth1").write_text("iface eth1 inet dhcp\n")
    (directory / "old.dpkg-old").write_text("iface eth0 inet dhcp\n")
    text = b"source-directory interfaces.d\niface eth0 inet static\n  address 10.0.0.2/24\n"
    check_included_interfaces(config, Layout(sandbox), text)
    (directory / "eth0").write_text("iface eth0 inet dhcp\n")
    with pytest.raises(ApplyError, match=r"/etc/network/interfaces.d/eth0 \(included by "
                       r"`source-directory interfaces.d`\)"):
        check_included_interfaces(config, Layout(sandbox), text)


# --- includes and master.cf are read under the root only ------------------------------------

EXPECTED_REFUSAL = "/etc/network/interfaces: `{line}` cannot be checked for another eth0 stanza: "
STATIC = "iface eth0 inet static\n  address 192.168.50.10/24\n"


@pytest.mark.parametrize(
    ("top", "files", "found", "via"),
    [
        pytest.param("source-directory interfaces.d",
                     {"etc/network/interfaces.d/more": "source-directory deeper\n",
                      "etc/network/interfaces.d/deeper/eth0": "iface eth0 inet dhcp\n"},
                     "/etc/network/interfaces.d/deeper/eth0",
                     "`source-directory deeper` in /etc/network/interfaces.d/more",
                     id="nested-directory-relative-to-its-file"),
        pytest.param("source /etc/network/interfaces.d/*",
                     {"etc/network/interfaces.d/more": "source ../../eth0.cfg\n",
                      "etc/eth0.cfg": "iface eth0 inet dhcp\n"},
                     "/etc/eth0.cfg", "`source ../../eth0.cfg` in /etc/network/interfaces.d/more",
                     id="nested-source"),
        pytest.param("source /etc/a.cfg /etc/b.cfg",
                     {"etc/a.cfg": "iface eth1 inet dhcp\n", "etc/b.cfg": "iface eth0 inet dhcp\n"},
                     "/etc/b.cfg", "`source /etc/b.cfg`", id="second-file-of-one-line"),
        pytest.param("source-directory /etc/one /etc/two",
                     {"etc/one/eth1": "iface eth1 inet dhcp\n",
                      "etc/two/eth0": "iface eth0 inet dhcp\n"},
                     "/etc/two/eth0", "`source-directory /etc/two`",
                     id="second-directory-of-one-line"),
    ],
)
def test_every_included_file_is_checked(config: WizardConfig, sandbox: Path, top: str,
                                        files: dict[str, str], found: str, via: str) -> None:
    """As ifupdown reads them: each path of a line, and the files an included file includes
    (relative to its own directory); the refusal names the file and the line that led there."""
    for name, text in files.items():
        (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
        (sandbox / name).write_text(text)
    with pytest.raises(ApplyError) as caught:
        check_included_interfaces(config, Layout.under(sandbox), f"{top}\n{STATIC}".encode())
    assert str(caught.value).startswith(
        f"/etc/network/interfaces: {found} (included by {via}) also configures eth0")


def test_includes_that_include_each_other_are_read_once(config: WizardConfig,
                                                        sandbox: Path) -> None:
    """A loop of includes ends: each file is checked once, and no conflict is found."""
    (sandbox / "etc/a.cfg").write_text("iface eth1 inet dhcp\nsource /etc/b.cfg\n")
    (sandbox / "etc/b.cfg").write_text("iface eth2 inet dhcp\nsource a.cfg\n")
    check_included_interfaces(config, Layout.under(sandbox), f"source /etc/a.cfg\n{STATIC}".encode())


def test_an_include_of_the_interfaces_file_itself_is_refused(config: WizardConfig,
                                                             sandbox: Path) -> None:
    """An included file that includes /etc/network/interfaces again: ifup would read the
    new file twice, so the run is refused, naming the line."""
    (sandbox / "etc/network/interfaces.d/loop").write_text("source /etc/network/interfaces\n")
    with pytest.raises(ApplyError) as caught:
        check_included_interfaces(config, Layout.under(sandbox),
                                  f"source /etc/network/interfaces.d/*\n{STATIC}".encode())
    assert str(caught.value) == (
        "/etc/network/interfaces: `source /etc/network/interfaces` in "
        "/etc/network/interfaces.d/loop includes /etc/network/interfaces itself: ifup would "
        "apply its stanzas twice; remove that line")


def test_on_the_live_system_relative_includes_follow_symlinks(config: WizardConfig,
                                                              tmp_path: Path) -> None:
    """On the live system, `..` in an include of a file reached through a symlink leads
    where the kernel (and ifupdown) takes it: past the symlink's target, not back by name."""
    (tmp_path / "real/conf").mkdir(parents=True)
    (tmp_path / "real/conf/more").write_text("source ../eth0.cfg\n")
    (tmp_path / "real/eth0.cfg").write_text("iface eth0 inet dhcp\n")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked/conf").symlink_to(tmp_path / "real/conf")
    (tmp_path / "linked/eth0.cfg").write_text("iface eth1 inet dhcp\n")  # not what is read
    with pytest.raises(ApplyError) as caught:
        check_included_interfaces(config, Layout.under("/"),
                                  f"source {tmp_path}/linked/conf/*\n{STATIC}".encode())
    assert f"{tmp_path}/real/eth0.cfg (included by `source ../eth0.cfg` in " \
        f"{tmp_path}/linked/conf/more) also configures eth0" in str(caught.value)


def test_included_files_are_held_one_at_a_time(config: WizardConfig, sandbox: Path) -> None:
    """Twenty included files of 1 MiB each: the check holds one at a time, not the tree."""
    directory = sandbox / "etc/network/interfaces.d"
    for index in range(20):
        (directory / f"big{index}").write_text(f"# {'x' * 2**20}\niface eth{index + 1} inet dhcp\n")
    tracemalloc.start()
    try:
        check_included_interfaces(config, Layout.under(sandbox),
                                  f"source-directory interfaces.d\n{STATIC}".encode())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


# --- the wizard's network device exists on the live system ----------------------------------


@pytest.fixture
def net_dir(tmp_path: Path) -> Path:
    """A /sys/class/net of a machine with lo and ens18."""
    devices = tmp_path / "net"
    for name in ("lo", "ens18"):
        (devices / name).mkdir(parents=True)
    return devices


def _with_interface(body: dict[str, Any], interface: str) -> WizardConfig:
    body["network"]["interface"] = interface
    return config_from_data(body)


@pytest.mark.parametrize("interface", ["eth0", "eth0.10", "eth0:1"])
def test_a_device_the_machine_lacks_is_refused(body: dict[str, Any], net_dir: Path,
                                               interface: str) -> None:
    """On the live system, a stanza for a missing device (for a VLAN its raw device, for an
    alias its device) is refused naming the field, the device and the ones there are."""
    config = _with_interface(body, interface)
    with pytest.raises(ApplyError) as caught:
        check_interface_device(config, Layout.under("/"), STATIC.encode(), net_dir)
    assert str(caught.value).startswith(
        f"network.interface: {interface}: this machine has no network device eth0 (it has: "
        "ens18, lo); its static address would go nowhere")


@pytest.mark.parametrize("interface", ["ens18", "ens18.10", "ens18:1"])
def test_a_device_the_machine_has_passes(body: dict[str, Any], net_dir: Path,
                                         interface: str) -> None:
    """The device itself, a VLAN's raw device, an alias's device: present, so no refusal."""
    config = _with_interface(body, interface)
    check_interface_device(config, Layout.under("/"), STATIC.encode(), net_dir)


@pytest.mark.parametrize("option", ["bridge_ports ens18", "bond-slaves ens18",
                                    "pre-up ip link add br0 type bridge"])
def test_a_device_ifup_makes_passes(body: dict[str, Any], net_dir: Path, option: str) -> None:
    """A bridge or bond whose stanza names its ports, or that a command makes first, need not
    exist yet; the same option in another interface's stanza does not count."""
    config = _with_interface(body, "br0")
    text = f"iface br0 inet static\n  address 10.0.0.2/24\n  {option}\n"
    check_interface_device(config, Layout.under("/"), text.encode(), net_dir)
    other = f"iface br1 inet manual\n  {option}\niface br0 inet static\n  address 10.0.0.2/24\n"
    with pytest.raises(ApplyError, match="no network device br0"):
        check_interface_device(config, Layout.under("/"), other.encode(), net_dir)


@pytest.mark.parametrize(("interface", "text"), [
    pytest.param("bond0.10", "iface bond0 inet manual\n  bond-slaves ens18\n", id="vlan-on-a-bond"),
    pytest.param("br0:1", "iface br0 inet manual\n  bridge_ports ens18\n", id="alias-on-a-bridge"),
    pytest.param("lan0", "rename ens19=lan0\n", id="renamed"),
])
def test_a_device_ifup_makes_under_a_vlan_alias_or_rename_passes(
        body: dict[str, Any], net_dir: Path, interface: str, text: str) -> None:
    """A VLAN or alias on a device ifup makes, or a name a `rename` line gives: no refusal."""
    config = _with_interface(body, interface)
    check_interface_device(config, Layout.under("/"), f"{text}{STATIC}".encode(), net_dir)


def test_a_sysfs_file_is_no_device(body: dict[str, Any], net_dir: Path) -> None:
    """bonding_masters, a file beside the devices, is not taken for one, nor listed."""
    (net_dir / "bonding_masters").write_text("\n")
    with pytest.raises(ApplyError) as caught:
        check_interface_device(_with_interface(body, "bonding_masters"), Layout.under("/"),
                               STATIC.encode(), net_dir)
    assert "no network device bonding_masters (it has: ens18, lo)" in str(caught.value)


def test_the_device_is_not_looked_for_under_a_root(body: dict[str, Any], net_dir: Path,
                                                   sandbox: Path, tmp_path: Path) -> None:
    """Under --root the files are for another machine, and without sysfs nothing is known:
    neither is checked against this machine's devices."""
    config = _with_interface(body, "eth0")
    check_interface_device(config, Layout.under(sandbox), STATIC.encode(), net_dir)
    check_interface_device(config, Layout.under("/"), STATIC.encode(), tmp_path / "no-sysfs")


def test_the_real_sysfs_is_read(body: dict[str, Any]) -> None:
    """This machine's own /sys/class/net: its devices are there, a made-up one is not."""
    present = sorted(name for name in os.listdir("/sys/class/net") if name != "lo")
    if not present:
        pytest.skip("needs a network device besides lo")
    check_interface_device(_with_interface(body, present[0]), Layout.under("/"), STATIC.encode())
    with pytest.raises(ApplyError, match=rf"no network device nosuch9 \(it has: .*\b{present[0]}\b"):
        check_interface_device(_with_interface(body, "nosuch9"), Layout.under("/"),
                               STATIC.encode())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the sandbox root, holding a stanza for eth0 that must not be read."""
    return outside_dir(tmp_path, {"eth0": "iface eth0 inet dhcp\n"})


@pytest.mark.parametrize(
    ("line", "placed", "found"),
    [
        pytest.param("source-directory ../interfaces.d", "etc/interfaces.d/eth0",
                     "/etc/interfaces.d/eth0", id="source-directory-dotdot"),
        pytest.param("source ../interfaces.d/*", "etc/interfaces.d/eth0",
                     "/etc/interfaces.d/eth0", id="source-dotdot-glob"),
        pytest.param("source ../../../../../../etc/eth0", "etc/eth0", "/etc/eth0",
                     id="dotdot-stops-at-the-root"),
        pytest.param("source /*/network/interfaces.d/e*", "etc/network/interfaces.d/eth0",
                     "/etc/network/interfaces.d/eth0", id="glob-in-a-directory"),
        pytest.param("source-dir interfaces.d", "etc/network/interfaces.d/eth0",
                     "/etc/network/interfaces.d/eth0", id="source-dir"),
    ],
)
def test_includes_resolve_from_etc_network_inside_the_root(
    config: WizardConfig, sandbox: Path, line: str, placed: str, found: str
) -> None:
    """Relative includes start at /etc/network and `..` stops at the root: the file is found there."""
    (sandbox / placed).parent.mkdir(parents=True, exist_ok=True)
    (sandbox / placed).write_text("iface eth0 inet dhcp\n")
    with pytest.raises(ApplyError) as caught:
        check_included_interfaces(config, Layout.under(sandbox), f"{line}\n{STATIC}".encode())
    assert str(caught.value).startswith(
        f"/etc/network/interfaces: {found} (included by `{line}`) also configures eth0"
    )


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("source /", id="source-root"),
        pytest.param("source /*", id="source-root-glob"),
        pytest.param("source /etc/*", id="directories-matched"),
        pytest.param("source-directory /", id="source-directory-root"),
        pytest.param("source-directory /etc/hostname", id="source-directory-file"),
        pytest.param("source /etc/hostname/*", id="below-a-file"),
        pytest.param("source /nowhere/*", id="nothing"),
        pytest.param("source /etc/network/../../../etc/./network//interfaces.d/*", id="winding"),
    ],
)
def test_unusual_includes_are_handled(config: WizardConfig, sandbox: Path, line: str) -> None:
    """Includes naming the root, directories or nothing read only regular files, and pass."""
    check_included_interfaces(config, Layout.under(sandbox), f"{line}\n{STATIC}".encode())


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("line", "make", "reason"),
    [
        pytest.param("source-directory interfaces.d",
                     lambda root, out: (root / "etc/network/interfaces.d/eth0").symlink_to(out / "eth0"),
                     "/etc/network/interfaces.d/eth0: is a symlink (to {out}/eth0); not followed",
                     id="symlinked-file"),
        pytest.param("source /etc/network/interfaces.d/*",
                     lambda root, out: (root / "etc/network/interfaces.d/eth0").symlink_to(out / "eth0"),
                     "/etc/network/interfaces.d/eth0: is a symlink (to {out}/eth0); not followed",
                     id="symlinked-file-by-glob"),
        pytest.param("source-directory interfaces.d",
                     lambda root, out: swap(root / "etc/network/interfaces.d", out),
                     "/etc/network/interfaces.d: is a symlink (to {out}); refusing to follow it",
                     id="symlinked-directory"),
        pytest.param("source /etc/network/interfaces.d/*",
                     lambda root, out: os.mkfifo(root / "etc/network/interfaces.d/eth9"),
                     "/etc/network/interfaces.d/eth9: not a regular file (a FIFO)", id="fifo"),
        pytest.param("source-directory interfaces.d",
                     lambda root, out: fifo_link(root / "etc/network/interfaces.d/eth9", out),
                     "/etc/network/interfaces.d/eth9: is a symlink (to {out}/fifo)",
                     id="symlink-to-a-fifo"),
    ],
)
def test_includes_never_leave_the_root(
    config: WizardConfig, sandbox: Path, outside: Path, line: str,
    make: Callable[[Path, Path], object], reason: str,
) -> None:
    """An include through a symlink, or a FIFO, is refused at once naming the line and why."""
    make(sandbox, outside)
    with pytest.raises(ApplyError) as caught:
        check_included_interfaces(config, Layout.under(sandbox), f"{line}\n{STATIC}".encode())
    assert str(caught.value).startswith(
        EXPECTED_REFUSAL.format(line=line) + reason.format(out=outside)
    )


def swap(path: Path, target: Path) -> None:
    """Replace the directory `path` by a symlink to `target`."""
    path.rmdir()
    path.symlink_to(target)


def fifo_link(path: Path, outside: Path) -> None:
    """A symlink at `path` to a FIFO outside the root."""
    os.mkfifo(outside / "fifo")
    path.symlink_to(outside / "fifo")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda path, out: path.symlink_to(out / "eth0"),
                     "/etc/postfix/master.cf: is a symlink (to {out}/eth0); not followed under "
                     "the root", id="symlink"),
        pytest.param(lambda path, out: os.mkfifo(path),
                     "/etc/postfix/master.cf: not a regular file (a FIFO)", id="fifo"),
    ],
)
def test_master_cf_is_read_under_the_root_only(
    config: WizardConfig, sandbox: Path, outside: Path, monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path, Path], object], message: str,
) -> None:
    """master.cf, read for the postconf check, follows the same rules as an include."""
    monkeypatch.setattr("wizard_runner.toolcheck.find_tool", lambda name: None)
    master_cf = sandbox / "etc/postfix/master.cf"
    master_cf.unlink(missing_ok=True)
    make(master_cf, outside)
    with pytest.raises(ApplyError) as caught:
        ToolChecker(config, Layout.under(sandbox), LOG)(writes(config, sandbox))
    assert str(caught.value).startswith(message.format(out=outside))


@needs_tool("ifquery")
@pytest.mark.timeout(30)
def test_ifquery_does_not_follow_includes_out_of_the_root(
    config: WizardConfig, sandbox: Path, outside: Path
) -> None:
    """Under --root, ifquery checks the new file without its includes, which name host paths:
    a FIFO out there (where ifquery would block) does not stop the check."""
    os.mkfifo(outside / "eth9")
    interfaces = sandbox / "etc/network/interfaces"
    interfaces.write_text(f"source-directory {outside}\n" + interfaces.read_text())
    ToolChecker(config, Layout.under(sandbox), LOG)(writes(config, sandbox))


def test_an_include_it_may_not_read_is_a_privilege_error(
    config: WizardConfig, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source-directory the runner may not list is refused with exit 77 (as an unreadable
    target is), naming the line."""
    listdir = os.listdir

    def refused(path: int | str = ".") -> list[str]:
        if isinstance(path, int):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    with pytest.raises(PrivilegeError, match=r"^/etc/network/interfaces: `source-directory "
                       r"interfaces.d` cannot be checked: Permission denied$") as caught:
        check_included_interfaces(config, Layout.under(sandbox),
                                  b"source-directory interfaces.d\n" + STATIC.encode())
    assert caught.value.exit_code == 77


def test_nul_byte_in_an_include_is_an_error(config: WizardConfig, sandbox: Path) -> None:
    """A NUL byte in an include's path gives an error naming the line, not a traceback."""
    with pytest.raises(ApplyError, match=r"^/etc/network/interfaces: `source /etc/a\x00b` cannot be checked: embedded null byte"):
        check_included_interfaces(config, Layout.under(sandbox), b"source /etc/a\x00b\n" + STATIC.encode())


def test_scratch_left_by_a_killed_run_is_removed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The next check removes the scratch directories of checks whose process is gone (a
    killed run), and leaves those of a live one and anything else alone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{SCRATCH_PREFIX}{gone.pid}-x1"
    (stale / "postfix").mkdir(parents=True)
    (stale / "postfix/main.cf").write_text("a = b\n")
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-x2"
    live.mkdir()
    other = tmp_path / f"{SCRATCH_PREFIX}notapid"
    other.mkdir()
    _clear_stale_scratch()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_a_refusal_quotes_a_huge_line_in_part() -> None:
    """An admin's 3 MB line, which the tool quotes too, is quoted in part: the message (in
    the result, for each file) stays small."""
    line = b"\x01" * 3_000_000 + b" bar"
    found = _rejected("/etc/postfix/main.cf", "postconf", ToolOutput(
        1, "", f"postconf: fatal: /tmp/x/main.cf, line 2: missing '=': {line.decode()}"), {
            Path("/tmp/x/main.cf"): Scratch("the new /etc/postfix/main.cf", b"a = b\n" + line,
                                            "/etc/postfix/main.cf")})
    message = str(found)
    assert len(message) < 3000
    assert "line 2 of the new /etc/postfix/main.cf is `\\x01\\x01" in message
    assert message.endswith("...`)")
