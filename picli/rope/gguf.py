"""A GGUF's RoPE metadata as the methods see it, and an extension written back as key updates.

llama.cpp reads RoPE from `{arch}.context_length`, `{arch}.rope.freq_base` and
`{arch}.rope.scaling.{type,factor,original_context_length}`; `current_of` turns them (and
the sidecar picli.json's record: ntk leaves no scaling type) into the format-neutral
`Current` the planner plans from, and `updates` renders the planner's `Extension` as the
metadata `gguf_io.rewrite_gguf_metadata` writes. Tensor data is never touched.
Pure: metadata in, data out. No files (gguf_io reads and writes them).
"""

from __future__ import annotations

from typing import Any

from ..errors import CannotExtend
from .methods import Current, Extension, Names
from .planner import carried_factor, previous_method

# The scaling types llama.cpp reads from metadata (llama_rope_scaling_type: none, linear, yarn,
# longrope); longrope's factors live in tensors, so only these two carry a whole method.
GGUF_SCALING_TYPES = ("linear", "yarn")
# What llama.cpp uses for yarn keys no picli GGUF writes (src/llama-hparams.h: yarn_beta_fast
# 32, yarn_beta_slow 1): a scaling with these values is expressed exactly without them.
LLAMA_CPP_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}


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
    heads = metadata.get(f"{architecture}.attention.head_count")
    head_dim = metadata.get(f"{architecture}.attention.key_length")
    if head_dim is None and isinstance(heads, int) and heads > 0 and f"{architecture}.embedding_length" in metadata:
        head_dim = int(metadata[f"{architecture}.embedding_length"]) // heads
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        return None
    return head_dim


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
