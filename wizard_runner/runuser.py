"""The user scripts run as (www-data by default): its ids, groups and home, and what it may run."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import NamedTuple

from wizard_runner.defaults import DEFAULT_USER
from wizard_runner.errors import PrivilegeError, UsageError

__all__ = ["DEFAULT_USER", "RunUser", "may_execute", "may_search", "resolve_user"]


class RunUser(NamedTuple):
    """A resolved account: name, uid, primary gid, every group id, home directory."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @property
    def is_current(self) -> bool:
        """True when the runner already is this user (no switch needed)."""
        return self.uid == os.geteuid()


def resolve_user(name: str, given_by: str = "--user") -> RunUser:
    """Look the account up; an unknown name is a usage error naming it, and what gave it."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        hint = "" if given_by in ("--user", "user") else " (pass --user NAME)"
        raise UsageError(f"{given_by} {name}: no such user on this system{hint}") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return RunUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def require_switch_allowed(user: RunUser) -> None:
    """Only root can run scripts as another user; say what to do instead."""
    if not user.is_current and os.geteuid() != 0:
        current = user_name(os.geteuid())
        raise PrivilegeError(
            f"running scripts as {user.name} needs root: run wizard-runner as root, "
            f"or pass --user {current}"
        )


def may_execute(mode: int, owner: int, group: int, user: RunUser) -> bool:
    """Whether `user` can execute (and, for a script, read) a file with this mode and owner."""
    if user.uid == 0:
        return bool(mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    if owner == user.uid:
        wanted = stat.S_IXUSR | stat.S_IRUSR
    elif group in user.groups:
        wanted = stat.S_IXGRP | stat.S_IRGRP
    else:
        wanted = stat.S_IXOTH | stat.S_IROTH
    return mode & wanted == wanted


def may_search(mode: int, owner: int, group: int, user: RunUser) -> bool:
    """Whether `user` can traverse a directory with this mode and owner."""
    if user.uid == 0:
        return True
    if owner == user.uid:
        return bool(mode & stat.S_IXUSR)
    if group in user.groups:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def group_name(gid: int) -> str:
    """A group's name, or its number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    """A user's name, or its number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
