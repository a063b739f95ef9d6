"""Check rendered files with the real Debian tools (ifquery, postconf, postmap) before any write."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Final, NamedTuple

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig, vlan_raw_device
from wizard_runner.errors import ApplyError, PrivilegeError
from wizard_runner.escape import printable
from wizard_runner.fence import Fence, FenceError, NotDirectoryError, open_fence
from wizard_runner.layout import Layout
from wizard_runner.procs import alive
from wizard_runner.render import (
    interface_conflicts,
    interfaces_sources,
    makes_device,
    without_sources,
)
from wizard_runner.signals import interruptible
from wizard_runner.sysconf import FileChange
from wizard_runner.tools import ToolOutput, find_tool, run_tool

#: ifupdown reads the files of a source-directory whose names match this (run-parts style).
_SOURCE_DIR_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
#: ifupdown resolves a relative include against the directory of the file naming it.
_NETWORK_DIR: Final = "/etc/network"
_GLOB_MAGIC: Final = re.compile(r"[*?[]")
INTERFACES: Final = "/etc/network/interfaces"
#: Where the kernel lists this machine's network devices.
SYS_NET: Final = Path("/sys/class/net")


def _check_run(argv: Sequence[str]) -> ToolOutput:
    """A check's tool run: nothing is written yet, so a stop may cut it at once."""
    with interruptible():
        return run_tool(argv)


def include_path(pattern: str, base: str = _NETWORK_DIR) -> PurePosixPath:
    """The absolute path an include names, relative ones from `base`: /etc/network for
    /etc/network/interfaces, else the directory of the file that names it.

    `..` is resolved by name and stops at the root, as it does at `/`: whatever the pattern, it
    stays under the root (`../interfaces.d` is /etc/interfaces.d, `../../..` is `/`).
    """
    normal = posixpath.normpath(posixpath.join(base, pattern))
    return PurePosixPath("/" + normal.lstrip("/"))


def _glob_match(name: str, pattern: str) -> bool:
    """A shell glob on one name: a leading dot must be matched by a leading dot, as in sh."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _may_be_dir(dir_fd: int, name: str) -> bool:
    with contextlib.suppress(OSError):
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
        # A symlink is kept so that the walk past it says it is refused (or follows it on /).
        return stat.S_ISDIR(mode) or stat.S_ISLNK(mode)
    return False


def _glob(fence: Fence, target: PurePosixPath) -> list[PurePosixPath]:
    """The paths a `source` pattern names under the root, directory by directory."""
    found = [PurePosixPath("/")]
    parts = target.parts[1:]
    for index, part in enumerate(parts):
        if not _GLOB_MAGIC.search(part):
            found = [base / part for base in found]
            continue
        inner = index < len(parts) - 1
        matched: list[PurePosixPath] = []
        for base in found:
            try:
                with fence.directory(base) as dir_fd:
                    if dir_fd is None:
                        continue
                    names = sorted(name for name in os.listdir(dir_fd) if _glob_match(name, part)
                                   and (not inner or _may_be_dir(dir_fd, name)))
            except NotDirectoryError:
                continue
            matched.extend(base / name for name in names)
        found = matched
    return found


def _source_directory(fence: Fence, target: PurePosixPath) -> Iterator[tuple[str, bytes]]:
    """The files of a source-directory ifupdown reads: run-parts names, regular files only."""
    try:
        with fence.directory(target) as dir_fd:
            if dir_fd is None:
                return
            for name in sorted(os.listdir(dir_fd)):
                if _SOURCE_DIR_NAME.fullmatch(name):
                    data = fence.read_entry(dir_fd, name, str(target / name))
                    if data is not None:
                        yield str(target / name), data
    except NotDirectoryError:
        return


def _included_files(fence: Fence, kind: str, target: PurePosixPath
                    ) -> Iterator[tuple[str, bytes]]:
    """Each file an include line names, read under the root one at a time: (system path,
    bytes)."""
    if kind != "source":
        yield from _source_directory(fence, target)
        return
    for path in _glob(fence, target):
        data = fence.read_file(path)
        if data is not None:  # missing, or a directory: ifupdown says so and goes on
            yield str(path), data


def _each_included(fence: Fence, kind: str, target: PurePosixPath, line: str,
                   interface: str) -> Iterator[tuple[str, bytes]]:
    """The files one include names; an ApplyError naming `line` when they cannot be read."""
    try:
        yield from _included_files(fence, kind, target)
    except FenceError as error:
        raise ApplyError(f"{INTERFACES}: {line} cannot be checked for another {interface} "
                         f"stanza: {error}") from error
    except OSError as error:  # refused access is a privilege error (77), as for the targets
        failed = PrivilegeError if isinstance(error, PermissionError) else ApplyError
        raise failed(f"{INTERFACES}: {line} cannot be checked: {error.strerror}") from error
    except ValueError as error:  # a NUL byte in the path: no file can have that name
        raise ApplyError(f"{INTERFACES}: {line} cannot be checked: {error}") from error


def check_included_interfaces(config: WizardConfig, layout: Layout, interfaces: bytes) -> None:
    """Refuse a run when a file included by interfaces also configures the wizard's interface,
    or includes /etc/network/interfaces itself (ifup would apply its stanzas twice).

    ifquery accepts two `iface eth0 inet` stanzas and ifup then applies both; this catches it.
    Included files are read under the root like the system files: only regular files, no
    symlink followed under a sandbox root; one that cannot be read so stops the run. The files
    they include are checked too, as ifupdown reads them: relative to the directory of the
    file naming them (on the live system, where its symlinks lead), each once however often
    it is named, one file in memory at a time.
    """
    interface = config.network.interface
    where_is = os.path.realpath if layout.is_real_root else str  # a sandbox follows no symlink
    top = where_is(INTERFACES)
    pending = deque([(where_is(_NETWORK_DIR),
                      interfaces_sources(interfaces.decode("utf-8", "surrogateescape")), "")])
    seen = {top}
    with open_fence(layout) as fence:
        while pending:
            base, sources, where = pending.popleft()
            for kind, pattern in sources:
                line = f"`{kind} {pattern}`{where}"
                target = include_path(pattern, base)
                for shown_path, data in _each_included(fence, kind, target, line, interface):
                    real = where_is(shown_path)
                    if real == top:
                        raise ApplyError(f"{INTERFACES}: {line} includes {INTERFACES} itself: "
                                         "ifup would apply its stanzas twice; remove that line")
                    if real in seen:
                        continue
                    seen.add(real)
                    text = data.decode("utf-8", "surrogateescape")
                    conflicts = interface_conflicts(text, interface)
                    if conflicts:
                        raise ApplyError(
                            f"{INTERFACES}: {shown_path} (included by {line}) "
                            f"also configures {interface}: {'; '.join(conflicts)}; remove it there"
                        )
                    pending.append((posixpath.dirname(real), interfaces_sources(text),
                                    f" in {shown_path}"))


def check_interface_device(config: WizardConfig, layout: Layout, interfaces: bytes,
                           net_dir: Path = SYS_NET) -> None:
    """On the live system, refuse a stanza for a device this machine lacks: the address would
    go nowhere. An alias needs its device, a VLAN its raw device (ifup makes the VLAN); a
    device ifup makes (a bridge or bond whose stanza names its ports, one a command makes
    first, one a `rename` line names) need not exist yet. Under --root, or without sysfs, the
    devices of the machine it is for are unknown."""
    if not layout.is_real_root or not net_dir.is_dir():
        return
    interface = config.network.interface
    device = interface.split(":", 1)[0]
    device = vlan_raw_device(device) or device
    text = interfaces.decode("utf-8", "surrogateescape")
    if (net_dir / device).is_dir() or any(makes_device(text, name)
                                          for name in {interface, device}):
        return
    try:  # each device is a directory there (bonding_masters is a file)
        present = ", ".join(sorted(entry.name for entry in os.scandir(net_dir)
                                   if entry.is_dir())) or "none"
    except OSError as error:
        present = f"unknown: {error.strerror}"
    raise ApplyError(f"network.interface: {interface}: this machine has no network device "
                     f"{device} (it has: {present}); its static address would go nowhere: "
                     "name one of them, or create the device first")


def _write_settled(path: Path, data: bytes) -> None:
    """Write a scratch file dated a minute ago: postfix waits while a file looks freshly written."""
    path.write_bytes(data)
    settled = time.time() - 60
    os.utime(path, (settled, settled))


#: How much of a tool's words, and of a line it points at, a refusal quotes: the message is
#: in the result (each file's reason too) and the log.
DETAIL_LIMIT: Final = 2000
QUOTE_LIMIT: Final = 200


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class Scratch(NamedTuple):
    """A scratch copy a tool reads: what it stands for in messages, its bytes, and the file
    to blame when the tool refuses it (None: the check's own, blame the file checked)."""

    shown: str
    data: bytes
    blamed: str | None = None


def _rejected(path: str, tool: str, output: ToolOutput | str,
              scratch: Mapping[Path, Scratch] | None = None) -> ApplyError:
    """The error for a file a tool refused, in the tool's words, its scratch copies (gone by
    the time anyone reads this) named for what they stand for, each line it points at quoted,
    and the file at fault blamed: the one checked, or one read with it (master.cf)."""
    detail = output if isinstance(output, str) else (output.stderr or output.stdout).strip()
    detail = _cut(detail, DETAIL_LIMIT)  # it quotes the line too, whatever its length
    copies = scratch or {}
    named = [copies[copy] for _, copy in sorted(
        (detail.find(str(copy)), copy) for copy in copies if str(copy) in detail)]
    quoted: dict[str, None] = {}
    for copy, found in copies.items():
        lines = found.data.split(b"\n")  # as the tool counts them
        for match in re.finditer(re.escape(str(copy)) + r"(?::(\d+):|[,:] line (\d+))", detail):
            number = int(match.group(1) or match.group(2))
            if 0 < number <= len(lines):
                text = _cut(printable(lines[number - 1].decode("utf-8", "surrogateescape")),
                            QUOTE_LIMIT)
                quoted[f"line {number} of {found.shown} is `{text}`"] = None
        detail = detail.replace(str(copy), found.shown)
    quote = f" ({'; '.join(quoted)})" if quoted else ""
    blamed = next((found.blamed for found in named if found.blamed is not None), path)
    if blamed != path:
        return ApplyError(f"{blamed}: {tool} rejected it, reading it with the new {path}: "
                          f"{detail}{quote}")
    if not isinstance(output, str) and "fatal:" in detail and \
            all(found.blamed is None for found in named):  # about itself, or the check's own
        return ApplyError(f"{path}: {tool} could not check the new content: {detail}")
    return ApplyError(f"{path}: {tool} rejected the new content: {detail}{quote}")


#: Scratch directories of the checks, `<prefix><pid>-<random>` in the temporary directory.
SCRATCH_PREFIX: Final = "wizard-runner-check-"


def _clear_stale_scratch() -> None:
    """Remove the scratch directories checks of killed runs left (their pid is gone)."""
    top = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for name in os.listdir(top):
            pid = name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
            if name.startswith(SCRATCH_PREFIX) and pid.isdigit() and \
                    not alive(int(pid)) and \
                    os.lstat(top / name).st_uid == os.geteuid():
                shutil.rmtree(top / name, ignore_errors=True)


class ToolChecker:
    """A sysconf validator: each rendered file goes through its Debian tool, where installed."""

    def __init__(self, config: WizardConfig, layout: Layout, log: FilteringBoundLogger) -> None:
        self.config = config
        self.layout = layout
        self.log = log

    def __call__(self, writes: Sequence[FileChange]) -> None:
        """Raise ApplyError with the tool's message if any tool rejects a planned file."""
        new = {change.path: change.new or b"" for change in writes}
        _clear_stale_scratch()
        with (tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch,
              open_fence(self.layout) as fence):
            workdir = Path(scratch)
            if INTERFACES in new:
                self._check_interfaces(workdir, new[INTERFACES])
            if "/etc/postfix/main.cf" in new:
                copies = self._prepare_postfix_dir(fence, workdir / "postfix", new)
                self._check_main_cf(workdir / "postfix", copies)
            if "/etc/postfix/canonical" in new:
                copies = self._prepare_table_dir(workdir / "table", new["/etc/postfix/canonical"])
                self._check_canonical(workdir / "table", copies)

    def _tool(self, name: str, path: str) -> str | None:
        found = find_tool(name)
        if found is None:
            self.log.warning("validator_missing", tool=name, path=path,
                             reason=f"{name} is not installed; {path} is checked by rules only")
        return found

    def _check_interfaces(self, workdir: Path, data: bytes) -> None:
        path = INTERFACES
        ifquery = self._tool("ifquery", path)
        if ifquery is None:
            return
        if not self.layout.is_real_root:
            # ifquery would follow the includes on this machine's /, outside the root (and
            # could block there on a FIFO); check_included_interfaces reads them under it.
            text = without_sources(data.decode("utf-8", "surrogateescape"))
            data = text.encode("utf-8", "surrogateescape")
        candidate = workdir / "interfaces"
        _write_settled(candidate, data)
        net = self.config.network
        output = _check_run([ifquery, "--interfaces", str(candidate), net.interface])
        if output.returncode != 0:
            raise _rejected(path, "ifquery", output,
                            {candidate: Scratch(f"the new {path}", data, path)})
        if f"address: {net.ip_address}" not in output.stdout.splitlines():
            raise _rejected(path, "ifquery", f"it does not read address {net.ip_address} "
                            f"for {net.interface}: {output.stdout.strip()!r}")
        self.log.info("file_validated", path=path, tool="ifquery")

    def _prepare_postfix_dir(self, fence: Fence, directory: Path,
                             new: dict[str, bytes]) -> dict[Path, Scratch]:
        directory.mkdir()
        main_cf = new["/etc/postfix/main.cf"]
        _write_settled(directory / "main.cf", main_cf)
        copies = {directory / "main.cf": Scratch("the new /etc/postfix/main.cf", main_cf,
                                                 "/etc/postfix/main.cf")}
        # Read as an include is: a regular file under the root, or a clear refusal.
        master_cf = fence.read_file("/etc/postfix/master.cf")
        if master_cf is not None:
            _write_settled(directory / "master.cf", master_cf)
            copies[directory / "master.cf"] = Scratch("/etc/postfix/master.cf", master_cf,
                                                      "/etc/postfix/master.cf")
        return copies

    def _prepare_table_dir(self, directory: Path, table: bytes) -> dict[Path, Scratch]:
        # The table alone is checked, against a minimal main.cf: the real one may point at
        # files (myorigin = /etc/mailname) that only exist once the run has written them.
        net = self.config.network
        directory.mkdir()
        minimal = (
            f"myhostname = {net.fqdn}\nmydomain = {net.domain}\nmyorigin = $myhostname\n"
            "compatibility_level = 3.6\n"
        )
        _write_settled(directory / "main.cf", minimal.encode())
        _write_settled(directory / "canonical", table)
        return {directory / "main.cf": Scratch("the check's own main.cf", minimal.encode()),
                directory / "canonical": Scratch("the new /etc/postfix/canonical", table,
                                                 "/etc/postfix/canonical")}

    def _check_main_cf(self, directory: Path, copies: dict[Path, Scratch]) -> None:
        path = "/etc/postfix/main.cf"
        postconf = self._tool("postconf", path)
        if postconf is None:
            return
        output = _check_run([postconf, "-c", str(directory), "-h", "myhostname", "mydomain",
                             "myorigin"])
        if output.returncode != 0:
            raise _rejected(path, "postconf", output, copies)
        net = self.config.network
        expected = [net.fqdn, net.domain, "/etc/mailname"]
        if output.stdout.split() != expected:
            raise _rejected(path, "postconf", f"it reads {output.stdout.split()}, not {expected}")
        self.log.info("file_validated", path=path, tool="postconf")

    def _check_canonical(self, directory: Path, copies: dict[Path, Scratch]) -> None:
        path = "/etc/postfix/canonical"
        postmap = self._tool("postmap", path)
        if postmap is None:
            return
        table = f"hash:{directory / 'canonical'}"
        output = _check_run([postmap, "-c", str(directory), table])
        # postmap exits 0 even when it skips malformed lines; its warnings count as rejections.
        if output.returncode != 0 or "warning:" in output.stderr:
            raise _rejected(path, "postmap", output, copies)
        net = self.config.network
        query = _check_run([postmap, "-c", str(directory), "-q", f"@{net.hostname}", table])
        if query.stdout.strip() != f"@{net.fqdn}":
            raise _rejected(path, "postmap", f"@{net.hostname} maps to {query.stdout.strip()!r}")
        self.log.info("file_validated", path=path, tool="postmap")
