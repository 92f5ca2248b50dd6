"""What each runtime will do with a config: transformers 4.x and 5.x, vLLM, llama.cpp.

The predictions behind `picli inspect`, the model card and the self-check's 4.x reading;
each rule is read from that runtime's own code (DESIGN.md §2 and §7) and the tests hold the
transformers ones against the installed releases. Also the KV cache a runtime allocates for
a window. Pure: a config dict in, data out. No transformers, no torch, no files.
"""

from __future__ import annotations

from ..errors import NotACheckpoint
from . import values
from .families import family_of
from .schema import read_state, scaling_type_of


def predict_transformers4(config: dict) -> dict:
    """transformers 4.x reads top-level keys and rope_scaling; it never reads rope_parameters."""
    family = family_of(config)
    theta = config.get("rope_theta")
    if theta is None and family.legacy_theta_key:
        theta = config.get(family.legacy_theta_key)
    theta_missing = theta is None
    theta = float(theta if theta is not None else family.theta_default)
    scaling = config.get("rope_scaling") or {}
    scaling_type = scaling_type_of(scaling)
    notes = []
    if theta_missing and config.get("rope_parameters"):
        notes.append(f"no top-level rope_theta: 4.x uses the class default {theta:g}")
    if not scaling and (config.get("rope_parameters") or {}).get("factor"):
        notes.append("scaling only in rope_parameters: 4.x ignores it")
    if scaling and family.legacy_type_key == "rope_type" and "rope_type" not in scaling:
        notes.append("this family's 4.x config expects rope_scaling['rope_type']")
    return {
        "theta": theta,
        "rope_type": scaling_type,
        "factor": float(scaling.get("factor", 1.0)) if scaling_type != "default" else 1.0,
        "min_version": family.min_transformers,
        "notes": notes,
    }


def predict_transformers5(config: dict) -> dict:
    """transformers 5.x: rope_scaling wins when present, with theta from the top level."""
    state = read_state(config)
    return {"theta": state.theta, "rope_type": state.scaling_type, "factor": state.factor,
            "local_theta": state.local_theta, "notes": [state.disagreement] if state.disagreement else []}


def predict_vllm(config: dict, intended_window: int | None = None) -> dict:
    """vLLM multiplies max_position_embeddings by a linear/dynamic/yarn factor (it assumes
    the field holds the pretraining window), so a PI checkpoint in the HF convention is
    over-claimed by the factor unless --max-model-len is passed.

    intended_window: the window picli.json recorded (needed for checkpoints written with
    --max-position-embeddings original, where the config alone does not say it)."""
    state = read_state(config)
    derived = state.window
    if state.scaling_type in ("linear", "dynamic", "yarn"):
        derived = int(state.window * state.factor)
    intended = intended_window or (state.window if state.scaling_type in ("default", "linear") else derived)
    return {"derived_max_model_len": derived, "intended_max_model_len": intended,
            "flag": f"--max-model-len {intended}",
            "over_claims": derived > intended}


def predict_llama_cpp(config: dict, intended_window: int | None = None) -> dict:
    """convert_hf_to_gguf writes max_position_embeddings as context_length and the linear
    factor as rope.scaling.*; recent llama.cpp defaults n_ctx to context_length, older
    builds to less, so the flags always name the context."""
    state = read_state(config)
    flags = f"-c {intended_window or state.window}"
    if state.scaling_type == "linear":
        flags += f" --rope-scaling linear --rope-scale {state.factor:g}"
    return {"context_length": state.window, "rope_scaling": state.scaling_type,
            "factor": state.factor, "freq_scale": 1.0 / state.factor, "flags": flags}


def kv_cache_bytes(config: dict, window: int, bytes_per_value: int = 2) -> int:
    """Keys and values for one sequence; sliding-window layers only hold their window."""
    def count(*keys: str) -> int:
        # The first key present, validated (0 and "2" are damage, not "absent"); 0 if none is.
        present = [key for key in keys if config.get(key) is not None]
        return values.positive_int(config[present[0]], present[0]) if present else 0

    layers = count("num_hidden_layers", "n_layer")
    heads = count("num_key_value_heads", "num_attention_heads")
    head_dim = read_state(config).head_dim
    layer_types = config.get("layer_types")
    if layer_types is None:
        layer_types = []
    elif not isinstance(layer_types, list) or not all(isinstance(kind, str) for kind in layer_types):
        raise NotACheckpoint(f"config.json: layer_types must be a list of strings, got {values.show(layer_types)}",
                             hint="fix layer_types in config.json")
    sliding_window = config.get("sliding_window")
    if sliding_window is not None:
        sliding_window = values.positive_int(sliding_window, "sliding_window")
    total_positions = 0
    for index in range(layers):
        layer_type = layer_types[index] if index < len(layer_types) else "full_attention"
        if layer_type == "sliding_attention" and sliding_window:
            total_positions += min(window, sliding_window)
        else:
            total_positions += window
    return int(2 * total_positions * heads * head_dim * bytes_per_value)
