"""The RoPE family table: how each model_type stores RoPE in config.json, and which
architectures cannot take Position Interpolation at all (and why, in the words the error prints).

A family's entry holds only facts about the family (its defaults, its legacy key names, the
first transformers release that applies scaling to it); how a config is read and written is
in schema.py, the methods in methods/. Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CannotExtend, NotACheckpoint
from . import values


@dataclass(frozen=True)
class Family:
    """How one model_type stores its RoPE settings in config.json.

    The defaults are what the family's config class fills in when config.json leaves a key
    out, read from the classes themselves (tests/data/class_defaults-*.json, printed by
    tests/data/class_defaults.py and held against the live classes by tests/test_families.py).
    """

    # Key of the legacy (transformers 4.x) scaling dict's type: most families read "type";
    # a few newer config classes index ["rope_type"] directly and fail on "type".
    legacy_type_key: str = "type"
    theta_default: float = 10000.0  # transformers 5's class default
    # transformers 4.x's class default where it differs from 5.x's: a file that leaves theta
    # out means different things to the two, so picli always writes the theta it used.
    theta_default_4x: float | None = None
    window_default: int = 2048
    # Top-level key holding partial rotary, and the family default when the key is absent.
    # transformers 5 drops it on save; 4.x reads only this key, so picli always writes it.
    partial_key: str | None = None
    partial_default: float = 1.0
    # First transformers 4.x release that reads this family's RoPE right: it knows the
    # model_type and its modeling code applies `rope_scaling` (older releases accept the key
    # and silently ignore it).
    min_transformers: str = "4.31.0"
    # Per-layer-type RoPE (Gemma 3, OLMo 3): only full-attention layers are interpolated.
    nested: bool = False
    # Extra top-level theta key the family's 4.x config reads instead of rope_theta.
    legacy_theta_key: str | None = None
    # 4.x key of the sliding layers' theta, and its default; None: the sliding layers use the
    # global theta (OLMo 3).
    local_theta_key: str | None = None
    local_theta_default: float | None = None
    # Sliding and global layers share one RoPE config, so PI scales the sliding layers too.
    shared_sliding: bool = False
    # max_position_embeddings already includes an existing linear factor (the family's own
    # convention: Gemma 3 ships factor 8 with 131072, its window after scaling, and vLLM's
    # _get_and_verify_max_len does not multiply it for gemma3), so no --from is needed.
    window_includes_factor: bool = False


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(window_default=131072, min_transformers="4.48.0", shared_sliding=True),
    "mixtral": Family(theta_default=1e6, window_default=131072, min_transformers="4.48.0", shared_sliding=True),
    "qwen2": Family(window_default=32768, min_transformers="4.45.0"),
    "qwen2_moe": Family(window_default=32768, min_transformers="4.45.0"),
    "qwen3": Family(window_default=32768, min_transformers="4.51.0"),  # first release with Qwen3
    "qwen3_moe": Family(window_default=32768, min_transformers="4.51.0"),
    "qwen3_next": Family(legacy_type_key="rope_type", window_default=32768, partial_key="partial_rotary_factor",
                         partial_default=0.25, min_transformers="4.57.0"),
    "gemma": Family(window_default=8192, min_transformers="4.48.0"),
    "gemma2": Family(window_default=8192, min_transformers="4.48.0", shared_sliding=True),
    "gemma3_text": Family(
        legacy_type_key="rope_type", theta_default=1e6, window_default=131072, min_transformers="4.50.0",
        nested=True, local_theta_key="rope_local_base_freq", local_theta_default=10000.0,
        window_includes_factor=True,
    ),
    "gemma3n_text": Family(
        legacy_type_key="rope_type", theta_default=1e6, window_default=32768, min_transformers="4.53.0",
        nested=True, local_theta_key="rope_local_base_freq", local_theta_default=10000.0,
    ),
    "starcoder2": Family(window_default=4096, min_transformers="4.45.0"),
    "cohere": Family(legacy_type_key="rope_type", theta_default=500000.0, theta_default_4x=10000.0,
                     window_default=8192, min_transformers="4.45.0"),
    "granite": Family(legacy_type_key="rope_type", min_transformers="4.45.0"),
    "granitemoe": Family(legacy_type_key="rope_type", min_transformers="4.45.0"),
    "granitemoeshared": Family(legacy_type_key="rope_type", min_transformers="4.49.0"),
    "olmo": Family(min_transformers="4.40.0"),
    "olmo2": Family(min_transformers="4.47.0"),
    "olmo3": Family(legacy_type_key="rope_type", theta_default=500000.0, theta_default_4x=10000.0,
                    min_transformers="4.57.0", nested=True),
    "gpt_neox": Family(partial_key="rotary_pct", partial_default=0.25, legacy_theta_key="rotary_emb_base"),
    "phi": Family(partial_key="partial_rotary_factor", partial_default=0.5, min_transformers="4.36.0"),
    "stablelm": Family(window_default=4096, partial_key="partial_rotary_factor", partial_default=0.25,
                       min_transformers="4.38.0"),
    "persimmon": Family(theta_default=10000.0, theta_default_4x=25000.0, window_default=16384,
                        partial_key="partial_rotary_factor", partial_default=0.5, min_transformers="4.34.0"),
    # Falcon-7B's config has no window at all; the class default is 2048.
    "falcon": Family(min_transformers="4.33.0"),
}

# Multimodal wrappers whose language model sits in text_config: the text model_type each
# builds, and whether the text_config's own model_type can choose another class (an
# AutoConfig sub-config) or is ignored (a fixed text class). Read from the config classes
# (tests/data/class_defaults-*.json, "wrappers").
WRAPPERS: dict[str, tuple[str, bool]] = {
    "gemma3": ("gemma3_text", False),
    "gemma3n": ("gemma3n_text", False),
    "mistral3": ("mistral", True),
    "llava": ("llama", True),
    "llava_next": ("llama", True),
    "idefics3": ("llama", True),
    "smolvlm": ("llama", True),
    "paligemma": ("gemma", True),
    "llava_onevision": ("qwen2", True),
    "qwen2_vl": ("qwen2_vl_text", False),
    "qwen2_5_vl": ("qwen2_5_vl_text", False),
    "qwen3_vl": ("qwen3_vl_text", False),
    "llama4": ("llama4_text", False),
}
# M-RoPE: position ids with several sections (time, height, width).
MROPE = {"qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl", "qwen3_vl_text",
         "qwen3_vl_moe", "qwen3_vl_moe_text", "qwen2_5_omni", "glm4v", "glm4v_text"}
# Why yarn on M-RoPE is refused although transformers and llama.cpp read it alike (the code
# read is cited in docs/runtimes.md, "M-RoPE and yarn"): vLLM's MRotaryEmbedding enlarges its
# position cache to 4 x original_max_position_embeddings (mrope.py, vLLM 0.34.0; 4x for
# Qwen2-VL and Qwen2.5-VL, and for Qwen3-VL with video pruning), and YaRN's correction range
# reads that enlarged length, so its ramp sits where transformers' and llama.cpp's do not.
MROPE_YARN_VLLM = ("vLLM reads yarn with mrope_section differently from transformers and llama.cpp: its "
                   "MRotaryEmbedding builds the YaRN ramp at 4 x original_max_position_embeddings (its enlarged "
                   "position cache), so it would serve other frequencies than the ones picli checks")
# Layers that say one by one whether they apply RoPE: no_rope_layers[i] is 1 for RoPE, 0 for
# none (NoPE). SmolLM3Config.__post_init__ fills a missing list with no RoPE in every
# no_rope_layer_interval-th layer (4 by default); SmolLM3Attention reads use_rope from it.
# Llama 4 (CHUNKED_NOPE) uses the same keys but is refused before.
NOPE_LAYERS = {"smollm3"}
# RoPE only in the sliding-window layers; the global layers have no position encoding.
SLIDING_ONLY_ROPE = {"cohere2"}
# Vision towers (and image encoders) saved as a model of their own: no language model.
VISION_ONLY = {"vit", "dinov2", "pixtral", "siglip_vision_model", "siglip2_vision_model", "clip_vision_model",
               "idefics3_vision", "smolvlm_vision", "gemma3n_vision", "qwen2_vl_vision", "mllama_vision_model",
               "llava_vision", "convnext", "swin", "beit", "deit"}

# Llama 4's language model: RoPE only in its chunked-attention layers, none in its global ones.
CHUNKED_NOPE = {"llama4_text"}
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


# GGUF architectures of multimodal projectors (llama.cpp's mmproj files): an image encoder
# and projector that go beside a language model GGUF; they have no text positions.
GGUF_PROJECTOR = {"clip"}
ROPE_KEYS = ("rope_theta", "rope_parameters", "rope_scaling", "rotary_emb_base")


# The keys of a language model's shape that a config may leave to its class.
SHAPE_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "head_dim")
# Where those defaults come from: the installed transformers' config classes, registered by
# picli/class_defaults.py (rope/ itself never imports transformers). None: picli's table only.
_class_lookup = None


def use_class_defaults(lookup) -> None:
    """Register lookup(model_type, {shape key: value}) -> ({key: value}, source) | None."""
    global _class_lookup
    _class_lookup = lookup


def _theta_given(config: dict, family: Family) -> bool:
    """Whether the file states a theta anywhere transformers looks for one."""
    params = config.get("rope_parameters")
    inner = params.get("full_attention", params) if isinstance(params, dict) else None
    return any(value is not None for value in (
        config.get("rope_theta"), config.get(family.legacy_theta_key) if family.legacy_theta_key else None,
        inner.get("rope_theta") if isinstance(inner, dict) else None))


def fill_defaults(config: dict) -> tuple[dict, dict[str, dict]]:
    """The language model's config as transformers reads it: the keys picli reads that the
    file leaves out (or sets to null) filled from the installed transformers' config class,
    built from the file's own shape keys (picli/class_defaults.py), and {key: {"value",
    "source"}} for each value filled. Theta and the window of a family in picli's table come
    from that table (held to the classes by tests/test_families.py; it also knows where 4.x
    and 5.x defaults differ), so they are filled here only for families outside it. Where
    the installed transformers has no class for the model_type, nothing is filled and the
    caller's own fallbacks (the family table) apply."""
    model_type = config.get("model_type")
    family = family_of(config)
    missing = [key for key in SHAPE_KEYS if config.get(key) is None]
    if model_type not in FAMILIES:
        if config.get("max_position_embeddings") is None:
            missing.append("max_position_embeddings")
        if not _theta_given(config, family):
            missing.append("rope_theta")
    if not missing or not isinstance(model_type, str) or not model_type:
        return config, {}
    given = {key: values.positive_int(config[key], key) for key in SHAPE_KEYS if config.get(key) is not None}
    found = _class_lookup(model_type, given) if _class_lookup else None
    if found is None:
        return config, {}
    class_values, source = found
    filled = {key: class_values[key] for key in missing if key in class_values}
    return {**config, **filled}, {key: {"value": value, "source": source} for key, value in filled.items()}


def family_of(config: dict) -> Family:
    model_type = config.get("model_type")
    return FAMILIES.get(model_type, Family()) if isinstance(model_type, str) else Family()


def language_config(config: dict) -> dict:
    """The dict that holds the language model's settings, with its model_type filled in:
    `text_config` for a multimodal wrapper (as the wrapper's config class builds it), else
    the config itself."""
    text = config.get("text_config")
    if text is None:
        return config
    if not isinstance(text, dict):
        raise NotACheckpoint("config.json: text_config must be an object", hint="fix config.json")
    wrapper = config.get("model_type", "")
    if wrapper not in (None, ""):
        values.model_type(wrapper)
    text_type, text_type_can_vary = WRAPPERS.get(wrapper, (None, True))
    model_type = (text.get("model_type") if text_type_can_vary else None) or text_type or text.get("model_type")
    return {**text, "model_type": model_type} if model_type else dict(text)


def _mrope_section(config: dict):
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if isinstance(params, dict):
            if params.get("mrope_section") is not None:
                return params["mrope_section"]
            if (params.get("type") or params.get("rope_type")) == "mrope":
                return "unknown"
    return None


def rope_layers(config: dict) -> dict | None:
    """How many of a language model's layers apply RoPE, where only some do (NOPE_LAYERS):
    {"rope": n, "layers": total, "source": where that was read}; None where every layer does.
    A layer without RoPE has no position encoding to extend: a RoPE method leaves it as it is."""
    if config.get("model_type") not in NOPE_LAYERS:
        return None
    flags = config.get("no_rope_layers")
    if flags is not None:
        if not isinstance(flags, list) or not flags or any(flag not in (0, 1) or isinstance(flag, bool)
                                                           for flag in flags):
            raise NotACheckpoint(f"config.json: no_rope_layers must be a list of 0 and 1, got {values.show(flags)}",
                                 hint="fix no_rope_layers in config.json")
        return {"rope": sum(flags), "layers": len(flags), "source": "no_rope_layers"}
    layers = fill_defaults(config)[0].get("num_hidden_layers")
    if layers is None:
        return None
    layers = values.positive_int(layers, "num_hidden_layers")
    interval = values.positive_int(config.get("no_rope_layer_interval", 4), "no_rope_layer_interval")
    return {"rope": sum((index + 1) % interval != 0 for index in range(layers)), "layers": layers,
            "source": f"no RoPE in every {interval}th layer (no_rope_layer_interval; the class fills no_rope_layers)"}


def refusal(config: dict, method: str = "linear") -> CannotExtend | None:
    """The reason `method` cannot be applied to this architecture at all, or None."""
    model_type = config.get("model_type")
    if not model_type:
        return CannotExtend("config.json has no model_type", hint="is this a transformers checkpoint?")
    values.model_type(model_type)
    section = _mrope_section(config) or (_mrope_section(config["text_config"])
                                         if isinstance(config.get("text_config"), dict) else None)
    if model_type in MROPE or section:
        described = f" (mrope_section {section})" if section and section != "unknown" else ""
        if method == "yarn":
            return CannotExtend(f"{model_type} uses M-RoPE{described}, and {MROPE_YARN_VLLM}",
                                hint="for transformers or llama.cpp alone, add the model card's yarn block by hand "
                                     "(docs/runtimes.md, \"M-RoPE and yarn\", cites each runtime's code)")
        return CannotExtend(
            f"{model_type} uses M-RoPE{described}: its position ids have several sections (time, height, width), "
            "and linear PI of a single window does not describe it",
            hint="picli extends single-window RoPE language models; use the model's own long-context settings",
        )
    if model_type in VISION_ONLY or model_type.endswith("_vision_model") or (
            "vision_config" in config and "text_config" not in config
            and not any(key in config for key in (*ROPE_KEYS, "num_attention_heads", "hidden_size"))):
        return CannotExtend(f"{model_type} is a vision model: it has no language model and no text positions to extend",
                            hint="extend the language model (or the multimodal checkpoint that contains it)")
    if "text_config" in config:
        return _text_refusal(config, language_config(config))
    return _family_refusal(config, model_type)


def _text_refusal(config: dict, text: dict) -> CannotExtend | None:
    wrapper, text_type = config["model_type"], text.get("model_type")
    if not text_type:
        return CannotExtend(f"{wrapper}: text_config names no model_type, and picli does not know this wrapper's "
                            "language model", hint="add the language model's model_type to text_config")
    reason = _family_refusal(text, text_type)
    if reason:
        return CannotExtend(f"the language model in text_config ({wrapper}): {reason.message}", hint=reason.hint)
    if text_type not in FAMILIES and not _class_known(text_type):
        return CannotExtend(
            f"{wrapper}: the language model in text_config is {text_type}, which is neither in picli's family table "
            "nor a config class of the installed transformers, so its RoPE defaults are unknown",
            hint="upgrade transformers if it is a new model, or extend a checkpoint of a known family")
    return None


def _class_known(model_type: str) -> bool:
    return _class_lookup is not None and _class_lookup(model_type, {}) is not None


def _family_refusal(config: dict, model_type: str) -> CannotExtend | None:
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
    if model_type in CHUNKED_NOPE:
        return _llama4_refusal(config, model_type)
    if model_type in SLIDING_ONLY_ROPE:
        return CannotExtend(
            f"{model_type} applies RoPE only in its sliding-window layers; its global layers have no position "
            "encoding, so PI would compress positions only where they never leave the trained range",
            hint="Position Interpolation cannot lengthen this model's window",
        )
    has_rope_keys = any(key in config for key in ROPE_KEYS)
    if model_type not in FAMILIES and not has_rope_keys:
        return CannotExtend(
            f"{model_type}: config.json has no RoPE settings and picli does not know this family",
            hint="if the model does use RoPE, add rope_theta to config.json and run again",
        )
    return None


def _llama4_refusal(config: dict, model_type: str) -> CannotExtend:
    """Llama 4 (transformers' modeling_llama4: Llama4TextAttention applies RoPE only where
    no_rope_layers says so, and those layers attend within attention_chunk_size; the others
    are global attention with no position encoding) cannot be lengthened by RoPE scaling."""
    scaling = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else {}
    params = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    active = scaling or params
    reasons = []
    if (active.get("rope_type") or active.get("type")) == "llama3":
        reasons.append(f"its RoPE already carries llama3 scaling (factor {active.get('factor')} over "
                       f"{active.get('original_max_position_embeddings')} tokens)")
    chunk = config.get("attention_chunk_size")
    reasons.append("RoPE runs only in its chunked-attention layers" + (f" (attention_chunk_size {chunk})" if chunk else "")
                   + ", which never see two tokens further apart than a chunk")
    reasons.append("its global layers have no RoPE at all (NoPE, no_rope_layers)")
    return CannotExtend(f"{model_type} (Llama 4) cannot be lengthened by RoPE scaling: " + "; ".join(reasons),
                        hint="Llama 4's window is its max_position_embeddings; picli has no RoPE setting to change")
