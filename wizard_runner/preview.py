"""A dry run: what a run would write (as a unified diff) and do with each script, with the
same checks as a run, and nothing written."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from wizard_runner.config import WizardConfig
from wizard_runner.log import make_logger
from wizard_runner.preflight import RunOptions, RunPlan, prepare
from wizard_runner.runner import (
    INTERFACES,
    SKIPPED_BY_CONFIG,
    check_writes,
    network_before,
    plan_system,
)
from wizard_runner.scripts.discovery import Verdict

if TYPE_CHECKING:
    from wizard_runner.layout import Layout
    from wizard_runner.sysconf import FileChange


class ScriptAction(StrEnum):
    """What a run would do with one entry of wizard.d."""

    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class PlannedScript:
    """One entry of wizard.d in a dry run: what the run would do with it, and why."""

    name: str
    action: ScriptAction
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"name": self.name, "action": self.action.value, "reason": self.reason}


@dataclass(frozen=True)
class Preview:
    """A dry run: the planned changes, their unified diff and the scripts' fate; nothing was
    written."""

    changes: tuple[FileChange, ...]
    diff: str
    handled: bool
    run_scripts: bool = False
    scripts: tuple[PlannedScript, ...] = ()
    files_to_write: tuple[str, ...] = ()
    scripts_done_by: str | None = None  # with scripts_once: the run that ran them to success
    #: On the real root, for files an earlier run wrote that the system does not show: what
    #: the run would do live, and what it would leave to do by hand.
    follow_ups: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the run would do anything: write a file, follow one up live, or run a
        script."""
        return bool(self.files_to_write or self.follow_ups) or any(
            script.action is ScriptAction.RUN for script in self.scripts)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "dry_run": True,
            "handle_system_conf": self.handled,
            "run_scripts": self.run_scripts,
            "changed": self.changed,
            "files": [
                {"path": c.path, "plan": c.plan.value, "reason": c.reason} for c in self.changes
            ],
            "diff": self.diff,
            "scripts": [script.to_dict() for script in self.scripts],
            "scripts_done_by": self.scripts_done_by,
            "follow_ups": list(self.follow_ups),
            "pending": list(self.pending),
        }


def scripts_preview(plan: RunPlan) -> tuple[PlannedScript, ...]:
    """What the scripts step would do with each entry of wizard.d: run, skip (and why), fail
    at its place, or not run (before the start point, or after a failure)."""
    if plan.scripts is None:
        return ()
    rows: list[PlannedScript] = []
    reached = plan.start is None
    failing: str | None = None
    for decision in plan.scripts.decisions:
        if plan.start is not None and decision.name == plan.start.name:
            reached = True
        if decision.verdict is Verdict.SKIP:
            rows.append(PlannedScript(decision.name, ScriptAction.SKIP, decision.reason))
        elif not reached and plan.start is not None:
            rows.append(PlannedScript(decision.name, ScriptAction.NOT_RUN, plan.start.note))
        elif failing is not None:
            rows.append(PlannedScript(decision.name, ScriptAction.NOT_RUN,
                                      f"not run: {failing} would fail"))
        elif decision.verdict is Verdict.FAIL:
            rows.append(PlannedScript(decision.name, ScriptAction.FAIL, decision.reason))
            failing = decision.name
        else:
            rows.append(PlannedScript(decision.name, ScriptAction.RUN))
    return tuple(rows)


def preview(
    config: WizardConfig,
    options: RunOptions | None = None,
    *,
    log: FilteringBoundLogger | None = None,
) -> Preview:
    """Plan (and tool-check) the system step and list the scripts without writing anything,
    not even the result; the same usage checks as a run."""
    from wizard_runner.sysconf import unified_diff

    options = options or RunOptions()
    plan = prepare(config, options)
    layout = plan.layout
    log = log or make_logger(sys.stderr)
    scripts = scripts_preview(plan)
    if not plan.handle_system_conf:
        return Preview((), f"# {SKIPPED_BY_CONFIG}: no system file would be touched\n", False,
                       plan.run_scripts, scripts, scripts_done_by=plan.scripts_done_by)
    changes = plan_system(config, layout, options)
    writes = check_writes(config, layout, options, changes, log)
    live, by_hand = (_not_live(config, layout, options, changes, log)
                     if layout.is_real_root else ((), ()))
    return Preview(changes, unified_diff(changes), True, plan.run_scripts, scripts,
                   tuple(change.path for change in writes), plan.scripts_done_by, live, by_hand)


def _not_live(config: WizardConfig, layout: Layout, options: RunOptions,
              changes: tuple[FileChange, ...], log: FilteringBoundLogger
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a run would follow up of the files it would leave as they are, which the running
    system does not show (an earlier run wrote them): done live, left to do by hand."""
    from wizard_runner.activate import (
        network_commands,
        network_pending,
        not_live,
        not_live_network,
    )
    from wizard_runner.sysconf import Plan

    kept = {change.path for change in changes if change.plan is Plan.UNCHANGED}
    stale = not_live(config, log) & kept
    live: list[str] = []
    by_hand: list[str] = []
    if "/etc/hostname" in stale:
        live.append("hostname -F /etc/hostname (the live host name is not the wizard's)")
    if INTERFACES in stale:
        interface = config.network.interface
        network = network_before(layout, config, changes)
        if options.apply_network:
            live.append(f"{network_commands(interface, network)} "
                        f"({not_live_network(config)})")
        else:
            by_hand.append(network_pending(interface, network,
                                           not_live=not_live_network(config)))
    return tuple(live), tuple(by_hand)
