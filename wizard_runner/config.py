"""The wizard body as a validated pydantic model, and loading it from JSON with readable errors."""

import functools
import ipaddress
import json
import re
import unicodedata
import zoneinfo
from collections.abc import Callable
from typing import Annotated, Any, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from wizard_runner.defaults import MAX_CONFIG_BYTES
from wizard_runner.errors import ConfigError

#: Languages the wizard accepts: those XiVO ships prompts and a web interface for.
LANGUAGES: Final = ("de_DE", "en_US", "es_ES", "fr_CA", "fr_FR", "it_IT", "nl_NL", "pt_BR")

#: Names /etc/hosts gives the loopback addresses; the appliance cannot take them.
RESERVED_HOSTNAMES: Final = frozenset(
    {"localhost", "ip6-localhost", "ip6-loopback", "ip6-allnodes", "ip6-allrouters"}
)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE: Final = re.compile(_LABEL)
_DOMAIN_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_INTERFACE_RE: Final = re.compile(r"[A-Za-z0-9][\w\-:.]{0,63}", re.ASCII)
_VLAN_RE: Final = re.compile(r"(?P<raw>[^.:]+)\.(?P<vid>[0-9]+)")
_NUMBER_RE: Final = re.compile(r"[0-9]{1,16}")
#: One part of an inet_aton address: C's strtoul with base 0 (hex, octal, decimal), whole.
_INET_ATON_PART: Final = re.compile(r"0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*")
#: The largest value of the last part, by the number of parts: `a`, `a.b`, `a.b.c`, `a.b.c.d`.
_INET_ATON_LAST_MAX: Final = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)
_TIMEZONE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*")
_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "Factory"})
_MAX_SHOWN: Final = 60


def shown(value: object) -> str:
    """Quote a user value for an error message, escaping control characters and capping length."""
    text = json.dumps(value, ensure_ascii=True)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 4] + '..."'
    return text


def _c_number(text: str) -> int:
    """The value of a C integer literal as strtoul reads it with base 0: 0x hex, 0 octal."""
    if text[:2] in {"0x", "0X"}:
        return int(text, 16)
    return int(text, 8 if text.startswith("0") else 10)


def inet_aton_address(name: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address glibc's inet_aton, hence the resolver, reads `name` as, else None.

    Pure: it mirrors inet_aton's rules instead of calling it. Names hold no whitespace (their
    rules see to that), so inet_aton's habit of ignoring what follows a space is not mirrored.
    """
    parts = name.split(".")
    if len(parts) > 4 or not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    *leading, last = map(_c_number, parts)
    if any(value > 0xFF for value in leading) or last > _INET_ATON_LAST_MAX[len(leading)]:
        return None
    # `1.2` is 1.0.0.2 and `1.2.3` is 1.2.0.3: the last part fills the bytes the others leave.
    packed = sum(value << (24 - 8 * index) for index, value in enumerate(leading)) + last
    return ipaddress.IPv4Address(packed)


def _check_not_an_address(value: str) -> None:
    """Refuse a name the resolver would take for an IPv4 address instead of looking it up."""
    address = inet_aton_address(value)
    if address is not None:
        raise ValueError(f"{shown(value)} reads as an IPv4 address ({address}), not as a name")


# --- single-field rules -------------------------------------------------------------------------


def _check_hostname(value: str) -> str:
    if not _HOSTNAME_RE.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a host name: use 1 to 63 letters, digits and inner hyphens"
        )
    if value.lower() in RESERVED_HOSTNAMES:
        raise ValueError(f"{shown(value)} is reserved for the loopback addresses")
    _check_not_an_address(value)
    # Also the digits inet_aton refuses (`08`, `4294967296`): names must not be all-numeric
    # (RFC 1123 2.1), and other parsers than glibc's may still read them as a number.
    if value.isdigit():
        raise ValueError(f"{shown(value)} is all digits, which reads as an address, not a name")
    return value


def _check_domain(value: str) -> str:
    if len(value) > 255:
        raise ValueError(f"{shown(value)} is longer than 255 characters")
    if not _DOMAIN_RE.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a domain name: use dot-separated labels of 1 to 63 "
            "letters, digits and inner hyphens"
        )
    _check_not_an_address(value)
    if value.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{shown(value)} ends in an all-numeric label, which reads as an address")
    return value


def _check_interface(value: str) -> str:
    if not _INTERFACE_RE.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not an interface name: use 1 to 15 letters, digits, "
            "'_', '-', ':' and '.', starting with a letter or digit"
        )
    if len(value) > 15:
        raise ValueError(f"{shown(value)} is longer than Linux's 15-character interface names")
    if value in {".", ".."} or value == "lo" or value.startswith("lo:"):
        raise ValueError(f"{shown(value)} cannot be configured as the appliance's interface")
    if value.endswith(":"):
        raise ValueError(f"{shown(value)} names an alias without its label (eth0:1, say)")
    if value.endswith("."):
        raise ValueError(f"{shown(value)} names a VLAN without its id (eth0.10, say)")
    if re.fullmatch(r"vlan[0-9]+", value):  # ifupdown then needs vlan-raw-device, not given
        raise ValueError(f"{shown(value)}: name a VLAN after its raw device, RAW.VID (eth0.10, "
                         "say), so that the interface is created on it")
    vlan = _VLAN_RE.fullmatch(value)
    if vlan and not 1 <= int(vlan["vid"]) <= 4094:
        raise ValueError(f"{shown(value)} names VLAN {vlan['vid']}, outside 1-4094")
    return value


def vlan_raw_device(interface: str) -> str | None:
    """Return the parent device of a VLAN interface name such as `eth0.10`, else None."""
    vlan = _VLAN_RE.fullmatch(interface)
    return vlan["raw"] if vlan else None


def _parse_ipv4(value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not an IPv4 address (a.b.c.d)") from None


def _check_host_ipv4(value: str) -> str:
    address = _parse_ipv4(value)
    if (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_reserved
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValueError(f"{value} is not a usable host address (loopback, multicast or reserved)")
    return str(address)


def _check_netmask(value: str) -> str:
    mask = _parse_ipv4(value)
    try:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        raise ValueError(f"{value} is not a contiguous netmask (like 255.255.255.0)") from None
    if not 1 <= prefix <= 30:
        raise ValueError(f"{value} (/{prefix}) leaves no room for an address and a gateway")
    return str(mask)


def _check_nameserver(value: str) -> str:
    if "%" in value:
        # ipaddress accepts any text after '%' as an IPv6 scope; none of it belongs in a file.
        raise ValueError(f"{shown(value)}: a scoped (%) address is not supported here")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{value} is not a usable name server address")
    return str(address)


def _check_nameservers(values: list[str]) -> list[str]:
    if not 1 <= len(values) <= 3:
        count = len(values)
        raise ValueError(f"give 1 to 3 name servers (the resolver reads at most 3), not {count}")
    if len(set(values)) != len(values):
        raise ValueError("the same name server is listed twice")
    return values


def _check_password(value: SecretStr) -> SecretStr:
    # Messages never quote the value: it is a secret.
    secret = value.get_secret_value()
    if not 4 <= len(secret) <= 64:
        raise ValueError("must be 4 to 64 characters long")
    if not all("!" <= char <= "~" for char in secret):
        raise ValueError("must contain only printable ASCII characters, without spaces")
    return value


def _check_true(value: bool) -> bool:
    if value is not True:
        raise ValueError("must be true: the license has to be accepted")
    return value


def _check_text(minimum: int, maximum: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not minimum <= len(value) <= maximum:
            raise ValueError(f"must be {minimum} to {maximum} characters, not {len(value)}")
        bad = [char for char in value if unicodedata.category(char)[0] in "CZ" and char != " "]
        if bad:
            raise ValueError(f"{shown(value)} contains control or invisible characters")
        if value != value.strip():
            raise ValueError(f"{shown(value)} starts or ends with a space")
        return value

    return check


def _check_entity_name(value: str) -> str:
    if sum(char.isalnum() for char in value) < 3:
        raise ValueError(f"{shown(value)} needs at least 3 letters or digits")
    return value


def _check_language(value: str) -> str:
    if value not in LANGUAGES:
        raise ValueError(f"{shown(value)} is not one of {', '.join(LANGUAGES)}")
    return value


def _check_timezone(value: str) -> str:
    problem = f"{shown(value)} is not a time zone of the tz database (like Europe/Paris)"
    if (
        len(value) > 128
        or not _TIMEZONE_RE.fullmatch(value)
        or value in _NOT_ZONES
        or value.startswith(("posix/", "right/"))
    ):
        raise ValueError(problem)
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(problem) from None
    return value


def _check_number(value: str) -> str:
    if not _NUMBER_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a number of 1 to 16 digits (0-9)")
    return value


def _check_did_length(value: int) -> int:
    if not 0 <= value <= 20:
        raise ValueError(f"{value} is outside 0-20")
    return value


def _check_range(start: str, end: str) -> None:
    if len(start) != len(end):
        raise ValueError(f"{end} and number_start {start} must have the same number of digits")
    if int(start) > int(end):
        raise ValueError(f"{end} is below number_start {start}")


Hostname = Annotated[StrictStr, AfterValidator(_check_hostname)]
Domain = Annotated[StrictStr, AfterValidator(_check_domain)]
Interface = Annotated[StrictStr, AfterValidator(_check_interface)]
HostIPv4 = Annotated[StrictStr, AfterValidator(_check_host_ipv4)]
Netmask = Annotated[StrictStr, AfterValidator(_check_netmask)]
Nameserver = Annotated[StrictStr, AfterValidator(_check_nameserver)]
Password = Annotated[SecretStr, AfterValidator(_check_password)]
DisplayName = Annotated[StrictStr, AfterValidator(_check_text(3, 128))]
EntityName = Annotated[
    StrictStr, AfterValidator(_check_text(3, 64)), AfterValidator(_check_entity_name)
]
Language = Annotated[StrictStr, AfterValidator(_check_language)]
Timezone = Annotated[StrictStr, AfterValidator(_check_timezone)]
Number = Annotated[StrictStr, AfterValidator(_check_number)]
DidLength = Annotated[StrictInt, AfterValidator(_check_did_length)]


# --- models -------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, hide_input_in_errors=True, defer_build=True
    )


class Network(_Model):
    """The appliance's network settings. Field order matters: later rules read earlier fields."""

    hostname: Hostname
    domain: Domain
    interface: Interface
    netmask: Netmask
    ip_address: HostIPv4
    gateway: HostIPv4
    nameservers: Annotated[list[Nameserver], AfterValidator(_check_nameservers)]

    @field_validator("domain")
    @classmethod
    def _fqdn_fits(cls, domain: str, info: ValidationInfo) -> str:
        hostname = info.data.get("hostname")
        if hostname is None:
            return domain
        if len(hostname) + 1 + len(domain) > 253:
            raise ValueError(f"{hostname}.{domain} is longer than 253 characters")
        # The resolver is handed the FQDN. It cannot read as an address while the host name
        # rule holds (inet_aton needs every part to be a number); checked whole so that
        # loosening that rule cannot let one through.
        _check_not_an_address(f"{hostname}.{domain}")
        return domain

    @field_validator("ip_address")
    @classmethod
    def _address_is_a_host(cls, address: str, info: ValidationInfo) -> str:
        netmask = info.data.get("netmask")
        if netmask is None:
            return address
        subnet = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
        if ipaddress.IPv4Address(address) == subnet.network_address:
            raise ValueError(f"{address} is the network address of {subnet}")
        if ipaddress.IPv4Address(address) == subnet.broadcast_address:
            raise ValueError(f"{address} is the broadcast address of {subnet}")
        return address

    @field_validator("gateway")
    @classmethod
    def _gateway_in_subnet(cls, gateway: str, info: ValidationInfo) -> str:
        address, netmask = info.data.get("ip_address"), info.data.get("netmask")
        if address is None or netmask is None:
            return gateway
        subnet = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
        if ipaddress.IPv4Address(gateway) not in subnet:
            raise ValueError(f"{gateway} is not in {subnet}")
        if gateway == address:
            raise ValueError(f"{gateway} is the appliance's own ip_address")
        if ipaddress.IPv4Address(gateway) in {subnet.network_address, subnet.broadcast_address}:
            raise ValueError(f"{gateway} is the network or broadcast address of {subnet}")
        return gateway

    @model_validator(mode="after")
    def _single_tokens(self) -> Self:
        # Last line of defence: every value lands in a file as one token. The field rules
        # already ensure it; this keeps it true should a rule ever be loosened.
        values = [self.hostname, self.domain, self.interface, self.netmask, self.ip_address,
                  self.gateway, *self.nameservers]
        for value in values:
            if any(char.isspace() or not char.isprintable() for char in value) or not value:
                raise ValueError(f"{shown(value)} is not a single printable token")
        return self

    @property
    def fqdn(self) -> str:
        """The fully qualified domain name, `hostname.domain`."""
        return f"{self.hostname}.{self.domain}"


class ContextInternal(_Model):
    """The internal context and its range of extension numbers."""

    display_name: DisplayName = "Default"
    number_start: Number
    number_end: Number

    @field_validator("number_end")
    @classmethod
    def _range(cls, end: str, info: ValidationInfo) -> str:
        start = info.data.get("number_start")
        if start is not None:
            _check_range(start, end)
        return end


class ContextIncall(_Model):
    """The incoming-calls context; its DID range is optional."""

    display_name: DisplayName = "Incalls"
    number_start: Number | None = None
    number_end: Number | None = None
    did_length: DidLength | None = None

    @field_validator("number_end")
    @classmethod
    def _range(cls, end: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get("number_start")
        if start is not None and end is not None:
            _check_range(start, end)
        return end

    @model_validator(mode="after")
    def _numbers_together(self) -> Self:
        if (self.number_start is None) != (self.number_end is None):
            raise ValueError("number_start and number_end must be given together")
        if self.number_start is not None and self.did_length is None:
            raise ValueError("did_length is required when number_start and number_end are given")
        return self


class ContextOutcall(_Model):
    """The outgoing-calls context."""

    display_name: DisplayName = "Outcalls"


class WizardConfig(_Model):
    """The whole wizard body, as xivo-confd receives it on POST /1.1/wizard."""

    admin_password: Password
    license: Annotated[StrictBool, AfterValidator(_check_true)]
    timezone: Timezone
    language: Language = "en_US"
    entity_name: EntityName
    network: Network
    context_internal: ContextInternal
    # Factories, not instances: an instance here would build the models' validators at import.
    context_incall: ContextIncall = Field(default_factory=ContextIncall)
    context_outcall: ContextOutcall = Field(default_factory=ContextOutcall)
    default_french_configuration: StrictBool = False
    handle_system_conf: StrictBool = True
    run_scripts: StrictBool = False

    def public_dict(self) -> dict[str, Any]:
        """The body as JSON-ready data without the admin password, safe to store and show."""
        return self.model_dump(mode="json", exclude={"admin_password"})


@functools.cache
def saved_config_model() -> type[WizardConfig]:
    """The model of a body as stored for reruns: the same rules, but the password was left
    out on purpose. Made on first use: only a rerun without --config reads a stored body."""

    class SavedConfig(WizardConfig):
        admin_password: Password | None = None  # type: ignore[assignment]

    return SavedConfig


# --- loading ------------------------------------------------------------------------------------

_MODELS_AT: Final[dict[tuple[str, ...], type[BaseModel]]] = {
    (): WizardConfig,
    ("network",): Network,
    ("context_internal",): ContextInternal,
    ("context_incall",): ContextIncall,
    ("context_outcall",): ContextOutcall,
}


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    model = _MODELS_AT.get(tuple(str(part) for part in loc[:-1]))
    if model is None:
        return "unknown key"
    import difflib  # noqa: PLC0415 - only an unknown field needs it, off the start-up path

    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _describe(error: ErrorDetails) -> str:
    kind, value = error["type"], error.get("input")
    loc = error["loc"]
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    expected = {
        "string_type": "a string",
        "bool_type": "true or false",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "list_type": "a list",
        "model_type": "an object",
        "dict_type": "an object",
        "model_attributes_type": "an object",
        "dataclass_type": "an object",
    }.get(kind)
    if expected is not None:
        return f"must be {expected}, not {_json_type(value)}"
    return error["msg"]


_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_]{1,64}")


def _path(loc: tuple[str | int, ...]) -> str:
    # Keys come from the input too: anything unusual is quoted, so it cannot forge a line.
    parts = [
        str(part) if isinstance(part, int) or _PLAIN_KEY.fullmatch(part) else shown(part)
        for part in loc
    ]
    return ".".join(parts) or "(top level)"


def problems_of(error: ValidationError) -> list[str]:
    """Turn a pydantic error into `field.path: reason` lines, never quoting the raw input."""
    lines = [f"{_path(item['loc'])}: {_describe(item)}" for item in error.errors()]
    return list(dict.fromkeys(lines))


def config_from_data(data: object, source: str = "config") -> WizardConfig:
    """Validate already-decoded JSON data; raise ConfigError listing every problem."""
    try:
        return WizardConfig.model_validate(data)
    except ValidationError as error:
        problems = problems_of(error)
    # Raised outside the except block, so that neither __cause__ nor __context__ keeps
    # pydantic's error: it holds the raw input, password included.
    raise ConfigError(problems, source)


def saved_config_from_data(data: object, source: str) -> WizardConfig:
    """Validate a stored body (no password); raise ConfigError listing every problem."""
    try:
        return saved_config_model().model_validate(data)
    except ValidationError as error:
        problems = problems_of(error)
    raise ConfigError(problems, source)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {shown(key)} appears twice")
        seen[key] = value
    return seen


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(text: str | bytes, source: str = "config") -> object:
    """Decode strict JSON (no duplicate keys, no NaN); raise ConfigError naming the position."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"larger than {MAX_CONFIG_BYTES} bytes"], source)
    try:
        raw = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError as error:
        raise ConfigError([f"not UTF-8 text (byte {error.start})"], source) from None
    raw = raw.removeprefix("\ufeff")  # a byte order mark some editors write: RFC 8259 allows it
    try:
        return json.loads(
            raw, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise ConfigError([f"invalid JSON at {where}: {error.msg}"], source) from None
    except ValueError as error:
        raise ConfigError([f"invalid JSON: {error}"], source) from None
    except RecursionError:
        raise ConfigError(["invalid JSON: nested too deeply"], source) from None


def parse_config(text: str | bytes, source: str = "config") -> WizardConfig:
    """Decode and validate a wizard body given as JSON text."""
    return config_from_data(decode_json(text, source), source)
