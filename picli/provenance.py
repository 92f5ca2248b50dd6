"""picli.json beside every output, and .picli/last.json in the working directory.

picli.json is the checkpoint's record: where it came from, what changed, which versions
did it, and (later) the fine-tune and verification records, so `picli push` can write a
model card that tells the truth. last.json remembers the newest output so that
`picli verify` / `picli push` work without naming MODEL.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

from . import __version__
from .errors import ModelNotFound
from .files import atomic_write_json

RECORD = "picli.json"
LAST = Path(".picli") / "last.json"


def record_path(output: Path) -> Path:
    """A directory keeps picli.json inside; a single file (GGUF) gets a sidecar."""
    return output / RECORD if output.is_dir() else output.with_name(output.name + "." + RECORD)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def versions() -> dict:
    found = {"picli": __version__, "python": sys.version.split()[0]}
    for package in ("transformers", "torch", "huggingface_hub", "gguf"):
        try:
            from importlib.metadata import version

            found[package] = version(package)
        except Exception:  # not installed: simply not recorded
            pass
    return found


def read_record(source: Path) -> dict:
    path = record_path(source)
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def remember_last(output: Path, command: str, cwd: Path | None = None) -> Path:
    path = (cwd or Path.cwd()) / LAST
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"path": str(output.resolve()), "command": command, "time": now()})
    return path


def last_output(cwd: Path | None = None) -> Path:
    """The checkpoint the last `picli extend` wrote here; fails clearly when there is none."""
    path = (cwd or Path.cwd()) / LAST
    try:
        output = Path(json.loads(path.read_text())["path"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ModelNotFound("no MODEL given and no checkpoint recorded in this directory",
                            hint="pass MODEL, or run `picli extend MODEL --to N` here first") from None
    if not output.exists():
        raise ModelNotFound(f"the last checkpoint picli wrote here, {output}, no longer exists",
                            hint="pass MODEL explicitly")
    return output
