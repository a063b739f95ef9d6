"""Everything a run decides before its first write: where, which steps, as whom, from where.

A usage error (an unknown `--from`, `--user` or root, nothing to `--resume`, conflicting
options, a missing or unsafe wizard.d) is raised here, so that it writes nothing: no system
file, no saved config, no result, no log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from wizard_runner.config import WizardConfig
from wizard_runner.defaults import DEFAULT_TIMEOUT, DEFAULT_USER
from wizard_runner.errors import PrivilegeError, RootError, UsageError, check_seconds
from wizard_runner.escape import printable
from wizard_runner.fsio import describe
from wizard_runner.layout import Layout
from wizard_runner.runuser import RunUser, require_switch_allowed, resolve_user
from wizard_runner.scripts.discovery import Decision, Scan, Verdict, check_safe, scan
from wizard_runner.state import Choices, completed_pass, resume_point

if TYPE_CHECKING:
    from wizard_runner.scripts.output import Progress


@dataclass(frozen=True)
class RunOptions:
    """How to run: where (root), overrides of the body's flags, and the scripts step's knobs."""

    root: str | os.PathLike[str] = "/"
    handle_system_conf: bool | None = None  # None: as the body says
    run_scripts: bool | None = None  # None: as the body says (--from and --resume imply True)
    replace_symlinks: bool = False
    apply_network: bool = False
    check_with_tools: bool = True
    user: str = DEFAULT_USER
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit
    start_at: str | None = None
    resume: bool = False
    #: Leave the scripts alone when an earlier run ran them to success (completed_pass): the
    #: Ansible module's run-once. Not a choice a plain rerun repeats.
    scripts_once: bool = False
    save_config: bool = True
    request_id: str | None = None  # the spool request served, recorded in the result
    progress: Progress | None = field(default=None, compare=False)
    user_given_by: str = field(default="--user", compare=False)  # what messages blame

    @property
    def choices(self) -> Choices:
        """What a plain rerun repeats of these options."""
        return Choices(self.replace_symlinks, self.apply_network, self.user, self.timeout)


class Start(NamedTuple):
    """Where the scripts step starts, and how the run says so."""

    name: str
    resumed: bool
    begun_by: str | None = None  # the run that began the pass a --resume continues

    @property
    def note(self) -> str:
        """What the scripts before the start are told: why they did not run."""
        return f"resuming at {self.name}" if self.resumed else f"before --from {self.name}"


class RunPlan(NamedTuple):
    """A run's decisions, made before anything is written."""

    layout: Layout
    handle_system_conf: bool
    run_scripts: bool
    user: RunUser | None = None  # only when the scripts run
    start: Start | None = None
    scripts: Scan | None = None  # wizard.d as found, when the scripts run
    #: With scripts_once, the run that ran them to success: they do not run again.
    scripts_done_by: str | None = None

    def config_as_run(self, config: WizardConfig) -> WizardConfig:
        """The body with the flags this run really uses: what a rerun repeats."""
        flags = {"handle_system_conf": self.handle_system_conf,
                 "run_scripts": self.run_scripts or self.scripts_done_by is not None}
        return config.model_copy(update=flags)


def effective_flags(config: WizardConfig, options: RunOptions) -> tuple[bool, bool]:
    """`handle_system_conf` and `run_scripts` after the command line's overrides."""
    if options.run_scripts is False and (options.start_at is not None or options.resume):
        which = "--resume" if options.resume else f"--from {options.start_at}"
        raise UsageError(f"{which} starts the scripts, which --no-scripts turns off: "
                         "drop one of them")
    if options.resume and options.start_at is not None:
        raise UsageError("--resume and --from both say where the scripts start: give one")
    system = config.handle_system_conf if options.handle_system_conf is None \
        else options.handle_system_conf
    if options.run_scripts is not None:
        scripts = options.run_scripts
    else:
        scripts = config.run_scripts or options.resume or options.start_at is not None
    return system, scripts


def require_privileges(layout: Layout) -> None:
    """Only root may write the live system's files."""
    if layout.is_real_root and os.geteuid() != 0:
        raise PrivilegeError(
            "wizard-runner writes system files under /: run it as root "
            "(or pass --root DIR to work on a sandbox tree)"
        )


def require_system_tree(layout: Layout) -> None:
    """A root without etc/ is not a system: a typo, or an empty directory. (A single missing
    directory such as etc/postfix, on a machine without postfix, is a reasoned skip.)"""
    etc = layout.host("/etc")
    if os.path.lexists(etc) and not os.path.isdir(etc):
        raise RootError(f"--root {layout.root}: its etc is not a directory "
                        f"({describe(os.lstat(etc).st_mode)}), so it is not a system tree")
    if not os.path.isdir(etc):
        raise RootError(f"--root {layout.root}: there is no etc/ directory under it, so it "
                        "is not a system tree (a typo, or an empty directory?)")


def _runnable(decisions: tuple[Decision, ...]) -> str:
    names = [printable(d.name) for d in decisions if d.verdict is Verdict.RUN]
    return ", ".join(names) if names else "none"


def start_point(found: Scan, name: str, *, resumed: bool, begun_by: str | None = None
                ) -> Start:
    """Check that the scripts can start at `name`: it exists in wizard.d and would run."""
    option = "--resume" if resumed else "--from"
    decision = next((d for d in found.decisions if d.name == name), None)
    if decision is None:
        raise UsageError(f"{option}: '{printable(name)}' is not in {found.directory} "
                         f"(scripts there: {_runnable(found.decisions)})")
    if decision.verdict is not Verdict.RUN:
        raise UsageError(f"{option}: {printable(name)} would not run ({decision.reason}); "
                         f"scripts that run: {_runnable(found.decisions)}")
    return Start(name, resumed, begun_by)


#: The options that are true, false, or None (the body decides); then those true or false.
_BODY_FLAGS = ("handle_system_conf", "run_scripts")
_FLAGS = ("replace_symlinks", "apply_network", "check_with_tools", "resume", "scripts_once",
          "save_config")
#: The options that are text, or None; then those that are text.
_TEXTS = ("start_at", "request_id")


def check_options(options: RunOptions) -> None:
    """UsageError naming the first option of the wrong type: the Python API takes whatever a
    caller passes, and `run_scripts="false"` must not read as true."""
    for name in (*_BODY_FLAGS, *_FLAGS):
        value = getattr(options, name)
        if not (isinstance(value, bool) or (value is None and name in _BODY_FLAGS)):
            raise UsageError(f"{name}: {value!r} is not true or false")
    for name in (*_TEXTS, "user"):
        value = getattr(options, name)
        if not (isinstance(value, str) or (value is None and name in _TEXTS)):
            raise UsageError(f"{name}: {value!r} is not a string")
    check_seconds(options.timeout, "timeout")


def prepare(config: WizardConfig, options: RunOptions) -> RunPlan:
    """Decide everything that can be decided before the first write, or raise why not."""
    check_options(options)
    layout = Layout.under(options.root)
    require_privileges(layout)
    require_system_tree(layout)
    handle, scripts = effective_flags(config, options)
    once = options.scripts_once and not options.resume and options.start_at is None
    done = completed_pass(layout) if scripts and once else None
    if not scripts or done is not None:
        return RunPlan(layout, handle, False, scripts_done_by=done)
    user = resolve_user(options.user, options.user_given_by)
    require_switch_allowed(user)
    found = scan(layout.wizard_d, user, top=layout.root)
    check_safe(found, user)
    start = None
    if options.resume:
        resume = resume_point(layout)
        start = start_point(found, resume.script, resumed=True, begun_by=resume.begun_by)
    elif options.start_at is not None:
        start = start_point(found, options.start_at, resumed=False)
    return RunPlan(layout, handle, scripts, user, start, found)
