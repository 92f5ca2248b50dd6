"""What each runtime will do with a config: transformers 4.x and 5.x, vLLM, llama.cpp.

The predictions behind `picli inspect` (and `--check`), the model card and the self-check's
4.x reading. Each rule is read from that runtime's own code; docs/runtimes.md cites the file
and function of every one, and a rule that was not read is not made up here. Every RoPE
type is covered: default, linear, dynamic, yarn, llama3, longrope / su, M-RoPE and unknown
types. Each prediction carries `notes` (what the runtime does) and `differs` (where it reads
the checkpoint differently from transformers 5, the reference); `check` gathers the latter.
Pure: a config dict in, data out. No transformers, no torch, no files.
"""

from __future__ import annotations

import math

from . import values
from .families import family_of, language_config
from .schema import RopeState, read_state, scaling_type_of

# The types transformers has a RoPE function for (ROPE_INIT_FUNCTIONS, 4.44 - 5.x) and the
# legacy names the config classes map onto them ("su" -> longrope in Phi3Config only,
# "mrope" -> default in Qwen2VLConfig).
KNOWN_TYPES = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}
# vLLM's _get_and_verify_max_len multiplies the window by the factor for every type but these.
_VLLM_UNMULTIPLIED = {"su", "longrope", "llama3"}


def _active(config: dict, state: RopeState) -> dict:
    """The RoPE dict transformers 5 acts on: rope_scaling wins; nested RoPE's full_attention."""
    config = language_config(config)
    rope_scaling, rope_parameters = config.get("rope_scaling"), config.get("rope_parameters")
    if state.nested:
        full = dict((rope_parameters or {}).get("full_attention") or {})
        full.update(rope_scaling or {})
        return full
    return dict(rope_scaling or rope_parameters or {})


def rope_kind(config: dict, state: RopeState | None = None) -> str:
    """The RoPE type a config names, with M-RoPE told apart ("mrope": Qwen2-VL's sections of
    the position ids, stored as type "mrope" or as "default" with mrope_section)."""
    state = state or read_state(config)
    active = _active(config, state)
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


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def configured_yarn_attention(active: dict, factor: float) -> tuple[float, str]:
    """transformers 5 / 4.57's YaRN attention factor and where it came from."""
    if active.get("attention_factor") is not None:
        return values.positive_number(active["attention_factor"], "attention_factor"), "attention_factor"
    mscale, mscale_all_dim = active.get("mscale"), active.get("mscale_all_dim")
    for key, value in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
        if value is not None and value != 0:  # 0 means "not set" to transformers, as None does
            values.positive_number(value, key)
    if mscale and mscale_all_dim:
        return _mscale(factor, mscale) / _mscale(factor, mscale_all_dim), "mscale / mscale_all_dim"
    return _mscale(factor), "0.1 ln s + 1"


def effective_window(config: dict, recorded_window: int | None = None) -> int:
    """The window a checkpoint is meant to be used at: picli.json's record when picli wrote it
    (either max_position_embeddings convention), else the config as its readers interpret it.

    YaRN configs often keep the pretraining value in max_position_embeddings (Qwen2.5:
    32768 with factor 4); their window is original x factor (vLLM's reading too)."""
    if recorded_window:
        return int(recorded_window)
    state = read_state(config)
    if state.scaling_type == "yarn":
        original, _ = _original_window(config, _active(config, state))
        return max(state.window, int((original or state.window) * state.factor))
    return state.window


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
    if kind == "yarn":
        original = scaling.get("original_max_position_embeddings")
        if original and int(original) != state.window:
            differs.append(f"4.44 builds the YaRN ramp at max_position_embeddings {state.window}, not "
                           f"original_max_position_embeddings {original} (4.57 reads it)")
        if scaling.get("attention_factor") is None and scaling.get("mscale") and scaling.get("mscale_all_dim"):
            differs.append("4.44 ignores mscale / mscale_all_dim (attention factor 0.1 ln s + 1; 4.57 reads them)")
        if scaling.get("truncate") is False:
            differs.append("4.44 ignores truncate: false (4.57 reads it)")
    elif kind in ("longrope", "su"):
        if not config.get("original_max_position_embeddings") and scaling.get("original_max_position_embeddings"):
            differs.append("4.x reads original_max_position_embeddings only from the top level, not from rope_scaling")
    elif kind not in KNOWN_TYPES and kind != "mrope":
        differs.append(f"unknown type {kind!r}: no RoPE function for it, the model cannot be built")
    return differs


def predict_transformers5(config: dict) -> dict:
    """transformers 5.x: rope_scaling wins when present, with theta from the top level."""
    state = read_state(config)
    active = _active(config, state)
    kind = rope_kind(config, state)
    notes = [state.disagreement] if state.disagreement else []
    differs: list[str] = []
    original, where = _original_window(config, active)
    if kind == "yarn":
        attention, source = configured_yarn_attention(active, state.factor)
        ramp = original or state.window
        notes.append(f"YaRN ramp at {ramp} tokens" + ("" if original else
                     " (no original_max_position_embeddings: 5.x fills it with max_position_embeddings)")
                     + f"; attention factor {attention:.4g} ({source})"
                     + ("; truncate false" if active.get("truncate") is False else ""))
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
    active = _active(config, state)
    kind = rope_kind(config, state)
    original, where = _original_window(config, active)
    notes: list[str] = []
    differs: list[str] = []
    derived = state.window
    if kind == "yarn":
        if original is None:
            differs.append("no original_max_position_embeddings: vLLM on transformers 4.x fails (get_rope reads it "
                           "without a default); on transformers 5 it gets 5.x's fill-in")
        derived = int((original or state.window) * state.factor)
        attention, source = configured_yarn_attention(active, state.factor)
        if source != "0.1 ln s + 1" and abs(attention - _mscale(state.factor)) > 1e-9:
            differs.append(f"ignores {source} (attention factor {_mscale(state.factor):.4g} = 0.1 ln s + 1, "
                           f"not {attention:.4g})")
    elif kind in ("linear", "dynamic"):
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
    intended = intended_window or (state.window if kind in ("default", "linear", "mrope") else derived)
    return {"derived_max_model_len": derived, "intended_max_model_len": intended,
            "flag": f"--max-model-len {intended}",
            "over_claims": derived > intended, "notes": notes, "differs": differs}


def predict_llama_cpp(config: dict, intended_window: int | None = None) -> dict:
    """convert_hf_to_gguf writes max_position_embeddings as context_length and the scaling as
    rope.scaling.*; recent llama.cpp defaults n_ctx to context_length, older builds to less,
    so the flags always name the context."""
    state = read_state(config)
    active = _active(config, state)
    kind = rope_kind(config, state)
    original, _ = _original_window(config, active)
    notes: list[str] = []
    differs: list[str] = []
    gguf_type = {"linear": "linear", "yarn": "yarn", "longrope": "longrope", "su": "longrope"}.get(kind, "none")
    flags = f"-c {intended_window or effective_window(config)}"
    if kind == "linear":
        flags += f" --rope-scaling linear --rope-scale {state.factor:g}"
    elif kind == "yarn":
        if original is None:
            differs.append("no original_max_position_embeddings: the converter fails on transformers 4.x "
                           "(set_gguf_parameters reads it without a default)")
        flags += f" --rope-scaling yarn --rope-scale {state.factor:g} --yarn-orig-ctx {original or state.window}"
        if active.get("mscale") or active.get("mscale_all_dim"):
            differs.append("the converter does not write mscale / mscale_all_dim for this path (only a few "
                           "architectures' own converters do)")
        if active.get("attention_factor") is not None:
            notes.append("attention_factor is written as rope.scaling.yarn_attn_factor; llama.cpp reads that key "
                         "only for a few architectures")
        if active.get("truncate") is False:
            differs.append("truncate: false has no GGUF key: llama.cpp truncates the correction range")
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
    if scaling == "yarn":
        attention = get("rope.scaling.yarn_attn_factor")
        notes.append(f"YaRN x{factor:g} from {original} tokens; attention factor "
                     + (f"{attention:g} (rope.scaling.yarn_attn_factor, read only by a few architectures)"
                        if attention is not None else "computed from the factor"))
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
