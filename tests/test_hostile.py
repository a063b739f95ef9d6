"""Hostile input: any JSON either validates or gives the config error; accepted configs render
files that read back right and pass the real tools; injection strings are refused or inert."""

from __future__ import annotations

import copy
import io
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLES, Reliability, needs_root, needs_tool, seed_root, snapshot
from tests.helpers import (
    outside_dir,
    parse_hosts,
    parse_interfaces,
    parse_main_cf,
    parse_resolv,
)
from wizard_runner.cli import main
from wizard_runner.config import WizardConfig, config_from_data, parse_config
from wizard_runner.errors import ConfigError
from wizard_runner.render import RENDERERS
from wizard_runner.tools import find_tool, run_tool

EXAMPLE: dict[str, Any] = json.loads((EXAMPLES / "wizard.json").read_text())
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)
FIELDS = [
    ("admin_password",), ("timezone",), ("language",), ("entity_name",),
    ("network", "hostname"), ("network", "domain"), ("network", "interface"),
    ("network", "ip_address"), ("network", "netmask"), ("network", "gateway"),
    ("network", "nameservers"), ("context_internal", "display_name"),
    ("context_internal", "number_start"), ("context_internal", "number_end"),
    ("context_incall", "display_name"), ("context_incall", "number_start"),
    ("context_outcall", "display_name"),
]
INJECTIONS = [
    "pbx\n10.0.0.66 evil", "a\x00b", "x; rm -rf /", "$(reboot)", "`id`", "a" * 5000,
    "раbх", "pbx\u200b", "ｐｂｘ", "../../etc/passwd", "-rf", "%s%n", "\r\nInjected: yes",
    "pbx\\", "' OR '1'='1", "${IFS}", "\t", " ",
]


class Count:
    """How many examples a property checked (each test records its own row from it)."""

    def __init__(self) -> None:
        self.examples = 0

    def add(self) -> None:
        """One more example checked."""
        self.examples += 1


def with_field(path: tuple[str, ...], value: object) -> dict[str, Any]:
    """The example body with one field replaced."""
    body = copy.deepcopy(EXAMPLE)
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES)
def any_json_value(seen: Count, value: object) -> None:
    """Whatever the JSON, validation either succeeds or raises ConfigError, nothing else."""
    seen.add()
    try:
        config_from_data(value)
    except ConfigError as error:
        assert error.problems


def test_any_json_value_validates_or_is_a_config_error(reliability: Reliability) -> None:
    """Whatever the JSON, validation either succeeds or raises ConfigError, nothing else."""
    seen = Count()
    any_json_value(seen)
    reliability.record(area="hostile input", fault="any JSON value as the body",
                       injection="hypothesis: nested null/bool/number/string/list/object",
                       trials=seen.examples, lost=0,
                       outcome="valid, or the config error listing problems; never another "
                       "exception")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), JSON_VALUES)
def any_value_in_any_field(seen: Count, path: tuple[str, ...], value: object) -> None:
    """Any JSON value in any field validates or names that field in the error."""
    seen.add()
    try:
        config_from_data(with_field(path, value))
    except ConfigError as error:
        assert any(problem.startswith(path[0]) for problem in error.problems), error.problems


def test_any_value_in_any_field(reliability: Reliability) -> None:
    """Any JSON value in any field validates or names that field in the error."""
    seen = Count()
    any_value_in_any_field(seen)
    reliability.record(area="hostile input", fault="any JSON value in any field",
                       injection=f"hypothesis: each of {len(FIELDS)} fields",
                       trials=seen.examples, lost=0,
                       outcome="valid, or the config error naming that field")


def rendered(config: WizardConfig) -> dict[str, str]:
    """Every managed file rendered from Debian's content."""
    seed = Path(__file__).resolve().parent.parent / "examples/debian-root"
    return {path: RENDERERS[path](config, (seed / path.lstrip("/")).read_text())
            for path in RENDERERS}


@pytest.mark.parametrize("path", FIELDS, ids=[".".join(p) for p in FIELDS])
def test_injection_strings_are_refused_or_inert(
    path: tuple[str, ...], reliability: Reliability
) -> None:
    """Each injection string in each field is refused, or lands as one inert token."""
    lost = 0
    for value in INJECTIONS:
        placed: object = [value] if path[-1] == "nameservers" else value
        try:
            config = config_from_data(with_field(path, placed))
        except ConfigError:
            continue
        files = rendered(config)
        # Accepted only for free-text fields, which no system file contains.
        if any(value in text for text in files.values()) or "\n" in value or "\x00" in value:
            lost += 1
    reliability.record(area="hostile input", fault=f"injection strings in {'.'.join(path)}",
                       injection=f"{len(INJECTIONS)} strings: newline, NUL, `;`, `$(...)`, "
                       "backticks, 5000 chars, look-alikes, ...", trials=len(INJECTIONS),
                       lost=lost, outcome="refused with the field named, or never written "
                       "to a system file")
    assert lost == 0


LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
OCTET = st.integers(min_value=1, max_value=254)


@st.composite
def networks(draw: st.DrawFn) -> dict[str, Any]:
    """A valid network section, drawn widely."""
    prefix = draw(st.integers(min_value=8, max_value=29))
    base = draw(st.tuples(OCTET, OCTET, OCTET, OCTET))
    subnet = ipaddress.IPv4Network(f"{'.'.join(map(str, base))}/{prefix}", strict=False)
    size = subnet.num_addresses - 2  # host addresses, without network and broadcast
    first = subnet.network_address + 1
    address = first + draw(st.integers(0, size - 1))
    gateway = first + draw(st.integers(0, size - 1))
    if gateway == address:
        gateway = first if address != first else first + 1
    vlan = draw(st.booleans())
    return {
        "hostname": draw(LABEL),
        "domain": ".".join(draw(st.lists(LABEL, min_size=1, max_size=3))) + ".example",
        "interface": "eth1.42" if vlan else draw(st.sampled_from(["eth0", "ens3", "enp0s31f6"])),
        "ip_address": str(address),
        "netmask": str(subnet.netmask),
        "gateway": str(gateway),
        "nameservers": [str(ipaddress.IPv4Address(draw(st.integers(16777216, 3758096383))))],
    }


def accepted(network: dict[str, Any]) -> WizardConfig | None:
    """The config with this network, or None when the rules refuse it (reserved ranges)."""
    try:
        return config_from_data(with_field(("network",), network))
    except ConfigError:
        return None


def test_accepted_configs_read_back(reliability: Reliability) -> None:
    """Every accepted config renders files that parse back to the same values."""
    seen = Count()
    accepted_configs_read_back(seen)
    reliability.record(area="hostile input", fault="accepted configs, read back",
                       injection="hypothesis: networks /8 to /29, VLANs",
                       trials=seen.examples, lost=0,
                       outcome="every file parses back to the config's values")


@settings(max_examples=150, deadline=None)
@given(networks())
def accepted_configs_read_back(seen: Count, network: dict[str, Any]) -> None:
    """Every accepted config renders files that parse back to the same values."""
    config = accepted(network)
    if config is None:
        return
    seen.add()
    files = rendered(config)
    net = config.network
    assert files["/etc/hostname"] == f"{net.hostname}\n"
    assert files["/etc/mailname"] == f"{net.fqdn}\n"
    assert parse_hosts(files["/etc/hosts"])[net.fqdn] == net.ip_address
    assert parse_resolv(files["/etc/resolv.conf"]) == ([net.domain], net.nameservers)
    stanza = parse_interfaces(files["/etc/network/interfaces"])[f"{net.interface} inet"]
    assert (stanza["address"], stanza["netmask"], stanza["gateway"]) == (
        net.ip_address, net.netmask, net.gateway)
    assert parse_main_cf(files["/etc/postfix/main.cf"])["myhostname"] == net.fqdn


def settle(directory: Path) -> None:
    """Date the files a minute back: postfix waits while a file looks freshly written."""
    past = time.time() - 60
    for path in directory.iterdir():
        os.utime(path, (past, past))


@pytest.mark.processes
@needs_tool("ifquery")
@needs_tool("postconf")
@needs_tool("postmap")
def test_accepted_configs_pass_the_real_tools(reliability: Reliability) -> None:
    """ifquery, postconf and postmap accept what any accepted config renders."""
    seen = Count()
    accepted_configs_pass_the_real_tools(seen)
    reliability.record(area="hostile input", fault="accepted configs, real tools",
                       injection="hypothesis: rendered files through ifquery, postconf, postmap",
                       trials=seen.examples, lost=0, outcome="all accepted, values read back")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def accepted_configs_pass_the_real_tools(seen: Count, network: dict[str, Any]) -> None:
    """ifquery, postconf and postmap accept what any accepted config renders."""
    config = accepted(network)
    if config is None:
        return
    seen.add()
    files = rendered(config)
    net = config.network
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "interfaces").write_text(files["/etc/network/interfaces"])
        ifquery = run_tool([str(find_tool("ifquery")), "-i", str(work / "interfaces"),
                            net.interface])
        assert ifquery.returncode == 0, ifquery.stderr
        assert f"address: {net.ip_address}" in ifquery.stdout
        (work / "main.cf").write_text(files["/etc/postfix/main.cf"])
        settle(work)
        postconf = run_tool([str(find_tool("postconf")), "-c", scratch, "-h", "myhostname"])
        assert postconf.stdout.strip() == net.fqdn, postconf.stderr
        table = work / "canonical"
        table.write_text(files["/etc/postfix/canonical"])
        (work / "main.cf").write_text(f"myhostname = {net.fqdn}\nmyorigin = $myhostname\n")
        settle(work)
        postmap = run_tool([str(find_tool("postmap")), "-c", scratch, f"hash:{table}"])
        assert postmap.returncode == 0
        assert "warning" not in postmap.stderr


@pytest.mark.processes
@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_getent_resolves_the_fqdn_in_a_private_namespace(reliability: Reliability) -> None:
    """With the rendered /etc/hosts bind-mounted in a private mount namespace, the resolver
    itself maps the FQDN and the short name to ip_address."""
    seen = Count()
    getent_resolves_the_fqdn(seen)
    reliability.record(area="hostile input", fault="accepted configs, the resolver",
                       injection="rendered /etc/hosts bind-mounted in a private mount "
                       "namespace, getent hosts", trials=seen.examples, lost=0,
                       outcome="FQDN and short name resolve to ip_address")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def getent_resolves_the_fqdn(seen: Count, network: dict[str, Any]) -> None:
    """The resolver maps the FQDN and the short name of an accepted config to ip_address."""
    config = accepted(network)
    if config is None:
        return
    net = config.network
    with tempfile.NamedTemporaryFile("w", suffix="-hosts", delete=False) as hosts:
        hosts.write(rendered(config)["/etc/hosts"])
    try:
        script = (f"mount --bind {hosts.name} /etc/hosts && getent hosts {net.fqdn} && "
                  f"getent hosts {net.hostname}")
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script], capture_output=True, text=True, timeout=30, check=False)
    finally:
        Path(hosts.name).unlink()
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"mount namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[0] == net.ip_address
    assert lines[1].split()[0] == net.ip_address
    seen.add()


# --- hostile roots: the root is a fence, end to end through the CLI ---------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the sandbox root, with a secret: no run may read or change it."""
    return outside_dir(tmp_path, {"main.cf": "myhostname = elsewhere\n",
                                  "shadow": "root:$6$SECRET-HASH:19000:0:99999:7:::\n"})


def run_cli(root: Path, *extra: str) -> tuple[int, str, str]:
    """`wizard-runner run` on `root` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(root),
                 "--no-scripts", "--json", *extra], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def holding(root: Path, secret: bytes) -> list[str]:
    """Every file under `root` whose bytes contain `secret` (backups, logs, results included)."""
    return [str(path) for path in root.rglob("*")
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes()]


@pytest.mark.processes
@pytest.mark.usefixtures("restore_signals")
def test_run_refuses_a_symlinked_postfix_directory(tmp_path: Path, outside: Path) -> None:
    """etc/postfix -> a directory outside: exit 73 naming it; nothing written in or out."""
    root = seed_root(tmp_path / "root")
    shutil.rmtree(root / "etc/postfix")
    (root / "etc/postfix").symlink_to(outside)
    before_etc, before_outside = snapshot(root / "etc"), snapshot(outside)
    code, out, err = run_cli(root)
    assert code == 73
    error = json.loads(out)["error"]
    assert error.startswith(f"/etc/postfix: is a symlink (to {outside}); refusing to follow it "
                            f"out of the root {root}")
    assert "/etc/postfix: is a symlink" in err
    assert snapshot(root / "etc") == before_etc
    assert snapshot(outside) == before_outside
    assert not (root / "var/backups/wizard-runner").exists()


@pytest.mark.processes
@pytest.mark.usefixtures("restore_signals")
def test_replace_symlinks_never_reads_the_link_target(tmp_path: Path, outside: Path) -> None:
    """etc/hosts -> a secret outside, --replace-symlinks: new hosts, the secret nowhere inside."""
    root = seed_root(tmp_path / "root")
    (root / "etc/hosts").unlink()
    (root / "etc/hosts").symlink_to(outside / "shadow")
    before_outside = snapshot(outside)
    code, out, err = run_cli(root, "--replace-symlinks")
    assert code == 0, err
    hosts = root / "etc/hosts"
    assert not hosts.is_symlink()
    assert "192.168.50.10\tpbx.acme.example\tpbx" in hosts.read_text()
    assert holding(root, b"SECRET-HASH") == []
    assert snapshot(outside) == before_outside
    backup = Path(json.loads(out)["system_conf"]["backup_dir"])
    manifest = json.loads((backup / "manifest.json").read_text())
    assert {"path": "/etc/hosts", "existed": False, "link": str(outside / "shadow")} in (
        manifest["files"])


@pytest.mark.processes
@pytest.mark.timeout(20)
@pytest.mark.usefixtures("restore_signals")
def test_symlink_to_a_fifo_never_hangs(tmp_path: Path, outside: Path) -> None:
    """etc/resolv.conf -> a FIFO: --dry-run and run both finish at once; a FIFO in place is 73."""
    root = seed_root(tmp_path / "root")
    os.mkfifo(outside / "fifo")
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to(outside / "fifo")
    code, out, err = run_cli(root, "--dry-run")
    assert code == 0, err
    planned = {f["path"]: f for f in json.loads(out)["files"]}
    assert planned["/etc/resolv.conf"]["plan"] == "skip"
    code, out, err = run_cli(root, "--replace-symlinks")
    assert code == 0, err
    assert "nameserver 9.9.9.9" in (root / "etc/resolv.conf").read_text()
    (root / "etc/mailname").unlink()
    os.mkfifo(root / "etc/mailname")
    code, out, err = run_cli(root, "--dry-run")
    assert code == 73
    assert "/etc/mailname: not a regular file (a FIFO); refusing to replace it" in err


@pytest.mark.processes
@pytest.mark.usefixtures("restore_signals")
def test_unusual_includes_give_an_answer_not_a_traceback(tmp_path: Path) -> None:
    """`source-directory ../interfaces.d` and `source /` are read under the root: a pass, then a
    conflict named in /etc/interfaces.d, never an internal error."""
    root = seed_root(tmp_path / "root")
    interfaces = root / "etc/network/interfaces"
    interfaces.write_text("source-directory ../interfaces.d\nsource /\n" + interfaces.read_text())
    (root / "etc/interfaces.d").mkdir()
    (root / "etc/interfaces.d/eth1").write_text("iface eth1 inet dhcp\n")
    code, out, err = run_cli(root)
    assert code == 0, err
    (root / "etc/network/interfaces").write_text(
        (root / "etc/network/interfaces").read_text().replace("192.168.50.10", "192.168.50.11"))
    (root / "etc/interfaces.d/eth0").write_text("iface eth0 inet dhcp\n")
    code, out, err = run_cli(root)
    assert code == 73
    assert json.loads(out)["error"].startswith(
        "/etc/network/interfaces: /etc/interfaces.d/eth0 (included by "
        "`source-directory ../interfaces.d`) also configures eth0")
    assert "internal error" not in err


def test_example_body_is_still_valid() -> None:
    """The fixtures above start from a valid body."""
    parse_config((EXAMPLES / "wizard.json").read_bytes())

