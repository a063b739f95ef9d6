"""The root as a fence: directories walked without following symlinks, files read without
blocking, on real trees under tmp_path."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import snapshot
from tests.helpers import SPECIAL_FILES, make_fifo, outside_dir
from wizard_runner.fence import Fence, FenceError, NotDirectoryError, open_fence
from wizard_runner.fsio import MAX_TARGET_BYTES, describe
from wizard_runner.layout import Layout


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root, with a secret, that nothing may read or change."""
    return outside_dir(tmp_path, {"main.cf": "secret = outside\n"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small root: /etc/postfix/main.cf and /etc/hostname."""
    top = tmp_path / "root"
    (top / "etc/postfix").mkdir(parents=True)
    (top / "etc/postfix/main.cf").write_text("myhostname = debian\n")
    (top / "etc/hostname").write_text("debian\n")
    return top


@pytest.fixture
def fence(root: Path) -> Iterator[Fence]:
    """A fence on the sandbox root."""
    with open_fence(Layout.under(root)) as opened:
        yield opened


def test_walks_real_directories(fence: Fence) -> None:
    """A path made of real directories opens, and the file in it reads."""
    assert fence.read_file("/etc/postfix/main.cf") == b"myhostname = debian\n"
    with fence.directory("/etc/postfix") as dir_fd:
        assert dir_fd is not None
        assert sorted(os.listdir(dir_fd)) == ["main.cf"]


@pytest.mark.parametrize(
    ("link", "shown"),
    [
        pytest.param("etc", "/etc", id="etc-itself"),
        pytest.param("etc/postfix", "/etc/postfix", id="etc-postfix"),
    ],
)
def test_symlinked_directory_is_refused(
    root: Path, outside: Path, fence: Fence, link: str, shown: str
) -> None:
    """A symlink on the way to a file is refused, naming it and its target, whatever it points at."""
    (outside / "postfix").mkdir()
    (outside / "postfix/main.cf").write_text("secret = outside\n")
    moved = root / link
    moved.rename(root / f"{link}.real")
    moved.symlink_to(outside)
    with pytest.raises(FenceError) as caught:
        fence.read_file("/etc/postfix/main.cf")
    assert str(caught.value).startswith(
        f"{shown}: is a symlink (to {outside}); refusing to follow it out of the root {root}"
    )
    assert caught.value.exit_code == 73


def test_symlink_inside_the_root_is_refused_too(root: Path, fence: Fence) -> None:
    """Even a relative link that stays inside is not followed: one rule, no resolving."""
    (root / "etc/postfix").rename(root / "srv-postfix")
    (root / "etc/postfix").symlink_to("../srv-postfix")
    with pytest.raises(FenceError) as caught:
        fence.read_file("/etc/postfix/main.cf")
    assert str(caught.value) == (
        f"/etc/postfix: is a symlink (to ../srv-postfix); refusing to follow it: under --root "
        f"{root}, the runner reaches files only through real directories"
    )


def test_file_on_the_way_is_not_a_directory(root: Path, fence: Fence) -> None:
    """A file where a directory should be says so; reading through it finds nothing."""
    (root / "etc/network").write_text("not a directory\n")
    with pytest.raises(NotDirectoryError, match=r"^/etc/network: not a directory \(a regular file\)"):
        fence.open_dir("/etc/network")
    assert fence.read_file("/etc/network/interfaces") is None


def test_missing_directory_is_none_or_created(root: Path, fence: Fence) -> None:
    """A missing directory is None, or created with the mode asked for, component by component."""
    assert fence.open_dir("/var/backups/wizard-runner") is None
    with fence.directory("/var/backups/wizard-runner", create_mode=0o700) as dir_fd:
        assert dir_fd is not None
    made = root / "var/backups/wizard-runner"
    assert made.is_dir()
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_creating_does_not_follow_a_symlink(root: Path, outside: Path, fence: Fence) -> None:
    """Creating the backup directories stops at a symlinked /var; nothing appears outside."""
    (root / "var").symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(FenceError, match=r"^/var: is a symlink"):
        fence.open_dir("/var/backups/wizard-runner", create_mode=0o700)
    assert snapshot(outside) == before


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("make", "kind"),
    SPECIAL_FILES,
)
def test_special_file_is_refused_at_once(
    root: Path, fence: Fence, make: Callable[[Path], None], kind: str
) -> None:
    """A FIFO, socket or device is refused without blocking, naming what it is."""
    make(root / "etc/postfix/master.cf")
    with pytest.raises(FenceError, match=rf"^/etc/postfix/master.cf: not a regular file \({kind}\)$"):
        fence.read_file("/etc/postfix/master.cf")


@pytest.mark.timeout(10)
def test_symlinked_file_is_not_followed(root: Path, outside: Path, fence: Fence) -> None:
    """A file the runner only reads is not read through a symlink under a sandbox root."""
    make_fifo(outside / "fifo")
    (root / "etc/postfix/master.cf").symlink_to(outside / "fifo")
    with pytest.raises(FenceError, match=rf"^/etc/postfix/master.cf: is a symlink \(to {outside}/fifo\); not followed"):
        fence.read_file("/etc/postfix/master.cf")


def test_directory_reads_as_nothing(root: Path, fence: Fence) -> None:
    """A directory where a file was looked for reads as None, like a missing file."""
    (root / "etc/postfix/master.cf").mkdir()
    assert fence.read_file("/etc/postfix/master.cf") is None
    assert fence.read_file("/") is None
    assert fence.read_file("/etc/missing/file") is None


def test_oversized_file_is_refused(root: Path, fence: Fence) -> None:
    """A file over the size limit is not a config file."""
    (root / "etc/hostname").write_bytes(b"#" * (MAX_TARGET_BYTES + 1))
    with pytest.raises(FenceError, match=r"^/etc/hostname: over 4194304 bytes"):
        fence.read_file("/etc/hostname")


@pytest.mark.skipif(not os.path.islink("/bin"), reason="needs a merged-/usr system (/bin -> usr/bin)")
def test_real_root_follows_directory_links() -> None:
    """On `/` nothing is outside: a symlinked directory (/bin -> usr/bin) is followed, read-only."""
    with open_fence(Layout.under("/")) as fence, fence.directory("/bin") as dir_fd:
        assert fence.confined is False
        assert dir_fd is not None
        assert "sh" in os.listdir(dir_fd)


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        pytest.param(stat.S_IFIFO, "a FIFO", id="fifo"),
        pytest.param(stat.S_IFSOCK, "a socket", id="socket"),
        pytest.param(stat.S_IFCHR, "a character device", id="chr"),
        pytest.param(stat.S_IFBLK, "a block device", id="blk"),
        pytest.param(stat.S_IFDIR, "a directory", id="dir"),
        pytest.param(stat.S_IFLNK, "a symlink", id="link"),
        pytest.param(stat.S_IFREG, "a regular file", id="file"),
    ],
)
def test_describe(mode: int, words: str) -> None:
    """Each kind of file is named in words an admin reads."""
    assert describe(mode | 0o644) == words
