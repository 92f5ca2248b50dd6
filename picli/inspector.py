"""`picli inspect`: what a checkpoint is and what each runtime will do with it.

Reads config files, safetensors headers and GGUF metadata only: weights are never loaded,
so inspecting a 70B checkpoint takes as long as a 135M one. The runtime predictions are
picli.rope's rules (tests hold them against the installed transformers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import rope
from .checkpoint import (Checkpoint, TensorSummary, length_setting, read_config, read_json_file, resolve,
                         tensor_summary)
from .errors import CannotExtend
from .events import Events
from .modeling import kv_cache_bytes
from .provenance import RecordError, read_record, recorded_window

KV_MULTIPLES = (1, 2, 4, 8)
KV_BYTES_PER_VALUE = 2  # the usual fp16/bf16 KV cache


@dataclass(frozen=True)
class Inspection:
    model: str
    path: str
    format: str  # "transformers" or "gguf"
    resolved_from: str | None
    architecture: str | None
    model_type: str
    parameters: int | None
    dtypes: dict[str, int]
    files: list[str]
    shards: int
    size_bytes: int
    rope: dict[str, Any]
    tokenizer_max_length: int | None
    can_extend: bool
    cannot_extend_reason: str | None
    kv_cache_bytes: dict[int, int]
    runtimes: dict[str, dict]
    provenance: dict | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kv_cache_bytes"] = {str(window): size for window, size in self.kv_cache_bytes.items()}
        return data


def inspect_model(model: str, on_event: Events = None) -> Inspection:
    checkpoint = resolve(model, need_weights=False, on_event=on_event)
    if checkpoint.kind == "gguf":
        return _inspect_gguf(model, checkpoint)
    return _inspect_hf(model, checkpoint)


def _inspect_hf(model: str, checkpoint: Checkpoint) -> Inspection:
    path = checkpoint.path
    config = read_config(path)
    summary = tensor_summary(path)
    warnings = []
    if not summary.files and checkpoint.source.get("repo"):
        summary = _hub_tensor_summary(checkpoint, summary, warnings)
    if summary.missing_shards:
        warnings.append(f"shards named in the index are missing: {', '.join(summary.missing_shards)}")
    if summary.unread:
        warnings.append(f"parameters not counted for pickle weights (never unpickled): {', '.join(summary.unread)}")
    record = _read_record(path, warnings)
    reason = rope.refusal(config)
    state = None if reason else rope.read_state(config)
    if state and state.scaling_type in rope.OTHER_SCHEMES:
        reason = CannotExtend(f"already uses {state.scaling_type} scaling; linear PI on top is a different scheme "
                              "(--force replaces it)")
    tokenizer = read_json_file(path / "tokenizer_config.json") or {}
    try:
        max_length = length_setting(tokenizer.get("model_max_length"))  # None: absent or "no limit"
    except ValueError as exc:
        max_length = None
        warnings.append(f"tokenizer_config.json model_max_length {exc}: tokenizers may fail or truncate; "
                        "set it to the window")
    rope_view: dict[str, Any] = {}
    runtimes: dict[str, dict] = {}
    kv: dict[int, int] = {}
    if state:
        rope_view = {
            "type": state.scaling_type, "factor": state.factor, "theta": state.theta, "head_dim": state.head_dim,
            "rotary_dim": state.rotary_dim, "partial_rotary_factor": state.partial_rotary_factor,
            "window": state.window, "window_from_default": state.window_from_default, "nested": state.nested,
            "local_theta": state.local_theta, "rope_scaling": state.rope_scaling,
            "rope_parameters": state.rope_parameters, "disagreement": state.disagreement,
        }
        if state.disagreement:
            warnings.append(state.disagreement)
        if state.window_from_default:
            warnings.append(f"config.json has no max_position_embeddings; using the family default {state.window}")
        if max_length and int(max_length) < state.window:
            warnings.append(f"tokenizer model_max_length {int(max_length)} is below the window {state.window}")
        kv = {state.window * multiple: kv_cache_bytes(config, state.window * multiple, KV_BYTES_PER_VALUE)
              for multiple in KV_MULTIPLES}
        recorded = recorded_window(record)
        runtimes = {
            "transformers5": rope.predict_transformers5(config),
            "transformers4": rope.predict_transformers4(config),
            "vllm": rope.predict_vllm(config, recorded),
            "llama_cpp": rope.predict_llama_cpp(config, recorded),
        }
    return Inspection(
        model=model, path=str(path), format="transformers", resolved_from=checkpoint.resolved_from,
        architecture=(config.get("architectures") or [None])[0], model_type=config.get("model_type", "?"),
        parameters=summary.parameter_count, dtypes=summary.dtypes, files=summary.files, shards=summary.shards,
        size_bytes=summary.total_bytes, rope=rope_view,
        tokenizer_max_length=max_length,
        can_extend=reason is None, cannot_extend_reason=reason.message if reason else None,
        kv_cache_bytes=kv, runtimes=runtimes, provenance=_provenance(record), warnings=warnings,
    )


def _hub_tensor_summary(checkpoint: Checkpoint, local: TensorSummary, warnings: list[str]) -> TensorSummary:
    """Weights not downloaded: ask the Hub for the safetensors headers (range requests only)."""
    from huggingface_hub import constants, get_safetensors_metadata

    if constants.HF_HUB_OFFLINE:
        warnings.append("weights are not in the local cache (offline): parameter count unknown")
        return local
    try:
        metadata = get_safetensors_metadata(checkpoint.source["repo"], revision=checkpoint.source["revision"])
    except Exception as exc:  # an optional detail: the rest of the report stands without it
        warnings.append(f"could not read the weights' headers from the Hub ({type(exc).__name__})")
        return local
    dtypes: dict[str, int] = {}
    for file_metadata in metadata.files_metadata.values():
        for info in file_metadata.tensors.values():
            dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
    return TensorSummary(parameter_count=sum(metadata.parameter_count.values()), dtypes=dtypes,
                         files=sorted(metadata.files_metadata), total_bytes=0,
                         shards=len(metadata.files_metadata))


def _read_record(path: Path, warnings: list[str]) -> dict:
    """picli.json, or {} with a warning when it is broken: inspect reports and should not refuse
    over a record; what config.json says is still true (extend, card and push do refuse)."""
    try:
        return read_record(path)
    except RecordError as exc:
        warnings.append(f"{exc.message}; the record is ignored here ({exc.hint})")
        return {}


def _provenance(record: dict) -> dict | None:
    if not record.get("rope"):
        return None
    return {"base_model": record.get("base_model"), "created": record.get("created"), "rope": record["rope"],
            "command": record.get("command")}


def _inspect_gguf(model: str, checkpoint: Checkpoint) -> Inspection:
    from .gguf_io import read_gguf

    info = read_gguf(checkpoint.path)
    arch, meta = info.architecture, info.metadata
    get = lambda suffix, default=None: meta.get(f"{arch}.{suffix}", default)  # noqa: E731
    heads = get("attention.head_count") or 0
    heads = heads[0] if isinstance(heads, list) else heads
    kv_heads = get("attention.head_count_kv", heads)
    kv_heads = kv_heads[0] if isinstance(kv_heads, list) else kv_heads
    head_dim = get("attention.key_length") or (get("embedding_length", 0) // heads if heads else 0)
    has_rope = any(key.startswith(f"{arch}.rope.") for key in meta)
    warnings: list[str] = []
    record = _read_record(checkpoint.path, warnings)
    reason = None
    if arch in rope.GGUF_NO_ROPE or not has_rope:
        reason = f"this GGUF ({arch}) has no RoPE metadata ({arch}.rope.*)"
    scaling_type = str(get("rope.scaling.type", "none"))
    factor = float(get("rope.scaling.factor", 1.0)) if scaling_type != "none" else 1.0
    window = get("context_length")
    rotary_dim = get("rope.dimension_count", head_dim)
    rope_view = {
        "type": "default" if scaling_type == "none" else scaling_type, "factor": factor,
        "theta": float(get("rope.freq_base", 10000.0)), "head_dim": head_dim, "rotary_dim": rotary_dim,
        "partial_rotary_factor": (rotary_dim / head_dim) if head_dim else 1.0, "window": window,
        "original_context_length": get("rope.scaling.original_context_length"),
    } if has_rope else {}
    layers = get("block_count", 0)
    kv = {}
    if window and has_rope:
        shape = {"num_hidden_layers": layers, "num_key_value_heads": kv_heads, "head_dim": head_dim}
        kv = {window * m: kv_cache_bytes(shape, window * m, KV_BYTES_PER_VALUE) for m in KV_MULTIPLES}
    flags = f"-c {window}"
    runtimes = {}
    if has_rope:
        runtimes = {
            "llama_cpp": {"context_length": window, "rope_scaling": rope_view["type"], "factor": factor,
                          "freq_scale": 1.0 / factor, "flags": flags},
            # transformers' GGUF loader maps context_length and freq_base but not rope.scaling.*.
            "transformers5": {"theta": rope_view["theta"], "rope_type": "default", "factor": 1.0,
                              "notes": ["transformers' GGUF loader ignores rope.scaling.*: load the extended "
                                        "safetensors checkpoint instead"] if factor != 1.0 else []},
        }
    return Inspection(
        model=model, path=str(checkpoint.path), format="gguf", resolved_from=checkpoint.resolved_from,
        architecture=arch, model_type=arch, parameters=info.parameter_count, dtypes=info.tensor_types,
        files=[checkpoint.path.name], shards=1, size_bytes=info.file_size, rope=rope_view,
        tokenizer_max_length=None, can_extend=reason is None, cannot_extend_reason=reason, kv_cache_bytes=kv,
        runtimes=runtimes, provenance=_provenance(record), warnings=warnings,
    )

