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
from .errors import CannotExtend, NotACheckpoint
from .events import Events
from .kv_cache import kv_cache_bytes, layer_pattern
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
    # Which layers the KV cache grows in: counts per kind (global, sliding, chunked, none), window, chunk.
    kv_layers: dict[str, Any] | None
    runtimes: dict[str, dict]
    provenance: dict | None
    warnings: list[str] = field(default_factory=list)
    # inspect --check: ok, and every place a runtime reads the checkpoint differently from 5.x
    check: dict = field(default_factory=lambda: {"ok": True, "disagreements": []})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kv_cache_bytes"] = {str(window): size for window, size in self.kv_cache_bytes.items()}
        return data


def inspect_model(model: str, on_event: Events = None) -> Inspection:
    checkpoint = resolve(model, need_weights=False, on_event=on_event)
    if checkpoint.kind == "gguf":
        return _inspect_gguf(model, checkpoint)
    return _inspect_hf(model, checkpoint)


def _extend_decision(config: dict, record: dict, warnings: list[str]):
    """(why `picli extend` would refuse, or None; the RoPE state; its kind), as extend decides:
    the architecture's refusal, an unknown scaling type, or a scheme linear PI cannot stack on."""
    reason = rope.refusal(config)
    yarn_reason = rope.refusal(config, "yarn")
    if reason and yarn_reason and yarn_reason.message != reason.message:  # M-RoPE: yarn has a reason of its own
        warnings.append(f"--method yarn: {yarn_reason.message}")
    state = None if reason else rope.read_state(config)
    kind = rope.rope_kind(config, state) if state else None
    if state and kind not in rope.KNOWN_TYPES and kind != "mrope":
        reason = CannotExtend(f"unknown RoPE scaling type {kind!r}")
    elif state and kind != "mrope":
        # What `picli extend` (linear, the default) would say; ntk is known only from picli.json.
        stacking = rope.stacking_refusal(rope.previous_method(state.scaling_type, record.get("rope")), "linear")
        reason = CannotExtend(f"{stacking.message} ({stacking.hint})") if stacking else None
    return reason, state, kind


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
    reason, state, kind = _extend_decision(config, record, warnings)
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
    kv_layers = None
    check = {"ok": True, "disagreements": []}
    if state:
        recorded = recorded_window(record)
        rope_view = {
            "type": kind, "effective_window": rope.effective_window(config, recorded), "factor": state.factor, "theta": state.theta, "head_dim": state.head_dim,
            "rotary_dim": state.rotary_dim, "partial_rotary_factor": state.partial_rotary_factor,
            "window": state.window, "window_from_default": state.window_from_default, "nested": state.nested,
            "local_theta": state.local_theta, "rope_scaling": state.rope_scaling,
            "rope_parameters": state.rope_parameters, "disagreement": state.disagreement,
            # A multimodal wrapper: the RoPE shown is its language model's (text_config).
            "language_model": f"text_config ({state.model_type})" if state.wrapper else None,
            # Keys the file leaves out, as transformers fills them (the class's defaults).
            "defaults": state.defaults,
            # SmolLM3: the layers without RoPE (NoPE) have nothing for a RoPE method to extend.
            "rope_layers": rope.rope_layers(rope.language_config(config)),
        }
        if state.wrapper:
            warnings.append(f"{state.wrapper} is multimodal: the RoPE shown is its language model's (text_config, "
                            f"{state.model_type}); extend changes only that, the vision tower is untouched")
        family = rope.family_of(rope.language_config(config))
        if family.shared_sliding and (rope.language_config(config).get("sliding_window")
                                      or state.model_type == "gemma2"):
            warnings.append(f"{state.model_type} has one RoPE config for its sliding-window and global layers: "
                            "PI scales the sliding layers too")
        if state.disagreement:
            warnings.append(state.disagreement)
        if state.window_from_default:
            warnings.append(f"config.json has no max_position_embeddings; using the family default {state.window}")
        if max_length and int(max_length) < state.window:
            warnings.append(f"tokenizer model_max_length {int(max_length)} is below the window {state.window}")
        kv = {state.window * multiple: kv_cache_bytes(config, state.window * multiple, KV_BYTES_PER_VALUE)
              for multiple in KV_MULTIPLES}
        pattern = layer_pattern(config)
        kv_layers = pattern.summary()
        if pattern.unknown:
            warnings.append(f"layer type(s) {', '.join(pattern.unknown)} unknown to picli: counted as global "
                            "attention in the KV-cache estimate (an upper bound)")
        runtimes = rope.predict_all(config, recorded)
        check = rope.check(runtimes, state.disagreement)
    return Inspection(
        model=model, path=str(path), format="transformers", resolved_from=checkpoint.resolved_from,
        architecture=_architecture(config), model_type=config.get("model_type", "?"),
        parameters=summary.parameter_count, dtypes=summary.dtypes, files=summary.files, shards=summary.shards,
        size_bytes=summary.total_bytes, rope=rope_view,
        tokenizer_max_length=max_length,
        can_extend=reason is None, cannot_extend_reason=reason.message if reason else None,
        kv_cache_bytes=kv, kv_layers=kv_layers, runtimes=runtimes, provenance=_provenance(record),
        warnings=warnings, check=check,
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
    from .gguf_io import read_gguf, rope_settings

    warnings: list[str] = []
    first, shards, count = _gguf_shards(checkpoint.path, warnings)
    info = read_gguf(first)
    arch, meta = info.architecture, info.metadata
    settings = rope_settings(info)
    shape = rope.gguf.attention_shape(arch, meta, f"{first.name} (GGUF metadata)")
    head_dim, has_rope = shape["head_dim"], settings.has_rope
    record = _read_record(checkpoint.path, warnings)
    # The decision extend makes (rope.gguf.plan), at a nominal target: the two never disagree.
    refusal = rope.gguf.refusal(arch, meta, settings, record.get("rope"), recorded_window(record), first.name)
    reason = None if refusal is None else refusal.message + (f" ({refusal.hint})" if refusal.hint else "")
    if settings.dimension_count is not None and head_dim and settings.dimension_count > head_dim:
        warnings.append(f"inconsistent GGUF: {arch}.rope.dimension_count {settings.dimension_count} exceeds the "
                        f"head dimension {head_dim}; llama.cpp would rotate channels a head does not have")
    window = settings.context_length
    rotary_dim = settings.dimension_count if settings.dimension_count is not None else head_dim
    rope_view = {
        "type": "default" if settings.scaling_type == "none" else settings.scaling_type, "factor": settings.factor,
        "theta": settings.freq_base, "head_dim": head_dim, "rotary_dim": rotary_dim,
        "partial_rotary_factor": (rotary_dim / head_dim) if head_dim else 1.0, "window": window,
        "effective_window": window, "original_context_length": settings.original_context_length,
        "rope_tensors": list(info.rope_tensors),
    } if has_rope else {}
    kv, kv_layers = {}, None
    if window and has_rope and shape["layers"] and shape["kv_heads"] and head_dim:
        # Counts the GGUF does not give stay absent (a 0 here would be refused as damage).
        config = {key: shape[name] for key, name in (("num_hidden_layers", "layers"),
                                                     ("num_key_value_heads", "kv_heads"), ("head_dim", "head_dim"))
                  if shape[name]}
        kv = {window * m: kv_cache_bytes(config, window * m, KV_BYTES_PER_VALUE) for m in KV_MULTIPLES}
        kv_layers = layer_pattern(config).summary()
        if f"{arch}.attention.sliding_window" in meta:
            # llama.cpp fixes which layers slide per architecture in its code, not in the metadata.
            kv_layers["source"] = ("an upper bound: the GGUF has sliding-window layers, but which ones is not "
                                   "in its metadata, so every layer is counted at full length")
    runtimes = rope.predict_gguf(arch, meta, info.rope_tensors) if has_rope else {}
    parameters = sum(shard.parameter_count for shard in shards)
    dtypes: dict[str, int] = {}
    for shard in shards:
        for name, number in shard.tensor_types.items():
            dtypes[name] = dtypes.get(name, 0) + number
    return Inspection(
        model=model, path=str(checkpoint.path), format="gguf", resolved_from=checkpoint.resolved_from,
        architecture=arch, model_type=arch, parameters=parameters, dtypes=dtypes,
        files=[shard.path.name for shard in shards], shards=count, size_bytes=sum(s.file_size for s in shards),
        rope=rope_view, tokenizer_max_length=None, can_extend=reason is None, cannot_extend_reason=reason,
        kv_cache_bytes=kv, kv_layers=kv_layers, runtimes=runtimes, provenance=_provenance(record),
        warnings=warnings, check=rope.check(runtimes),
    )


def _gguf_shards(path: Path, warnings: list[str]) -> tuple[Path, list, int]:
    """The file holding the model's metadata (shard 1 of a split GGUF, else the file itself),
    the shards found (gguf_io.GGUFShard), and how many there should be."""
    from .gguf_io import read_shard

    given = read_shard(path)
    split = rope.gguf.split_position(given.split)
    if split is None:
        return path, [given], 1
    number, count = split
    names = rope.gguf.split_names(path.name, count)
    if names is None:  # renamed: the other shards cannot be found by name
        if number != 1:
            raise NotACheckpoint(f"{path.name} is shard {number} of {count} of a split GGUF, and its name is not "
                                 "llama.cpp's (NAME-00001-of-NNNNN.gguf), so shard 1 cannot be found",
                                 hint="give the first shard, which holds the model's metadata")
        warnings.append(f"{path.name} is shard 1 of {count} of a split GGUF; its other shards cannot be found by "
                        "name: parameters and size are this shard's only")
        return path, [given], count
    missing = [name for name in names if not (path.parent / name).is_file()]
    if names[0] in missing:
        raise NotACheckpoint(f"{path.name} is shard {number} of {count} of a split GGUF, and shard 1 ({names[0]}), "
                             "which holds the model's metadata, is missing", hint=f"download {names[0]} beside it")
    warnings.append(f"{path.name} is shard {number} of {count} of a split GGUF"
                    + (f": the model is read from shard 1 ({names[0]})" if number != 1 else "")
                    + (f"; missing: {', '.join(missing)} (parameters and size count the shards found)" if missing
                       else f"; all {count} shards found"))
    shards = [given if name == path.name else read_shard(path.parent / name) for name in names if name not in missing]
    return path.parent / names[0], shards, count


def _architecture(config: dict) -> str | None:
    """The first of config.json's `architectures`; None when the field is absent or not a list of names."""
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None
