"""The wizard body model: every rule, its message, and how loading reports problems."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wizard_runner.config import (
    LANGUAGES,
    WizardConfig,
    config_from_data,
    decode_json,
    inet_aton_address,
    parse_config,
    vlan_raw_device,
)
from wizard_runner.defaults import MAX_CONFIG_BYTES
from wizard_runner.errors import ConfigError

MISSING = object()


def with_value(body: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """Set (or, with MISSING, delete) the dotted `path` in `body`."""
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    if value is MISSING:
        node.pop(last, None)
    else:
        node[last] = value
    return body


def problems(body: object) -> list[str]:
    """The problem lines validation reports for `body`."""
    with pytest.raises(ConfigError) as caught:
        config_from_data(body)
    return list(caught.value.problems)


def test_example_body_is_valid(config: WizardConfig) -> None:
    """The shipped example validates and keeps its values."""
    assert config.network.fqdn == "pbx.acme.example"
    assert config.network.nameservers == ["192.168.50.2", "9.9.9.9"]
    assert config.context_incall.did_length == 4
    assert config.handle_system_conf is True
    assert config.run_scripts is False


def test_a_byte_order_mark_is_allowed(body: dict[str, Any]) -> None:
    """A body saved with a UTF-8 byte order mark (some editors write one) reads as without."""
    text = json.dumps(body).encode()
    assert parse_config(b"\xef\xbb\xbf" + text) == parse_config(text)


def test_defaults_apply_to_a_minimal_body(body: dict[str, Any]) -> None:
    """Optional keys take their documented defaults."""
    for key in ("language", "context_incall", "context_outcall", "default_french_configuration",
                "handle_system_conf", "run_scripts"):
        body.pop(key)
    body["context_internal"].pop("display_name")
    config = config_from_data(body)
    assert config.language == "en_US"
    assert config.handle_system_conf is True
    assert config.run_scripts is False
    assert config.default_french_configuration is False
    assert config.context_internal.display_name == "Default"
    assert config.context_incall.display_name == "Incalls"
    assert config.context_incall.number_start is None
    assert config.context_outcall.display_name == "Outcalls"


RULES = [
    # network.hostname
    pytest.param("network.hostname", "pbx\n10.0.0.66 evil",
                 'network.hostname: "pbx\\n10.0.0.66 evil" is not a host name', id="hostname-newline"),
    pytest.param("network.hostname", "-pbx", "is not a host name", id="hostname-leading-hyphen"),
    pytest.param("network.hostname", "pbx-", "is not a host name", id="hostname-trailing-hyphen"),
    pytest.param("network.hostname", "pbx.acme", "is not a host name", id="hostname-dotted"),
    pytest.param("network.hostname", "a" * 64, "is not a host name", id="hostname-64"),
    pytest.param("network.hostname", "", "is not a host name", id="hostname-empty"),
    pytest.param("network.hostname", "pbx_1", "is not a host name", id="hostname-underscore"),
    pytest.param("network.hostname", "pbx", None, id="hostname-ok"),
    pytest.param("network.hostname", "localhost", "reserved for the loopback", id="hostname-localhost"),
    pytest.param("network.hostname", "IP6-Loopback", "reserved", id="hostname-ip6-loopback"),
    pytest.param("network.hostname", "a" * 63, None, id="hostname-63"),
    # network.domain
    pytest.param("network.domain", "acme..example", "is not a domain name", id="domain-empty-label"),
    pytest.param("network.domain", "acme.example.", "is not a domain name", id="domain-trailing-dot"),
    pytest.param("network.domain", "acme example", "is not a domain name", id="domain-space"),
    pytest.param("network.domain", "acme.123", "all-numeric label", id="domain-numeric-tld"),
    pytest.param("network.domain", ".".join(["a" * 63] * 4) + "x" * 10,
                 "longer than 255", id="domain-over-255"),
    pytest.param("network.domain", ".".join(["a" * 50] * 5), "longer than 253",
                 id="fqdn-over-253"),
    pytest.param("network.domain", "example", None, id="domain-single-label"),
    # network.interface
    pytest.param("network.interface", "eth0.10", None, id="interface-vlan"),
    pytest.param("network.interface", "eth0:1", None, id="interface-alias"),
    pytest.param("network.interface", "enp0s31f6", None, id="interface-predictable"),
    pytest.param("network.interface", "eth 0", "is not an interface name", id="interface-space"),
    pytest.param("network.interface", "eth0/1", "is not an interface name", id="interface-slash"),
    pytest.param("network.interface", "éth0", "is not an interface name", id="interface-unicode"),
    pytest.param("network.interface", "a" * 16, "15-character", id="interface-too-long"),
    pytest.param("network.interface", "lo", "cannot be configured", id="interface-loopback"),
    pytest.param("network.interface", "-a", "starting with a letter or digit", id="interface-option"),
    pytest.param("network.interface", "--force", "is not an interface name", id="interface-long-option"),
    pytest.param("network.interface", "eth0.5000", "outside 1-4094", id="interface-vlan-id"),
    pytest.param("network.interface", "vlan10", "RAW.VID (eth0.10, say)",
                 id="interface-vlan-without-raw-device"),
    pytest.param("network.interface", "bond0:", "an alias without its label",
                 id="interface-alias-without-label"),
    pytest.param("network.interface", "eth0.", "a VLAN without its id",
                 id="interface-vlan-without-id"),
    # addresses
    pytest.param("network.ip_address", "192.168.50.300", "is not an IPv4 address", id="ip-octet"),
    pytest.param("network.ip_address", "192.168.050.10", "is not an IPv4 address",
                 id="ip-leading-zero"),
    pytest.param("network.ip_address", "::1", "is not an IPv4 address", id="ip-v6"),
    pytest.param("network.ip_address", "127.0.0.5", "not a usable host address", id="ip-loopback"),
    pytest.param("network.ip_address", "224.0.0.5", "not a usable host address",
                 id="ip-multicast"),
    pytest.param("network.ip_address", "192.168.50.0", "is the network address of 192.168.50.0/24",
                 id="ip-network"),
    pytest.param("network.ip_address", "192.168.50.255",
                 "is the broadcast address of 192.168.50.0/24", id="ip-broadcast"),
    pytest.param("network.netmask", "255.0.255.0", "is not a contiguous netmask",
                 id="netmask-holes"),
    pytest.param("network.netmask", "255.255.255.255", "leaves no room", id="netmask-32"),
    pytest.param("network.netmask", "0.0.0.0", "leaves no room", id="netmask-0"),
    pytest.param("network.netmask", "24", "is not an IPv4 address", id="netmask-prefix"),
    pytest.param("network.gateway", "10.0.1.1", "network.gateway: 10.0.1.1 is not in "
                 "192.168.50.0/24", id="gateway-outside"),
    pytest.param("network.gateway", "192.168.50.10", "is the appliance's own ip_address",
                 id="gateway-self"),
    pytest.param("network.gateway", "192.168.50.255", "network or broadcast",
                 id="gateway-broadcast"),
    # nameservers
    pytest.param("network.nameservers", ["8.8.8.8; rm -rf /"],
                 'network.nameservers.0: "8.8.8.8; rm -rf /" is not an IP address',
                 id="nameserver-injection"),
    pytest.param("network.nameservers", [], "give 1 to 3 name servers", id="nameservers-none"),
    pytest.param("network.nameservers", ["1.1.1.1", "8.8.8.8", "9.9.9.9", "8.8.4.4"],
                 "give 1 to 3 name servers", id="nameservers-four"),
    pytest.param("network.nameservers", ["1.1.1.1", "1.1.1.1"], "listed twice",
                 id="nameservers-duplicate"),
    pytest.param("network.nameservers", ["2001:db8::53"], None, id="nameserver-ipv6"),
    pytest.param("network.nameservers", ["0.0.0.0"], "not a usable name server",
                 id="nameserver-unspecified"),
    pytest.param("network.nameservers", "8.8.8.8", "must be a list, not a string",
                 id="nameservers-string"),
    pytest.param("network.nameservers", ["fe80::1%x\n\tpre-up id>pwned\nnameserver 6.6.6.6"],
                 "a scoped (%) address is not supported", id="nameserver-scope-injection"),
    pytest.param("network.nameservers", ["fe80::1%eth0"], "scoped", id="nameserver-scope"),
    # admin_password
    pytest.param("admin_password", "abc", "admin_password: must be 4 to 64 characters long",
                 id="password-short"),
    pytest.param("admin_password", "a" * 65, "must be 4 to 64 characters long",
                 id="password-long"),
    pytest.param("admin_password", "has space", "printable ASCII characters, without spaces",
                 id="password-space"),
    pytest.param("admin_password", "pässwörd", "printable ASCII", id="password-unicode"),
    pytest.param("admin_password", "tab\there", "printable ASCII", id="password-tab"),
    pytest.param("admin_password", 12345678, "must be a string, not a number",
                 id="password-number"),
    # license, entity, language, timezone
    pytest.param("license", False, "license: must be true", id="license-false"),
    pytest.param("license", "true", "must be true or false, not a string", id="license-string"),
    pytest.param("entity_name", "ab", "must be 3 to 64 characters", id="entity-short"),
    pytest.param("entity_name", "a" * 65, "must be 3 to 64 characters", id="entity-long"),
    pytest.param("entity_name", "-- --", "at least 3 letters or digits", id="entity-no-letters"),
    pytest.param("entity_name", "Acme\nInc", "control or invisible", id="entity-newline"),
    pytest.param("entity_name", "Acme\u200bInc", "control or invisible", id="entity-zero-width"),
    pytest.param("entity_name", " Acme", "starts or ends with a space", id="entity-space"),
    pytest.param("entity_name", "Société Générale", None, id="entity-accents"),
    pytest.param("language", "en_GB", "is not one of de_DE", id="language-unknown"),
    pytest.param("language", "fr_CA", None, id="language-fr-ca"),
    pytest.param("timezone", "Mars/Olympus", "is not a time zone", id="timezone-unknown"),
    pytest.param("timezone", "../../etc/passwd", "is not a time zone", id="timezone-path"),
    pytest.param("timezone", "/etc/localtime", "is not a time zone", id="timezone-absolute"),
    pytest.param("timezone", "posix/Europe/Paris", "is not a time zone", id="timezone-posix"),
    pytest.param("timezone", "America", "is not a time zone", id="timezone-directory"),
    pytest.param("timezone", "America/Argentina/Buenos_Aires", None, id="timezone-deep"),
    pytest.param("timezone", "UTC", None, id="timezone-utc"),
    # contexts
    pytest.param("context_internal.number_start", "1a00", "is not a number of 1 to 16 digits",
                 id="internal-letters"),
    pytest.param("context_internal.number_start", "١٠٠٠", "is not a number",
                 id="internal-arabic-digits"),
    pytest.param("context_internal.number_end", "999",
                 "context_internal.number_end: 999 and number_start 1000 must have the same "
                 "number of digits", id="internal-lengths"),
    pytest.param("context_internal.number_end", "1000", None, id="internal-single-number"),
    pytest.param("context_internal.number_start", "1999", None, id="internal-equal"),
    pytest.param("context_internal.number_end", "1099", None, id="internal-narrow"),
    pytest.param("context_internal.number_end", "0999", "is below number_start 1000",
                 id="internal-reversed"),
    pytest.param("context_internal.number_start", "1" * 17, "1 to 16 digits",
                 id="internal-too-long"),
    pytest.param("context_internal.number_start", MISSING,
                 "context_internal.number_start: is required", id="internal-missing"),
    pytest.param("context_internal.display_name", "ab", "must be 3 to 128 characters",
                 id="display-name-short"),
    pytest.param("context_incall.did_length", 21, "21 is outside 0-20", id="did-length-high"),
    pytest.param("context_incall.did_length", -1, "outside 0-20", id="did-length-negative"),
    pytest.param("context_incall.did_length", True, "must be an integer, not a boolean",
                 id="did-length-bool"),
    pytest.param("context_incall.did_length", MISSING, "did_length is required",
                 id="did-length-missing"),
    pytest.param("context_incall.number_end", MISSING, "must be given together",
                 id="incall-one-number"),
    pytest.param("context_outcall.display_name", "x" * 129, "must be 3 to 128 characters",
                 id="outcall-long"),
    # flags and structure
    pytest.param("run_script", True, "run_script: unknown key (did you mean run_scripts?)",
                 id="typo-run-scripts"),
    pytest.param("network.hostnme", "pbx", "network.hostnme: unknown key (did you mean hostname?)",
                 id="typo-nested"),
    pytest.param("handle_system_conf", "false", "must be true or false, not a string",
                 id="flag-string"),
    pytest.param("run_scripts", 1, "must be true or false, not a number", id="flag-number"),
    pytest.param("network", [], "network: must be an object, not a list", id="network-list"),
    pytest.param("network.gateway", MISSING, "network.gateway: is required", id="gateway-missing"),
]


@pytest.mark.parametrize(("path", "value", "expected"), RULES)
def test_rule(body: dict[str, Any], path: str, value: object, expected: str | None) -> None:
    """Each rule accepts good values and rejects bad ones with a message naming the field."""
    changed = with_value(body, path, value)
    if expected is None:
        config_from_data(changed)
        return
    found = problems(changed)
    assert any(expected in line for line in found), found
    field = path.split(".", maxsplit=1)[0]
    assert all(line.split(":")[0].startswith(field) for line in found), found


def as_address(host: str, value: str, address: str) -> str:
    """The problem line for a name the resolver reads as `address`."""
    return f'network.{host}: "{value}" reads as an IPv4 address ({address}), not as a name'


NUMERIC_NAMES = [
    # network.hostname: every form inet_aton reads as an address, and all digits
    pytest.param({"hostname": "123"}, [as_address("hostname", "123", "0.0.0.123")],
                 id="hostname-decimal"),
    pytest.param({"hostname": "0"}, [as_address("hostname", "0", "0.0.0.0")], id="hostname-zero"),
    pytest.param({"hostname": "017"}, [as_address("hostname", "017", "0.0.0.15")],
                 id="hostname-octal"),
    pytest.param({"hostname": "0x1f"}, [as_address("hostname", "0x1f", "0.0.0.31")],
                 id="hostname-hex"),
    pytest.param({"hostname": "0X1F"}, [as_address("hostname", "0X1F", "0.0.0.31")],
                 id="hostname-hex-upper"),
    pytest.param({"hostname": "0x00000000001"},
                 [as_address("hostname", "0x00000000001", "0.0.0.1")], id="hostname-hex-padded"),
    pytest.param({"hostname": "4294967295"},
                 [as_address("hostname", "4294967295", "255.255.255.255")], id="hostname-max"),
    pytest.param({"hostname": "08"},
                 ['network.hostname: "08" is all digits, which reads as an address, not a name'],
                 id="hostname-digits-not-octal"),
    pytest.param({"hostname": "4294967296"},
                 ['network.hostname: "4294967296" is all digits, which reads as an address, '
                  "not a name"], id="hostname-digits-over-32-bits"),
    pytest.param({"hostname": "0x"}, [], id="hostname-bare-0x"),
    pytest.param({"hostname": "0xg1"}, [], id="hostname-not-hex"),
    pytest.param({"hostname": "0x100000000"}, [], id="hostname-hex-over-32-bits"),
    pytest.param({"hostname": "1pbx"}, [], id="hostname-leading-digit"),
    pytest.param({"hostname": "123-4"}, [], id="hostname-digits-and-hyphen"),
    # network.domain: inet_aton's shorthand forms, and the all-numeric last label
    pytest.param({"domain": "1.2"}, [as_address("domain", "1.2", "1.0.0.2")], id="domain-a.b"),
    pytest.param({"domain": "1.2.3"}, [as_address("domain", "1.2.3", "1.2.0.3")],
                 id="domain-a.b.c"),
    pytest.param({"domain": "10.0.0.1"}, [as_address("domain", "10.0.0.1", "10.0.0.1")],
                 id="domain-dotted-quad"),
    pytest.param({"domain": "017"}, [as_address("domain", "017", "0.0.0.15")], id="domain-octal"),
    pytest.param({"domain": "1.0x1f"}, [as_address("domain", "1.0x1f", "1.0.0.31")],
                 id="domain-hex-last-label"),
    pytest.param({"domain": "0X7F.0.0.1"}, [as_address("domain", "0X7F.0.0.1", "127.0.0.1")],
                 id="domain-hex-first-label"),
    pytest.param({"domain": "1.2.3.4.5"},
                 ['network.domain: "1.2.3.4.5" ends in an all-numeric label, which reads as an '
                  "address"], id="domain-five-numbers"),
    pytest.param({"domain": "acme.08"},
                 ['network.domain: "acme.08" ends in an all-numeric label, which reads as an '
                  "address"], id="domain-numeric-tld"),
    pytest.param({"domain": "acme.0x1f"}, [], id="domain-hex-tld"),
    pytest.param({"domain": "0x1f.example"}, [], id="domain-hex-first-label-of-a-name"),
    pytest.param({"domain": "123.456.example"}, [], id="domain-numeric-inner-labels"),
    # hostname.domain: the resolver is given the FQDN; a numeric one never gets through
    pytest.param({"hostname": "1", "domain": "2.3"},
                 [as_address("hostname", "1", "0.0.0.1"), as_address("domain", "2.3", "2.0.0.3")],
                 id="fqdn-a.b.c"),
    pytest.param({"hostname": "0x7f", "domain": "0.0.1"},
                 [as_address("hostname", "0x7f", "0.0.0.127"),
                  as_address("domain", "0.0.1", "0.0.0.1")], id="fqdn-hex-loopback"),
    pytest.param({"hostname": "pbx", "domain": "1.2.example"}, [], id="fqdn-numeric-inner"),
    pytest.param({"hostname": "0xpbx", "domain": "0x1f.example"}, [], id="fqdn-hex-looking"),
]


@pytest.mark.parametrize(("network", "expected"), NUMERIC_NAMES)
def test_names_the_resolver_reads_as_addresses(
    body: dict[str, Any], network: dict[str, str], expected: list[str]
) -> None:
    """A host name, domain or FQDN that inet_aton reads as an address is refused, with why."""
    body["network"].update(network)
    if not expected:
        assert config_from_data(body).network.model_dump(include=set(network)) == network
        return
    assert problems(body) == expected


def glibc_inet_aton(name: str) -> ipaddress.IPv4Address | None:
    """The address the C library's own inet_aton reads from `name` (no lookup), or None."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


C_NUMBERS = st.one_of(
    st.integers(0, 2**33).map(str),
    st.integers(0, 2**33).map(lambda n: f"0{n:o}"),
    st.integers(0, 2**33).map(lambda n: f"0x{n:x}"),
    st.integers(0, 2**33).map(lambda n: f"0X{n:08X}"),
    st.from_regex(r"[0-9a-fA-FxX]{0,5}", fullmatch=True),
)


@settings(max_examples=400)
@given(st.lists(C_NUMBERS, min_size=1, max_size=5).map(".".join))
def test_inet_aton_address_agrees_with_the_c_library(name: str) -> None:
    """The pure rule reads every dotted string of C numbers exactly as glibc's inet_aton does."""
    assert inet_aton_address(name) == glibc_inet_aton(name)


def test_every_problem_is_listed_at_once(body: dict[str, Any]) -> None:
    """One error lists all problems, each with its path, in field order."""
    with_value(body, "network.hostname", "bad host")
    with_value(body, "network.gateway", "10.0.1.1")
    with_value(body, "network.nameservers", ["8.8.8.8; rm -rf /"])
    with_value(body, "run_script", True)
    with_value(body, "license", False)
    found = problems(body)
    assert [line.split(":")[0] for line in found] == [
        "license",
        "network.hostname",
        "network.gateway",
        "network.nameservers.0",
        "run_script",
    ]


def test_gateway_checked_even_when_another_network_field_fails(body: dict[str, Any]) -> None:
    """A bad hostname does not hide a gateway outside the subnet."""
    with_value(body, "network.hostname", "-bad")
    with_value(body, "network.gateway", "10.9.9.9")
    found = problems(body)
    assert "network.gateway: 10.9.9.9 is not in 192.168.50.0/24" in found


def test_not_an_object() -> None:
    """A body that is not a JSON object is named as such."""
    assert problems([1, 2]) == ["(top level): must be an object, not a list"]


def test_missing_keys_all_named() -> None:
    """An empty body names every required key."""
    found = problems({})
    assert found == [
        "admin_password: is required",
        "license: is required",
        "timezone: is required",
        "entity_name: is required",
        "network: is required",
        "context_internal: is required",
    ]


def test_password_is_never_shown(body: dict[str, Any]) -> None:
    """The password never appears in a repr, a dump, an error or a validation message."""
    secret = body["admin_password"]
    config = config_from_data(body)
    assert secret not in repr(config)
    assert secret not in str(config)
    assert secret not in json.dumps(config.public_dict())
    assert "admin_password" not in config.public_dict()
    assert secret not in config.model_dump_json()
    assert config.admin_password.get_secret_value() == secret
    body["admin_password"] = "bad pass word"
    body["network"]["hostname"] = "-x"
    with pytest.raises(ConfigError) as caught:
        config_from_data(body)
    assert "bad pass word" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None  # pydantic's error holds the raw input


def test_public_dict_round_trips(config: WizardConfig) -> None:
    """The stored form (no password) plus a password validates back to the same config."""
    data = config.public_dict()
    data["admin_password"] = config.admin_password.get_secret_value()
    assert config_from_data(data) == config


def test_config_is_frozen(config: WizardConfig) -> None:
    """A validated config cannot be changed behind the validator's back."""
    with pytest.raises(ValueError, match="frozen"):
        config.network.hostname = "evil\nhost"  # type: ignore[misc]


def test_languages_documented() -> None:
    """The required languages are all accepted."""
    assert {"de_DE", "en_US", "es_ES", "fr_FR", "fr_CA", "it_IT", "nl_NL"} <= set(LANGUAGES)


@pytest.mark.parametrize(
    ("interface", "raw"),
    [
        pytest.param("eth0.10", "eth0", id="vlan"),
        pytest.param("enp3s0.4094", "enp3s0", id="vlan-max"),
        pytest.param("eth0", None, id="plain"),
        pytest.param("eth0:1", None, id="alias"),
        pytest.param("vlan10", None, id="vlan-word"),
    ],
)
def test_vlan_raw_device(interface: str, raw: str | None) -> None:
    """A VLAN name `<device>.<id>` names its raw device."""
    assert vlan_raw_device(interface) == raw


JSON_CASES = [
    pytest.param(b'{"a": 1, "a": 2}', 'key "a" appears twice', id="duplicate-key"),
    pytest.param(b'{"a": NaN}', "NaN is not valid JSON", id="nan"),
    pytest.param(b'{"a": 1,,}', "invalid JSON at line 1 column 9", id="syntax"),
    pytest.param(b"\xff\xfe{}", "not UTF-8 text", id="not-utf8"),
    pytest.param(b"", "invalid JSON at line 1 column 1", id="empty"),
    pytest.param(b" " * (MAX_CONFIG_BYTES + 1), "larger than", id="too-large"),
]


@pytest.mark.parametrize(("text", "expected"), JSON_CASES)
def test_decode_json_rejects(text: bytes, expected: str) -> None:
    """Malformed JSON is a config error naming the problem and where it is."""
    with pytest.raises(ConfigError) as caught:
        decode_json(text, "wizard.json")
    assert expected in caught.value.problems[0]
    assert str(caught.value).startswith("wizard.json is invalid (1 problem):")


def test_parse_config_from_text(body: dict[str, Any]) -> None:
    """JSON text validates like the decoded data."""
    assert parse_config(json.dumps(body)) == config_from_data(body)


def test_error_message_format(body: dict[str, Any]) -> None:
    """The error text has a count and one indented line per problem."""
    body["network"]["gateway"] = "10.0.1.1"
    body["license"] = False
    with pytest.raises(ConfigError) as caught:
        config_from_data(body, "wizard.json")
    assert str(caught.value) == (
        "wizard.json is invalid (2 problems):\n"
        "  - license: must be true: the license has to be accepted\n"
        "  - network.gateway: 10.0.1.1 is not in 192.168.50.0/24"
    )


def test_unknown_keys_cannot_forge_lines(body: dict[str, Any]) -> None:
    """An unknown key with a newline or escape is quoted, so it cannot fake another problem."""
    body["x\n  - network.hostname: ok\x1b[2J"] = 1
    found = problems(body)
    assert found == ['"x\\n  - network.hostname: ok\\u001b[2J": unknown key']
