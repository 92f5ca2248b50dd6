"""A GGUF's RoPE metadata as the methods see it, and an extension written back as key updates.

llama.cpp reads RoPE from `{arch}.context_length`, `{arch}.rope.freq_base` and
`{arch}.rope.scaling.{type,factor,original_context_length}`; `current_of` turns them (and
the sidecar picli.json's record: ntk leaves no scaling type) into the format-neutral
`Current` the planner plans from, and `updates` renders the planner's `Extension` as the
metadata `gguf_io.rewrite_gguf_metadata` writes. Tensor data is never touched.

`plan` is the one decision on a GGUF: extend applies it, and inspect's "can extend" is
`refusal`, the same plan at a nominal target, so the two never disagree.
Pure: metadata in, data out. No files (gguf_io reads and writes them).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import CannotExtend
from . import values
from .families import GGUF_NO_ROPE, GGUF_PROJECTOR
from .methods import Current, Extension, Names, Request
from .planner import carried_factor, plan as plan_extension, previous_method

# The scaling types llama.cpp reads from metadata (llama_rope_scaling_type: none, linear, yarn,
# longrope); longrope's factors live in tensors, so only these two carry a whole method.
GGUF_SCALING_TYPES = ("linear", "yarn")
# What llama.cpp uses for yarn keys no picli GGUF writes (src/llama-hparams.h: yarn_beta_fast
# 32, yarn_beta_slow 1): a scaling with these values is expressed exactly without them.
LLAMA_CPP_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}
# A shard's file name as llama.cpp's gguf-split writes it (llama_split_path: "%s-%05d-of-%05d.gguf").
SPLIT_NAME = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.gguf$")


def names_for(architecture: str) -> Names:
    return Names(what="GGUF", window=f"{architecture}.context_length",
                 original=f"{architecture}.rope.scaling.original_context_length",
                 factor=f"the GGUF's {architecture}.rope.scaling.factor", scaling=f"{architecture}.rope.scaling.type",
                 rotary_dim=f"{architecture}.rope.dimension_count")


def current_of(architecture: str, metadata: dict, settings: Any, record: dict | None) -> Current:
    """A GGUF's RoPE, format-neutral; `settings` is gguf_io.rope_settings(info) (validated)."""
    record = record or {}
    previous = previous_method("default" if settings.scaling_type == "none" else settings.scaling_type, record)
    scaling = {"rope_type": previous, "factor": settings.factor,
               "original_max_position_embeddings": settings.original_context_length,
               "attention_factor": metadata.get(f"{architecture}.rope.scaling.yarn_attn_factor")}
    window = settings.context_length
    return Current(
        scaling_type=previous,
        factor=carried_factor(previous, record, settings.factor),
        theta=settings.freq_base, rotary_dim=_rotary_dim(architecture, metadata, settings), window=window,
        window_from_default=window is None, original_window=settings.original_context_length,
        window_includes_factor=(f"the GGUF's {architecture}.context_length ({window}) is its window after that "
                                "factor (the converter writes max_position_embeddings there)" if window else None),
        scaling={key: value for key, value in scaling.items() if value is not None} if previous != "default" else {},
        names=names_for(architecture), record=record)


def _rotary_dim(architecture: str, metadata: dict, settings: Any) -> int | None:
    """d of ntk's s^(d/(d-2)): rope.dimension_count, else the head dimension; None when neither is stated."""
    if settings.dimension_count is not None:
        return settings.dimension_count
    return attention_shape(architecture, metadata)["head_dim"] or None


def attention_shape(architecture: str, metadata: dict, where: str = "GGUF metadata") -> dict[str, int]:
    """block_count, head_count, head_count_kv and the head dimension (key_length, else
    embedding_length / head_count), each validated; 0 where the GGUF does not say.

    A count may be a per-layer list: hybrid models list 0 for their layers without attention,
    so the attention layers' count is the largest."""
    def count(suffix: str) -> int:
        key = f"{architecture}.{suffix}"
        value = metadata.get(key)
        if isinstance(value, list) and value and all(type(item) is int and item >= 0 for item in value):
            value = max(value)
        return 0 if value is None else values.positive_int(value, key, where)

    heads = count("attention.head_count")
    embedding = count("embedding_length")
    head_dim = count("attention.key_length") or (embedding // heads if embedding and heads else 0)
    return {"layers": count("block_count"), "heads": heads, "kv_heads": count("attention.head_count_kv") or heads,
            "head_dim": head_dim}


def split_position(metadata: dict) -> tuple[int, int] | None:
    """(shard number from 1, shard count) of a split GGUF (llama.cpp's gguf-split writes split.no
    from 0 and split.count into every shard); None for a one-file GGUF."""
    count, number = metadata.get("split.count"), metadata.get("split.no", 0)
    if type(count) is not int or count <= 1:
        return None
    return (number + 1 if type(number) is int and 0 <= number < count else 1), count


def split_names(file_name: str, count: int) -> list[str] | None:
    """Every shard's file name as llama.cpp names them (PREFIX-00001-of-00003.gguf, ...), from
    one shard's name; None when the name is not in that form."""
    match = SPLIT_NAME.match(file_name)
    if not match:
        return None
    return [f"{match.group(1)}-{number:05d}-of-{count:05d}.gguf" for number in range(1, count + 1)]


def merge_hint(file_name: str, count: int) -> str:
    """How to make one file of a split GGUF, with its real names when they are llama.cpp's."""
    names = split_names(file_name, count)
    first, merged = (names[0], f"{SPLIT_NAME.match(names[0]).group(1)}.gguf") if names else \
        (f"NAME-00001-of-{count:05d}.gguf", "NAME.gguf")
    return f"merge the shards first with llama.cpp: llama-gguf-split --merge {first} {merged}, then extend {merged}"


def refuse_model(architecture: str, metadata: dict, settings: Any, where: str = "GGUF metadata",
                 file_name: str | None = None) -> None:
    """Raise CannotExtend when no request could extend this GGUF: what it is, not what was asked."""
    if architecture in GGUF_PROJECTOR:
        raise CannotExtend(f"this GGUF is a multimodal projector (mmproj, architecture {architecture}): an image "
                           "encoder with no text positions", hint="extend the language model's GGUF; the mmproj "
                           "file works with it unchanged")
    if architecture in GGUF_NO_ROPE or not settings.has_rope:
        raise CannotExtend(f"this GGUF ({architecture}) has no RoPE metadata ({architecture}.rope.*), so there is "
                           "nothing to interpolate", hint="Position Interpolation applies only to RoPE models")
    sections = metadata.get(f"{architecture}.rope.dimension_sections")
    if sections is not None:
        # The rule the model's config.json meets (families.refusal): one model, one answer,
        # whichever file of it is extended.
        listed = list(sections) if isinstance(sections, (list, tuple)) else sections
        raise CannotExtend(f"this GGUF ({architecture}) uses M-RoPE ({architecture}.rope.dimension_sections "
                           f"{listed}): its position ids have several sections (time, height, width), and picli "
                           "refuses it as it refuses the model's config.json",
                           hint="picli extends single-window RoPE language models; use the model's own "
                           "long-context settings (docs/runtimes.md, \"M-RoPE and yarn\")")
    split = split_position(metadata)
    if split:
        # One shard rewritten alone would still say split.count and no longer match its siblings.
        raise CannotExtend(f"this is a split GGUF ({split[1]} shards); picli extends one-file GGUFs",
                           hint=merge_hint(file_name or "", split[1]))
    head_dim = attention_shape(architecture, metadata, where)["head_dim"]
    if settings.dimension_count is not None and head_dim and settings.dimension_count > head_dim:
        raise CannotExtend(f"this GGUF is inconsistent: {architecture}.rope.dimension_count "
                           f"{settings.dimension_count} exceeds the head dimension {head_dim}, so RoPE would "
                           "rotate channels a head does not have", hint="convert the model again with llama.cpp")


def plan(architecture: str, metadata: dict, settings: Any, record: dict | None, method: str,
         request: Request, file_name: str | None = None) -> tuple[Extension, dict[str, tuple[str, Any]]]:
    """Every check on a GGUF, then the planner: the extension and the metadata keys it writes."""
    refuse_model(architecture, metadata, settings, f"{file_name or 'GGUF'} (GGUF metadata)", file_name)
    current = current_of(architecture, metadata, settings, record)
    extension = plan_extension(current, method, request)
    return extension, updates(architecture, settings, extension)


def refusal(architecture: str, metadata: dict, settings: Any, record: dict | None,
            recorded_window: int | None = None, file_name: str | None = None) -> CannotExtend | None:
    """What `picli extend` (linear, the default) says of this GGUF: None, or its refusal."""
    window = max(settings.context_length or 0, recorded_window or 0) or 4096
    request = Request(min(2 * window, values.MAX_WINDOW), recorded_window=recorded_window)
    try:
        plan(architecture, metadata, settings, record, "linear", request, file_name)
    except CannotExtend as exc:
        return exc
    return None


def updates(architecture: str, settings: Any, extension: Extension) -> dict[str, tuple[str, Any]]:
    """The metadata keys that make the GGUF say `extension`: {key: (GGUF type, value)}."""
    def key(suffix: str) -> str:
        return f"{architecture}.{suffix}"

    changed: dict[str, tuple[str, Any]] = {key("context_length"): ("UINT32", extension.window_after)}
    if extension.scaling is None:
        changed[key("rope.freq_base")] = ("FLOAT32", extension.theta)
        if settings.scaling_type != "none":
            changed[key("rope.scaling.type")] = ("STRING", "none")
            changed[key("rope.scaling.factor")] = ("FLOAT32", 1.0)
        return changed
    scaling = dict(extension.scaling)
    kind, factor = scaling.pop("rope_type"), scaling.pop("factor")
    original = scaling.pop("original_max_position_embeddings", extension.original_window)
    unexpressed = sorted(name for name, value in scaling.items() if LLAMA_CPP_DEFAULTS.get(name) != value)
    if kind not in GGUF_SCALING_TYPES or unexpressed:
        raise CannotExtend(f"--method {extension.method} has no GGUF metadata form"
                           + (f" ({', '.join(unexpressed)})" if unexpressed else ""),
                           hint="extend the safetensors checkpoint and convert it with llama.cpp")
    changed[key("rope.scaling.type")] = ("STRING", kind)
    changed[key("rope.scaling.factor")] = ("FLOAT32", factor)
    changed[key("rope.scaling.original_context_length")] = ("UINT32", original)
    if extension.theta != settings.freq_base:  # --force replaced ntk: its theta goes back
        changed[key("rope.freq_base")] = ("FLOAT32", extension.theta)
    return changed
