"""What each runtime will do with a config: transformers 4.x and 5.x, vLLM, llama.cpp.

The predictions behind `picli inspect` (and `--check`), the model card and the self-check's
4.x reading. Each rule is read from that runtime's own code; docs/runtimes.md cites the file
and function of every one, and a rule that was not read is not made up here. Every RoPE
type is covered: default, linear, dynamic, yarn, llama3, longrope / su, M-RoPE and unknown
types. The rules for a type picli writes (linear, yarn) are the method's own (methods/*.py,
asked through `by_rope_type`); the types picli only reads are ruled here. Each prediction
carries `notes` (what the runtime does) and `differs` (where it reads the checkpoint
differently from transformers 5, the reference); `check` gathers the latter.
Pure: a config dict in, data out. No transformers, no torch, no files.
"""

from __future__ import annotations

from . import values
from .families import family_of, language_config
from .methods import by_rope_type
from .schema import RopeState, active_scaling, read_state, scaling_type_of

# The types transformers has a RoPE function for (ROPE_INIT_FUNCTIONS, 4.44 - 5.x) and the
# legacy names the config classes map onto them ("su" -> longrope in Phi3Config only,
# "mrope" -> default in Qwen2VLConfig).
KNOWN_TYPES = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}
# vLLM's _get_and_verify_max_len multiplies the window by the factor for every type but these.
_VLLM_UNMULTIPLIED = {"su", "longrope", "llama3"}


def rope_kind(config: dict, state: RopeState | None = None) -> str:
    """The RoPE type a config names, with M-RoPE told apart ("mrope": Qwen2-VL's sections of
    the position ids, stored as type "mrope" or as "default" with mrope_section)."""
    state = state or read_state(config)
    active = active_scaling(config, state)
    if state.scaling_type == "mrope" or (state.scaling_type == "default" and active.get("mrope_section")):
        return "mrope"
    return state.scaling_type


def _original_window(config: dict, active: dict) -> tuple[int | None, str]:
    """original_max_position_embeddings as transformers 5's standardize_rope_params finds it:
    the top-level key first (Phi-3 keeps it there), then the RoPE dict; None when absent."""
    config = language_config(config)
    if config.get("original_max_position_embeddings") is not None:
        return values.window(config["original_max_position_embeddings"], "original_max_position_embeddings"), \
            "top level"
    if active.get("original_max_position_embeddings") is not None:
        return values.window(active["original_max_position_embeddings"],
                             "rope_scaling.original_max_position_embeddings"), "rope dict"
    return None, "absent"


def effective_window(config: dict, recorded_window: int | None = None) -> int:
    """The window a checkpoint is meant to be used at: picli.json's record when picli wrote it
    (either max_position_embeddings convention), else the config as its readers interpret it
    (a method's own type: as the method says, e.g. yarn's original x factor)."""
    if recorded_window:
        return int(recorded_window)
    state = read_state(config)
    owner = by_rope_type(state.scaling_type)
    original, _ = _original_window(config, active_scaling(config, state))
    served = owner.served_window(state, original) if owner else None
    return state.window if served is None else served


def predict_transformers4(config: dict) -> dict:
    """transformers 4.x reads top-level keys and rope_scaling; it never reads rope_parameters."""
    config = language_config(config)  # a multimodal wrapper's language model: text_config
    family = family_of(config)
    theta = config.get("rope_theta")
    if theta is None and family.legacy_theta_key:
        theta = config.get(family.legacy_theta_key)
    theta_missing = theta is None
    theta = float(theta if theta is not None else family.theta_default)
    scaling = config.get("rope_scaling") or {}
    scaling_type = scaling_type_of(scaling)
    notes: list[str] = []
    differs: list[str] = []
    if theta_missing and config.get("rope_parameters"):
        notes.append(f"no top-level rope_theta: 4.x uses the class default {theta:g}")
    if not scaling and (config.get("rope_parameters") or {}).get("factor"):
        notes.append("scaling only in rope_parameters: 4.x ignores it")
    if scaling and family.legacy_type_key == "rope_type" and "rope_type" not in scaling:
        notes.append("this family's 4.x config expects rope_scaling['rope_type']")
    state = read_state(config)
    five_type = rope_kind(config, state)
    if five_type != "default" and not scaling and not state.nested:
        differs.append(f"4.x reads no {five_type} scaling (it is only in rope_parameters)")
    elif scaling:
        differs += _transformers4_type_rules(config, scaling, state)
    return {
        "theta": theta,
        "rope_type": scaling_type,
        "factor": float(scaling.get("factor", 1.0)) if scaling_type not in ("default", "mrope") else 1.0,
        "min_version": family.min_transformers,
        "notes": notes,
        "differs": differs,
    }


def _transformers4_type_rules(config: dict, scaling: dict, state: RopeState) -> list[str]:
    kind = scaling_type_of(scaling)
    differs = []
    owner = by_rope_type(kind)
    owned = owner.transformers4_differs(scaling, state) if owner else None
    if owned is not None:
        differs += owned
    elif kind in ("longrope", "su"):
        if not config.get("original_max_position_embeddings") and scaling.get("original_max_position_embeddings"):
            differs.append("4.x reads original_max_position_embeddings only from the top level, not from rope_scaling")
    elif kind not in KNOWN_TYPES and kind != "mrope":
        differs.append(f"unknown type {kind!r}: no RoPE function for it, the model cannot be built")
    return differs


def predict_transformers5(config: dict) -> dict:
    """transformers 5.x: rope_scaling wins when present, with theta from the top level."""
    state = read_state(config)
    active = active_scaling(config, state)
    kind = rope_kind(config, state)
    notes = [state.disagreement] if state.disagreement else []
    differs: list[str] = []
    original, where = _original_window(config, active)
    owner = by_rope_type(kind)
    owned = owner.transformers5_notes(active, state, original) if owner else None
    if owned is not None:
        notes += owned
    elif kind == "dynamic":
        notes.append(f"dynamic NTK: theta recomputed for each sequence longer than {original or state.window} tokens")
    elif kind == "llama3":
        notes.append(f"llama3: low/high freq factors {active.get('low_freq_factor')}/{active.get('high_freq_factor')}, "
                     f"original window {original or state.window}")
    elif kind in ("longrope", "su"):
        short, long = active.get("short_factor") or [], active.get("long_factor") or []
        notes.append(f"longrope: short factors ({len(short)}) up to {original or state.window} tokens, long factors "
                     f"({len(long)}) past it, chosen per sequence length")
        if kind == "su" and state.model_type not in ("phi3", "phimoe"):
            differs.append("type 'su' is mapped to longrope only by Phi-3's config class")
    elif kind == "mrope":
        notes.append(f"M-RoPE: rotary dims split into sections {active.get('mrope_section')} for temporal / height / "
                     "width position ids")
    elif kind not in KNOWN_TYPES:
        differs.append(f"unknown type {kind!r}: no RoPE function for it, the model cannot be built")
    return {"theta": state.theta, "rope_type": state.scaling_type, "factor": state.factor,
            "local_theta": state.local_theta, "notes": notes, "differs": differs}


def predict_vllm(config: dict, intended_window: int | None = None) -> dict:
    """vLLM multiplies max_position_embeddings by a linear/dynamic/yarn factor (it assumes
    the field holds the pretraining window), so a PI checkpoint in the HF convention is
    over-claimed by the factor unless --max-model-len is passed.

    intended_window: the window picli.json recorded (needed for checkpoints written with
    --max-position-embeddings original, where the config alone does not say it)."""
    config = language_config(config)
    state = read_state(config)
    active = active_scaling(config, state)
    kind = rope_kind(config, state)
    original, where = _original_window(config, active)
    notes: list[str] = []
    differs: list[str] = []
    derived = state.window
    owner = by_rope_type(kind)
    owned = owner.vllm_reads(active, state, original) if owner else None
    if owned is not None:
        derived, owner_differs = owned
        differs += owner_differs
    elif kind == "dynamic":
        derived = int(state.window * state.factor)
    if "gemma3" in state.model_type and kind not in ("default", "mrope"):
        derived = state.window  # _get_and_verify_max_len: Gemma 3's window is already scaled
    if kind == "dynamic":
        differs.append("computes dynamic NTK once at load (static), not per sequence")
    elif kind == "llama3":
        notes.append("max model len is max_position_embeddings (not multiplied)")
    elif kind in ("longrope", "su"):
        if config.get("original_max_position_embeddings"):
            differs.append(f"default max model len is original_max_position_embeddings "
                           f"{config['original_max_position_embeddings']}; above it every position uses the long "
                           "factors (transformers uses the short ones for short sequences)")
    elif kind == "mrope":
        notes.append("M-RoPE: default RoPE with mrope_section")
    elif kind not in KNOWN_TYPES:
        differs.append(f"unknown type {kind!r}: get_rope raises ValueError")
    served = owner.served_window(state, original) if owner else None
    if served is None:
        served = state.window if kind in ("default", "mrope") else derived
    intended = intended_window or served
    return {"derived_max_model_len": derived, "intended_max_model_len": intended,
            "flag": f"--max-model-len {intended}",
            "over_claims": derived > intended, "notes": notes, "differs": differs}


def predict_llama_cpp(config: dict, intended_window: int | None = None) -> dict:
    """convert_hf_to_gguf writes max_position_embeddings as context_length and the scaling as
    rope.scaling.*; recent llama.cpp defaults n_ctx to context_length, older builds to less,
    so the flags always name the context."""
    state = read_state(config)
    active = active_scaling(config, state)
    kind = rope_kind(config, state)
    original, _ = _original_window(config, active)
    notes: list[str] = []
    differs: list[str] = []
    owner = by_rope_type(kind)
    gguf_type = {"linear": "linear", "yarn": "yarn", "longrope": "longrope", "su": "longrope"}.get(kind, "none")
    flags = f"-c {intended_window or effective_window(config)}"
    owned = owner.llama_cpp_reads(active, state, original) if owner else None
    if owned is not None:
        owner_flags, owner_notes, owner_differs = owned
        flags, notes, differs = flags + owner_flags, notes + owner_notes, differs + owner_differs
    elif kind == "dynamic":
        differs.append("dynamic NTK has no GGUF form: converted as plain RoPE")
    elif kind == "llama3":
        notes.append("llama3 factors are baked into the rope_freqs tensor at conversion: editing config.json "
                     "after conversion changes nothing in llama.cpp")
    elif kind in ("longrope", "su"):
        notes.append("longrope factors live in the rope_factors_long / rope_factors_short tensors (Phi-3 "
                     "converters): editing config.json after conversion changes nothing in llama.cpp")
    elif kind == "mrope":
        notes.append(f"M-RoPE sections written as rope.dimension_sections {active.get('mrope_section')}")
    elif kind not in KNOWN_TYPES:
        differs.append(f"unknown type {kind!r}: the converter warns and writes no scaling")
    return {"context_length": state.window, "rope_scaling": gguf_type if kind != "default" else "none",
            "factor": state.factor, "freq_scale": 1.0 / state.factor, "flags": flags,
            "notes": notes, "differs": differs}


def predict_all(config: dict, intended_window: int | None = None) -> dict[str, dict]:
    """Every runtime's prediction, keyed as inspect reports them."""
    return {
        "transformers5": predict_transformers5(config),
        "transformers4": predict_transformers4(config),
        "vllm": predict_vllm(config, intended_window),
        "llama_cpp": predict_llama_cpp(config, intended_window),
    }


RUNTIME_LABELS = {"transformers5": "transformers 5.x", "transformers4": "transformers 4.x", "vllm": "vLLM",
                  "llama_cpp": "llama.cpp"}


def check(runtimes: dict[str, dict], disagreement: str | None = None) -> dict:
    """`inspect --check`: ok when every runtime reads the checkpoint as transformers 5 does
    and the two schemas agree; else the list of disagreements, each naming its runtime."""
    found = [f"config.json: {disagreement}"] if disagreement else []
    for name, view in runtimes.items():
        found += [f"{RUNTIME_LABELS.get(name, name)}: {text}" for text in view.get("differs") or []]
    return {"ok": not found, "disagreements": found}


def predict_gguf(architecture: str, metadata: dict, rope_tensors: tuple[str, ...] = ()) -> dict[str, dict]:
    """What llama.cpp and transformers' GGUF loader read from a GGUF's RoPE metadata
    ({arch}.rope.*) and its RoPE tensors (rope_freqs: llama3; rope_factors_long/short: longrope)."""
    def get(suffix, default=None):
        return metadata.get(f"{architecture}.{suffix}", default)

    scaling = str(get("rope.scaling.type", "none"))
    factor = float(get("rope.scaling.factor", 1.0) or 1.0) if scaling != "none" else 1.0
    window = get("context_length")
    original = get("rope.scaling.original_context_length")
    notes: list[str] = []
    flags = f"-c {window}"
    tensors = {name.split(".")[0] for name in rope_tensors}
    owner = by_rope_type(scaling)
    notes += (owner.gguf_notes(factor, original, get("rope.scaling.yarn_attn_factor")) if owner else None) or []
    if "rope_freqs" in tensors:
        notes.append("rope_freqs tensor: llama3-style factors baked in at conversion")
    if {"rope_factors_long", "rope_factors_short"} & tensors:
        notes.append("rope_factors_long / rope_factors_short tensors: longrope factors baked in at conversion")
    if get("rope.dimension_sections") is not None:
        notes.append(f"M-RoPE sections {get('rope.dimension_sections')}")
    five_notes = []
    five_differs = []
    if factor != 1.0 or rope_tensors:
        # transformers' GGUF loader maps context_length and freq_base but not rope.scaling.* or RoPE tensors.
        five_differs.append("transformers' GGUF loader ignores rope.scaling.* and RoPE factor tensors: load the "
                            "safetensors checkpoint instead")
    return {
        "llama_cpp": {"context_length": window, "rope_scaling": scaling, "factor": factor,
                      "freq_scale": 1.0 / factor, "original_context_length": original, "flags": flags,
                      "notes": notes, "differs": []},
        "transformers5": {"theta": float(get("rope.freq_base", 10000.0)), "rope_type": "default", "factor": 1.0,
                          "notes": five_notes, "differs": five_differs},
    }
