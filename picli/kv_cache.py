"""The KV cache of one sequence, layer by layer: the one estimate inspect, the model card and
the memory checks use.

Only global-attention layers keep every position. A sliding-window layer keeps at most its
window, a chunked-attention layer (Llama 4) at most its chunk, and a layer without attention
(linear attention, Mamba/SSM, MLP only) no keys and values at all: its recurrent state has a
fixed size, whatever the length, and is not counted here. transformers' caches do the same
(cache_utils.py: DynamicSlidingWindowLayer for sliding and chunked layers, LinearAttentionLayer
and DummyLayer for the rest).

Which layer is which comes from config.json as transformers' config classes derive it when
`layer_types` is not written: each family's __init__ (configuration_gemma3.py, _gpt_oss.py,
_qwen2.py, _llama4.py, _qwen3_next.py, _jamba.py, ...) builds the list from a pattern key
and the class's default for it. Pure: a config dict in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import rope
from .errors import NotACheckpoint

# A layer's cache: "global" grows with the sequence, "sliding" and "chunked" stop at their
# window or chunk, "none" holds no keys and values.
KINDS = ("global", "sliding", "chunked", "none")
_KIND_OF = {
    "full_attention": "global", "attention": "global", "hybrid": "global",  # hybrid: attention beside Mamba
    "sliding_attention": "sliding", "hybrid_sliding": "sliding",
    "chunked_attention": "chunked",
    "linear_attention": "none", "mamba": "none", "conv": "none", "moe": "none", "mlp": "none",
}
# Every other layer slides, starting with layer 0 (layer i is global when (i + 1) % pattern == 0),
# and the class's defaults for the pattern and the window when config.json leaves them out.
_ALTERNATING = {  # model_type: (default pattern, pattern keys, default sliding_window)
    "gemma2": (2, (), 4096),
    "gpt_oss": (2, (), 128),
    "gemma3_text": (6, ("sliding_window_pattern", "_sliding_window_pattern"), 4096),
    "cohere2": (4, ("sliding_window_pattern", "_sliding_window_pattern"), 4096),
    "olmo3": (4, (), 4096),
    "gemma3n_text": (5, (), 512),
}
# Sliding layers only with use_sliding_window (default False), and then from layer max_window_layers on.
_QWEN_WINDOWED = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen2_vl_text", "qwen2_5_vl_text")


@dataclass(frozen=True)
class LayerPattern:
    """Each layer's cache kind, with the window and chunk that cap them and where the pattern was read."""

    kinds: tuple[str, ...]
    sliding_window: int | None
    chunk: int | None
    source: str
    unknown: tuple[str, ...] = ()  # layer types picli does not know: counted as global (never too small)

    def positions(self, tokens: int) -> int:
        """Positions kept over all layers for a sequence of `tokens`."""
        caps = {"global": tokens, "sliding": min(tokens, self.sliding_window or tokens),
                "chunked": min(tokens, self.chunk or tokens), "none": 0}
        return sum(caps[kind] for kind in self.kinds)

    def summary(self) -> dict[str, Any]:
        counts = {kind: self.kinds.count(kind) for kind in KINDS}
        return {**counts, "sliding_window": self.sliding_window, "chunk": self.chunk, "source": self.source,
                "unknown": list(self.unknown)}


def _positive(config: dict, key: str) -> int | None:
    value = config.get(key)
    return None if value is None else rope.values.positive_int(value, key)


def _count(config: dict, *keys: str) -> int:
    # The first key present, validated (0 and "2" are damage, not "absent"); 0 if none is.
    present = [key for key in keys if config.get(key) is not None]
    return rope.values.positive_int(config[present[0]], present[0]) if present else 0


def _names(value: Any, key: str, layers: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(kind, str) for kind in value):
        raise NotACheckpoint(f"config.json: {key} must be a list of strings, got {rope.values.show(value)}",
                             hint=f"fix {key} in config.json")
    if layers and len(value) != layers:
        # transformers refuses it too (layer_type_validation): which layer is which is unknown.
        raise NotACheckpoint(f"config.json: {key} lists {len(value)} layers but num_hidden_layers is {layers}",
                             hint=f"fix {key} or num_hidden_layers in config.json")
    return value


def _index_list(value: Any, key: str) -> set[int]:
    if not isinstance(value, list) or not all(type(index) is int and index >= 0 for index in value):
        raise NotACheckpoint(f"config.json: {key} must be a list of layer indices, got {rope.values.show(value)}",
                             hint=f"fix {key} in config.json")
    return set(value)


def _layer_types(config: dict, model_type: str, layers: int, window: int | None) -> tuple[list[str], str]:
    """Each layer's type name as transformers' config class derives it, and where it came from."""
    for key in ("layer_types", "layers_block_type"):
        if config.get(key) is not None:
            return _names(config[key], key, layers), f"from {key}"
    if isinstance(config.get("hybrid_override_pattern"), str):  # Nemotron-H: M Mamba, * attention, - MLP, E MoE
        pattern = config["hybrid_override_pattern"]
        if layers and len(pattern) != layers:
            raise NotACheckpoint(f"config.json: hybrid_override_pattern has {len(pattern)} layers but "
                                 f"num_hidden_layers is {layers}", hint="fix hybrid_override_pattern in config.json")
        return [{"M": "mamba", "*": "full_attention"}.get(char, "mlp") for char in pattern], "from hybrid_override_pattern"
    if config.get("attn_layer_indices") is not None:  # Bamba: attention at these layers, Mamba elsewhere
        indices = _index_list(config["attn_layer_indices"], "attn_layer_indices")
        return ["full_attention" if i in indices else "mamba" for i in range(layers)], "from attn_layer_indices"
    if model_type == "jamba":
        period, offset = _positive(config, "attn_layer_period") or 8, config.get("attn_layer_offset", 4)
        offset = 0 if offset == 0 else rope.values.positive_int(offset, "attn_layer_offset")
        return (["full_attention" if i % period == offset else "mamba" for i in range(layers)],
                f"attention at layer {offset} and every {period}th after it (attn_layer_period, attn_layer_offset)")
    if model_type in _ALTERNATING:
        default, keys, _ = _ALTERNATING[model_type]
        key = next((key for key in keys if config.get(key) is not None), None)
        pattern = _positive(config, key) if key else default
        return (["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)],
                f"1 in {pattern} layers global ({key} {pattern} in config.json)" if key
                else f"1 in {pattern} layers global ({model_type}'s class default)")
    if model_type == "llama4_text":
        # no_rope_layers[i] == 1: the layer has RoPE and chunked attention; 0: global attention without RoPE.
        flags = config.get("no_rope_layers") or None
        interval = _positive(config, "no_rope_layer_interval") or 4
        if flags is not None and not (isinstance(flags, list) and all(flag in (0, 1) for flag in flags)):
            raise NotACheckpoint(f"config.json: no_rope_layers must be a list of 0 and 1, got {rope.values.show(flags)}",
                                 hint="fix no_rope_layers in config.json")
        flags = flags or [int((i + 1) % interval != 0) for i in range(layers)]
        return (["chunked_attention" if flag else "full_attention" for flag in _names_len(flags, layers)],
                "from no_rope_layers" if config.get("no_rope_layers") else f"1 in {interval} layers global "
                "(no_rope_layer_interval)")
    if model_type == "qwen3_next":
        interval = _positive(config, "full_attention_interval") or 4
        return (["linear_attention" if (i + 1) % interval else "full_attention" for i in range(layers)],
                f"1 in {interval} layers with attention (full_attention_interval)")
    if model_type in _QWEN_WINDOWED:
        first = config.get("max_window_layers", 28)
        first = 0 if first == 0 else rope.values.positive_int(first, "max_window_layers")
        return (["sliding_attention" if window and i >= first else "full_attention" for i in range(layers)],
                f"use_sliding_window: sliding from layer {first} on (max_window_layers)" if window
                else "every layer global: use_sliding_window is off")
    if window:  # Mistral v0.1, Phi-3, Starcoder2: one window for every layer
        return ["sliding_attention"] * layers, "sliding_window on every layer"
    if config.get("attention_chunk_size") is not None:
        return ["chunked_attention"] * layers, "attention_chunk_size on every layer"
    return ["full_attention"] * layers, "every layer global"


def _names_len(flags: list, layers: int) -> list:
    if layers and len(flags) != layers:
        raise NotACheckpoint(f"config.json: no_rope_layers lists {len(flags)} layers but num_hidden_layers is {layers}",
                             hint="fix no_rope_layers or num_hidden_layers in config.json")
    return flags


def _sliding_window(config: dict, model_type: str) -> int | None:
    """The window of the sliding layers; None where there are none. Qwen's classes ignore
    sliding_window unless use_sliding_window is true; Gemma's and gpt-oss's fall back to their default."""
    if model_type in _QWEN_WINDOWED or "use_sliding_window" in config:
        if config.get("use_sliding_window") is not True:
            return None
    if "sliding_window" not in config and model_type in _ALTERNATING:
        return _ALTERNATING[model_type][2]
    return _positive(config, "sliding_window")


def layer_pattern(config: dict) -> LayerPattern:
    """Which layers keep which part of the sequence, for config.json (a wrapper's text_config is used)."""
    text = rope.language_config(config)
    model_type = text.get("model_type") if isinstance(text.get("model_type"), str) else ""
    layers = _count(text, "num_hidden_layers", "n_layer")
    window = _sliding_window(text, model_type)
    chunk = _positive(text, "attention_chunk_size") or (8192 if model_type == "llama4_text" else None)
    names, source = _layer_types(text, model_type, layers, window)
    kinds = [_KIND_OF.get(name, "global") for name in names[:layers]]
    # A sliding layer without a window (Qwen with use_sliding_window false) attends globally.
    kinds = ["global" if (kind == "sliding" and not window) or (kind == "chunked" and not chunk) else kind
             for kind in kinds]
    unknown = tuple(sorted({name for name in names if name not in _KIND_OF}))
    return LayerPattern(tuple(kinds), window, chunk, source, unknown)


def kv_cache_bytes(config: dict, tokens: int, bytes_per_value: int = 2) -> int:
    """Keys and values of one sequence of `tokens`: 2 (K and V) x kv_heads x head_dim values
    per position kept, summed over the layers as layer_pattern says. Keys the file leaves out
    are read as transformers reads them (the config class's defaults: rope.fill_defaults)."""
    text, _ = rope.fill_defaults(rope.language_config(config))
    heads = _count(text, "num_key_value_heads", "num_attention_heads")
    # The whole head_dim, even under partial rotary: the cache holds every key channel.
    head_dim = _count(text, "head_dim")
    if not head_dim:
        hidden, all_heads = _count(text, "hidden_size"), _count(text, "num_attention_heads")
        head_dim = hidden // all_heads if hidden and all_heads else 0
    return int(2 * layer_pattern(text).positions(tokens) * heads * head_dim * bytes_per_value)
