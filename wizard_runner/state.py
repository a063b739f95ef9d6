"""What the runner keeps between runs: the saved body (for reruns) and the last run's result.

    <root>/var/lib/wizard-runner/config.json    0600  the last body run, without its password,
                                                      with the flags the run really used, and
                                                      the options it ran with
    <root>/var/lib/wizard-runner/last-run.json  0644  the last run's result (confd reads it)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple

from wizard_runner.config import WizardConfig, decode_json, saved_config_from_data
from wizard_runner.defaults import (
    DEFAULT_TIMEOUT,
    DEFAULT_USER,
    MAX_CONFIG_BYTES,
    MAX_RESULT_BYTES,
)
from wizard_runner.errors import (
    ConfigError,
    ConfigUnreadableError,
    PrivilegeError,
    RunnerIOError,
    StateFileError,
    UsageError,
)
from wizard_runner.fsio import Ownership, RunLock, atomic_replace, ensure_dir, read_regular
from wizard_runner.layout import STATE_DIR_MODE, Layout
from wizard_runner.procs import proc_stat
from wizard_runner.result import (
    PASS_FIELDS,
    RunResult,
    RunStatus,
    ScriptStatus,
    is_run_id,
    now,
    scripts_pass,
)


def _store(layout: Layout, path: Path, data: bytes, mode: int, what: str) -> None:
    """Replace one of the runner's state files; any failure names the file and the reason."""
    try:
        ensure_dir(layout.state_dir, STATE_DIR_MODE)
        atomic_replace(path, data, Ownership(mode, os.geteuid(), os.getegid()))
    except PrivilegeError:
        raise
    except OSError as error:
        raise RunnerIOError(f"{path}: cannot store {what}: {error.strerror}") from error


class Choices(NamedTuple):
    """What a run was told besides its body that changes what it does: a plain rerun repeats
    it with the saved body (the command line overrides each)."""

    replace_symlinks: bool = False
    apply_network: bool = False
    user: str = DEFAULT_USER
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit


class Saved(NamedTuple):
    """What a plain rerun repeats: the last body run, and the choices it ran with."""

    config: WizardConfig
    choices: Choices


def save_config(layout: Layout, config: WizardConfig, choices: Choices) -> None:
    """Keep the body (without the password, with the flags as run) and the run's choices, so
    that a plain `wizard-runner run` repeats what this run did."""
    data = {"saved_at": now().isoformat(timespec="seconds"), "config": config.public_dict(),
            "options": choices._asdict()}
    _store(layout, layout.saved_config, (json.dumps(data, indent=2) + "\n").encode(), 0o600,
           "the body for reruns")


def _positive_seconds(value: object) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and \
            0 < float(value) < math.inf
    except OverflowError:  # an int past what a float holds
        return False


#: What each saved choice may be (a timeout of None: no limit).
_CHOICE_OK: Final[dict[str, Callable[[object], bool]]] = {
    "replace_symlinks": lambda value: isinstance(value, bool),
    "apply_network": lambda value: isinstance(value, bool),
    "user": lambda value: isinstance(value, str) and bool(value),
    "timeout": lambda value: value is None or _positive_seconds(value),
}


def _choices(data: object, path: Path) -> Choices:
    """The saved choices (the defaults for a body saved without them); StateFileError naming
    each one that is not what a run saves."""
    if data is None:
        return Choices()
    wrong = ([str(name) for name, value in data.items()
              if name not in _CHOICE_OK or not _CHOICE_OK[name](value)]
             if isinstance(data, dict) else ["not an object"])
    if wrong:
        raise StateFileError(f"{path} is damaged (\"options\": {', '.join(wrong)}): pass "
                             "--config FILE to run a body, which saves it again")
    return Choices(**data)  # type: ignore[arg-type]  # each checked above


def load_saved_config(layout: Layout) -> Saved:
    """The body saved by the last run, and its choices; a clear error when there is none or
    it is damaged."""
    path = layout.saved_config
    try:
        raw = read_regular(path, limit=2 * MAX_CONFIG_BYTES)[0]
    except FileNotFoundError:
        raise ConfigUnreadableError(
            f"no saved config at {path}: pass --config FILE (the wizard body)"
        ) from None
    except OSError as error:
        raise ConfigUnreadableError(f"{path}: cannot read: {error.strerror}") from error
    if len(raw) > 2 * MAX_CONFIG_BYTES:  # the body and what the run added
        raise StateFileError(f"{path} is damaged (larger than {2 * MAX_CONFIG_BYTES >> 10} "
                             "KiB): pass --config FILE to run a body, which saves it again")
    try:
        data = decode_json(raw, str(path))
    except ConfigError as error:
        raise StateFileError(f"{path} is damaged ({'; '.join(error.problems)}): pass "
                             "--config FILE to run a body, which saves it again") from None
    body = data.get("config") if isinstance(data, dict) else None
    if not isinstance(body, dict):
        raise StateFileError(f"{path} is damaged (no \"config\" object): pass --config FILE "
                             "to run a body, which saves it again")
    options = data.get("options") if isinstance(data, dict) else None
    return Saved(saved_config_from_data(body, str(path)), _choices(options, path))


def read_last_result(layout: Layout) -> RunResult | None:
    """The stored result of the last run, or None when there was none."""
    path = layout.last_run
    try:
        raw = read_regular(path, limit=MAX_RESULT_BYTES)[0]
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateFileError(f"{path}: cannot read the last result: {error.strerror}") from error
    if len(raw) > MAX_RESULT_BYTES:
        raise StateFileError(f"{path} is damaged (larger than {MAX_RESULT_BYTES >> 20} MiB): "
                             "remove it, or run again to replace it")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise StateFileError(f"{path} is damaged (not JSON: {error}): remove it, or run "
                             "again to replace it") from None
    return RunResult.from_dict(data, str(path))


def previous_pass(layout: Layout) -> tuple[str | None, str | None]:
    """What the stored result says of the pass through the scripts (begun by, completed
    by); none when it cannot be read (its scripts then count as not completed)."""
    data = _stored(layout)
    found = scripts_pass(data) if data is not None else {}
    begun, completed = (value if isinstance(value, str) and is_run_id(value) else None
                        for value in (found.get(name) for name in PASS_FIELDS))
    return begun, completed


def completed_pass(layout: Layout) -> str | None:
    """The run that ran the scripts to success, as the stored result says (a later run that
    left them alone carries it on), unless the run the lock's holder line names left the pass
    unknown (`pass_unknown_after`)."""
    if pass_unknown_after(layout, _holder_line(layout)):
        return None
    return previous_pass(layout)[1]


def pass_unknown_after(layout: Layout, line: str | None) -> bool:
    """Whether the run a holder line names, left there as it was killed or ended without its
    result, leaves the pass through the scripts unknown: it was to run scripts (it may have
    run some part-way), or it found a run before it that left the pass unknown (`pass-unknown`
    carries that on however many such runs follow). One that stored its result did not."""
    holder = parse_holder(line)
    if holder is None or _stored_run_id(layout) == holder.run_id:
        return False
    return not holder.no_scripts or holder.pass_unknown


def _stored(layout: Layout) -> dict[str, object] | None:
    """The stored result as JSON, leniently: None when there is none to read."""
    try:
        data = json.loads(read_regular(layout.last_run, limit=MAX_RESULT_BYTES)[0])
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _stored_run_id(layout: Layout) -> object:
    """The run id the stored result names, as written; None when there is none to read."""
    data = _stored(layout)
    return data.get("run_id") if data is not None else None


def write_result(layout: Layout, result: RunResult) -> None:
    """Store the result atomically as last-run.json (0644: confd reads it as www-data)."""
    _store(layout, layout.last_run, result.to_json().encode(), 0o644, "the run's result")


class Resume(NamedTuple):
    """Where --resume starts: the script that failed in the last run, and the run that began
    the pass through the scripts it continues (None: a pass begun --from)."""

    script: str
    begun_by: str | None


def resume_point(layout: Layout) -> Resume:
    """Where --resume starts, from the last run's result."""
    unfinished, last = last_runs(layout)
    if unfinished is not None and not unfinished.running:
        how = ("ended without storing its result" if unfinished.ended
               else "was killed before it stored its result")
        raise UsageError(f"--resume: the last run ({unfinished.run_id}) {how}, so where its "
                         "scripts stopped is not known; `wizard-runner run` runs them all "
                         "again, `--from NAME` from the one you name")
    if last is None:
        raise UsageError(f"--resume: nothing to resume: there is no previous run "
                         f"({layout.last_run} does not exist)")
    failed = last.failed_script
    if failed is not None:
        return Resume(failed.name, last.scripts_begun_by)
    stopped_at = _interrupted_at(last)
    if stopped_at is not None:
        return Resume(stopped_at, last.scripts_begun_by)
    if last.status is RunStatus.SUCCEEDED:
        why = "succeeded"
    elif last.status is RunStatus.INTERRUPTED:
        why = "was interrupted before any of its scripts ran"
    else:
        why = f"failed before a script did ({last.error})"
    raise UsageError(f"--resume: nothing to resume: the last run ({last.run_id}) {why}; "
                     "run `wizard-runner run` to run it all again")


def _interrupted_at(last: RunResult) -> str | None:
    """Where an interrupted run's scripts stopped between two of them: the first it did not
    run after the last that succeeded (None: none had run)."""
    if last.status is not RunStatus.INTERRUPTED:
        return None
    ran = [index for index, script in enumerate(last.scripts)
           if script.status is ScriptStatus.SUCCEEDED]
    rest = last.scripts[ran[-1] + 1:] if ran else ()
    return next((script.name for script in rest if script.status is ScriptStatus.NOT_RUN), None)


#: The highest pid Linux gives (2^22).
_PID_LIMIT: Final = 1 << 22


#: Added to its holder line by a run that ended but could not store its result.
UNSTORED: Final = "unstored"
#: In the holder line of a run that is not to write the system files (handle_system_conf
#: false), written with the line itself: whatever becomes of the run, they are as they were.
NO_SYSTEM: Final = "no-system"
#: In the holder line of a run that is not to run its scripts (run_scripts false), after
#: NO_SYSTEM if both: whatever becomes of the run, it started none. A line without the word
#: (also an older runner's, which never wrote it) says the run was to run them.
NO_SCRIPTS: Final = "no-scripts"
#: In the holder line of a run that found the pass through the scripts unknown (a run before
#: it was killed while it was to run them): if this one is cut short too, it stays unknown.
PASS_UNKNOWN: Final = "pass-unknown"  # noqa: S105 - a word of the line, not a password
#: The words a holder line may carry after the run id, in this order, each once at most.
_HOLDER_WORDS: Final = (NO_SYSTEM, NO_SCRIPTS, PASS_UNKNOWN)


class Unfinished(NamedTuple):
    """A run the lock file names that has not stored its result: still going, killed, or
    ended without storing it (`ended`)."""

    pid: int
    run_id: str
    running: bool
    ended: bool = False
    no_system: bool = False
    no_scripts: bool = False
    pass_unknown: bool = False


class Holder(NamedTuple):
    """A lock holder's line: `PID RUN_ID [no-system] [no-scripts] [pass-unknown]`, and
    `unstored` once it ended without its result."""

    pid: int
    run_id: str
    ended: bool = False
    no_system: bool = False
    no_scripts: bool = False
    pass_unknown: bool = False


def holder_words(*, handle_system_conf: bool, run_scripts: bool,
                 pass_unknown: bool = False) -> tuple[str, ...]:
    """The words after the run id in the holder line of a run told these flags, which found
    the pass through the scripts unknown or not."""
    said = (not handle_system_conf, not run_scripts, pass_unknown)
    return tuple(word for word, on in zip(_HOLDER_WORDS, said, strict=True) if on)


def parse_holder(text: str | None) -> Holder | None:
    """The lock holder a line names; None for anything else."""
    words = (text or "").split()
    ended = words[-1:] == [UNSTORED] and len(words) > 2
    rest = words[2:len(words) - ended]
    if rest != [word for word in _HOLDER_WORDS if word in rest] or len(words) < 2 or \
            not words[0].isdigit() or not is_run_id(words[1]):
        return None
    pid = int(words[0])
    flags = (word in rest for word in _HOLDER_WORDS)
    return Holder(pid, words[1], ended, *flags) if 0 < pid < _PID_LIMIT else None


def last_runs(layout: Layout) -> tuple[Unfinished | None, RunResult | None]:
    """The run the lock's holder line names, unless it stored its result, and the last stored
    result. The holder is read first: a run that ends meanwhile has stored its result before
    it let go of the lock, so that result is then the one read."""
    unfinished = unfinished_run(layout)
    last = read_last_result(layout)
    if unfinished is not None and last is not None and last.run_id == unfinished.run_id:
        unfinished = None  # it stored its result: whatever came after cut nothing short
    return unfinished, last


def unfinished_run(layout: Layout) -> Unfinished | None:
    """The run the lock's holder line names: going on (it holds the lock), or killed before it
    ended. Read it before the last result: a run that ends meanwhile has stored its result
    before it let go of the lock, so that result is then the one read."""
    holder = parse_holder(_holder_line(layout))
    if holder is None:
        return None
    pid, run_id, ended, *flags = holder
    # Where /proc/locks names the lock by other device numbers (btrfs, an overlay), the
    # holder's process still says it runs: if it started before the run did (not a reuse).
    running = not ended and (RunLock.held(layout.lock_file) or _started_by(pid, run_id))
    return Unfinished(pid, run_id, running, ended, *flags)


def _holder_line(layout: Layout) -> str | None:
    """The lock's holder line as it stands; None when there is none."""
    try:
        raw = read_regular(RunLock.holder_of(layout.lock_file), follow=False, limit=128)[0]
    except OSError:  # none yet
        return None
    return raw.decode("ascii", "replace")


def _started_by(pid: int, run_id: str) -> bool:
    """Whether process `pid` lives and started no later than run `run_id` (a process that
    took a killed run's pid starts after it)."""
    fields = proc_stat(pid)
    if fields is None or fields[0] == b"Z":
        return False
    try:
        with open("/proc/stat", "rb") as source:
            boot = next(int(line.split()[1]) for line in source if line.startswith(b"btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    run_start = datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return started <= run_start.timestamp() + 2  # boot time and the id are whole seconds
