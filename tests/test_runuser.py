"""The run user: looking it up, what it may execute or enter, and who may switch to it."""

from __future__ import annotations

import pwd
from collections.abc import Callable

import pytest

from wizard_runner.errors import EXIT_PRIVILEGES, EXIT_USAGE, PrivilegeError, UsageError
from wizard_runner.runuser import (
    RunUser,
    group_name,
    may_execute,
    may_search,
    require_switch_allowed,
    resolve_user,
    user_name,
)

ROOT = RunUser("root", 0, 0, (0,), "/root")
WWW = RunUser("www-data", 33, 33, (33, 44), "/var/www")
NOBODY = RunUser("nobody", 65534, 65534, (65534,), "/nonexistent")
OTHER = 4242  # an id no account or group uses on a test system


def test_resolve_root() -> None:
    """resolve_user fills in uid, primary gid, groups (primary included) and home."""
    user = resolve_user("root")
    assert (user.name, user.uid, user.gid, user.home) == ("root", 0, 0, "/root")
    assert 0 in user.groups
    assert list(user.groups) == sorted(set(user.groups))


def test_resolve_www_data_matches_the_account_database() -> None:
    """resolve_user gives the ids and home of the account database for www-data."""
    try:
        account = pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("needs the www-data account (Debian has it)")
    user = resolve_user("www-data")
    assert (user.uid, user.gid, user.home) == (account.pw_uid, account.pw_gid, account.pw_dir)
    assert account.pw_gid in user.groups


def test_unknown_user_is_a_usage_error_naming_it() -> None:
    """An unknown --user is a usage error (exit 2) whose message names the account."""
    with pytest.raises(UsageError) as caught:
        resolve_user("no-such-wizard-user")
    assert caught.value.exit_code == EXIT_USAGE == 2
    assert str(caught.value) == "--user no-such-wizard-user: no such user on this system"


EXECUTE = [
    # the owner class decides for the owner, even when group or others have more
    pytest.param(0o500, 33, 0, WWW, True, id="owner-r-x"),
    pytest.param(0o100, 33, 0, WWW, False, id="owner-x-without-read"),
    pytest.param(0o400, 33, 0, WWW, False, id="owner-read-only"),
    pytest.param(0o077, 33, 0, WWW, False, id="owner-class-wins-over-others"),
    # then the group class, for the primary and every supplementary group
    pytest.param(0o050, 0, 33, WWW, True, id="primary-group"),
    pytest.param(0o050, 0, 44, WWW, True, id="supplementary-group"),
    pytest.param(0o705, 0, 33, WWW, False, id="group-class-wins-over-others"),
    pytest.param(0o010, 0, 33, WWW, False, id="group-x-without-read"),
    # else the other class
    pytest.param(0o005, 0, 0, WWW, True, id="others-r-x"),
    pytest.param(0o755, 0, 0, WWW, True, id="usual-script"),
    pytest.param(0o750, 0, 0, WWW, False, id="not-in-group"),
    pytest.param(0o700, 0, 0, WWW, False, id="root-private"),
    pytest.param(0o711, 0, 0, WWW, False, id="others-x-without-read"),
    pytest.param(0o755, 33, 33, NOBODY, True, id="other-user-others-bits"),
    # root needs any execute bit, and nothing else
    pytest.param(0o100, OTHER, OTHER, ROOT, True, id="root-owner-x"),
    pytest.param(0o010, OTHER, OTHER, ROOT, True, id="root-group-x"),
    pytest.param(0o001, OTHER, OTHER, ROOT, True, id="root-other-x"),
    pytest.param(0o666, 0, 0, ROOT, False, id="root-no-x"),
]


@pytest.mark.parametrize(("mode", "owner", "group", "user", "allowed"), EXECUTE)
def test_may_execute_follows_the_permission_classes(
    mode: int, owner: int, group: int, user: RunUser, allowed: bool
) -> None:
    """Execution (and reading, for a script) is judged by the one class the user falls in."""
    assert may_execute(0o100000 | mode, owner, group, user) is allowed


SEARCH = [
    pytest.param(0o100, 33, 0, WWW, True, id="owner-x"),
    pytest.param(0o600, 33, 0, WWW, False, id="owner-no-x"),
    pytest.param(0o011, 33, 0, WWW, False, id="owner-class-wins"),
    pytest.param(0o010, 0, 44, WWW, True, id="supplementary-group-x"),
    pytest.param(0o701, 0, 33, WWW, False, id="group-class-wins"),
    pytest.param(0o755, 0, 0, WWW, True, id="usual-directory"),
    pytest.param(0o750, 0, 0, WWW, False, id="not-in-group"),
    pytest.param(0o700, 0, 0, WWW, False, id="root-private"),
    pytest.param(0o001, 0, 0, WWW, True, id="others-x-only"),
    pytest.param(0o000, OTHER, OTHER, ROOT, True, id="root-enters-anything"),
]


@pytest.mark.parametrize(("mode", "owner", "group", "user", "allowed"), SEARCH)
def test_may_search_follows_the_permission_classes(
    mode: int, owner: int, group: int, user: RunUser, allowed: bool
) -> None:
    """Entering a directory needs the execute bit of the user's class; root always may."""
    assert may_search(0o040000 | mode, owner, group, user) is allowed


def test_root_may_run_scripts_as_anyone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root may switch to another user."""
    monkeypatch.setattr("wizard_runner.runuser.os.geteuid", lambda: 0)
    require_switch_allowed(WWW)
    require_switch_allowed(ROOT)


def test_non_root_may_run_scripts_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root runner asking for its own account needs no switch and is allowed."""
    monkeypatch.setattr("wizard_runner.runuser.os.geteuid", lambda: 33)
    assert WWW.is_current
    require_switch_allowed(WWW)


def test_non_root_cannot_switch_and_is_told_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root runner asking for another user gets a privilege error (exit 77) that says to
    run as root or pass --user with the current account."""
    monkeypatch.setattr("wizard_runner.runuser.os.geteuid", lambda: 65534)
    assert not WWW.is_current
    with pytest.raises(PrivilegeError) as caught:
        require_switch_allowed(WWW)
    assert caught.value.exit_code == EXIT_PRIVILEGES == 77
    message = str(caught.value)
    assert "running scripts as www-data needs root" in message
    assert "run wizard-runner as root" in message
    assert message.endswith("or pass --user nobody")


def test_non_root_cannot_switch_to_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even root is "another user" for a non-root runner."""
    monkeypatch.setattr("wizard_runner.runuser.os.geteuid", lambda: 33)
    with pytest.raises(PrivilegeError, match="pass --user www-data"):
        require_switch_allowed(ROOT)


NAMES = [
    pytest.param(user_name, 0, "root", id="user-root"),
    pytest.param(user_name, OTHER, str(OTHER), id="user-unknown"),
    pytest.param(group_name, 0, "root", id="group-root"),
    pytest.param(group_name, OTHER, str(OTHER), id="group-unknown"),
]


@pytest.mark.parametrize(("lookup", "number", "shown"), NAMES)
def test_ids_are_shown_by_name_or_number(lookup: Callable[[int], str], number: int, shown: str) -> None:
    """An id is shown by its account or group name, or by its number when it has none."""
    assert lookup(number) == shown


def test_unnamed_current_uid_is_shown_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner whose uid has no passwd entry is told to pass --user <uid>, not a KeyError."""
    monkeypatch.setattr("wizard_runner.runuser.os.geteuid", lambda: 4242)
    with pytest.raises(PrivilegeError, match="--user 4242"):
        require_switch_allowed(resolve_user("www-data"))
