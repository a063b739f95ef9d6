"""Turn the fault rows a test run recorded into RELIABILITY.md."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

COMMAND = ".venv/bin/pytest --run-long --reliability-report=RELIABILITY.md"


def _machine() -> str:
    cores = os.cpu_count()
    return f"{platform.system()} {platform.release()}, {cores} cores, Python {sys.version.split()[0]}"


def render_report(rows: Sequence[Any], config: pytest.Config, exitstatus: int) -> str:
    """The markdown report: one table row per recorded fault, totals, and how to reproduce."""
    lines = [
        "# Reliability",
        "",
        "Generated from a test run, not written by hand: every row below is a fault the suite",
        "injected on purpose, how many times, and what came of it. \"Lost\" counts trials that",
        "left a file empty, partial or mixed, lost a result, hung, or gave the wrong error.",
        "",
        f"- generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {_machine()}, running as uid {os.geteuid()}",
        f"- command: `{COMMAND}`",
        f"- test run exit status: {exitstatus}"
        + (" (long suites included)" if config.getoption("--run-long") else
           " (long suites skipped: add --run-long)"),
        "",
        "| area | fault | how it is injected | trials | lost | outcome |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for row in sorted(rows, key=lambda r: (r.area, r.fault)):
        cells = [row.area, row.fault, row.injection, str(row.trials), str(row.lost), row.outcome]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    total = sum(row.trials for row in rows)
    lost = sum(row.lost for row in rows)
    lines += ["", f"Total: {total} trials in {len(rows)} rows, {lost} lost.", ""]
    return "\n".join(lines)
