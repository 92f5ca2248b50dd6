"""Writing files so that nothing is ever half-written.

A crash, Ctrl-C or full disk must leave either the old file or the new one, never a mix:
every file goes to a temporary name in the same directory and is renamed into place
(rename is atomic within one filesystem). Whole checkpoints are built in a temporary
directory beside their destination and renamed the same way (`staged_directory`).

Two runs writing one output would otherwise break each other (the second one's clean-up
deleting the first one's live staging): `staged_directory` and `staged_file` hold a lock
file beside the target (`.{name}.picli-lock`, flock) for the whole write, and the second
run fails at once. Staging left by a killed run is removed only under that lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import NotACheckpoint, OutputError

# Linux ioctl that makes dst share src's blocks (copy-on-write) on btrfs/xfs/overlay-on-those.
_FICLONE = 0x40049409

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
STAGING_MARK = ".picli-tmp-"
LOCK_SUFFIX = ".picli-lock"
# Errors that mean "the output cannot take these bytes": the message names the output file.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# Locks this process holds, by lock path: a write nested in another of the same target
# (extend's GGUF path locks around a staged file, which locks too) must not block itself.
_held_locks: set[str] = set()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_path(path: Path) -> Path:
    """The path the user will see: staging names (`.out.picli-tmp-x1y2/...`) become the target."""
    parts = [re.sub(rf"^\.(.+?){re.escape(STAGING_MARK)}.*$", r"\1", part) for part in Path(path).parts]
    return Path(*parts)


@contextlib.contextmanager
def naming_output(path: Path) -> Iterator[None]:
    """A disk-full (or read-only, quota) error while writing names the output file.

    Left alone, the OSError names whatever the failing call knew: nothing for a write() or
    fsync(), and the *source* for shutil.copyfile, whose sendfile path puts the source in
    `filename`. The CLI's error boundary prints `filename`.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(output_path(path))) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{STAGING_MARK}")
    try:
        with naming_output(path):
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
    with naming_output(dst):
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
def target_lock(target: Path) -> Iterator[None]:
    """Hold `.{name}.picli-lock` beside `target`; a second writer fails at once, changing nothing.

    flock, not the lock file's existence: the kernel drops it when the holder dies, kill -9
    included, so a crashed run never blocks the next one. The file is removed on release;
    a run that locked a file just unlinked by the previous holder sees that its inode is no
    longer the one at the path, and locks afresh.
    """
    import fcntl

    target = Path(target)
    lock_path = target.parent / f".{target.name}{LOCK_SUFFIX}"
    key = os.path.abspath(lock_path)
    if key in _held_locks:
        yield
        return
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"another picli run is writing {target}",
                              hint="wait for it to finish, or choose another -o/--output") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _held_locks.add(key)
    try:
        yield
    finally:
        _held_locks.discard(key)
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # still locked: nobody else can be using this inode
        os.close(fd)


@contextlib.contextmanager
def staged_directory(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty directory beside `target`; on success it becomes `target`.

    On any exception (KeyboardInterrupt included) the staging directory is removed and
    `target` is untouched. With replace=True an existing target is swapped out only after
    the new one is complete. The target's lock is held throughout (`target_lock`).
    """
    target = Path(target)
    with target_lock(target):
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
def staged_file(target: Path, replace: bool = False, companion: Path | None = None) -> Iterator[Path]:
    """Like staged_directory, for one large file written by someone else's code.

    `companion` is a file that describes `target` (a GGUF's `.picli.json`): it is moved aside
    just before the new target lands and dropped once it has, so the caller (writing the new
    companion under the same lock) never leaves an old description beside a new file. If
    the target cannot be put in place, the old companion is put back.
    """
    target = Path(target)
    with target_lock(target):
        _remove_stale_staging(target)
        if companion is not None:
            _remove_stale_staging(Path(companion))
        if target.is_dir():
            raise OutputError(f"output {target} is a directory", hint="name a file as the output, or remove it")
        fd, staging_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{STAGING_MARK}")
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        staging = Path(staging_name)
        try:
            yield staging
            if (target.exists() or target.is_symlink()) and not replace:
                raise OutputError(f"output {target} appeared while writing", hint="run again with --force")
            if target.is_dir():
                raise OutputError(f"output {target} appeared as a directory while writing",
                                  hint="name a file as the output, or remove it")
            retired = None
            if companion is not None and (Path(companion).exists() or Path(companion).is_symlink()):
                retired = Path(companion).with_name(f".{Path(companion).name}{STAGING_MARK}old")
                os.replace(companion, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                if retired is not None:
                    os.replace(retired, companion)
                raise
            if retired is not None:
                retired.unlink()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            raise


def _remove_stale_staging(target: Path) -> None:
    """Staging left by a killed run (kill -9 cannot be caught) is removed by the next one.

    Only ever called with the target's lock held, so no live run owns what is removed.
    `..{name}.picli-tmp-*` is the staging of a staging file, which older picli wrote for GGUF.
    """
    for pattern in (f".{target.name}{STAGING_MARK}*", f"..{target.name}{STAGING_MARK}*"):
        for stale in target.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------------------
# Where an output may go: the one rule every command that writes an output follows.

# The folders a mistyped -o would take with it. Refused as outputs whatever the flags: no
# record can make replacing them safe.


def _protected_places() -> list[tuple[Path, str]]:
    places = [(Path("/"), "the filesystem root")]
    with contextlib.suppress(RuntimeError, KeyError):  # no HOME and no passwd entry
        places.append((Path.home().resolve(), "your home directory"))
    try:
        # The working directory may itself be gone (deleted by another program): nothing to protect then.
        places.append((Path(os.getcwd()).resolve(), "the current directory"))
    except OSError:
        pass
    return places


def check_output(output: Path, *, ours: Callable[[Path], bool], mark: str, force: bool = False,
                 sources: tuple[Path, ...] | list[Path] = (), empty_ok: bool = False, option: str = "-o/--output",
                 exists_hint: str | None = None) -> None:
    """May picli write `output` (a folder or a file it builds whole, then renames into place)?

    Refused, whatever `force` says: `/`, the home directory, the current directory and any
    folder containing one of them; a source (`sources`: the checkpoints read), anything
    inside a source, or a folder containing one. An existing output is replaced only with
    `force`, and only when picli wrote it: `ours(path)` says so (picli's record is there:
    `mark`, named in the refusal). An empty folder holds nothing to lose. `empty_ok`: an
    existing empty folder needs no --force (finetune). `exists_hint`: what to do about an
    existing output, where the command has more to offer than --force (finetune's --resume).
    """
    output = Path(output)
    resolved = output.resolve()
    for source in sources:
        source = Path(source).resolve()
        if resolved == source:
            raise OutputError(f"the output {output} is the source checkpoint itself",
                              hint=f"choose another {option}")
        if resolved.is_relative_to(source):
            raise OutputError(f"the output {output} is inside the source checkpoint {source}",
                              hint=f"choose an {option} outside the source")
        if source.is_relative_to(resolved):
            raise OutputError(f"the source {source} is inside the output {output}",
                              hint=f"choose an {option} that does not contain the source")
    for place, what in _protected_places():
        if resolved == place or place.is_relative_to(resolved):
            where = what if resolved == place else f"a folder containing {what} ({place})"
            raise OutputError(f"the output {output} is {where}; picli never writes over it, --force included",
                              hint=f"name a new folder with {option}, e.g. {option.split('/')[0]} ./model-out")
    if not (output.exists() or output.is_symlink()):
        return
    empty = output.is_dir() and not output.is_symlink() and not any(output.iterdir())
    if empty and empty_ok:
        return
    if not force:
        raise OutputError(f"output {output} already exists",
                          hint=exists_hint or f"pass --force to replace it, or choose {option}")
    if empty or ours(output):
        return
    raise OutputError(f"output {output} exists and picli did not write it (no {mark}); --force replaces only "
                      "outputs picli wrote", hint=f"choose another {option}, or move it away yourself")


# ---------------------------------------------------------------------------------------
# What is part of a model: the one rule extend (copy) and push (upload, plan) share.

# The one dotfile a Hub repo expects: it says which files are stored with LFS/Xet. Every
# other hidden file (.env, .netrc, .ssh/, .DS_Store, .git/) is a machine's, not a model's.
HUB_DOTFILES = {".gitattributes"}
_KEY_NAMES = re.compile(r"^id_(rsa|dsa|ecdsa|ed25519)(\.pub)?$|\.(pem|key|p12|pfx|ppk|keystore|jks)$")
# `token`, `hf_token`, `access-token.txt`, `secrets.json`, `credentials`, `netrc`: not tokenizer*.json.
_SECRET_NAMES = re.compile(r"^(?:.*[_-])?(token|secrets?|credentials?|passwords?|passwd|api[_-]?key|netrc)$")
# A Hugging Face access token as the Hub issues them (hf_ and 34 letters and digits; 30+ here).
HF_TOKEN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
_SCANNED_BYTES = 1 << 20  # text files worth reading for a token; weights and vocabularies are larger


def not_model_reason(relative: str, path: Path | None = None) -> str | None:
    """Why `relative` (a path inside a checkpoint) is not part of the model, or None if it is.

    `path`: the file on disk, read (up to 1 MiB) for a Hugging Face token. Weight files are
    not read: a token cannot hide in them unnoticed by the runtimes that load them.
    """
    parts = relative.split("/")
    hidden = next((part for part in parts if part.startswith(".")), None)
    if hidden and relative not in HUB_DOTFILES:
        return "hidden file" if hidden == parts[-1] else f"in hidden folder {hidden}/"
    name = parts[-1].lower()
    if _KEY_NAMES.search(name):
        return "a private key"
    if _SECRET_NAMES.match(name.split(".")[0]):
        return "named like a secret (token, credentials, password)"
    if path is not None and holds_hf_token(path):
        return "holds a Hugging Face token (hf_...)"
    return None


def holds_hf_token(path: Path) -> bool:
    try:
        if path.stat().st_size > _SCANNED_BYTES or path.name.endswith((".safetensors", ".bin", ".gguf", ".pt")):
            return False
        return HF_TOKEN.search(path.read_bytes()) is not None
    except OSError:
        return False


def model_files(root: Path, skip_dirs: set[str] = frozenset()) -> tuple[list[Path], list[dict]]:
    """(files of the model under `root`, [{path, reason}] left out) for extend to copy.

    A hidden folder is left out whole and named once (`.git/`), not file by file; `skip_dirs`
    are picli's own folders (training state), left out without a word.
    """
    root = Path(root)
    kept: list[Path] = []
    left_out: list[dict] = []
    for directory, dirnames, filenames in os.walk(root):  # never enters a linked folder, as rglob
        base = Path(directory)
        for name in sorted(dirnames):
            relative = (base / name).relative_to(root).as_posix()
            if name in skip_dirs or name.startswith("."):
                dirnames.remove(name)
                if name not in skip_dirs:
                    left_out.append({"path": relative + "/", "reason": "hidden folder"})
        for name in sorted(filenames):
            path = base / name
            if not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            reason = not_model_reason(relative, path)
            if reason:
                left_out.append({"path": relative, "reason": reason})
            else:
                kept.append(path)
    return sorted(kept), left_out


def broken_weight_links(path: Path) -> list[str]:
    """One line per weight file that is a link to nothing (`--weights symlink` outputs link into
    their source; moving or deleting the source breaks them). Without this, a broken link is
    simply not a file, and the checkpoint would be said to have no weights at all."""
    path = Path(path)
    if not path.is_dir():
        return []
    return [f"{link.relative_to(path)} is a link to {os.readlink(link)}, which does not exist (the link is broken)"
            for link in sorted(path.rglob("*"))
            if link.name.endswith(WEIGHT_SUFFIXES) and link.is_symlink() and not link.exists()
            and ".picli" not in link.parts]


def refuse_broken_links(path: Path) -> None:
    broken = broken_weight_links(path)
    if broken:
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise NotACheckpoint(f"{broken[0]}{more}", hint="the checkpoint it links into (picli extend --weights symlink) "
                             "moved or was deleted: put it back, or extend that source again with --weights copy")
