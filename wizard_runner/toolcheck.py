"""Check rendered files with the real Debian tools (ifquery, postconf, postmap) before any write."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.errors import ApplyError
from wizard_runner.layout import Layout
from wizard_runner.render import interface_conflicts, interfaces_sources
from wizard_runner.sysconf import FileChange
from wizard_runner.tools import ToolOutput, find_tool, run_tool

#: ifupdown reads the files of a source-directory whose names match this (run-parts style).
_SOURCE_DIR_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")


def _included_files(layout: Layout, kind: str, pattern: str) -> list[Path]:
    system = pattern if pattern.startswith("/") else f"/etc/network/{pattern}"
    if kind == "source":
        base = layout.host("/")
        return sorted(p for p in base.glob(system.lstrip("/")) if p.is_file())
    directory = layout.host(system)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and _SOURCE_DIR_NAME.fullmatch(p.name))


def check_included_interfaces(config: WizardConfig, layout: Layout, interfaces: bytes) -> None:
    """Refuse a run when a file included by interfaces also configures the wizard's interface.

    ifquery accepts two `iface eth0 inet` stanzas and ifup then applies both; this catches it.
    """
    interface = config.network.interface
    text = interfaces.decode("utf-8", "surrogateescape")
    for kind, pattern in interfaces_sources(text):
        for path in _included_files(layout, kind, pattern):
            try:
                included = path.read_text("utf-8", "surrogateescape")
            except OSError as error:
                raise ApplyError(f"{path}: cannot read: {error.strerror}") from error
            conflicts = interface_conflicts(included, interface)
            if conflicts:
                shown_path = "/" + str(path.relative_to(layout.root))
                raise ApplyError(
                    f"/etc/network/interfaces: {shown_path} (included by `{kind} {pattern}`) "
                    f"also configures {interface}: {'; '.join(conflicts)}; remove it there"
                )


def _write_settled(path: Path, data: bytes) -> None:
    """Write a scratch file dated a minute ago: postfix waits while a file looks freshly written."""
    path.write_bytes(data)
    settled = time.time() - 60
    os.utime(path, (settled, settled))


def _rejected(path: str, tool: str, output: ToolOutput | str) -> ApplyError:
    detail = output if isinstance(output, str) else (output.stderr or output.stdout).strip()
    return ApplyError(f"{path}: {tool} rejected the new content: {detail}")


class ToolChecker:
    """A sysconf validator: each rendered file goes through its Debian tool, where installed."""

    def __init__(self, config: WizardConfig, layout: Layout, log: FilteringBoundLogger) -> None:
        self.config = config
        self.layout = layout
        self.log = log

    def __call__(self, writes: Sequence[FileChange]) -> None:
        """Raise ApplyError with the tool's message if any tool rejects a planned file."""
        new = {change.path: change.new or b"" for change in writes}
        with tempfile.TemporaryDirectory(prefix="wizard-runner-check-") as scratch:
            workdir = Path(scratch)
            if "/etc/network/interfaces" in new:
                self._check_interfaces(workdir, new["/etc/network/interfaces"])
            if "/etc/postfix/main.cf" in new:
                self._prepare_postfix_dir(workdir / "postfix", new)
                self._check_main_cf(workdir / "postfix")
            if "/etc/postfix/canonical" in new:
                self._prepare_table_dir(workdir / "table", new["/etc/postfix/canonical"])
                self._check_canonical(workdir / "table")

    def _tool(self, name: str, path: str) -> str | None:
        found = find_tool(name)
        if found is None:
            self.log.warning("validator_missing", tool=name, path=path,
                             reason=f"{name} is not installed; {path} is checked by rules only")
        return found

    def _check_interfaces(self, workdir: Path, data: bytes) -> None:
        path = "/etc/network/interfaces"
        ifquery = self._tool("ifquery", path)
        if ifquery is None:
            return
        candidate = workdir / "interfaces"
        _write_settled(candidate, data)
        net = self.config.network
        output = run_tool([ifquery, "--interfaces", str(candidate), net.interface])
        if output.returncode != 0:
            raise _rejected(path, "ifquery", output)
        if f"address: {net.ip_address}" not in output.stdout.splitlines():
            raise _rejected(path, "ifquery", f"it does not read address {net.ip_address} "
                            f"for {net.interface}: {output.stdout.strip()!r}")
        self.log.info("file_validated", path=path, tool="ifquery")

    def _prepare_postfix_dir(self, directory: Path, new: dict[str, bytes]) -> None:
        directory.mkdir()
        _write_settled(directory / "main.cf", new["/etc/postfix/main.cf"])
        master_cf = self.layout.host("/etc/postfix/master.cf")
        if master_cf.is_file():
            _write_settled(directory / "master.cf", master_cf.read_bytes())

    def _prepare_table_dir(self, directory: Path, table: bytes) -> None:
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

    def _check_main_cf(self, directory: Path) -> None:
        path = "/etc/postfix/main.cf"
        postconf = self._tool("postconf", path)
        if postconf is None:
            return
        output = run_tool([postconf, "-c", str(directory), "-h", "myhostname", "mydomain",
                           "myorigin"])
        if output.returncode != 0:
            raise _rejected(path, "postconf", output)
        net = self.config.network
        expected = [net.fqdn, net.domain, "/etc/mailname"]
        if output.stdout.split() != expected:
            raise _rejected(path, "postconf", f"it reads {output.stdout.split()}, not {expected}")
        self.log.info("file_validated", path=path, tool="postconf")

    def _check_canonical(self, directory: Path) -> None:
        path = "/etc/postfix/canonical"
        postmap = self._tool("postmap", path)
        if postmap is None:
            return
        table = f"hash:{directory / 'canonical'}"
        output = run_tool([postmap, "-c", str(directory), table])
        # postmap exits 0 even when it skips malformed lines; its warnings count as rejections.
        if output.returncode != 0 or "warning:" in output.stderr:
            raise _rejected(path, "postmap", output)
        net = self.config.network
        query = run_tool([postmap, "-c", str(directory), "-q", f"@{net.hostname}", table])
        if query.stdout.strip() != f"@{net.fqdn}":
            raise _rejected(path, "postmap", f"@{net.hostname} maps to {query.stdout.strip()!r}")
        self.log.info("file_validated", path=path, tool="postmap")
