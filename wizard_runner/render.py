"""Pure renderers: the wizard config plus a system file's current text give its new text.

Each renderer keeps what the admin added (other hosts, other interfaces, other postfix
parameters, other canonical entries) and replaces only what the wizard owns, marked by a comment
that names wizard-runner and the rerun command. Rendering its own output again changes nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from wizard_runner.config import RESERVED_HOSTNAMES, WizardConfig, vlan_raw_device
from wizard_runner.errors import RenderError
from wizard_runner.layout import SYSTEM_FILES

RERUN: Final = "edit the wizard settings and rerun `wizard-runner run`"
BLOCK_BEGIN: Final = f"# BEGIN wizard-runner managed block: {RERUN} to change it"
BLOCK_END: Final = "# END wizard-runner managed block"
FILE_HEADER: Final = f"# This file is managed by wizard-runner: {RERUN} to change it."
MAIN_CF_HEADER: Final = (
    "# wizard-runner manages myhostname, mydomain, myorigin, mydestination and the "
    f"/etc/postfix/canonical entry of canonical_maps in this file: {RERUN} to change them."
)
_BEGIN_PREFIX: Final = "# BEGIN wizard-runner"
_END_PREFIX: Final = "# END wizard-runner"
_MAIN_CF_HEADER_PREFIX: Final = "# wizard-runner manages"
_DEBIAN_HOSTS_IPV6_COMMENT: Final = "# The following lines are desirable for IPv6 capable hosts"

Renderer = Callable[[WizardConfig, str | None], str]


# --- shared line helpers ------------------------------------------------------------------------


def file_lines(text: str | None) -> list[str]:
    """A file's lines as ifupdown, postfix and the resolver read them: cut at each newline
    only, never at a form feed, a vertical tab or U+2028 inside a line (`str.splitlines`
    would cut there, and a comment's tail would come back as a live line); a carriage return
    stays in its line, so that the admin's lines are written back byte for byte."""
    lines = (text or "").split("\n")
    if lines[-1] == "":
        lines.pop()  # the text ends with a newline (or is empty)
    return lines


@dataclass(frozen=True)
class _Split:
    """A file's lines around its managed block(s): before the first, inside, after."""

    before: list[str]
    inside: list[str]
    after: list[str]
    had_block: bool


def _split_block(text: str | None) -> _Split:
    """Cut out every managed block; unbalanced markers are an error, never a guess."""
    before: list[str] = []
    inside: list[str] = []
    after: list[str] = []
    opened_at: int | None = None
    seen = False
    for number, line in enumerate(file_lines(text), start=1):
        if line.startswith(_BEGIN_PREFIX):
            if opened_at is not None:
                raise RenderError(
                    f"line {number}: a second wizard-runner BEGIN marker inside the block "
                    f"opened at line {opened_at}; remove the extra marker"
                )
            opened_at, seen = number, True
        elif line.startswith(_END_PREFIX):
            if opened_at is None:
                raise RenderError(
                    f"line {number}: a wizard-runner END marker without its BEGIN; remove it "
                    "or restore the BEGIN line"
                )
            opened_at = None
        elif opened_at is not None:
            inside.append(line)
        else:
            (after if seen else before).append(line)
    if opened_at is not None:
        raise RenderError(
            f"line {opened_at}: the wizard-runner block opened here has no END marker; "
            "restore it, or remove the block"
        )
    if not seen:
        return _Split([], [], before, had_block=False)
    return _Split(before, inside, after, had_block=True)


def _trim_blank(lines: list[str]) -> list[str]:
    start, stop = 0, len(lines)
    while start < stop and not lines[start].strip():
        start += 1
    while stop > start and not lines[stop - 1].strip():
        stop -= 1
    return lines[start:stop]


def _join_sections(*sections: list[str]) -> str:
    """Join non-empty sections with one blank line between them; end with a newline."""
    parts = ["\n".join(trimmed) for trimmed in map(_trim_blank, sections) if trimmed]
    return "\n\n".join(parts) + "\n"


def _glue_to_comment(before: list[str], block: list[str]) -> list[str]:
    """Put `block` right under a comment that ends `before` (it usually describes the block)."""
    trimmed = _trim_blank(before)
    if trimmed and trimmed[-1].lstrip().startswith("#"):
        return [*trimmed, *block]
    return [*trimmed, "", *block]


def _block(lines: Iterable[str]) -> list[str]:
    return [BLOCK_BEGIN, *lines, BLOCK_END]


# --- single-value files -------------------------------------------------------------------------


def render_hostname(config: WizardConfig, current: str | None) -> str:
    """/etc/hostname: the short host name alone (scripts read it with `cat`, so no comment)."""
    del current
    return f"{config.network.hostname}\n"


def render_mailname(config: WizardConfig, current: str | None) -> str:
    """/etc/mailname: the FQDN alone (mailname(5) is one line; postfix reads the first line)."""
    del current
    return f"{config.network.fqdn}\n"


# --- /etc/hosts ---------------------------------------------------------------------------------

# Debian's installer maps the install-time host name to 127.0.1.1; a static address replaces it.
_INSTALLER_HOST_ADDRESS: Final = "127.0.1.1"
_SPECIAL_IPV6: Final = frozenset({"::1", "ff02::1", "ff02::2", "fe00::0", "ff00::0"})


def _is_installer_line(address: str, names: list[str]) -> bool:
    """`127.0.1.1 host.domain host`: one host's names only (other names there are the admin's)."""
    return address == _INSTALLER_HOST_ADDRESS and len({n.split(".")[0].lower() for n in names}) == 1


def _strip_owned_names(line: str, owned: frozenset[str]) -> str | None:
    """Return the hosts line without the names the wizard owns, or None when nothing is left."""
    content, hash_sign, comment = line.partition("#")
    fields = content.split()
    if not fields:
        return None if line.strip() == _DEBIAN_HOSTS_IPV6_COMMENT else line
    address, names = fields[0], fields[1:]
    if _is_installer_line(address, names):
        return None
    if ":" in address and address.lower() not in _SPECIAL_IPV6:
        return line  # the wizard sets no IPv6 address: the admin's IPv6 mappings stay as they are
    kept = [name for name in names if name.lower() not in owned]
    if len(kept) == len(names):
        return line
    if not kept:
        return None
    return "\t".join([address, " ".join(kept)]) + (f" {hash_sign}{comment}" if hash_sign else "")


def render_hosts(config: WizardConfig, current: str | None) -> str:
    """/etc/hosts: localhost, the FQDN and name on ip_address, IPv6 basics; admin lines kept."""
    net = config.network
    owned = RESERVED_HOSTNAMES | {net.fqdn.lower(), net.hostname.lower()}
    split = _split_block(current)

    def keep(lines: list[str]) -> list[str]:
        return [kept for line in lines if (kept := _strip_owned_names(line, owned)) is not None]

    block = _block(
        [
            "127.0.0.1\tlocalhost",
            f"{net.ip_address}\t{net.fqdn}\t{net.hostname}",
            "",
            _DEBIAN_HOSTS_IPV6_COMMENT,
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
        ]
    )
    return _join_sections(keep(split.before), block, keep(split.after))


# --- /etc/resolv.conf ---------------------------------------------------------------------------

_RESOLV_KEPT_KEYWORDS: Final = frozenset({"options", "sortlist"})


def render_resolv_conf(config: WizardConfig, current: str | None) -> str:
    """/etc/resolv.conf: the search domain and name servers; the admin's options lines kept."""
    net = config.network
    kept = [
        line
        for line in file_lines(current)
        if line.split()[:1] and line.split()[0] in _RESOLV_KEPT_KEYWORDS
    ]
    lines = [FILE_HEADER, f"search {net.domain}"]
    lines += [f"nameserver {server}" for server in net.nameservers]
    return "\n".join(lines + kept) + "\n"


# --- /etc/network/interfaces --------------------------------------------------------------------

_STANZA_KEYWORDS: Final = frozenset({"iface", "mapping"})
_OTHER_KEYWORDS: Final = frozenset(
    {"auto", "source", "source-directory", "source-dir", "rename", "no-auto-down", "no-scripts"}
)


#: Options the wizard sets itself, and DHCP-only ones that mean nothing to a static stanza.
_NOT_CARRIED: Final = frozenset(
    {"address", "netmask", "gateway", "broadcast", "network", "dns-nameservers", "dns-search",
     "vlan-raw-device", "vlan_raw_device", "hostname", "leasehours", "leasetime", "vendor",
     "client", "request"}
)
_PORT_OPTIONS: Final = frozenset({"bridge_ports", "bridge-ports", "bond-slaves", "bond_slaves"})


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _logical_lines(lines: list[str]) -> list[list[str]]:
    """Group physical lines joined by a trailing backslash, as ifupdown reads them.

    A comment never continues onto the next line, even when it ends with a backslash.
    """
    groups: list[list[str]] = []
    pending: list[str] = []
    for line in lines:
        pending.append(line)
        if not line.endswith("\\") or _is_comment(pending[0]):
            groups.append(pending)
            pending = []
    if pending:
        groups.append(pending)
    return groups


def _joined(group: list[str]) -> str:
    return " ".join(line.rstrip("\\").strip() for line in group).strip()


def _is_keyword(word: str) -> bool:
    return word in _STANZA_KEYWORDS or word in _OTHER_KEYWORDS or word.startswith("allow-")


def _without_interface(words: list[str], interface: str) -> str | None:
    """Drop `interface` from an auto/allow-* line; None when the line names nothing else."""
    rest = [word for word in words[1:] if word != interface]
    return " ".join([words[0], *rest]) if rest else None


def _check_no_conflict(words: list[str], stanza: str | None, interface: str) -> None:
    """Refuse stanzas that would take the interface away from its static stanza."""
    if words[0] == "mapping" and any(fnmatch.fnmatchcase(interface, p) for p in words[1:]):
        raise RenderError(
            f"`{' '.join(words)}` applies to {interface} and would bypass its static stanza; "
            "remove the mapping, or give the wizard another interface"
        )
    if words[0] in _PORT_OPTIONS and interface in words[1:]:
        raise RenderError(
            f"{interface} is a port of {stanza} (`{' '.join(words)}`); give the wizard "
            f"{stanza} as its interface"
        )


def _interface_stanza(config: WizardConfig, carried: list[str]) -> list[str]:
    net = config.network
    options = [
        f"address {net.ip_address}",
        f"netmask {net.netmask}",
        f"gateway {net.gateway}",
    ]
    raw = vlan_raw_device(net.interface)
    if raw is not None:
        options.append(f"vlan-raw-device {raw}")
    options += [f"dns-nameservers {' '.join(net.nameservers)}", f"dns-search {net.domain}"]
    return [f"auto {net.interface}", f"iface {net.interface} inet static"] + [
        f"\t{option}" for option in [*options, *carried]
    ]


_BLOCK_CLOSE: Final = "\0close"  # where the old managed block ended
_OWNED: Final = "\0owned"  # option lines go to the managed stanza
_DROPPED: Final = "\0dropped"  # option lines go nowhere


class _InterfacesScan:
    """One pass over interfaces: the lines kept, the options carried, whether lo is there."""

    def __init__(self, interface: str, marker: str) -> None:
        self.interface = interface
        self.marker = marker
        self.out: list[str] = []
        self.carried: list[str] = []
        self.has_loopback = False
        self.owner: str | None = None  # the stanza the next option lines belong to
        self.in_block = False
        self.released: list[str] = []  # interfaces the old block configured, not this one
        self.first_stanza: dict[str, int] = {}  # where each kept interface's first iface is
        self.activated: set[str] = set()  # interfaces a kept auto or allow-* line names

    def feed(self, group: list[str]) -> None:
        """Take one logical line."""
        words = _joined(group).split()
        if group == [self.marker]:
            self.out.append(self.marker)
            self.in_block = True
        elif group == [_BLOCK_CLOSE]:
            self.in_block, self.owner = False, None
        elif self.in_block and self.owner != _OWNED and (
            not words or words[0] not in _STANZA_KEYWORDS
        ):
            pass  # the old block's own lines: auto lines, a former interface's options
        elif not words or _is_comment(group[0]):
            self.out.extend(group)
        elif words[0] in _STANZA_KEYWORDS:
            self._stanza(words, group)
        elif words[0] == "auto" or words[0].startswith("allow-"):
            self._auto(words, group)
        elif _is_keyword(words[0]):
            self.owner = None
            self.out.extend(group)
        else:
            self._option(words, group)

    def _stanza(self, words: list[str], group: list[str]) -> None:
        _check_no_conflict(words, None, self.interface)
        self.owner = words[1] if len(words) > 1 else None
        iface = self.owner if words[0] == "iface" else None
        self.has_loopback = self.has_loopback or iface == "lo"
        if iface == self.interface and words[2:3] == ["inet"]:
            self.owner = _OWNED
            if self.marker not in self.out:
                self.out.append(self.marker)
        elif self.in_block:
            self.owner = _DROPPED  # the stanza of the interface a previous wizard configured
            if iface is not None and iface not in {self.interface, *self.released}:
                self.released.append(iface)
        else:
            if iface is not None:
                self.first_stanza.setdefault(iface, len(self.out))
            self.out.extend(group)

    def _auto(self, words: list[str], group: list[str]) -> None:
        self.owner = None
        if self.interface not in words[1:]:
            self.activated.update(words[1:])
            self.out.extend(group)
        elif (kept := _without_interface(words, self.interface)) is not None:
            self.activated.update(kept.split()[1:])
            self.out.append(kept)

    def give_back_activation(self) -> None:
        """Bring up the stanzas an interface change leaves behind, as the old block did.

        The old block's `auto` line brought up every stanza of its interface, the admin's
        `inet6` ones too (the runner took over their `auto`/`allow-hotplug` line). The block
        goes whole; the admin's stanzas get an `auto` line of their own above the first of
        them, outside the block, unless an admin line already activates the interface.
        """
        returned = {
            self.first_stanza[name]: name
            for name in self.released
            if name in self.first_stanza and name not in self.activated
        }
        for at in sorted(returned, reverse=True):
            self.out.insert(at, f"auto {returned[at]}")

    def _option(self, words: list[str], group: list[str]) -> None:
        if self.owner == _DROPPED:
            return
        if self.owner == _OWNED:
            # An option of the stanza being replaced: keep what the wizard does not set itself
            # (mtu, hwaddress, up/down route commands, ...), in the managed stanza.
            option = " ".join(words)
            if words[0] not in _NOT_CARRIED and option not in self.carried:
                self.carried.append(option)
            return
        _check_no_conflict(words, self.owner, self.interface)
        self.out.extend(group)


_SOURCE_KEYWORDS: Final = frozenset({"source", "source-directory", "source-dir"})


def interfaces_sources(text: str) -> list[tuple[str, str]]:
    """The `source` patterns and `source-directory` directories an interfaces file includes,
    one by one (a line may name several)."""
    found = []
    for group in _logical_lines(file_lines(text)):
        words = _joined(group).split()
        if words and words[0] in _SOURCE_KEYWORDS:
            found += [(words[0], pattern) for pattern in words[1:]]  # ifupdown reads each
    return found


#: Options with which ifup makes the device of its stanza (a bridge, a bond, an Open vSwitch
#: port, a command run first): that device need not exist before.
_MAKES_DEVICE: Final = _PORT_OPTIONS | {"ovs_type", "ovs-type", "pre-up"}


def makes_device(text: str, interface: str) -> bool:
    """Whether ifup makes the device `interface` from interfaces `text`: a stanza of it
    names its ports or a command run first, or a `rename` line gives a device its name."""
    owner: str | None = None
    for group in _logical_lines(file_lines(text)):
        words = _joined(group).split()
        if not words or _is_comment(group[0]):
            continue
        if words[0] == "rename" and any(word.endswith(f"={interface}") for word in words[1:]):
            return True
        if words[0] in _STANZA_KEYWORDS:
            owner = words[1] if len(words) > 1 and words[0] == "iface" else None
        elif _is_keyword(words[0]):
            owner = None
        elif owner == interface and words[0] in _MAKES_DEVICE:
            return True
    return False


def without_sources(text: str) -> str:
    """`text` with every `source` and `source-directory` line commented out, continuations too."""
    lines: list[str] = []
    for group in _logical_lines(file_lines(text)):
        words = _joined(group).split()
        if words and words[0] in _SOURCE_KEYWORDS:
            lines.extend(f"# {line}" for line in group)
        else:
            lines.extend(group)
    return "".join(f"{line}\n" for line in lines)


def interface_conflicts(text: str, interface: str) -> list[str]:
    """What in an included interfaces file would also configure `interface`."""
    conflicts = []
    owner: str | None = None
    for group in _logical_lines(file_lines(text)):
        words = _joined(group).split()
        if not words or _is_comment(group[0]):
            continue
        if words[0] == "iface" and words[1:3] == [interface, "inet"]:
            conflicts.append(f"`{' '.join(words)}`")
        try:
            _check_no_conflict(words, owner, interface)
        except RenderError as error:
            conflicts.append(str(error).split(";")[0])
        if words[0] in _STANZA_KEYWORDS:
            owner = words[1] if len(words) > 1 else None
    return conflicts


#: Where the managed block goes: never a real line (NUL cannot be read in).
_MARKER: Final = "\0block"


def _scan_interfaces(current: str | None, interface: str) -> _InterfacesScan:
    split = _split_block(current)
    lines = (
        [*split.before, _MARKER, *split.inside, _BLOCK_CLOSE, *split.after]
        if split.had_block
        else split.after
    )
    scan = _InterfacesScan(interface, _MARKER)
    for group in _logical_lines(lines):
        scan.feed(group)
    return scan


def stanza_interfaces(text: str, family: str | None = None) -> frozenset[str]:
    """The interfaces an interfaces file gives a stanza (`iface NAME FAMILY ...`), of
    `family` (inet, inet6) if given."""
    stanzas = (_joined(group).split() for group in _logical_lines(file_lines(text)))
    return frozenset(words[1] for words in stanzas if words[:1] == ["iface"] and len(words) > 2
                     and family in (None, words[2]))


def released_interfaces(current: str | None, interface: str) -> list[str]:
    """The interfaces the wizard's block in `current` configured other than `interface`: the
    new file no longer gives them the wizard's static stanza."""
    return _scan_interfaces(current, interface).released


def render_interfaces(config: WizardConfig, current: str | None) -> str:
    """/etc/network/interfaces: a static stanza for the wizard's interface; all else kept."""
    scan = _scan_interfaces(current, config.network.interface)
    scan.give_back_activation()
    block = _block(_interface_stanza(config, scan.carried))
    if _MARKER in scan.out:
        at = scan.out.index(_MARKER)
        before, after = scan.out[:at], scan.out[at + 1 :]
    else:
        before, after = scan.out, []
    loopback = [] if scan.has_loopback else ["# The loopback network interface", "auto lo",
                                             "iface lo inet loopback"]
    # A missing loopback stanza goes just above the block, not at the top of the file, where
    # it would adopt any stray option lines that ifquery should rather reject.
    placed = [*loopback, "", *block] if loopback else block
    return _join_sections(_glue_to_comment(before, placed), after)


# --- postfix files: main.cf and lookup tables share one line grammar ----------------------------

_PARAM_RE: Final = re.compile(r"(?P<name>[A-Za-z0-9_]+)\s*=")
CANONICAL_MAP: Final = "hash:/etc/postfix/canonical"


@dataclass(frozen=True)
class _PostfixLine:
    """A physical line; `owner` is the index of the logical line a continuation belongs to."""

    text: str
    starts: bool
    owner: int | None = None


def _postfix_lines(lines: list[str]) -> list[_PostfixLine]:
    """Classify lines as postfix reads them: a line led by whitespace continues the last
    logical line, even across comment and blank lines, which postfix skips."""
    parsed: list[_PostfixLine] = []
    last: int | None = None
    for line in lines:
        if not line.strip() or _is_comment(line):
            parsed.append(_PostfixLine(line, starts=False))
        elif line[:1].isspace():
            parsed.append(_PostfixLine(line, starts=False, owner=last))
        else:
            parsed.append(_PostfixLine(line, starts=True))
            last = len(parsed) - 1
    return parsed


def _logical_value(parsed: list[_PostfixLine], index: int) -> str:
    parts = [parsed[index].text.partition("=")[2]]
    parts += [line.text for line in parsed if line.owner == index]
    return " ".join(part.strip() for part in parts).strip()


def _without(parsed: list[_PostfixLine], dropped: set[int]) -> list[str]:
    """The lines left once the logical lines in `dropped` (continuations included) are gone."""
    return [
        line.text
        for index, line in enumerate(parsed)
        if index not in dropped and line.owner not in dropped
    ]


#: Table types that read /etc/postfix/canonical as `key value` lines, as the wizard writes it.
_INDEXED_TABLES: Final = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash"})


def _has_canonical_map(value: str) -> bool:
    """Whether canonical_maps reads /etc/postfix/canonical already; RenderError when it reads
    it as a table the wizard's `@host @fqdn` line does not fit (regexp:, pcre:, ...)."""
    types = [token.rsplit(":", 1)[0] for token in re.split(r"[\s,]+", value)
             if token.endswith(":/etc/postfix/canonical")]
    for kind in types:
        if kind not in _INDEXED_TABLES:
            raise RenderError(
                f"canonical_maps reads /etc/postfix/canonical as a {kind}: table, which the "
                "wizard's `@host @fqdn` entry does not fit: use hash:/etc/postfix/canonical, "
                f"and keep the {kind}: table in another file")
    return bool(types)


def main_cf_settings(config: WizardConfig, current: Mapping[str, str]) -> dict[str, str]:
    """The parameters the wizard sets in main.cf, given the current values of the file.

    canonical_maps is only touched when it does not already use /etc/postfix/canonical: the
    wizard's table is then added after the admin's own maps.
    """
    net = config.network
    settings = {
        "myhostname": net.fqdn,
        "mydomain": net.domain,
        "myorigin": "/etc/mailname",
        "mydestination": f"$myhostname, {net.hostname}, localhost.$mydomain, localhost",
    }
    maps = current.get("canonical_maps", "")
    if not maps:
        settings["canonical_maps"] = CANONICAL_MAP
    elif not _has_canonical_map(maps):
        settings["canonical_maps"] = f"{maps}, {CANONICAL_MAP}"
    return settings


def render_main_cf(config: WizardConfig, current: str | None) -> str:
    """/etc/postfix/main.cf: the host's names set in place; every other line kept as it was."""
    parsed = _postfix_lines(
        [line for line in file_lines(current)
         if not line.startswith(_MAIN_CF_HEADER_PREFIX)]
    )
    names = {
        index: match["name"]
        for index, line in enumerate(parsed)
        if line.starts and (match := _PARAM_RE.match(line.text))
    }
    values = {name: _logical_value(parsed, index) for index, name in names.items()}
    settings = main_cf_settings(config, values)
    replaced = {index for index, name in names.items() if name in settings}
    last = {name: index for index, name in names.items() if name in settings}
    out: list[str] = []
    for index, line in enumerate(parsed):
        if index in replaced:
            # Set where postfix reads it (the last occurrence); earlier duplicates go.
            if last[names[index]] == index:
                out.append(f"{names[index]} = {settings[names[index]]}")
        elif line.owner not in replaced:
            out.append(line.text)
    missing = [f"{name} = {value}" for name, value in settings.items() if name not in last]
    return _join_sections([MAIN_CF_HEADER], out, missing)


def render_canonical(config: WizardConfig, current: str | None) -> str:
    """/etc/postfix/canonical: `@<hostname>` rewritten to `@<fqdn>`; the admin's entries kept."""
    net = config.network
    key = f"@{net.hostname}".lower()

    def keep(lines: list[str]) -> list[str]:
        parsed = _postfix_lines(lines)
        dropped = {
            index
            for index, line in enumerate(parsed)
            if line.starts and line.text.split()[0].lower() == key
        }
        return _without(parsed, dropped)

    split = _split_block(current)
    block = _block([f"@{net.hostname}\t@{net.fqdn}"])
    if not split.had_block:
        # At the end: a stray indented line at the top cannot become part of the wizard's entry.
        return _join_sections(keep(split.after), block)
    return _join_sections(keep(split.before), block, keep(split.after))


#: The renderer of each managed file (layout.SYSTEM_FILES, in the order the step writes them).
RENDERERS: Final[dict[str, Renderer]] = dict(zip(SYSTEM_FILES, (
    render_hostname, render_hosts, render_mailname, render_resolv_conf, render_main_cf,
    render_canonical, render_interfaces,
), strict=True))
