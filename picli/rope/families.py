"""The RoPE family table: how each model_type stores RoPE in config.json, and which
architectures cannot take Position Interpolation at all (and why, in the words the error prints).

A family's entry holds only facts about the family (its defaults, its legacy key names, the
first transformers release that applies scaling to it); how a config is read and written is
in schema.py, the methods' math in methods.py. Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CannotExtend
from . import values


@dataclass(frozen=True)
class Family:
    """How one model_type stores its RoPE settings in config.json."""

    # Key of the legacy (transformers 4.x) scaling dict's type: most families read "type";
    # a few newer config classes index ["rope_type"] directly and fail on "type".
    legacy_type_key: str = "type"
    theta_default: float = 10000.0
    window_default: int | None = None
    # Top-level key holding partial rotary, and the family default when the key is absent.
    partial_key: str | None = None
    partial_default: float = 1.0
    # First transformers 4.x release whose modeling code applies `rope_scaling` for this
    # family; older releases accept the key and silently ignore it.
    min_transformers: str = "4.31.0"
    # Per-layer-type RoPE (Gemma 3): only full-attention layers are interpolated.
    nested: bool = False
    # Extra top-level theta key the family's 4.x config reads instead of rope_theta.
    legacy_theta_key: str | None = None
    local_theta_key: str | None = None


FAMILIES: dict[str, Family] = {
    "llama": Family(window_default=2048),
    "mistral": Family(min_transformers="4.48.0"),
    "mixtral": Family(theta_default=1e6, min_transformers="4.48.0"),
    "qwen2": Family(min_transformers="4.45.0"),
    "qwen2_moe": Family(min_transformers="4.45.0"),
    "qwen3": Family(min_transformers="4.51.0"),  # first release with Qwen3
    "qwen3_moe": Family(min_transformers="4.51.0"),
    "qwen3_next": Family(legacy_type_key="rope_type", min_transformers="4.57.0"),
    "gemma": Family(min_transformers="4.48.0"),
    "gemma2": Family(min_transformers="4.48.0"),
    "gemma3_text": Family(
        legacy_type_key="rope_type", theta_default=1e6, min_transformers="4.50.0",
        nested=True, local_theta_key="rope_local_base_freq",
    ),
    "gemma3n_text": Family(
        legacy_type_key="rope_type", theta_default=1e6, min_transformers="4.53.0",
        nested=True, local_theta_key="rope_local_base_freq",
    ),
    "starcoder2": Family(min_transformers="4.45.0"),
    "cohere": Family(legacy_type_key="rope_type", min_transformers="4.45.0"),
    "cohere2": Family(legacy_type_key="rope_type", min_transformers="4.48.0"),
    "granite": Family(legacy_type_key="rope_type", min_transformers="4.45.0"),
    "granitemoe": Family(legacy_type_key="rope_type", min_transformers="4.45.0"),
    "granitemoeshared": Family(legacy_type_key="rope_type", min_transformers="4.49.0"),
    "olmo": Family(min_transformers="4.40.0"),
    "olmo2": Family(min_transformers="4.47.0"),
    "olmo3": Family(legacy_type_key="rope_type", min_transformers="4.57.0"),
    "gpt_neox": Family(
        window_default=2048, partial_key="rotary_pct", partial_default=0.25,
        legacy_theta_key="rotary_emb_base",
    ),
    "phi": Family(window_default=2048, partial_key="partial_rotary_factor", partial_default=0.5,
                  min_transformers="4.36.0"),
    "stablelm": Family(partial_key="partial_rotary_factor", partial_default=0.25,
                       min_transformers="4.38.0"),
    "persimmon": Family(theta_default=25000.0, partial_key="partial_rotary_factor",
                        partial_default=0.5, min_transformers="4.34.0"),
    # Falcon-7B's config has no window at all; transformers' default is 2048.
    "falcon": Family(window_default=2048, min_transformers="4.33.0"),
}

# Why each family cannot take linear PI, in the words the error prints.
NO_ROPE = {
    "gpt2": "learned absolute position embeddings",
    "gpt_bigcode": "learned absolute position embeddings",
    "opt": "learned absolute position embeddings",
    "bloom": "ALiBi attention biases",
    "mpt": "ALiBi attention biases",
    "bert": "learned absolute position embeddings (an encoder)",
    "roberta": "learned absolute position embeddings (an encoder)",
    "distilbert": "learned absolute position embeddings (an encoder)",
    "t5": "relative position buckets",
}
NO_HOOK = {"gptj", "codegen"}
LONGROPE_ONLY = {"phi3", "phimoe"}
# GGUF architectures (general.architecture) without RoPE: nothing in them to interpolate.
GGUF_NO_ROPE = {"gpt2", "bloom", "mpt", "bert", "nomic-bert", "t5", "t5encoder", "jina-bert-v2", "starcoder"}


def family_of(config: dict) -> Family:
    model_type = config.get("model_type")
    return FAMILIES.get(model_type, Family()) if isinstance(model_type, str) else Family()


def refusal(config: dict) -> CannotExtend | None:
    """The reason PI cannot be applied to this architecture at all, or None."""
    model_type = config.get("model_type")
    if not model_type:
        return CannotExtend("config.json has no model_type", hint="is this a transformers checkpoint?")
    values.model_type(model_type)
    if model_type in NO_ROPE:
        return CannotExtend(
            f"{model_type} has no RoPE ({NO_ROPE[model_type]}); Position Interpolation applies only to RoPE models",
            hint="choose a RoPE model (llama, mistral, qwen2, gemma, gpt_neox, ...)",
        )
    if model_type == "falcon" and config.get("alibi"):
        return CannotExtend("this falcon checkpoint uses ALiBi (alibi: true), not RoPE",
                            hint="Position Interpolation applies only to RoPE models")
    if model_type in NO_HOOK:
        return CannotExtend(
            f"{model_type} uses RoPE but transformers has no rope scaling hook for it, so a scaled config would be ignored",
            hint="convert the model to a family with rope_scaling support (e.g. llama) first",
        )
    if model_type in LONGROPE_ONLY:
        return CannotExtend(
            f"{model_type} configs accept only longrope scaling in transformers; linear PI cannot be expressed",
            hint="use the model's long-context (longrope) release instead",
        )
    has_rope_keys = any(key in config for key in ("rope_theta", "rope_parameters", "rope_scaling", "rotary_emb_base"))
    if model_type not in FAMILIES and not has_rope_keys:
        return CannotExtend(
            f"{model_type}: config.json has no RoPE settings and picli does not know this family",
            hint="if the model does use RoPE, add rope_theta to config.json and run again",
        )
    return None

