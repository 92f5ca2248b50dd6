"""What each runtime will do with a config: transformers 4.x and 5.x, vLLM, llama.cpp.

The predictions behind `picli inspect`, the model card and the self-check's 4.x reading;
each rule is read from that runtime's own code (DESIGN.md §2 and §7) and the tests hold the
transformers ones against the installed releases. Also the KV cache a runtime allocates for
a window. Pure: a config dict in, data out. No transformers, no torch, no files.
"""

from __future__ import annotations

from .families import family_of, language_config
from .schema import read_state, scaling_type_of


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
