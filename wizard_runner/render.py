"""Pure renderers: the wizard config plus a system file's current text give its new text.

Each renderer keeps what the admin added (other hosts, other interfaces, other postfix
parameters, other canonical entries) and replaces only what the wizard owns, marked by a comment
that names wizard-runner and the rerun command. Rendering its own output again changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from wizard_runner.config import WizardConfig, vlan_raw_device

RERUN: Final = "edit the wizard settings and rerun `wizard-runner run`"
BLOCK_BEGIN: Final = f"# BEGIN wizard-runner managed block: {RERUN} to change it"
BLOCK_END: Final = "# END wizard-runner managed block"
FILE_HEADER: Final = f"# This file is managed by wizard-runner: {RERUN} to change it."
MAIN_CF_HEADER: Final = (
    "# wizard-runner manages myhostname, mydomain, myorigin and mydestination in this file: "
    f"{RERUN} to change them."
)
_BEGIN_PREFIX: Final = "# BEGIN wizard-runner"
_END_PREFIX: Final = "# END wizard-runner"
_MAIN_CF_HEADER_PREFIX: Final = "# wizard-runner manages"
_DEBIAN_HOSTS_IPV6_COMMENT: Final = "# The following lines are desirable for IPv6 capable hosts"

Renderer = Callable[[WizardConfig, str | None], str]


# --- shared line helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """A file's lines around its managed block; `had_block` tells whether one was found."""

    before: list[str]
    after: list[str]
    had_block: bool


def _split_block(text: str | None) -> _Split:
    lines = (text or "").splitlines()
    begin = next((i for i, line in enumerate(lines) if line.startswith(_BEGIN_PREFIX)), None)
    if begin is None:
        return _Split([], lines, had_block=False)
    end = next(
        (i for i in range(begin + 1, len(lines)) if lines[i].startswith(_END_PREFIX)), None
    )
    if end is None:
        # The end marker was deleted by hand: drop only the marker, keep every other line.
        return _Split(lines[:begin], lines[begin + 1 :], had_block=True)
    return _Split(lines[:begin], lines[end + 1 :], had_block=True)


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

_HOSTS_OWNED_NAMES: Final = frozenset(
    {"localhost", "ip6-localhost", "ip6-loopback", "ip6-allnodes", "ip6-allrouters"}
)
# Debian's installer maps the install-time host name to 127.0.1.1; a static address replaces it.
_INSTALLER_HOST_ADDRESS: Final = "127.0.1.1"


def _strip_owned_names(line: str, owned: frozenset[str]) -> str | None:
    """Return the hosts line without the names the wizard owns, or None when nothing is left."""
    content, hash_sign, comment = line.partition("#")
    fields = content.split()
    if not fields:
        return None if line.strip() == _DEBIAN_HOSTS_IPV6_COMMENT else line
    address, names = fields[0], fields[1:]
    if address == _INSTALLER_HOST_ADDRESS:
        return None
    kept = [name for name in names if name.lower() not in owned]
    if len(kept) == len(names):
        return line
    if not kept:
        return None
    return "\t".join([address, " ".join(kept)]) + (f" {hash_sign}{comment}" if hash_sign else "")


def render_hosts(config: WizardConfig, current: str | None) -> str:
    """/etc/hosts: localhost, the FQDN and name on ip_address, IPv6 basics; admin lines kept."""
    net = config.network
    owned = _HOSTS_OWNED_NAMES | {net.fqdn.lower(), net.hostname.lower()}
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
        for line in (current or "").splitlines()
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


def _logical_lines(lines: list[str]) -> list[list[str]]:
    """Group physical lines joined by a trailing backslash, as ifupdown reads them."""
    groups: list[list[str]] = []
    pending: list[str] = []
    for line in lines:
        pending.append(line)
        if not line.endswith("\\"):
            groups.append(pending)
            pending = []
    if pending:
        groups.append(pending)
    return groups


def _first_word(group: list[str]) -> str:
    words = " ".join(group).split()
    return words[0] if words else ""


def _is_keyword(word: str) -> bool:
    return word in _STANZA_KEYWORDS or word in _OTHER_KEYWORDS or word.startswith("allow-")


def _without_interface(group: list[str], interface: str) -> list[str] | None:
    """Drop `interface` from an auto/allow-* line; None when the line names nothing else."""
    words = " ".join(line.rstrip("\\") for line in group).split()
    if interface not in words[1:]:
        return group
    rest = [word for word in words[1:] if word != interface]
    return [" ".join([words[0], *rest])] if rest else None


def _interface_stanza(config: WizardConfig) -> list[str]:
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
        f"\t{option}" for option in options
    ]


def render_interfaces(config: WizardConfig, current: str | None) -> str:
    """/etc/network/interfaces: a static stanza for the wizard's interface; all else kept."""
    interface = config.network.interface
    split = _split_block(current)
    marker = "\0block"  # where the managed block goes; never a real line (NUL cannot be read in)
    lines = [*split.before, marker, *split.after] if split.had_block else split.after
    out: list[str] = []
    in_owned_stanza = False
    has_loopback = False
    for group in _logical_lines(lines):
        word = _first_word(group)
        if group == [marker]:
            out.append(marker)
            continue
        if word in _STANZA_KEYWORDS:
            words = " ".join(group).split()
            in_owned_stanza = words[0] == "iface" and words[1:3] == [interface, "inet"]
            has_loopback = has_loopback or words[:2] == ["iface", "lo"]
            if in_owned_stanza:
                if marker not in out:
                    out.append(marker)
                continue
        elif word == "auto" or word.startswith("allow-"):
            in_owned_stanza = False
            kept = _without_interface(group, interface)
            out.extend(kept or [])
            continue
        elif _is_keyword(word):
            in_owned_stanza = False
        elif in_owned_stanza and word and not word.startswith("#"):
            continue  # an option line of the stanza being replaced
        out.extend(group)
    block = _block(_interface_stanza(config))
    if marker in out:
        at = out.index(marker)
        before, after = out[:at], out[at + 1 :]
    else:
        before, after = out, []
    loopback = [] if has_loopback else ["# The loopback network interface", "auto lo",
                                        "iface lo inet loopback"]
    # A missing loopback stanza goes just above the block, not at the top of the file, where
    # it would adopt any stray option lines that ifquery should rather reject.
    placed = [*loopback, "", *block] if loopback else block
    return _join_sections(_glue_to_comment(before, placed), after)


# --- /etc/postfix/main.cf -----------------------------------------------------------------------

_PARAM_RE: Final = re.compile(r"(?P<name>[A-Za-z0-9_]+)\s*=")
CANONICAL_MAP: Final = "hash:/etc/postfix/canonical"


def _main_cf_units(lines: list[str]) -> list[tuple[str | None, list[str]]]:
    """Split main.cf into logical lines: (parameter name or None, physical lines)."""
    units: list[tuple[str | None, list[str]]] = []
    for line in lines:
        is_comment_or_blank = not line.strip() or line.lstrip().startswith("#")
        continues = line[:1].isspace() and not is_comment_or_blank
        if continues and units and units[-1][0] is not None:
            units[-1][1].append(line)
            continue
        match = None if is_comment_or_blank else _PARAM_RE.match(line)
        units.append((match["name"] if match else None, [line]))
    return units


def main_cf_settings(config: WizardConfig, current_names: Iterable[str]) -> dict[str, str]:
    """The parameters the wizard sets in main.cf (canonical_maps only when the admin has none)."""
    net = config.network
    settings = {
        "myhostname": net.fqdn,
        "mydomain": net.domain,
        "myorigin": "/etc/mailname",
        "mydestination": f"$myhostname, {net.hostname}, localhost.$mydomain, localhost",
    }
    if "canonical_maps" not in set(current_names):
        settings["canonical_maps"] = CANONICAL_MAP
    return settings


def render_main_cf(config: WizardConfig, current: str | None) -> str:
    """/etc/postfix/main.cf: the host's names set in place; every other line kept as it was."""
    lines = [
        line
        for line in (current or "").splitlines()
        if not line.startswith(_MAIN_CF_HEADER_PREFIX)
    ]
    units = _main_cf_units(lines)
    names = [name for name, _ in units if name is not None]
    settings = main_cf_settings(config, names)
    last = {name: index for index, (name, _) in enumerate(units) if name in settings}
    out: list[str] = []
    for index, (name, physical) in enumerate(units):
        if name in settings:
            if last[name] == index:
                out.append(f"{name} = {settings[name]}")
            continue  # an earlier duplicate: postfix would ignore it anyway
        out.extend(physical)
    missing = [f"{name} = {value}" for name, value in settings.items() if name not in last]
    return _join_sections([MAIN_CF_HEADER], out, missing)


# --- /etc/postfix/canonical ---------------------------------------------------------------------


def render_canonical(config: WizardConfig, current: str | None) -> str:
    """/etc/postfix/canonical: `@<hostname>` rewritten to `@<fqdn>`; the admin's entries kept."""
    net = config.network
    key = f"@{net.hostname}".lower()
    split = _split_block(current)

    def keep(lines: list[str]) -> list[str]:
        out: list[str] = []
        dropping = False
        for line in lines:
            if line[:1].isspace() and line.strip() and not line.lstrip().startswith("#"):
                if not dropping:
                    out.append(line)  # continuation of a kept entry
                continue
            words = line.split()
            dropping = bool(words) and not words[0].startswith("#") and words[0].lower() == key
            if not dropping:
                out.append(line)
        return out

    block = _block([f"@{net.hostname}\t@{net.fqdn}"])
    return _join_sections(keep(split.before), block, keep(split.after))


#: Every managed file, in the order the system step writes them.
RENDERERS: Final[dict[str, Renderer]] = {
    "/etc/hostname": render_hostname,
    "/etc/hosts": render_hosts,
    "/etc/mailname": render_mailname,
    "/etc/resolv.conf": render_resolv_conf,
    "/etc/postfix/main.cf": render_main_cf,
    "/etc/postfix/canonical": render_canonical,
    "/etc/network/interfaces": render_interfaces,
}
