"""Which wizard.d entries run, in which order, which are skipped and when the step is refused."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import needs_root
from wizard_runner.errors import EXIT_NO_INPUT, EXIT_PRIVILEGES
from wizard_runner.runuser import RunUser, resolve_user
from wizard_runner.scripts.discovery import (
    Decision,
    Entry,
    Kind,
    ScriptsDirMissingError,
    UnsafePermissionsError,
    Verdict,
    check_safe,
    decide,
    scan,
    unsafe_problems,
)

ROOT = RunUser("root", 0, 0, (0,), "/root")
WWW = RunUser("www-data", 33, 33, (33,), "/var/www")
OTHER_UID = 4242  # no account on a test system: messages show the number
RUN_PARTS = Path("/bin/run-parts")


def entry(name: str, kind: Kind = Kind.FILE, mode: int = 0o755, uid: int = 0, gid: int = 0,
          *, symlink: bool = False) -> Entry:
    """An entry as scan would describe it (file type bits included)."""
    kind_bits = stat.S_IFDIR if kind is Kind.DIRECTORY else stat.S_IFREG
    return Entry(name, kind, kind_bits | mode, uid, gid, symlink)


def only(entries: list[Entry], user: RunUser = WWW) -> Decision:
    """The single decision taken for `entries`."""
    [decision] = decide(entries, user)
    return decision


def current_user() -> RunUser:
    """The account running the tests, as the runner would resolve it."""
    return resolve_user(pwd.getpwuid(os.geteuid()).pw_name)


def executable(path: Path, mode: int = 0o755) -> Path:
    """Create a small shell script at `path` with `mode`."""
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def wizard_dir(tmp_path: Path, mode: int = 0o755) -> Path:
    """An empty wizard.d with `mode`."""
    directory = tmp_path / "wizard.d"
    directory.mkdir()
    directory.chmod(mode)
    return directory


SKIPS = [
    pytest.param(entry(".hidden"), "hidden name", id="hidden"),
    pytest.param(entry(".20-hidden~"), "hidden name", id="hidden-before-leftover"),
    pytest.param(entry("20-setup~"), "package or editor leftover", id="backup-tilde"),
    pytest.param(entry("20-setup.dpkg-old"), "package or editor leftover", id="dpkg-old"),
    pytest.param(entry("20-setup.dpkg-dist"), "package or editor leftover", id="dpkg-dist"),
    pytest.param(entry("20-setup.dpkg-new"), "package or editor leftover", id="dpkg-new"),
    pytest.param(entry("20-setup.dpkg-tmp"), "package or editor leftover", id="dpkg-tmp"),
    pytest.param(entry("20-setup.ucf-old"), "package or editor leftover", id="ucf-old"),
    pytest.param(entry("20-setup.ucf-dist"), "package or editor leftover", id="ucf-dist"),
    pytest.param(entry("20-setup.ucf-new"), "package or editor leftover", id="ucf-new"),
    pytest.param(entry("20-setup.swp"), "package or editor leftover", id="vim-swap"),
    pytest.param(entry("20-conf.d", Kind.DIRECTORY), "a directory", id="directory"),
    pytest.param(entry("30-gone", Kind.DANGLING, 0, symlink=True), "a symlink to nothing",
                 id="dangling-symlink"),
    pytest.param(entry("40-fifo", Kind.OTHER, stat.S_IFIFO | 0o755), "not a regular file",
                 id="fifo"),
    pytest.param(entry("50-notes", mode=0o644), "not executable (no execute bit)",
                 id="no-execute-bit"),
    pytest.param(entry("50-private", mode=0o600, uid=33), "not executable (no execute bit)",
                 id="no-execute-bit-own-file"),
]


@pytest.mark.parametrize(("item", "reason"), SKIPS)
def test_skipped_entries_give_their_reason(item: Entry, reason: str) -> None:
    """Each skip rule skips its entry with its own reason instead of failing the run."""
    decision = only([item])
    assert (decision.verdict, decision.reason) == (Verdict.SKIP, reason)
    assert decision.entry == item


RUNS = [
    pytest.param(entry("20-setup.sh"), id="dotted-name"),
    pytest.param(entry("10-base"), id="plain-name"),
    pytest.param(entry("10-link", symlink=True), id="symlink-to-file"),
    pytest.param(entry("10-swp.sh"), id="leftover-word-not-suffix"),
    pytest.param(entry("10-mine", mode=0o700, uid=33, gid=33), id="owned-by-user"),
    pytest.param(entry("10-group", mode=0o750, gid=33), id="group-of-user"),
    pytest.param(entry("10-other-only", mode=0o705), id="other-bits"),
]


@pytest.mark.parametrize("item", RUNS)
def test_executable_regular_files_run_whatever_their_name(item: Entry) -> None:
    """A regular file (or symlink to one) the user may execute runs, even with a dot in its name."""
    decision = only([item])
    assert (decision.verdict, decision.reason) == (Verdict.RUN, None)


def test_root_owned_private_script_fails_for_www_data() -> None:
    """An execute bit the run user cannot use is a failure whose message says exactly that."""
    decision = only([entry("30-secret", mode=0o700)])
    assert decision.verdict is Verdict.FAIL
    assert decision.reason == (
        "has an execute bit, but www-data cannot execute it (mode 0700, owner root)"
    )


def test_execute_bit_without_read_fails_for_a_script() -> None:
    """A script www-data may execute but not read (0711) cannot run, so it fails."""
    decision = only([entry("30-noread", mode=0o711)])
    assert decision.verdict is Verdict.FAIL
    assert "mode 0711" in (decision.reason or "")


def test_fail_message_names_an_unknown_owner_by_number() -> None:
    """The owner of a failing script without an account is shown by its uid."""
    decision = only([entry("30-foreign", mode=0o700, uid=OTHER_UID)])
    assert decision.verdict is Verdict.FAIL
    assert decision.reason is not None
    assert decision.reason.endswith(f"(mode 0700, owner {OTHER_UID})")


def test_root_runs_any_file_with_an_execute_bit() -> None:
    """Run as root, a file with only a group execute bit and another owner still runs."""
    decision = only([entry("30-group-x", mode=0o010, uid=OTHER_UID, gid=OTHER_UID)], ROOT)
    assert decision.verdict is Verdict.RUN


ORDERS = [
    pytest.param(["b", "a", "C", "1"], ["1", "C", "a", "b"], id="digits-upper-lower"),
    pytest.param(["a10", "A10", "Z", "_x", "-y"], ["-y", "A10", "Z", "_x", "a10"],
                 id="mixed-case-not-folded"),
    pytest.param(["9", "100", "10"], ["10", "100", "9"], id="numbers-not-numeric"),
    pytest.param(["é", "z", "Z"], ["Z", "z", "é"], id="non-ascii-last"),
]


@pytest.mark.parametrize(("names", "expected"), ORDERS)
def test_order_is_ascii_byte_order(names: list[str], expected: list[str]) -> None:
    """Decisions come in byte order of the names: not numeric, not case-folded."""
    assert [d.name for d in decide([entry(n) for n in names], WWW)] == expected


def test_skipped_entries_keep_their_place_in_the_order() -> None:
    """Skipped and failed entries appear in the listing at their sorted place."""
    decisions = decide([entry("30-b"), entry("20-dir", Kind.DIRECTORY),
                        entry("10-a", mode=0o700)], WWW)
    assert [(d.name, d.verdict) for d in decisions] == [
        ("10-a", Verdict.FAIL), ("20-dir", Verdict.SKIP), ("30-b", Verdict.RUN)
    ]


_RAW_NAMES = st.lists(
    st.binary(min_size=1, max_size=12).filter(
        lambda raw: b"/" not in raw and b"\0" not in raw and raw not in (b".", b"..")
    ),
    unique=True,
    max_size=15,
)


@given(raw_names=_RAW_NAMES, data=st.data())
def test_order_is_byte_order_for_any_names(raw_names: list[bytes], data: st.DataObject) -> None:
    """For any file names (even invalid UTF-8), the order is their bytes' order, whatever the
    order of the listing."""
    names = [os.fsdecode(raw) for raw in raw_names]
    shuffled = data.draw(st.permutations(names))
    first = [os.fsencode(d.name) for d in decide([entry(n) for n in names], WWW)]
    second = [os.fsencode(d.name) for d in decide([entry(n) for n in shuffled], WWW)]
    assert first == second == sorted(raw_names)


@pytest.mark.processes
@pytest.mark.skipif(not RUN_PARTS.exists(), reason="needs /bin/run-parts (apt-get install debianutils)")
def test_order_matches_run_parts(tmp_path: Path) -> None:
    """On the names run-parts accepts, discovery runs scripts in exactly run-parts' order."""
    directory = wizard_dir(tmp_path)
    names = ["A10", "a10", "Z", "z", "_x", "-y", "10", "9", "100", "99-last", "00_first",
             "B-2", "b_2", "b-2", "B_2", "a", "A", "zz", "ZZ", "0", "Setup", "setup", "x-1-Y"]
    for name in names:
        executable(directory / name)
    listed = subprocess.run(
        [str(RUN_PARTS), "--test", str(directory)],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    assert sorted(Path(line).name for line in listed) == sorted(names)  # run-parts took them all
    found = scan(directory, current_user())
    assert [d.name for d in found.decisions if d.verdict is Verdict.RUN] == [
        Path(line).name for line in listed
    ]


def test_scan_reads_a_real_directory(tmp_path: Path) -> None:
    """Scanning a real wizard.d decides each kind of entry it holds, in byte order."""
    directory = wizard_dir(tmp_path)
    target = executable(tmp_path / "elsewhere.sh")
    executable(directory / "20-setup.sh")
    executable(directory / "10-base")
    (directory / "15-link").symlink_to(target)
    (directory / "16-dangling").symlink_to(tmp_path / "missing")
    (directory / "17-dirlink").symlink_to(tmp_path)
    (directory / "30-conf.d").mkdir()
    (directory / "40-notes").write_text("not a script\n")
    executable(directory / ".50-hidden")
    executable(directory / "60-old~")
    os.mkfifo(directory / "70-fifo")
    found = scan(directory, current_user())
    assert [(d.name, d.verdict, d.reason) for d in found.decisions] == [
        (".50-hidden", Verdict.SKIP, "hidden name"),
        ("10-base", Verdict.RUN, None),
        ("15-link", Verdict.RUN, None),
        ("16-dangling", Verdict.SKIP, "a symlink to nothing"),
        ("17-dirlink", Verdict.SKIP, "a directory"),
        ("20-setup.sh", Verdict.RUN, None),
        ("30-conf.d", Verdict.SKIP, "a directory"),
        ("40-notes", Verdict.SKIP, "not executable (no execute bit)"),
        ("60-old~", Verdict.SKIP, "package or editor leftover"),
        ("70-fifo", Verdict.SKIP, "not a regular file"),
    ]
    link = found.decisions[2].entry
    assert link is not None
    assert link.symlink
    assert link.kind is Kind.FILE
    assert stat.S_IMODE(link.mode) == 0o755
    assert found.itself.kind is Kind.DIRECTORY
    assert stat.S_IMODE(found.itself.mode) == 0o755


def test_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    """A missing wizard.d raises ScriptsDirMissingError (exit 66) naming the path."""
    missing = tmp_path / "etc/xivo/wizard.d"
    with pytest.raises(ScriptsDirMissingError) as caught:
        scan(missing, WWW)
    assert caught.value.exit_code == EXIT_NO_INPUT == 66
    assert str(missing) in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_a_file_in_place_of_the_directory_is_missing(tmp_path: Path) -> None:
    """A regular file where wizard.d should be is reported as not a directory (exit 66)."""
    path = tmp_path / "wizard.d"
    path.write_text("")
    with pytest.raises(ScriptsDirMissingError, match="not a directory") as caught:
        scan(path, WWW)
    assert str(path) in str(caught.value)


@needs_root
def test_root_owned_private_script_fails_on_disk(tmp_path: Path) -> None:
    """On a real disk, a root-owned 0700 script fails for www-data with that reason."""
    directory = wizard_dir(tmp_path)
    executable(directory / "10-private", 0o700)
    [decision] = scan(directory, WWW).decisions
    assert decision.verdict is Verdict.FAIL
    assert decision.reason == (
        "has an execute bit, but www-data cannot execute it (mode 0700, owner root)"
    )


@needs_root
def test_script_owned_by_run_user_runs_and_is_safe(tmp_path: Path) -> None:
    """A 0700 script owned by www-data runs as www-data and does not make the step unsafe."""
    directory = wizard_dir(tmp_path)
    os.chown(executable(directory / "10-mine", 0o700), 33, 33)
    found = scan(directory, WWW)
    assert [d.verdict for d in found.decisions] == [Verdict.RUN]
    check_safe(found, WWW)


@needs_root
def test_safe_directory_passes(tmp_path: Path) -> None:
    """Root-owned 0755 wizard.d with root-owned scripts, skipped and failing ones, is safe."""
    directory = wizard_dir(tmp_path)
    executable(directory / "10-ok")
    executable(directory / "20-private", 0o700)
    (directory / "30-notes").write_text("")
    (directory / "30-notes").chmod(0o666)  # writable by others, but never run
    found = scan(directory, WWW)
    assert unsafe_problems(found.itself, found.decisions, WWW) == []
    check_safe(found, WWW)


def _dir_world_writable(directory: Path) -> None:
    directory.chmod(0o777)


def _dir_foreign_owner(directory: Path) -> None:
    os.chown(directory, OTHER_UID, 0)


def _dir_not_enterable(directory: Path) -> None:
    directory.chmod(0o700)


def _script_world_writable(directory: Path) -> None:
    executable(directory / "10-open", 0o757)


def _script_foreign_owner(directory: Path) -> None:
    os.chown(executable(directory / "10-foreign"), OTHER_UID, OTHER_UID)


def _link_to_world_writable(directory: Path) -> None:
    target = executable(directory.parent / "target", 0o777)
    (directory / "10-link").symlink_to(target)


UNSAFE = [
    pytest.param(_dir_world_writable, "wizard.d is writable by others (mode 0777)",
                 id="dir-writable-by-others"),
    pytest.param(_dir_foreign_owner, f"wizard.d is owned by {OTHER_UID} (mode 0755), not root or www-data",
                 id="dir-foreign-owner"),
    pytest.param(_dir_not_enterable, "www-data cannot enter wizard.d (mode 0700)",
                 id="dir-not-enterable"),
    pytest.param(_script_world_writable, "10-open is writable by others (mode 0757)",
                 id="script-writable-by-others"),
    pytest.param(_script_foreign_owner, f"10-foreign is owned by {OTHER_UID} (mode 0755), not root or www-data",
                 id="script-foreign-owner"),
    pytest.param(_link_to_world_writable, "10-link is writable by others (mode 0777)",
                 id="symlink-target-writable-by-others"),
]


@needs_root
@pytest.mark.parametrize(("spoil", "problem"), UNSAFE)
def test_unsafe_permissions_refuse_the_step(
    tmp_path: Path, spoil: Callable[[Path], None], problem: str
) -> None:
    """Each unsafe permission refuses the whole step (exit 77) with a message naming it."""
    directory = wizard_dir(tmp_path)
    executable(directory / "00-fine")
    spoil(directory)
    found = scan(directory, WWW)
    with pytest.raises(UnsafePermissionsError) as caught:
        check_safe(found, WWW)
    assert caught.value.exit_code == EXIT_PRIVILEGES == 77
    message = str(caught.value)
    assert message.startswith(f"refusing to run the scripts of {directory}: ")
    assert problem in message
    assert "00-fine" not in message


def test_every_unsafe_problem_is_listed() -> None:
    """All problems are reported together, not only the first one found."""
    directory = entry("wizard.d", Kind.DIRECTORY, 0o777, uid=OTHER_UID)
    decisions = decide([entry("10-a", mode=0o777), entry("20-b", uid=OTHER_UID)], WWW)
    assert unsafe_problems(directory, decisions, WWW) == [
        "wizard.d is writable by others (mode 0777)",
        f"wizard.d is owned by {OTHER_UID} (mode 0777), not root or www-data",
        "10-a is writable by others (mode 0777)",
        f"20-b is owned by {OTHER_UID} (mode 0755), not root or www-data",
    ]


def test_unsafe_check_covers_failing_scripts_too() -> None:
    """A script that fails (cannot be executed) but is writable by others still refuses the step."""
    directory = entry("wizard.d", Kind.DIRECTORY, 0o755)
    decisions = decide([entry("10-x", mode=0o703)], WWW)
    assert [d.verdict for d in decisions] == [Verdict.FAIL]
    assert unsafe_problems(directory, decisions, WWW) == ["10-x is writable by others (mode 0703)"]


def test_root_may_enter_any_directory() -> None:
    """Run as root, a 0700 wizard.d owned by root is not a problem."""
    directory = entry("wizard.d", Kind.DIRECTORY, 0o700)
    assert unsafe_problems(directory, [], ROOT) == []


@pytest.mark.parametrize(
    ("item", "verdict", "reason"),
    [
        pytest.param(Entry("10-host", Kind.OUTSIDE, symlink=True, link="/usr/bin/id"), Verdict.FAIL,
                     "a symlink out of the root (to /usr/bin/id); under --root only scripts "
                     "inside the root run", id="fails"),
        pytest.param(Entry(".10-host", Kind.OUTSIDE, symlink=True, link="/usr/bin/id"),
                     Verdict.SKIP, "hidden name", id="hidden-is-skipped"),
        pytest.param(Entry("10-host.dpkg-old", Kind.OUTSIDE, symlink=True, link="/usr/bin/id"),
                     Verdict.SKIP, "package or editor leftover", id="leftover-is-skipped"),
    ],
)
def test_symlink_out_of_the_root_fails(item: Entry, verdict: Verdict, reason: str) -> None:
    """A script linked out of a sandbox root fails at its place (unless its name is skipped)."""
    decision = only([item])
    assert (decision.verdict, decision.reason) == (verdict, reason)


def test_scan_does_not_follow_a_script_out_of_the_root(tmp_path: Path) -> None:
    """With the root as `top`, a link out of it is not run nor checked; one inside still runs."""
    root = tmp_path / "root"
    directory = root / "etc/xivo/wizard.d"
    directory.mkdir(parents=True)
    outside = executable(tmp_path / "host-tool", mode=0o777)  # writable by others: not looked at
    inside = executable(root / "usr-tool")
    (directory / "10-outside").symlink_to(outside)
    (directory / "20-inside").symlink_to("../../../usr-tool")
    (directory / "30-relative-out").symlink_to("../../../../host-tool")
    found = scan(directory, current_user(), top=root)
    assert [(d.name, d.verdict) for d in found.decisions] == [
        ("10-outside", Verdict.FAIL), ("20-inside", Verdict.RUN), ("30-relative-out", Verdict.FAIL),
    ]
    assert found.decisions[0].reason == (
        f"a symlink out of the root (to {outside}); under --root only scripts inside the root run"
    )
    assert inside.exists()
    check_safe(found, current_user())  # the outside target's 0777 is not a reason to refuse
    on_real_root = scan(directory, current_user(), top=Path("/"))
    assert {d.verdict for d in on_real_root.decisions} == {Verdict.RUN}


def test_a_symlinked_script_runs_only_if_the_way_to_it_is_safe(tmp_path: Path) -> None:
    """A script linked from wizard.d is refused when someone else could change where the link
    leads: a directory holding its target, or holding a link on the way to it, writable by
    others refuses the step, naming it and the script; a way nobody else can change runs."""
    root = tmp_path / "root"
    directory = root / "etc/xivo/wizard.d"
    directory.mkdir(parents=True)
    shared, safe = root / "shared", root / "opt"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # whatever the umask
    safe.mkdir(mode=0o755)
    executable(shared / "tool")
    executable(safe / "tool")
    (shared / "hop").symlink_to("../opt/tool")
    user = current_user()

    def refusal(link: str, target: str) -> str:
        for old in directory.iterdir():
            old.unlink()
        (directory / link).symlink_to(target)
        found = scan(directory, user, top=root)
        assert [(d.name, d.verdict) for d in found.decisions] == [(link, Verdict.RUN)]
        try:
            check_safe(found, user)
        except UnsafePermissionsError as refused:
            return str(refused)
        return ""

    why = f"{shared} (on the way to {{}}) is writable by others (mode 0777)"
    assert why.format("10-direct") in refusal("10-direct", "../../../shared/tool")
    assert why.format("20-through") in refusal("20-through", "../../../shared/hop")
    assert refusal("30-safe", "../../../opt/tool") == ""
    sticky = root / "sticky"  # like /tmp: others may add names, not replace another's
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "hop").symlink_to("../opt/tool")
    assert refusal("40-sticky", "../../../sticky/hop") == ""
    under = shared / "sub"  # safe itself, but in a directory others may rename it out of
    under.mkdir(mode=0o755)
    (under / "hop").symlink_to("../../opt/tool")
    assert why.format("45-under") in refusal("45-under", "../../../shared/sub/hop")
    assert refusal("47-doubled", f"/{safe}/tool") == ""  # `//` as a link may begin
    if os.geteuid() == 0:  # a link in it owned by someone else is theirs to replace
        os.lchown(sticky / "hop", 65534, 65534)
        assert f"{sticky / 'hop'} (on the way to 50-theirs) is owned by" in refusal(
            "50-theirs", "../../../sticky/hop")
