"""RoPE facts per model family, the Position Interpolation config surgery, and what each
runtime will read from a config.

Everything here is pure: a config dict in, data out. No transformers, no torch, no files.
DESIGN.md §2 is the spec; the rules below are the ones it states, with the reason beside
each one. `extend.py` applies the plan and then proves it with the installed transformers.

PI in one line: position m is replaced by m * L / L' (L trained window, L' target). In
transformers this is `rope_type: linear` with `factor = L'/L`, i.e. every inverse
frequency divided by the factor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import CannotExtend, NotACheckpoint


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
# Schemes that are not PI; stacking linear on them would be a different method.
OTHER_SCHEMES = {"llama3", "yarn", "longrope", "dynamic", "su", "ntk"}

# The layer types of nested RoPE that get interpolated; the rest keep their settings.
INTERPOLATED_LAYER_TYPES = {"full_attention"}
_FLAT_LINEAR_KEYS = {"rope_type", "factor", "rope_theta", "partial_rotary_factor", "mrope_section"}


@dataclass(frozen=True)
class RopeState:
    """What a config says about RoPE, with the family defaults filled in."""

    model_type: str
    known_family: bool
    theta: float
    head_dim: int
    partial_rotary_factor: float
    window: int
    window_from_default: bool
    scaling_type: str  # "default" when unscaled
    factor: float  # 1.0 when unscaled
    nested: bool
    local_theta: float | None
    rope_scaling: dict | None  # as stored in the file
    rope_parameters: dict | None
    disagreement: str | None  # why rope_scaling and rope_parameters do not say the same
    original_window_hint: int | None  # original_max_position_embeddings when the config gives it

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@dataclass(frozen=True)
class ConfigPlan:
    """The new config.json and why: the output of `plan_config`."""

    config: dict
    factor: float
    previous_factor: float
    previous_type: str
    current_window: int
    target_window: int
    original_window: int  # the pretraining window: current_window / previous_factor
    theta: float
    changes: list[tuple[str, Any, Any]]  # (key, before, after), top-level keys of config.json
    warnings: list[str] = field(default_factory=list)


def family_of(config: dict) -> Family:
    return FAMILIES.get(config.get("model_type", ""), Family())


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NotACheckpoint(f"config.json: {key} must be a number, got {value!r}",
                             hint="fix config.json, then run again")
    return float(value)


def _is_nested(rope_parameters: Any) -> bool:
    return isinstance(rope_parameters, dict) and bool(rope_parameters) and all(
        isinstance(value, dict) or value is None for value in rope_parameters.values()
    ) and any(key.endswith("_attention") for key in rope_parameters)


def _scaling_type(params: dict | None) -> str:
    if not params:
        return "default"
    return str(params.get("rope_type") or params.get("type") or "default")


def refusal(config: dict) -> CannotExtend | None:
    """The reason PI cannot be applied to this architecture at all, or None."""
    model_type = config.get("model_type")
    if not model_type:
        return CannotExtend("config.json has no model_type", hint="is this a transformers checkpoint?")
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


def read_state(config: dict) -> RopeState:
    """Read RoPE from config.json as the checkpoint means it (legacy dict wins, as in 5.x)."""
    family = family_of(config)
    model_type = config.get("model_type", "")
    rope_parameters = config.get("rope_parameters")
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None and not isinstance(rope_scaling, dict):
        raise NotACheckpoint("config.json: rope_scaling must be an object or null", hint="fix config.json")
    if rope_parameters is not None and not isinstance(rope_parameters, dict):
        raise NotACheckpoint("config.json: rope_parameters must be an object or null", hint="fix config.json")
    nested = family.nested or _is_nested(rope_parameters)

    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if not head_dim:
        raise NotACheckpoint("config.json gives neither head_dim nor hidden_size and num_attention_heads",
                             hint="fix config.json")

    local_theta = None
    if nested:
        full = dict((rope_parameters or {}).get("full_attention") or {})
        if rope_scaling:
            full.update(rope_scaling)  # what Gemma 3's 5.x config does with a legacy dict
        active = full
        theta = full.get("rope_theta", config.get("rope_theta", family.theta_default))
        sliding = (rope_parameters or {}).get("sliding_attention") or {}
        local_theta = float(sliding.get("rope_theta", config.get(family.local_theta_key or "", 10000.0)))
    else:
        # transformers 5 lets rope_scaling win over rope_parameters and then takes theta from
        # the top-level key, so a file's effective settings follow the same order here.
        active = rope_scaling if rope_scaling else (rope_parameters or {})
        theta = (config.get("rope_theta") if rope_scaling else None) \
            or active.get("rope_theta") or config.get("rope_theta") \
            or (config.get(family.legacy_theta_key) if family.legacy_theta_key else None) \
            or family.theta_default
    theta = _number(theta, "rope_theta")

    partial = 1.0
    if family.partial_key:
        partial = config.get(family.partial_key, family.partial_default)
    partial = (active or {}).get("partial_rotary_factor", config.get("partial_rotary_factor", partial))
    partial = _number(partial, "partial_rotary_factor")

    window = config.get("max_position_embeddings")
    window_from_default = window is None
    if window is None:
        window = family.window_default or 2048
    window = int(_number(window, "max_position_embeddings"))

    scaling_type = _scaling_type(active)
    factor = _number(active.get("factor", 1.0), "factor") if scaling_type != "default" else 1.0
    original_hint = active.get("original_max_position_embeddings") if active else None

    return RopeState(
        model_type=model_type, known_family=model_type in FAMILIES, theta=theta,
        head_dim=int(head_dim), partial_rotary_factor=partial, window=window,
        window_from_default=window_from_default, scaling_type=scaling_type, factor=factor,
        nested=nested, local_theta=local_theta, rope_scaling=rope_scaling,
        rope_parameters=rope_parameters, disagreement=_disagreement(config, nested),
        original_window_hint=int(original_hint) if original_hint else None,
    )


def _disagreement(config: dict, nested: bool) -> str | None:
    """Where rope_scaling and rope_parameters would make readers do different things."""
    rope_scaling, rope_parameters = config.get("rope_scaling"), config.get("rope_parameters")
    if not rope_scaling or not rope_parameters:
        return None
    params = (rope_parameters.get("full_attention") or {}) if nested else rope_parameters
    problems = []
    if _scaling_type(rope_scaling) != _scaling_type(params):
        problems.append(f"type {_scaling_type(rope_scaling)} vs {_scaling_type(params)}")
    if rope_scaling.get("factor") != params.get("factor"):
        problems.append(f"factor {rope_scaling.get('factor')} vs {params.get('factor')}")
    top_theta = config.get("rope_theta")
    if not nested and params.get("rope_theta") is not None and top_theta is not None \
            and float(top_theta) != float(params["rope_theta"]):
        problems.append(f"theta {top_theta} (top level) vs {params['rope_theta']}")
    if not nested and params.get("rope_theta") is not None and top_theta is None:
        problems.append(f"no top-level rope_theta, so transformers ignores theta {params['rope_theta']}")
    if not problems:
        return None
    return "rope_scaling and rope_parameters disagree (" + "; ".join(problems) + "); rope_scaling wins in transformers 4.x and 5.x"


def plan_config(
    config: dict,
    target_window: int,
    from_window: int | None = None,
    keep_max_position: bool = False,
    force: bool = False,
    recorded_window: int | None = None,
) -> ConfigPlan:
    """The config.json that gives `target_window` by linear PI, with every reader agreeing.

    from_window overrides the current window (a wrong max_position_embeddings);
    recorded_window is the window picli.json recorded for a checkpoint picli wrote.
    """
    reason = refusal(config)
    if reason:
        raise reason
    if isinstance(target_window, bool) or not isinstance(target_window, int) or target_window <= 0:
        raise CannotExtend(f"target window must be a positive integer, got {target_window!r}",
                           hint="pass --to N, e.g. --to 16384")
    family = family_of(config)
    state = read_state(config)
    warnings: list[str] = []
    if not state.known_family:
        warnings.append(f"{state.model_type} is not in picli's family table: writing the common form; "
                        "the self-check with transformers decides")
    if state.disagreement:
        warnings.append(state.disagreement + " - picli writes both consistently")

    previous_factor, previous_type = state.factor, state.scaling_type
    if previous_type in OTHER_SCHEMES:
        if not force:
            raise CannotExtend(
                f"this checkpoint already uses {previous_type} RoPE scaling (factor {previous_factor:g}); "
                "linear PI on top of it is a different scheme",
                hint="extend the base model instead, or pass --force to replace the scheme with linear PI",
            )
        # Replacing the scheme: interpolate from the pretraining window, not the extended one.
        base_window = from_window or state.original_window_hint or state.window
        warnings.append(f"--force: replacing {previous_type} scaling with linear PI from {base_window} tokens")
        current_window, previous_factor = base_window, 1.0
    elif previous_type not in ("default", "linear"):
        raise CannotExtend(f"unknown RoPE scaling type {previous_type!r}", hint="check rope_scaling in config.json")
    else:
        current_window = from_window or recorded_window or state.window
        if previous_type == "linear" and not (from_window or recorded_window):
            warnings.append(
                f"existing linear factor {previous_factor:g}: taking max_position_embeddings={state.window} as the "
                "current window (transformers' convention); pass --from N if it is the pretraining window instead"
            )
    if target_window <= current_window:
        raise CannotExtend(
            f"--to {target_window} is not larger than the current window of {current_window} tokens",
            hint=f"pass a target above {current_window}, or --from N if the config's window is wrong",
        )

    factor = float(previous_factor * target_window / current_window)
    new = _write_rope(config, family, state, factor)
    window_after = config.get("max_position_embeddings") if keep_max_position else target_window
    if window_after is None and keep_max_position:
        window_after = current_window
    new["max_position_embeddings"] = int(window_after)

    changes = [(key, config.get(key), new.get(key)) for key in new if config.get(key) != new.get(key)]
    return ConfigPlan(
        config=new, factor=factor, previous_factor=previous_factor, previous_type=previous_type,
        current_window=current_window, target_window=target_window,
        original_window=round(current_window / previous_factor), theta=state.theta,
        changes=changes, warnings=warnings,
    )


def _write_rope(config: dict, family: Family, state: RopeState, factor: float) -> dict:
    """Both schemas, agreeing: rope_parameters for 5.x, top-level keys + rope_scaling for 4.x."""
    new = copy.deepcopy(config)
    linear = {"rope_type": "linear", "factor": factor, "rope_theta": state.theta}
    if state.nested:
        params = copy.deepcopy(config.get("rope_parameters") or {})
        params["full_attention"] = linear
        sliding = dict(params.get("sliding_attention") or {"rope_type": "default"})
        sliding.setdefault("rope_theta", state.local_theta)
        if "sliding_attention" in params or family.local_theta_key:
            params["sliding_attention"] = sliding
        for layer_type, layer_params in params.items():
            if layer_type not in INTERPOLATED_LAYER_TYPES and isinstance(layer_params, dict):
                layer_params.pop("factor", None)
        if family.local_theta_key:
            new[family.local_theta_key] = float(sliding["rope_theta"])
    else:
        params = {key: value for key, value in (config.get("rope_parameters") or {}).items()
                  if key in _FLAT_LINEAR_KEYS}
        params.update(linear)
        if state.partial_rotary_factor != 1.0:
            params["partial_rotary_factor"] = state.partial_rotary_factor
            # transformers 5 takes partial rotary from the top-level key when rope_scaling exists.
            if family.partial_key in (None, "partial_rotary_factor"):
                new["partial_rotary_factor"] = state.partial_rotary_factor
    new["rope_parameters"] = params
    # Without a top-level theta, 4.x falls back to the class default (often 10000) and so
    # does 5.x whenever rope_scaling is present: always write it, as a float.
    new["rope_theta"] = state.theta
    if family.legacy_theta_key and family.legacy_theta_key in config:
        new[family.legacy_theta_key] = state.theta
    new["rope_scaling"] = {family.legacy_type_key: "linear", "factor": factor}
    return new


# ---------------------------------------------------------------------------------------
# What each runtime will do with a config (for `picli inspect` and the model card).


def inverse_frequencies(theta: float, rotary_dim: int, factor: float = 1.0) -> list[float]:
    """The plain RoPE reference: theta^(-2j/d) for j < d/2, divided by the PI factor."""
    return [1.0 / (theta ** (2 * j / rotary_dim)) / factor for j in range(rotary_dim // 2)]


def predict_transformers4(config: dict) -> dict:
    """transformers 4.x reads top-level keys and rope_scaling; it never reads rope_parameters."""
    family = family_of(config)
    theta = config.get("rope_theta")
    if theta is None and family.legacy_theta_key:
        theta = config.get(family.legacy_theta_key)
    theta_missing = theta is None
    theta = float(theta if theta is not None else family.theta_default)
    scaling = config.get("rope_scaling") or {}
    scaling_type = _scaling_type(scaling)
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


def format_window(tokens: int) -> str:
    """16384 -> '16k', 12000 -> '12000'."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)
