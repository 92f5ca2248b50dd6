"""Writing files so that nothing is ever half-written.

A crash, Ctrl-C or full disk must leave either the old file or the new one, never a mix:
every file goes to a temporary name in the same directory and is renamed into place
(rename is atomic within one filesystem). Whole checkpoints are built in a temporary
directory beside their destination and renamed the same way (`staged_directory`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError

# Linux ioctl that makes dst share src's blocks (copy-on-write) on btrfs/xfs/overlay-on-those.
_FICLONE = 0x40049409

STAGING_MARK = ".picli-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{STAGING_MARK}")
    try:
        # mkstemp creates 0600; outputs get the permissions an ordinary file would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def copy_file(src: Path, dst: Path, mode: str = "copy") -> str:
    """Copy one file into a staging directory; returns how it was done.

    mode: "copy" (a reflink where the filesystem can, else a byte copy), "hardlink" or
    "symlink". Links share storage with the source: a tool that later writes the file in
    place writes through into the source checkpoint, which is why copy is the default.
    """
    if mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise OutputError(
                    f"cannot hardlink {src.name}: the output is on another filesystem than the source",
                    hint="use --weights copy, or put the output on the source's filesystem",
                ) from exc
            raise
        return "hardlink"
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return "symlink"
    if _reflink(src, dst):
        return "reflink"
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)
    return "copy"


def _reflink(src: Path, dst: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # not on Linux
        return False
    with open(src, "rb") as source, open(dst, "wb") as target:
        try:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        except OSError:
            pass
        else:
            return True
    os.unlink(dst)
    return False


def check_writable_parent(target: Path) -> None:
    """Fail before any work when the destination's directory cannot take new files."""
    parent = target.parent
    if not parent.exists():
        raise OutputError(
            f"output directory {parent} does not exist",
            hint="create it first, or choose another -o/--output",
        )
    probe = None
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{target.name}{STAGING_MARK}probe-")
        os.close(fd)
    except OSError as exc:
        raise OutputError(
            f"cannot write to {parent}: {exc.strerror or exc}",
            hint="choose a writable location with -o/--output",
        ) from exc
    finally:
        if probe:
            with contextlib.suppress(OSError):
                os.unlink(probe)


@contextlib.contextmanager
def staged_directory(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty directory beside `target`; on success it becomes `target`.

    On any exception (KeyboardInterrupt included) the staging directory is removed and
    `target` is untouched. With replace=True an existing target is swapped out only after
    the new one is complete.
    """
    target = Path(target)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING_MARK}"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield staging
        if target.exists() or target.is_symlink():
            if not replace:
                raise OutputError(f"output {target} appeared while writing", hint="run again with --force")
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING_MARK}old-"))
            os.replace(target, retired / "old")
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(target: Path, replace: bool = False) -> Iterator[Path]:
    """Like staged_directory, for one large file written by someone else's code."""
    target = Path(target)
    fd, staging_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{STAGING_MARK}")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    staging = Path(staging_name)
    try:
        yield staging
        if target.exists() and not replace:
            raise OutputError(f"output {target} appeared while writing", hint="run again with --force")
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        raise


def _remove_stale_staging(target: Path) -> None:
    """Staging dirs left by a killed run (kill -9 cannot be caught) are removed next time."""
    for stale in target.parent.glob(f".{target.name}{STAGING_MARK}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
