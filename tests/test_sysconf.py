"""The system step on a fake file system: plan, all-or-nothing apply, faults and restores."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import structlog
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.helpers import set_uid

from tests.conftest import DEBIAN_ROOT, MANAGED, Reliability, snapshot
from tests.helpers import SPECIAL_FILES, outside_dir
from wizard_runner import sysconf as sysconf_module
from wizard_runner.config import WizardConfig
from wizard_runner.errors import ApplyError, PrivilegeError
from wizard_runner.fsio import At, Ownership, WriteMethod, replace_at
from wizard_runner.layout import Layout
from wizard_runner.render import RENDERERS
from wizard_runner.result import FileAction
from wizard_runner.sysconf import (
    FileChange,
    FilesNotAppliedError,
    Plan,
    apply_changes,
    plan_changes,
    read_targets,
    unified_diff,
)

RUN_ID = "20261125T120000Z-00000000"
LOG = structlog.get_logger()


@pytest.fixture
def root(fs: FakeFilesystem) -> Path:
    """A fake root holding Debian's files."""
    fs.add_real_directory(DEBIAN_ROOT, target_path="/sandbox", read_only=False, lazy_read=False)
    return Path("/sandbox")


def contents(root: Path) -> dict[str, bytes]:
    """The bytes of each managed file under `root` (b'' when missing)."""
    found = {}
    for path in MANAGED:
        target = root / path.lstrip("/")
        found[path] = target.read_bytes() if target.is_file() else b""
    return found


def plan(config: WizardConfig, root: Path, **options: bool) -> tuple[FileChange, ...]:
    """Read and plan the managed files under `root`."""
    return plan_changes(config, read_targets(Layout(root)), **options)


def apply(
    config: WizardConfig, root: Path, replacer: Callable[..., WriteMethod] = replace_at
) -> tuple[FileChange, ...]:
    """Plan and apply under `root`; return the plan."""
    changes = plan(config, root)
    apply_changes(Layout(root), RUN_ID, changes, LOG, replacer=replacer)
    return changes


def expected(config: WizardConfig, before: dict[str, bytes]) -> dict[str, bytes]:
    """What each managed file holds after a run on files that held `before`."""
    return {path: RENDERERS[path](config, before[path].decode()).encode() for path in MANAGED}


def temp_files(root: Path) -> list[str]:
    """Leftover temp files of the runner anywhere under `root`."""
    return [str(p) for p in root.rglob("*wizard-runner-tmp")]


def test_apply_writes_every_file_and_backs_up(config: WizardConfig, root: Path) -> None:
    """All seven files get their new content; the old content and a manifest are in the backup."""
    before = contents(root)
    changes = plan(config, root)
    applied = apply_changes(Layout(root), RUN_ID, changes, LOG)
    assert [outcome.action for outcome in applied.files] == [FileAction.WRITTEN] * 7
    assert applied.changed == frozenset(MANAGED)
    assert contents(root) == expected(config, before)
    backup = root / "var/backups/wizard-runner" / RUN_ID
    assert applied.backup_dir == backup
    for path in MANAGED:
        assert (backup / path.lstrip("/")).read_bytes() == before[path]
    manifest = json.loads((backup / "manifest.json").read_text())
    assert [entry["path"] for entry in manifest["files"]] == list(MANAGED)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert temp_files(root) == []


def test_unchanged_rerun_writes_nothing(config: WizardConfig, root: Path) -> None:
    """A second run finds every file unchanged and leaves their mtimes alone."""
    apply(config, root)
    mtimes = {p: (root / p.lstrip("/")).stat().st_mtime_ns for p in MANAGED}
    changes = plan(config, root)
    assert {change.plan for change in changes} == {Plan.UNCHANGED}
    applied = apply_changes(Layout(root), "second", changes, LOG)
    assert {outcome.action for outcome in applied.files} == {FileAction.UNCHANGED}
    assert applied.backup_dir is None
    assert {p: (root / p.lstrip("/")).stat().st_mtime_ns for p in MANAGED} == mtimes
    assert not (root / "var/backups/wizard-runner/second").exists()


def test_mode_and_owner_kept(config: WizardConfig, root: Path) -> None:
    """A replaced file keeps its mode (0600 stays 0600); a new file is 0644."""
    (root / "etc/hosts").chmod(0o600)
    (root / "etc/mailname").unlink()
    apply(config, root)
    assert stat.S_IMODE((root / "etc/hosts").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc/mailname").stat().st_mode) == 0o644


def failing_on(
    nth: int, error: int = errno.EIO, also_fail: Sequence[str] = ()
) -> Callable[[At, bytes, Ownership], WriteMethod]:
    """A replacer that fails on the nth write of a managed file, and on restores of `also_fail`."""
    writes: list[str] = []

    def replace(at: At, data: bytes, owner: Ownership) -> WriteMethod:
        if not at.shown.startswith("/var/backups/"):
            if at.shown in writes and at.name in also_fail:
                raise OSError(error, os.strerror(error), at.shown)
            writes.append(at.shown)
            if len(writes) == nth:
                raise OSError(error, os.strerror(error), at.shown)
        return replace_at(at, data, owner)

    return replace


def raising_oserror(code: int) -> Callable[..., None]:
    """A stand-in for an os function that fails with `code`."""

    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


def test_failure_on_third_write_restores_the_first_two(config: WizardConfig, root: Path) -> None:
    """An injected EIO on the third of seven writes: the first two are restored, exit 73."""
    before = contents(root)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply(config, root, replacer=failing_on(3))
    assert contents(root) == before
    error = caught.value
    assert error.exit_code == 73
    assert "/etc/mailname: could not be written (Input/output error)" in str(error)
    assert "restored /etc/hostname, /etc/hosts from" in str(error)
    actions = [(o.path, o.action) for o in error.files]
    assert actions == [
        ("/etc/hostname", FileAction.RESTORED),
        ("/etc/hosts", FileAction.RESTORED),
        ("/etc/mailname", FileAction.SKIPPED),
        ("/etc/resolv.conf", FileAction.SKIPPED),
        ("/etc/postfix/main.cf", FileAction.SKIPPED),
        ("/etc/postfix/canonical", FileAction.SKIPPED),
        ("/etc/network/interfaces", FileAction.SKIPPED),
    ]
    assert error.files[3].reason == "not written: the step stopped at /etc/mailname"
    assert temp_files(root) == []


def test_an_error_after_the_rename_restores_that_file_too(config: WizardConfig,
                                                          root: Path) -> None:
    """The fourth file is replaced, then its write fails (an EIO on the directory's fsync):
    it holds the new content, so it is restored with the three before it, and said so."""
    before = contents(root)
    writes: list[str] = []

    def fails_after(at: At, data: bytes, owner: Ownership) -> WriteMethod:
        method = replace_at(at, data, owner)
        if not at.shown.startswith("/var/backups/"):
            writes.append(at.shown)
            if len(writes) == 4:
                raise OSError(errno.EIO, os.strerror(errno.EIO), at.shown)
        return method

    with pytest.raises(FilesNotAppliedError) as caught:
        apply(config, root, replacer=fails_after)
    assert contents(root) == before
    found = {o.path: (o.action, o.reason) for o in caught.value.files}
    assert found["/etc/resolv.conf"] == (
        FileAction.RESTORED, "written, then failed (Input/output error); restored")
    assert found["/etc/mailname"][0] is FileAction.RESTORED


@pytest.mark.parametrize("nth", range(1, 8))
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS])
def test_any_failed_write_restores_everything(
    config: WizardConfig, root: Path, nth: int, code: int
) -> None:
    """Whichever write fails, and however, every file ends as it was."""
    before = contents(root)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply(config, root, replacer=failing_on(nth, code))
    assert contents(root) == before
    restored = [o.path for o in caught.value.files if o.action is FileAction.RESTORED]
    assert restored == list(MANAGED[: nth - 1])


def test_a_restore_needs_no_write(config: WizardConfig, root: Path) -> None:
    """The old files are kept as hard links while the step runs: the rollback renames them
    back, and succeeds where rewriting them fails (a disk the step has filled); none is left
    beside the files."""
    before = contents(root)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply(config, root, replacer=failing_on(3, errno.ENOSPC, also_fail=["hostname"]))
    assert contents(root) == before
    assert "restored /etc/hostname, /etc/hosts from" in str(caught.value)
    assert temp_files(root) == []


def test_failed_restore_is_reported_loudly(config: WizardConfig, root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no hard link can be made, a file that cannot be rewritten either is named, with
    where its old copy is."""
    monkeypatch.setattr(os, "link", raising_oserror(errno.EPERM))
    with pytest.raises(FilesNotAppliedError) as caught:
        apply(config, root, replacer=failing_on(3, also_fail=["hostname"]))
    message = str(caught.value)
    assert "COULD NOT RESTORE /etc/hostname" in message
    assert f"var/backups/wizard-runner/{RUN_ID}" in message
    assert caught.value.files[0].action is FileAction.WRITTEN
    assert caught.value.files[1].action is FileAction.RESTORED
    backup = root / "var/backups/wizard-runner" / RUN_ID / "etc/hostname"
    assert backup.read_text() == "debian\n"


def test_full_disk_at_every_size_never_half_applies(
    config: WizardConfig, fs: FakeFilesystem, reliability: Reliability
) -> None:
    """On a disk with any amount of free space, the files end all old or all new."""
    outcomes = set()
    sizes = range(0, 12_000, 250)
    lost = 0
    for step, free in enumerate(sizes):
        root = Path(f"/disk{step}")
        fs.add_real_directory(DEBIAN_ROOT, target_path=str(root), read_only=False, lazy_read=False)
        before = contents(root)
        new = expected(config, before)
        fs.set_disk_usage(fs.get_disk_usage()[1] + free)  # (total, used, free)
        try:
            apply(config, root)
        except ApplyError as error:
            outcomes.add(type(error).__name__)
            lost += contents(root) != before
        else:
            outcomes.add("applied")
            lost += contents(root) != new
        # Only next to the targets: pyfakefs can refuse the unlink of a temp file in the backup
        # directory with ENOSPC, which Linux never does.
        assert temp_files(root / "etc") == []
        fs.set_disk_usage(10**12)
    reliability.record(area="system step", fault="disk full",
                       injection=f"pyfakefs disk with 0 to 12 kB free, {len(sizes)} sizes",
                       trials=len(sizes), lost=lost,
                       outcome="backup refused (nothing changed), or write refused and the "
                       "files already written restored, or all written")
    assert lost == 0
    # The sweep covers a failed backup, a failed replace and success.
    assert outcomes == {"ApplyError", "FilesNotAppliedError", "applied"}


def test_symlink_is_skipped_unless_asked(config: WizardConfig, root: Path) -> None:
    """A symlinked resolv.conf is reported skipped; --replace-symlinks makes it a file."""
    (root / "run/systemd/resolve").mkdir(parents=True)
    (root / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    changes = {c.path: c for c in plan(config, root)}
    skipped = changes["/etc/resolv.conf"]
    assert skipped.plan is Plan.SKIP
    assert skipped.reason is not None
    assert "symlink to ../run/systemd/resolve/stub-resolv.conf" in skipped.reason
    assert "--replace-symlinks" in skipped.reason
    apply(config, root)
    assert (root / "etc/resolv.conf").is_symlink()
    changes = {c.path: c for c in plan(config, root, replace_symlinks=True)}
    assert changes["/etc/resolv.conf"].plan is Plan.WRITE
    apply_changes(Layout(root), "replace", tuple(changes.values()), LOG)
    assert not (root / "etc/resolv.conf").is_symlink()
    assert "nameserver 9.9.9.9" in (root / "etc/resolv.conf").read_text()
    assert (root / "run/systemd/resolve/stub-resolv.conf").read_text() == "nameserver 127.0.0.53\n"


def test_symlink_restored_after_a_failure(config: WizardConfig, root: Path) -> None:
    """A replaced symlink comes back as the same symlink when a later write fails."""
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to("/run/resolvconf/resolv.conf")
    changes = plan(config, root, replace_symlinks=True)
    with pytest.raises(FilesNotAppliedError):
        apply_changes(Layout(root), RUN_ID, changes, LOG, replacer=failing_on(5))
    assert os.readlink(root / "etc/resolv.conf") == "/run/resolvconf/resolv.conf"


@pytest.mark.processes
def test_a_replaced_symlink_is_backed_up_as_the_link(config: WizardConfig,
                                                     sandbox: Path) -> None:
    """The backup holds a replaced symlink as that symlink: `cp -a` from the backup (the
    documented restore) puts it back as it was."""
    resolv = sandbox / "etc/resolv.conf"
    resolv.unlink()
    resolv.symlink_to("../run/resolvconf/resolv.conf")
    applied = apply_changes(Layout.under(sandbox), RUN_ID,
                            plan(config, sandbox, replace_symlinks=True), LOG)
    assert applied.backup_dir is not None
    kept = applied.backup_dir / "etc/resolv.conf"
    assert os.readlink(kept) == "../run/resolvconf/resolv.conf"
    assert not resolv.is_symlink()
    subprocess.run(["cp", "-a", str(kept), str(resolv)], check=True)
    assert os.readlink(resolv) == "../run/resolvconf/resolv.conf"


def test_missing_directory_is_skipped(config: WizardConfig, root: Path) -> None:
    """Without /etc/postfix (postfix not installed) its two files are skipped, with the reason."""
    for name in ("main.cf", "canonical"):
        (root / "etc/postfix" / name).unlink()
    (root / "etc/postfix").rmdir()
    changes = {c.path: c for c in plan(config, root)}
    assert changes["/etc/postfix/main.cf"].plan is Plan.SKIP
    assert changes["/etc/postfix/main.cf"].reason == "/etc/postfix does not exist on this system"
    apply(config, root)
    assert not (root / "etc/postfix").exists()


def test_missing_file_is_created(config: WizardConfig, root: Path) -> None:
    """A managed file that does not exist yet is created, and removed again on a failure."""
    (root / "etc/postfix/canonical").unlink()
    with pytest.raises(FilesNotAppliedError):
        apply(config, root, replacer=failing_on(7))
    assert not (root / "etc/postfix/canonical").exists()
    apply(config, root)
    assert (root / "etc/postfix/canonical").read_text().count("@pbx.acme.example") == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda p: (p.unlink(), p.mkdir()), "not a regular file", id="directory"),
        pytest.param(lambda p: p.write_bytes(b"#" * (4 * 1024 * 1024 + 1)), "over 4194304 bytes",
                     id="huge"),
    ],
)
def test_unusual_target_fails_before_any_write(
    config: WizardConfig, root: Path, make: Callable[[Path], object], message: str
) -> None:
    """A target that is not a plain small file stops the step before anything is written."""
    before = contents(root)
    make(root / "etc/hosts")
    with pytest.raises(ApplyError, match=f"/etc/hosts: {message}"):
        apply(config, root)
    after = contents(root)
    del after["/etc/hosts"], before["/etc/hosts"]
    assert after == before


def test_validator_rejection_writes_nothing(config: WizardConfig, root: Path) -> None:
    """When a tool rejects a file, nothing is written and no backup is made."""
    before = contents(root)

    def reject(writes: Sequence[FileChange]) -> None:
        raise ApplyError("/etc/network/interfaces: ifquery rejected the new content: nope")

    with pytest.raises(ApplyError, match="ifquery rejected"):
        apply_changes(Layout(root), RUN_ID, plan(config, root), LOG, validator=reject)
    assert contents(root) == before
    assert not (root / "var/backups").exists()


def test_unwritable_directory_is_a_privilege_error(config: WizardConfig, root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A user who cannot write /etc gets exit 77 before anything is written."""
    before = contents(root)
    (root / "etc").chmod(0o555)
    real_uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # (pyfakefs's set_uid leaves it)
    set_uid(1000)
    try:
        with pytest.raises(PrivilegeError, match="cannot write in /sandbox/etc") as caught:
            apply(config, root)
    finally:
        set_uid(real_uid)
    assert caught.value.exit_code == 77
    # A sandbox root was given: the hint is not to give one.
    assert str(caught.value).endswith("(run as root, or make the sandbox writable for this user)")
    assert contents(root) == before


def test_stale_temp_files_are_cleaned(config: WizardConfig, root: Path) -> None:
    """Temp files a killed run left behind are removed by the next one."""
    stale = root / "etc/.hosts.deadbeef.wizard-runner-tmp"
    stale.write_text("half")
    apply(config, root)
    assert not stale.exists()


def test_a_killed_runs_leavings_go_when_nothing_is_to_be_written(config: WizardConfig,
                                                                  root: Path) -> None:
    """A run killed after its last rename left its kept old files: the next run removes
    them even though every file is already up to date."""
    apply(config, root)
    kept = [root / "etc/.hostname.0badc0de.wizard-runner-tmp",
            root / "etc/postfix/.main.cf.0badc0de.wizard-runner-tmp"]
    for path in kept:
        path.write_text("old")
    changes = apply(config, root)
    assert {change.plan for change in changes} == {Plan.UNCHANGED}
    assert temp_files(root) == []


def test_a_kept_file_that_cannot_be_put_back_is_rewritten(
        config: WizardConfig, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept old file the rollback cannot rename back (EBUSY) is rewritten from the copy
    the plan read instead, and no kept file is left."""
    before = contents(root)

    def busy(*_args: object) -> bool:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(sysconf_module, "_put_back", busy)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply(config, root, replacer=failing_on(3))
    assert contents(root) == before
    assert "restored /etc/hostname, /etc/hosts from" in str(caught.value)
    assert temp_files(root) == []


def test_unified_diff(config: WizardConfig, root: Path) -> None:
    """The dry-run diff shows each change with a/ b/ names and each skip as a comment."""
    (root / "etc/mailname").unlink()
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to("/run/resolvconf/resolv.conf")
    diff = unified_diff(plan(config, root))
    assert "--- a/etc/hosts\n+++ b/etc/hosts\n" in diff
    assert "-127.0.1.1\tdebian.localdomain\tdebian\n" in diff
    assert "+192.168.50.10\tpbx.acme.example\tpbx\n" in diff
    assert "--- /dev/null\n+++ b/etc/mailname\n" in diff
    assert "# /etc/resolv.conf: skipped: is a symlink to /run/resolvconf/resolv.conf" in diff


def test_unified_diff_cuts_lines_as_the_tools_do(config: WizardConfig, root: Path) -> None:
    """A last line without a newline is marked as diff marks it, and a form feed inside an
    admin's line does not cut it in two in the diff."""
    (root / "etc/hostname").write_text("pbx-old")
    main_cf = root / "etc/postfix/main.cf"
    main_cf.write_text(main_cf.read_text() + "# relay note\x0crelayhost = [evil.example]:25\n")
    diff = unified_diff(plan(config, root))
    assert "-pbx-old\n\\ No newline at end of file\n+pbx\n" in diff
    assert " # relay note\x0crelayhost = [evil.example]:25\n" in diff


def test_damaged_file_is_named_and_nothing_written(config: WizardConfig, root: Path) -> None:
    """A managed block with a lost END marker stops the step, naming the file and line."""
    apply(config, root)
    hosts = root / "etc/hosts"
    hosts.write_text(hosts.read_text().replace("# END wizard-runner managed block\n", ""))
    before = contents(root)
    with pytest.raises(ApplyError, match=r"^/etc/hosts: line 1: the wizard-runner block opened"):
        apply(config, root)
    assert contents(root) == before


# --- the root is a fence (real trees under tmp_path) ----------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the sandbox root that no run may read or change."""
    return outside_dir(tmp_path, {"main.cf": "myhostname = elsewhere\n",
                                  "interfaces": "iface eth0 inet dhcp\n",
                                  "secret": "root:$6$SECRET-HASH:19000:0:99999:7:::\n"})


def swap_for_link(path: Path, target: Path) -> None:
    """Move `path` aside and put a symlink to `target` in its place."""
    path.rename(path.with_name(f"{path.name}.moved"))
    path.symlink_to(target)


@pytest.mark.parametrize(
    ("link", "shown"),
    [
        pytest.param("etc", "/etc", id="etc"),
        pytest.param("etc/network", "/etc/network", id="etc-network"),
        pytest.param("etc/postfix", "/etc/postfix", id="etc-postfix"),
    ],
)
def test_symlinked_directory_is_refused_before_any_write(
    config: WizardConfig, sandbox: Path, outside: Path, link: str, shown: str
) -> None:
    """A directory on the way that is a symlink stops the step at the read, naming it (exit 73)."""
    swap_for_link(sandbox / link, outside)
    before, before_outside = snapshot(sandbox), snapshot(outside)
    with pytest.raises(ApplyError) as caught:
        plan(config, sandbox)
    assert str(caught.value) == (
        f"{shown}: is a symlink (to {outside}); refusing to follow it out of the root "
        f"{sandbox}: under --root, the runner reaches files only through real directories"
    )
    assert caught.value.exit_code == 73
    assert snapshot(sandbox) == before
    assert snapshot(outside) == before_outside


def test_directory_swapped_after_the_plan_is_refused(
    config: WizardConfig, sandbox: Path, outside: Path
) -> None:
    """A directory turned into a symlink between plan and apply is refused before any write."""
    changes = plan(config, sandbox)
    swap_for_link(sandbox / "etc/postfix", outside)
    before, before_outside = snapshot(sandbox), snapshot(outside)
    with pytest.raises(ApplyError, match=r"^/etc/postfix: is a symlink"):
        apply_changes(Layout.under(sandbox), RUN_ID, changes, LOG)
    assert snapshot(sandbox) == before
    assert snapshot(outside) == before_outside


@pytest.mark.parametrize(
    "link",
    [pytest.param("var/backups", id="var-backups"),
     pytest.param("var/backups/wizard-runner", id="var-backups-wizard-runner")],
)
def test_symlinked_backup_directory_is_refused(
    config: WizardConfig, sandbox: Path, outside: Path, link: str
) -> None:
    """Backups are not carried out of the root by a symlinked /var/backups; nothing is written."""
    (sandbox / link).parent.mkdir(parents=True, exist_ok=True)
    (sandbox / link).symlink_to(outside)
    before, before_outside = snapshot(sandbox), snapshot(outside)
    with pytest.raises(ApplyError) as caught:
        apply(config, sandbox)
    message = str(caught.value)
    assert message.startswith("could not back up the system files into ")
    assert f"(/{link}: is a symlink (to {outside})" in message
    assert message.endswith("nothing was changed")
    assert snapshot(sandbox) == before
    assert snapshot(outside) == before_outside


def test_replaced_symlink_is_never_read_through(
    config: WizardConfig, sandbox: Path, outside: Path
) -> None:
    """--replace-symlinks with /etc/hosts -> a secret outside: a new hosts, the secret nowhere."""
    secret = outside / "secret"
    (sandbox / "etc/hosts").unlink()
    (sandbox / "etc/hosts").symlink_to(secret)
    before_outside = snapshot(outside)
    changes = {c.path: c for c in plan(config, sandbox, replace_symlinks=True)}
    hosts = changes["/etc/hosts"]
    assert hosts.plan is Plan.WRITE
    assert hosts.current.data is None
    assert hosts.current.link == str(secret)
    assert "--- /dev/null\n+++ b/etc/hosts\n" in unified_diff(tuple(changes.values()))
    applied = apply_changes(Layout.under(sandbox), RUN_ID, tuple(changes.values()), LOG)
    written = sandbox / "etc/hosts"
    assert not written.is_symlink()
    assert "pbx.acme.example" in written.read_text()
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert applied.backup_dir is not None
    manifest = json.loads((applied.backup_dir / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "/etc/hosts")
    assert entry == {"path": "/etc/hosts", "existed": False, "link": str(secret)}
    assert os.readlink(applied.backup_dir / "etc/hosts") == str(secret)  # the link, not its
    leaked = [p for p in sandbox.rglob("*")  # target's content
              if p.is_file() and not p.is_symlink() and b"SECRET-HASH" in p.read_bytes()]
    assert leaked == []
    assert snapshot(outside) == before_outside


def test_replaced_symlink_comes_back_on_a_failure(
    config: WizardConfig, sandbox: Path, outside: Path
) -> None:
    """A later failed write puts the symlink back as it was; its target is untouched."""
    (sandbox / "etc/hosts").unlink()
    (sandbox / "etc/hosts").symlink_to(outside / "secret")
    before_outside = snapshot(outside)
    changes = plan(config, sandbox, replace_symlinks=True)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply_changes(Layout.under(sandbox), RUN_ID, changes, LOG, replacer=failing_on(4))
    assert os.readlink(sandbox / "etc/hosts") == str(outside / "secret")
    assert ("/etc/hosts", FileAction.RESTORED) in [(f.path, f.action) for f in caught.value.files]
    assert snapshot(outside) == before_outside


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("make", "kind"),
    [*SPECIAL_FILES, pytest.param(Path.mkdir, "a directory", id="directory")],
)
def test_special_target_is_refused_at_once(
    config: WizardConfig, sandbox: Path, make: Callable[[Path], None], kind: str
) -> None:
    """A FIFO, socket, device or directory where a managed file should be fails at the read."""
    (sandbox / "etc/mailname").unlink()
    make(sandbox / "etc/mailname")
    before = snapshot(sandbox)
    with pytest.raises(ApplyError) as caught:
        plan(config, sandbox)
    assert str(caught.value) == f"/etc/mailname: not a regular file ({kind}); refusing to replace it"
    assert snapshot(sandbox) == before


@pytest.mark.timeout(10)
def test_symlink_to_a_fifo_never_blocks(
    config: WizardConfig, sandbox: Path, outside: Path
) -> None:
    """A target symlinked to a FIFO is skipped at once, or replaced by a file; the FIFO stays."""
    os.mkfifo(outside / "fifo")
    (sandbox / "etc/resolv.conf").unlink()
    (sandbox / "etc/resolv.conf").symlink_to(outside / "fifo")
    skipped = {c.path: c for c in plan(config, sandbox)}["/etc/resolv.conf"]
    assert skipped.plan is Plan.SKIP
    apply(config, sandbox)
    assert (sandbox / "etc/resolv.conf").is_symlink()
    changes = plan(config, sandbox, replace_symlinks=True)
    apply_changes(Layout.under(sandbox), "replace", changes, LOG)
    assert "nameserver 9.9.9.9" in (sandbox / "etc/resolv.conf").read_text()
    assert stat.S_ISFIFO(os.lstat(outside / "fifo").st_mode)


def test_file_where_a_directory_should_be(config: WizardConfig, sandbox: Path) -> None:
    """A file named /etc/postfix is an error naming it, not a crash nor a silent skip."""
    for name in ("main.cf", "canonical"):
        (sandbox / "etc/postfix" / name).unlink()
    (sandbox / "etc/postfix").rmdir()
    (sandbox / "etc/postfix").write_text("not a directory\n")
    with pytest.raises(ApplyError, match=r"^/etc/postfix: not a directory \(a regular file\)$"):
        plan(config, sandbox)


# --- a target edited meanwhile; extended attributes (real files) ------------------------------


def _appended(path: Path) -> None:
    with path.open("a") as handle:
        handle.write("192.0.2.77\tadmin-added\n")


def _rewritten_same_bytes(path: Path) -> None:
    fresh = path.with_name("fresh")
    fresh.write_bytes(path.read_bytes())
    fresh.rename(path)  # another inode, the same content: another file all the same


def _created(path: Path) -> None:
    path.write_text("made meanwhile\n")


def _linked(path: Path) -> None:
    path.unlink()
    path.symlink_to("../run/resolvconf/resolv.conf")


@pytest.mark.parametrize(("path", "edit"), [
    pytest.param("/etc/hosts", _appended, id="appended"),
    pytest.param("/etc/postfix/main.cf", _rewritten_same_bytes, id="replaced-same-bytes"),
    pytest.param("/etc/mailname", _created, id="created"),
    pytest.param("/etc/resolv.conf", _linked, id="made-a-symlink"),
])
def test_a_file_edited_after_it_was_read_is_never_overwritten(
    config: WizardConfig, sandbox: Path, path: str, edit: Callable[[Path], None]
) -> None:
    """A target edited between the read and its replacement (by an admin, another program):
    the step stops there naming it, the files replaced before it are restored, and the edit
    is kept, never lost unseen (the backup holds what was read, not the edit)."""
    if path == "/etc/mailname":
        (sandbox / "etc/mailname").unlink()
    changes = plan(config, sandbox)
    target = sandbox / path.lstrip("/")
    edit(target)
    before = contents(sandbox)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply_changes(Layout(sandbox), RUN_ID, changes, LOG)
    assert f"{path}: could not be written ({path} changed after the run read it (edited " \
        "meanwhile?); run again to build on the change)" in str(caught.value)
    assert contents(sandbox) == before
    assert temp_files(sandbox) == []


@pytest.mark.parametrize("attribute", ["user.note", "system.posix_acl_access"])
def test_extended_attributes_and_acls_are_kept(config: WizardConfig, sandbox: Path,
                                               attribute: str) -> None:
    """A replaced file keeps the old one's extended attributes (a POSIX ACL giving www-data
    read access is one), and so does its backup copy."""
    hosts = sandbox / "etc/hosts"
    value = b"kept" if attribute == "user.note" else ACL_WWW_DATA_READS
    try:
        os.setxattr(hosts, attribute, value)
    except OSError as error:
        pytest.skip(f"this file system keeps no {attribute} ({error.strerror})")
    mode = stat.S_IMODE(hosts.stat().st_mode)
    apply_changes(Layout(sandbox), RUN_ID, plan(config, sandbox), LOG)
    backup = sandbox / "var/backups/wizard-runner" / RUN_ID / "etc/hosts"
    for copy in (hosts, backup):
        assert os.getxattr(copy, attribute) == value, copy
    assert b"pbx.acme.example" in hosts.read_bytes()
    assert stat.S_IMODE(hosts.stat().st_mode) == mode


def test_an_attribute_that_cannot_be_kept_fails_the_file_whole(
    config: WizardConfig, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extended attribute the new file cannot be given: that file is not written (its
    attribute named), and the files replaced before it are restored."""
    os.setxattr(sandbox / "etc/postfix/main.cf", "user.refused", b"x")
    setxattr = os.setxattr

    def refusing(target: int, name: str, value: bytes) -> None:
        if name == "user.refused":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        setxattr(target, name, value)

    monkeypatch.setattr(os, "setxattr", refusing)
    before = contents(sandbox)
    with pytest.raises(FilesNotAppliedError) as caught:
        apply_changes(Layout(sandbox), RUN_ID, plan(config, sandbox), LOG)
    assert "/etc/postfix/main.cf: could not be written (cannot keep its extended attribute " \
        "user.refused: Operation not permitted)" in str(caught.value)
    assert contents(sandbox) == before
    # The backup keeps what it can: the content, without the attribute it was refused.
    backup = sandbox / "var/backups/wizard-runner" / RUN_ID / "etc/postfix/main.cf"
    assert backup.read_bytes() == before["/etc/postfix/main.cf"]
    assert "user.refused" not in os.listxattr(backup)


#: A POSIX ACL as the kernel stores it: owner rw, www-data (33) r, group r, mask r, other r.
ACL_WWW_DATA_READS = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
        (0x01, 6, 0xFFFFFFFF), (0x02, 4, 33), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
        (0x20, 4, 0xFFFFFFFF)))
