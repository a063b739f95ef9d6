"""Which entries of wizard.d run, in which order, and why the others do not.

`decide` is pure: from what a directory listing says about each entry to an ordered list of
decisions. `scan` is the shell side that reads the directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Final, NamedTuple

from wizard_runner.errors import EXIT_NO_INPUT, PrivilegeError, WizardRunnerError
from wizard_runner.escape import printable
from wizard_runner.layout import is_inside
from wizard_runner.runuser import RunUser, group_name, may_execute, may_search, user_name

_LEFTOVER: Final = re.compile(
    r".*(~|\.dpkg-(old|dist|new|tmp)|\.ucf-(old|dist|new)|\.swp)\Z", re.DOTALL
)


class ScriptsDirMissingError(WizardRunnerError):
    """wizard.d does not exist while run_scripts is true."""

    exit_code = EXIT_NO_INPUT


class UnsafePermissionsError(PrivilegeError):
    """wizard.d or a script could be changed by someone other than root or the run user."""


class Verdict(StrEnum):
    """What happens to one entry."""

    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"


class Kind(StrEnum):
    """What an entry is, after following a symlink."""

    FILE = "file"
    DIRECTORY = "directory"
    OTHER = "other"
    DANGLING = "dangling"
    OUTSIDE = "outside"  # a symlink whose target resolves outside a sandbox root: not followed


class Entry(NamedTuple):
    """One directory entry as the shell found it (a symlink is described by its target)."""

    name: str
    kind: Kind
    mode: int = 0
    uid: int = 0
    gid: int = 0
    symlink: bool = False
    link: str | None = None  # a symlink's target, as written


class Decision(NamedTuple):
    """One entry's fate and the reason, in run order."""

    name: str
    verdict: Verdict
    reason: str | None = None
    entry: Entry | None = None


def sort_key(name: str) -> bytes:
    """ASCII (byte) order, whatever the locale: 0-9 before A-Z before a-z."""
    return name.encode("utf-8", "surrogateescape")


_EXEC_BITS: Final = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH

#: Skip rules in the order they are tried; the first that matches gives the reason.
_SKIP_RULES: Final = (
    (lambda e: e.name.startswith("."), "hidden name"),
    (lambda e: bool(_LEFTOVER.match(e.name)), "package or editor leftover"),
    (lambda e: e.kind is Kind.DIRECTORY, "a directory"),
    (lambda e: e.kind is Kind.DANGLING, "a symlink to nothing"),
    (lambda e: e.kind is Kind.OTHER, "not a regular file"),
    (lambda e: e.kind is Kind.FILE and not e.mode & _EXEC_BITS,
     "not executable (no execute bit)"),
)


def _skip_reason(entry: Entry) -> str | None:
    return next((reason for rule, reason in _SKIP_RULES if rule(entry)), None)


def decide_one(entry: Entry, user: RunUser) -> Decision:
    """Decide the fate of one entry for `user`."""
    reason = _skip_reason(entry)
    if reason is not None:
        return Decision(entry.name, Verdict.SKIP, reason, entry)
    if entry.kind is Kind.OUTSIDE:
        # A fail, not a skip: run-parts would run it on the real system, so the sandbox run
        # must not pass quietly without it; and it must not run the host's program either.
        return Decision(
            entry.name,
            Verdict.FAIL,
            f"a symlink out of the root (to {entry.link}); under --root only scripts inside "
            "the root run",
            entry,
        )
    if not may_execute(entry.mode, entry.uid, entry.gid, user):
        return Decision(
            entry.name,
            Verdict.FAIL,
            f"has an execute bit, but {user.name} cannot execute it "
            f"(mode {stat.S_IMODE(entry.mode):04o}, owner {user_name(entry.uid)})",
            entry,
        )
    return Decision(entry.name, Verdict.RUN, None, entry)


def decide(entries: Sequence[Entry], user: RunUser) -> list[Decision]:
    """Every entry's decision, in ASCII order of the names."""
    ordered = sorted(entries, key=lambda entry: sort_key(entry.name))
    return [decide_one(entry, user) for entry in ordered]


def _writable_by_strangers(entry: Entry, user: RunUser) -> str | None:
    """Who, besides root and the run user, could change this entry."""
    if entry.mode & stat.S_IWOTH:
        return "others"
    if entry.mode & stat.S_IWGRP and entry.gid not in {0, user.gid}:
        return f"group {group_name(entry.gid)}"
    return None


def _unsafe_parent(parent: Entry, user: RunUser) -> list[str]:
    mode = stat.S_IMODE(parent.mode)
    problems = []
    if parent.uid not in {0, user.uid}:
        problems.append(f"{parent.name} is owned by {user_name(parent.uid)} (mode {mode:04o})")
    strangers = _writable_by_strangers(parent, user)
    if strangers is not None and not parent.mode & stat.S_ISVTX:
        problems.append(f"{parent.name} is writable by {strangers} (mode {mode:04o})")
    return problems


def unsafe_problems(
    directory: Entry, decisions: Sequence[Decision], user: RunUser,
    parents: Sequence[Entry] = (),
) -> list[str]:
    """Why the step must not run at all: what others could change or the user cannot reach."""
    problems = [problem for parent in parents for problem in _unsafe_parent(parent, user)]
    trusted = {0, user.uid}
    mode = stat.S_IMODE(directory.mode)
    strangers = _writable_by_strangers(directory, user)
    if strangers is not None:
        problems.append(f"wizard.d is writable by {strangers} (mode {mode:04o})")
    if directory.uid not in trusted:
        problems.append(f"wizard.d is owned by {user_name(directory.uid)} (mode {mode:04o}), "
                        f"not root or {user.name}")
    if not may_search(directory.mode, directory.uid, directory.gid, user):
        problems.append(f"{user.name} cannot enter wizard.d (mode {mode:04o})")
    for decision in decisions:
        entry = decision.entry
        # An entry out of the root is never run nor looked at (its mode is not read).
        if decision.verdict is Verdict.SKIP or entry is None or entry.kind is Kind.OUTSIDE:
            continue
        strangers = _writable_by_strangers(entry, user)
        if strangers is not None:
            problems.append(
                f"{printable(decision.name)} is writable by {strangers} "
                f"(mode {stat.S_IMODE(entry.mode):04o})"
            )
        if entry.uid not in trusted:
            problems.append(
                f"{printable(decision.name)} is owned by {user_name(entry.uid)} "
                f"(mode {stat.S_IMODE(entry.mode):04o}), not root or {user.name}"
            )
    return problems


def _entry(directory: Path, name: str, top: str | None = None) -> Entry:
    """One entry of wizard.d; with `top` (resolved), a symlink leading out of it is OUTSIDE."""
    path = directory / name
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return Entry(name, Kind.DANGLING)
    symlink = stat.S_ISLNK(link.st_mode)
    if symlink and top is not None:
        target = os.path.realpath(path)
        if not is_inside(target, top):
            return Entry(name, Kind.OUTSIDE, symlink=True, link=os.readlink(path))
    try:
        info = os.stat(path) if symlink else link
    except OSError:
        return Entry(name, Kind.DANGLING, symlink=True)
    if stat.S_ISDIR(info.st_mode):
        kind = Kind.DIRECTORY
    elif stat.S_ISREG(info.st_mode):
        kind = Kind.FILE
    else:
        kind = Kind.OTHER
    return Entry(name, kind, info.st_mode, info.st_uid, info.st_gid, symlink)


class Scan(NamedTuple):
    """wizard.d as read: its own mode and owner, and every decision in run order."""

    directory: Path
    itself: Entry
    decisions: tuple[Decision, ...]
    parents: tuple[Entry, ...] = ()


def _parents(directory: Path, top: Path | None) -> tuple[Entry, ...]:
    """The directories above wizard.d, up to `top` (the run's root) included."""
    if top is None:
        return ()
    found = []
    for parent in directory.parents:
        info = os.stat(parent)
        found.append(Entry(str(parent), Kind.DIRECTORY, info.st_mode, info.st_uid, info.st_gid))
        if parent in {top, parent.parent}:
            break
    return tuple(found)


#: Symlinks followed on the way to one script at most (the kernel's own limit).
_MAX_HOPS: Final = 40


def _above(path: str, top: str) -> list[str]:
    """The directories above `path`, up to `top` if it is one of them, else to /."""
    above = [str(parent) for parent in Path(path).parents]
    return above[:above.index(top) + 1 if top in above else len(above)]


def _route(path: Path, top: str) -> list[str]:
    """What whoever owns or can write one could change what `path` runs through: each symlink
    met on the way to its target, and every directory above one of them or above the target,
    up to `top` (where the run's root ends; wizard.d's own parents are checked apart)."""
    held: list[str] = []
    pending, current, hops = list(path.parts), "/", 0
    while pending and hops <= _MAX_HOPS:
        part = pending.pop(0)
        if part.startswith("/"):  # `/`, or `//` as a link may begin
            current = "/"
        elif part == "..":
            current = os.path.dirname(current)
        elif part != ".":
            candidate = os.path.join(current, part)
            try:
                target = os.readlink(candidate)
            except OSError:  # not a link (or gone: then it is not run either)
                current = candidate
                continue
            hops += 1
            held += [candidate, *_above(candidate, top)]
            pending[:0] = Path(target).parts
    return held + _above(current, top)


def _routes(directory: Path, decisions: Sequence[Decision], top: str,
            seen: set[str]) -> list[Entry]:
    """What is on the way to each symlinked script that is not skipped (directories and
    links), but those `seen`, each named with the script it leads to."""
    found: dict[str, Entry] = {}
    for decision in decisions:
        entry = decision.entry
        if decision.verdict is Verdict.SKIP or entry is None or not entry.symlink or \
                entry.kind is Kind.OUTSIDE:
            continue
        for route in _route(directory / decision.name, top):
            if route in seen or route in found:
                continue
            with contextlib.suppress(OSError):
                info = os.lstat(route)
                # A link's own mode means nothing: only its owner, who may replace it, counts.
                mode = stat.S_IFLNK if stat.S_ISLNK(info.st_mode) else info.st_mode
                found[route] = Entry(
                    f"{route} (on the way to {printable(decision.name)})", Kind.DIRECTORY,
                    mode, info.st_uid, info.st_gid)
    return list(found.values())


def scan(directory: Path, user: RunUser, top: Path | None = None) -> Scan:
    """Read wizard.d and decide every entry; a missing directory is an error naming it.

    With `top`, the directories from wizard.d's parent up to `top` are read too, for
    `check_safe`: whoever can replace one of them can replace the scripts. `top` is the run's
    root: a symlinked script whose target resolves outside it is not followed (Kind.OUTSIDE).
    """
    try:
        info = os.stat(directory)
        names = os.listdir(directory)
    except FileNotFoundError:
        raise ScriptsDirMissingError(
            f"{directory}: the scripts directory does not exist, so no script can run"
        ) from None
    except NotADirectoryError:
        raise ScriptsDirMissingError(f"{directory}: not a directory") from None
    except PermissionError as error:
        raise PrivilegeError(f"{directory}: cannot read: {error.strerror}") from error
    resolved_top = os.path.realpath(top) if top is not None else None
    decisions = decide([_entry(directory, name, resolved_top) for name in names], user)
    itself = Entry(directory.name, Kind.DIRECTORY, info.st_mode, info.st_uid, info.st_gid)
    parents = _parents(directory, top)
    if resolved_top is not None:  # and the way to each symlinked script
        seen = {str(directory), *(parent.name for parent in parents)}
        parents += tuple(_routes(directory, decisions, resolved_top, seen))
    return Scan(directory, itself, tuple(decisions), parents)


def check_safe(found: Scan, user: RunUser) -> None:
    """Refuse the whole step (exit 77) when permissions make it unsafe, naming each problem."""
    problems = unsafe_problems(found.itself, found.decisions, user, found.parents)
    if problems:
        raise UnsafePermissionsError(
            f"refusing to run the scripts of {found.directory}: " + "; ".join(problems)
        )
