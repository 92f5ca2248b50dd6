"""What the installed transformers fills in for the keys a config.json leaves out.

Official files often list only what differs from their config class's defaults (Gemma 3's
`text_config` gives no head_dim or num_attention_heads; LLaVA 1.5's gives no hidden_size).
transformers builds the class from the keys that are there and takes the class's defaults
for the rest, some of them derived (LlamaConfig's head_dim is hidden_size //
num_attention_heads, Gemma3TextConfig's is 256 whatever the hidden size). So picli builds
the same class from the file's own shape keys and reads what it holds: exactly what
transformers will run. transformers (and torch, which its config module imports) is
imported only when a key is missing, so reading a complete config costs nothing.
picli/rope/families.py asks through `lookup`; picli's family table is the fallback where
the installed transformers has no class for the model_type.
"""

from __future__ import annotations

import functools
from typing import Any

from .rope.families import SHAPE_KEYS, use_class_defaults


def lookup(model_type: str, given: dict[str, int]) -> tuple[dict[str, Any], str] | None:
    """(the class's values for the shape keys, max_position_embeddings and rope_theta, built from `given` (the file's own shape keys,
    already validated), and where they come from), or None when the installed transformers
    has no config class for `model_type` (or cannot build it from these keys)."""
    return _lookup(model_type, tuple(sorted(given.items())))


@functools.lru_cache(maxsize=64)
def _lookup(model_type: str, given: tuple) -> tuple[dict[str, Any], str] | None:
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    if model_type not in CONFIG_MAPPING:
        return None
    cls = CONFIG_MAPPING[model_type]
    try:
        config = cls(**dict(given))
    except Exception:  # a class that needs more than shape keys: its defaults are not picli's to guess
        return None
    found = {key: getattr(config, key, None) for key in SHAPE_KEYS + ("max_position_embeddings",)}
    found["rope_theta"] = _theta(config)
    return ({key: value for key, value in found.items() if value is not None},
            f"{cls.__name__}, transformers {transformers.__version__}")


def _theta(config) -> float | None:
    """The class's theta in either schema (5.x rope_parameters, flat or per layer type; 4.x rope_theta)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params = params.get("full_attention", params)
        if isinstance(params, dict) and params.get("rope_theta") is not None:
            return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if isinstance(theta, (int, float)) and not isinstance(theta, bool) else None


use_class_defaults(lookup)
